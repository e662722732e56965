//! Running a scenario: subscribers (in this process or spread over worker processes), the
//! publisher, the drain, and the summary. Workers talk to the parent in JSON lines.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::{oneshot, watch},
};

use crate::{
    RunArgs,
    manifest::{Plan, Transport},
    publisher::{self, Gate},
    report::{Percentiles, Summary, total_rss},
    subscriber::{self, Outcome, Spec},
    tally::{Totals, decode_histogram, encode_histogram, histogram},
    viewport,
};

/// What a group of subscribers reports once connected.
#[derive(Debug, Serialize, Deserialize)]
struct Ready {
    connected: u64,
    failures: u64,
    first_error: Option<String>,
    /// Connect times, V2-serialized histogram in base64.
    connect: String,
}

/// Lines between a worker and the parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Line {
    Ready(Ready),
    Published { published: BTreeMap<String, u64> },
    Result { totals: Totals },
}

/// The subscribers of one process.
struct Group {
    tasks: Vec<tokio::task::JoinHandle<Outcome>>,
    /// Each subscriber's (index, channel).
    members: Vec<(usize, String)>,
    /// Subscribers get the moves in their viewport only.
    viewports: bool,
    stop: watch::Sender<bool>,
    delivered: Arc<AtomicU64>,
    ready: Ready,
}

fn target(url: &str) -> anyhow::Result<SocketAddr> {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .context("the target URL must be http://<ip>:<port>")
}

async fn start_group(plan: &Plan, args: &RunArgs, indices: Vec<usize>) -> anyhow::Result<Group> {
    let target = target(&plan.url)?;
    let (stop, stop_rx) = watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut readies = Vec::new();
    let mut members = Vec::new();
    for index in indices {
        members.push((index, plan.channel(index)));
        let spec = Spec {
            transport: plan.transport_of(index),
            server: args.server,
            target,
            source: IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (index % args.source_addresses.max(1) as usize) as u8,
            )),
            channel: plan.channel(index),
            presence: args.presence,
            index,
            viewport: plan.viewports,
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        readies.push((spec, ready_tx, ready_rx));
    }
    // Ramp: at most `ramp_concurrency` connects at once.
    let mut connect = histogram();
    let mut failures = 0;
    let mut connected = 0;
    let mut first_error = None;
    let results: Vec<_> = stream::iter(readies)
        .map(|(spec, ready_tx, ready_rx)| {
            let task = tokio::spawn(subscriber::run(
                spec,
                ready_tx,
                stop_rx.clone(),
                delivered.clone(),
            ));
            async move {
                (
                    task,
                    ready_rx
                        .await
                        .unwrap_or_else(|_| Err("subscriber ended".into())),
                )
            }
        })
        .buffer_unordered(args.ramp_concurrency.max(1))
        .collect()
        .await;
    for (task, ready) in results {
        match ready {
            Ok(time) => {
                connected += 1;
                let _ = connect.record(time.as_micros().max(1) as u64);
            }
            Err(error) => {
                failures += 1;
                first_error.get_or_insert(error);
            }
        }
        tasks.push(task);
    }
    Ok(Group {
        tasks,
        members,
        viewports: plan.viewports,
        stop,
        delivered,
        ready: Ready {
            connected,
            failures,
            first_error,
            connect: encode_histogram(&connect),
        },
    })
}

impl Group {
    /// Waits for deliveries to settle, stops the subscribers and counts against `published`.
    async fn finish(self, published: &BTreeMap<String, u64>) -> Totals {
        // What each subscriber must get: everything of its channel, or the moves in its viewport.
        let moves = self
            .viewports
            .then(|| viewport::Moves::new(published.values().copied().max().unwrap_or(0)));
        let owed = |index: usize, channel: &str| {
            let sent = published.get(channel).copied().unwrap_or(0);
            match &moves {
                Some(moves) => moves.inside(index, sent),
                None => sent,
            }
        };
        let owed_to: BTreeMap<usize, u64> = self
            .members
            .iter()
            .map(|(index, channel)| (*index, owed(*index, channel)))
            .collect();
        let expected: u64 = owed_to.values().sum();
        let mut last = self.delivered.load(Ordering::Relaxed);
        let mut quiet = Instant::now();
        let started = Instant::now();
        while self.delivered.load(Ordering::Relaxed) < expected
            && started.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.delivered.load(Ordering::Relaxed);
            if now != last {
                last = now;
                quiet = Instant::now();
            } else if quiet.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        let _ = self.stop.send(true);
        let mut totals = Totals::empty();
        for task in self.tasks {
            if let Ok(outcome) = task.await {
                let expected = owed_to.get(&outcome.index).copied().unwrap_or(0);
                totals.add(&outcome.tally, expected, outcome.disconnected);
            }
        }
        totals
    }
}

fn my_indices(plan: &Plan, args: &RunArgs) -> Vec<usize> {
    if plan.transport == Transport::None {
        return Vec::new();
    }
    (args.worker_index..plan.connections)
        .step_by(args.processes.max(1))
        .collect()
}

/// A worker process: connect this worker's share, report ready, wait for the published
/// counts, report totals.
pub(crate) async fn serve_as_worker(args: RunArgs) -> anyhow::Result<()> {
    let plan = Plan::new(&args)?;
    let indices = my_indices(&plan, &args);
    let group = start_group(&plan, &args, indices).await?;
    let mut out = tokio::io::stdout();
    let ready = Line::Ready(group.ready_copy());
    out.write_all(format!("{}\n", serde_json::to_string(&ready)?).as_bytes())
        .await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let published = loop {
        let line = lines.next_line().await?.context("the parent went away")?;
        if let Ok(Line::Published { published }) = serde_json::from_str(&line) {
            break published;
        }
    };
    let totals = group.finish(&published).await;
    out.write_all(format!("{}\n", serde_json::to_string(&Line::Result { totals })?).as_bytes())
        .await?;
    out.flush().await?;
    Ok(())
}

impl Group {
    fn ready_copy(&self) -> Ready {
        Ready {
            connected: self.ready.connected,
            failures: self.ready.failures,
            first_error: self.ready.first_error.clone(),
            connect: self.ready.connect.clone(),
        }
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    async fn next(&mut self) -> anyhow::Result<Line> {
        loop {
            let line = self
                .lines
                .next_line()
                .await?
                .context("a worker exited early")?;
            if let Ok(parsed) = serde_json::from_str(&line) {
                return Ok(parsed);
            }
        }
    }
}

/// Runs a scenario and prints its summary; true when its thresholds held.
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let plan = Plan::new(&args)?;
    let target = target(&plan.url)?;
    if args.processes > 1 && plan.rate <= 0.0 && !args.idle {
        bail!("--rate 0 (as fast as delivery keeps up) needs --processes 1");
    }
    let rss_before = total_rss(&args.server_pids);
    let started = Instant::now();
    eprintln!(
        "{}: connecting {} subscribers to {}",
        plan.name, plan.connections, plan.url
    );

    // Subscribers: here, or in worker processes.
    let mut local = None;
    let mut workers = Vec::new();
    let mut readies = Vec::new();
    if args.processes <= 1 {
        let group = start_group(&plan, &args, my_indices(&plan, &args)).await?;
        readies.push(group.ready_copy());
        local = Some(group);
    } else {
        let exe = std::env::current_exe()?;
        for index in 0..args.processes {
            let mut command = Command::new(&exe);
            command
                .arg("worker")
                .args(std::env::args().skip(2))
                .args(["--worker-index", &index.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let mut child = command.spawn()?;
            let stdin = child.stdin.take().expect("piped");
            let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
            workers.push(Worker {
                child,
                stdin,
                lines,
            });
        }
        for worker in &mut workers {
            match worker.next().await? {
                Line::Ready(ready) => readies.push(ready),
                other => bail!("unexpected worker line {other:?}"),
            }
        }
    }
    let ramp = started.elapsed();
    let connected: u64 = readies.iter().map(|r| r.connected).sum();
    let failures: u64 = readies.iter().map(|r| r.failures).sum();
    let mut connect = histogram();
    for ready in &readies {
        let _ = connect.add(decode_histogram(&ready.connect));
    }
    eprintln!(
        "connected {connected} of {} in {ramp:.1?} ({failures} failed)",
        plan.connections
    );

    let mut summary = Summary {
        scenario: plan.name.clone(),
        url: plan.url.clone(),
        server: format!("{:?}", args.server).to_lowercase(),
        processes: args.processes.max(1),
        connections_requested: plan.connections,
        connected,
        connect_failures: failures,
        connect_failure_ratio: if plan.connections == 0 {
            0.0
        } else {
            failures as f64 / plan.connections as f64
        },
        first_connect_error: readies.iter().find_map(|r| r.first_error.clone()),
        ramp_seconds: ramp.as_secs_f64(),
        connect_latency: Percentiles::of(&connect),
        channels: plan.channels,
        rate: plan.rate,
        duration_seconds: if args.idle {
            0.0
        } else {
            plan.duration.as_secs_f64()
        },
        published: 0,
        publish_rate: 0.0,
        expected_deliveries: 0,
        delivered: 0,
        lost: 0,
        duplicates: 0,
        reordered: 0,
        loss_ratio: 0.0,
        deliveries_per_second: 0.0,
        disconnected: 0,
        latency: Percentiles::of(&Histogram::<u64>::new(2).expect("histogram")),
        server_rss_before_bytes: rss_before,
        server_rss_after_bytes: None,
        server_rss_per_connection_bytes: None,
        thresholds: plan.thresholds.clone(),
        failed_thresholds: Vec::new(),
        passed: false,
    };

    let published = if args.idle {
        tokio::time::sleep(args.hold).await;
        BTreeMap::new()
    } else {
        let gate = local
            .as_ref()
            .filter(|_| plan.rate <= 0.0)
            .map(|group| Gate {
                delivered: group.delivered.clone(),
                subscribers_per_channel: (connected / plan.channels as u64).max(1),
                window: args.window as u64,
            });
        let progress = local
            .as_ref()
            .map(|group| spawn_progress(group.delivered.clone()));
        let published = publisher::publish(
            &plan,
            args.server,
            target,
            args.database_url.as_deref(),
            gate,
        )
        .await?;
        if let Some(progress) = progress {
            progress.abort();
        }
        published
    };
    summary.published = published.values().sum();
    summary.publish_rate = summary.published as f64 / plan.duration.as_secs_f64();
    if let (Some(before), Some(after)) = (rss_before, total_rss(&args.server_pids)) {
        summary.server_rss_after_bytes = Some(after);
        if connected > 0 {
            summary.server_rss_per_connection_bytes =
                Some(after.saturating_sub(before) as f64 / connected as f64);
        }
    }

    // Let the last messages land, then count.
    let mut totals = Totals::empty();
    if let Some(group) = local {
        totals.merge(&group.finish(&published).await);
    }
    let line = serde_json::to_string(&Line::Published {
        published: published.clone(),
    })?;
    for worker in &mut workers {
        worker
            .stdin
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        worker.stdin.flush().await?;
    }
    for worker in &mut workers {
        match worker.next().await? {
            Line::Result { totals: theirs } => totals.merge(&theirs),
            other => bail!("unexpected worker line {other:?}"),
        }
        let _ = worker.child.wait().await;
    }
    summary.account(&totals);
    summary.check();
    let text = serde_json::to_string_pretty(&summary)?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if !summary.passed {
        eprintln!(
            "thresholds failed: {}",
            summary.failed_thresholds.join("; ")
        );
    }
    Ok(summary.passed)
}

/// Prints deliveries per second to stderr once a second.
fn spawn_progress(delivered: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = delivered.load(Ordering::Relaxed);
            eprintln!("delivered {now} ({} /s)", now - last);
            last = now;
        }
    })
}
