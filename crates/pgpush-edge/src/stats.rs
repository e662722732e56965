//! Node counters behind `/v1/stats`, and guards that keep the connection gauges exact.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use pgpush_protocol::{ConnectionCounts, StatsSnapshot};

/// A client transport, for the per-transport connection gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/v1/ws`
    WebSocket,
    /// `/v1/sse`
    Sse,
    /// Hippie MXHR streams.
    Mxhr,
    /// Long polls being held.
    Poll,
}

/// The node's counters. Gauges are only changed through [`ConnectionGuard`] and the hub, so
/// they return to zero when every client has left.
#[derive(Debug, Default)]
pub struct Stats {
    /// Open WebSocket connections.
    pub websocket: AtomicU64,
    /// Open SSE streams.
    pub sse: AtomicU64,
    /// Open MXHR streams.
    pub mxhr: AtomicU64,
    /// Long polls being held.
    pub poll: AtomicU64,
    /// Current (connection, channel) subscriptions.
    pub subscriptions: AtomicU64,
    /// Messages received from PostgreSQL: notifications, and durable events read.
    pub messages_in: AtomicU64,
    /// Messages written to clients.
    pub messages_out: AtomicU64,
    /// Clients cut off as slow.
    pub slow_consumers: AtomicU64,
    /// Publishes accepted.
    pub publishes: AtomicU64,
    /// Connections the listener has made (1 = never reconnected).
    pub listener_generation: AtomicU64,
    /// Queries the durable reader and replays sent to PostgreSQL.
    pub durable_queries: AtomicU64,
}

impl Stats {
    /// Counts a connection of `transport` until the guard drops.
    pub fn connection(self: &Arc<Self>, transport: Transport) -> ConnectionGuard {
        self.gauge(transport).fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            stats: self.clone(),
            transport,
        }
    }

    fn gauge(&self, transport: Transport) -> &AtomicU64 {
        match transport {
            Transport::WebSocket => &self.websocket,
            Transport::Sse => &self.sse,
            Transport::Mxhr => &self.mxhr,
            Transport::Poll => &self.poll,
        }
    }

    /// Adds `n` delivered messages.
    pub fn delivered(&self, n: usize) {
        self.messages_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The `/v1/stats` document.
    pub fn snapshot(
        &self,
        node: &str,
        listener_up: bool,
        channels_listened: usize,
        hippie_queues: usize,
    ) -> StatsSnapshot {
        let websocket = self.websocket.load(Ordering::Relaxed);
        let sse = self.sse.load(Ordering::Relaxed);
        let mxhr = self.mxhr.load(Ordering::Relaxed);
        let poll = self.poll.load(Ordering::Relaxed);
        StatsSnapshot {
            node: node.to_owned(),
            listener: if listener_up { "up" } else { "down" }.to_owned(),
            listener_connections: self.listener_generation.load(Ordering::Relaxed),
            connections: ConnectionCounts {
                total: websocket + sse + mxhr + poll,
                websocket,
                sse,
                mxhr,
                poll,
            },
            subscriptions: self.subscriptions.load(Ordering::Relaxed),
            channels_listened: channels_listened as u64,
            messages_in: self.messages_in.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            slow_consumers: self.slow_consumers.load(Ordering::Relaxed),
            publishes: self.publishes.load(Ordering::Relaxed),
            hippie_queues: hippie_queues as u64,
            durable_head: None,
            sequencer: false,
            durable_queries: self.durable_queries.load(Ordering::Relaxed),
        }
    }
}

/// Decrements its transport's gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    stats: Arc<Stats>,
    transport: Transport,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.stats
            .gauge(self.transport)
            .fetch_sub(1, Ordering::Relaxed);
    }
}
