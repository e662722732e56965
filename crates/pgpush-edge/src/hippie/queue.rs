//! Hippie client queues: one per (channel, client_id), subscribed before `set_client_id` goes
//! out, read by one connection at a time, kept for a window after the last one leaves, and —
//! for durable messages — resumable on any node from a position stored in PostgreSQL.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::StreamExt;
use pgpush_pg::HippiePosition;
use pgpush_protocol::{
    Channel, CursorPoint, ErrorCode, Message, ResetReason, hippie::error_message,
};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    admission::limits::PerAddress,
    core::{
        durable::Durable,
        hub::{Hub, Replay, SubscribeError},
        queue::{Inbox, Outbox},
        replay::{self, ReplayBatch},
    },
    settings::{HippieSettings, QueueLimits},
    transport::stream_body::InboxSource,
};

/// Why a queue could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The node holds `--hippie-max-queues` queues already.
    #[error("too many client queues on this node")]
    TooMany,
    /// The client's address holds `--hippie-max-queues-per-address` queues already.
    #[error("too many client queues for your address")]
    TooManyFromAddress,
    /// PostgreSQL did not confirm LISTEN.
    #[error(transparent)]
    Unavailable(#[from] SubscribeError),
}

impl OpenError {
    /// The error code and HTTP status a client is answered with.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            OpenError::TooMany | OpenError::Unavailable(_) => ErrorCode::Unavailable,
            OpenError::TooManyFromAddress => ErrorCode::LimitExceeded,
        }
    }
}

type Key = (Channel, Arc<str>);

/// Every client queue of the node.
#[derive(Debug)]
pub(crate) struct Registry {
    hub: Arc<Hub>,
    durable: Arc<Durable>,
    queues: Mutex<HashMap<Key, Arc<ClientQueue>>>,
    /// Queues per client address (the creator's); locked inside `queues`, never alone before it.
    per_address: Mutex<PerAddress>,
    limits: QueueLimits,
    max_queues: usize,
    max_per_address: usize,
    created: AtomicU64,
}

/// One client's queue.
#[derive(Debug)]
pub(crate) struct ClientQueue {
    hub: Arc<Hub>,
    channel: Channel,
    client_id: Arc<str>,
    /// The address that created it.
    owner: IpAddr,
    window: Duration,
    outbox: Arc<Outbox>,
    inbox: Arc<tokio::sync::Mutex<Inbox>>,
    /// Completes once PostgreSQL LISTENs for the queue and the durable replay is in `backlog`.
    subscribed: tokio::sync::OnceCell<()>,
    /// Durable messages the client missed while it had no queue here, delivered first.
    backlog: Mutex<VecDeque<Arc<Message>>>,
    /// True until a poll has delivered `set_client_id` for this queue.
    fresh: AtomicBool,
    /// Set when the stored position was older than retention or lost from the history (the
    /// client must reload).
    reset: Mutex<Option<ResetReason>>,
    /// The durable position the client is known to have received.
    acknowledged: AtomicI64,
    /// What a reader had taken at the previous flush (streams acknowledge one flush late).
    taken_at_last_flush: AtomicI64,
    /// The position last written to PostgreSQL.
    stored: AtomicI64,
    /// True while a WebSocket or MXHR stream reads the queue.
    streaming: AtomicBool,
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
    pub(crate) fn new(hub: Arc<Hub>, durable: Arc<Durable>, settings: &HippieSettings) -> Registry {
        Registry {
            hub,
            durable,
            queues: Mutex::new(HashMap::new()),
            per_address: Mutex::new(PerAddress::default()),
            limits: settings.queue,
            max_queues: settings.max_queues,
            max_per_address: settings.max_queues_per_address,
            created: AtomicU64::new(0),
        }
    }

    fn lock_per_address(&self) -> std::sync::MutexGuard<'_, PerAddress> {
        self.per_address.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets one queue of `owner` (called with the `queues` lock held).
    fn release(&self, owner: IpAddr) {
        self.lock_per_address().remove(owner);
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
        address: IpAddr,
        window: Duration,
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
                    if !self
                        .lock_per_address()
                        .try_add(address, self.max_per_address)
                    {
                        return Err(OpenError::TooManyFromAddress);
                    }
                    let (outbox, inbox) = self.hub.outbox_with(self.limits, None);
                    let queue = Arc::new(ClientQueue {
                        hub: self.hub.clone(),
                        channel: channel.clone(),
                        client_id: key.1.clone(),
                        owner: address,
                        window,
                        outbox,
                        inbox: Arc::new(tokio::sync::Mutex::new(inbox)),
                        subscribed: tokio::sync::OnceCell::new(),
                        backlog: Mutex::new(VecDeque::new()),
                        fresh: AtomicBool::new(true),
                        reset: Mutex::new(None),
                        acknowledged: AtomicI64::new(0),
                        taken_at_last_flush: AtomicI64::new(0),
                        stored: AtomicI64::new(-1),
                        streaming: AtomicBool::new(false),
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
            .get_or_try_init(|| self.subscribe(&queue))
            .await;
        if let Err(error) = subscribed {
            drop(attachment);
            let mut queues = self.lock();
            if queues
                .get(&key)
                .is_some_and(|q| Arc::ptr_eq(q, &queue) && q.subscribed.get().is_none())
            {
                queues.remove(&key);
                self.release(queue.owner);
            }
            return Err(error.into());
        }
        Ok(attachment)
    }

    /// Subscribes a new queue. If the client was somewhere before (its position is stored), the
    /// durable messages since then are put in the backlog first, so nothing is lost when its
    /// node died; otherwise it starts at the head.
    async fn subscribe(&self, queue: &ClientQueue) -> Result<(), SubscribeError> {
        let mut since = None;
        if self.durable.wait_started(Duration::from_secs(1)).await {
            match self
                .durable
                .store()
                .hippie_position(queue.channel.as_str(), &queue.client_id)
                .await
            {
                Ok(stored) => {
                    since = stored
                        .map(|HippiePosition { epoch, position }| CursorPoint { epoch, position })
                }
                Err(error) => warn!(%error, "could not read a Hippie client's position"),
            }
        }
        if let Some(since) = since {
            self.durable.wait_for(since).await;
        }
        let subscription = self
            .hub
            .subscribe(
                &queue.outbox,
                std::slice::from_ref(&queue.channel),
                since,
                None,
            )
            .await?;
        let lost = matches!(subscription.replay, Replay::Lost);
        let start = match since {
            Some(point) if !lost => Some(point.position),
            _ => subscription.head,
        }
        .unwrap_or(0);
        queue.acknowledged.store(start, Ordering::Release);
        queue.taken_at_last_flush.store(start, Ordering::Release);
        queue.outbox.note_taken(start);
        let mut backlog = VecDeque::new();
        let reset = |reason| {
            self.durable.count_reset(reason);
            *queue.reset.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        };
        let batches = replay::batches(
            self.durable.clone(),
            vec![queue.channel.clone()],
            subscription.replay,
            None,
        );
        let mut batches = std::pin::pin!(batches);
        while backlog.len() < self.limits.messages {
            match batches.next().await {
                None => break,
                Some(Ok(ReplayBatch::Messages { messages, .. })) => backlog.extend(messages),
                Some(Ok(ReplayBatch::Reset(reason))) => reset(reason),
                Some(Err(error)) => {
                    warn!(reason = %error.reason, "Hippie replay failed; the client resets");
                    reset(ResetReason::Expired);
                    break;
                }
            }
        }
        backlog.truncate(self.limits.messages);
        *queue.backlog.lock().unwrap_or_else(|e| e.into_inner()) = backlog;
        Ok(())
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
                self.release(queue.owner);
            }
            !expired
        });
    }

    /// Writes the positions clients acknowledged since the last flush, in one statement. A
    /// stream acknowledges what it had taken one flush (a second) ago: what a live connection
    /// was written that long ago has arrived, or the connection is gone.
    async fn flush_positions(&self) {
        let queues: Vec<Arc<ClientQueue>> = self.lock().values().cloned().collect();
        let mut changed = Vec::new();
        for queue in &queues {
            let taken = queue.outbox.taken();
            if queue.streaming.load(Ordering::Acquire) {
                let earlier = queue.taken_at_last_flush.load(Ordering::Acquire);
                queue.acknowledged.fetch_max(earlier, Ordering::AcqRel);
            }
            queue.taken_at_last_flush.store(taken, Ordering::Release);
            let acknowledged = queue.acknowledged.load(Ordering::Acquire);
            if queue.subscribed.get().is_some()
                && acknowledged > queue.stored.load(Ordering::Acquire)
            {
                changed.push((queue.clone(), acknowledged));
            }
        }
        if changed.is_empty() {
            return;
        }
        // Stored with the epoch each position was delivered in: a client that left before it
        // was told its history changed is told on any node.
        let rows: Vec<(String, String, HippiePosition)> = changed
            .iter()
            .filter_map(|(q, position)| {
                let point = self.hub.cursor_point(*position)?;
                let stored = HippiePosition {
                    epoch: point.epoch,
                    position: point.position,
                };
                Some((q.channel.to_string(), q.client_id.to_string(), stored))
            })
            .collect();
        match self.durable.store().save_hippie_positions(&rows).await {
            Ok(()) => {
                for (queue, position) in changed {
                    queue.stored.fetch_max(position, Ordering::AcqRel);
                }
            }
            Err(error) => warn!(%error, "could not store Hippie client positions"),
        }
    }

    /// Reaps expired queues and stores positions every second until `shutdown`, then stores
    /// them once more.
    pub(crate) async fn maintain_until(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    self.reap();
                    if self.durable.head().is_some() {
                        self.flush_positions().await;
                    }
                }
            }
        }
        if self.durable.head().is_some() {
            self.flush_positions().await;
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
    /// queue overflows while this reader holds it. A stream reader acknowledges what it took a
    /// flush later; a poll acknowledges everything taken before it, since a client polls again
    /// only after it received the previous answer.
    pub(crate) async fn read(&self, kill: CancellationToken, streaming: bool) -> Reader {
        let inbox = self.queue.inbox.clone().lock_owned().await;
        self.queue.outbox.set_kill(Some(kill));
        if !streaming {
            self.queue
                .acknowledged
                .fetch_max(self.queue.outbox.taken(), Ordering::AcqRel);
        }
        self.queue.streaming.store(streaming, Ordering::Release);
        Reader {
            inbox,
            queue: self.queue.clone(),
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
    queue: Arc<ClientQueue>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

impl Reader {
    /// Everything queued right now: the replayed backlog first, then the queue.
    pub(crate) fn drain(&mut self) -> Vec<Arc<Message>> {
        let mut batch: Vec<Arc<Message>> = self
            .queue
            .backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        if let Some(position) = batch.iter().rev().find_map(|m| m.position()) {
            self.queue.outbox.note_taken(position);
        }
        while self.inbox.try_recv_many(&mut batch, 1024) > 0 {}
        batch
    }

    /// Hippie error messages the client must see after what was queued: its position expired
    /// or was lost from the history (it must reload), or its full queue dropped messages.
    pub(crate) fn notices(&self) -> Vec<Bytes> {
        let mut notices = Vec::new();
        let reset = self
            .queue
            .reset
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .or_else(|| self.queue.outbox.take_missed_reset());
        if let Some(reason) = reset {
            notices.push(error_message("reset", reason.hippie_reason()));
        }
        if let Some(dropped) = self.queue.outbox.take_overflow() {
            notices.push(error_message(
                "slow_consumer",
                &format!("{dropped} messages were dropped because this client's queue was full"),
            ));
        }
        notices
    }

    /// The queue, for a transport to read from.
    pub(crate) fn inbox(&mut self) -> &mut Inbox {
        &mut self.inbox
    }
}

impl InboxSource for Reader {
    fn inbox(&mut self) -> &mut Inbox {
        &mut self.inbox
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.queue.outbox.set_kill(None);
        self.queue.streaming.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{core::tests::hub_with, ops::stats::Stats, settings::DurableSettings};

    /// A registry on a hub with a fake LISTEN set, without durable channels (no database).
    async fn registry(max_per_address: usize) -> Registry {
        let (hub, _) = hub_with(16, 16);
        let pool = pgpush_pg::ConnectOptions::parse("postgres://nobody@127.0.0.1:1/none")
            .unwrap()
            .pool();
        let store = pgpush_pg::Publisher::new(pool, 1).unwrap().events();
        let settings = DurableSettings {
            enabled: false,
            catch_up_interval: Duration::from_secs(1),
            max_payload_bytes: 1024,
            idempotency_window: Duration::from_secs(1),
        };
        let durable = Arc::new(Durable::new(
            store,
            None,
            hub.clone(),
            Arc::new(Stats::default()),
            &settings,
        ));
        durable.clone().run(CancellationToken::new()).await;
        Registry {
            hub,
            durable,
            queues: Mutex::new(HashMap::new()),
            per_address: Mutex::new(PerAddress::default()),
            limits: QueueLimits {
                messages: 8,
                bytes: 1 << 20,
            },
            max_queues: 100,
            max_per_address,
            created: AtomicU64::new(0),
        }
    }

    const WINDOW: Duration = Duration::from_millis(30);

    fn address() -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
    }

    #[tokio::test]
    async fn a_queue_outlives_its_connection_for_its_window_and_a_reattach_keeps_it() {
        let registry = registry(10).await;
        let chat = Channel::new("chat").unwrap();
        let attachment = registry
            .attach(&chat, "c1", address(), WINDOW)
            .await
            .unwrap();
        tokio::time::sleep(WINDOW * 2).await;
        registry.reap();
        assert_eq!(registry.len(), 1, "an attached queue is never reaped");
        drop(attachment);
        registry.reap();
        assert_eq!(
            registry.len(),
            1,
            "kept for the window after its connection left"
        );

        tokio::time::sleep(WINDOW * 2).await;
        // The client comes back just before the reaper runs: it gets its own queue back.
        let again = registry
            .attach(&chat, "c1", address(), WINDOW)
            .await
            .unwrap();
        registry.reap();
        assert_eq!((registry.len(), registry.created()), (1, 1));
        drop(again);
        tokio::time::sleep(WINDOW * 2).await;
        registry.reap();
        assert_eq!(
            registry.len(),
            0,
            "reaped once the window passed with nobody attached"
        );
        // Its address's count went with it.
        let _fresh = registry
            .attach(&chat, "c2", address(), WINDOW)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_newer_connection_supersedes_the_older_and_addresses_are_limited() {
        let registry = registry(1).await;
        let chat = Channel::new("chat").unwrap();
        let older = registry
            .attach(&chat, "c1", address(), WINDOW)
            .await
            .unwrap();
        let newer = registry
            .attach(&chat, "c1", address(), WINDOW)
            .await
            .unwrap();
        assert!(older.superseded().is_cancelled());
        assert!(!newer.superseded().is_cancelled());
        let refused = registry.attach(&chat, "c2", address(), WINDOW).await;
        assert!(matches!(refused, Err(OpenError::TooManyFromAddress)));
    }
}
