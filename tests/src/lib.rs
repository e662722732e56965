//! pgpush's testkit: real PostgreSQL clusters, real edge processes, and raw protocol clients.
//!
//! Nothing here is mocked. A test that cannot find PostgreSQL (or, later, nginx) fails with the
//! command that installs it; it never skips.

pub mod browser;
pub mod durable;
pub mod edge;
pub mod http;
pub mod metrics;
pub mod nginx;
pub mod otlp;
pub mod postgres;
pub mod raw;
pub mod sse;
pub mod tokens;
pub mod up;
pub mod ws;

use std::{future::Future, time::Duration};

pub use browser::{Browser, Page};
pub use edge::{Edge, EdgeOptions};
pub use metrics::Metrics;
pub use nginx::Nginx;
pub use otlp::OtlpReceiver;
pub use postgres::TestPostgres;
pub use raw::MxhrClient;
pub use sse::{SseClient, SseEvent};
pub use ws::WsClient;

/// Polls `condition` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
