//! A connection's subscriptions and presence, removed from the hub however the connection ends.

use std::{collections::HashSet, sync::Arc};

use pgpush_protocol::{Channel, CursorPoint, Filter};

use crate::core::{
    hub::{Hub, SubscribeError, Subscription},
    presence::{Identity, Presence},
    queue::Outbox,
};

/// A connection's subscriptions; dropping it unsubscribes everything and leaves every channel it
/// was present in, so a connection that ends any way at all leaves nothing behind.
#[derive(Debug)]
pub struct Session {
    hub: Arc<Hub>,
    outbox: Arc<Outbox>,
    channels: HashSet<Channel>,
    /// Where the connection is present, once it asked to be, and its id there.
    presence: Option<(Arc<Presence>, Arc<str>)>,
}

impl Session {
    /// The queue this session subscribes.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// An empty session for `outbox`.
    pub fn new(hub: Arc<Hub>, outbox: Arc<Outbox>) -> Session {
        Session {
            hub,
            outbox,
            channels: HashSet::new(),
            presence: None,
        }
    }

    /// Subscribes to `channels` with `filter`, replaying durable events after `since` (see
    /// [`Hub::subscribe`]). Channels subscribed already get no replay; their filter is replaced.
    pub async fn subscribe(
        &mut self,
        channels: &[Channel],
        since: Option<CursorPoint>,
        filter: Option<&Arc<Filter>>,
    ) -> Result<Subscription, SubscribeError> {
        self.forget_unsubscribed();
        let (old, new): (Vec<Channel>, Vec<Channel>) = channels
            .iter()
            .cloned()
            .partition(|c| self.channels.contains(c));
        self.hub.refilter(&self.outbox, &old, filter);
        let subscription = self
            .hub
            .subscribe(&self.outbox, &new, since, filter)
            .await?;
        self.channels.extend(new);
        Ok(subscription)
    }

    /// Makes the connection present in `channels` (subscribed already) as `identity`, and has it
    /// receive their joins and leaves.
    pub fn be_present(
        &mut self,
        presence: &Arc<Presence>,
        identity: &Identity,
        channels: &[Channel],
    ) {
        let (presence, client) = self
            .presence
            .get_or_insert_with(|| (presence.clone(), presence.client_id(self.outbox.id())));
        self.hub.watch(self.outbox.id(), channels);
        presence.join(client, identity, channels);
    }

    /// The connection's presence id, once it is present somewhere.
    pub fn presence_id(&self) -> Option<&Arc<str>> {
        self.presence.as_ref().map(|(_, id)| id)
    }

    /// The channels subscribed (without those the server unsubscribed).
    pub fn channels(&mut self) -> impl Iterator<Item = &Channel> {
        self.forget_unsubscribed();
        self.channels.iter()
    }

    /// Unsubscribes from `channels`, and leaves them.
    pub fn unsubscribe(&mut self, channels: &[Channel]) {
        let removed: Vec<Channel> = channels
            .iter()
            .filter(|c| self.channels.remove(*c))
            .cloned()
            .collect();
        self.hub.unsubscribe(self.outbox.id(), &removed);
        if let Some((presence, client)) = &self.presence {
            presence.leave(client, &removed);
        }
    }

    /// Drops the channels the server unsubscribed this connection from (`pgpush.unsubscribe`).
    fn forget_unsubscribed(&mut self) {
        let (hub, id) = (&self.hub, self.outbox.id());
        self.channels.retain(|c| hub.is_subscribed(id, c));
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.outbox.id(), &self.channels);
        if let Some((presence, client)) = &self.presence {
            presence.leave_all(client);
        }
    }
}
