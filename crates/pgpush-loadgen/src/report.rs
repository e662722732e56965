//! The JSON summary of a run and the check of its thresholds.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{manifest::Thresholds, tally::Totals};

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Percentiles {
    p50_ms: f64,
    p90_ms: f64,
    pub(crate) p99_ms: f64,
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

/// Everything a run measured, and whether it held its thresholds.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    pub(crate) scenario: String,
    pub(crate) url: String,
    pub(crate) server: String,
    pub(crate) processes: usize,
    pub(crate) connections_requested: usize,
    pub(crate) connected: u64,
    pub(crate) connect_failures: u64,
    pub(crate) connect_failure_ratio: f64,
    pub(crate) first_connect_error: Option<String>,
    pub(crate) ramp_seconds: f64,
    pub(crate) connect_latency: Percentiles,
    pub(crate) channels: usize,
    pub(crate) rate: f64,
    pub(crate) duration_seconds: f64,
    pub(crate) published: u64,
    pub(crate) publish_rate: f64,
    pub(crate) expected_deliveries: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) duplicates: u64,
    pub(crate) reordered: u64,
    pub(crate) loss_ratio: f64,
    pub(crate) deliveries_per_second: f64,
    pub(crate) disconnected: u64,
    pub(crate) latency: Percentiles,
    pub(crate) server_rss_before_bytes: Option<u64>,
    pub(crate) server_rss_after_bytes: Option<u64>,
    pub(crate) server_rss_per_connection_bytes: Option<f64>,
    pub(crate) thresholds: Thresholds,
    pub(crate) failed_thresholds: Vec<String>,
    pub(crate) passed: bool,
}

impl Summary {
    /// Fills in the delivery figures from `totals`.
    pub(crate) fn account(&mut self, totals: &Totals) {
        self.expected_deliveries = totals.expected;
        self.delivered = totals.delivered;
        self.lost = totals.lost;
        self.duplicates = totals.duplicates;
        self.reordered = totals.reordered;
        self.disconnected = totals.disconnected;
        self.loss_ratio = if totals.expected == 0 {
            0.0
        } else {
            totals.lost as f64 / totals.expected as f64
        };
        self.deliveries_per_second = totals.delivered as f64 / self.duration_seconds.max(1e-9);
        self.latency = Percentiles::of(&totals.latency());
    }

    /// Checks the thresholds; records which failed.
    pub(crate) fn check(&mut self) {
        let t = &self.thresholds;
        let mut failed = Vec::new();
        if self.lost > t.lost {
            failed.push(format!("lost {} > {}", self.lost, t.lost));
        }
        if self.duplicates > t.duplicates {
            failed.push(format!("duplicates {} > {}", self.duplicates, t.duplicates));
        }
        if self.reordered > t.reordered {
            failed.push(format!("reordered {} > {}", self.reordered, t.reordered));
        }
        if self.connect_failure_ratio > t.connect_failure_ratio {
            failed.push(format!(
                "connect failure ratio {:.4} > {}",
                self.connect_failure_ratio, t.connect_failure_ratio
            ));
        }
        if t.p99_ms > 0.0 && self.latency.p99_ms > t.p99_ms {
            failed.push(format!("p99 {} ms > {} ms", self.latency.p99_ms, t.p99_ms));
        }
        self.passed = failed.is_empty();
        self.failed_thresholds = failed;
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

/// Total RSS of several processes.
pub(crate) fn total_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| rss_bytes(*pid)).sum()
}
