//! pgpush-loadgen: the load scenarios of `loadtest/` as a binary — many clients over every
//! transport, a publisher at a rate, and loss, duplicate, order and latency accounting.

mod manifest;
mod publisher;
mod report;
mod subscriber;
mod tally;
mod thin;
mod viewport;
mod worker;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load scenarios against pgpush (or, to compare, Nchan or the thin broadcaster).
#[derive(Debug, Parser)]
#[command(name = "pgpush-loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario of loadtest/scenarios.json; the exit code says whether its thresholds held.
    Run(RunArgs),
    /// Print the scenarios (names, parameters, thresholds) as JSON.
    Scenarios,
    /// The thinnest tokio WebSocket broadcaster: no database, the practical limit of a machine.
    ThinServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
    },
    /// A subscriber process of a multi-process run (started by `run --processes N`).
    #[command(hide = true)]
    Worker(RunArgs),
}

/// Where subscribers connect and what protocol the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServerKind {
    /// pgpush.
    Pgpush,
    /// Nchan (`/sub/<channel>` WebSocket, `/pub/<channel>` POST).
    Nchan,
    /// `pgpush-loadgen thin-server` (pgpush's URLs, no database).
    Thin,
}

/// How messages are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PublishVia {
    /// `POST /v1/publish/<channel>` (durable).
    HttpDurable,
    /// `POST /v1/publish/<channel>?mode=ephemeral`.
    HttpEphemeral,
    /// `SELECT pg_notify(...)`.
    SqlNotify,
    /// `SELECT pgpush.publish(...)`.
    SqlDurable,
}

/// A run's settings; unset ones come from the scenario.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// Scenario name (see `pgpush-loadgen scenarios`).
    scenario: String,
    /// Base URL of the target.
    #[arg(long, env = "TARGET_URL")]
    url: Option<String>,
    /// Subscribers to open.
    #[arg(long, env = "CONNECTIONS")]
    connections: Option<usize>,
    /// Channels (subscriber i takes channel i mod C).
    #[arg(long, env = "CHANNELS")]
    channels: Option<usize>,
    /// Messages per second in total, round robin over the channels; 0 = as fast as delivery
    /// keeps up (at most `--window` messages in flight per subscriber).
    #[arg(long, env = "RATE")]
    rate: Option<f64>,
    /// How long to publish.
    #[arg(long, env = "DURATION", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// How messages are published.
    #[arg(long, env = "PUBLISH_VIA", value_enum)]
    publish_via: Option<PublishVia>,
    /// Publishing connections (each channel belongs to one, so its messages stay in order).
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Publish over SQL in transactions that also insert a row (into `pgpush_loadgen_writes`),
    /// as an application publishing about its own write would: commits then flush WAL, which is
    /// what NOTIFY's global lock serialises. Each transaction is pipelined: one round trip.
    #[arg(long)]
    write_row: bool,
    /// The server's protocol.
    #[arg(long, value_enum, default_value = "pgpush")]
    server: ServerKind,
    /// PostgreSQL URL for SQL publishing.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Server process ids, to report RSS per connection.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Spread subscribers over this many processes (one process holds at most 20,000 files).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Spread sockets over source addresses 127.0.0.1 .. 127.0.0.N.
    #[arg(long, default_value_t = 1)]
    source_addresses: u8,
    /// Connections opened at once while ramping up (per process).
    #[arg(long, default_value_t = 200)]
    ramp_concurrency: usize,
    /// Do not publish: hold the connections idle for `--hold`, then measure memory.
    #[arg(long)]
    idle: bool,
    /// Subscribe with presence (`presence=1`, WebSocket and SSE): every subscriber is present in
    /// its channel and receives the channel's joins and leaves.
    #[arg(long)]
    presence: bool,
    /// Moves on a map: every message carries a GeoJSON Point `loc` in a city, every subscriber
    /// subscribes with a `within` filter of its own viewport (1 % of the city), and is expected to
    /// get exactly the moves inside it.
    #[arg(long)]
    viewports: bool,
    /// How long `--idle` holds.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Messages in flight per subscriber when `--rate 0`.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Write the JSON summary here as well as to stdout.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Threshold override: lost deliveries allowed.
    #[arg(long)]
    max_lost: Option<u64>,
    /// Threshold override: duplicated deliveries allowed.
    #[arg(long)]
    max_duplicates: Option<u64>,
    /// Threshold override: out-of-order deliveries allowed.
    #[arg(long)]
    max_reordered: Option<u64>,
    /// Threshold override: share of subscribers that may fail to connect.
    #[arg(long)]
    max_connect_failure_ratio: Option<f64>,
    /// Threshold override: p99 delivery latency in milliseconds (0 = no limit).
    #[arg(long)]
    max_p99_ms: Option<f64>,
    /// (worker) this worker's share of the subscribers.
    #[arg(long, hide = true, default_value_t = 0)]
    worker_index: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Scenarios => {
                println!("{}", manifest::MANIFEST);
                Ok(true)
            }
            Command::ThinServer { listen } => thin::serve(listen).await.map(|()| true),
            Command::Run(args) => worker::run(args).await,
            Command::Worker(args) => worker::serve_as_worker(args).await.map(|()| true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("pgpush-loadgen: {error:#}");
            ExitCode::from(2)
        }
    }
}
