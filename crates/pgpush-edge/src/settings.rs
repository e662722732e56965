//! What a node is configured with, as plain data: the binary parses its flags into these, and
//! each component is built from its part (`Hub::new(.., &HubSettings)`, `Limits::new(..)`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

pub use pgpush_pg::SequencerConfig as SequencerSettings;

/// Everything an edge node is started with.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Where clients connect; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The separate address of the operator's routes, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// PostgreSQL connection URL (`None`: the node refuses to start).
    pub database_url: Option<String>,
    /// A hot standby for catch-up and replay reads (`None`: every read goes to the primary).
    pub standby_database_url: Option<String>,
    /// Apply pending schema migrations before serving.
    pub migrate: bool,
    /// Name in stats and logs (default: the bound address).
    pub node_id: Option<String>,
    /// Connections in the publish pool.
    pub pool_size: usize,
    /// How often `/metrics` samples PostgreSQL's side.
    pub metrics_sample_interval: Duration,
    /// Channel fan-out and client queues.
    pub hub: HubSettings,
    /// Durable channels.
    pub durable: DurableSettings,
    /// The sequencer, unless this node never runs it.
    pub sequencer: Option<SequencerSettings>,
    /// The Hippie routes, unless turned off.
    pub hippie: Option<HippieSettings>,
    /// Tokens, channel permissions and origins.
    pub admission: AdmissionSettings,
    /// Connection, subscription and publish limits.
    pub limits: LimitSettings,
    /// How client connections are served and ended.
    pub connections: ConnectionSettings,
}

/// How many messages and payload bytes one client's queue may hold.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Messages.
    pub messages: usize,
    /// Payload bytes (each message counts its queue cost).
    pub bytes: usize,
}

/// How many recent durable messages the hub keeps in memory for replays.
#[derive(Debug, Clone, Copy)]
pub struct RecentLimits {
    /// Messages.
    pub messages: usize,
    /// Payload bytes.
    pub bytes: usize,
}

/// The hub's settings.
#[derive(Debug, Clone, Copy)]
pub struct HubSettings {
    /// A client's outbound queue; beyond it the client is cut off as slow.
    pub queue: QueueLimits,
    /// Recent durable messages kept for replays.
    pub recent: RecentLimits,
    /// How long a channel stays LISTENed after its last local subscriber left.
    pub unlisten_delay: Duration,
    /// How long a subscribe waits for PostgreSQL to confirm LISTEN.
    pub subscribe_timeout: Duration,
}

/// Durable channels on a node.
#[derive(Debug, Clone, Copy)]
pub struct DurableSettings {
    /// False with `--no-durable`: no schema needed, durable publishing and cursors refused.
    pub enabled: bool,
    /// Catch up with the events table at least this often.
    pub catch_up_interval: Duration,
    /// Largest durable payload accepted from clients.
    pub max_payload_bytes: usize,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_window: Duration,
}

/// The Hippie routes (the original Web::Hippie::PubSub protocol).
#[derive(Debug, Clone)]
pub struct HippieSettings {
    /// Path prefix of the routes, without a trailing `/`.
    pub prefix: String,
    /// Interval of `{"type":"ping"}` keepalives on WebSocket and MXHR; zero disables them.
    pub keepalive: Duration,
    /// How long a long poll with nothing to deliver is held.
    pub poll_hold: Duration,
    /// How long a queue created over WebSocket outlives its connection.
    pub ws_window: Duration,
    /// How long a queue created over MXHR or poll outlives its connection.
    pub window: Duration,
    /// Each client queue's limits while nobody reads it.
    pub queue: QueueLimits,
    /// Most client queues the node keeps at once.
    pub max_queues: usize,
    /// Client queues one client address may hold.
    pub max_queues_per_address: usize,
    /// Refuse publishes without the client_id of a live queue.
    pub require_client_id: bool,
    /// Origins (a regex anchored at the start) allowed to open WebSockets and publish.
    pub trusted_origin: Option<regex_lite::Regex>,
}

/// Who may connect and which channels they may touch.
#[derive(Debug, Clone, Default)]
pub struct AdmissionSettings {
    /// HS256 secret; with it (or `jwt_jwks`) every client request needs a token.
    pub jwt_secret: Option<String>,
    /// A JWKS file, re-read when it changes.
    pub jwt_jwks: Option<PathBuf>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub jwt_leeway: Duration,
    /// Channel patterns clients may subscribe to.
    pub subscribe_allow: Vec<String>,
    /// Channel patterns clients may publish to.
    pub publish_allow: Vec<String>,
    /// Origins browsers may connect from (empty: any).
    pub allowed_origins: Vec<String>,
    /// The operator's key for `/v1/admin/*` (`None`: no admin API).
    pub api_key: Option<String>,
}

/// Limits on what clients hold and do.
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    /// Open client connections in total.
    pub max_connections: usize,
    /// Open client connections per client address.
    pub max_connections_per_address: usize,
    /// Channels one connection may subscribe to.
    pub max_subscriptions: usize,
    /// Publishes per second one WebSocket connection may make.
    pub publish_rate: f64,
    /// Publishes per second one client address may make.
    pub publish_rate_per_address: f64,
}

/// How client connections are accepted, served and ended.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Largest WebSocket message or HTTP publish body, in bytes.
    pub max_message_bytes: usize,
    /// Interval of WebSocket pings; a client silent for two is closed.
    pub ping_interval: Duration,
    /// Interval of SSE keepalive comments.
    pub sse_keepalive: Duration,
    /// On shutdown, clients are told to reconnect at moments spread over this window.
    pub drain_window: Duration,
    /// How long shutdown waits, after the drain window, for connections to close.
    pub shutdown_timeout: Duration,
    /// Read a PROXY protocol header where a connection starts with one.
    pub proxy_protocol: bool,
    /// Peers whose `X-Forwarded-For` and PROXY header are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Time a client has to send its request head.
    pub handshake_timeout: Duration,
    /// A half-open connection is dropped by the kernel after this long.
    pub idle_timeout: Duration,
}
