//! The `/v1/stats` document: a node's connections, subscriptions and message counters.

use serde::{Deserialize, Serialize};

/// What `GET /v1/stats` answers. Counters only grow; gauges return to 0 when clients leave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// The node's id (`--node-id`, default host:port).
    pub node: String,
    /// `up` while the LISTEN connection is up, else `down`.
    pub listener: String,
    /// LISTEN connections made since start (1 until the first reconnect).
    pub listener_connections: u64,
    /// Open client connections by transport.
    pub connections: ConnectionCounts,
    /// (connection, channel) pairs currently subscribed.
    pub subscriptions: u64,
    /// Channels this node currently LISTENs to.
    pub channels_listened: u64,
    /// Messages received from PostgreSQL: notifications, and durable events read.
    pub messages_in: u64,
    /// Messages written to clients.
    pub messages_out: u64,
    /// Clients cut off because their queue overflowed.
    pub slow_consumers: u64,
    /// Publishes accepted from clients.
    pub publishes: u64,
    /// Hippie client queues alive (0 when the Hippie routes are off).
    pub hippie_queues: u64,
    /// Position up to which this node has delivered durable events (`null` before the
    /// durable reader started).
    pub durable_head: Option<i64>,
    /// The epoch of the durable history this node delivers in, as in cursors (hex; `null`
    /// before the durable reader started). It changes when PostgreSQL restarts, fails over or
    /// is restored.
    #[serde(default)]
    pub durable_epoch: Option<String>,
    /// True while this node runs the sequencer.
    pub sequencer: bool,
    /// Queries this node's durable reader and replays sent to the primary since start.
    pub durable_queries: u64,
    /// Of those reads, the ones a hot standby answered instead (`--standby-database-url`).
    #[serde(default)]
    pub durable_standby_queries: u64,
    /// Presence writes (batches of joins and leaves, heartbeats) this node sent since start.
    #[serde(default)]
    pub presence_queries: u64,
}

/// Open connections by transport.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionCounts {
    /// All transports.
    pub total: u64,
    /// `/v1/ws`.
    pub websocket: u64,
    /// `/v1/sse`.
    pub sse: u64,
    /// Hippie MXHR streams.
    pub mxhr: u64,
    /// Long polls being held.
    pub poll: u64,
}
