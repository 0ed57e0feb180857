//! Each shard's index of when its machines must be looked at: their timers' deadlines and
//! their owed effects' retries.
//!
//! Per shard, a binary heap of `(deadline, machine)` holds each machine's earliest deadline,
//! so the shard sleeps exactly until the next one. Entries are never updated in place: a
//! re-armed timer pushes a new entry and the old one is recognised as stale when it comes up
//! (the resident machine's timers no longer hold it). Evicted machines keep their timers: their
//! entries stay in the heap (24 bytes and the id each), and a machine not in memory is loaded
//! from the store when an entry of its comes due. A stale entry of an evicted machine (it was
//! re-armed before it was evicted) costs one such load, after which the machine is resident
//! again and its real deadline indexed; the heap is rebuilt when stale entries outnumber
//! live ones, keeping one entry per machine. The store is never scanned for deadlines.
//!
//! A machine whose first owed effect waits for its retry delay has an entry at that moment
//! too (machines that owe effects stay in memory, so such an entry is never a load).
//!
//! A heap beats a timing wheel here because deadlines span milliseconds to years and the
//! shard only ever needs the minimum: push and pop are `O(log n)` on 24-byte entries, and a
//! wheel's slots would cost memory per tick of range.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use crate::store::MachineId;

/// A shard's index of due times (see the module documentation): a min-heap of
/// `(deadline, machine)`, each entry possibly stale.
#[derive(Default)]
pub(crate) struct TimerIndex {
    heap: BinaryHeap<Reverse<(u64, MachineId)>>,
    /// Heap length after the last rebuild, to tell when stale entries dominate.
    rebuilt_at: usize,
}

impl TimerIndex {
    /// Machine `id` has a timer due at `at`, or is to be looked at then (loaded from the store
    /// if it is not in memory).
    pub(crate) fn schedule(&mut self, id: &MachineId, at: u64) {
        self.heap.push(Reverse((at, id.clone())));
    }

    /// The earliest entry, which may be stale.
    pub(crate) fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the machines with an entry due at `now`, each once, in deadline order.
    pub(crate) fn take_due(&mut self, now: u64) -> Vec<MachineId> {
        let mut out: Vec<MachineId> = Vec::new();
        let mut seen: HashSet<MachineId> = HashSet::new();
        while self.heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let Some(Reverse((_, id))) = self.heap.pop() else {
                break;
            };
            if seen.insert(id.clone()) {
                out.push(id);
            }
        }
        out
    }

    /// Whether stale entries outnumber live ones enough to rebuild the heap.
    pub(crate) fn wants_rebuild(&self) -> bool {
        self.heap.len() > 2 * self.rebuilt_at + 1024
    }

    /// Rebuilds the heap: a resident machine keeps exactly its earliest deadline (`resident`
    /// says which machines are in memory, and when their first timer is due); a machine not
    /// in memory keeps its earliest entry, which is either its real first deadline or a stale
    /// one that loads it, whereupon its real one is indexed again.
    pub(crate) fn rebuild(&mut self, resident: impl Fn(&MachineId) -> Option<Option<u64>>) {
        let mut first: HashMap<MachineId, u64> = HashMap::new();
        for Reverse((at, id)) in std::mem::take(&mut self.heap).into_vec() {
            match resident(&id) {
                Some(Some(due)) => {
                    first.insert(id, due);
                }
                Some(None) => {}
                None => {
                    let e = first.entry(id).or_insert(at);
                    *e = (*e).min(at);
                }
            }
        }
        self.heap = first
            .into_iter()
            .map(|(id, at)| Reverse((at, id)))
            .collect();
        self.heap.shrink_to_fit();
        self.rebuilt_at = self.heap.len();
    }

    /// Entries now, stale ones included.
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> MachineId {
        MachineId::new(s).unwrap()
    }

    #[test]
    fn due_machines_come_once_each_in_deadline_order() {
        let mut index = TimerIndex::default();
        index.schedule(&id("b"), 20);
        index.schedule(&id("a"), 10);
        index.schedule(&id("b"), 15);
        index.schedule(&id("c"), 99);
        assert_eq!(index.next(), Some(10));
        assert_eq!(index.take_due(20), vec![id("a"), id("b")]);
        assert_eq!(index.next(), Some(99));
    }

    #[test]
    fn a_rebuild_keeps_one_entry_per_machine() {
        let mut index = TimerIndex::default();
        for at in 0..3000 {
            index.schedule(&id("busy"), at);
        }
        index.schedule(&id("idle"), 7);
        index.schedule(&id("idle"), 5);
        index.schedule(&id("done"), 1);
        assert!(index.wants_rebuild());
        // `busy` is resident with its first timer at 2999, `done` resident with none, `idle`
        // evicted: it keeps its earliest entry.
        index.rebuild(|m| match m.as_str() {
            "busy" => Some(Some(2999)),
            "done" => Some(None),
            _ => None,
        });
        assert_eq!(index.len(), 2);
        assert_eq!(index.next(), Some(5));
        assert_eq!(index.take_due(u64::MAX), vec![id("idle"), id("busy")]);
    }
}
