//! The command line: every flag (most with a `PGPUSH_*` variable), parsed once and turned into
//! the serving library's plain settings.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand, builder::BoolishValueParser};
use pgpush_edge::settings::{
    AdmissionSettings, ConnectionSettings, DurableSettings, HippieSettings, HubSettings,
    LimitSettings, NodeSettings, QueueLimits, RecentLimits, SequencerSettings,
};

/// pgpush: a real-time gateway from PostgreSQL LISTEN/NOTIFY to WebSocket and SSE clients.
#[derive(Debug, Parser)]
#[command(
    name = "pgpush",
    version,
    about = "pgpush: PostgreSQL LISTEN/NOTIFY and durable channels, pushed to browsers over \
             WebSocket, Server-Sent Events and polling"
)]
pub(crate) struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub(crate) command: CliCommand,
}

/// The `pgpush` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum CliCommand {
    /// Run an edge node on DATABASE_URL (or, with --throwaway-database, a private PostgreSQL).
    Serve(Box<ServeArgs>),
    /// Print every notification on the given channels, like the original C listener.
    Listen(ListenArgs),
    /// Send one notification with pg_notify.
    Notify(NotifyArgs),
    /// Create or upgrade the `pgpush` schema (durable channels); safe to run again.
    Migrate(DatabaseArgs),
    /// Run N edge nodes behind nginx on one database (a throwaway one when DATABASE_URL is
    /// unset), print the URLs, stop everything on Ctrl-C.
    Up(Box<UpArgs>),
    /// Print an nginx configuration for a set of nodes.
    NginxConfig(NginxConfigArgs),
    /// Exit 0 when GET <url> answers 200 (a container health check without curl).
    Probe(ProbeArgs),
    /// The location demo: install its PostGIS table and trigger, or move people around.
    Demo(DemoArgs),
}

/// `pgpush demo`
#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: DemoCommand,
}

/// `pgpush demo <command>`
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum DemoCommand {
    /// Install PostGIS, the `person` table and its trigger (again to switch triggers).
    Setup {
        /// Publish with plain `pg_notify`, as the original did, instead of `pgpush.publish`.
        #[arg(long)]
        notify: bool,
        /// Database connection.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Move people around with UPDATEs until Ctrl-C.
    Simulate {
        /// How.
        #[command(flatten)]
        simulate: SimulateArgs,
        /// Database connection.
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// `pgpush demo simulate`
#[derive(Debug, Clone, Args)]
pub(crate) struct SimulateArgs {
    /// People to move (missing ones are inserted).
    #[arg(long, default_value_t = 20)]
    pub(crate) people: usize,
    /// Moves per second, over all people.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) rate: f64,
    /// How much faster than real time people move.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) speedup: f64,
    /// How far from the centre of Amsterdam people wander, in metres (8000 is the whole city).
    #[arg(long, default_value_t = 2000.0)]
    pub(crate) radius: f64,
    /// Stop after this many moves.
    #[arg(long)]
    pub(crate) moves: Option<u64>,
}

/// `pgpush probe`
#[derive(Debug, Clone, Args)]
pub(crate) struct ProbeArgs {
    /// `http://host:port/path`, e.g. http://127.0.0.1:8080/readyz.
    pub(crate) url: String,
}

/// `pgpush up`
#[derive(Debug, Clone, Args)]
pub(crate) struct UpArgs {
    /// Where nginx (or the single node, without nginx) accepts clients.
    #[arg(long, env = "PGPUSH_UP_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub(crate) listen: SocketAddr,
    /// Edge nodes to run.
    #[arg(long, env = "PGPUSH_UP_NODES", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) nodes: u16,
    /// How nginx proxies: stream (TCP, with the PROXY protocol) or http.
    #[arg(long, env = "PGPUSH_UP_MODE", value_enum, default_value = "stream")]
    pub(crate) mode: crate::nginx::NginxMode,
    /// The nginx binary.
    #[arg(long, env = "PGPUSH_NGINX", default_value = "nginx")]
    pub(crate) nginx: std::path::PathBuf,
    /// nginx worker processes (each holds at most 20,000 sockets here; a proxied client takes two).
    #[arg(long, env = "PGPUSH_NGINX_WORKERS", default_value_t = 2)]
    pub(crate) nginx_workers: usize,
    /// Database connection.
    #[command(flatten)]
    pub(crate) database: DatabaseArgs,
    /// Also run the location demo: install it, serve its snapshot, and move people around.
    #[arg(long)]
    pub(crate) demo: bool,
    /// With `--demo`: how people are moved.
    #[command(flatten)]
    pub(crate) simulate: SimulateArgs,
    /// Extra `pgpush serve` arguments for every node, after `--`.
    #[arg(last = true)]
    pub(crate) node_args: Vec<String>,
}

/// `pgpush nginx-config`
#[derive(Debug, Clone, Args)]
pub(crate) struct NginxConfigArgs {
    /// Proxy mode.
    #[arg(long, value_enum, default_value = "stream")]
    pub(crate) mode: crate::nginx::NginxMode,
    /// Where nginx accepts clients.
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub(crate) listen: SocketAddr,
    /// A node's `host:port` (repeat for each; a name resolving to several addresses, as a
    /// container service does, counts for all of them).
    #[arg(long = "node", required = true)]
    pub(crate) nodes: Vec<String>,
    /// nginx's prefix directory: pid file, logs, temp files.
    #[arg(long)]
    pub(crate) prefix: std::path::PathBuf,
    /// Send the PROXY protocol to the nodes (stream mode; start them with --proxy-protocol).
    #[arg(long)]
    pub(crate) proxy_protocol: bool,
    /// The nodes' Hippie prefix.
    #[arg(long, default_value = "/_hippie")]
    pub(crate) hippie_prefix: String,
    /// nginx worker processes.
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: usize,
    /// The stream module (stream mode): `built-in` (nginx.org's packages, the official nginx
    /// image), a path to `load_module` (Debian: /usr/lib/nginx/modules/ngx_stream_module.so), or
    /// `auto` for what the nginx on this machine needs.
    #[arg(long, default_value = "auto")]
    pub(crate) stream_module: String,
    /// The nginx binary `--stream-module auto` asks.
    #[arg(long, default_value = "nginx")]
    pub(crate) nginx: std::path::PathBuf,
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub(crate) struct DatabaseArgs {
    /// PostgreSQL connection URL.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,
}

/// Settings of an edge node.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServeArgs {
    /// Address to accept clients on; port 0 picks a free port (printed at start).
    #[arg(long, env = "PGPUSH_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub(crate) listen: SocketAddr,

    /// Database connection.
    #[command(flatten)]
    pub(crate) database: DatabaseArgs,

    /// Without DATABASE_URL, start a private throwaway PostgreSQL (removed on exit) instead of
    /// refusing to start: for trying pgpush out, never for a real deployment.
    #[arg(
        long,
        env = "PGPUSH_THROWAWAY_DATABASE",
        conflicts_with = "database_url"
    )]
    pub(crate) throwaway_database: bool,

    /// A hot standby (read-only connection URL) for catch-up and replay reads: used only for
    /// positions it has already replayed, the primary otherwise. LISTEN and the sequencer stay
    /// on the primary.
    #[arg(long, env = "PGPUSH_STANDBY_DATABASE_URL", hide_env_values = true)]
    pub(crate) standby_database_url: Option<String>,

    /// This node's name in stats and logs (default: the listen address).
    #[arg(long, env = "PGPUSH_NODE_ID")]
    pub(crate) node_id: Option<String>,

    /// Connections in the publish pool.
    #[arg(long, env = "PGPUSH_POOL_SIZE", default_value_t = 8)]
    pub(crate) pool_size: usize,

    /// Messages a client's outbound queue may hold before the client is cut off as slow.
    #[arg(long, env = "PGPUSH_MAX_QUEUE_MESSAGES", default_value_t = 4096)]
    pub(crate) max_queue_messages: usize,

    /// Payload bytes a client's outbound queue may hold before the client is cut off as slow.
    #[arg(long, env = "PGPUSH_MAX_QUEUE_BYTES", default_value_t = 8 << 20)]
    pub(crate) max_queue_bytes: usize,

    /// Largest WebSocket message or HTTP publish body accepted from a client, in bytes.
    #[arg(long, env = "PGPUSH_MAX_MESSAGE_BYTES", default_value_t = 1 << 20)]
    pub(crate) max_message_bytes: usize,

    /// Interval of server WebSocket pings; a client silent for two intervals is closed.
    #[arg(long, env = "PGPUSH_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub(crate) ping_interval: Duration,

    /// Interval of SSE keepalive comments.
    #[arg(long, env = "PGPUSH_SSE_KEEPALIVE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub(crate) sse_keepalive: Duration,

    /// Serve `/metrics`, `/healthz`, `/readyz` and `/v1/stats` on this separate address (and not
    /// `/metrics` on the client port). It stays open through the drain, so a draining node can
    /// still be scraped, and keeps metrics off the public port.
    #[arg(long, env = "PGPUSH_METRICS_LISTEN", value_parser = parse_listen)]
    pub(crate) metrics_listen: Option<SocketAddr>,

    /// How often `/metrics` samples PostgreSQL's side (NOTIFY queue usage, sequencer backlog).
    #[arg(long, env = "PGPUSH_METRICS_SAMPLE_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) metrics_sample_interval: Duration,

    /// How long a channel stays LISTENed after its last local subscriber left (spares PostgreSQL
    /// a LISTEN/UNLISTEN pair per long poll or reconnect); 0 UNLISTENs at once.
    #[arg(long, env = "PGPUSH_UNLISTEN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) unlisten_delay: Duration,

    /// How long a subscribe may wait for PostgreSQL to confirm LISTEN before it fails.
    #[arg(long, env = "PGPUSH_SUBSCRIBE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) subscribe_timeout: Duration,

    /// On SIGTERM, clients are told to reconnect elsewhere (WebSocket close 1012, SSE `retry:`)
    /// at random moments spread over this window, so the other nodes are not stampeded.
    #[arg(long, env = "PGPUSH_DRAIN_WINDOW", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) drain_window: Duration,

    /// How long shutdown waits, after the drain window, for connections to close.
    #[arg(long, env = "PGPUSH_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) shutdown_timeout: Duration,

    /// Read a PROXY protocol (v1 or v2) header where a connection starts with one, as nginx's
    /// stream module sends with `proxy_protocol on`; its client address is believed only from a
    /// trusted proxy. Connections without one (health checks) are served as they are.
    #[arg(long, env = "PGPUSH_PROXY_PROTOCOL", value_parser = BoolishValueParser::new())]
    pub(crate) proxy_protocol: bool,

    /// Peers whose `X-Forwarded-For` (and PROXY protocol header) is believed (IP addresses or CIDR networks, comma-separated).
    #[arg(long = "trusted-proxy", env = "PGPUSH_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_network)]
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,

    /// Serve the location demo's snapshot at `/demo/people` (run `pgpush demo setup` first).
    #[arg(long, env = "PGPUSH_DEMO", value_parser = BoolishValueParser::new())]
    pub(crate) demo: bool,

    /// The Hippie compatibility routes.
    #[command(flatten)]
    pub(crate) hippie: HippieArgs,

    /// Durable channels.
    #[command(flatten)]
    pub(crate) durable: DurableArgs,

    /// Tokens, channel permissions, origins and limits.
    #[command(flatten)]
    pub(crate) security: SecurityArgs,
}

/// Who may connect and what they may do (docs/security.md).
#[derive(Debug, Clone, Args)]
pub(crate) struct SecurityArgs {
    /// HS256 secret: when set (or `--jwt-jwks`), every client request needs a valid token.
    #[arg(long, env = "PGPUSH_JWT_SECRET", hide_env_values = true)]
    pub(crate) jwt_secret: Option<String>,

    /// A JWKS file (RS256, ES256 or HS256 keys), re-read when it changes; turns tokens on.
    #[arg(long, env = "PGPUSH_JWT_JWKS")]
    pub(crate) jwt_jwks: Option<std::path::PathBuf>,

    /// Clock skew tolerated on a token's `exp` and `nbf`.
    #[arg(long, env = "PGPUSH_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) jwt_leeway: Duration,

    /// Channels web clients may subscribe to at all: comma-separated exact names, `prefix*`
    /// patterns, or `*` (every channel; `pgpush*` names are never reachable).
    #[arg(
        long,
        env = "PGPUSH_SUBSCRIBE_ALLOW",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub(crate) subscribe_allow: Vec<String>,

    /// Channels web clients may publish to at all (same patterns).
    #[arg(
        long,
        env = "PGPUSH_PUBLISH_ALLOW",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub(crate) publish_allow: Vec<String>,

    /// Origins browsers may connect from (`https://app.example.com`, comma-separated); a request
    /// with another `Origin` header is refused. Empty: any origin.
    #[arg(long, env = "PGPUSH_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub(crate) allowed_origins: Vec<String>,

    /// The operator's key for the admin API (`/v1/admin/disconnect`, `unsubscribe`, `revoke`),
    /// sent as `Authorization: Bearer <key>`; a client token never opens it. Unset: no admin API.
    #[arg(long, env = "PGPUSH_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,

    /// Open client connections the node accepts in total.
    #[arg(long, env = "PGPUSH_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub(crate) max_connections: usize,

    /// Open client connections per client address (trusted proxies without PROXY protocol are
    /// exempt: they carry many clients).
    #[arg(
        long,
        env = "PGPUSH_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 10_000
    )]
    pub(crate) max_connections_per_address: usize,

    /// Channels one connection may subscribe to.
    #[arg(long, env = "PGPUSH_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub(crate) max_subscriptions: usize,

    /// Publishes per second one WebSocket connection may make (bursts of as many).
    #[arg(long, env = "PGPUSH_PUBLISH_RATE", default_value_t = 100.0)]
    pub(crate) publish_rate: f64,

    /// Publishes per second one client address may make over all its connections and requests.
    #[arg(
        long,
        env = "PGPUSH_PUBLISH_RATE_PER_ADDRESS",
        default_value_t = 1000.0
    )]
    pub(crate) publish_rate_per_address: f64,

    /// Largest request head (request line and headers), in bytes (at least 8192).
    #[arg(long, env = "PGPUSH_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub(crate) max_header_bytes: usize,

    /// Time a client has to send its request head (and a PROXY header) after connecting.
    #[arg(long, env = "PGPUSH_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) handshake_timeout: Duration,

    /// A connection whose peer stops acknowledging data (a half-open socket) is dropped by the
    /// kernel after this long (TCP keepalive and TCP_USER_TIMEOUT).
    #[arg(long, env = "PGPUSH_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) idle_timeout: Duration,
}

/// Settings of durable channels.
#[derive(Debug, Clone, Args)]
pub(crate) struct DurableArgs {
    /// Apply pending schema migrations (`pgpush migrate`) before serving.
    #[arg(long, env = "PGPUSH_MIGRATE", value_parser = BoolishValueParser::new())]
    pub(crate) migrate: bool,

    /// Largest durable payload accepted from clients, in bytes (SQL publishers are held to the
    /// `events_payload_size` constraint of `pgpush.events`, 1 MiB unless changed).
    #[arg(long = "max-durable-payload-bytes", alias = "max-payload-bytes", env = "PGPUSH_MAX_DURABLE_PAYLOAD_BYTES", default_value_t = 1 << 20)]
    pub(crate) max_payload_bytes: usize,

    /// Delete durable events older than this (0 keeps them).
    #[arg(long, env = "PGPUSH_RETENTION_AGE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) retention_age: Duration,

    /// Keep at most this many durable events (0 for no limit).
    #[arg(long, env = "PGPUSH_RETENTION_COUNT", default_value_t = 1_000_000)]
    pub(crate) retention_count: i64,

    /// How often the sequencer applies retention.
    #[arg(long, env = "PGPUSH_RETENTION_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) retention_interval: Duration,

    /// How long an `Idempotency-Key` makes retries publish once.
    #[arg(long, env = "PGPUSH_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) idempotency_window: Duration,

    /// How often the sequencer gives waiting events their positions (a batch starts at most
    /// this often, unless the last one was full): the latency it adds, and its cost under load.
    #[arg(long, env = "PGPUSH_SEQUENCER_INTERVAL", default_value = "5ms", value_parser = humantime::parse_duration)]
    pub(crate) sequencer_interval: Duration,

    /// Most LISTEN wake-ups per second the sequencer's batches may cost the primary, summed over
    /// nodes: every batch wakes every node's LISTEN backend, so with many nodes the interval
    /// grows to nodes / this (32 nodes at 2000: 16 ms); 0: the interval alone.
    #[arg(long, env = "PGPUSH_SEQUENCER_WAKEUPS", default_value_t = 2000)]
    pub(crate) sequencer_wakeups: u32,

    /// How often a node that is not the sequencer tries to become it.
    #[arg(long, env = "PGPUSH_SEQUENCER_TAKEOVER", default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) sequencer_takeover: Duration,

    /// Never run the sequencer on this node.
    #[arg(long, env = "PGPUSH_NO_SEQUENCER", value_parser = BoolishValueParser::new())]
    pub(crate) no_sequencer: bool,

    /// Plain NOTIFY only: no durable channels, so no pgpush schema is needed; durable publishes
    /// and cursors are refused with `not_implemented`.
    #[arg(long, env = "PGPUSH_NO_DURABLE", value_parser = BoolishValueParser::new())]
    pub(crate) no_durable: bool,

    /// Catch up with the events table at least this often, even without a wake-up.
    #[arg(long, env = "PGPUSH_CATCH_UP_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) catch_up_interval: Duration,

    /// Recent durable messages kept in memory to replay recent cursors without a query.
    #[arg(long, env = "PGPUSH_REPLAY_CACHE_MESSAGES", default_value_t = 10_000)]
    pub(crate) replay_cache_messages: usize,

    /// Payload bytes of that cache.
    #[arg(long, env = "PGPUSH_REPLAY_CACHE_BYTES", default_value_t = 64 << 20)]
    pub(crate) replay_cache_bytes: usize,
}

/// Settings of the Hippie routes (the original Web::Hippie::PubSub protocol).
#[derive(Debug, Clone, Args)]
pub(crate) struct HippieArgs {
    /// Turn the Hippie routes off.
    #[arg(long = "no-hippie", env = "PGPUSH_NO_HIPPIE", value_parser = BoolishValueParser::new())]
    pub(crate) disabled: bool,

    /// Path prefix of the Hippie routes.
    #[arg(long = "hippie-prefix", env = "PGPUSH_HIPPIE_PREFIX", default_value = "/_hippie", value_parser = parse_prefix)]
    pub(crate) prefix: String,

    /// Interval of `{"type":"ping"}` keepalive messages on WebSocket and MXHR; 0 disables.
    #[arg(long = "hippie-keepalive", env = "PGPUSH_HIPPIE_KEEPALIVE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) keepalive: Duration,

    /// How long a long poll with nothing to deliver is held before it answers `[]`.
    #[arg(long = "hippie-poll-hold", env = "PGPUSH_HIPPIE_POLL_HOLD", default_value = "25s", value_parser = humantime::parse_duration)]
    pub(crate) poll_hold: Duration,

    /// How long a client's queue outlives its connection when it was created over WebSocket.
    #[arg(long = "hippie-ws-window", env = "PGPUSH_HIPPIE_WS_WINDOW", default_value = "15s", value_parser = humantime::parse_duration)]
    pub(crate) ws_window: Duration,

    /// How long a client's queue outlives its connection when it was created over MXHR or poll.
    #[arg(long = "hippie-window", env = "PGPUSH_HIPPIE_WINDOW", default_value = "55s", value_parser = humantime::parse_duration)]
    pub(crate) window: Duration,

    /// Messages one client's queue holds while nobody reads it; overflow is reported to the client.
    #[arg(
        long = "hippie-queue-messages",
        env = "PGPUSH_HIPPIE_QUEUE_MESSAGES",
        default_value_t = 1000
    )]
    pub(crate) queue_messages: usize,

    /// Most client queues the node keeps at once; beyond it new clients get 503.
    #[arg(
        long = "hippie-max-queues",
        env = "PGPUSH_HIPPIE_MAX_QUEUES",
        default_value_t = 100_000
    )]
    pub(crate) max_queues: usize,

    /// Hippie client queues one client address may hold on a node.
    #[arg(
        long = "hippie-max-queues-per-address",
        env = "PGPUSH_HIPPIE_MAX_QUEUES_PER_ADDRESS",
        default_value_t = 1_000
    )]
    pub(crate) max_queues_per_address: usize,

    /// Refuse publishes that do not carry the client_id of a live queue.
    #[arg(
        long = "hippie-require-client-id",
        env = "PGPUSH_HIPPIE_REQUIRE_CLIENT_ID"
    )]
    pub(crate) require_client_id: bool,

    /// Only accept WebSocket handshakes and publishes whose Origin matches this regex (anchored
    /// at the start); others get 403 "origin not allowed".
    #[arg(long = "hippie-trusted-origin", env = "PGPUSH_HIPPIE_TRUSTED_ORIGIN", value_parser = parse_origin_regex)]
    pub(crate) trusted_origin: Option<regex_lite::Regex>,
}

fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR network"))
}

fn parse_prefix(text: &str) -> Result<String, String> {
    let trimmed = text.trim_end_matches('/');
    if !trimmed.starts_with('/') || trimmed.len() < 2 {
        return Err(format!(
            "{text:?}: the prefix must start with / and not be /"
        ));
    }
    Ok(trimmed.to_owned())
}

fn parse_origin_regex(text: &str) -> Result<regex_lite::Regex, String> {
    regex_lite::Regex::new(&format!("^(?:{text})")).map_err(|e| e.to_string())
}

/// `pgpush listen <channel>...`
#[derive(Debug, Clone, Args)]
pub(crate) struct ListenArgs {
    /// Database connection.
    #[command(flatten)]
    pub(crate) database: DatabaseArgs,
    /// Channels to LISTEN to (exact names, case kept).
    #[arg(required = true)]
    pub(crate) channels: Vec<String>,
}

/// `pgpush notify <channel> <payload>`
#[derive(Debug, Clone, Args)]
pub(crate) struct NotifyArgs {
    /// Database connection.
    #[command(flatten)]
    pub(crate) database: DatabaseArgs,
    /// Channel name (exact, case kept).
    pub(crate) channel: String,
    /// Payload text (at most 7,999 bytes).
    pub(crate) payload: String,
}

impl ServeArgs {
    /// The node's settings, as the serving library takes them.
    pub(crate) fn settings(&self) -> NodeSettings {
        let durable = &self.durable;
        let security = &self.security;
        let hippie = &self.hippie;
        let queue = QueueLimits {
            messages: self.max_queue_messages,
            bytes: self.max_queue_bytes,
        };
        NodeSettings {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            database_url: self.database.database_url.clone(),
            standby_database_url: self.standby_database_url.clone(),
            migrate: durable.migrate,
            node_id: self.node_id.clone(),
            pool_size: self.pool_size,
            metrics_sample_interval: self.metrics_sample_interval,
            hub: HubSettings {
                queue,
                recent: RecentLimits {
                    messages: durable.replay_cache_messages,
                    bytes: durable.replay_cache_bytes,
                },
                unlisten_delay: self.unlisten_delay,
                subscribe_timeout: self.subscribe_timeout,
            },
            durable: DurableSettings {
                enabled: !durable.no_durable,
                catch_up_interval: durable.catch_up_interval,
                max_payload_bytes: durable.max_payload_bytes,
                idempotency_window: durable.idempotency_window,
            },
            sequencer: (!durable.no_sequencer && !durable.no_durable).then(|| SequencerSettings {
                interval: durable.sequencer_interval,
                wakeups_per_second: durable.sequencer_wakeups,
                takeover_interval: durable.sequencer_takeover,
                batch_size: 10_000,
                retention_age: Some(durable.retention_age).filter(|d| !d.is_zero()),
                retention_count: Some(durable.retention_count).filter(|n| *n > 0),
                idempotency_window: durable.idempotency_window,
                retention_interval: durable.retention_interval,
            }),
            hippie: (!hippie.disabled).then(|| HippieSettings {
                prefix: hippie.prefix.clone(),
                keepalive: hippie.keepalive,
                poll_hold: hippie.poll_hold,
                ws_window: hippie.ws_window,
                window: hippie.window,
                queue: QueueLimits {
                    messages: hippie.queue_messages,
                    bytes: self.max_queue_bytes,
                },
                max_queues: hippie.max_queues,
                max_queues_per_address: hippie.max_queues_per_address,
                require_client_id: hippie.require_client_id,
                trusted_origin: hippie.trusted_origin.clone(),
            }),
            admission: AdmissionSettings {
                jwt_secret: security.jwt_secret.clone(),
                jwt_jwks: security.jwt_jwks.clone(),
                jwt_leeway: security.jwt_leeway,
                subscribe_allow: security.subscribe_allow.clone(),
                publish_allow: security.publish_allow.clone(),
                allowed_origins: security.allowed_origins.clone(),
                api_key: security.api_key.clone(),
            },
            limits: LimitSettings {
                max_connections: security.max_connections,
                max_connections_per_address: security.max_connections_per_address,
                max_subscriptions: security.max_subscriptions,
                publish_rate: security.publish_rate,
                publish_rate_per_address: security.publish_rate_per_address,
            },
            connections: ConnectionSettings {
                max_message_bytes: self.max_message_bytes,
                ping_interval: self.ping_interval,
                sse_keepalive: self.sse_keepalive,
                drain_window: self.drain_window,
                shutdown_timeout: self.shutdown_timeout,
                proxy_protocol: self.proxy_protocol,
                trusted_proxies: self.trusted_proxies.clone(),
                max_header_bytes: security.max_header_bytes,
                handshake_timeout: security.handshake_timeout,
                idle_timeout: security.idle_timeout,
            },
        }
    }
}

/// A listen address: `ip:port`, or `host:port` with a name that resolves (`localhost:8080`),
/// which means its first address.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    use std::net::ToSocketAddrs;
    let mut resolved = text
        .to_socket_addrs()
        .map_err(|error| format!("{text:?} is not host:port ({error})"))?;
    resolved
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_defaults() {
        let cli = Cli::try_parse_from([
            "pgpush",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ping-interval",
            "2s",
            "--database-url",
            "postgres://x@h/db",
        ])
        .unwrap();
        let CliCommand::Serve(args) = cli.command else {
            panic!("serve expected")
        };
        let settings = args.settings();
        assert_eq!(settings.listen.port(), 0);
        assert_eq!(settings.connections.ping_interval, Duration::from_secs(2));
        assert_eq!(settings.connections.sse_keepalive, Duration::from_secs(15));
        assert_eq!(settings.database_url.as_deref(), Some("postgres://x@h/db"));
        assert!(settings.sequencer.is_some());
        let hippie = settings.hippie.expect("Hippie routes are on by default");
        assert_eq!(hippie.prefix, "/_hippie");
        assert_eq!(hippie.max_queues_per_address, 1_000);
        assert_eq!(settings.limits.max_subscriptions, 100);
    }

    #[test]
    fn turning_parts_off_leaves_them_out_of_the_settings() {
        let cli = Cli::try_parse_from(["pgpush", "serve", "--no-durable", "--no-hippie"]).unwrap();
        let CliCommand::Serve(args) = cli.command else {
            panic!("serve expected")
        };
        let settings = args.settings();
        assert!(!settings.durable.enabled);
        assert!(
            settings.sequencer.is_none(),
            "no sequencer without durable channels"
        );
        assert!(settings.hippie.is_none());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["pgpush", "serve", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["pgpush", "serve", "--ping-interval", "soon"]).is_err());
        assert!(Cli::try_parse_from(["pgpush", "listen"]).is_err());
        assert!(Cli::try_parse_from(["pgpush", "serve", "--hippie-prefix", "/"]).is_err());
        assert!(Cli::try_parse_from(["pgpush", "serve", "--trusted-proxy", "nope"]).is_err());
        assert!(Cli::try_parse_from(["pgpush", "serve", "--hippie-trusted-origin", "("]).is_err());
    }
}
