//! White-box metrics of a queue: counts that add up, depth, and latency histograms.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

/// How many commands ended which way, read in one consistent cut.
///
/// The counts always add up (see [`Counts::is_balanced`]):
/// `submitted = applied + rejected + dumped + delegated + expired + closed + full + queued + deferred`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Submit calls that reached a decision (every call counts once, however long it waited).
    pub submitted: u64,
    /// Commands the machine applied.
    pub applied: u64,
    /// Commands the machine rejected.
    pub rejected: u64,
    /// Commands dropped by policy (reported to the dump sink).
    pub dumped: u64,
    /// Commands handed to the overflow sink.
    pub delegated: u64,
    /// Commands whose deadline passed before they reached the machine.
    pub expired: u64,
    /// Commands answered `Closed` or handed back because the queue closed.
    pub closed: u64,
    /// Submits refused with "retry later" by a full queue under back-pressure.
    pub full: u64,
    /// Commands accepted and not yet decided: waiting in the queue or in the consumer's batch.
    pub queued: u64,
    /// Commands postponed by a state's `defer(..)`, waiting for a state change.
    pub deferred: u64,
}

impl Counts {
    /// Commands that reached a final outcome.
    pub fn decided(&self) -> u64 {
        self.applied
            + self.rejected
            + self.dumped
            + self.delegated
            + self.expired
            + self.closed
            + self.full
    }

    /// Whether every submitted command is accounted for exactly once.
    pub fn is_balanced(&self) -> bool {
        self.submitted == self.decided() + self.queued + self.deferred
    }
}

/// Percentiles of one latency histogram. Resolution: 1% of the value (two significant
/// digits), from 1 ns to one hour; longer values are recorded as one hour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// How many values were recorded.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest value recorded.
    pub max: Duration,
}

impl LatencySummary {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            p50: Duration::from_nanos(h.value_at_quantile(0.50)),
            p95: Duration::from_nanos(h.value_at_quantile(0.95)),
            p99: Duration::from_nanos(h.value_at_quantile(0.99)),
            max: Duration::from_nanos(h.max()),
        }
    }
}

impl fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:?} p95 {:?} p99 {:?} max {:?} (n={})",
            self.p50, self.p95, self.p99, self.max, self.count
        )
    }
}

/// The full latency histograms of a queue (nanoseconds), for export or custom quantiles.
#[derive(Clone, Debug)]
pub struct Latencies {
    /// From acceptance by the queue to the start of the machine's work on the command.
    pub wait: Histogram<u64>,
    /// The machine's work on the command (dispatch, handler, invariant, policy).
    pub apply: Histogram<u64>,
    /// From acceptance to the outcome.
    pub end_to_end: Histogram<u64>,
}

pub(crate) const MAX_NANOS: u64 = 3_600 * 1_000_000_000;

impl Latencies {
    pub(crate) fn new() -> Self {
        let h = || {
            // Two significant digits keep each histogram near 40 KiB, small enough to stay in
            // cache while the consumer records into it.
            Histogram::new_with_bounds(1, MAX_NANOS, 2).expect("constant, valid bounds")
        };
        Latencies {
            wait: h(),
            apply: h(),
            end_to_end: h(),
        }
    }

    /// Records one command's latencies, in nanoseconds (0 is recorded as 1, the lowest
    /// trackable value).
    #[inline]
    pub(crate) fn record(&mut self, wait: u64, apply: u64, end_to_end: u64) {
        self.wait.saturating_record(wait.max(1));
        self.apply.saturating_record(apply.max(1));
        self.end_to_end.saturating_record(end_to_end.max(1));
    }
}

/// A snapshot of a queue's metrics, taken without stopping it.
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// The machine's name.
    pub machine: &'static str,
    /// Outcome counts (a consistent cut: they add up).
    pub counts: Counts,
    /// Commands waiting in the queue right now (not yet taken by the consumer).
    pub depth: usize,
    /// The most commands that ever waited in the queue at once.
    pub high_water: usize,
    /// The capacity (`None` for an unbounded queue).
    pub capacity: Option<usize>,
    /// How many times postponed commands were retried after a state change (a command
    /// retried in two state changes counts twice). Not an outcome: retried commands end in one
    /// of the [`Counts`] like any other.
    pub replayed: u64,
    /// Time since the queue was built.
    pub uptime: Duration,
    /// Commands decided per second since the queue was built.
    pub throughput: f64,
    /// Time from acceptance to the start of the machine's work.
    pub wait: LatencySummary,
    /// Time the machine's work took, per command.
    pub apply: LatencySummary,
    /// Time from acceptance to the outcome.
    pub end_to_end: LatencySummary,
}

impl Metrics {
    pub(crate) fn summarize(latencies: &Latencies) -> [LatencySummary; 3] {
        [
            LatencySummary::of(&latencies.wait),
            LatencySummary::of(&latencies.apply),
            LatencySummary::of(&latencies.end_to_end),
        ]
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "queue of {}: depth {} (high water {}, capacity {}), {:.0} commands/s, {} postponed retries",
            self.machine,
            self.depth,
            self.high_water,
            self.capacity
                .map_or_else(|| "unbounded".to_owned(), |c| c.to_string()),
            self.throughput,
            self.replayed
        )?;
        writeln!(
            f,
            "  submitted {} = applied {} + rejected {} + dumped {} + delegated {} + expired {} + closed {} + full {} + queued {} + deferred {}",
            c.submitted, c.applied, c.rejected, c.dumped, c.delegated, c.expired, c.closed, c.full, c.queued, c.deferred
        )?;
        writeln!(f, "  wait       {}", self.wait)?;
        writeln!(f, "  apply      {}", self.apply)?;
        write!(f, "  end to end {}", self.end_to_end)
    }
}
