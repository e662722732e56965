//! The location demo from the command line: `pgpush demo setup|simulate`, and the routes a
//! node started with `--demo` adds (its pages, and the people snapshot the map starts from).

use bytes::Bytes;
use http::StatusCode;
use pgpush_edge::{Extension, ExtensionFuture, error::ClientError, http::json};
use pgpush_pg::{ConnectOptions, Publisher};
use pgpush_protocol::ErrorCode;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    args::{DatabaseArgs, DemoArgs, DemoCommand, SimulateArgs},
    commands::CommandError,
};

/// The demo's routes on a node: its pages always, its snapshot when the node runs the demo.
#[derive(Debug)]
pub(crate) struct DemoRoutes {
    /// Whether the node was started with `--demo`.
    pub(crate) enabled: bool,
}

impl Extension for DemoRoutes {
    fn pages(&self) -> &'static [(&'static str, &'static str)] {
        pgpush_demo::PAGES
    }

    fn routes(&self) -> &'static [&'static str] {
        &["/demo/people"]
    }

    fn get(&self, _path: &str, publisher: Publisher) -> ExtensionFuture {
        let enabled = self.enabled;
        Box::pin(async move {
            if !enabled {
                return Err(ClientError::new(
                    ErrorCode::NotFound,
                    "the location demo is off on this node (start it with --demo)",
                ));
            }
            let client = publisher.client().await.map_err(|error| {
                ClientError::new(
                    ErrorCode::Unavailable,
                    format!("database unavailable: {error}"),
                )
            })?;
            let people = pgpush_demo::people(&client).await.map_err(|error| {
                debug!(%error, "demo snapshot failed");
                ClientError::new(
                    ErrorCode::Unavailable,
                    "the location demo is not set up in this database (run `pgpush demo setup`)",
                )
            })?;
            Ok(json(StatusCode::OK, Bytes::from(people)))
        })
    }
}

/// `pgpush demo setup|simulate`.
pub(crate) async fn demo(args: DemoArgs, shutdown: CancellationToken) -> Result<(), CommandError> {
    let connect = |database: DatabaseArgs| -> Result<ConnectOptions, CommandError> {
        let url = database.database_url.ok_or(CommandError::NoDatabase)?;
        Ok(ConnectOptions::parse(&url)?)
    };
    match args.command {
        DemoCommand::Setup { notify, database } => {
            let options = connect(database)?;
            let trigger = if notify {
                pgpush_demo::Trigger::Notify
            } else {
                pgpush_demo::Trigger::Durable
            };
            demo_setup(&options, trigger).await?;
            println!("the location demo is set up: open /demo/map on a node started with --demo");
        }
        DemoCommand::Simulate { simulate, database } => {
            let options = connect(database)?;
            eprintln!(
                "pgpush demo: moving {} people, {} moves per second (Ctrl-C stops)",
                simulate.people, simulate.rate
            );
            let moves = demo_simulate(&options, &simulate, shutdown).await?;
            println!("pgpush demo: {moves} moves");
        }
    }
    Ok(())
}

/// Installs the location demo (and, for the durable trigger, the `pgpush` schema it needs).
pub(crate) async fn demo_setup(
    options: &ConnectOptions,
    trigger: pgpush_demo::Trigger,
) -> Result<(), CommandError> {
    if trigger == pgpush_demo::Trigger::Durable {
        pgpush_edge::migrate(options).await?;
    }
    let client = demo_connect(options).await?;
    pgpush_demo::setup(&client, trigger).await?;
    Ok(())
}

/// Runs the people simulator until `shutdown` (or its move limit); returns the moves made.
pub(crate) async fn demo_simulate(
    options: &ConnectOptions,
    args: &SimulateArgs,
    shutdown: CancellationToken,
) -> Result<u64, CommandError> {
    let client = demo_connect(options).await?;
    let simulate = pgpush_demo::SimulateOptions {
        people: args.people,
        rate: args.rate,
        speedup: args.speedup,
        area: pgpush_demo::Area {
            radius_m: args.radius,
            ..pgpush_demo::Area::default()
        },
        moves: args.moves,
    };
    Ok(pgpush_demo::simulate(&client, &simulate, shutdown).await?)
}

async fn demo_connect(options: &ConnectOptions) -> Result<tokio_postgres::Client, CommandError> {
    let (client, connection) = options
        .pool()
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(pgpush_demo::DemoError::from)?;
    tokio::spawn(connection);
    Ok(client)
}
