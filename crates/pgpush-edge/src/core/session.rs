//! A connection's subscriptions, removed from the hub however the connection ends.

use std::{collections::HashSet, sync::Arc};

use pgpush_protocol::{Channel, CursorPoint};

use crate::core::{
    hub::{Hub, SubscribeError, Subscription},
    queue::Outbox,
};

/// A connection's subscriptions; dropping it unsubscribes everything, so a connection that
/// ends any way at all leaves no subscriber behind.
#[derive(Debug)]
pub struct Session {
    hub: Arc<Hub>,
    outbox: Arc<Outbox>,
    channels: HashSet<Channel>,
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
        }
    }

    /// Subscribes to `channels` (those already subscribed are no-ops, and get no replay),
    /// replaying durable events after `since` (see [`Hub::subscribe`]).
    pub async fn subscribe(
        &mut self,
        channels: &[Channel],
        since: Option<CursorPoint>,
    ) -> Result<Subscription, SubscribeError> {
        let new: Vec<Channel> = channels
            .iter()
            .filter(|c| !self.channels.contains(*c))
            .cloned()
            .collect();
        let subscription = self.hub.subscribe(&self.outbox, &new, since).await?;
        self.channels.extend(new);
        Ok(subscription)
    }

    /// The channels subscribed.
    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.channels.iter()
    }

    /// Unsubscribes from `channels`.
    pub fn unsubscribe(&mut self, channels: &[Channel]) {
        let removed: Vec<Channel> = channels
            .iter()
            .filter(|c| self.channels.remove(*c))
            .cloned()
            .collect();
        self.hub.unsubscribe(self.outbox.id(), &removed);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.outbox.id(), &self.channels);
    }
}
