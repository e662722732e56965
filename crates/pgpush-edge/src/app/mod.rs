//! The application: builds every component from its settings, serves until shutdown, then
//! drains. It alone imports every other part (`router` routes to all handlers, `server` owns
//! the sockets, `observe` answers the operator's routes); nothing imports it.

mod observe;
mod router;
mod server;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use pgpush_pg::{
    ConnectOptions, EventStore, Listener, Publisher, SequencerHandle, spawn_sequencer,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

pub use router::{Extension, ExtensionFuture};

use crate::{
    admission::{Admission, AuthSetupError, limits::Limits},
    core::{
        durable::Durable,
        hub::{Hub, WAKE_CHANNEL},
        presence::Presence,
        publishing::Publishing,
    },
    hippie::{Hippie, Registry},
    ops::{metrics, stats::Stats},
    services::{
        Lifetimes, Services,
        control::Control,
        drain::{Drain, Heartbeat},
    },
    settings::NodeSettings,
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

/// A running node: its built components, and what the router and the operator's routes need.
#[derive(Debug)]
pub(crate) struct Node {
    /// Name in stats and logs.
    pub(crate) node_id: String,
    /// What handlers and transports use.
    pub(crate) services: Arc<Services>,
    /// The Hippie routes, unless turned off.
    pub(crate) hippie: Option<Arc<Hippie>>,
    /// Whether this node is the sequencer (`None` when it never runs it).
    pub(crate) sequencer: Option<SequencerHandle>,
    /// True when the operator's routes have their own address (no `/metrics` on the client port).
    pub(crate) metrics_apart: bool,
    /// Routes the binary added.
    pub(crate) extensions: Vec<Arc<dyn Extension>>,
}

impl Node {
    /// Why the node should not receive new clients: it drains, its LISTEN connection is down, or
    /// its durable channels cannot start (no schema yet); `None` when it is ready.
    pub(crate) fn not_ready_reason(&self) -> Option<String> {
        if self.services.lifetimes.shutdown.is_cancelled() {
            return Some("node is draining".to_owned());
        }
        if !self.services.hub.listener_up() {
            return Some("LISTEN connection to PostgreSQL is down".to_owned());
        }
        self.services.durable.not_ready_reason()
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

/// Runs a node until `shutdown` is cancelled: binds `settings.listen` (and the metrics
/// address), calls `on_bound` with the bound addresses, serves clients (and the `extensions`'
/// routes), then drains (close clients, wait up to the shutdown timeout, close the LISTEN
/// connection last).
pub async fn run(
    settings: NodeSettings,
    extensions: Vec<Arc<dyn Extension>>,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(Bound),
) -> Result<(), StartError> {
    let url = settings
        .database_url
        .clone()
        .ok_or(StartError::NoDatabase)?;
    let options = ConnectOptions::parse(&url)?;
    let admission = Arc::new(Admission::new(&settings.admission)?);
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
    if settings.migrate {
        migrate(&options).await.map_err(StartError::Migrate)?;
    }
    let socket = bind(settings.listen).await?;
    let address = socket.local_addr().map_err(|source| StartError::Bind {
        address: settings.listen,
        source,
    })?;
    let metrics_socket = match settings.metrics_listen {
        Some(metrics_address) => Some(bind(metrics_address).await?),
        None => None,
    };

    let stats = Arc::new(Stats::default());
    // Background tasks that end with the LISTEN connection, after clients are gone.
    let background = CancellationToken::new();
    let (listener, listener_task) = Listener::new(
        options.listener(),
        &[
            WAKE_CHANNEL,
            pgpush_pg::PRESENCE_CHANNEL,
            pgpush_pg::CONTROL_CHANNEL,
        ],
    );
    let hub = Arc::new(Hub::new(Arc::new(listener), stats.clone(), &settings.hub));
    tokio::spawn(hub.clone().sweep_until(background.clone()));
    let listener_handle = tokio::spawn(listener_task.run(hub.clone(), background.clone()));
    let publisher = Publisher::new(options.pool(), settings.pool_size)?;
    tokio::spawn({
        let publisher = publisher.clone();
        let shutdown = background.clone();
        async move { publisher.close_idle_until(shutdown).await }
    });
    let standby = match &settings.standby_database_url {
        Some(url) => Some(EventStore::reader(pgpush_pg::standby_reads(url)?, 2)?),
        None => None,
    };
    let durable = Arc::new(Durable::new(
        publisher.events(),
        standby,
        hub.clone(),
        stats.clone(),
        &settings.durable,
    ));
    let durable_task = tokio::spawn(durable.clone().run(background.clone()));
    tokio::spawn(metrics::sample_database(
        publisher.events(),
        stats.clone(),
        settings.metrics_sample_interval,
        background.clone(),
    ));
    let (sequencer, sequencer_task) = match settings.sequencer.clone() {
        Some(sequencer) => {
            let (handle, task) =
                spawn_sequencer(publisher.pool().clone(), sequencer, background.clone());
            (Some(handle), Some(task))
        }
        None => (None, None),
    };
    tokio::spawn(admission.clone().reload_jwks_until(background.clone()));
    let presence = Arc::new(Presence::new(Some(publisher.presence()), stats.clone()));
    let presence_task = tokio::spawn(presence.clone().run(background.clone()));
    let control = Arc::new(Control::new(
        hub.clone(),
        presence.clone(),
        admission.revocations().clone(),
        publisher.presence(),
    ));
    if let Some(signals) = hub.take_control() {
        tokio::spawn(control.clone().run(signals, background.clone()));
    }
    let connections = &settings.connections;
    let services = Arc::new(Services {
        hub: hub.clone(),
        durable: durable.clone(),
        publishing: Publishing::new(publisher, durable.clone()),
        presence,
        control,
        admission,
        limits: Limits::new(&settings.limits),
        stats,
        lifetimes: Lifetimes {
            drain: Drain::new(shutdown.clone(), connections.drain_window),
            ping: Heartbeat::start(connections.ping_interval, background.clone()),
            sse_keepalive: Heartbeat::start(connections.sse_keepalive, background.clone()),
            shutdown: shutdown.clone(),
            tracker: TaskTracker::new(),
            settings: connections.clone(),
        },
    });
    let node_id = settings
        .node_id
        .clone()
        .unwrap_or_else(|| address.to_string());
    let hippie = settings.hippie.as_ref().map(|config| {
        let registry = Arc::new(Registry::new(hub.clone(), durable.clone(), config));
        tokio::spawn(registry.clone().maintain_until(background.clone()));
        Arc::new(Hippie::new(
            config.clone(),
            registry,
            services.clone(),
            Heartbeat::start(config.keepalive, background.clone()),
            node_id.clone(),
        ))
    });
    let node = Arc::new(Node {
        node_id,
        services,
        hippie,
        sequencer,
        metrics_apart: settings.metrics_listen.is_some(),
        extensions,
    });
    // Durable channels first: a client accepted before the reader knows where it starts could
    // miss the events positioned meanwhile. Without the schema the node serves anyway.
    durable.wait_first_attempt(Duration::from_secs(10)).await;
    let metrics_address = metrics_socket.as_ref().and_then(|s| s.local_addr().ok());
    if let Some(metrics_socket) = metrics_socket {
        tokio::spawn(server::serve_metrics(
            metrics_socket,
            node.clone(),
            background.clone(),
        ));
    }
    info!(%address, metrics = ?metrics_address, node = %node.node_id, "pgpush listening");
    on_bound(Bound {
        clients: address,
        metrics: metrics_address,
    });

    server::serve(socket, node.clone()).await;

    // The sequencer hands over (releases its lock) and the LISTEN connection closes last.
    background.cancel();
    if let Some(task) = sequencer_task {
        let _ = task.await;
    }
    let _ = durable_task.await;
    let _ = presence_task.await;
    let _ = listener_handle.await;
    info!("pgpush stopped");
    Ok(())
}

async fn bind(address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind { address, source })
}

/// Applies pending migrations (`pgpush migrate`, `serve --migrate`); returns the versions applied.
pub async fn migrate(options: &ConnectOptions) -> Result<Vec<i32>, pgpush_pg::Error> {
    pgpush_pg::migrate_database(options).await
}
