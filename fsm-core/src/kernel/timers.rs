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
//! (the resident machine's timers no longer hold it, or, for a machine evicted from memory,
//! the shard's record of evicted deadlines does not). Evicted machines keep their timers: the
//! shard keeps the earliest deadline of every machine it evicted, and loads the machine from
//! the store when it comes due. A heap beats a timing wheel here because deadlines span
//! milliseconds to years and the shard only ever needs the minimum: push and pop are
//! `O(log n)` on 24-byte entries, and a wheel's slots would cost memory per tick of range.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
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

impl<E: Serialize + DeserializeOwned> EventCodec<E> {
    pub(crate) fn postcard() -> Self {
        EventCodec {
            encode: |e| postcard::to_allocvec(e).map_err(|e| e.to_string()),
            decode: |b| match postcard::take_from_bytes(b) {
                Ok((e, [])) => Ok(e),
                Ok((_, rest)) => Err(format!("{} bytes after the event", rest.len())),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// A shard's index of due times (see the module documentation).
#[derive(Default)]
pub(crate) struct TimerIndex {
    heap: BinaryHeap<Reverse<(u64, MachineId)>>,
    /// The earliest deadline of each machine evicted from memory with timers armed (or to be
    /// reloaded to find out, after a failed commit).
    evicted: HashMap<MachineId, u64>,
    /// Heap length after the last rebuild, to tell when stale entries dominate.
    rebuilt_at: usize,
}

impl TimerIndex {
    /// Machine `id` has a timer due at `at` (or is to be looked at then).
    pub(crate) fn schedule(&mut self, id: &MachineId, at: u64) {
        self.heap.push(Reverse((at, id.clone())));
    }

    /// The earliest entry, which may be stale.
    pub(crate) fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the machines with an entry due at `now`, each once, in deadline order.
    pub(crate) fn take_due(&mut self, now: u64) -> Vec<(MachineId, u64)> {
        let mut out: Vec<(MachineId, u64)> = Vec::new();
        while let Some(Reverse((at, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, id))) = self.heap.pop() else {
                break;
            };
            if !out.iter().any(|(o, _)| *o == id) {
                out.push((id, at));
            }
        }
        out
    }

    /// Machine `id` left memory with `earliest` as its first deadline.
    pub(crate) fn evicted(&mut self, id: &MachineId, earliest: u64) {
        let at = self
            .evicted
            .get(id)
            .map_or(earliest, |&known| known.min(earliest));
        self.evicted.insert(id.clone(), at);
        self.schedule(id, at);
    }

    /// Machine `id` is back in memory: its slot is the authority on its timers again.
    pub(crate) fn loaded(&mut self, id: &MachineId) {
        self.evicted.remove(id);
    }

    /// Whether a heap entry at `at` for an evicted machine is its current one.
    pub(crate) fn is_current_evicted(&self, id: &MachineId, at: u64) -> bool {
        self.evicted.get(id) == Some(&at)
    }

    /// Forgets an evicted machine (quarantined, or owned by another node now).
    pub(crate) fn forget(&mut self, id: &MachineId) {
        self.evicted.remove(id);
    }

    /// Whether stale entries outnumber live ones enough to rebuild the heap.
    pub(crate) fn wants_rebuild(&self) -> bool {
        self.heap.len() > 2 * self.rebuilt_at + 1024
    }

    /// Rebuilds the heap from the live entries: `resident` (each resident machine's earliest
    /// deadline) and the evicted record.
    pub(crate) fn rebuild(&mut self, resident: impl IntoIterator<Item = (MachineId, u64)>) {
        let mut entries: Vec<Reverse<(u64, MachineId)>> = resident
            .into_iter()
            .map(|(id, at)| Reverse((at, id)))
            .collect();
        entries.extend(
            self.evicted
                .iter()
                .map(|(id, &at)| Reverse((at, id.clone()))),
        );
        self.heap = BinaryHeap::from(entries);
        self.heap.shrink_to_fit();
        self.rebuilt_at = self.heap.len();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
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
        let due = index.take_due(20);
        assert_eq!(due, vec![(id("a"), 10), (id("b"), 15)]);
        assert_eq!(index.next(), Some(99));
    }

    #[test]
    fn an_evicted_machine_keeps_only_its_current_entry() {
        let mut index = TimerIndex::default();
        index.schedule(&id("m"), 50);
        index.evicted(&id("m"), 70);
        assert!(!index.is_current_evicted(&id("m"), 50));
        assert!(index.is_current_evicted(&id("m"), 70));
        index.loaded(&id("m"));
        assert!(!index.is_current_evicted(&id("m"), 70));
    }

    #[test]
    fn a_rebuild_drops_stale_entries() {
        let mut index = TimerIndex::default();
        for at in 0..3000 {
            index.schedule(&id("busy"), at);
        }
        index.evicted(&id("idle"), 5);
        assert!(index.wants_rebuild());
        index.rebuild([(id("busy"), 2999)]);
        assert_eq!(index.len(), 2);
        assert_eq!(index.take_due(u64::MAX).len(), 2);
    }
}
