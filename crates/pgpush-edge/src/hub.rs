//! The hub: channel -> local subscribers, fed by the LISTEN connection, never awaiting a client.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::future::{FutureExt, Shared};
use pgpush_pg::{Listener, ListenerState, NotificationSink};
use pgpush_protocol::{Channel, Message, Payload};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::stats::Stats;

/// The channel the sequencer NOTIFYs once per batch; the LISTEN connection always LISTENs it.
pub const WAKE_CHANNEL: &str = "pgpush_wake";

/// How many recent durable messages the hub keeps in memory for replays.
#[derive(Debug, Clone, Copy)]
pub struct RecentLimits {
    /// Messages.
    pub messages: usize,
    /// Payload bytes.
    pub bytes: usize,
}

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
    state: Mutex<HubState>,
    listener: Listener,
    stats: Arc<Stats>,
    limits: QueueLimits,
    next_id: AtomicU64,
    /// Wakes the durable reader (a `pgpush_wake` notification, a listener reconnect).
    wake: Arc<Notify>,
    unlisten_delay: Duration,
}

/// Everything fan-out and subscription change together, under one lock: registering a
/// subscriber and reading the durable head happen at one instant relative to fan-out, which is
/// what makes replay-then-live gapless and duplicate-free.
#[derive(Debug)]
struct HubState {
    channels: HashMap<Channel, ChannelEntry>,
    /// Every durable event up to this position has been fanned out (`None` until the durable
    /// reader started).
    head: Option<i64>,
    /// The latest durable messages, to replay recent cursors without a query.
    recent: RecentEvents,
}

/// Where a subscriber's durable replay comes from.
#[derive(Debug)]
pub enum Replay {
    /// Nothing to replay: no cursor, or the cursor is at the head.
    Nothing,
    /// From memory: the messages of the subscribed channels after the cursor.
    Memory(Vec<Arc<Message>>),
    /// From the events table: positions in (`after`, `upto`] of the subscribed channels.
    Database {
        /// The client's cursor position.
        after: i64,
        /// The head at registration; later events arrive live.
        upto: i64,
    },
}

/// A completed subscription: the durable head at registration and what to replay before the
/// subscriber's queued live messages.
#[derive(Debug)]
pub struct Subscription {
    /// The durable head at registration (`None` before the durable reader started).
    pub head: Option<i64>,
    /// What the client missed.
    pub replay: Replay,
}

/// The latest durable messages, bounded by count and bytes.
#[derive(Debug)]
struct RecentEvents {
    messages: VecDeque<Arc<Message>>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    /// The memory holds every event with position in (`covers_from`, head].
    covers_from: i64,
}

impl RecentEvents {
    fn push(&mut self, message: Arc<Message>) {
        self.bytes += message.queue_cost();
        self.messages.push_back(message);
        while self.messages.len() > self.max_messages || self.bytes > self.max_bytes {
            let Some(evicted) = self.messages.pop_front() else {
                break;
            };
            self.bytes -= evicted.queue_cost();
            self.covers_from = evicted.position().unwrap_or(self.covers_from);
        }
    }

    /// Messages of `channels` with position in (`after`, `upto`].
    fn range(&self, channels: &[Channel], after: i64, upto: i64) -> Vec<Arc<Message>> {
        let start = self
            .messages
            .partition_point(|m| m.position().unwrap_or(0) <= after);
        self.messages
            .range(start..)
            .take_while(|m| m.position().unwrap_or(0) <= upto)
            .filter(|m| channels.contains(m.channel()))
            .cloned()
            .collect()
    }
}

#[derive(Debug)]
struct ChannelEntry {
    channel: Channel,
    subscribers: HashMap<u64, Arc<Outbox>>,
    /// Completes once PostgreSQL confirmed `LISTEN` for this channel.
    listening: Shared<oneshot::Receiver<()>>,
    /// Since when the channel has had no subscriber (it is UNLISTENed after the delay).
    idle_since: Option<Instant>,
}

impl Hub {
    /// A hub that LISTENs through `listener` and UNLISTENs a channel `unlisten_delay` after its
    /// last subscriber left.
    pub fn new(
        listener: Listener,
        stats: Arc<Stats>,
        limits: QueueLimits,
        recent: RecentLimits,
        unlisten_delay: Duration,
    ) -> Hub {
        Hub {
            state: Mutex::new(HubState {
                channels: HashMap::new(),
                head: None,
                recent: RecentEvents {
                    messages: VecDeque::new(),
                    bytes: 0,
                    max_messages: recent.messages,
                    max_bytes: recent.bytes,
                    covers_from: 0,
                },
            }),
            listener,
            stats,
            limits,
            next_id: AtomicU64::new(1),
            wake: Arc::new(Notify::new()),
            unlisten_delay,
        }
    }

    /// Notified when durable events may be waiting.
    pub fn durable_wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Starts durable fan-out at `head` (events up to it are history, served by replay).
    pub fn start_durable(&self, head: i64) {
        let mut state = self.lock();
        if state.head.is_none() {
            state.head = Some(head);
            state.recent.covers_from = head;
        }
    }

    /// Hands durable messages (in position order, above the head) to their subscribers, keeps
    /// them for replay, and moves the head. Returns the new head.
    pub fn fan_out_durable(&self, messages: Vec<Message>) -> Option<i64> {
        let mut state = self.lock();
        let state = &mut *state;
        for message in messages {
            let Some(position) = message.position() else {
                continue;
            };
            if state.head.is_some_and(|head| position <= head) {
                continue;
            }
            let message = Arc::new(message);
            if let Some(entry) = state.channels.get(message.channel()) {
                for outbox in entry.subscribers.values() {
                    if outbox.offer(&message) == Offer::Overflowed {
                        self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            state.recent.push(message);
            state.head = Some(position);
        }
        state.head
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
            taken: AtomicI64::new(0),
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
    ///
    /// With `since` (a durable position), also says what the subscriber missed: every durable
    /// event of these channels in (`since`, head] is in the returned replay, and every later one
    /// is queued to the outbox, so replay-then-queue has no gap and no duplicate. The caller
    /// makes sure `since` is not above the head (see `Durable::wait_for`).
    #[tracing::instrument(name = "subscribe", level = "debug", skip_all, fields(channels = channels.len(), since))]
    pub async fn subscribe(
        &self,
        outbox: &Arc<Outbox>,
        channels: &[Channel],
        since: Option<i64>,
        timeout: Duration,
    ) -> Result<Subscription, SubscribeError> {
        let mut confirmations = Vec::with_capacity(channels.len());
        let subscription = {
            let mut state = self.lock();
            for channel in channels {
                let entry = state
                    .channels
                    .entry(channel.clone())
                    .or_insert_with(|| ChannelEntry {
                        channel: channel.clone(),
                        subscribers: HashMap::new(),
                        listening: self.listener.listen(channel.as_str()).shared(),
                        idle_since: None,
                    });
                entry.idle_since = None;
                if entry
                    .subscribers
                    .insert(outbox.id, outbox.clone())
                    .is_none()
                {
                    self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
                }
                confirmations.push(entry.listening.clone());
            }
            let replay = match (since, state.head) {
                (Some(after), Some(head)) if after < head => {
                    if after >= state.recent.covers_from {
                        Replay::Memory(state.recent.range(channels, after, head))
                    } else {
                        Replay::Database { after, upto: head }
                    }
                }
                _ => Replay::Nothing,
            };
            Subscription {
                head: state.head,
                replay,
            }
        };
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
        Ok(subscription)
    }

    /// Removes subscriber `id` from `channels`; the last local subscriber of a channel issues
    /// `UNLISTEN`. Channels it was not subscribed to are ignored.
    pub fn unsubscribe<'a>(&self, id: u64, channels: impl IntoIterator<Item = &'a Channel>) {
        let mut state = self.lock();
        for channel in channels {
            let Some(entry) = state.channels.get_mut(channel) else {
                continue;
            };
            if entry.subscribers.remove(&id).is_some() {
                self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
            if entry.subscribers.is_empty() {
                if self.unlisten_delay.is_zero() {
                    state.channels.remove(channel);
                    // Issued under the lock, so LISTEN/UNLISTEN reach the listener in map order.
                    self.listener.unlisten(channel.as_str());
                } else {
                    entry.idle_since = Some(Instant::now());
                }
            }
        }
    }

    /// UNLISTENs channels that have had no subscriber for the UNLISTEN delay. The delay spares
    /// PostgreSQL a LISTEN/UNLISTEN pair per request of clients that come and go on the same
    /// channels (long polls, reconnects).
    pub fn sweep(&self) {
        let mut state = self.lock();
        let delay = self.unlisten_delay;
        state.channels.retain(|channel, entry| {
            let expired = entry
                .idle_since
                .is_some_and(|since| since.elapsed() >= delay);
            if expired {
                self.listener.unlisten(channel.as_str());
            }
            !expired
        });
    }

    /// Runs [`Hub::sweep`] every quarter of the delay until `shutdown`.
    pub async fn sweep_until(self: Arc<Self>, shutdown: CancellationToken) {
        if self.unlisten_delay.is_zero() {
            return;
        }
        let mut tick =
            tokio::time::interval((self.unlisten_delay / 4).max(Duration::from_millis(100)));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.sweep(),
            }
        }
    }

    /// Builds a message for `channel` (sharing the entry's name) and hands it to every local
    /// subscriber of the channel. Returns false when nobody here subscribes to it.
    pub fn fan_out(&self, channel: &str, make: impl FnOnce(Channel) -> Message) -> bool {
        let state = self.lock();
        let Some(entry) = state.channels.get(channel) else {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        // A panic while holding the lock cannot leave the state inconsistent (every mutation is
        // one insert, remove or assignment), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl NotificationSink for Hub {
    fn notification(&self, channel: &str, payload: &str, _process_id: i32) {
        if channel == WAKE_CHANNEL {
            self.wake.notify_one();
            return;
        }
        self.stats.notifications_in.fetch_add(1, Ordering::Relaxed);
        // Classify the payload before taking the lock. A notification for a channel nobody
        // here subscribes to any more (it raced our UNLISTEN) is dropped by `fan_out`.
        let payload = Payload::new(payload);
        self.fan_out(channel, |channel| Message::ephemeral(channel, payload));
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
    /// The highest durable position a reader took from the queue.
    taken: AtomicI64,
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

    /// Records that a reader took the durable message at `position`.
    pub fn note_taken(&self, position: i64) {
        self.taken.fetch_max(position, Ordering::AcqRel);
    }

    /// The highest durable position a reader took (0 if none).
    pub fn taken(&self) -> i64 {
        self.taken.load(Ordering::Acquire)
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
        if let Some(position) = batch.iter().rev().find_map(|m| m.position()) {
            self.outbox.note_taken(position);
        }
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

    /// Subscribes to `channels` (those already subscribed are no-ops, and get no replay),
    /// replaying durable events after `since` (see [`Hub::subscribe`]).
    pub async fn subscribe(
        &mut self,
        channels: &[Channel],
        since: Option<i64>,
        timeout: Duration,
    ) -> Result<Subscription, SubscribeError> {
        let new: Vec<Channel> = channels
            .iter()
            .filter(|c| !self.channels.contains(*c))
            .cloned()
            .collect();
        let subscription = self
            .hub
            .subscribe(&self.outbox, &new, since, timeout)
            .await?;
        self.channels.extend(new);
        Ok(subscription)
    }

    /// The channels subscribed.
    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.channels.iter()
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
