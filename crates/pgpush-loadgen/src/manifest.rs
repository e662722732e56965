//! The scenarios, read from `loadtest/scenarios.json`: the k6 scripts read the same file, so
//! both tools share names, parameters and thresholds.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::{PublishVia, RunArgs};

/// The manifest, embedded.
pub(crate) const MANIFEST: &str = include_str!("../../../loadtest/scenarios.json");

#[derive(Debug, Deserialize)]
struct Scenario {
    transport: String,
    parameters: Parameters,
    thresholds: Thresholds,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
struct Parameters {
    target_url: String,
    connections: usize,
    channels: usize,
    rate: f64,
    duration: String,
    publish_via: String,
}

/// Limits a run must stay within.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub(crate) struct Thresholds {
    pub(crate) lost: u64,
    pub(crate) duplicates: u64,
    pub(crate) reordered: u64,
    pub(crate) connect_failure_ratio: f64,
    pub(crate) p99_ms: f64,
}

/// Which transports subscribers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    WebSocket,
    Sse,
    LongPoll,
    Hippie,
    None,
    /// WebSocket, SSE, long poll and Hippie in turn.
    Mixed,
}

/// A scenario with the run's overrides applied.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) name: String,
    pub(crate) transport: Transport,
    pub(crate) url: String,
    pub(crate) connections: usize,
    pub(crate) channels: usize,
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
    pub(crate) publish_via: PublishVia,
    /// Publishing connections.
    pub(crate) writers: usize,
    /// SQL publishes in transactions that also insert a row.
    pub(crate) write_row: bool,
    /// Moves with a point, subscribers with a viewport (`--viewports`).
    pub(crate) viewports: bool,
    pub(crate) thresholds: Thresholds,
}

impl Plan {
    pub(crate) fn new(args: &RunArgs) -> anyhow::Result<Plan> {
        let scenarios: BTreeMap<String, Scenario> =
            serde_json::from_str(MANIFEST).context("loadtest/scenarios.json")?;
        let Some(scenario) = scenarios.get(&args.scenario) else {
            bail!(
                "no scenario {:?}; there are: {}",
                args.scenario,
                scenarios.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        let transport = match scenario.transport.as_str() {
            "ws" => Transport::WebSocket,
            "sse" => Transport::Sse,
            "longpoll" => Transport::LongPoll,
            "hippie" => Transport::Hippie,
            "none" => Transport::None,
            "mixed" => Transport::Mixed,
            other => bail!("unknown transport {other:?} in the manifest"),
        };
        let p = &scenario.parameters;
        let default_via = match p.publish_via.as_str() {
            "http-durable" => PublishVia::HttpDurable,
            "http-ephemeral" => PublishVia::HttpEphemeral,
            "sql-notify" => PublishVia::SqlNotify,
            "sql-durable" => PublishVia::SqlDurable,
            other => bail!("unknown PUBLISH_VIA {other:?} in the manifest"),
        };
        let mut thresholds = scenario.thresholds.clone();
        if let Some(v) = args.max_lost {
            thresholds.lost = v;
        }
        if let Some(v) = args.max_duplicates {
            thresholds.duplicates = v;
        }
        if let Some(v) = args.max_reordered {
            thresholds.reordered = v;
        }
        if let Some(v) = args.max_connect_failure_ratio {
            thresholds.connect_failure_ratio = v;
        }
        if let Some(v) = args.max_p99_ms {
            thresholds.p99_ms = v;
        }
        Ok(Plan {
            name: args.scenario.clone(),
            transport,
            url: args.url.clone().unwrap_or_else(|| p.target_url.clone()),
            connections: args.connections.unwrap_or(p.connections),
            channels: args.channels.unwrap_or(p.channels).max(1),
            rate: args.rate.unwrap_or(p.rate),
            duration: match args.duration {
                Some(d) => d,
                None => {
                    humantime::parse_duration(&p.duration).context("DURATION in the manifest")?
                }
            },
            publish_via: args.publish_via.unwrap_or(default_via),
            writers: args.writers.max(1),
            write_row: args.write_row,
            viewports: args.viewports,
            thresholds,
        })
    }

    /// The channel of subscriber `index` (global index across processes).
    pub(crate) fn channel(&self, index: usize) -> String {
        format!("lg-{}", index % self.channels)
    }

    /// The transport of subscriber `index`.
    pub(crate) fn transport_of(&self, index: usize) -> Transport {
        match self.transport {
            Transport::Mixed => match index % 10 {
                0..=4 => Transport::WebSocket,
                5 | 6 => Transport::Sse,
                7 => Transport::LongPoll,
                _ => Transport::Hippie,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_parses() {
        let scenarios: BTreeMap<String, Scenario> = serde_json::from_str(MANIFEST).unwrap();
        for name in ["ws", "sse", "longpoll", "hippie", "publish", "cluster"] {
            let scenario = scenarios
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert!(humantime::parse_duration(&scenario.parameters.duration).is_ok());
        }
    }
}
