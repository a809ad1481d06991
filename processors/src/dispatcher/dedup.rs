//! The bounded window of command ids the dispatcher has already answered.
//!
//! It catches the common redeliveries cheaply (a rebalance or a restart replays the
//! commands after the last committed offset; the saga's own retries reuse the commandId)
//! so the provider is not called again for them. It is in memory and bounded, so it
//! forgets: after a restart, or for a command older than the window, the provider is
//! called again — which is harmless, because the provider deduplicates by the
//! `Idempotency-Key` (the paymentId). That key is the real guarantee; this window is an
//! optimisation.

use std::collections::{HashSet, VecDeque};

use uuid::Uuid;

/// Command ids remembered by default. 16 bytes each, twice (set and queue), plus the
/// set's overhead: about 5 MB.
pub const WINDOW_MAX: usize = 100_000;

/// Remembers the last `capacity` command ids.
#[derive(Debug)]
pub struct DedupWindow {
    seen: HashSet<Uuid>,
    /// Insertion order, for forgetting the oldest first; each id appears once.
    order: VecDeque<Uuid>,
    capacity: usize,
}

impl DedupWindow {
    /// A window of `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { seen: HashSet::new(), order: VecDeque::new(), capacity }
    }

    /// Whether `id` was answered within the window.
    pub fn contains(&self, id: &Uuid) -> bool {
        self.seen.contains(id)
    }

    /// Remembers `id`, forgetting the oldest id when full.
    pub fn insert(&mut self, id: Uuid) {
        if !self.seen.insert(id) {
            return;
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        debug_assert_eq!(self.seen.len(), self.order.len());
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_up_to_its_capacity_and_forgets_the_oldest_first() {
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        let mut window = DedupWindow::new(3);
        for id in &ids[..3] {
            window.insert(*id);
        }
        window.insert(ids[0]); // again: no change, no reordering
        assert_eq!(window.len(), 3);
        window.insert(ids[3]);
        assert_eq!(window.len(), 3);
        assert!(!window.contains(&ids[0]), "the oldest is forgotten");
        assert!(ids[1..].iter().all(|id| window.contains(id)));
        assert!(DedupWindow::new(0).is_empty(), "a zero capacity is one");
    }
}
