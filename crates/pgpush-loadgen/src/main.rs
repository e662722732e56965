//! pgpush-loadgen: opens many subscribers, publishes at a rate, and reports delivery, loss and latency.

mod publisher;
mod report;
mod subscriber;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::ExitCode,
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use futures_util::{StreamExt, stream};

use crate::{
    publisher::Publisher,
    report::{Summary, rss_bytes},
    subscriber::{Subscriber, SubscriberResult},
};

/// Load scenarios against a pgpush node (or nginx in front of several).
#[derive(Debug, Clone, Parser)]
#[command(name = "pgpush-loadgen", version)]
pub(crate) struct Args {
    /// Base URL of the node, e.g. http://127.0.0.1:8080.
    #[arg(
        long,
        env = "PGPUSH_LOADGEN_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Subscriber connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Channels the subscribers are spread over (subscriber i takes channel i mod C).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Messages per second published in total, round robin over the channels; 0 = idle.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long to publish (after every subscriber connected).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long idle connections are held before measuring memory (rate 0).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Where messages are published.
    #[arg(long, value_enum, default_value_t = PublishVia::SqlNotify)]
    publish_via: PublishVia,
    /// PostgreSQL URL for SQL publishing.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Process id of the server, to report its RSS per connection.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Spread client sockets over this many source addresses 127.0.0.1, .2, ... (loopback has
    /// ~28k ephemeral ports per source address and destination).
    #[arg(long, default_value_t = 1)]
    source_addresses: u8,
    /// Connections opened at once while ramping up.
    #[arg(long, default_value_t = 200)]
    ramp_concurrency: usize,
    /// Write the JSON summary here as well as to stdout.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Fail (exit 1) when more than this fraction of expected deliveries is lost.
    #[arg(long, default_value_t = 0.0)]
    max_loss: f64,
    /// Fail (exit 1) on any duplicated or reordered delivery.
    #[arg(long, default_value_t = true)]
    forbid_duplicates: bool,
}

/// How the load generator publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PublishVia {
    /// `SELECT pg_notify(...)` over a few direct connections.
    SqlNotify,
    /// `SELECT pgpush.publish(...)` (durable) over a few direct connections.
    SqlDurable,
    /// `POST /v1/publish/<channel>?mode=ephemeral`.
    HttpEphemeral,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("pgpush-loadgen: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let target: SocketAddr = args
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .context("--url must be http://<ip>:<port>")?;
    let channels: Vec<String> = (0..args.channels.max(1))
        .map(|i| format!("lg-{i}"))
        .collect();
    let rss_before = args.server_pid.and_then(rss_bytes);

    // Ramp up.
    let delivered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let connected: Vec<anyhow::Result<Subscriber>> = stream::iter(0..args.connections)
        .map(|i| {
            let source = IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i % args.source_addresses.max(1) as usize) as u8,
            ));
            let channel = channels[i % channels.len()].clone();
            let delivered = delivered.clone();
            async move { Subscriber::connect(target, source, channel, delivered).await }
        })
        .buffer_unordered(args.ramp_concurrency.max(1))
        .collect()
        .await;
    let ramp = started.elapsed();
    let mut subscribers = Vec::new();
    let mut connect_failures = 0usize;
    let mut first_error = None;
    for result in connected {
        match result {
            Ok(subscriber) => subscribers.push(subscriber),
            Err(error) => {
                connect_failures += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = &first_error {
        eprintln!("first connect failure: {error:#}");
    }
    eprintln!(
        "connected {} of {} subscribers in {ramp:.1?}",
        subscribers.len(),
        args.connections
    );

    let mut summary = Summary::new(&args, subscribers.len(), connect_failures, ramp);
    summary.connect_latency = report::Percentiles::of(&Subscriber::connect_histogram(&subscribers));
    if args.rate <= 0.0 {
        tokio::time::sleep(args.hold).await;
        if let (Some(before), Some(after)) = (rss_before, args.server_pid.and_then(rss_bytes)) {
            summary.set_rss(before, after, subscribers.len());
        }
    } else {
        let running: Vec<_> = subscribers.into_iter().map(Subscriber::spawn).collect();
        let publisher = Publisher::new(&args, target, channels.clone()).await?;
        let progress = report::spawn_progress(delivered.clone());
        let published = publisher.run(args.rate, args.duration).await?;
        // Let in-flight messages land.
        tokio::time::sleep(Duration::from_secs(2)).await;
        progress.abort();
        if let (Some(before), Some(after)) = (rss_before, args.server_pid.and_then(rss_bytes)) {
            summary.set_rss(before, after, running.len());
        }
        let mut results: Vec<SubscriberResult> = Vec::with_capacity(running.len());
        for handle in running {
            results.push(handle.finish().await);
        }
        summary.account(&published, &results, args.duration);
    }
    let text = serde_json::to_string_pretty(&summary)?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    let ok = summary.passes(args.max_loss, args.forbid_duplicates);
    if !ok {
        eprintln!(
            "thresholds failed: loss {:.6}, duplicates {}, reordered {}",
            summary.loss_ratio, summary.duplicates, summary.reordered
        );
    }
    Ok(ok)
}
