//! Epochs of the durable history (`pgpush.epochs`): which (epoch, position) points a database's
//! history still holds, and whether what a node delivered is still part of it.

/// One epoch as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    /// Order in the database's chain (1 for the first).
    pub seq: i32,
    /// Random id; what cursors carry.
    pub id: i64,
    /// The positions of the epoch's own events start here.
    pub first_position: i64,
    /// The last position it inherited from the epochs before it.
    pub forked_after: i64,
}

/// A database's chain of epochs, oldest first, never empty. Positions grow along it: every
/// epoch's `first_position` is above the `forked_after` it inherited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    epochs: Vec<Epoch>,
}

/// What a node's delivered history is to a database's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuation {
    /// Everything the node delivered is part of the database's history: nobody is reset.
    Continues,
    /// The node delivered positions the database's history lost: its clients must reset.
    Forked {
        /// The last position both histories share (`None`: the database does not know the
        /// node's epoch, a history restored from a backup older than it).
        shared_up_to: Option<i64>,
        /// Where the node goes on from: the database holds nothing between the shared part and
        /// the position after it.
        resume_after: i64,
    },
}

impl History {
    /// The chain from its epochs in any order; `None` when there is none.
    pub fn new(mut epochs: Vec<Epoch>) -> Option<History> {
        epochs.sort_by_key(|e| e.seq);
        (!epochs.is_empty()).then_some(History { epochs })
    }

    /// The epoch new positions are assigned in.
    pub fn current(&self) -> &Epoch {
        self.epochs.last().expect("a history has an epoch")
    }

    /// The database's first epoch (whose cursors keep the original spelling).
    pub fn first(&self) -> &Epoch {
        &self.epochs[0]
    }

    /// Every epoch, oldest first.
    pub fn epochs(&self) -> &[Epoch] {
        &self.epochs
    }

    /// True when this chain has an epoch with this id.
    pub fn knows(&self, id: i64) -> bool {
        self.index(id).is_some()
    }

    fn index(&self, id: i64) -> Option<usize> {
        self.epochs.iter().position(|e| e.id == id)
    }

    /// The last position of epoch `id` that the current epoch still holds: `Some(None)` for the
    /// current epoch (all of it), `None` for an epoch this chain does not have.
    pub fn shared_end(&self, id: i64) -> Option<Option<i64>> {
        let index = self.index(id)?;
        // Later epochs inherit ever more (forked_after only grows), so the next one decides.
        Some(self.epochs.get(index + 1).map(|next| next.forked_after))
    }

    /// The epoch whose positions contain `position`: how a point without an epoch (a cursor of
    /// the first epoch's spelling, a Hippie position stored before epochs) is read.
    pub fn epoch_containing(&self, position: i64) -> &Epoch {
        self.epochs
            .iter()
            .rev()
            .find(|e| e.first_position <= position)
            .unwrap_or(self.first())
    }

    /// True when (epoch, position) is a point of this history: the epoch is in the chain and
    /// the position is within the part of it the current epoch still holds. `epoch: None` means
    /// the epoch containing the position.
    pub fn holds(&self, epoch: Option<i64>, position: i64) -> bool {
        let id = epoch.unwrap_or_else(|| self.epoch_containing(position).id);
        match self.shared_end(id) {
            None => false,
            Some(None) => true,
            Some(Some(end)) => position <= end,
        }
    }

    /// Whether a node can go on in this history. `delivered` lists the epochs the node
    /// delivered in, oldest first, each from the position it switched to it at (positions from
    /// there on were delivered in it); `head` is the last position it delivered.
    ///
    /// The newest of those epochs that this history knows decides: if it is the node's current
    /// one and this history still holds everything up to `head`, the node goes on. Otherwise the
    /// node delivered positions this history lost (or never had), and it resumes right after
    /// the last position both share.
    pub fn continuation(&self, delivered: &[(i64, i64)], head: i64) -> Continuation {
        for (index, (_, epoch)) in delivered.iter().enumerate().rev() {
            let Some(position) = self.index(*epoch) else {
                continue;
            };
            let held_to = self.epochs.get(position + 1).map(|next| next.forked_after);
            let newest = index + 1 == delivered.len();
            if newest && held_to.is_none_or(|end| head <= end) {
                return Continuation::Continues;
            }
            // What the node delivered in this epoch, and what this history still holds of it.
            let delivered_to = delivered.get(index + 1).map_or(head, |(from, _)| *from);
            let shared = held_to.map_or(delivered_to, |end| end.min(delivered_to));
            let resume_after = match self.epochs.get(position + 1) {
                Some(next) => next.first_position - 1,
                None => shared,
            };
            return Continuation::Forked {
                shared_up_to: Some(shared),
                resume_after,
            };
        }
        Continuation::Forked {
            shared_up_to: None,
            resume_after: self.current().first_position - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: i64 = 1 << 40;

    fn epoch(seq: i32, id: i64, first_position: i64, forked_after: i64) -> Epoch {
        Epoch {
            seq,
            id,
            first_position,
            forked_after,
        }
    }

    /// The failover of the issue: the primary's epoch 10 reached 399, the standby had 246 and
    /// began epoch 20 after it.
    fn failed_over() -> History {
        History::new(vec![epoch(2, 20, 246 + GAP, 246), epoch(1, 10, 1, 0)]).unwrap()
    }

    #[test]
    fn points_the_history_holds() {
        let history = failed_over();
        assert_eq!(history.current().id, 20);
        assert_eq!(history.first().id, 10);
        assert!(history.holds(Some(10), 246));
        assert!(!history.holds(Some(10), 247));
        assert!(!history.holds(Some(10), 399));
        assert!(
            history.holds(Some(20), 399),
            "nothing of epoch 20 up to 399 is missing"
        );
        assert!(history.holds(Some(20), 246 + GAP + 5));
        assert!(!history.holds(Some(30), 1), "an epoch of another history");
        // Without an epoch, the position decides.
        assert!(history.holds(None, 246));
        assert!(!history.holds(None, 399));
        assert!(history.holds(None, 246 + GAP + 5));
    }

    #[test]
    fn a_node_ahead_of_the_survivor_forks_and_one_behind_continues() {
        let history = failed_over();
        let in_10 = [(i64::MIN, 10)];
        assert_eq!(
            history.continuation(&in_10, 399),
            Continuation::Forked {
                shared_up_to: Some(246),
                resume_after: 245 + GAP
            }
        );
        assert_eq!(history.continuation(&in_10, 246), Continuation::Continues);
        assert_eq!(history.continuation(&in_10, 100), Continuation::Continues);
        let in_20 = [(i64::MIN, 10), (200, 20)];
        assert_eq!(
            history.continuation(&in_20, 300 + GAP),
            Continuation::Continues
        );
        assert_eq!(
            history.continuation(&[(i64::MIN, 99)], 5),
            Continuation::Forked {
                shared_up_to: None,
                resume_after: 245 + GAP
            }
        );
    }

    #[test]
    fn a_restore_older_than_the_nodes_epoch_resumes_after_what_both_share() {
        // The node delivered up to 100 in epoch 10, went on cleanly in epoch 20 (a restart) and
        // delivered up to 20 + GAP; then the database was restored from a backup of epoch 10.
        let delivered = [(i64::MIN, 10), (100, 20)];
        let restored = History::new(vec![epoch(1, 10, 1, 0)]).unwrap();
        assert_eq!(
            restored.continuation(&delivered, 20 + GAP),
            Continuation::Forked {
                shared_up_to: Some(100),
                resume_after: 100
            }
        );
        // The restored server began its own epoch after 90: the node resumes there.
        let restarted =
            History::new(vec![epoch(1, 10, 1, 0), epoch(2, 30, 90 + 3 * GAP, 90)]).unwrap();
        assert_eq!(
            restarted.continuation(&delivered, 20 + GAP),
            Continuation::Forked {
                shared_up_to: Some(90),
                resume_after: 89 + 3 * GAP
            }
        );
    }

    #[test]
    fn later_epochs_keep_what_their_predecessors_shared() {
        // Epoch 20 lost 247..399 of epoch 10; epoch 30 began cleanly after all of epoch 20.
        let history = History::new(vec![
            epoch(1, 10, 1, 0),
            epoch(2, 20, 246 + GAP, 246),
            epoch(3, 30, 300 + 2 * GAP, 260 + GAP),
        ])
        .unwrap();
        assert!(history.holds(Some(10), 246));
        assert!(!history.holds(Some(10), 250));
        assert!(history.holds(Some(20), 260 + GAP));
        assert!(!history.holds(Some(20), 261 + GAP));
        assert_eq!(
            history.continuation(&[(i64::MIN, 10)], 399),
            Continuation::Forked {
                shared_up_to: Some(246),
                resume_after: 245 + GAP
            }
        );
        let in_20 = [(i64::MIN, 10), (200, 20)];
        assert_eq!(
            history.continuation(&in_20, 260 + GAP),
            Continuation::Continues
        );
        assert_eq!(history.epoch_containing(0).id, 10);
        assert_eq!(history.epoch_containing(260 + GAP).id, 20);
        assert_eq!(history.epoch_containing(i64::MAX).id, 30);
    }

    #[test]
    fn an_empty_chain_is_no_history() {
        assert_eq!(History::new(Vec::new()), None);
    }
}
