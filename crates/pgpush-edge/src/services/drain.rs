//! Draining: the node's shutdown signal, and each connection's slot in a close spread over the
//! drain window so the other nodes are not stampeded by every client at once.
//!
//! Connections are spread over a fixed number of slots, each a cancellation token that one task
//! cancels at its moment: a waiting connection holds a token, not a timer of its own.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

/// Moments in the window a connection can close at.
const SLOTS: usize = 32;

/// The node's drain: cancelled once, then each slot's connections close at the slot's moment.
#[derive(Debug)]
pub(crate) struct Drain {
    slots: Vec<CancellationToken>,
}

impl Drain {
    /// A drain that starts when `token` is cancelled and spreads over `window`. Spawns the task
    /// that releases the slots.
    pub(crate) fn new(token: CancellationToken, window: Duration) -> Arc<Drain> {
        let slots: Vec<CancellationToken> = (0..SLOTS).map(|_| CancellationToken::new()).collect();
        let releaser = slots.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            let start = tokio::time::Instant::now();
            for (index, slot) in releaser.iter().enumerate() {
                tokio::time::sleep_until(start + window.mul_f64(index as f64 / SLOTS as f64)).await;
                slot.cancel();
            }
        });
        Arc::new(Drain { slots })
    }

    /// A random slot for a new connection: cancelled at its moment of the drain.
    pub(crate) fn slot(&self) -> &CancellationToken {
        &self.slots[rand::random_range(0..SLOTS)]
    }
}

/// A node-wide tick every `period`: one timer for all connections instead of one each.
#[derive(Debug, Clone)]
pub(crate) struct Heartbeat {
    ticks: tokio::sync::watch::Receiver<u64>,
}

impl Heartbeat {
    /// Ticks every `period` until `stop` (never, for a zero period).
    pub(crate) fn start(period: Duration, stop: CancellationToken) -> Heartbeat {
        let (sender, ticks) = tokio::sync::watch::channel(0u64);
        if !period.is_zero() {
            tokio::spawn(async move {
                let mut interval =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = interval.tick() => {
                            sender.send_modify(|n| *n += 1);
                        }
                    }
                }
            });
        } else {
            // Keep the sender alive so `tick` waits forever instead of ending.
            std::mem::forget(sender);
        }
        Heartbeat { ticks }
    }

    /// A receiver of the ticks for one connection.
    pub(crate) fn subscribe(&self) -> Ticks {
        let mut ticks = self.ticks.clone();
        ticks.mark_unchanged();
        Ticks { ticks }
    }
}

impl Ticks {
    /// The next tick as an owned future that hands the receiver back, for poll-based bodies.
    pub(crate) fn into_tick(self) -> std::pin::Pin<Box<dyn Future<Output = Ticks> + Send>> {
        Box::pin(async move {
            let mut ticks = self;
            ticks.tick().await;
            ticks
        })
    }
}

/// One connection's view of a [`Heartbeat`].
#[derive(Debug)]
pub(crate) struct Ticks {
    ticks: tokio::sync::watch::Receiver<u64>,
}

impl Ticks {
    /// Waits for the next tick.
    pub(crate) async fn tick(&mut self) {
        if self.ticks.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
