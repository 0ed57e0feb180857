//! Where the kernel keeps time for timers: the clock that places deadlines, how a timer's event
//! is stored, and each shard's index of when its machines' timers are due.
//!
//! # The clock
//! A deadline is stored as wall-clock milliseconds since the UNIX epoch, because it must mean
//! the same moment to the next process, which shares no monotonic clock with this one. The
//! kernel reads the wall clock **once**, at start ([`TimeBase`]), and from then on counts on the
//! monotonic [`Clock::now`]: a clock step while it runs (NTP, an operator) moves no timer.
//! A step while the process is down is the one thing a wall deadline cannot tell from time
//! passing; recovery bounds it: a restored timer never waits longer than the duration it was
//! armed for (a step back of an hour does not silence a pacemaker for an hour), and one whose
//! deadline passed (or that a step forward made due) fires promptly.
//!
//! # The index
//! Per shard, a binary heap of `(deadline, machine)` holds each machine's earliest deadline,
//! so the shard sleeps exactly until the next one. Entries are never updated in place: a
//! re-armed timer pushes a new entry and the old one is recognised as stale when it comes up
//! (the resident machine's timers no longer hold it). Evicted machines keep their timers: their
//! entries stay in the heap (24 bytes and the id each), and a machine not in memory is loaded
//! from the store when an entry of its comes due. A stale entry of an evicted machine (it was
//! re-armed before it was evicted) costs one such load, after which the machine is resident
//! again and its real deadline indexed; the heap is rebuilt when stale entries outnumber
//! live ones, keeping one entry per machine. The store is never scanned for deadlines. A heap beats a timing wheel here because deadlines span
//! milliseconds to years and the shard only ever needs the minimum: push and pop are
//! `O(log n)` on 24-byte entries, and a wheel's slots would cost memory per tick of range.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::queue::Clock;
use crate::store::MachineId;

/// The kernel's time line for deadlines: wall-clock milliseconds, read once at start and
/// advanced by the monotonic clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimeBase {
    anchor: Instant,
    wall_ms: u64,
}

impl TimeBase {
    pub(crate) fn new(clock: &Clock) -> Self {
        TimeBase {
            anchor: clock.now(),
            wall_ms: clock.wall_ms(),
        }
    }

    fn since(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.anchor)
    }

    /// `now` in the kernel's milliseconds, rounded down: a timer is due once this reaches its
    /// deadline, so it never fires early.
    pub(crate) fn floor(&self, now: Instant) -> u64 {
        let ms = u64::try_from(self.since(now).as_millis()).unwrap_or(u64::MAX);
        self.wall_ms.saturating_add(ms)
    }

    /// `now` in the kernel's milliseconds, rounded up, to arm from.
    pub(crate) fn ceil(&self, now: Instant) -> u64 {
        self.wall_ms
            .saturating_add(crate::timer::millis_ceil(self.since(now)))
    }

    /// How long from `now` until kernel millisecond `at`.
    pub(crate) fn until(&self, now: Instant, at: u64) -> Duration {
        let at = Duration::from_millis(at.saturating_sub(self.wall_ms));
        at.saturating_sub(self.since(now))
    }
}

/// How a kernel stores the events of named timers and event timeouts (state timeouts need
/// none: their event is in the table). Set by `KernelBuilder::timer_events`.
pub(crate) struct EventCodec<E> {
    pub(crate) encode: fn(&E) -> Result<Vec<u8>, String>,
    pub(crate) decode: fn(&[u8]) -> Result<E, String>,
}

// Two function pointers: copied whatever `E` is (a derive would ask `E: Clone`).
impl<E> Clone for EventCodec<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for EventCodec<E> {}

impl<E: Serialize + DeserializeOwned> EventCodec<E> {
    pub(crate) fn postcard() -> Self {
        EventCodec {
            encode: |e| {
                // Most events are a few bytes: encode on the stack, allocate exactly once.
                let mut buf = [0u8; 64];
                match postcard::to_slice(e, &mut buf) {
                    Ok(used) => Ok(used.to_vec()),
                    Err(_) => postcard::to_allocvec(e).map_err(|e| e.to_string()),
                }
            },
            decode: |b| match postcard::take_from_bytes(b) {
                Ok((e, [])) => Ok(e),
                Ok((_, rest)) => Err(format!("{} bytes after the event", rest.len())),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

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
    use crate::queue::ManualClock;

    fn id(s: &str) -> MachineId {
        MachineId::new(s).unwrap()
    }

    #[test]
    fn the_time_base_rounds_so_that_no_timer_fires_early() {
        let clock = ManualClock::at_wall_ms(1_000);
        let base = TimeBase::new(&clock.clock());
        clock.advance(Duration::from_micros(1500));
        let now = clock.now();
        assert_eq!((base.floor(now), base.ceil(now)), (1001, 1002));
        assert_eq!(base.until(now, 1003), Duration::from_micros(1500));
        assert_eq!(base.until(now, 900), Duration::ZERO);
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
