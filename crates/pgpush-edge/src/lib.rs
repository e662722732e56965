//! The pgpush edge node: the hub, the client transports, the HTTP server and the commands.
//!
//! `main.rs` only parses configuration and calls into this library, so tests and the binary
//! run the same code.

mod assets;
mod auth;
pub mod cli;
pub mod config;
mod drain;
mod durable;
#[doc(hidden)]
pub mod fuzzing;
mod hippie;
mod http;
pub mod hub;
mod limits;
mod metrics;
pub mod nginx;
mod node;
mod policy;
mod proxy_protocol;
mod publish;
mod resume;
mod server;
pub mod stats;
pub mod telemetry;
mod transport;
pub mod up;

pub use node::{Bound, Node, StartError, migrate, run};
