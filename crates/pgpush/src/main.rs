//! The `pgpush` binary: parses the command line, starts logging, runs a command, exits.

mod args;
mod commands;
mod demo;
mod nginx;
mod up;

use std::{io::Write, process::ExitCode, sync::Arc};

use clap::Parser;
use pgpush_pg::throwaway::ThrowawayPostgres;
use tokio_util::sync::CancellationToken;

use crate::{
    args::{Cli, CliCommand},
    commands as cli,
};

/// Exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return match error.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(EXIT_CONFIG),
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, error)) => {
            // Every error's message names its causes once: the chain is not printed again.
            eprintln!("pgpush: {error}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<(), (u8, anyhow::Error)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| (1, e.into()))?;
    // Logging and the trace exporter (whose batch task runs on the runtime).
    let telemetry = {
        let _context = runtime.enter();
        pgpush_edge::ops::telemetry::init()
    };
    // A throwaway cluster is started on the main thread: its postmaster is tied to the
    // starting thread's life, and the main thread lives as long as we do.
    let mut throwaway = None;
    let wants_database = match &cli.command {
        CliCommand::Serve(config) => config.throwaway_database,
        CliCommand::Up(args) => args.database.database_url.is_none(),
        _ => false,
    };
    if wants_database {
        eprintln!("pgpush: DATABASE_URL is unset; starting a throwaway PostgreSQL");
        let cluster = ThrowawayPostgres::start().map_err(|e| (1, e.into()))?;
        eprintln!(
            "pgpush: throwaway PostgreSQL at {} (removed on exit)",
            cluster.url()
        );
        throwaway = Some(cluster);
    }
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        match cli.command {
            CliCommand::Serve(args) => {
                let mut settings = args.settings();
                if let Some(cluster) = &throwaway {
                    // Our own database: give it the schema durable channels need.
                    settings.database_url = Some(cluster.url());
                    settings.migrate = true;
                }
                let demo = Arc::new(demo::DemoRoutes { enabled: args.demo });
                pgpush_edge::run(settings, vec![demo], shutdown, |bound| {
                    let mut out = std::io::stdout();
                    if let Some(metrics) = bound.metrics {
                        let _ = writeln!(out, "pgpush metrics on http://{metrics}");
                    }
                    let _ = writeln!(out, "pgpush listening on http://{}", bound.clients);
                    let _ = out.flush();
                })
                .await
                .map_err(|e| match e {
                    pgpush_edge::StartError::Bind { .. }
                    | pgpush_edge::StartError::Refused { .. } => (1, e.into()),
                    _ => (EXIT_CONFIG, e.into()),
                })
            }
            CliCommand::Listen(args) => {
                cli::listen(args.database.database_url, &args.channels, shutdown)
                    .await
                    .map_err(command_error)
            }
            CliCommand::Migrate(args) => {
                cli::migrate(args.database_url).await.map_err(command_error)
            }
            CliCommand::Up(args) => {
                let url = args
                    .database
                    .database_url
                    .clone()
                    .or_else(|| throwaway.as_ref().map(ThrowawayPostgres::url))
                    .unwrap_or_default();
                up::up(*args, url, shutdown)
                    .await
                    .map_err(|e| (1, e.into()))
            }
            CliCommand::Probe(args) => {
                if cli::probe(&args.url).await {
                    Ok(())
                } else {
                    Err((1, anyhow::anyhow!("{} did not answer 200", args.url)))
                }
            }
            CliCommand::NginxConfig(args) => {
                use nginx::{StreamModule, find_nginx};
                let stream_module = match args.stream_module.as_str() {
                    "built-in" => StreamModule::BuiltIn,
                    "auto" => find_nginx(&args.nginx)
                        .map_or(StreamModule::BuiltIn, |nginx| StreamModule::of(&nginx)),
                    path => StreamModule::Load(path.into()),
                };
                let config = nginx::NginxConfig {
                    stream_module,
                    mode: args.mode,
                    listen: args.listen,
                    nodes: args.nodes,
                    prefix: args.prefix,
                    proxy_protocol: args.proxy_protocol,
                    hippie_prefix: args.hippie_prefix,
                    workers: args.workers,
                };
                print!("{}", config.render());
                Ok(())
            }
            CliCommand::Demo(args) => demo::demo(args, shutdown).await.map_err(command_error),
            CliCommand::Notify(args) => {
                cli::notify(args.database.database_url, &args.channel, &args.payload)
                    .await
                    .map_err(command_error)
            }
        }
    });
    // Spans still buffered are exported while the runtime runs.
    telemetry.shutdown();
    // Connections and tasks are gone before the cluster they used is removed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    drop(throwaway);
    result
}

fn command_error(error: cli::CommandError) -> (u8, anyhow::Error) {
    let code = match error {
        cli::CommandError::NoDatabase | cli::CommandError::BadChannel { .. } => EXIT_CONFIG,
        cli::CommandError::Database(_) | cli::CommandError::Demo(_) => 1,
    };
    (code, error.into())
}

/// Cancels `shutdown` on SIGTERM or SIGINT; a second signal exits at once.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received; shutting down (again to exit now)");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    std::process::exit(130);
}
