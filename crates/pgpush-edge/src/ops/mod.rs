//! Operations: the node's counters (`stats`), their Prometheus exposition (`metrics`), and
//! logs and traces (`telemetry`). Imports nothing else of the crate: every part reports here.

pub(crate) mod metrics;
pub mod stats;
pub mod telemetry;
