//! Durable channels on a node: the catch-up reader that turns positioned events into fan-out,
//! cursors, replay from the events table, and durable publishing with its cursor.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, atomic::Ordering},
    time::{Duration, SystemTime},
};

use pgpush_pg::{EventRow, EventStore};
use pgpush_protocol::{Channel, CursorError, CursorKey, ErrorCode, Message, Payload};
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug_span, info, warn};

use crate::{http::ApiError, hub::Hub, publish::database_error, stats::Stats, telemetry};

/// Events read per catch-up query.
const CATCH_UP_BATCH: i64 = 1000;
/// Events read per replay query.
const REPLAY_BATCH: i64 = 1000;
/// How long a publish waits for its event's position before answering without a cursor.
const POSITION_WAIT: Duration = Duration::from_secs(10);
/// How long a subscribe with a cursor ahead of this node waits for the node to catch up.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// Durable-channel settings of a node.
#[derive(Debug, Clone)]
pub(crate) struct DurableConfig {
    /// Safety poll: catch up this often even without a wake-up.
    pub(crate) catch_up_interval: Duration,
    /// Largest durable payload accepted from clients.
    pub(crate) max_payload_bytes: usize,
    /// How long an `Idempotency-Key` is remembered.
    pub(crate) idempotency_window: Duration,
}

/// A node's durable side.
#[derive(Debug)]
pub(crate) struct Durable {
    store: EventStore,
    hub: Arc<Hub>,
    config: DurableConfig,
    /// Set once the schema is there and the reader started.
    key: OnceLock<CursorKey>,
    /// The head after each fan-out (`None` until started).
    head: watch::Sender<Option<i64>>,
    /// True once the reader's first attempt to start has ended, started or not.
    first_attempt: watch::Sender<bool>,
    wake: Arc<Notify>,
    stats: Arc<Stats>,
    /// Publishes waiting for their event's position, by event id (several when idempotent
    /// retries of one key wait for the same event).
    waiters: Mutex<HashMap<i64, Vec<oneshot::Sender<i64>>>>,
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
        hub: Arc<Hub>,
        stats: Arc<Stats>,
        config: DurableConfig,
    ) -> Durable {
        let wake = hub.durable_wake();
        Durable {
            stats,
            store,
            hub,
            config,
            key: OnceLock::new(),
            head: watch::channel(None).0,
            first_attempt: watch::channel(false).0,
            wake,
            waiters: Mutex::new(HashMap::new()),
        }
    }

    /// Runs the reader until `shutdown`: waits for the schema, starts at the global head, then
    /// catches up on every wake-up (a `pgpush_wake` NOTIFY, a listener reconnect) and every
    /// `catch_up_interval`, so a lost wake-up delays delivery but never loses it.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut warned = false;
        let start = loop {
            match self.start().await {
                Ok(head) => break head,
                Err(error) => {
                    self.first_attempt.send_replace(true);
                    if !warned {
                        warn!(%error, "durable channels unavailable until this succeeds; retrying");
                        warned = true;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        };
        info!(head = start, "durable reader started");
        self.hub.start_durable(start);
        self.head.send_replace(Some(start));
        self.first_attempt.send_replace(true);
        let mut head = start;
        loop {
            match self.catch_up(head).await {
                Ok(new_head) => head = new_head,
                Err(error) => warn!(%error, "durable catch-up failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.catch_up_interval) => {}
            }
        }
    }

    async fn start(&self) -> Result<i64, pgpush_pg::Error> {
        let installation = self.store.installation().await?;
        let head = self.store.head().await?;
        let _ = self.key.set(CursorKey::new(&installation.cursor_key));
        Ok(head.last_position)
    }

    /// Reads every event after `head` and fans it out, in batches. Returns the new head.
    async fn catch_up(&self, mut head: i64) -> Result<i64, pgpush_pg::Error> {
        loop {
            self.stats.durable_queries.fetch_add(1, Ordering::Relaxed);
            let rows = self
                .store
                .after(head, CATCH_UP_BATCH)
                .instrument(debug_span!("catch_up.query", kind = "reader", after = head))
                .await?;
            let full = rows.len() as i64 == CATCH_UP_BATCH;
            if rows.is_empty() {
                return Ok(head);
            }
            if let Some(new_head) = self.fan_out(rows) {
                head = new_head;
                self.head.send_replace(Some(head));
            }
            if !full {
                return Ok(head);
            }
        }
    }

    /// Fans one batch of events out to this node's subscribers, in a `fan_out.batch` span linked
    /// to each producer's trace context. Returns the new head.
    fn fan_out(&self, rows: Vec<EventRow>) -> Option<i64> {
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
        let messages = rows
            .into_iter()
            .filter_map(|row| self.message(row))
            .collect();
        self.hub.fan_out_durable(messages)
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

    /// A message from a stored event (`None` for a channel name no client could subscribe to).
    fn message(&self, row: EventRow) -> Option<Message> {
        let key = self.key.get()?;
        let channel = Channel::new(&row.channel).ok()?;
        Some(Message::durable(
            channel,
            Payload::new(row.payload),
            row.position,
            key.encode(row.position),
        ))
    }

    /// The cursor of `position`, once started.
    pub(crate) fn cursor(&self, position: i64) -> Option<String> {
        self.key.get().map(|key| key.encode(position))
    }

    /// The position up to which durable events were delivered.
    pub(crate) fn head(&self) -> Option<i64> {
        *self.head.borrow()
    }

    /// Waits (up to `timeout`) until the reader's first start attempt ended. A node serves
    /// clients only after it: a client subscribed before the reader read its starting head
    /// would miss the events positioned in between.
    pub(crate) async fn wait_first_attempt(&self, timeout: Duration) {
        let mut attempted = self.first_attempt.subscribe();
        let _ = tokio::time::timeout(timeout, attempted.wait_for(|done| *done)).await;
    }

    /// Waits (up to `timeout`) until the reader runs; false if it did not start in time.
    pub(crate) async fn wait_started(&self, timeout: Duration) -> bool {
        let mut head = self.head.subscribe();
        tokio::time::timeout(timeout, head.wait_for(Option::is_some))
            .await
            .is_ok()
    }

    /// Checks a cursor's form and signature without waiting (for errors before a WebSocket
    /// upgrade); a node that has not started durable channels yet accepts it for now.
    pub(crate) fn check_cursor(&self, cursor: &str) -> Result<(), ApiError> {
        match self.key.get() {
            Some(key) => key.decode(cursor).map(|_| ()).map_err(bad_cursor),
            None => Ok(()),
        }
    }

    /// The events table.
    pub(crate) fn store(&self) -> &EventStore {
        &self.store
    }

    /// Waits (bounded) until this node delivered everything up to `position`; false if not.
    pub(crate) async fn wait_for(&self, position: i64) -> bool {
        let mut head = self.head.subscribe();
        let caught_up = tokio::time::timeout(
            CATCH_UP_WAIT,
            head.wait_for(|h| h.is_some_and(|h| h >= position)),
        )
        .await;
        if caught_up.is_err() {
            self.wake.notify_one();
        }
        caught_up.is_ok()
    }

    /// Parses a client's cursor and waits until this node has caught up to it, so the
    /// subscription's replay covers everything after it. A cursor from another node that is a
    /// few milliseconds ahead is fine; a forged one is `bad_cursor`.
    pub(crate) async fn resume_point(&self, cursor: &str) -> Result<i64, ApiError> {
        let unavailable = || {
            ApiError::new(
                ErrorCode::Unavailable,
                "durable channels are not available on this node yet",
            )
        };
        self.wait_started(CATCH_UP_WAIT).await;
        let key = self.key.get().ok_or_else(unavailable)?;
        let position = key.decode(cursor).map_err(bad_cursor)?;
        if !self.wait_for(position).await {
            return Err(unavailable());
        }
        Ok(position)
    }

    /// The next durable events of `channels` in (`after`, `upto`] from the events table (at
    /// most one batch), or [`Replayed::Expired`] when retention removed some after `after`.
    /// Call again from the last position while the batch is full.
    pub(crate) async fn replay_chunk(
        &self,
        channels: &[Channel],
        after: i64,
        upto: i64,
    ) -> Result<Replayed, ApiError> {
        let names: Vec<&str> = channels.iter().map(Channel::as_str).collect();
        self.stats.durable_queries.fetch_add(1, Ordering::Relaxed);
        let replay = self
            .store
            .replay(&names, after, upto, REPLAY_BATCH)
            .instrument(debug_span!(
                "catch_up.query",
                kind = "replay",
                after,
                channels = names.len()
            ))
            .await
            .map_err(database_error)?;
        if after < replay.retention_floor {
            return Ok(Replayed::Expired);
        }
        let more = replay.rows.len() as i64 == REPLAY_BATCH;
        let messages: Vec<Arc<Message>> = replay
            .rows
            .into_iter()
            .filter_map(|row| self.message(row))
            .map(Arc::new)
            .collect();
        Ok(Replayed::Messages { messages, more })
    }

    /// Publishes a durable event and waits (bounded) for its position. Returns the cursor, or
    /// `None` when the sequencer has not positioned it in time (the event is committed anyway).
    pub(crate) async fn publish(
        &self,
        channel: &Channel,
        payload: &str,
        traceparent: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        if payload.len() > self.config.max_payload_bytes {
            return Err(ApiError::new(
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
            .map_err(database_error)?;
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

fn bad_cursor(error: CursorError) -> ApiError {
    let reason = match error {
        CursorError::Malformed => "malformed cursor",
        CursorError::Forged => "cursor was not issued by this deployment",
    };
    ApiError::new(ErrorCode::BadCursor, reason)
}
