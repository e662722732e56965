//! Durable channels on a node: the catch-up reader that turns positioned events into fan-out and
//! follows the database's history across epochs, cursors, replay from the events table, and
//! durable publishing with its cursor.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, atomic::Ordering},
    time::{Duration, SystemTime},
};

use pgpush_pg::{CatchUp, Continuation, EventRow, EventStore, History, WakeNotice};
use pgpush_protocol::{
    Channel, CursorKey, CursorPoint, ErrorCode, Filter, MAX_HISTORY, Message, Payload, ResetReason,
};
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, error, info, warn};

use crate::{
    core::hub::{Adoption, Hub, Subscription},
    error::ClientError,
    ops::{stats::Stats, telemetry},
    settings::DurableSettings,
};

/// Events read per catch-up query.
const CATCH_UP_BATCH: i64 = 1000;
/// Events read per replay query.
const REPLAY_BATCH: i64 = 1000;
/// How long a publish waits for its event's position before answering without a cursor.
const POSITION_WAIT: Duration = Duration::from_secs(10);
/// How long a subscribe with a cursor ahead of this node waits for the node to catch up.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// How often the reader retries to start while it cannot (no schema, no database).
const START_RETRY: Duration = Duration::from_secs(2);
/// How often a node that cannot start durable channels says so again in its log.
const START_REMINDER: Duration = Duration::from_secs(60);
/// How often filtered subscribers whose filter left durable events out get a cursor marker, so
/// their cursor covers what they were not sent.
const CURSOR_ADVANCE: Duration = Duration::from_secs(2);
/// Most events a history with a filter looks through for its matches.
const FILTERED_HISTORY_SCAN: usize = 10_000;

/// A node's durable side.
#[derive(Debug)]
pub(crate) struct Durable {
    store: EventStore,
    /// A hot standby for reads of positions it has replayed (`--standby-database-url`).
    standby: Option<EventStore>,
    hub: Arc<Hub>,
    config: DurableSettings,
    /// Set once the schema is there and the reader started.
    key: OnceLock<CursorKey>,
    /// The head after each fan-out and the database's history as last read (`None` until
    /// started); the hub holds the same, this is for waiting on it.
    view: watch::Sender<Option<View>>,
    /// True once the reader's first attempt to start has ended, started or not.
    first_attempt: watch::Sender<bool>,
    /// Why the reader has not started, while it retries (`None` once started).
    not_started: Mutex<Option<String>>,
    wake: Arc<Notify>,
    stats: Arc<Stats>,
    /// Publishes waiting for their event's position, by event id (several when idempotent
    /// retries of one key wait for the same event).
    waiters: Mutex<HashMap<i64, Vec<oneshot::Sender<i64>>>>,
}

/// Where the reader stands: what waiting for a cursor's point looks at.
#[derive(Debug, Clone)]
struct View {
    head: i64,
    history: Arc<History>,
}

impl View {
    /// True when a subscription from `point` can be decided here: its epoch is known, and the
    /// node has caught up to it unless the history no longer holds it.
    fn decides(&self, point: CursorPoint) -> bool {
        let epoch = point
            .epoch
            .unwrap_or_else(|| self.history.epoch_containing(point.position).id);
        match self.history.shared_end(epoch) {
            None => false,
            Some(Some(end)) if point.position > end => true,
            Some(_) => self.head >= point.position,
        }
    }
}

/// The refusal while durable channels have not started on this node.
fn unavailable() -> ClientError {
    ClientError::new(
        ErrorCode::Unavailable,
        "durable channels are not available on this node yet",
    )
}

/// The range of the last batch notification heard, per epoch.
#[derive(Debug, Default)]
struct Notified {
    last: Option<(i64, i64)>,
}

impl Notified {
    /// Records a notification of (`after`, `upto`] in `epoch`; true when it starts below where
    /// the last one of the same epoch ended: positions given twice.
    fn went_back(&mut self, epoch: i64, after: i64, upto: i64) -> bool {
        let went_back = self
            .last
            .is_some_and(|(last_epoch, last_upto)| last_epoch == epoch && after < last_upto);
        self.last = Some((epoch, upto));
        went_back
    }
}

/// What a replay from the events table found.
#[derive(Debug)]
pub(crate) enum Replayed {
    /// Messages after the cursor, in order; `more` when the batch was full.
    Messages {
        /// The batch.
        messages: Vec<Arc<Message>>,
        /// True when another batch may follow.
        more: bool,
    },
    /// Retention already deleted events after the cursor: the client must reset.
    Expired,
}

impl Durable {
    pub(crate) fn new(
        store: EventStore,
        standby: Option<EventStore>,
        hub: Arc<Hub>,
        stats: Arc<Stats>,
        config: &DurableSettings,
    ) -> Durable {
        let wake = hub.durable_wake();
        Durable {
            stats,
            store,
            standby,
            hub,
            config: *config,
            key: OnceLock::new(),
            view: watch::channel(None).0,
            first_attempt: watch::channel(false).0,
            not_started: Mutex::new(Some("the durable reader is starting".to_owned())),
            wake,
            waiters: Mutex::new(HashMap::new()),
        }
    }

    /// Runs the reader until `shutdown`: waits for the schema, starts at the global head, then
    /// applies the sequencer's batch notifications as they come (the events are in them), and
    /// reads the events table only when it must: a notification shows a gap (one was lost or
    /// dropped), names an event too large to carry, or belongs to another epoch; a bare wake-up
    /// or a listener reconnect; and `catch_up_interval` after the last notification, so a lost
    /// last batch delays delivery but never loses it.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if !self.config.enabled {
            // Nobody applies batches here: closing their queue keeps none in memory.
            drop(self.hub.take_notices());
            *self.lock_not_started() = None;
            self.first_attempt.send_replace(true);
            return;
        }
        let mut reminded: Option<tokio::time::Instant> = None;
        let (start, history) = loop {
            match self.start().await {
                Ok(started) => break started,
                Err(error) => {
                    let reason = if error.is_not_migrated() {
                        "the pgpush schema is missing or older than this release: run `pgpush \
                         migrate` (or serve --migrate)"
                            .to_owned()
                    } else {
                        format!("durable channels cannot start: {error}")
                    };
                    // Once, then a reminder a minute: a migration Job may be on its way.
                    if reminded.is_none_or(|at| at.elapsed() >= START_REMINDER) {
                        warn!(
                            "{reason}; this node is not ready, and becomes ready by itself once \
                             it can start"
                        );
                        reminded = Some(tokio::time::Instant::now());
                    }
                    *self.lock_not_started() = Some(reason);
                    self.first_attempt.send_replace(true);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(START_RETRY) => {}
            }
        };
        *self.lock_not_started() = None;
        info!(
            head = start,
            epoch = format!("{:x}", history.current().id),
            "durable reader started"
        );
        let history = Arc::new(history);
        self.hub.start_durable(start, history.clone());
        self.view.send_replace(Some(View {
            head: start,
            history,
        }));
        self.first_attempt.send_replace(true);
        let mut notices = self.hub.take_notices();
        let mut head = self.catch_up_logged(start, None).await;
        // The end of the last batch notification heard: each begins where the one before ended.
        let mut notified = Notified::default();
        let mut advance = tokio::time::interval(CURSOR_ADVANCE);
        loop {
            let notice = async {
                match notices.as_mut() {
                    Some(notices) => notices.recv().await,
                    None => std::future::pending().await,
                }
            };
            head = tokio::select! {
                _ = shutdown.cancelled() => return,
                notice = notice => match notice {
                    Some(notice) => self.apply(&notice, head, &mut notified).await,
                    None => {
                        notices = None;
                        head
                    }
                },
                _ = self.wake.notified() => self.catch_up_logged(head, None).await,
                _ = tokio::time::sleep(self.config.catch_up_interval) => {
                    self.catch_up_logged(head, None).await
                }
                _ = advance.tick() => {
                    self.advance_filtered();
                    head
                }
            };
        }
    }

    /// Applies one `pgpush_wake` notification at `head`: a batch that continues the head is
    /// fanned out as it is, one already delivered is ignored, anything else is read from the
    /// table. Returns the new head.
    async fn apply(&self, notice: &str, head: i64, notified: &mut Notified) -> i64 {
        let target = match WakeNotice::parse(notice) {
            WakeNotice::Batch {
                epoch,
                after,
                upto,
                events,
            } if self.epoch() == Some(epoch) => {
                if notified.went_back(epoch, after, upto) {
                    // Positions of this epoch given again: the database lost the end of its
                    // history. The primary's high-water mark shows it (see `catch_up`).
                    None
                } else if upto <= head {
                    return head;
                } else if let (Some(events), true) = (events, after <= head) {
                    return match self.fan_out(events, Some(upto)) {
                        Some(new_head) if new_head != head => {
                            self.publish_view(new_head);
                            new_head
                        }
                        _ => head,
                    };
                } else {
                    // A gap before it, or an event too large to carry: read up to its end.
                    Some(upto)
                }
            }
            // A new epoch, or a bare wake-up: the primary knows.
            _ => None,
        };
        self.catch_up_logged(head, target).await
    }

    /// [`Durable::catch_up`], a failure logged (the next wake-up or interval tries again).
    async fn catch_up_logged(&self, head: i64, target: Option<i64>) -> i64 {
        match self.catch_up(head, target).await {
            Ok(new_head) => new_head,
            Err(error) => {
                warn!(%error, "durable catch-up failed; retrying");
                head
            }
        }
    }

    /// The starting head and the history it is in (read in that order, so the head is never
    /// newer than the history's current epoch).
    async fn start(&self) -> Result<(i64, History), pgpush_pg::Error> {
        self.store.check_schema().await?;
        let installation = self.store.installation().await?;
        let head = self.store.head().await?;
        let history = self.store.history().await?;
        let _ = self.key.set(CursorKey::new(&installation.cursor_key));
        Ok((head.last_position, history))
    }

    /// Reads every event after `head` and fans it out, in batches, following the database's
    /// history into new epochs. With a `target` known to be positioned (a notification's end),
    /// a standby that has replayed it may answer. Returns the new head.
    async fn catch_up(&self, mut head: i64, target: Option<i64>) -> Result<i64, pgpush_pg::Error> {
        loop {
            let read = self.read_after(head, target).await?;
            let Some((_, epoch)) = self.hub.history() else {
                return Ok(head);
            };
            if read.epoch != epoch {
                head = self.adopt_history().await?;
                continue;
            }
            if read.last_position < head {
                // The same epoch, but the history ends below what this node delivered: the
                // database lost its end without noticing (nothing restarted). Say so, and go
                // on in the epoch that begins.
                let now = self.store.begin_epoch_if_behind(epoch, head).await?;
                if now == epoch {
                    return Ok(head);
                }
                continue;
            }
            let full = read.rows.len() as i64 == CATCH_UP_BATCH;
            // A batch that is not full ends the history: every event up to the high-water mark
            // was read (positions between epochs have none).
            let read_up_to = (!full).then_some(read.last_position);
            if let Some(new_head) = self.fan_out(read.rows, read_up_to)
                && new_head != head
            {
                head = new_head;
                self.publish_view(head);
            }
            if !full {
                return Ok(head);
            }
        }
    }

    /// Up to one batch of events after `head`: from the standby when there is one, `target` is
    /// above `head`, and the standby has replayed it in this node's epoch; from the primary
    /// otherwise (a lagging standby never makes the node skip or wait).
    async fn read_after(
        &self,
        head: i64,
        target: Option<i64>,
    ) -> Result<CatchUp, pgpush_pg::Error> {
        if let (Some(standby), Some(target)) = (&self.standby, target)
            && target > head
        {
            let read = standby
                .after(head, CATCH_UP_BATCH)
                .instrument(debug_span!(
                    "catch_up.query",
                    kind = "standby",
                    after = head
                ))
                .await;
            match read {
                Ok(read) if self.standby_covers(read.epoch, read.last_position, target) => {
                    return Ok(read);
                }
                Ok(read) => debug!(
                    standby_at = read.last_position,
                    target, "the standby has not replayed the batch yet; reading the primary"
                ),
                Err(error) => debug!(%error, "standby read failed; reading the primary"),
            }
        }
        self.stats.durable_queries.fetch_add(1, Ordering::Relaxed);
        self.store
            .after(head, CATCH_UP_BATCH)
            .instrument(debug_span!("catch_up.query", kind = "reader", after = head))
            .await
    }

    fn lock_not_started(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.not_started.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why durable channels are not serving (`None` when they are, or are turned off): the
    /// node is not ready meanwhile.
    pub(crate) fn not_ready_reason(&self) -> Option<String> {
        self.lock_not_started().clone()
    }

    /// The refusal of durable features on a node started with `--no-durable`.
    fn turned_off(&self) -> Result<(), ClientError> {
        if self.config.enabled {
            return Ok(());
        }
        Err(ClientError::new(
            ErrorCode::NotImplemented,
            "durable channels are turned off on this node (--no-durable): publish with \
             mode=ephemeral and subscribe without a cursor",
        ))
    }

    fn publish_view(&self, head: i64) {
        self.view.send_modify(|view| {
            if let Some(view) = view {
                view.head = head;
            }
        });
    }

    /// The database's current epoch is not the one this node delivers in: reads its history and
    /// adopts it (see [`Hub::adopt_history`]). Returns the head to go on from.
    async fn adopt_history(&self) -> Result<i64, pgpush_pg::Error> {
        let history = Arc::new(self.store.history().await?);
        let key = self
            .key
            .get()
            .expect("the reader starts after the key is set");
        let adoption = self.hub.adopt_history(history.clone(), |point| {
            Message::reset(
                ResetReason::HistoryChanged,
                point.position,
                key.encode(point),
            )
        });
        let Some(adoption) = adoption else {
            return Ok(self.head().unwrap_or_default());
        };
        self.report(&adoption, &history);
        self.view.send_replace(Some(View {
            head: adoption.head,
            history,
        }));
        Ok(adoption.head)
    }

    /// Logs an epoch change and counts it: an ERROR when clients lost events they had received.
    fn report(&self, adoption: &Adoption, history: &History) {
        self.stats
            .durable_epoch_changes
            .fetch_add(1, Ordering::Relaxed);
        let epoch = format!("{:x}", history.current().id);
        let previous = format!("{:x}", adoption.previous_epoch);
        match adoption.continuation {
            Continuation::Continues => info!(
                epoch,
                previous,
                head = adoption.previous_head,
                "durable history goes on in a new epoch (PostgreSQL restarted, or failed over or \
                 was restored with everything this node delivered): nobody is reset"
            ),
            Continuation::Forked { shared_up_to, .. } => {
                self.stats
                    .durable_history_forks
                    .fetch_add(1, Ordering::Relaxed);
                self.stats
                    .count_resets(ResetReason::HistoryChanged, adoption.reset);
                let lost = match shared_up_to {
                    Some(shared) => format!(
                        "it now ends at position {shared}, but this node had delivered up to {}",
                        adoption.previous_head
                    ),
                    None => format!(
                        "it no longer contains epoch {previous} that this node delivered in \
                         (restored from an older backup?)"
                    ),
                };
                error!(
                    epoch,
                    previous,
                    head = adoption.previous_head,
                    connections_reset = adoption.reset,
                    "PostgreSQL lost durable events: {lost} (a failover to a standby that had not \
                     received them, or a restore from a backup). Every connection on this node \
                     gets `reset` and reloads its state, then goes on live in epoch {epoch}; any \
                     cursor past the lost point gets `reset` on every node."
                );
            }
        }
    }

    /// Fans one batch of events out to this node's subscribers, in a `fan_out.batch` span linked
    /// to each producer's trace context, then moves the head to `read_up_to`. Returns the new
    /// head.
    fn fan_out(&self, rows: Vec<EventRow>, read_up_to: Option<i64>) -> Option<i64> {
        if rows.is_empty() {
            return self.hub.fan_out_durable(Vec::new(), read_up_to);
        }
        let span = debug_span!(
            "fan_out.batch",
            events = rows.len(),
            first_position = rows.first().map(|r| r.position),
            last_position = rows.last().map(|r| r.position),
        );
        telemetry::link_producers(&span, rows.iter().filter_map(|r| r.traceparent.as_deref()));
        let _entered = span.enter();
        self.stats
            .durable_in
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        self.resolve_waiters(&rows);
        let now = SystemTime::now();
        for row in &rows {
            self.stats.observe_commit_to_send(row.created_at, now);
        }
        let epoch = self.hub.cursor_epoch()?;
        let messages = rows
            .into_iter()
            .filter_map(|row| self.message(row, epoch))
            .collect();
        self.hub.fan_out_durable(messages, read_up_to)
    }

    fn resolve_waiters(&self, rows: &[EventRow]) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if waiters.is_empty() {
            return;
        }
        for row in rows {
            for waiter in waiters.remove(&row.id).into_iter().flatten() {
                let _ = waiter.send(row.position);
            }
        }
    }

    /// A message from a stored event, its cursor in `epoch` (`None` for a channel name no
    /// client could subscribe to).
    fn message(&self, row: EventRow, epoch: Option<i64>) -> Option<Message> {
        let key = self.key.get()?;
        let channel = Channel::new(&row.channel).ok()?;
        let point = CursorPoint {
            epoch,
            position: row.position,
        };
        Some(Message::durable(
            channel,
            Payload::new(row.payload),
            row.position,
            key.encode(point),
        ))
    }

    /// Gives filtered subscribers behind the head a cursor marker at the head.
    fn advance_filtered(&self) {
        let Some(key) = self.key.get() else {
            return;
        };
        self.hub
            .advance_filtered(|point| Message::cursor_marker(point.position, key.encode(point)));
    }

    /// The cursor of `position`, once started.
    pub(crate) fn cursor(&self, position: i64) -> Option<String> {
        let point = self.hub.cursor_point(position)?;
        self.encode(point)
    }

    /// The cursor of `point`, once started.
    pub(crate) fn encode(&self, point: CursorPoint) -> Option<String> {
        self.key.get().map(|key| key.encode(point))
    }

    /// A connection's cursor once `subscription`'s replay is sent: its registration head's.
    pub(crate) fn subscription_cursor(&self, subscription: &Subscription) -> Option<String> {
        self.encode(subscription.cursor?)
    }

    /// The position up to which durable events were delivered.
    pub(crate) fn head(&self) -> Option<i64> {
        self.view.borrow().as_ref().map(|view| view.head)
    }

    /// The epoch this node delivers in (`None` before the reader started).
    pub(crate) fn epoch(&self) -> Option<i64> {
        self.hub.history().map(|(_, epoch)| epoch)
    }

    /// Waits (up to `timeout`) until the reader's first start attempt ended. A node serves
    /// clients only after it: a client subscribed before the reader read its starting head
    /// would miss the events positioned in between.
    pub(crate) async fn wait_first_attempt(&self, timeout: Duration) {
        let mut attempted = self.first_attempt.subscribe();
        let _ = tokio::time::timeout(timeout, attempted.wait_for(|done| *done)).await;
    }

    /// Waits (up to `timeout`) until the reader runs; false if it did not start in time, and
    /// at once when its first attempt failed (no schema, durable channels off): nobody waits on
    /// a node that is retrying.
    pub(crate) async fn wait_started(&self, timeout: Duration) -> bool {
        let mut attempted = self.first_attempt.subscribe();
        let _ = tokio::time::timeout(timeout, attempted.wait_for(|done| *done)).await;
        let mut view = self.view.subscribe();
        if self.not_ready_reason().is_some() || !self.config.enabled {
            return view.borrow().is_some();
        }
        tokio::time::timeout(timeout, view.wait_for(Option::is_some))
            .await
            .is_ok()
    }

    /// Checks a cursor's form and signature without waiting (for errors before a WebSocket
    /// upgrade); a node that has not started durable channels yet accepts it for now.
    pub(crate) fn check_cursor(&self, cursor: &str) -> Result<(), ClientError> {
        match self.key.get() {
            Some(key) => key.decode(cursor).map(|_| ()).map_err(ClientError::from),
            None => Ok(()),
        }
    }

    /// Counts a client told to reset for `reason` outside the transports' replays (a Hippie
    /// queue whose stored position is gone).
    pub(crate) fn count_reset(&self, reason: ResetReason) {
        self.stats.count_resets(reason, 1);
    }

    /// The events table.
    pub(crate) fn store(&self) -> &EventStore {
        &self.store
    }

    /// Waits (bounded) until this node can decide a subscription from `point`: it knows the
    /// point's epoch and has delivered everything up to it, or knows the history lost it (see
    /// [`View::decides`]); false if not in time.
    pub(crate) async fn wait_for(&self, point: CursorPoint) -> bool {
        let mut view = self.view.subscribe();
        let decided = |view: &Option<View>| view.as_ref().is_some_and(|v| v.decides(point));
        if decided(&view.borrow()) {
            return true;
        }
        // Another node is ahead, or has seen an epoch this one has not read yet: ask now.
        self.wake.notify_one();
        tokio::time::timeout(CATCH_UP_WAIT, view.wait_for(decided))
            .await
            .is_ok()
    }

    /// Parses a client's cursor and waits until this node can resume from it: caught up to it,
    /// so the subscription's replay covers everything after it (a cursor from another node that
    /// is a few milliseconds ahead is fine), or sure that the database's history lost it (the
    /// hub then answers `reset`). A forged cursor is `bad_cursor`.
    pub(crate) async fn resume_point(&self, cursor: &str) -> Result<CursorPoint, ClientError> {
        self.turned_off()?;
        self.wait_started(CATCH_UP_WAIT).await;
        let key = self.key.get().ok_or_else(unavailable)?;
        let point = key.decode(cursor).map_err(ClientError::from)?;
        if self.wait_for(point).await {
            return Ok(point);
        }
        let known = self
            .view
            .borrow()
            .as_ref()
            .map(|v| point.epoch.is_none_or(|e| v.history.knows(e)));
        match known {
            // An epoch neither this node nor the database knows: another history's.
            Some(false) => Ok(point),
            Some(true) if self.proves_lost_end(point).await => Ok(point),
            _ => Err(unavailable()),
        }
    }

    /// The last `limit` durable messages of `channel` before the cursor `before` (default: all
    /// up to this node's head), oldest first, and the cursor to follow live from: this node's
    /// head, so a subscribe with it continues without a gap or a duplicate.
    pub(crate) async fn history(
        &self,
        channel: &Channel,
        before: Option<&str>,
        limit: i64,
        filter: Option<&Filter>,
    ) -> Result<(Vec<Arc<Message>>, Option<String>), ClientError> {
        self.turned_off()?;
        self.wait_started(CATCH_UP_WAIT).await;
        let (Some(key), Some(head)) = (self.key.get(), self.head()) else {
            return Err(unavailable());
        };
        let before = match before {
            Some(cursor) => key.decode(cursor).map_err(ClientError::from)?.position,
            None => i64::MAX,
        };
        let messages = self
            .read_history(channel, before, head, limit, filter)
            .await?;
        Ok((messages, self.cursor(head)))
    }

    /// The last `limit` durable messages of each of `channels` up to `upto`, in position order
    /// (what a subscribe with `history` is sent before it goes live from `upto`).
    pub(crate) async fn last_of_channels(
        &self,
        channels: &[Channel],
        upto: i64,
        limit: i64,
        filter: Option<&Filter>,
    ) -> Result<Vec<Arc<Message>>, ClientError> {
        let mut messages = Vec::new();
        for channel in channels {
            messages.extend(
                self.read_history(channel, i64::MAX, upto, limit, filter)
                    .await?,
            );
        }
        messages.sort_by_key(|m| m.position());
        Ok(messages)
    }

    /// The last `limit` messages of `channel` below `before` and at most `upto` that `filter`
    /// matches, oldest first: read back a page at a time, looking at no more than the last
    /// [`FILTERED_HISTORY_SCAN`] events.
    async fn read_history(
        &self,
        channel: &Channel,
        before: i64,
        upto: i64,
        limit: i64,
        filter: Option<&Filter>,
    ) -> Result<Vec<Arc<Message>>, ClientError> {
        let Some(filter) = filter else {
            return self.read_history_page(channel, before, upto, limit).await;
        };
        let mut found: Vec<Arc<Message>> = Vec::new();
        let (mut before, mut scanned) = (before, 0);
        loop {
            let page = self
                .read_history_page(channel, before, upto, MAX_HISTORY)
                .await?;
            scanned += page.len();
            let full = page.len() as i64 == MAX_HISTORY;
            let Some(first) = page.first().and_then(|m| m.position()) else {
                break;
            };
            let mut matched: Vec<Arc<Message>> = page
                .into_iter()
                .filter(|m| filter.matches(m.document()))
                .collect();
            matched.append(&mut found);
            found = matched;
            if found.len() as i64 >= limit || !full || scanned >= FILTERED_HISTORY_SCAN {
                break;
            }
            before = first;
        }
        found.drain(..found.len().saturating_sub(limit.max(0) as usize));
        Ok(found)
    }

    /// The last `limit` messages of `channel` below `before` and at most `upto`, oldest first.
    async fn read_history_page(
        &self,
        channel: &Channel,
        before: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<Arc<Message>>, ClientError> {
        self.stats.durable_queries.fetch_add(1, Ordering::Relaxed);
        let read = self
            .store
            .channel_history(channel.as_str(), before, upto, limit)
            .instrument(debug_span!("catch_up.query", kind = "history", before))
            .await
            .map_err(ClientError::database)?;
        let epoch = self.hub.cursor_epoch().unwrap_or_default();
        Ok(read
            .rows
            .into_iter()
            .filter_map(|row| self.message(row, epoch))
            .map(Arc::new)
            .collect())
    }

    /// True when the database's current epoch ends below `point`, which a node delivered in it:
    /// the history lost its end. A new epoch then begins, and this waits until the node read it.
    async fn proves_lost_end(&self, point: CursorPoint) -> bool {
        let Ok(head) = self.store.head().await else {
            return false;
        };
        let Some(history) = self.view.borrow().as_ref().map(|v| v.history.clone()) else {
            return false;
        };
        let epoch = point
            .epoch
            .unwrap_or_else(|| history.epoch_containing(point.position).id);
        if epoch != head.epoch || head.last_position >= point.position {
            return false;
        }
        if let Err(error) = self
            .store
            .begin_epoch_if_behind(head.epoch, point.position)
            .await
        {
            warn!(%error, "could not begin a new durable epoch");
            return false;
        }
        self.wait_for(point).await
    }

    /// The next durable events of `channels` in (`after`, `upto`] from the events table (at
    /// most one batch), or [`Replayed::Expired`] when retention removed some after `after`.
    /// Call again from the last position while the batch is full. Messages carry cursors of the
    /// epoch this node delivers in: every point up to the head is part of it.
    pub(crate) async fn replay_chunk(
        &self,
        channels: &[Channel],
        after: i64,
        upto: i64,
    ) -> Result<Replayed, ClientError> {
        let names: Vec<&str> = channels.iter().map(Channel::as_str).collect();
        let replay = self
            .read_replay(&names, after, upto)
            .await
            .map_err(ClientError::database)?;
        if after < replay.retention_floor {
            return Ok(Replayed::Expired);
        }
        let more = replay.rows.len() as i64 == REPLAY_BATCH;
        let epoch = self.hub.cursor_epoch().unwrap_or_default();
        let messages: Vec<Arc<Message>> = replay
            .rows
            .into_iter()
            .filter_map(|row| self.message(row, epoch))
            .map(Arc::new)
            .collect();
        Ok(Replayed::Messages { messages, more })
    }

    /// True when a standby's snapshot in `epoch` with high-water mark `last` can answer for the
    /// primary: it is this node's epoch and it has replayed `needed` (so every event up to it).
    /// Counts the reads it lets the standby answer.
    fn standby_covers(&self, epoch: i64, last: i64, needed: i64) -> bool {
        let covers = self.epoch() == Some(epoch) && last >= needed;
        if covers {
            self.stats
                .durable_standby_queries
                .fetch_add(1, Ordering::Relaxed);
        }
        covers
    }

    /// One replay batch of `names` in (`after`, `upto`]: from the standby when it has replayed
    /// `upto` in this node's epoch, from the primary otherwise.
    async fn read_replay(
        &self,
        names: &[&str],
        after: i64,
        upto: i64,
    ) -> Result<pgpush_pg::Replay, pgpush_pg::Error> {
        let span =
            |kind: &'static str| debug_span!("catch_up.query", kind, after, channels = names.len());
        if let Some(standby) = &self.standby {
            match standby
                .replay(names, after, upto, REPLAY_BATCH)
                .instrument(span("standby_replay"))
                .await
            {
                Ok(replay) if self.standby_covers(replay.epoch, replay.last_position, upto) => {
                    return Ok(replay);
                }
                Ok(_) => debug!(
                    upto,
                    "the standby has not replayed this far yet; replaying from the primary"
                ),
                Err(error) => debug!(%error, "standby replay failed; replaying from the primary"),
            }
        }
        self.stats.durable_queries.fetch_add(1, Ordering::Relaxed);
        self.store
            .replay(names, after, upto, REPLAY_BATCH)
            .instrument(span("replay"))
            .await
    }

    /// Publishes a durable event and waits (bounded) for its position. Returns the cursor, or
    /// `None` when the sequencer has not positioned it in time (the event is committed anyway).
    pub(crate) async fn publish(
        &self,
        channel: &Channel,
        payload: &str,
        traceparent: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Option<String>, ClientError> {
        self.turned_off()?;
        if payload.len() > self.config.max_payload_bytes {
            return Err(ClientError::new(
                ErrorCode::TooLarge,
                format!(
                    "durable payload is {} bytes; the limit is {}",
                    payload.len(),
                    self.config.max_payload_bytes
                ),
            ));
        }
        let key = idempotency_key.map(|key| (key, self.config.idempotency_window));
        let id = self
            .store
            .publish(channel.as_str(), payload, traceparent, key)
            .await
            .map_err(ClientError::database)?;
        let (sender, receiver) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .push(sender);
        // The reader may have passed this event before the waiter was registered: ask once.
        let position = match self.store.position_of(id).await {
            Ok(Some(position)) => Some(position),
            _ => tokio::time::timeout(POSITION_WAIT, receiver)
                .await
                .ok()
                .and_then(Result::ok),
        };
        // Forget waiters that gave up (this one, if it did).
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pending) = waiters.get_mut(&id) {
            pending.retain(|waiter| !waiter.is_closed());
            if pending.is_empty() {
                waiters.remove(&id);
            }
        }
        drop(waiters);
        Ok(position.and_then(|position| self.cursor(position)))
    }
}

#[cfg(test)]
mod tests {
    use super::Notified;

    #[test]
    fn a_notification_that_starts_below_the_last_ones_end_went_back() {
        let mut notified = Notified::default();
        assert!(!notified.went_back(1, 0, 10), "the first");
        assert!(!notified.went_back(1, 10, 12), "the next batch");
        assert!(!notified.went_back(1, 15, 20), "a gap is not going back");
        assert!(notified.went_back(1, 18, 25), "positions given twice");
        assert!(
            !notified.went_back(2, 1 << 40, (1 << 40) + 3),
            "a new epoch starts anew"
        );
        assert!(
            !notified.went_back(1, 0, 1),
            "a notification of another epoch is not compared"
        );
    }
}
