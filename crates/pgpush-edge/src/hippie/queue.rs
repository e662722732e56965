//! Hippie client queues: one per (channel, client_id), subscribed before `set_client_id` goes
//! out, read by one connection at a time, kept for a window after the last one leaves.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use pgpush_protocol::{Channel, Message};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::hub::{Hub, Inbox, Outbox, QueueLimits, SubscribeError};

/// Why a queue could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The node holds `--hippie-max-queues` queues already.
    #[error("too many client queues on this node")]
    TooMany,
    /// PostgreSQL did not confirm LISTEN.
    #[error(transparent)]
    Unavailable(#[from] SubscribeError),
}

type Key = (Channel, Arc<str>);

/// Every client queue of the node.
#[derive(Debug)]
pub(crate) struct Registry {
    hub: Arc<Hub>,
    queues: Mutex<HashMap<Key, Arc<ClientQueue>>>,
    limits: QueueLimits,
    max_queues: usize,
    created: AtomicU64,
}

/// One client's queue.
#[derive(Debug)]
pub(crate) struct ClientQueue {
    hub: Arc<Hub>,
    channel: Channel,
    client_id: Arc<str>,
    window: Duration,
    outbox: Arc<Outbox>,
    inbox: Arc<tokio::sync::Mutex<Inbox>>,
    /// Completes once PostgreSQL LISTENs for the queue.
    subscribed: tokio::sync::OnceCell<()>,
    /// True until a poll has delivered `set_client_id` for this queue.
    fresh: AtomicBool,
    state: Mutex<Attachments>,
}

#[derive(Debug, Default)]
struct Attachments {
    /// Connections currently attached.
    count: usize,
    /// The newest attachment (its number and token); an older one is cancelled when a newer
    /// one arrives.
    newest: Option<(u64, CancellationToken)>,
    /// Attachments made so far, to number them.
    made: u64,
    /// When the last connection left.
    detached_since: Option<Instant>,
}

impl Registry {
    pub(crate) fn new(hub: Arc<Hub>, limits: QueueLimits, max_queues: usize) -> Registry {
        Registry {
            hub,
            queues: Mutex::new(HashMap::new()),
            limits,
            max_queues,
            created: AtomicU64::new(0),
        }
    }

    /// Live queues.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Queues created since start.
    pub(crate) fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// True when (channel, id) has a live queue.
    pub(crate) fn contains(&self, channel: &Channel, client_id: &str) -> bool {
        self.lock()
            .contains_key(&(channel.clone(), Arc::from(client_id)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<ClientQueue>>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches to the queue of (channel, client_id), creating it (with `window`) if there is
    /// none, and returns once it is subscribed. The attachment supersedes any older one.
    pub(crate) async fn attach(
        &self,
        channel: &Channel,
        client_id: &str,
        window: Duration,
        subscribe_timeout: Duration,
    ) -> Result<Attachment, OpenError> {
        let key: Key = (channel.clone(), Arc::from(client_id));
        // Looked up (or created) and attached under the registry lock, so the reaper never
        // removes a queue between the two.
        let attachment = {
            let mut queues = self.lock();
            let queue = match queues.get(&key) {
                Some(queue) => queue.clone(),
                None => {
                    if queues.len() >= self.max_queues {
                        return Err(OpenError::TooMany);
                    }
                    let (outbox, inbox) = self.hub.outbox_with(self.limits, None);
                    let queue = Arc::new(ClientQueue {
                        hub: self.hub.clone(),
                        channel: channel.clone(),
                        client_id: key.1.clone(),
                        window,
                        outbox,
                        inbox: Arc::new(tokio::sync::Mutex::new(inbox)),
                        subscribed: tokio::sync::OnceCell::new(),
                        fresh: AtomicBool::new(true),
                        state: Mutex::new(Attachments::default()),
                    });
                    self.created.fetch_add(1, Ordering::Relaxed);
                    queues.insert(key.clone(), queue.clone());
                    queue
                }
            };
            Attachment::new(queue)
        };
        let queue = attachment.queue.clone();
        let subscribed = queue
            .subscribed
            .get_or_try_init(|| async {
                queue
                    .hub
                    .subscribe(
                        &queue.outbox,
                        std::slice::from_ref(&queue.channel),
                        None,
                        subscribe_timeout,
                    )
                    .await
                    .map(|_| ())
            })
            .await;
        if let Err(error) = subscribed {
            drop(attachment);
            let mut queues = self.lock();
            if queues
                .get(&key)
                .is_some_and(|q| Arc::ptr_eq(q, &queue) && q.subscribed.get().is_none())
            {
                queues.remove(&key);
            }
            return Err(error.into());
        }
        Ok(attachment)
    }

    /// Removes queues nobody has read for longer than their window.
    pub(crate) fn reap(&self) {
        let now = Instant::now();
        self.lock().retain(|_, queue| {
            let state = queue.state.lock().unwrap_or_else(|e| e.into_inner());
            let expired = state.count == 0
                && state.detached_since.is_some_and(|since| now.duration_since(since) > queue.window);
            if expired {
                debug!(channel = %queue.channel, client_id = %queue.client_id, "hippie queue expired");
            }
            !expired
        });
    }

    /// Runs [`Registry::reap`] every second until `shutdown`.
    pub(crate) async fn reap_until(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.reap(),
            }
        }
    }
}

impl Drop for ClientQueue {
    fn drop(&mut self) {
        if self.subscribed.get().is_some() {
            self.hub.unsubscribe(self.outbox.id(), [&self.channel]);
        }
    }
}

/// A connection's claim on a queue. Dropping it detaches; the last detach starts the window.
#[derive(Debug)]
pub(crate) struct Attachment {
    queue: Arc<ClientQueue>,
    number: u64,
    superseded: CancellationToken,
}

impl Attachment {
    fn new(queue: Arc<ClientQueue>) -> Attachment {
        let superseded = CancellationToken::new();
        let number = {
            let mut state = queue.state.lock().unwrap_or_else(|e| e.into_inner());
            state.made += 1;
            let number = state.made;
            if let Some((_, older)) = state.newest.replace((number, superseded.clone())) {
                older.cancel();
            }
            state.count += 1;
            state.detached_since = None;
            number
        };
        Attachment {
            queue,
            number,
            superseded,
        }
    }

    /// Cancelled when a newer connection attaches to the same queue.
    pub(crate) fn superseded(&self) -> &CancellationToken {
        &self.superseded
    }

    /// The client id.
    pub(crate) fn client_id(&self) -> &str {
        &self.queue.client_id
    }

    /// True the first time it is asked for a queue that no poll has answered yet.
    pub(crate) fn take_fresh(&self) -> bool {
        self.queue.fresh.swap(false, Ordering::AcqRel)
    }

    /// Waits until older readers let go, then reads the queue exclusively; `kill` is cut if the
    /// queue overflows while this reader holds it.
    pub(crate) async fn read(&self, kill: CancellationToken) -> Reader {
        let inbox = self.queue.inbox.clone().lock_owned().await;
        self.queue.outbox.set_kill(Some(kill));
        Reader {
            inbox,
            outbox: self.queue.outbox.clone(),
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut state = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        state.count -= 1;
        if state
            .newest
            .as_ref()
            .is_some_and(|(number, _)| *number == self.number)
        {
            state.newest = None;
        }
        if state.count == 0 {
            state.detached_since = Some(Instant::now());
        }
    }
}

/// Exclusive read access to a queue.
pub(crate) struct Reader {
    inbox: OwnedMutexGuard<Inbox>,
    outbox: Arc<Outbox>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

impl Reader {
    /// Everything queued right now.
    pub(crate) fn drain(&mut self) -> Vec<Arc<Message>> {
        let mut batch = Vec::new();
        while self.inbox.try_recv_many(&mut batch, 1024) > 0 {}
        batch
    }

    /// If the queue overflowed since it was last read, re-opens it and returns how many
    /// messages were lost.
    pub(crate) fn take_overflow(&self) -> Option<u64> {
        self.outbox.take_overflow()
    }

    /// The queue, for a transport to read from.
    pub(crate) fn inbox(&mut self) -> &mut Inbox {
        &mut self.inbox
    }
}

impl crate::transport::stream_body::InboxSource for Reader {
    fn inbox(&mut self) -> &mut Inbox {
        &mut self.inbox
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.outbox.set_kill(None);
    }
}
