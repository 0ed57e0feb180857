//! White-box metrics of a kernel: outcome counts and latency histograms per shard, effect
//! workers' failures and restarts, aggregated per kernel.

use super::trace::TraceOutcome;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::queue::{LatencySummary, MAX_NANOS};

/// How commands ended, counted by the shard that decided them (plus the refusals its inbox
/// decided at submit time).
/// On the admin protocol's wire as they are here (`admin::proto::Counts`), except
/// `duplicates`, named `duplicate` there as the outcome is everywhere else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct KernelCounts {
    /// Submit calls that reached a decision at the inbox (accepted or refused).
    pub submitted: u64,
    /// Events fed back by effect workers (not counted in `submitted`).
    pub fed_back: u64,
    /// Timer firings decided (not counted in `submitted` or `fed_back`; their outcomes are
    /// counted with the others).
    pub timers_fired: u64,
    /// Applied and durable.
    pub committed: u64,
    /// Retried idempotency keys answered with their original outcome.
    #[serde(rename = "duplicate")]
    pub duplicates: u64,
    /// Refused by the machine (of which `panicked` by a panicking handler).
    pub rejected: u64,
    /// Handlers or invariants that panicked (their commands are in `rejected`).
    pub panicked: u64,
    /// Events raised by handlers and applied as part of their command (counted in no other
    /// field: the command's outcome is theirs).
    pub raised: u64,
    /// Deadline passed (at submit or in the inbox).
    pub expired: u64,
    /// Dropped by policy (inbox overload, state `dump(..)`, defer limit).
    pub dumped: u64,
    /// Handed to the overflow sink.
    pub delegated: u64,
    /// Store refused the snapshot; nothing stored.
    pub not_stored: u64,
    /// Store outcome unknown; machine reloaded.
    pub outcome_unknown: u64,
    /// Machine quarantined, not loadable or not encodable.
    pub unavailable: u64,
    /// Another node owns the machine: not applied here (handed back when not yet applied).
    pub fenced: u64,
    /// Answered closed at shutdown, or refused because the kernel was shutting down.
    pub closed: u64,
    /// Refused by a full inbox under back-pressure ("retry later").
    pub full: u64,
    /// Refused because the machine's effect worker escalated.
    pub escalated: u64,
    /// Postponed by `defer(..)` and waiting now.
    pub deferred: u64,
    /// Durable effects owed now (in machines' outboxes, running or waiting), by the machines
    /// in memory (every machine that owes one stays in memory).
    pub owed: u64,
    /// Waiting in the inbox now.
    pub queued: u64,
}

impl KernelCounts {
    /// The commands by how they ended, under the one set of names that the trace
    /// ([`TraceOutcome::name`](super::TraceOutcome::name), for the outcomes a trace shows), the
    /// admin protocol's counts and the metrics' `outcome` label use.
    pub fn by_outcome(&self) -> [(&'static str, u64); 14] {
        [
            (TraceOutcome::Committed.name(), self.committed),
            (TraceOutcome::Duplicate.name(), self.duplicates),
            (TraceOutcome::Rejected.name(), self.rejected),
            ("panicked", self.panicked),
            (TraceOutcome::Expired.name(), self.expired),
            (TraceOutcome::Dumped.name(), self.dumped),
            (TraceOutcome::Delegated.name(), self.delegated),
            (TraceOutcome::NotStored.name(), self.not_stored),
            (TraceOutcome::OutcomeUnknown.name(), self.outcome_unknown),
            (TraceOutcome::Unavailable.name(), self.unavailable),
            (TraceOutcome::Fenced.name(), self.fenced),
            ("closed", self.closed),
            ("full", self.full),
            ("escalated", self.escalated),
        ]
    }

    pub(crate) fn add(&mut self, o: &KernelCounts) {
        self.submitted += o.submitted;
        self.fed_back += o.fed_back;
        self.timers_fired += o.timers_fired;
        self.committed += o.committed;
        self.duplicates += o.duplicates;
        self.rejected += o.rejected;
        self.panicked += o.panicked;
        self.raised += o.raised;
        self.expired += o.expired;
        self.dumped += o.dumped;
        self.delegated += o.delegated;
        self.not_stored += o.not_stored;
        self.outcome_unknown += o.outcome_unknown;
        self.unavailable += o.unavailable;
        self.fenced += o.fenced;
        self.closed += o.closed;
        self.full += o.full;
        self.escalated += o.escalated;
        self.deferred += o.deferred;
        self.owed += o.owed;
        self.queued += o.queued;
    }
}

/// The histograms a shard records into (nanoseconds).
#[derive(Clone, Debug)]
pub(crate) struct Histograms {
    pub(crate) wait: Histogram<u64>,
    pub(crate) apply: Histogram<u64>,
    pub(crate) persist: Histogram<u64>,
    pub(crate) end_to_end: Histogram<u64>,
    pub(crate) batch: Histogram<u64>,
}

impl Histograms {
    pub(crate) fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, MAX_NANOS, 2).expect("constant, valid bounds");
        Histograms {
            wait: h(),
            apply: h(),
            persist: h(),
            end_to_end: h(),
            batch: h(),
        }
    }

    fn add(&mut self, o: &Histograms) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.wait.add(&o.wait);
        let _ = self.apply.add(&o.apply);
        let _ = self.persist.add(&o.persist);
        let _ = self.end_to_end.add(&o.end_to_end);
        let _ = self.batch.add(&o.batch);
    }
}

/// What a shard keeps behind its stats lock, updated once per batch.
pub(crate) struct ShardStats {
    pub(crate) counts: KernelCounts,
    pub(crate) hist: Histograms,
    pub(crate) commits: u64,
    pub(crate) snapshots: u64,
    pub(crate) resident: usize,
    pub(crate) timer_entries: usize,
    pub(crate) quarantined: usize,
    /// When the oldest effect owed by the shard's machines was first owed (kernel
    /// milliseconds), as of the last sweep.
    pub(crate) oldest_owed_since: Option<u64>,
    /// The shard's quarantined machines, published when the set changes.
    pub(crate) quarantine: Vec<std::sync::Arc<super::Quarantined>>,
    /// Committed transitions per declared transition (empty until the first is counted).
    pub(crate) transitions: Vec<u64>,
}

impl ShardStats {
    pub(crate) fn new() -> Self {
        ShardStats {
            counts: KernelCounts::default(),
            hist: Histograms::new(),
            commits: 0,
            snapshots: 0,
            resident: 0,
            timer_entries: 0,
            quarantined: 0,
            oldest_owed_since: None,
            quarantine: Vec::new(),
            transitions: Vec::new(),
        }
    }
}

/// Metrics of one shard, or of the whole kernel (the sum over shards).
#[derive(Clone, Debug, PartialEq)]
pub struct ShardMetrics {
    /// How commands ended.
    pub counts: KernelCounts,
    /// Group commits (one `put_many` each).
    pub commits: u64,
    /// Snapshots those commits wrote.
    pub snapshots: u64,
    /// Machines in memory now.
    pub resident: usize,
    /// Machines quarantined now.
    pub quarantined: usize,
    /// Entries in the shard's timer index now: about one per machine with a timer armed,
    /// resident or evicted (plus re-armed ones not yet dropped; rebuilt when those dominate).
    pub timer_entries: usize,
    /// The most commands that waited in an inbox at once.
    pub high_water: usize,
    /// How long the oldest effect owed now has been owed (as of the shard's last sweep, every
    /// quarter of the idle time), if any is owed.
    pub oldest_owed: Option<Duration>,
    /// From acceptance to the shard taking the command.
    pub wait: LatencySummary,
    /// The machine's work per command.
    pub apply: LatencySummary,
    /// Each group commit.
    pub persist: LatencySummary,
    /// From acceptance to the answer (the submitter's latency).
    pub end_to_end: LatencySummary,
    /// Commands per batch (recorded as "nanoseconds": read the numbers, not the unit).
    pub batch: LatencySummary,
    /// Committed transitions per declared transition, in the order of
    /// [`Table::transitions`](crate::Table::transitions): a command's own and those of the
    /// events it raised (empty until the first is counted). What a live statechart's edge
    /// rates are computed from.
    pub transitions: Vec<u64>,
}

impl ShardMetrics {
    pub(crate) fn of(
        counts: KernelCounts,
        hist: &Histograms,
        stats: &ShardStats,
        high_water: usize,
        now_ms: u64,
    ) -> Self {
        ShardMetrics {
            oldest_owed: stats
                .oldest_owed_since
                .map(|since| Duration::from_millis(now_ms.saturating_sub(since))),
            counts,
            commits: stats.commits,
            snapshots: stats.snapshots,
            resident: stats.resident,
            quarantined: stats.quarantined,
            timer_entries: stats.timer_entries,
            high_water,
            wait: LatencySummary::of(&hist.wait),
            apply: LatencySummary::of(&hist.apply),
            persist: LatencySummary::of(&hist.persist),
            end_to_end: LatencySummary::of(&hist.end_to_end),
            batch: LatencySummary::of(&hist.batch),
            transitions: stats.transitions.clone(),
        }
    }
}

/// One effect worker's record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerMetrics {
    /// Effects run (successful or not).
    pub effects: u64,
    /// Effects that returned an error (failures, not crashes).
    pub errors: u64,
    /// Effects that panicked.
    pub panics: u64,
    /// Times the worker was restarted.
    pub restarts: u64,
    /// Events fed back to machines (results and failure events).
    pub fed_back: u64,
    /// Effects not run because the kernel shut down (durable ones stay owed).
    pub abandoned: u64,
    /// Failed attempts of durable effects that will be retried.
    pub retries: u64,
    /// Durable effects given up (their last attempt failed).
    pub given_up: u64,
    /// Effects waiting for the escalated worker's restart now.
    pub parked: u64,
    /// Whether the worker exceeded its restart intensity and is stopped.
    pub escalated: bool,
}

/// A snapshot of a kernel's metrics, taken without stopping it.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelMetrics {
    /// The machine type.
    pub machine: &'static str,
    /// Per shard.
    pub shards: Vec<ShardMetrics>,
    /// All shards together (histograms merged, so the percentiles are the kernel's).
    pub total: ShardMetrics,
    /// Per effect worker.
    pub workers: Vec<WorkerMetrics>,
    /// Times the store was reopened after it stopped (poisoned).
    pub store_reopens: u64,
    /// Time since the kernel started.
    pub uptime: Duration,
}

impl KernelMetrics {
    pub(crate) fn total(
        shards: &[(KernelCounts, Histograms, usize)],
        stats: &[ShardMetrics],
        now_ms: u64,
    ) -> ShardMetrics {
        let mut counts = KernelCounts::default();
        let mut hist = Histograms::new();
        for (c, h, _) in shards {
            counts.add(c);
            hist.add(h);
        }
        let mut total = ShardStats::new();
        for s in stats {
            total.commits += s.commits;
            total.snapshots += s.snapshots;
            total.resident += s.resident;
            total.quarantined += s.quarantined;
            total.timer_entries += s.timer_entries;
            if total.transitions.len() < s.transitions.len() {
                total.transitions.resize(s.transitions.len(), 0);
            }
            for (t, n) in total.transitions.iter_mut().zip(&s.transitions) {
                *t += n;
            }
        }
        let high_water = shards.iter().map(|s| s.2).max().unwrap_or(0);
        let mut all = ShardMetrics::of(counts, &hist, &total, high_water, now_ms);
        all.oldest_owed = stats.iter().filter_map(|s| s.oldest_owed).max();
        all
    }

    /// Worker restarts, summed.
    pub fn restarts(&self) -> u64 {
        self.workers.iter().map(|w| w.restarts).sum()
    }
}

impl fmt::Display for KernelMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.total;
        let c = &t.counts;
        writeln!(
            f,
            "kernel of {}: {} shards, {} machines resident, {} quarantined, up {:.1?}",
            self.machine,
            self.shards.len(),
            t.resident,
            t.quarantined,
            self.uptime
        )?;
        writeln!(
            f,
            "  submitted {} (+{} fed back, +{} timer firings): committed {}, duplicates {}, rejected {} ({} panicked), raised {}, expired {}, dumped {}, delegated {}, not stored {}, outcome unknown {}, unavailable {}, fenced {}, closed {}, full {}, escalated {}; deferred now {}, queued now {}, effects owed now {} (oldest {:?})",
            c.submitted, c.fed_back, c.timers_fired, c.committed, c.duplicates, c.rejected, c.panicked, c.raised, c.expired, c.dumped,
            c.delegated, c.not_stored, c.outcome_unknown, c.unavailable, c.fenced, c.closed, c.full, c.escalated,
            c.deferred, c.queued, c.owed, t.oldest_owed
        )?;
        writeln!(
            f,
            "  {} group commits wrote {} snapshots; batch size p50 {} p99 {} max {}",
            t.commits,
            t.snapshots,
            t.batch.p50.as_nanos(),
            t.batch.p99.as_nanos(),
            t.batch.max.as_nanos()
        )?;
        writeln!(f, "  wait       {}", t.wait)?;
        writeln!(f, "  apply      {}", t.apply)?;
        writeln!(f, "  persist    {}", t.persist)?;
        write!(f, "  end to end {}", t.end_to_end)?;
        for (i, w) in self.workers.iter().enumerate() {
            write!(
                f,
                "\n  worker {i}: {} effects, {} errors, {} panics, {} restarts, {} retries, {} given up, {} fed back, {} abandoned, {} waiting{}",
                w.effects,
                w.errors,
                w.panics,
                w.restarts,
                w.retries,
                w.given_up,
                w.fed_back,
                w.abandoned,
                w.parked,
                if w.escalated { ", ESCALATED" } else { "" }
            )?;
        }
        Ok(())
    }
}
