//! How many activity bodies the emulator keeps, and which it forgets first.
//!
//! A broadcast run sends hundreds of thousands of activities; keeping every body would grow
//! without end. Each conversation keeps its last `per_conversation` activities of each lane
//! (what the bot sent, what "Teams" posted to the bot), and all conversations together keep
//! the last `total`, the oldest anywhere going first. Counts never shrink: a conversation's
//! received count and the stats stay exact whatever was dropped.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Which list of a conversation an activity is kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// What the bot sent.
    Sent,
    /// What "Teams" posted to the bot.
    Inbound,
}

/// A conversation's kept activities of one lane, oldest first, each with its stamp.
#[derive(Debug, Clone)]
pub(crate) struct Kept<T> {
    items: VecDeque<(u64, T)>,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept {
            items: VecDeque::new(),
        }
    }
}

impl<T> Kept<T> {
    pub(crate) fn push(&mut self, stamp: u64, item: T) {
        // Most conversations of a broadcast get one message: room for exactly one, not the
        // four a growing deque starts with (a kept activity is some 300 bytes before its body).
        if self.items.capacity() == 0 {
            self.items.reserve_exact(1);
        }
        self.items.push_back((stamp, item));
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.items.iter().map(|(_, item)| item)
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.items.iter_mut().map(|(_, item)| item)
    }

    /// Drops the oldest; returns its stamp.
    pub(crate) fn pop_oldest(&mut self) -> Option<u64> {
        self.items.pop_front().map(|(stamp, _)| stamp)
    }

    /// Drops the oldest if it carries `stamp`.
    pub(crate) fn pop_if_oldest(&mut self, stamp: u64) -> bool {
        if self.items.front().is_some_and(|(first, _)| *first == stamp) {
            self.items.pop_front();
            return true;
        }
        false
    }
}

/// The limits, from [`crate::EmulatorConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) per_conversation: usize,
    pub(crate) total: usize,
}

/// The order activities were kept in, across conversations, for dropping the oldest.
#[derive(Debug)]
pub(crate) struct Retention {
    limits: Limits,
    /// Stamp → where the activity is kept. Stamps grow, so the first entry is the oldest.
    order: BTreeMap<u64, (Arc<str>, Lane)>,
    next_stamp: u64,
    dropped: u64,
}

impl Retention {
    pub(crate) fn new(limits: Limits) -> Self {
        Retention {
            limits,
            order: BTreeMap::new(),
            next_stamp: 0,
            dropped: 0,
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// A stamp for an activity about to be kept in `conversation`'s `lane`.
    pub(crate) fn stamp(&mut self, conversation: &Arc<str>, lane: Lane) -> u64 {
        self.next_stamp += 1;
        self.order
            .insert(self.next_stamp, (conversation.clone(), lane));
        self.next_stamp
    }

    /// The activity with `stamp` was dropped by its conversation's own limit.
    pub(crate) fn dropped_by_conversation(&mut self, stamp: u64) {
        if self.order.remove(&stamp).is_some() {
            self.dropped += 1;
        }
    }

    /// The oldest activity kept, when more than `total` are: it is no longer counted as kept,
    /// and the caller drops it from its conversation.
    pub(crate) fn take_over_total(&mut self) -> Option<(u64, Arc<str>, Lane)> {
        if self.order.len() <= self.limits.total {
            return None;
        }
        let (stamp, (conversation, lane)) = self.order.pop_first()?;
        self.dropped += 1;
        Some((stamp, conversation, lane))
    }

    /// Activities kept now, both lanes.
    pub(crate) fn kept(&self) -> usize {
        self.order.len()
    }

    /// Activities dropped so far, both lanes.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_anywhere_goes_first_once_over_the_total() {
        let mut retention = Retention::new(Limits {
            per_conversation: 10,
            total: 2,
        });
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let first = retention.stamp(&a, Lane::Sent);
        retention.stamp(&b, Lane::Inbound);
        assert_eq!(retention.take_over_total(), None);
        retention.stamp(&b, Lane::Sent);
        assert_eq!(retention.take_over_total(), Some((first, a, Lane::Sent)));
        assert_eq!((retention.kept(), retention.dropped()), (2, 1));
    }

    #[test]
    fn a_conversation_drops_only_its_own_oldest() {
        let mut kept = Kept::default();
        kept.push(1, "one");
        kept.push(4, "four");
        assert!(!kept.pop_if_oldest(4));
        assert_eq!(kept.pop_oldest(), Some(1));
        assert!(kept.pop_if_oldest(4));
        assert_eq!(kept.len(), 0);
    }
}
