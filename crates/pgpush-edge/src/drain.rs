//! Draining: the node's shutdown signal, and each connection's slot in a close spread over the
//! drain window so the other nodes are not stampeded by every client at once.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The node's drain: cancelled once, then connections close at their slots.
#[derive(Debug)]
pub(crate) struct Drain {
    token: CancellationToken,
    started: OnceLock<Instant>,
    window: Duration,
}

impl Drain {
    pub(crate) fn new(token: CancellationToken, window: Duration) -> Drain {
        Drain {
            token,
            started: OnceLock::new(),
            window,
        }
    }

    /// A connection's random moment within the window, chosen once per connection.
    pub(crate) fn slot(&self) -> Duration {
        self.window.mul_f64(rand::random::<f64>())
    }

    /// Completes at `slot` after draining began (at once when the window is zero).
    pub(crate) async fn reached(&self, slot: Duration) {
        self.token.cancelled().await;
        let started = *self.started.get_or_init(Instant::now);
        tokio::time::sleep_until(started + slot).await;
    }

    /// [`Drain::reached`] as an owned future, for response bodies.
    pub(crate) fn reached_owned(
        self: &Arc<Self>,
        slot: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let drain = self.clone();
        async move { drain.reached(slot).await }
    }
}
