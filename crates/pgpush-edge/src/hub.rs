//! The hub: channel -> local subscribers, fed by the LISTEN connection, never awaiting a client.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::future::{FutureExt, Shared};
use pgpush_pg::{Listener, ListenerState, NotificationSink};
use pgpush_protocol::{Channel, Message, Payload};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::stats::Stats;

/// How many messages and payload bytes one client's queue may hold.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Messages.
    pub messages: usize,
    /// Payload bytes (each message counts [`Message::queue_cost`]).
    pub bytes: usize,
}

/// Why a subscribe failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// PostgreSQL did not confirm LISTEN in time (the LISTEN connection is down).
    #[error("the database did not confirm LISTEN within {0:?}")]
    Unavailable(Duration),
}

/// Maps channels to the outboxes of local subscribers and keeps PostgreSQL's LISTEN set equal
/// to the set of channels with at least one subscriber.
///
/// Architecture invariant: the hub never awaits a client. Fan-out hands each subscriber an
/// `Arc<Message>` with `try_send`; a full queue marks that client slow and nobody else waits.
#[derive(Debug)]
pub struct Hub {
    channels: Mutex<HashMap<Channel, ChannelEntry>>,
    listener: Listener,
    stats: Arc<Stats>,
    limits: QueueLimits,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct ChannelEntry {
    channel: Channel,
    subscribers: HashMap<u64, Arc<Outbox>>,
    /// Completes once PostgreSQL confirmed `LISTEN` for this channel.
    listening: Shared<oneshot::Receiver<()>>,
}

impl Hub {
    /// A hub that LISTENs through `listener`.
    pub fn new(listener: Listener, stats: Arc<Stats>, limits: QueueLimits) -> Hub {
        Hub {
            channels: Mutex::new(HashMap::new()),
            listener,
            stats,
            limits,
            next_id: AtomicU64::new(1),
        }
    }

    /// A new client queue with the hub's limits. `kill` is cancelled when the queue overflows,
    /// so the transport tells the client (close 1013, an error event) and drops the connection.
    pub fn outbox(&self, kill: Option<CancellationToken>) -> (Arc<Outbox>, Inbox) {
        self.outbox_with(self.limits, kill)
    }

    /// A new client queue with its own limits.
    pub fn outbox_with(
        &self,
        limits: QueueLimits,
        kill: Option<CancellationToken>,
    ) -> (Arc<Outbox>, Inbox) {
        let (sender, receiver) = mpsc::channel(limits.messages.max(1));
        let outbox = Arc::new(Outbox {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            sender,
            queued_bytes: AtomicUsize::new(0),
            max_bytes: limits.bytes,
            overflowed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            kill: Mutex::new(kill),
        });
        let inbox = Inbox {
            receiver,
            outbox: outbox.clone(),
        };
        (outbox, inbox)
    }

    /// Adds `outbox` to `channels` and returns once PostgreSQL LISTENs to all of them, so a
    /// NOTIFY committed after this returns reaches the client. The first local subscriber of a
    /// channel issues `LISTEN`; later ones wait on the same confirmation.
    pub async fn subscribe(
        &self,
        outbox: &Arc<Outbox>,
        channels: &[Channel],
        timeout: Duration,
    ) -> Result<(), SubscribeError> {
        let mut confirmations = Vec::with_capacity(channels.len());
        {
            let mut map = self.lock();
            for channel in channels {
                let entry = map.entry(channel.clone()).or_insert_with(|| ChannelEntry {
                    channel: channel.clone(),
                    subscribers: HashMap::new(),
                    listening: self.listener.listen(channel.as_str()).shared(),
                });
                if entry
                    .subscribers
                    .insert(outbox.id, outbox.clone())
                    .is_none()
                {
                    self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
                }
                confirmations.push(entry.listening.clone());
            }
        }
        let confirmed = tokio::time::timeout(timeout, async {
            for confirmation in confirmations {
                // An error means the listener task is gone (shutdown): treat as not confirmed.
                if confirmation.await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        if confirmed.is_err() {
            self.unsubscribe(outbox.id, channels);
            return Err(SubscribeError::Unavailable(timeout));
        }
        Ok(())
    }

    /// Removes subscriber `id` from `channels`; the last local subscriber of a channel issues
    /// `UNLISTEN`. Channels it was not subscribed to are ignored.
    pub fn unsubscribe<'a>(&self, id: u64, channels: impl IntoIterator<Item = &'a Channel>) {
        let mut map = self.lock();
        for channel in channels {
            let Some(entry) = map.get_mut(channel) else {
                continue;
            };
            if entry.subscribers.remove(&id).is_some() {
                self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
            if entry.subscribers.is_empty() {
                map.remove(channel);
                // Issued under the lock, so LISTEN/UNLISTEN reach the listener in map order.
                self.listener.unlisten(channel.as_str());
            }
        }
    }

    /// Builds a message for `channel` (sharing the entry's name) and hands it to every local
    /// subscriber of the channel. Returns false when nobody here subscribes to it.
    pub fn fan_out(&self, channel: &str, make: impl FnOnce(Channel) -> Message) -> bool {
        let map = self.lock();
        let Some(entry) = map.get(channel) else {
            return false;
        };
        let message = Arc::new(make(entry.channel.clone()));
        for outbox in entry.subscribers.values() {
            if outbox.offer(&message) == Offer::Overflowed {
                self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    /// True while the LISTEN connection is up.
    pub fn listener_up(&self) -> bool {
        self.listener.state().borrow().is_up()
    }

    /// Channels currently wanted from PostgreSQL.
    pub fn channels_listened(&self) -> usize {
        self.listener.listened_channels()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Channel, ChannelEntry>> {
        // A panic while holding the lock cannot leave the map inconsistent (every mutation is
        // one insert or remove), so a poisoned lock is still usable.
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl NotificationSink for Hub {
    fn notification(&self, channel: &str, payload: &str, _process_id: i32) {
        self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        // Classify the payload before taking the lock. A notification for a channel nobody
        // here subscribes to any more (it raced our UNLISTEN) is dropped by `fan_out`.
        let payload = Payload::new(payload);
        self.fan_out(channel, |channel| Message::new(channel, payload, None));
    }

    fn connection_state(&self, state: ListenerState) {
        if let ListenerState::Up { generation, .. } = state {
            self.stats
                .listener_generation
                .store(generation, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Offer {
    Queued,
    Overflowed,
    Dropped,
}

/// The sending side of one client's bounded queue, shared by the hub's channel entries.
#[derive(Debug)]
pub struct Outbox {
    id: u64,
    sender: mpsc::Sender<Arc<Message>>,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    overflowed: AtomicBool,
    /// Messages not queued since the overflow.
    dropped: AtomicU64,
    /// The connection to cut when the queue overflows, if one is reading it.
    kill: Mutex<Option<CancellationToken>>,
}

impl Outbox {
    /// The subscriber id used by [`Hub::unsubscribe`].
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sets (or clears) the connection cut when the queue overflows; a queue that outlives
    /// its connections (Hippie) changes it as connections come and go.
    pub fn set_kill(&self, kill: Option<CancellationToken>) {
        *self.kill.lock().unwrap_or_else(|e| e.into_inner()) = kill;
    }

    /// If the queue overflowed, re-opens it and returns how many messages were dropped.
    pub fn take_overflow(&self) -> Option<u64> {
        self.overflowed
            .swap(false, Ordering::AcqRel)
            .then(|| self.dropped.swap(0, Ordering::AcqRel))
    }

    /// Queues `message` without waiting. The first overflow marks the client slow and cancels
    /// its kill token; after that nothing more is queued (only counted) until
    /// [`Outbox::take_overflow`].
    fn offer(&self, message: &Arc<Message>) -> Offer {
        if self.overflowed.load(Ordering::Acquire) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Offer::Dropped;
        }
        let cost = message.queue_cost();
        let queued = self.queued_bytes.fetch_add(cost, Ordering::Relaxed) + cost;
        let result = if queued <= self.max_bytes {
            self.sender.try_send(message.clone())
        } else {
            Err(mpsc::error::TrySendError::Full(message.clone()))
        };
        match result {
            Ok(()) => Offer::Queued,
            Err(error) => {
                self.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
                if let mpsc::error::TrySendError::Closed(_) = error {
                    return Offer::Dropped;
                }
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.overflowed.store(true, Ordering::Release);
                if let Some(kill) = &*self.kill.lock().unwrap_or_else(|e| e.into_inner()) {
                    kill.cancel();
                }
                Offer::Overflowed
            }
        }
    }
}

/// The receiving side of one client's queue, owned by its connection task.
#[derive(Debug)]
pub struct Inbox {
    receiver: mpsc::Receiver<Arc<Message>>,
    outbox: Arc<Outbox>,
}

impl Inbox {
    /// Waits for at least one message and moves up to `limit` into `batch`. Returns 0 when the
    /// queue is closed.
    pub async fn recv_many(&mut self, batch: &mut Vec<Arc<Message>>, limit: usize) -> usize {
        let before = batch.len();
        let received = self.receiver.recv_many(batch, limit).await;
        self.account(&batch[before..]);
        received
    }

    /// Moves what is queued right now (up to `limit`) into `batch` without waiting.
    pub fn try_recv_many(&mut self, batch: &mut Vec<Arc<Message>>, limit: usize) -> usize {
        let before = batch.len();
        while batch.len() - before < limit {
            match self.receiver.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        self.account(&batch[before..]);
        batch.len() - before
    }

    /// The queue's sending side.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Poll form of [`Inbox::recv_many`], for response bodies.
    pub fn poll_recv_many(
        &mut self,
        cx: &mut std::task::Context<'_>,
        batch: &mut Vec<Arc<Message>>,
        limit: usize,
    ) -> std::task::Poll<usize> {
        let before = batch.len();
        let polled = self.receiver.poll_recv_many(cx, batch, limit);
        if polled.is_ready() {
            self.account(&batch[before..]);
        }
        polled
    }

    fn account(&self, batch: &[Arc<Message>]) {
        let cost: usize = batch.iter().map(|m| m.queue_cost()).sum();
        self.outbox.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
    }
}

/// A connection's subscriptions; dropping it unsubscribes everything, so a connection that
/// ends any way at all leaves no subscriber behind.
#[derive(Debug)]
pub struct Session {
    hub: Arc<Hub>,
    outbox: Arc<Outbox>,
    channels: HashSet<Channel>,
}

impl Session {
    /// The queue this session subscribes.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// An empty session for `outbox`.
    pub fn new(hub: Arc<Hub>, outbox: Arc<Outbox>) -> Session {
        Session {
            hub,
            outbox,
            channels: HashSet::new(),
        }
    }

    /// Subscribes to `channels` (those already subscribed are no-ops).
    pub async fn subscribe(
        &mut self,
        channels: &[Channel],
        timeout: Duration,
    ) -> Result<(), SubscribeError> {
        let new: Vec<Channel> = channels
            .iter()
            .filter(|c| !self.channels.contains(*c))
            .cloned()
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.hub.subscribe(&self.outbox, &new, timeout).await?;
        self.channels.extend(new);
        Ok(())
    }

    /// Unsubscribes from `channels`.
    pub fn unsubscribe(&mut self, channels: &[Channel]) {
        let removed: Vec<Channel> = channels
            .iter()
            .filter(|c| self.channels.remove(*c))
            .cloned()
            .collect();
        self.hub.unsubscribe(self.outbox.id, &removed);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.outbox.id, &self.channels);
    }
}
