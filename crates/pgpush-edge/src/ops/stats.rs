//! Node counters behind `/v1/stats` and `/metrics`, and guards that keep the connection gauges exact.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use pgpush_pg::Backlog;
use pgpush_protocol::{ConnectionCounts, ErrorCode, PublishMode, ResetReason, StatsSnapshot};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
};

/// A client transport, for the per-transport connection gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/v1/ws`
    WebSocket,
    /// `/v1/sse`
    Sse,
    /// Hippie MXHR streams.
    Mxhr,
    /// Long polls being held.
    Poll,
}

/// Where a publish request came from, a label of `pgpush_publish_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishVia {
    /// `POST /v1/publish/<channel>`
    Http,
    /// The native WebSocket `publish` op.
    WebSocket,
    /// Hippie `/pub` posts and Hippie WebSocket frames.
    Hippie,
}

/// The labels of `pgpush_publish_requests_total`: a few fixed values each.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    via: &'static str,
    mode: &'static str,
    result: &'static str,
}

impl PublishLabels {
    fn new(via: PublishVia, mode: Option<PublishMode>, error: Option<ErrorCode>) -> PublishLabels {
        PublishLabels {
            via: match via {
                PublishVia::Http => "http",
                PublishVia::WebSocket => "websocket",
                PublishVia::Hippie => "hippie",
            },
            mode: match mode {
                Some(PublishMode::Durable) => "durable",
                Some(PublishMode::Ephemeral) => "ephemeral",
                None => "invalid",
            },
            result: error.map_or("ok", ErrorCode::as_str),
        }
    }
}

/// The node's counters. Gauges are only changed through [`ConnectionGuard`] and the hub, so
/// they return to zero when every client has left.
#[derive(Debug)]
pub struct Stats {
    /// Open WebSocket connections.
    pub websocket: AtomicU64,
    /// Open SSE streams.
    pub sse: AtomicU64,
    /// Open MXHR streams.
    pub mxhr: AtomicU64,
    /// Long polls being held.
    pub poll: AtomicU64,
    /// Current (connection, channel) subscriptions.
    pub subscriptions: AtomicU64,
    /// Notifications received on the LISTEN connection (the wake-up channel excluded).
    pub notifications_in: AtomicU64,
    /// Durable events read from the events table by the catch-up reader.
    pub durable_in: AtomicU64,
    /// Messages written to clients.
    pub messages_out: AtomicU64,
    /// Bytes written to client sockets (HTTP heads, frames, keepalives: everything).
    pub bytes_out: AtomicU64,
    /// Clients cut off as slow.
    pub slow_consumers: AtomicU64,
    /// Publishes accepted.
    pub publishes: AtomicU64,
    /// Connections the listener has made (1 = never reconnected).
    pub listener_generation: AtomicU64,
    /// Queries the durable reader and replays sent to the primary.
    pub durable_queries: AtomicU64,
    /// Catch-up and replay reads a hot standby answered.
    pub durable_standby_queries: AtomicU64,
    /// Presence writes sent to PostgreSQL (batches of joins and leaves, heartbeats).
    pub presence_queries: AtomicU64,
    /// Times the database's durable history went on in a new epoch.
    pub durable_epoch_changes: AtomicU64,
    /// Epoch changes in which the database had lost events this node had delivered.
    pub durable_history_forks: AtomicU64,
    /// `reset`s sent to clients because their cursor expired.
    pub resets_expired: AtomicU64,
    /// `reset`s sent to clients because the history lost events they may have received.
    pub resets_history_changed: AtomicU64,
    /// Publish requests by origin, mode and result.
    pub publish_requests: Family<PublishLabels, Counter>,
    /// Seconds from a durable event's INSERT (in the publishing transaction) to its fan-out.
    pub commit_to_send: Histogram,
    /// The last sample of PostgreSQL's side (`None` until one succeeds or after one fails).
    pub database: Mutex<Option<Backlog>>,
}

impl Default for Stats {
    fn default() -> Stats {
        let stats = Stats::zeroed();
        // Successful publishes start at 0 so rates and alerts work before the first one.
        for (via, mode) in [
            (PublishVia::Http, PublishMode::Durable),
            (PublishVia::Http, PublishMode::Ephemeral),
            (PublishVia::WebSocket, PublishMode::Durable),
            (PublishVia::WebSocket, PublishMode::Ephemeral),
            (PublishVia::Hippie, PublishMode::Ephemeral),
        ] {
            let _ =
                stats
                    .publish_requests
                    .get_or_create(&PublishLabels::new(via, Some(mode), None));
        }
        stats
    }
}

impl Stats {
    fn zeroed() -> Stats {
        Stats {
            websocket: AtomicU64::new(0),
            sse: AtomicU64::new(0),
            mxhr: AtomicU64::new(0),
            poll: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            notifications_in: AtomicU64::new(0),
            durable_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            publishes: AtomicU64::new(0),
            listener_generation: AtomicU64::new(0),
            durable_queries: AtomicU64::new(0),
            durable_standby_queries: AtomicU64::new(0),
            presence_queries: AtomicU64::new(0),
            durable_epoch_changes: AtomicU64::new(0),
            durable_history_forks: AtomicU64::new(0),
            resets_expired: AtomicU64::new(0),
            resets_history_changed: AtomicU64::new(0),
            publish_requests: Family::default(),
            // 0.5 ms to about 16 s.
            commit_to_send: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            database: Mutex::new(None),
        }
    }
}

impl Stats {
    /// Counts a connection of `transport` until the guard drops.
    pub fn connection(self: &Arc<Self>, transport: Transport) -> ConnectionGuard {
        self.gauge(transport).fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            stats: self.clone(),
            transport,
        }
    }

    fn gauge(&self, transport: Transport) -> &AtomicU64 {
        match transport {
            Transport::WebSocket => &self.websocket,
            Transport::Sse => &self.sse,
            Transport::Mxhr => &self.mxhr,
            Transport::Poll => &self.poll,
        }
    }

    /// Counts one publish request's outcome (`mode` is `None` when the request named no valid mode).
    pub fn count_publish<T>(
        &self,
        via: PublishVia,
        mode: Option<PublishMode>,
        result: &Result<T, ErrorCode>,
    ) {
        if result.is_ok() {
            self.publishes.fetch_add(1, Ordering::Relaxed);
        }
        let labels = PublishLabels::new(via, mode, result.as_ref().err().copied());
        self.publish_requests.get_or_create(&labels).inc();
    }

    /// Records the commit-to-send latency of a durable event inserted at `created_at`.
    pub fn observe_commit_to_send(&self, created_at: SystemTime, now: SystemTime) {
        // PostgreSQL's clock and ours may differ a little: a negative age counts as zero.
        let age = now.duration_since(created_at).unwrap_or_default();
        self.commit_to_send.observe(age.as_secs_f64());
    }

    /// Messages received from PostgreSQL: notifications and durable events.
    pub fn messages_in(&self) -> u64 {
        self.notifications_in.load(Ordering::Relaxed) + self.durable_in.load(Ordering::Relaxed)
    }

    /// Open client connections of `transport`.
    pub fn connections(&self, transport: Transport) -> u64 {
        self.gauge(transport).load(Ordering::Relaxed)
    }

    /// Counts `n` clients told to reset for `reason`.
    pub fn count_resets(&self, reason: ResetReason, n: usize) {
        let counter = match reason {
            ResetReason::Expired => &self.resets_expired,
            ResetReason::HistoryChanged => &self.resets_history_changed,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Adds `n` delivered messages.
    pub fn delivered(&self, n: usize) {
        self.messages_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The `/v1/stats` document.
    pub fn snapshot(
        &self,
        node: &str,
        listener_up: bool,
        channels_listened: usize,
        hippie_queues: usize,
    ) -> StatsSnapshot {
        let websocket = self.websocket.load(Ordering::Relaxed);
        let sse = self.sse.load(Ordering::Relaxed);
        let mxhr = self.mxhr.load(Ordering::Relaxed);
        let poll = self.poll.load(Ordering::Relaxed);
        StatsSnapshot {
            node: node.to_owned(),
            listener: if listener_up { "up" } else { "down" }.to_owned(),
            listener_connections: self.listener_generation.load(Ordering::Relaxed),
            connections: ConnectionCounts {
                total: websocket + sse + mxhr + poll,
                websocket,
                sse,
                mxhr,
                poll,
            },
            subscriptions: self.subscriptions.load(Ordering::Relaxed),
            channels_listened: channels_listened as u64,
            messages_in: self.messages_in(),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            slow_consumers: self.slow_consumers.load(Ordering::Relaxed),
            publishes: self.publishes.load(Ordering::Relaxed),
            hippie_queues: hippie_queues as u64,
            durable_head: None,
            durable_epoch: None,
            sequencer: false,
            durable_queries: self.durable_queries.load(Ordering::Relaxed),
            durable_standby_queries: self.durable_standby_queries.load(Ordering::Relaxed),
            presence_queries: self.presence_queries.load(Ordering::Relaxed),
        }
    }
}

/// Decrements its transport's gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    stats: Arc<Stats>,
    transport: Transport,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.stats
            .gauge(self.transport)
            .fetch_sub(1, Ordering::Relaxed);
    }
}
