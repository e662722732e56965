//! The hub: channel -> local subscribers, fed by the LISTEN connection, never awaiting a client.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::future::{FutureExt, Shared};
use pgpush_pg::{
    CONTROL_CHANNEL, Continuation, History, ListenerState, NotificationSink, PRESENCE_CHANNEL,
};
use pgpush_protocol::{Channel, CursorPoint, Filter, Message, Payload};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    core::{
        audience::Audience,
        listen::ListenSet,
        presence,
        queue::{self, Inbox, Offer, Outbox},
    },
    ops::stats::Stats,
    settings::{HubSettings, QueueLimits},
};

/// The channel the sequencer NOTIFYs once per batch; the LISTEN connection always LISTENs it.
pub const WAKE_CHANNEL: &str = "pgpush_wake";

/// Batch notifications held for the durable reader; beyond this a notification is dropped and
/// the reader reads the gap from the table (at most 8 MiB: each is under 8,000 bytes).
const NOTICE_QUEUE: usize = 1024;

/// Control notifications held for the control task (each a command, rare).
const CONTROL_QUEUE: usize = 256;

/// What the control task hears from the LISTEN connection.
#[derive(Debug)]
pub enum ControlSignal {
    /// A `pgpush_control` notification's payload.
    Notice(String),
    /// The LISTEN connection came up: notifications sent while it was down are lost, so stored
    /// state (revocations) must be read again.
    Connected,
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
    listener: Arc<dyn ListenSet>,
    stats: Arc<Stats>,
    settings: HubSettings,
    next_id: AtomicU64,
    /// Wakes the durable reader (a `pgpush_wake` notification that is not a batch, a listener
    /// reconnect, a dropped batch).
    wake: Arc<Notify>,
    /// The sequencer's batch notifications, in the order heard, to the durable reader.
    notices: mpsc::Sender<String>,
    /// Their receiving end, until the durable reader takes it.
    notices_out: Mutex<Option<mpsc::Receiver<String>>>,
    /// Server-side control, to the control task.
    control: mpsc::Sender<ControlSignal>,
    /// Its receiving end, until the control task takes it.
    control_out: Mutex<Option<mpsc::Receiver<ControlSignal>>>,
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
    /// The database's history as the durable reader last read it, and the epoch each
    /// delivered position was delivered in (`None` until the reader started).
    delivered: Option<Delivered>,
}

/// What this node delivered, in the database's history: cursors of a position name the epoch
/// the node was in when it delivered it.
#[derive(Debug)]
struct Delivered {
    history: Arc<History>,
    /// (from, epoch id), ascending: positions from `from` on were delivered in that epoch.
    epochs: Vec<(i64, i64)>,
}

impl Delivered {
    fn point(&self, position: i64) -> CursorPoint {
        let epoch = self
            .epochs
            .iter()
            .rev()
            .find(|(from, _)| *from <= position)
            .map_or(self.history.first().id, |(_, epoch)| *epoch);
        CursorPoint {
            epoch: (epoch != self.history.first().id).then_some(epoch),
            position,
        }
    }

    /// The epoch this node delivers in now.
    fn epoch(&self) -> i64 {
        self.epochs
            .last()
            .map_or(self.history.current().id, |(_, e)| *e)
    }
}

/// What adopting a new history of the database did.
#[derive(Debug, Clone, Copy)]
pub struct Adoption {
    /// The epoch the node delivered in before.
    pub previous_epoch: i64,
    /// The head before.
    pub previous_head: i64,
    /// Whether what the node delivered is still part of the database's history.
    pub continuation: Continuation,
    /// The head after (moved when the history forked).
    pub head: i64,
    /// Subscribers told to reset.
    pub reset: usize,
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
    /// The cursor names a point the database's history no longer has (it failed over to a
    /// standby that lacked it, or was restored): the client must reset; live messages follow.
    Lost,
}

/// A completed subscription: the durable head at registration and what to replay before the
/// subscriber's queued live messages.
#[derive(Debug)]
pub struct Subscription {
    /// The durable head at registration (`None` before the durable reader started).
    pub head: Option<i64>,
    /// The point of the head, for the client's cursor.
    pub cursor: Option<CursorPoint>,
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
            .filter(|m| m.channel().is_some_and(|c| channels.contains(c)))
            .cloned()
            .collect()
    }
}

#[derive(Debug)]
struct ChannelEntry {
    channel: Channel,
    /// The local subscribers, by filter.
    audience: Audience,
    /// The subscribers that asked for the channel's joins and leaves.
    watchers: HashSet<u64>,
    /// Completes once PostgreSQL confirmed `LISTEN` for this channel.
    listening: Shared<oneshot::Receiver<()>>,
    /// Since when the channel has had no subscriber (it is UNLISTENed after the delay).
    idle_since: Option<Instant>,
}

impl Hub {
    /// A hub that LISTENs through `listener` and UNLISTENs a channel the settings' delay after
    /// its last subscriber left.
    pub fn new(listener: Arc<dyn ListenSet>, stats: Arc<Stats>, settings: &HubSettings) -> Hub {
        let recent = settings.recent;
        let (notices, notices_out) = mpsc::channel(NOTICE_QUEUE);
        let (control, control_out) = mpsc::channel(CONTROL_QUEUE);
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
                delivered: None,
            }),
            listener,
            stats,
            settings: *settings,
            next_id: AtomicU64::new(1),
            wake: Arc::new(Notify::new()),
            notices,
            notices_out: Mutex::new(Some(notices_out)),
            control,
            control_out: Mutex::new(Some(control_out)),
        }
    }

    /// Server-side control as heard; the first caller gets it, later ones `None`.
    pub fn take_control(&self) -> Option<mpsc::Receiver<ControlSignal>> {
        self.control_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Notified when durable events may be waiting.
    pub fn durable_wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The sequencer's batch notifications as heard (see [`pgpush_pg::WakeNotice`]); the first
    /// caller gets them, later ones `None`.
    pub fn take_notices(&self) -> Option<mpsc::Receiver<String>> {
        self.notices_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Starts durable fan-out at `head` in the current epoch of `history` (events up to the
    /// head are history, served by replay).
    pub fn start_durable(&self, head: i64, history: Arc<History>) {
        let mut state = self.lock();
        if state.head.is_none() {
            state.head = Some(head);
            state.recent.covers_from = head;
            let epoch = history.current().id;
            state.delivered = Some(Delivered {
                history,
                epochs: vec![(i64::MIN, epoch)],
            });
        }
    }

    /// The cursor point of `position` (`None` before the durable reader started).
    pub fn cursor_point(&self, position: i64) -> Option<CursorPoint> {
        self.lock().delivered.as_ref().map(|d| d.point(position))
    }

    /// The epoch for the cursors of what this node delivers now: `None` inside for the first
    /// epoch, whose cursors keep the original spelling (`None` outside before the reader
    /// started).
    pub fn cursor_epoch(&self) -> Option<Option<i64>> {
        let state = self.lock();
        let delivered = state.delivered.as_ref()?;
        let epoch = delivered.epoch();
        Some((epoch != delivered.history.first().id).then_some(epoch))
    }

    /// The database's history as last read, and the epoch this node delivers in.
    pub fn history(&self) -> Option<(Arc<History>, i64)> {
        let state = self.lock();
        let delivered = state.delivered.as_ref()?;
        Some((delivered.history.clone(), delivered.epoch()))
    }

    /// Adopts the database's new `history` (its current epoch is not the one this node
    /// delivers in). If what this node delivered is still part of it, only later cursors name
    /// the new epoch. If not, the node forgets its recent events, moves its head past the lost
    /// part and puts a reset marker (made by `marker` from the new head's point) in every
    /// subscriber's queue, behind what is queued already, so each client learns exactly where
    /// its history changed.
    pub fn adopt_history(
        &self,
        history: Arc<History>,
        marker: impl FnOnce(CursorPoint) -> Message,
    ) -> Option<Adoption> {
        let mut state = self.lock();
        let state = &mut *state;
        let head = state.head?;
        let delivered = state.delivered.as_mut()?;
        let previous_epoch = delivered.epoch();
        let continuation = history.continuation(&delivered.epochs, head);
        let current = history.current().id;
        delivered.history = history;
        let mut adoption = Adoption {
            previous_epoch,
            previous_head: head,
            continuation,
            head,
            reset: 0,
        };
        match continuation {
            Continuation::Continues => delivered.epochs.push((head, current)),
            Continuation::Forked { resume_after, .. } => {
                // The head moves back only when the database's history is older than what this
                // node delivered (restored from an older backup): forget the later switches.
                delivered.epochs.retain(|(from, _)| *from < resume_after);
                delivered.epochs.push((resume_after, current));
                let marker = Arc::new(marker(delivered.point(resume_after)));
                state.head = Some(resume_after);
                state.recent.messages.clear();
                state.recent.bytes = 0;
                state.recent.covers_from = resume_after;
                adoption.head = resume_after;
                let mut told = HashSet::new();
                for entry in state.channels.values() {
                    for outbox in entry.audience.outboxes() {
                        if told.insert(outbox.id()) {
                            outbox.offer_reset(&marker);
                        }
                    }
                }
                adoption.reset = told.len();
            }
        }
        Some(adoption)
    }

    /// Hands durable messages (in position order, above the head) to their subscribers, keeps
    /// them for replay, and moves the head; then up to `read_up_to` when the reader has read
    /// every event up to it (positions without an event lie between epochs). Returns the new
    /// head.
    pub fn fan_out_durable(&self, messages: Vec<Message>, read_up_to: Option<i64>) -> Option<i64> {
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
            if let Some(entry) = message.channel().and_then(|c| state.channels.get_mut(c)) {
                self.count_overflows(entry.audience.deliver(&message).overflows);
            }
            state.recent.push(message);
            state.head = Some(position);
        }
        if let (Some(head), Some(read)) = (state.head, read_up_to)
            && read > head
        {
            state.head = Some(read);
            // Nothing lies between, so the memory still covers everything up to the head.
        }
        state.head
    }

    /// A new client queue with the hub's limits. `kill` is cancelled when the queue overflows,
    /// so the transport tells the client (close 1013, an error event) and drops the connection.
    pub fn outbox(&self, kill: Option<CancellationToken>) -> (Arc<Outbox>, Inbox) {
        self.outbox_with(self.settings.queue, kill)
    }

    /// A new client queue with its own limits.
    pub fn outbox_with(
        &self,
        limits: QueueLimits,
        kill: Option<CancellationToken>,
    ) -> (Arc<Outbox>, Inbox) {
        queue::bounded(self.next_id.fetch_add(1, Ordering::Relaxed), limits, kill)
    }

    /// Adds `outbox` to `channels` and returns once PostgreSQL LISTENs to all of them, so a
    /// NOTIFY committed after this returns reaches the client. The first local subscriber of a
    /// channel issues `LISTEN`; later ones wait on the same confirmation.
    ///
    /// With `since` (a cursor's point), also says what the subscriber missed: every durable
    /// event of these channels in (`since`, head] is in the returned replay, and every later one
    /// is queued to the outbox, so replay-then-queue has no gap and no duplicate. A point the
    /// database's history no longer holds gets [`Replay::Lost`] instead; the check and the
    /// registration happen under the lock that adopting a new history takes, so a subscriber
    /// is either checked against the new history or registered in time for its reset marker.
    /// The caller makes sure `since` is not above the head (see `Durable::wait_for`).
    #[tracing::instrument(name = "subscribe", level = "debug", skip_all, fields(channels = channels.len(), since))]
    pub async fn subscribe(
        &self,
        outbox: &Arc<Outbox>,
        channels: &[Channel],
        since: Option<CursorPoint>,
        filter: Option<&Arc<Filter>>,
    ) -> Result<Subscription, SubscribeError> {
        let timeout = self.settings.subscribe_timeout;
        let mut confirmations = Vec::with_capacity(channels.len());
        let subscription = {
            let mut state = self.lock();
            let head = state.head.unwrap_or(0);
            for channel in channels {
                let entry = state
                    .channels
                    .entry(channel.clone())
                    .or_insert_with(|| ChannelEntry {
                        channel: channel.clone(),
                        audience: Audience::default(),
                        watchers: HashSet::new(),
                        listening: self.listener.listen(channel.as_str()).shared(),
                        idle_since: None,
                    });
                entry.idle_since = None;
                if entry.audience.insert(outbox.id(), outbox, filter, head) {
                    self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
                }
                confirmations.push(entry.listening.clone());
            }
            let replay = match (since, state.head, &state.delivered) {
                (Some(point), Some(_), Some(delivered))
                    if !delivered.history.holds(point.epoch, point.position) =>
                {
                    Replay::Lost
                }
                (
                    Some(CursorPoint {
                        position: after, ..
                    }),
                    Some(head),
                    _,
                ) if after < head => {
                    if after >= state.recent.covers_from {
                        Replay::Memory(state.recent.range(channels, after, head))
                    } else {
                        Replay::Database { after, upto: head }
                    }
                }
                _ => Replay::Nothing,
            };
            let cursor = match (state.head, &state.delivered) {
                (Some(head), Some(delivered)) => Some(delivered.point(head)),
                _ => None,
            };
            Subscription {
                head: state.head,
                cursor,
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
            self.unsubscribe(outbox.id(), channels);
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
            entry.watchers.remove(&id);
            if entry.audience.remove(id) {
                self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
            if entry.audience.is_empty() {
                if self.settings.unlisten_delay.is_zero() {
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
        let delay = self.settings.unlisten_delay;
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
        if self.settings.unlisten_delay.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(
            (self.settings.unlisten_delay / 4).max(Duration::from_millis(100)),
        );
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
        let mut state = self.lock();
        let Some(entry) = state.channels.get_mut(channel) else {
            return false;
        };
        let message = Arc::new(make(entry.channel.clone()));
        self.count_overflows(entry.audience.deliver(&message).overflows);
        true
    }

    /// Replaces the filter of subscriber `id` on those of `channels` it subscribes: the next
    /// message is matched against the new one (`None`: every message).
    pub fn refilter(
        &self,
        outbox: &Arc<Outbox>,
        channels: &[Channel],
        filter: Option<&Arc<Filter>>,
    ) {
        let mut state = self.lock();
        let head = state.head.unwrap_or(0);
        for channel in channels {
            if let Some(entry) = state.channels.get_mut(channel)
                && entry.audience.contains(outbox.id())
            {
                entry.audience.insert(outbox.id(), outbox, filter, head);
            }
        }
    }

    /// Brings filtered subscribers' cursors to the durable head: one behind it that no message
    /// moved since the last call (its filter left out everything since) gets a cursor marker
    /// (made by `marker` from the head's point) behind what is queued, so the client's cursor
    /// covers what it was not sent.
    pub fn advance_filtered(&self, marker: impl FnOnce(CursorPoint) -> Message) {
        let mut state = self.lock();
        let state = &mut *state;
        let (Some(head), Some(delivered)) = (state.head, &state.delivered) else {
            return;
        };
        if !state
            .channels
            .values()
            .any(|entry| entry.audience.distinct_filters() > 0)
        {
            return;
        }
        let marker = Arc::new(marker(delivered.point(head)));
        let mut told = HashSet::new();
        for entry in state.channels.values_mut() {
            let overflows = entry.audience.advance(&marker, &mut told);
            self.count_overflows(overflows);
        }
    }

    fn count_overflows(&self, overflows: usize) {
        if overflows > 0 {
            self.stats
                .slow_consumers
                .fetch_add(overflows as u64, Ordering::Relaxed);
        }
    }

    /// Subscriber `id` also receives the joins and leaves of those of `channels` it subscribes.
    pub fn watch(&self, id: u64, channels: &[Channel]) {
        let mut state = self.lock();
        for channel in channels {
            if let Some(entry) = state.channels.get_mut(channel)
                && entry.audience.contains(id)
            {
                entry.watchers.insert(id);
            }
        }
    }

    /// Whether subscriber `id` is subscribed to `channel` (the server may have unsubscribed it).
    pub fn is_subscribed(&self, id: u64, channel: &Channel) -> bool {
        self.lock()
            .channels
            .get(channel)
            .is_some_and(|entry| entry.audience.contains(id))
    }

    /// Hands a presence notification's joins and leaves to the channels' watchers.
    fn fan_out_presence(&self, payload: &str) {
        let signals = presence::signals(payload);
        let state = self.lock();
        for (channel, signal) in signals {
            let Some(entry) = state.channels.get(channel.as_str()) else {
                continue;
            };
            let signal = Arc::new(signal);
            for outbox in entry
                .watchers
                .iter()
                .filter_map(|id| entry.audience.get(*id))
            {
                if outbox.offer(&signal) == Offer::Overflowed {
                    self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// True while the LISTEN connection is up.
    pub fn listener_up(&self) -> bool {
        self.listener.is_up()
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
            // A batch goes to the reader as it is; anything else, or a batch that finds the
            // queue full (the reader then reads the gap), just wakes it.
            if !payload.starts_with('{') || self.notices.try_send(payload.to_owned()).is_err() {
                self.wake.notify_one();
            }
            return;
        }
        if channel == PRESENCE_CHANNEL {
            self.fan_out_presence(payload);
            return;
        }
        if channel == CONTROL_CHANNEL {
            if self
                .control
                .try_send(ControlSignal::Notice(payload.to_owned()))
                .is_err()
            {
                tracing::warn!("control queue full: a control notification was dropped");
            }
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
            // Notifications sent while the connection was down are lost: read them now.
            if generation > 1 {
                self.wake.notify_one();
            }
            let _ = self.control.try_send(ControlSignal::Connected);
        }
    }
}
