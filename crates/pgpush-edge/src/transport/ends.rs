//! Why a client connection ends before the client leaves: one value per connection that every
//! transport waits on, and each renders the ending in its own wire format.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use tokio_util::sync::CancellationToken;

use crate::{
    http::ConnInfo,
    services::{
        Services,
        control::{Order, ServerEnd},
    },
};

/// What ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The node drains, and this connection's moment of the drain window came.
    Draining,
    /// The client's queue overflowed: it is cut off as slow.
    SlowConsumer,
    /// A newer connection took over the client's queue (Hippie).
    Superseded,
    /// The client's token expired.
    TokenExpired,
    /// The operator disconnected the client's user (`pgpush.disconnect`).
    Disconnected,
    /// The operator revoked the client's token (`pgpush.revoke_token`).
    Revoked,
}

/// The signals that end one connection.
#[derive(Debug, Clone)]
pub(crate) struct Ends {
    /// This connection's slot of the node's drain.
    drain: CancellationToken,
    /// Slow-consumer cut.
    kill: CancellationToken,
    /// A newer connection took over (Hippie), where that can happen.
    superseded: Option<CancellationToken>,
    /// When the client's token expires; a fresh token sent in-band moves it.
    expiry: Arc<Mutex<Option<tokio::time::Instant>>>,
    /// An operator's order to end it, for a connection in server-side control.
    order: Option<Arc<Order>>,
}

impl Ends {
    /// The ends of a connection of `services`' node: a random drain slot, the connection's cut,
    /// and the expiry of a token that runs out at `expires`.
    pub(crate) fn new(services: &Services, conn: &ConnInfo, expires: Option<SystemTime>) -> Ends {
        Ends {
            drain: services.lifetimes.drain.slot().clone(),
            kill: conn.kill.clone(),
            superseded: None,
            expiry: Arc::new(Mutex::new(expires.map(deadline))),
            order: None,
        }
    }

    /// Also ends on the operator's `order`.
    pub(crate) fn or_ordered(mut self, order: &Arc<Order>) -> Ends {
        self.order = Some(order.clone());
        self
    }

    /// Also ends when `superseded` is cancelled.
    pub(crate) fn or_superseded(mut self, superseded: &CancellationToken) -> Ends {
        self.superseded = Some(superseded.clone());
        self
    }

    /// Moves the token expiry to `at` (a fresh token).
    pub(crate) fn set_expiry(&self, at: Option<SystemTime>) {
        *self.expiry.lock().unwrap_or_else(|e| e.into_inner()) = at.map(deadline);
    }

    /// Completes when the first of them fires (drain first, then the cut, the takeover, the
    /// operator's order and the expiry, when several have), with what fired.
    pub(crate) async fn wait(&self) -> Ending {
        let superseded = async {
            match &self.superseded {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let expires = *self.expiry.lock().unwrap_or_else(|e| e.into_inner());
        let expired = async {
            match expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let ordered = async {
            match &self.order {
                Some(order) => order.wait().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.drain.cancelled() => Ending::Draining,
            _ = self.kill.cancelled() => Ending::SlowConsumer,
            _ = superseded => Ending::Superseded,
            why = ordered => match why {
                ServerEnd::Disconnected => Ending::Disconnected,
                ServerEnd::Revoked => Ending::Revoked,
            },
            _ = expired => Ending::TokenExpired,
        }
    }

    /// [`Ends::wait`] as an owned future, for poll-based response bodies.
    pub(crate) fn into_future(self) -> Pin<Box<dyn Future<Output = Ending> + Send>> {
        Box::pin(async move { self.wait().await })
    }
}

/// The monotonic moment of a wall-clock deadline (a token's `exp`).
fn deadline(at: SystemTime) -> tokio::time::Instant {
    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::Instant::now() + left
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(expires: Option<SystemTime>) -> Ends {
        Ends {
            drain: CancellationToken::new(),
            kill: CancellationToken::new(),
            superseded: None,
            expiry: Arc::new(Mutex::new(expires.map(deadline))),
            order: None,
        }
    }

    #[tokio::test]
    async fn the_drain_wins_over_everything_that_fired_with_it() {
        let takeover = CancellationToken::new();
        let ends = ends(Some(SystemTime::now())).or_superseded(&takeover);
        takeover.cancel();
        ends.kill.cancel();
        assert_eq!(ends.wait().await, Ending::SlowConsumer);
        ends.drain.cancel();
        assert_eq!(ends.wait().await, Ending::Draining);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_token_moves_the_expiry() {
        let ends = ends(Some(SystemTime::now() + std::time::Duration::from_secs(5)));
        ends.set_expiry(None);
        let waited = tokio::time::timeout(std::time::Duration::from_secs(60), ends.wait()).await;
        assert!(waited.is_err(), "no expiry after a token without one");
        ends.set_expiry(Some(SystemTime::now() + std::time::Duration::from_secs(1)));
        assert_eq!(ends.clone().into_future().await, Ending::TokenExpired);
    }
}
