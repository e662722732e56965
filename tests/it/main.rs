//! pgpush's integration tests: one binary, a module per area, real PostgreSQL and processes.

mod bad_input;
mod browser;
mod cluster;
mod commands;
mod control;
mod delivery;
mod demo;
mod deploy;
mod durable;
mod durable_faults;
mod durable_resume;
mod failover;
mod fan_out;
mod filters;
mod hippie_flows;
mod hippie_queue;
mod hippie_wire;
mod history;
mod listen_set;
mod loadtest;
mod observability;
mod operator;
mod presence;
mod reconnect;
mod security;
mod shutdown;
mod slow_consumer;
mod up;

use std::time::Duration;

/// Generous bound for anything that should take milliseconds (CI machines are slow).
pub const SOON: Duration = Duration::from_secs(10);
