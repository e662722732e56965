//! Presence on this node: its connections' joins and leaves, written to PostgreSQL in batches
//! beside a heartbeat, and the cluster's presence notifications turned into join/leave frames.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use pgpush_pg::{PresenceStore, PresentClient};
use pgpush_protocol::{Channel, Message};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ops::stats::Stats;

/// How often a node tells PostgreSQL it is alive (and reaps the silent ones).
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node not heard from for this long is gone: its connections are listed no more, and the next
/// heartbeat of any node makes them leave. A SIGKILLed node's clients leave within this plus
/// one heartbeat (8 s).
pub const TIMEOUT: Duration = Duration::from_secs(6);
/// How long a change waits for others to share its write.
const BATCH_DELAY: Duration = Duration::from_millis(50);
/// The wait before writing again after PostgreSQL refused a write.
const RETRY: Duration = Duration::from_secs(1);

/// Who a present connection is: its token's `sub` and `info` (JSON object text).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The token's `sub`.
    pub user: Option<Arc<str>>,
    /// The token's `info` object, as JSON text.
    pub info: Option<Arc<RawValue>>,
}

/// This node's present connections and the changes not written yet.
#[derive(Debug)]
pub struct Presence {
    /// This process's name in the presence tables: random per start, so a restarted node never
    /// inherits the rows of its previous life (those leave by timeout).
    node: String,
    store: Option<PresenceStore>,
    state: Mutex<State>,
    wake: Notify,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct State {
    members: HashMap<Arc<str>, Member>,
    /// (channel, client) -> joined (true) or left (false), the last change of each key wins.
    pending: HashMap<(Channel, Arc<str>), bool>,
}

#[derive(Debug)]
struct Member {
    identity: Identity,
    channels: HashSet<Channel>,
}

/// One row of a batch, as `pgpush.presence_apply` reads it.
#[derive(Serialize)]
struct Row<'a> {
    channel: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a RawValue>,
}

impl Presence {
    /// Presence written through `store` (`None`: kept on this node only, for unit tests).
    pub fn new(store: Option<PresenceStore>, stats: Arc<Stats>) -> Presence {
        Presence {
            node: format!("{:012x}", rand::random::<u64>() >> 16),
            store,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            stats,
        }
    }

    /// The cluster-wide id of this node's connection whose queue is `outbox_id`.
    pub fn client_id(&self, outbox_id: u64) -> Arc<str> {
        format!("{}.{outbox_id}", self.node).into()
    }

    /// Makes `client` present in `channels`.
    pub fn join(&self, client: &Arc<str>, identity: &Identity, channels: &[Channel]) {
        let mut state = self.lock();
        let state = &mut *state;
        let member = state
            .members
            .entry(client.clone())
            .or_insert_with(|| Member {
                identity: identity.clone(),
                channels: HashSet::new(),
            });
        for channel in channels {
            if member.channels.insert(channel.clone()) {
                state
                    .pending
                    .insert((channel.clone(), client.clone()), true);
            }
        }
        self.wake.notify_one();
    }

    /// `client` leaves `channels` (those it is not present in are ignored).
    pub fn leave<'a>(&self, client: &Arc<str>, channels: impl IntoIterator<Item = &'a Channel>) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(member) = state.members.get_mut(client) else {
            return;
        };
        for channel in channels {
            if member.channels.remove(channel) {
                state
                    .pending
                    .insert((channel.clone(), client.clone()), false);
            }
        }
        if member.channels.is_empty() {
            state.members.remove(client);
        }
        self.wake.notify_one();
    }

    /// `client` leaves every channel.
    pub fn leave_all(&self, client: &Arc<str>) {
        let channels: Vec<Channel> = match self.lock().members.get(client) {
            Some(member) => member.channels.iter().cloned().collect(),
            None => return,
        };
        self.leave(client, &channels);
    }

    /// Who is present in `channel`, on every node.
    pub async fn list(&self, channel: &Channel) -> Result<Vec<PresentClient>, pgpush_pg::Error> {
        match &self.store {
            Some(store) => store.list(channel.as_str(), TIMEOUT).await,
            None => Ok(Vec::new()),
        }
    }

    /// Writes changes in batches and beats every [`HEARTBEAT`] until `shutdown`; then this
    /// node's connections leave at once.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let mut beat = tokio::time::interval(HEARTBEAT);
        // An outage is said once, not at every retry.
        let mut failing = false;
        loop {
            let known = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = beat.tick() => self.count(store.heartbeat(&self.node, TIMEOUT).await),
                _ = self.wake.notified() => {
                    tokio::time::sleep(BATCH_DELAY).await;
                    self.flush(&store).await
                }
            };
            if known.is_ok() && std::mem::take(&mut failing) {
                info!("presence: writes to PostgreSQL resumed");
            }
            match known {
                // The row was gone (first beat, reaped while PostgreSQL was unreachable, or
                // emptied by a crash or a failover): write every connection again.
                Ok(false) => {
                    self.rejoin_all();
                    if self.flush(&store).await.is_err() {
                        tokio::time::sleep(RETRY).await;
                    }
                }
                Ok(true) => {}
                Err(error) => {
                    if error.is_not_migrated() {
                        // Said by the durable path and /readyz; presence waits for the migration.
                    } else if std::mem::replace(&mut failing, true) {
                        debug!(%error, "presence: PostgreSQL refused a write again; retrying");
                    } else {
                        warn!(%error, "presence: PostgreSQL refused a write; retrying");
                    }
                    tokio::time::sleep(RETRY).await;
                    self.wake.notify_one();
                }
            }
        }
        if let Err(error) = store.depart(&self.node).await {
            warn!(%error, "presence: could not remove this node's connections");
        }
    }

    /// Writes the pending changes in one statement; on failure they stay pending (a newer change
    /// of the same key wins over the one put back).
    async fn flush(&self, store: &PresenceStore) -> Result<bool, pgpush_pg::Error> {
        let (pending, members): (Vec<_>, HashMap<_, _>) = {
            let mut state = self.lock();
            let pending: Vec<_> = state.pending.drain().collect();
            let identities = pending
                .iter()
                .filter(|(_, joined)| *joined)
                .filter_map(|((_, client), _)| {
                    let member = state.members.get(client)?;
                    Some((client.clone(), member.identity.clone()))
                })
                .collect();
            (pending, identities)
        };
        if pending.is_empty() {
            return Ok(true);
        }
        let rows = |joined: bool| {
            let rows: Vec<Row> = pending
                .iter()
                .filter(|(_, j)| *j == joined)
                .map(|((channel, client), _)| {
                    let identity = members.get(client);
                    Row {
                        channel: channel.as_str(),
                        id: client,
                        user: identity.and_then(|i| i.user.as_deref()),
                        info: identity.and_then(|i| i.info.as_deref()),
                    }
                })
                .collect();
            serde_json::to_string(&rows).unwrap_or_else(|_| "[]".to_owned())
        };
        let result = self
            .count(store.apply(&self.node, &rows(true), &rows(false)).await)
            .inspect_err(|_| {
                let mut state = self.lock();
                for (key, joined) in pending {
                    state.pending.entry(key).or_insert(joined);
                }
            });
        if let Ok(false) = result {
            // The node's row was missing: what was written before this batch is gone.
            self.rejoin_all();
            self.wake.notify_one();
        }
        result
    }

    /// Marks every present connection as joining again (rows already there are not notified).
    fn rejoin_all(&self) {
        let mut state = self.lock();
        let state = &mut *state;
        for (client, member) in &state.members {
            for channel in &member.channels {
                state
                    .pending
                    .insert((channel.clone(), client.clone()), true);
            }
        }
    }

    fn count<T>(&self, result: Result<T, pgpush_pg::Error>) -> Result<T, pgpush_pg::Error> {
        self.stats.presence_queries.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A `pgpush_presence` notification's changes as (channel, join or leave frame); what does not
/// parse is skipped.
pub fn signals(payload: &str) -> Vec<(String, Message)> {
    #[derive(Deserialize)]
    struct Changes<'a> {
        #[serde(borrow)]
        changes: Vec<Change<'a>>,
    }
    #[derive(Deserialize, Serialize)]
    struct Change<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        channel: String,
        client: serde_json::Value,
    }
    let Ok(parsed) = serde_json::from_str::<Changes>(payload) else {
        return Vec::new();
    };
    parsed
        .changes
        .into_iter()
        .filter_map(|change| {
            let event = match change.kind {
                "join" => "join",
                "leave" => "leave",
                _ => return None,
            };
            let frame = Bytes::from(serde_json::to_vec(&change).ok()?);
            Some((change.channel, Message::signal(event, frame)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_become_compact_join_and_leave_frames() {
        let payload = r#"{"changes":[{"type": "join", "channel": "room", "client": {"id": "n.1", "info": {"name": "Ann"}, "user": "ann"}},{"type":"wave","channel":"room","client":{}},{"type": "leave", "channel": "b", "client": {"id": "n.2", "info": null, "user": null}}]}"#;
        let parsed = signals(payload);
        let frames: Vec<(&str, &[u8])> = parsed
            .iter()
            .map(|(c, m)| (c.as_str(), m.websocket_text().as_ref()))
            .collect();
        assert_eq!(
            frames,
            [
                (
                    "room",
                    br#"{"type":"join","channel":"room","client":{"id":"n.1","info":{"name":"Ann"},"user":"ann"}}"#
                        .as_slice()
                ),
                (
                    "b",
                    br#"{"type":"leave","channel":"b","client":{"id":"n.2","info":null,"user":null}}"#
                ),
            ]
        );
        assert!(signals("not json").is_empty());
    }

    #[test]
    fn the_last_change_of_a_key_is_what_is_written() {
        let presence = Presence::new(None, Arc::new(Stats::default()));
        let client = presence.client_id(7);
        let (a, b) = (Channel::new("a").unwrap(), Channel::new("b").unwrap());
        presence.join(&client, &Identity::default(), &[a.clone(), b.clone()]);
        presence.leave(&client, [&a]);
        let pending = presence.lock().pending.clone();
        assert_eq!(pending.len(), 2);
        assert!(!pending[&(a.clone(), client.clone())], "left");
        assert!(pending[&(b.clone(), client.clone())], "joined");
        presence.leave_all(&client);
        assert!(presence.lock().members.is_empty());
        assert!(!presence.lock().pending[&(b, client)], "left");
    }
}
