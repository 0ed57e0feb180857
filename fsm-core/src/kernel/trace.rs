//! The live trace: a bounded ring of the most recent decisions, readable while the kernel
//! runs.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::store::MachineId;

/// How a traced command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

impl fmt::Display for TraceOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
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

/// The ring buffer.
pub(crate) struct Trace {
    capacity: usize,
    entries: Mutex<Ring>,
}

struct Ring {
    entries: VecDeque<TraceEntry>,
    /// Entries ever appended: the position after the newest.
    appended: u64,
}

/// What [`Trace::read_after`] found.
#[cfg_attr(not(feature = "admin"), allow(dead_code))]
pub(crate) struct Followed {
    /// Matching entries appended after the cursor, oldest first.
    pub(crate) entries: Vec<TraceEntry>,
    /// The cursor to read from next.
    pub(crate) cursor: u64,
    /// Entries appended after the cursor that the ring dropped before this read (matching
    /// or not: they are gone).
    pub(crate) overrun: u64,
}

impl Trace {
    pub(crate) fn new(capacity: usize) -> Self {
        Trace {
            capacity,
            entries: Mutex::new(Ring {
                entries: VecDeque::with_capacity(capacity.min(1 << 16)),
                appended: 0,
            }),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Appends a batch of entries under one lock, dropping the oldest beyond the capacity.
    pub(crate) fn extend(&self, batch: impl IntoIterator<Item = TraceEntry>) {
        if self.capacity == 0 {
            return;
        }
        let mut ring = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        for e in batch {
            if ring.entries.len() == self.capacity {
                ring.entries.pop_front();
            }
            ring.entries.push_back(e);
            ring.appended += 1;
        }
    }

    /// Matching entries, oldest first.
    pub(crate) fn read(&self, filter: &TraceFilter) -> Vec<TraceEntry> {
        let ring = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<TraceEntry> = ring
            .entries
            .iter()
            .rev()
            .filter(|e| filter.matches(e))
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// The position after the newest entry: where a follower starts.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn cursor(&self) -> u64 {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .appended
    }

    /// Entries appended after `cursor` that match `filter` (its `last` ignored), oldest
    /// first, at most `max` of them; the cursor moves past every entry looked at.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn read_after(&self, cursor: u64, filter: &TraceFilter, max: usize) -> Followed {
        let ring = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest = ring.appended - ring.entries.len() as u64;
        let overrun = oldest.saturating_sub(cursor);
        let mut at = cursor.max(oldest);
        let mut entries = Vec::new();
        while at < ring.appended && entries.len() < max {
            let e = &ring.entries[(at - oldest) as usize];
            if filter.matches(e) {
                entries.push(e.clone());
            }
            at += 1;
        }
        Followed {
            entries,
            cursor: at,
            overrun,
        }
    }
}
