//! A channel's subscribers, grouped by distinct filter, with an R-tree over the boxes of `within` filters: a message is evaluated once per distinct filter that can match it.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use pgpush_protocol::{Filter, FilterPath, Message};
use rstar::{
    RTree,
    primitives::{GeomWithData, Rectangle},
};

use crate::core::queue::{Offer, Outbox};

/// A box of the spatial index, naming the group whose filter requires it.
type IndexedBox = GeomWithData<Rectangle<[f64; 2]>, u64>;

/// The subscribers of one channel.
///
/// Unfiltered subscribers get every message. Filtered ones are grouped by the filter's
/// canonical text, so 10,000 subscribers sharing one filter cost one evaluation per message.
/// A group whose filter requires a point in a box (`within`, alone or in the top `and`) is
/// found through the R-tree of its path: a message is evaluated only against the groups whose
/// box holds its point, plus the groups without a box.
#[derive(Debug, Default)]
pub(crate) struct Audience {
    plain: HashMap<u64, Arc<Outbox>>,
    /// Filtered subscriber → its group.
    filtered: HashMap<u64, u64>,
    groups: HashMap<u64, Group>,
    /// Canonical filter text → group.
    by_filter: HashMap<Arc<str>, u64>,
    /// Groups with no box: evaluated for every message.
    unindexed: HashSet<u64>,
    /// Path of the point → the boxes of the groups that require one there.
    spatial: HashMap<FilterPath, RTree<IndexedBox>>,
    next_group: u64,
}

#[derive(Debug)]
struct Group {
    filter: Arc<Filter>,
    members: HashMap<u64, Recipient>,
}

#[derive(Debug)]
struct Recipient {
    outbox: Arc<Outbox>,
    /// The highest durable position this subscriber was brought to: a message offered, or a
    /// cursor marker. Below the head, its cursor lags behind events its filter left out.
    position: i64,
    /// `position` at the last [`Audience::advance`]: unchanged since, nothing moved the cursor.
    position_at_advance: i64,
}

/// Subscribers whose queue overflowed with a delivery.
pub(crate) type Overflows = usize;

/// How a delivery went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Subscribers whose queue overflowed with it.
    pub(crate) overflows: Overflows,
    /// Distinct filters evaluated for it.
    pub(crate) evaluated: usize,
}

impl Audience {
    /// Adds subscriber `id` (or changes its filter); true when it is new. `position` is the
    /// durable head it starts from.
    pub(crate) fn insert(
        &mut self,
        id: u64,
        outbox: &Arc<Outbox>,
        filter: Option<&Arc<Filter>>,
        position: i64,
    ) -> bool {
        let existed = self.remove(id);
        match filter {
            None => {
                self.plain.insert(id, outbox.clone());
            }
            Some(filter) => {
                let group = self.group_for(filter);
                self.filtered.insert(id, group);
                if let Some(group) = self.groups.get_mut(&group) {
                    group.members.insert(
                        id,
                        Recipient {
                            outbox: outbox.clone(),
                            position,
                            position_at_advance: position,
                        },
                    );
                }
            }
        }
        !existed
    }

    /// Removes subscriber `id`; true when it was here.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        if self.plain.remove(&id).is_some() {
            return true;
        }
        let Some(group_id) = self.filtered.remove(&id) else {
            return false;
        };
        let now_empty = self.groups.get_mut(&group_id).is_some_and(|group| {
            group.members.remove(&id);
            group.members.is_empty()
        });
        if now_empty {
            self.drop_group(group_id);
        }
        true
    }

    /// Whether subscriber `id` is here.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.plain.contains_key(&id) || self.filtered.contains_key(&id)
    }

    /// True when nobody subscribes.
    pub(crate) fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.filtered.is_empty()
    }

    /// Subscriber `id`'s queue.
    pub(crate) fn get(&self, id: u64) -> Option<&Arc<Outbox>> {
        self.plain.get(&id).or_else(|| {
            let group = self.groups.get(self.filtered.get(&id)?)?;
            Some(&group.members.get(&id)?.outbox)
        })
    }

    /// Every subscriber's queue.
    pub(crate) fn outboxes(&self) -> impl Iterator<Item = &Arc<Outbox>> {
        self.plain.values().chain(
            self.groups
                .values()
                .flat_map(|g| g.members.values().map(|r| &r.outbox)),
        )
    }

    /// Distinct filters among the subscribers.
    pub(crate) fn distinct_filters(&self) -> usize {
        self.groups.len()
    }

    /// Offers `message` to every subscriber it is for: all unfiltered ones, and the members of
    /// each group whose filter matches (the payload parsed once, each filter evaluated once).
    pub(crate) fn deliver(&mut self, message: &Arc<Message>) -> Delivery {
        let mut delivery = Delivery::default();
        for outbox in self.plain.values() {
            if outbox.offer(message) == Offer::Overflowed {
                delivery.overflows += 1;
            }
        }
        if self.groups.is_empty() {
            return delivery;
        }
        let document = message.document();
        let mut candidates: Vec<u64> = self.unindexed.iter().copied().collect();
        if let Some(document) = document {
            for (path, tree) in &self.spatial {
                if let Some(point) = path.point(document) {
                    candidates.extend(tree.locate_all_at_point(&point).map(|b| b.data));
                }
            }
        }
        let position = message.position();
        for group_id in candidates {
            let Some(group) = self.groups.get_mut(&group_id) else {
                continue;
            };
            delivery.evaluated += 1;
            if !group.filter.matches(document) {
                continue;
            }
            for recipient in group.members.values_mut() {
                if recipient.outbox.offer(message) == Offer::Overflowed {
                    delivery.overflows += 1;
                }
                if let Some(position) = position {
                    recipient.position = recipient.position.max(position);
                }
            }
        }
        delivery
    }

    /// Offers the cursor marker `marker` to each filtered subscriber whose cursor is behind it
    /// and was not moved by any message since the last call (its filter left out everything
    /// since), unless `told` has it already. A subscriber its messages keep moving needs no
    /// marker: its cursor lags by at most two calls' interval.
    pub(crate) fn advance(&mut self, marker: &Arc<Message>, told: &mut HashSet<u64>) -> Overflows {
        let Some(position) = marker.position() else {
            return 0;
        };
        let mut overflows = 0;
        for recipient in self
            .groups
            .values_mut()
            .flat_map(|g| g.members.values_mut())
        {
            let moved = recipient.position != recipient.position_at_advance;
            recipient.position_at_advance = recipient.position;
            if recipient.position >= position || moved {
                continue;
            }
            recipient.position = position;
            recipient.position_at_advance = position;
            if told.insert(recipient.outbox.id())
                && recipient.outbox.offer(marker) == Offer::Overflowed
            {
                overflows += 1;
            }
        }
        overflows
    }

    fn group_for(&mut self, filter: &Arc<Filter>) -> u64 {
        if let Some(id) = self.by_filter.get(filter.canonical()) {
            return *id;
        }
        self.next_group += 1;
        let id = self.next_group;
        self.by_filter.insert(filter.canonical().into(), id);
        match filter.required_box() {
            Some((path, geo_box)) => {
                let tree = self.spatial.entry(path.clone()).or_default();
                for [min, max] in geo_box.parts() {
                    tree.insert(GeomWithData::new(Rectangle::from_corners(min, max), id));
                }
            }
            None => {
                self.unindexed.insert(id);
            }
        }
        self.groups.insert(
            id,
            Group {
                filter: filter.clone(),
                members: HashMap::new(),
            },
        );
        id
    }

    fn drop_group(&mut self, id: u64) {
        let Some(group) = self.groups.remove(&id) else {
            return;
        };
        self.by_filter.remove(group.filter.canonical());
        self.unindexed.remove(&id);
        if let Some((path, geo_box)) = group.filter.required_box()
            && let Some(tree) = self.spatial.get_mut(path)
        {
            for [min, max] in geo_box.parts() {
                tree.remove(&GeomWithData::new(Rectangle::from_corners(min, max), id));
            }
            if tree.size() == 0 {
                self.spatial.remove(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use pgpush_protocol::{Channel, Payload};

    use super::*;
    use crate::{core::queue, settings::QueueLimits};

    fn outbox(id: u64) -> (Arc<Outbox>, queue::Inbox) {
        let limits = QueueLimits {
            messages: 16,
            bytes: 1 << 20,
        };
        queue::bounded(id, limits, None)
    }

    fn moved(id: u64, lon: f64, lat: f64) -> Arc<Message> {
        let payload =
            format!(r#"{{"id":{id},"loc":{{"type":"Point","coordinates":[{lon},{lat}]}}}}"#);
        Arc::new(Message::ephemeral(
            Channel::new("person_updated").unwrap(),
            Payload::new(payload),
        ))
    }

    fn within(west: f64, south: f64, east: f64, north: f64) -> Arc<Filter> {
        let text =
            format!(r#"{{"path":"loc","op":"within","value":[{west},{south},{east},{north}]}}"#);
        Arc::new(Filter::parse(&text).unwrap())
    }

    /// Viewport (i, j) of a grid of 0.01-degree cells.
    fn viewport(i: u64, j: u64) -> Arc<Filter> {
        let (west, south) = (i as f64 / 100.0, j as f64 / 100.0);
        within(west, south, west + 0.009, south + 0.009)
    }

    fn received(inbox: &mut queue::Inbox) -> usize {
        let mut batch = Vec::new();
        inbox.try_recv_many(&mut batch, usize::MAX)
    }

    #[test]
    fn a_point_is_evaluated_only_against_the_boxes_that_hold_it() {
        let mut audience = Audience::default();
        // A 100 x 100 grid of viewports, 0.01 degrees each, and one subscriber per viewport.
        let mut inboxes = Vec::new();
        for i in 0..100u64 {
            for j in 0..100u64 {
                let id = i * 100 + j;
                let (outbox, inbox) = outbox(id);
                assert!(audience.insert(id, &outbox, Some(&viewport(i, j)), 0));
                inboxes.push(inbox);
            }
        }
        // A second subscriber on one viewport shares its group.
        let (twin, mut twin_inbox) = outbox(99_999);
        audience.insert(99_999, &twin, Some(&viewport(42, 17)), 0);
        assert_eq!(audience.distinct_filters(), 10_000);

        let delivery = audience.deliver(&moved(1, 0.425, 0.175));
        assert_eq!(delivery.evaluated, 1, "one box holds the point");
        let got: Vec<usize> = inboxes
            .iter_mut()
            .enumerate()
            .filter_map(|(i, inbox)| (received(inbox) > 0).then_some(i))
            .collect();
        assert_eq!(got, [42 * 100 + 17]);
        assert_eq!(received(&mut twin_inbox), 1);

        let outside = audience.deliver(&moved(1, 5.0, 5.0));
        assert_eq!(
            outside,
            Delivery::default(),
            "no box, no evaluation, nobody"
        );
        let not_json = Arc::new(Message::ephemeral(
            Channel::new("person_updated").unwrap(),
            Payload::new("hello"),
        ));
        assert_eq!(audience.deliver(&not_json).evaluated, 0);
    }

    #[test]
    fn groups_and_boxes_go_when_their_last_member_does() {
        let mut audience = Audience::default();
        let (a, mut a_inbox) = outbox(1);
        let (b, mut b_inbox) = outbox(2);
        let (plain, mut plain_inbox) = outbox(3);
        let name = Arc::new(Filter::parse(r#"{"path":"id","op":"eq","value":7}"#).unwrap());
        audience.insert(1, &a, Some(&within(0.0, 0.0, 1.0, 1.0)), 0);
        audience.insert(2, &b, Some(&name), 0);
        audience.insert(3, &plain, None, 0);
        assert_eq!(audience.distinct_filters(), 2);
        let delivery = audience.deliver(&moved(7, 0.5, 0.5));
        assert_eq!(
            delivery.evaluated, 2,
            "the box's group and the unindexed one"
        );
        assert_eq!(
            [&mut a_inbox, &mut b_inbox, &mut plain_inbox].map(received),
            [1, 1, 1]
        );

        // Subscriber 1 changes its filter: it leaves its group, which goes with its box.
        assert!(!audience.insert(1, &a, Some(&name), 0), "not new");
        assert_eq!(audience.distinct_filters(), 1);
        assert!(audience.spatial.is_empty());
        audience.deliver(&moved(8, 0.5, 0.5));
        assert_eq!([&mut a_inbox, &mut b_inbox].map(received), [0, 0]);
        assert!(audience.remove(1) && audience.remove(2) && audience.remove(3));
        assert!(audience.is_empty() && audience.groups.is_empty() && audience.by_filter.is_empty());
        assert!(!audience.remove(1));
    }
}
