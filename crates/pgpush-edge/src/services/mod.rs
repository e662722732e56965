//! What handlers and transports are given: the node's built components, what every client
//! connection lives by (its drain slot, the shared heartbeats, the task tracker), and
//! server-side control of the connections (`control`).

pub(crate) mod control;
pub(crate) mod drain;

use std::sync::Arc;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admission::{Admission, limits::Limits},
    core::{durable::Durable, hub::Hub, presence::Presence, publishing::Publishing},
    ops::stats::Stats,
    settings::ConnectionSettings,
};
use control::Control;
use drain::{Drain, Heartbeat};

/// The node's components, shared by every connection.
#[derive(Debug)]
pub(crate) struct Services {
    /// Channel -> subscribers.
    pub(crate) hub: Arc<Hub>,
    /// Durable channels: cursors, replays, the reader.
    pub(crate) durable: Arc<Durable>,
    /// Publishing, durable or ephemeral.
    pub(crate) publishing: Publishing,
    /// Who is present where, in the cluster.
    pub(crate) presence: Arc<Presence>,
    /// Disconnect, unsubscribe and revoke on an operator's order.
    pub(crate) control: Arc<Control>,
    /// Origins, tokens and allow-lists.
    pub(crate) admission: Arc<Admission>,
    /// Connection, subscription and publish limits.
    pub(crate) limits: Arc<Limits>,
    /// Counters.
    pub(crate) stats: Arc<Stats>,
    /// What client connections live by.
    pub(crate) lifetimes: Lifetimes,
}

/// How client connections are served and ended.
#[derive(Debug)]
pub(crate) struct Lifetimes {
    /// The settings they are served with.
    pub(crate) settings: ConnectionSettings,
    /// Cancelled when the node starts shutting down (it stops accepting and drains).
    pub(crate) shutdown: CancellationToken,
    /// When each connection closes during the drain.
    pub(crate) drain: Arc<Drain>,
    /// Ticks every ping interval: WebSocket connections ping their clients on it.
    pub(crate) ping: Heartbeat,
    /// Ticks every SSE keepalive interval.
    pub(crate) sse_keepalive: Heartbeat,
    /// Every connection task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
}
