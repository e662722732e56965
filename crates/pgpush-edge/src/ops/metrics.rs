//! `GET /metrics`: the node's counters and gauges in Prometheus text format, and the task that
//! samples PostgreSQL's side (NOTIFY queue usage, sequencer backlog) for it.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use pgpush_pg::EventStore;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::ops::stats::{Stats, Transport};

/// The content type of what prometheus-client writes: OpenMetrics text (Prometheus reads it).
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the rest of the node reports at scrape time, beside the counters in [`Stats`].
#[derive(Debug)]
pub(crate) struct NodeState {
    /// The node's name.
    pub(crate) node: String,
    /// Open client sockets.
    pub(crate) sockets: u64,
    /// Channels LISTENed.
    pub(crate) channels_listened: u64,
    /// Whether the LISTEN connection is up.
    pub(crate) listener_up: bool,
    /// Whether this node is the sequencer.
    pub(crate) sequencer_leader: bool,
    /// Whether the node drains.
    pub(crate) draining: bool,
    /// Hippie client queues held.
    pub(crate) hippie_queues: u64,
    /// The durable head (`None` before the reader started).
    pub(crate) durable_head: Option<i64>,
    /// The publish pool.
    pub(crate) pool: pgpush_pg::PoolStatus,
}

/// The exposition of the node's metrics, read now (PostgreSQL's side as last sampled).
pub(crate) fn render(stats: &Stats, state: NodeState) -> String {
    let mut registry = Registry::with_prefix("pgpush");
    registry.register(
        "publish_requests",
        "Publish requests by origin (http, websocket, hippie), mode and result (ok or the error code)",
        stats.publish_requests.clone(),
    );
    // The unit is in the name: strict OpenMetrics parsers refuse a UNIT line on histograms.
    registry.register(
        "durable_commit_to_send_seconds",
        "Seconds from a durable event's INSERT in the publishing transaction to its fan-out on this node",
        stats.commit_to_send.clone(),
    );
    registry.register_collector(Box::new(NodeGauges::read(stats, state)));
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// Samples PostgreSQL's side every `interval` until `shutdown`; a failed sample clears it, so
/// stale values are never shown.
pub(crate) async fn sample_database(
    store: EventStore,
    stats: Arc<Stats>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let sample = match store.backlog().await {
            Ok(sample) => Some(sample),
            Err(error) => {
                debug!(%error, "sampling PostgreSQL for metrics failed");
                None
            }
        };
        *stats.database.lock().unwrap_or_else(|e| e.into_inner()) = sample;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Everything read at scrape time from the node's state and counters.
#[derive(Debug)]
struct NodeGauges {
    node: String,
    connections: [(&'static str, u64); 4],
    subscriptions: u64,
    sockets: u64,
    channels_listened: u64,
    notifications_in: u64,
    durable_in: u64,
    frames_sent: u64,
    bytes_sent: u64,
    slow_consumers: u64,
    listener_up: bool,
    listener_connections: u64,
    sequencer_leader: bool,
    draining: bool,
    hippie_queues: u64,
    durable_head: Option<i64>,
    durable_queries: u64,
    durable_standby_queries: u64,
    presence_queries: u64,
    durable_epoch_changes: u64,
    durable_history_forks: u64,
    resets: [(&'static str, u64); 2],
    pool: pgpush_pg::PoolStatus,
    database: Option<pgpush_pg::Backlog>,
}

impl NodeGauges {
    fn read(stats: &Stats, state: NodeState) -> NodeGauges {
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        NodeGauges {
            node: state.node,
            connections: [
                ("websocket", stats.connections(Transport::WebSocket)),
                ("sse", stats.connections(Transport::Sse)),
                ("mxhr", stats.connections(Transport::Mxhr)),
                ("poll", stats.connections(Transport::Poll)),
            ],
            subscriptions: load(&stats.subscriptions),
            sockets: state.sockets,
            channels_listened: state.channels_listened,
            notifications_in: load(&stats.notifications_in),
            durable_in: load(&stats.durable_in),
            frames_sent: load(&stats.messages_out),
            bytes_sent: load(&stats.bytes_out),
            slow_consumers: load(&stats.slow_consumers),
            listener_up: state.listener_up,
            listener_connections: load(&stats.listener_generation),
            sequencer_leader: state.sequencer_leader,
            draining: state.draining,
            hippie_queues: state.hippie_queues,
            durable_head: state.durable_head,
            durable_queries: load(&stats.durable_queries),
            durable_standby_queries: load(&stats.durable_standby_queries),
            presence_queries: load(&stats.presence_queries),
            durable_epoch_changes: load(&stats.durable_epoch_changes),
            durable_history_forks: load(&stats.durable_history_forks),
            resets: [
                ("expired", load(&stats.resets_expired)),
                ("history_changed", load(&stats.resets_history_changed)),
            ],
            pool: state.pool,
            database: *stats.database.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// Encodes one metric without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let metric_encoder = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(metric_encoder)
}

/// Encodes one metric family with a single label.
fn labelled<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    label: &str,
    values: impl IntoIterator<Item = (&'static str, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (value, metric) in values {
        let labels = [(label, value)];
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(value: i64) -> ConstGauge<i64> {
    ConstGauge::new(value)
}

fn flag(value: bool) -> ConstGauge<i64> {
    ConstGauge::new(i64::from(value))
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

impl Collector for NodeGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        let info = [
            ("node", self.node.as_str()),
            ("version", env!("CARGO_PKG_VERSION")),
        ];
        let mut build = e.encode_descriptor(
            "build_info",
            "This node's name and version (always 1)",
            None,
            MetricType::Gauge,
        )?;
        gauge(1).encode(build.encode_family(&info)?)?;
        labelled(
            e,
            "connections",
            "Open client connections by transport (poll: long polls being held)",
            MetricType::Gauge,
            "transport",
            self.connections.map(|(name, n)| (name, gauge(n as i64))),
        )?;
        single(
            e,
            "client_sockets",
            "Open client TCP connections, whatever they are doing (a request not yet sent included)",
            &gauge(self.sockets as i64),
        )?;
        single(
            e,
            "subscriptions",
            "Current (connection, channel) subscriptions",
            &gauge(self.subscriptions as i64),
        )?;
        single(
            e,
            "channels_listened",
            "Channels this node's LISTEN connection listens to",
            &gauge(self.channels_listened as i64),
        )?;
        labelled(
            e,
            "messages_received",
            "Messages received from PostgreSQL: notifications and durable events read",
            MetricType::Counter,
            "source",
            [
                ("notify", counter(self.notifications_in)),
                ("durable", counter(self.durable_in)),
            ],
        )?;
        single(
            e,
            "frames_sent",
            "Messages written to clients (a frame, event or part each)",
            &counter(self.frames_sent),
        )?;
        single(
            e,
            "bytes_sent",
            "Bytes written to client sockets, HTTP and WebSocket framing included",
            &counter(self.bytes_sent),
        )?;
        single(
            e,
            "slow_consumer_disconnects",
            "Clients cut off because their queue overflowed",
            &counter(self.slow_consumers),
        )?;
        single(
            e,
            "listener_up",
            "1 while the LISTEN connection is up",
            &flag(self.listener_up),
        )?;
        single(
            e,
            "listener_connections",
            "LISTEN connections made (the first one included)",
            &counter(self.listener_connections),
        )?;
        single(
            e,
            "listener_reconnects",
            "Times the LISTEN connection was re-established",
            &counter(self.listener_connections.saturating_sub(1)),
        )?;
        single(
            e,
            "sequencer_leader",
            "1 while this node is the sequencer",
            &flag(self.sequencer_leader),
        )?;
        single(
            e,
            "draining",
            "1 while this node drains (shutting down)",
            &flag(self.draining),
        )?;
        single(
            e,
            "hippie_queues",
            "Hippie client queues alive on this node",
            &gauge(self.hippie_queues as i64),
        )?;
        if let Some(head) = self.durable_head {
            single(
                e,
                "durable_head_position",
                "Position up to which this node fanned out durable events",
                &gauge(head),
            )?;
        }
        single(
            e,
            "durable_queries",
            "Catch-up and replay queries sent to the primary",
            &counter(self.durable_queries),
        )?;
        single(
            e,
            "durable_standby_queries",
            "Catch-up and replay reads a hot standby answered instead of the primary",
            &counter(self.durable_standby_queries),
        )?;
        single(
            e,
            "presence_queries",
            "Presence writes sent to PostgreSQL (batches of joins and leaves, heartbeats)",
            &counter(self.presence_queries),
        )?;
        single(
            e,
            "durable_epoch_changes",
            "Times the database's durable history went on in a new epoch (PostgreSQL restarted, failed over or was restored)",
            &counter(self.durable_epoch_changes),
        )?;
        single(
            e,
            "durable_history_forks",
            "Epoch changes in which PostgreSQL had lost durable events this node had delivered (its clients were reset)",
            &counter(self.durable_history_forks),
        )?;
        labelled(
            e,
            "durable_resets",
            "Clients told to reset (reload their state) by reason: expired (older than retention) or history_changed (lost by PostgreSQL)",
            MetricType::Counter,
            "reason",
            self.resets.map(|(reason, n)| (reason, counter(n))),
        )?;
        single(
            e,
            "pool_max_connections",
            "Size limit of the publish pool",
            &gauge(self.pool.max_size as i64),
        )?;
        labelled(
            e,
            "pool_connections",
            "Connections of the publish pool by state",
            MetricType::Gauge,
            "state",
            [
                ("idle", gauge(self.pool.available as i64)),
                (
                    "in_use",
                    gauge(self.pool.size.saturating_sub(self.pool.available) as i64),
                ),
            ],
        )?;
        single(
            e,
            "pool_waiting",
            "Requests waiting for a pooled connection",
            &gauge(self.pool.waiting as i64),
        )?;
        single(
            e,
            "database_sample_ok",
            "1 when the last sample of PostgreSQL's side succeeded",
            &flag(self.database.is_some()),
        )?;
        if let Some(sample) = &self.database {
            single(
                e,
                "notification_queue_usage_ratio",
                "pg_notification_queue_usage(): fraction of the NOTIFY queue in use (sampled)",
                &ConstGauge::new(sample.notification_queue_usage),
            )?;
            if let Some((waiting, oldest, last)) = sample.durable {
                single(
                    e,
                    "sequencer_backlog_events",
                    "Committed durable events waiting for a position (sampled)",
                    &gauge(waiting),
                )?;
                single(
                    e,
                    "sequencer_backlog_age_seconds",
                    "Age of the oldest durable event waiting for a position (sampled)",
                    &ConstGauge::new(oldest),
                )?;
                single(
                    e,
                    "durable_last_position",
                    "Highest position the sequencer assigned (sampled)",
                    &gauge(last),
                )?;
            }
        }
        Ok(())
    }
}
