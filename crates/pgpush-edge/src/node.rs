//! One edge node: builds the listener, hub and pool, serves until shutdown, then drains.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use pgpush_pg::{
    ConnectOptions, Listener, Publisher, SequencerConfig, SequencerHandle, spawn_sequencer,
};
use pgpush_protocol::StatsSnapshot;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    auth::{Admission, AuthSetupError},
    config::ServeConfig,
    drain::{Drain, Heartbeat},
    durable::{Durable, DurableConfig},
    hippie::{Hippie, Registry},
    hub::{Hub, QueueLimits, RecentLimits, WAKE_CHANNEL},
    limits::Limits,
    metrics, server,
    stats::Stats,
};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No database URL was configured.
    #[error(
        "no database configured: set DATABASE_URL (or --database-url); for a private throwaway \
         PostgreSQL to try pgpush out, pass --throwaway-database"
    )]
    NoDatabase,
    /// The database URL does not parse.
    #[error("bad database URL: {0}")]
    Database(#[from] pgpush_pg::Error),
    /// The database refused this node (a wrong password, no such database): retrying would not
    /// help.
    #[error("cannot use PostgreSQL at {target}: {source}")]
    Refused {
        /// Where the node connected.
        target: String,
        /// What the server said.
        source: pgpush_pg::Error,
    },
    /// `--migrate` was given and the migration failed.
    #[error("migration failed: {0}")]
    Migrate(pgpush_pg::Error),
    /// The token configuration cannot be used.
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The shared state of a running node, handed to every connection.
#[derive(Debug)]
pub struct Node {
    /// The configuration it was started with.
    pub config: ServeConfig,
    /// Name in stats and logs.
    pub node_id: String,
    /// Channel -> subscribers.
    pub hub: Arc<Hub>,
    /// The publish pool.
    pub publisher: Publisher,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Cancelled when the node starts shutting down (draining).
    pub shutdown: CancellationToken,
    /// When each connection closes during the drain.
    pub(crate) drain: Arc<Drain>,
    /// Ticks every ping interval: WebSocket connections ping their clients on it.
    pub(crate) heartbeat: Heartbeat,
    /// Ticks every Hippie keepalive interval (never when it is 0).
    pub(crate) hippie_keepalive: Heartbeat,
    /// Ticks every SSE keepalive interval.
    pub(crate) sse_keepalive: Heartbeat,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The Hippie routes, unless turned off.
    pub(crate) hippie: Option<Hippie>,
    /// Durable channels.
    pub(crate) durable: Arc<Durable>,
    /// Whether this node is the sequencer (`None` with `--no-sequencer`).
    pub(crate) sequencer: Option<SequencerHandle>,
    /// Origins, tokens and allow-lists.
    pub(crate) admission: Arc<Admission>,
    /// Connection and publish limits.
    pub(crate) limits: Arc<Limits>,
}

impl Node {
    /// True when the node should receive new clients (see [`Node::not_ready_reason`]).
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the node should not receive new clients: it drains, its LISTEN connection is down, or
    /// its durable channels cannot start (no schema yet); `None` when it is ready.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.shutdown.is_cancelled() {
            return Some("node is draining".to_owned());
        }
        if !self.hub.listener_up() {
            return Some("LISTEN connection to PostgreSQL is down".to_owned());
        }
        self.durable.not_ready_reason()
    }

    /// The `/v1/stats` document.
    pub fn stats_snapshot(&self) -> StatsSnapshot {
        let mut snapshot = self.stats.snapshot(
            &self.node_id,
            self.hub.listener_up(),
            self.hub.channels_listened(),
            self.hippie.as_ref().map_or(0, |h| h.registry.len()),
        );
        snapshot.durable_head = self.durable.head();
        snapshot.durable_epoch = self.durable.epoch().map(|epoch| format!("{epoch:x}"));
        snapshot.sequencer = self.sequencer.as_ref().is_some_and(|s| s.is_leader());
        snapshot
    }

    /// The WebSocket settings: a small read buffer (clients send little; idle connections cost
    /// little memory),
    /// an inbound message cap, and a write buffer that coalesces a batch into few syscalls.
    pub(crate) fn websocket_config(&self) -> WebSocketConfig {
        let max = self.config.max_message_bytes;
        WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(16 * 1024 + max.max(8 << 20) * 2)
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }
}

/// The addresses a started node listens on.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Clients' address.
    pub clients: SocketAddr,
    /// The metrics address, with `--metrics-listen`.
    pub metrics: Option<SocketAddr>,
}

/// Runs a node until `shutdown` is cancelled: binds `config.listen` (and `--metrics-listen`),
/// calls `on_bound` with the bound addresses, serves clients, then drains (close clients, wait
/// up to the shutdown timeout, close the LISTEN connection last).
pub async fn run(
    config: ServeConfig,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(Bound),
) -> Result<(), StartError> {
    let url = config
        .database
        .database_url
        .clone()
        .ok_or(StartError::NoDatabase)?;
    let options = ConnectOptions::parse(&url)?;
    let admission = Arc::new(Admission::new(&config.security)?);
    // A database that refuses us will go on refusing: say so now instead of retrying forever.
    // One that is not reachable yet (still starting, failing over) is waited for.
    match options.check().await {
        Ok(()) => {}
        Err(source) if source.is_rejected() => {
            return Err(StartError::Refused {
                target: options.describe(),
                source,
            });
        }
        Err(error) => warn!(
            %error,
            database = options.describe(),
            "PostgreSQL is not reachable yet; serving, not ready until it is"
        ),
    }
    if config.durable.migrate {
        migrate(&options).await.map_err(StartError::Migrate)?;
    }
    let socket = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            address: config.listen,
            source,
        })?;
    let address = socket.local_addr().map_err(|source| StartError::Bind {
        address: config.listen,
        source,
    })?;
    let metrics_socket = match config.metrics_listen {
        Some(metrics_address) => Some(TcpListener::bind(metrics_address).await.map_err(
            |source| StartError::Bind {
                address: metrics_address,
                source,
            },
        )?),
        None => None,
    };

    let stats = Arc::new(Stats::default());
    // Background tasks that end with the LISTEN connection, after clients are gone.
    let listener_shutdown = CancellationToken::new();
    let (listener, listener_task) = Listener::new(options.listener(), &[WAKE_CHANNEL]);
    let hub = Arc::new(Hub::new(
        listener,
        stats.clone(),
        QueueLimits {
            messages: config.max_queue_messages,
            bytes: config.max_queue_bytes,
        },
        RecentLimits {
            messages: config.durable.replay_cache_messages,
            bytes: config.durable.replay_cache_bytes,
        },
        config.unlisten_delay,
    ));
    tokio::spawn(hub.clone().sweep_until(listener_shutdown.clone()));
    let listener_handle = tokio::spawn(listener_task.run(hub.clone(), listener_shutdown.clone()));
    let publisher = Publisher::new(options.pool(), config.pool_size)?;
    let durable = Arc::new(Durable::new(
        publisher.events(),
        hub.clone(),
        stats.clone(),
        DurableConfig {
            enabled: !config.durable.no_durable,
            catch_up_interval: config.durable.catch_up_interval,
            max_payload_bytes: config.durable.max_payload_bytes,
            idempotency_window: config.durable.idempotency_window,
        },
    ));
    let durable_task = tokio::spawn(durable.clone().run(listener_shutdown.clone()));
    tokio::spawn(metrics::sample_database(
        publisher.events(),
        stats.clone(),
        config.metrics_sample_interval,
        listener_shutdown.clone(),
    ));
    let sequencer = (!config.durable.no_sequencer && !config.durable.no_durable).then(|| {
        let settings = SequencerConfig {
            interval: config.durable.sequencer_interval,
            takeover_interval: config.durable.sequencer_takeover,
            batch_size: 10_000,
            retention_age: Some(config.durable.retention_age).filter(|d| !d.is_zero()),
            retention_count: Some(config.durable.retention_count).filter(|n| *n > 0),
            idempotency_window: config.durable.idempotency_window,
            retention_interval: config.durable.retention_interval,
        };
        spawn_sequencer(options.listener(), settings, listener_shutdown.clone())
    });
    let (sequencer, sequencer_task) = match sequencer {
        Some((handle, task)) => (Some(handle), Some(task)),
        None => (None, None),
    };
    let hippie = (!config.hippie.disabled).then(|| {
        let limits = QueueLimits {
            messages: config.hippie.queue_messages,
            bytes: config.max_queue_bytes,
        };
        let registry = Arc::new(Registry::new(
            hub.clone(),
            durable.clone(),
            limits,
            config.hippie.max_queues,
            config.security.hippie_max_queues_per_address,
        ));
        tokio::spawn(registry.clone().maintain_until(listener_shutdown.clone()));
        Hippie::new(config.hippie.clone(), registry)
    });
    tokio::spawn(
        admission
            .clone()
            .reload_jwks_until(listener_shutdown.clone()),
    );
    let limits = Limits::new(
        config.security.max_connections,
        config.security.max_connections_per_address,
        config.security.publish_rate,
        config.security.publish_rate_per_address,
    );
    let drain = Drain::new(shutdown.clone(), config.drain_window);
    let heartbeat = Heartbeat::start(config.ping_interval, listener_shutdown.clone());
    let hippie_keepalive = Heartbeat::start(config.hippie.keepalive, listener_shutdown.clone());
    let sse_keepalive = Heartbeat::start(config.sse_keepalive, listener_shutdown.clone());
    let node = Arc::new(Node {
        node_id: config
            .node_id
            .clone()
            .unwrap_or_else(|| address.to_string()),
        config,
        hub,
        publisher,
        stats,
        drain,
        heartbeat,
        hippie_keepalive,
        sse_keepalive,
        shutdown: shutdown.clone(),
        tracker: TaskTracker::new(),
        hippie,
        durable,
        sequencer,
        admission,
        limits,
    });
    // Durable channels first: a client accepted before the reader knows where it starts could
    // miss the events positioned meanwhile. Without the schema the node serves anyway.
    node.durable
        .wait_first_attempt(Duration::from_secs(10))
        .await;
    let metrics_address = metrics_socket.as_ref().and_then(|s| s.local_addr().ok());
    if let Some(metrics_socket) = metrics_socket {
        tokio::spawn(server::serve_metrics(
            metrics_socket,
            node.clone(),
            listener_shutdown.clone(),
        ));
    }
    info!(%address, metrics = ?metrics_address, node = %node.node_id, "pgpush listening");
    on_bound(Bound {
        clients: address,
        metrics: metrics_address,
    });

    server::serve(socket, node.clone()).await;

    // The sequencer hands over (releases its lock) and the LISTEN connection closes last.
    listener_shutdown.cancel();
    if let Some(task) = sequencer_task {
        let _ = task.await;
    }
    let _ = durable_task.await;
    let _ = listener_handle.await;
    info!("pgpush stopped");
    Ok(())
}

/// Applies pending migrations (`pgpush migrate`, `serve --migrate`); returns the versions applied.
pub async fn migrate(options: &ConnectOptions) -> Result<Vec<i32>, pgpush_pg::Error> {
    pgpush_pg::migrate_database(options).await
}
