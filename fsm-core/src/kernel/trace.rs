//! The live trace: a bounded ring of the most recent decisions, readable while the kernel
//! runs.

use crate::sync::Recover;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use crate::store::MachineId;

/// How a traced command ended. Its names (`not_stored`, as [`TraceOutcome::name`] gives them)
/// are the ones the admin protocol, the trace filters and the metrics' `outcome` label use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TraceOutcome {
    /// Applied and durable.
    Committed,
    /// A retried idempotency key: answered with the original outcome, not applied again.
    Duplicate,
    /// Refused by the machine.
    Rejected,
    /// Postponed by the state's `defer(..)`.
    Deferred,
    /// Dropped by policy.
    Dumped,
    /// Handed to the overflow sink.
    Delegated,
    /// Its deadline passed.
    Expired,
    /// The store refused the snapshot; nothing stored.
    NotStored,
    /// The store's outcome is unknown; the machine was reloaded.
    OutcomeUnknown,
    /// The machine is quarantined, could not be loaded, or could not be encoded.
    Unavailable,
    /// Another node owns the machine; not applied here.
    Fenced,
}

impl TraceOutcome {
    /// Every outcome, in the order above.
    pub const ALL: [TraceOutcome; 11] = [
        TraceOutcome::Committed,
        TraceOutcome::Duplicate,
        TraceOutcome::Rejected,
        TraceOutcome::Deferred,
        TraceOutcome::Dumped,
        TraceOutcome::Delegated,
        TraceOutcome::Expired,
        TraceOutcome::NotStored,
        TraceOutcome::OutcomeUnknown,
        TraceOutcome::Unavailable,
        TraceOutcome::Fenced,
    ];

    /// The outcome's name: `committed`, `not_stored`, ...
    pub fn name(self) -> &'static str {
        match self {
            TraceOutcome::Committed => "committed",
            TraceOutcome::Duplicate => "duplicate",
            TraceOutcome::Rejected => "rejected",
            TraceOutcome::Deferred => "deferred",
            TraceOutcome::Dumped => "dumped",
            TraceOutcome::Delegated => "delegated",
            TraceOutcome::Expired => "expired",
            TraceOutcome::NotStored => "not_stored",
            TraceOutcome::OutcomeUnknown => "outcome_unknown",
            TraceOutcome::Unavailable => "unavailable",
            TraceOutcome::Fenced => "fenced",
        }
    }

    /// The outcome with this name.
    pub fn named(name: &str) -> Option<TraceOutcome> {
        TraceOutcome::ALL.into_iter().find(|o| o.name() == name)
    }
}

impl fmt::Display for TraceOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Where a traced command came from.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TraceSource {
    /// Submitted by a caller (`submit`, a batch, the cluster's inbox).
    #[default]
    Command,
    /// Fed back by an effect worker (an effect's result or its failure event).
    Effect,
    /// Fired by one of the machine's timers.
    Timer,
}

impl TraceSource {
    /// The source's name: `command`, `effect` or `timer`.
    pub fn name(self) -> &'static str {
        match self {
            TraceSource::Command => "command",
            TraceSource::Effect => "effect",
            TraceSource::Timer => "timer",
        }
    }
}

/// One decision of the kernel: when, which machine, from which state, on which event, to
/// which state (if it moved), how it ended, and how long each step took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    /// Time since the kernel started (on the kernel's clock).
    pub at: Duration,
    /// The machine.
    pub machine: MachineId,
    /// The state the command found.
    pub from: &'static str,
    /// The event's name.
    pub event: &'static str,
    /// The state entered, for a committed (or duplicate) transition.
    pub to: Option<&'static str>,
    /// How it ended.
    pub outcome: TraceOutcome,
    /// Where the command came from.
    pub source: TraceSource,
    /// Effects the transition emitted (durable and at most once; 0 unless committed).
    pub effects: u32,
    /// Who took the event, when not the state itself: the superstate whose transition it was
    /// (the event bubbled up to it), or `any state` for one declared on the machine.
    pub handled_by: Option<&'static str>,
    /// From acceptance to the shard taking it.
    pub wait: Duration,
    /// The machine's work on it.
    pub apply: Duration,
    /// The group commit it waited for (zero if nothing was stored).
    pub persist: Duration,
    /// From acceptance to the answer.
    pub end_to_end: Duration,
}

impl fmt::Display for TraceEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>10.3?} {} {} --{}--> {} {} (wait {:?}, apply {:?}, persist {:?})",
            self.at,
            self.machine,
            self.from,
            self.event,
            self.to.unwrap_or("-"),
            self.outcome,
            self.wait,
            self.apply,
            self.persist
        )
    }
}

/// Which trace entries to read; every criterion set must match.
///
/// ```
/// use fsm_core::kernel::{TraceFilter, TraceOutcome};
///
/// let paid_orders = TraceFilter::new().state("Paid").outcome(TraceOutcome::Committed);
/// # let _ = paid_orders;
/// ```
#[derive(Clone, Debug, Default)]
pub struct TraceFilter {
    machine: Option<MachineId>,
    state: Option<String>,
    event: Option<String>,
    outcome: Option<TraceOutcome>,
    since: Option<Duration>,
    limit: Option<usize>,
}

impl TraceFilter {
    /// Matches everything.
    pub fn new() -> Self {
        TraceFilter::default()
    }

    /// Only this machine.
    #[must_use]
    pub fn machine(mut self, id: &MachineId) -> Self {
        self.machine = Some(id.clone());
        self
    }

    /// Only entries that left or entered the state named `state`.
    #[must_use]
    pub fn state(mut self, state: &str) -> Self {
        self.state = Some(state.to_owned());
        self
    }

    /// Only this event.
    #[must_use]
    pub fn event(mut self, event: &str) -> Self {
        self.event = Some(event.to_owned());
        self
    }

    /// Only this outcome.
    #[must_use]
    pub fn outcome(mut self, outcome: TraceOutcome) -> Self {
        self.outcome = Some(outcome);
        self
    }

    /// Only entries decided at or after `at` (time since the kernel started, as
    /// [`TraceEntry::at`]).
    #[must_use]
    pub fn since(mut self, at: Duration) -> Self {
        self.since = Some(at);
        self
    }

    /// At most the `n` newest matching entries.
    #[must_use]
    pub fn last(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    fn matches(&self, e: &TraceEntry) -> bool {
        self.machine.as_ref().is_none_or(|m| *m == e.machine)
            && self
                .state
                .as_deref()
                .is_none_or(|s| e.from == s || e.to == Some(s))
            && self.event.as_deref().is_none_or(|ev| e.event == ev)
            && self.outcome.is_none_or(|o| o == e.outcome)
            && self.since.is_none_or(|t| e.at >= t)
    }
}

/// The live trace: one ring per shard, so that shards never write to the same lock; reads
/// merge the rings by time. A read returns at most `capacity` entries (the newest over all
/// shards), as one ring of that capacity would.
pub(crate) struct Trace {
    capacity: usize,
    rings: Box<[Ring]>,
}

/// One shard's ring, on a cache line of its own.
#[repr(align(128))]
struct Ring {
    entries: Mutex<RingEntries>,
}

struct RingEntries {
    entries: VecDeque<TraceEntry>,
    /// Entries ever appended: the position after the newest.
    appended: u64,
}

/// Where a follower of the trace has read up to: a position in each shard's ring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TraceCursor(Box<[u64]>);

/// What [`Trace::read_after`] found.
#[cfg_attr(not(feature = "admin"), allow(dead_code))]
pub(crate) struct Followed {
    /// Matching entries appended after the cursor, oldest first.
    pub(crate) entries: Vec<TraceEntry>,
    /// The cursor to read from next.
    pub(crate) cursor: TraceCursor,
    /// Entries appended after the cursor that the rings dropped before this read (matching
    /// or not: they are gone).
    pub(crate) overrun: u64,
}

impl Trace {
    pub(crate) fn new(capacity: usize, shards: usize) -> Self {
        Trace {
            capacity,
            rings: (0..shards.max(1))
                .map(|_| Ring {
                    entries: Mutex::new(RingEntries {
                        entries: VecDeque::with_capacity(capacity.min(1 << 12)),
                        appended: 0,
                    }),
                })
                .collect(),
        }
    }

    /// Entries kept per shard.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    fn ring(&self, shard: usize) -> std::sync::MutexGuard<'_, RingEntries> {
        self.rings[shard].entries.lock().recover()
    }

    /// Appends a shard's batch of entries under its ring's lock, dropping the oldest beyond
    /// the capacity.
    pub(crate) fn extend(&self, shard: usize, batch: impl IntoIterator<Item = TraceEntry>) {
        if self.capacity == 0 {
            return;
        }
        let mut ring = self.ring(shard);
        for e in batch {
            if ring.entries.len() == self.capacity {
                ring.entries.pop_front();
            }
            ring.entries.push_back(e);
            ring.appended += 1;
        }
    }

    /// Matching entries, oldest first: the newest `capacity` (or the filter's `last`) over all
    /// shards.
    pub(crate) fn read(&self, filter: &TraceFilter) -> Vec<TraceEntry> {
        let limit = filter.limit.unwrap_or(usize::MAX).min(self.capacity);
        let mut out: Vec<TraceEntry> = Vec::new();
        for shard in 0..self.rings.len() {
            let ring = self.ring(shard);
            let from = out.len();
            out.extend(
                ring.entries
                    .iter()
                    .rev()
                    .filter(|e| filter.matches(e))
                    .take(limit)
                    .cloned(),
            );
            out[from..].reverse();
        }
        merge_by_time(&mut out);
        let excess = out.len().saturating_sub(limit);
        out.drain(..excess);
        out
    }

    /// What the rings still hold: how many entries they overwrote since the kernel started,
    /// and, if they overwrote any, the time from which every decision is still there (the
    /// latest first entry of a ring that dropped some). A read for anything earlier can miss
    /// decisions.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn window(&self) -> (u64, Option<Duration>) {
        let mut overwritten = 0;
        let mut complete_since: Option<Duration> = None;
        for shard in 0..self.rings.len() {
            let ring = self.ring(shard);
            let dropped = ring.appended - ring.entries.len() as u64;
            overwritten += dropped;
            if dropped > 0 {
                if let Some(first) = ring.entries.front() {
                    complete_since = Some(complete_since.map_or(first.at, |t| t.max(first.at)));
                }
            }
        }
        (overwritten, complete_since)
    }

    /// The position after the newest entry of every ring: where a follower starts.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn cursor(&self) -> TraceCursor {
        TraceCursor(
            (0..self.rings.len())
                .map(|shard| self.ring(shard).appended)
                .collect(),
        )
    }

    /// Entries appended after `cursor` that match `filter` (its `last` ignored), oldest
    /// first, at most `max` of them from each ring; the cursor moves past every entry looked
    /// at.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn read_after(
        &self,
        cursor: &TraceCursor,
        filter: &TraceFilter,
        max: usize,
    ) -> Followed {
        let mut entries = Vec::new();
        let mut next = Vec::with_capacity(self.rings.len());
        let mut overrun = 0;
        for shard in 0..self.rings.len() {
            let ring = self.ring(shard);
            let from = cursor.0.get(shard).copied().unwrap_or(0);
            let oldest = ring.appended - ring.entries.len() as u64;
            overrun += oldest.saturating_sub(from);
            let mut at = from.max(oldest);
            let mut taken = 0;
            while at < ring.appended && taken < max {
                let e = &ring.entries[(at - oldest) as usize];
                if filter.matches(e) {
                    entries.push(e.clone());
                    taken += 1;
                }
                at += 1;
            }
            next.push(at);
        }
        merge_by_time(&mut entries);
        Followed {
            entries,
            cursor: TraceCursor(next.into_boxed_slice()),
            overrun,
        }
    }
}

/// Orders entries gathered ring by ring by the time they were decided (stable: within a
/// ring, entries of one instant keep their order).
fn merge_by_time(entries: &mut [TraceEntry]) {
    entries.sort_by_key(|e| e.at);
}
