//! Server-side control on this node: the connections of each user and token, and what
//! `pgpush.disconnect`, `pgpush.unsubscribe` and `pgpush.revoke_token` do to them when their
//! notification arrives.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use pgpush_pg::{PresenceStore, unix_time};
use pgpush_protocol::{Channel, Message};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    admission::{policy::Grant, revocations::Revocations},
    core::{
        hub::{ControlSignal, Hub},
        presence::Presence,
        queue::Outbox,
    },
};

/// Why the server ended a connection on an operator's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerEnd {
    /// `pgpush.disconnect(user)`.
    Disconnected,
    /// `pgpush.revoke_token(jti, until)`.
    Revoked,
}

/// An order to end one connection, which its transport waits on.
#[derive(Debug, Default)]
pub(crate) struct Order {
    fired: CancellationToken,
    why: Mutex<Option<ServerEnd>>,
}

impl Order {
    fn end(&self, why: ServerEnd) {
        self.why
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        self.fired.cancel();
    }

    /// Completes when the connection is ordered to end, with why.
    pub(crate) async fn wait(&self) -> ServerEnd {
        self.fired.cancelled().await;
        self.why
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(ServerEnd::Disconnected)
    }
}

/// This node's controllable connections and the state control keeps.
#[derive(Debug)]
pub(crate) struct Control {
    connections: Mutex<HashMap<u64, Controlled>>,
    hub: Arc<Hub>,
    presence: Arc<Presence>,
    revocations: Arc<Revocations>,
    /// Where the revocations are stored, and the control functions.
    pub(crate) store: PresenceStore,
}

#[derive(Debug)]
struct Controlled {
    user: Option<Arc<str>>,
    jti: Option<Arc<str>>,
    outbox: Arc<Outbox>,
    order: Arc<Order>,
}

/// A connection's place in [`Control`]; dropping it removes the connection.
#[derive(Debug)]
pub(crate) struct Registration {
    control: Arc<Control>,
    id: u64,
    order: Arc<Order>,
}

impl Registration {
    /// The order the connection's transport waits on.
    pub(crate) fn order(&self) -> &Arc<Order> {
        &self.order
    }

    /// The connection now uses `grant` (a fresh token sent in-band).
    pub(crate) fn update(&self, grant: &Grant) {
        if let Some(entry) = self.control.lock().get_mut(&self.id) {
            entry.user = grant.subject().map(Arc::from);
            entry.jti = grant.jti().map(Arc::from);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.control.lock().remove(&self.id);
    }
}

/// A `pgpush_control` notification.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Command {
    Disconnect { user: String },
    Unsubscribe { user: String, channel: String },
    Revoke { jti: String, until: f64 },
}

impl Control {
    pub(crate) fn new(
        hub: Arc<Hub>,
        presence: Arc<Presence>,
        revocations: Arc<Revocations>,
        store: PresenceStore,
    ) -> Control {
        Control {
            connections: Mutex::new(HashMap::new()),
            hub,
            presence,
            revocations,
            store,
        }
    }

    /// Registers the connection reading `outbox`, used with `grant`.
    pub(crate) fn register(self: &Arc<Self>, outbox: &Arc<Outbox>, grant: &Grant) -> Registration {
        let order = Arc::new(Order::default());
        self.lock().insert(
            outbox.id(),
            Controlled {
                user: grant.subject().map(Arc::from),
                jti: grant.jti().map(Arc::from),
                outbox: outbox.clone(),
                order: order.clone(),
            },
        );
        Registration {
            control: self.clone(),
            id: outbox.id(),
            order,
        }
    }

    /// Acts on the control notifications until `shutdown`; reads the stored revocations each time
    /// the LISTEN connection comes up (what was notified while it was down is lost).
    pub(crate) async fn run(
        self: Arc<Self>,
        mut signals: mpsc::Receiver<ControlSignal>,
        shutdown: CancellationToken,
    ) {
        loop {
            let signal = tokio::select! {
                _ = shutdown.cancelled() => return,
                signal = signals.recv() => match signal {
                    Some(signal) => signal,
                    None => return,
                },
            };
            match signal {
                ControlSignal::Notice(payload) => self.apply(&payload),
                ControlSignal::Connected => match self.store.revoked_tokens().await {
                    Ok(stored) => self.revocations.load(stored),
                    Err(error) if error.is_not_migrated() => {}
                    Err(error) => warn!(%error, "could not read the revoked tokens"),
                },
            }
        }
    }

    /// Carries out one command on this node's connections.
    fn apply(&self, payload: &str) {
        let command = match serde_json::from_str::<Command>(payload) {
            Ok(command) => command,
            Err(error) => {
                warn!(%error, payload, "ignoring a control notification that does not parse");
                return;
            }
        };
        let connections = self.lock();
        match &command {
            Command::Disconnect { user } => {
                for entry in connections
                    .values()
                    .filter(|e| e.user.as_deref() == Some(user))
                {
                    entry.order.end(ServerEnd::Disconnected);
                }
            }
            Command::Unsubscribe { user, channel } => {
                let Ok(channel) = Channel::new(channel) else {
                    return;
                };
                let frame = serde_json::json!({
                    "type": "unsubscribed",
                    "channels": [channel.as_str()],
                    "by": "server",
                });
                let signal = Arc::new(Message::signal(
                    "unsubscribed",
                    Bytes::from(frame.to_string()),
                ));
                for entry in connections
                    .values()
                    .filter(|e| e.user.as_deref() == Some(user))
                {
                    let id = entry.outbox.id();
                    if self.hub.is_subscribed(id, &channel) {
                        self.hub.unsubscribe(id, [&channel]);
                        self.presence
                            .leave(&self.presence.client_id(id), [&channel]);
                        entry.outbox.offer(&signal);
                    }
                }
            }
            Command::Revoke { jti, until } => {
                self.revocations.revoke(jti, unix_time(*until));
                for entry in connections
                    .values()
                    .filter(|e| e.jti.as_deref() == Some(jti))
                {
                    entry.order.end(ServerEnd::Revoked);
                }
            }
        }
        info!(?command, "control command applied");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Controlled>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}
