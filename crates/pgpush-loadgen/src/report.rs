//! The JSON summary: delivery counts, loss, duplicates, reordering, latency percentiles, memory.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{Args, subscriber::SubscriberResult};

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Percentiles {
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    samples: u64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Percentiles {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            samples: h.len(),
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    url: String,
    connections_requested: usize,
    connections: usize,
    connect_failures: usize,
    ramp_seconds: f64,
    pub(crate) connect_latency: Percentiles,
    channels: usize,
    rate: f64,
    published: u64,
    expected_deliveries: u64,
    delivered: u64,
    pub(crate) duplicates: u64,
    pub(crate) reordered: u64,
    lost: u64,
    pub(crate) loss_ratio: f64,
    deliveries_per_second: f64,
    disconnected: usize,
    latency: Percentiles,
    server_rss_before_bytes: Option<u64>,
    server_rss_after_bytes: Option<u64>,
    server_rss_per_connection_bytes: Option<f64>,
}

impl Summary {
    pub(crate) fn new(
        args: &Args,
        connections: usize,
        connect_failures: usize,
        ramp: Duration,
    ) -> Summary {
        Summary {
            url: args.url.clone(),
            connections_requested: args.connections,
            connections,
            connect_failures,
            ramp_seconds: ramp.as_secs_f64(),
            connect_latency: Percentiles::default(),
            channels: args.channels,
            rate: args.rate,
            published: 0,
            expected_deliveries: 0,
            delivered: 0,
            duplicates: 0,
            reordered: 0,
            lost: 0,
            loss_ratio: 0.0,
            deliveries_per_second: 0.0,
            disconnected: 0,
            latency: Percentiles::default(),
            server_rss_before_bytes: None,
            server_rss_after_bytes: None,
            server_rss_per_connection_bytes: None,
        }
    }

    pub(crate) fn set_rss(&mut self, before: u64, after: u64, connections: usize) {
        self.server_rss_before_bytes = Some(before);
        self.server_rss_after_bytes = Some(after);
        if connections > 0 {
            self.server_rss_per_connection_bytes =
                Some((after.saturating_sub(before)) as f64 / connections as f64);
        }
    }

    /// Compares what each subscriber got with what was published to its channel.
    pub(crate) fn account(
        &mut self,
        published: &HashMap<String, u64>,
        results: &[SubscriberResult],
        duration: Duration,
    ) {
        let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 2).expect("bounds");
        self.published = published.values().sum();
        for result in results {
            let expected = published.get(&result.channel).copied().unwrap_or(0);
            let got = result.received.get(&result.channel).copied().unwrap_or(0);
            self.expected_deliveries += expected;
            self.delivered += got;
            self.lost += expected.saturating_sub(got);
            self.duplicates += result.duplicates;
            self.reordered += result.reordered;
            self.disconnected += usize::from(result.disconnected);
            let _ = latency.add(&result.latency);
        }
        self.loss_ratio = if self.expected_deliveries == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected_deliveries as f64
        };
        self.deliveries_per_second = self.delivered as f64 / duration.as_secs_f64();
        self.latency = Percentiles::of(&latency);
    }

    pub(crate) fn passes(&self, max_loss: f64, forbid_duplicates: bool) -> bool {
        self.connect_failures == 0
            && self.loss_ratio <= max_loss
            && (!forbid_duplicates || (self.duplicates == 0 && self.reordered == 0))
    }
}

/// Resident memory of a process, from /proc.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Prints deliveries per second to stderr once a second.
pub(crate) fn spawn_progress(delivered: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
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
