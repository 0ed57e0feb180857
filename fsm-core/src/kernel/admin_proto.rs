//! The admin protocol's messages as types, shared by the endpoint and its clients (the `fsm`
//! tool): a request is one [`Request`] as a JSON line; the answer is one [`Reply`] line, and a
//! `watch` then streams [`WatchMessage`] lines. A field renamed here is a compile error at
//! both ends, not a zero on one of them.
//!
//! The protocol is versioned: [`PROTOCOL`] changes when a message changes incompatibly, and
//! a client asks `{"op":"hello"}` first to learn the endpoint's (a [`Hello`]). Fields are
//! added compatibly: readers ignore fields they do not know.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL: u32 = 1;

/// A request: one JSON object per line, with its `op`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Request {
    /// The endpoint's protocol version and machine type: a [`Hello`].
    Hello,
    /// Counts, queue depths and latencies per shard and in total: a [`Metrics`].
    Metrics,
    /// The machine type's transition table, as checked at compile time: a [`Table`] (what a
    /// live view draws its statechart from).
    Table,
    /// The newest matching decisions, oldest first: a list of [`Entry`].
    Trace {
        /// Only this machine's decisions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        machine: Option<String>,
        /// Decisions that left or entered this state.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
        /// Decisions on this event.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// Decisions with this outcome (a [`Outcome`] name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<String>,
        /// Decisions this many milliseconds after the kernel started, or later.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_ms: Option<f64>,
        /// At most this many (the newest).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// What the trace ring still holds: a [`TraceWindow`].
    TraceWindow,
    /// A stream of matching decisions as they happen: [`Watching`], then [`WatchMessage`]s.
    Watch {
        /// As for `trace`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        machine: Option<String>,
        /// As for `trace`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
        /// As for `trace`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// As for `trace`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<String>,
        /// As for `trace`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_ms: Option<f64>,
        /// At most this many entries a second (the endpoint's bound caps it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_per_sec: Option<u32>,
    },
    /// One machine: a [`Show`].
    Show {
        /// The machine's id.
        machine: String,
    },
    /// How many stored machines are in each state: a [`States`].
    States,
    /// One page of stored machine ids, in id order: a [`Machines`].
    Machines {
        /// Only the machines in this state.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
        /// Only ids after this one (the `next` of the page before).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// At most this many (default 100, at most 10,000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// Quarantined machines and why: a list of [`QuarantinedMachine`].
    Quarantined,
    /// Effect workers that exceeded their restart intensity: a list of [`Escalated`].
    Escalations,
    /// Restarts an escalated worker: a [`Restarted`].
    RestartWorker {
        /// The worker's index.
        worker: usize,
    },
    /// Lifts a machine's quarantine: a [`Released`].
    Release {
        /// The machine's id.
        machine: String,
    },
}

/// An answer: `{"ok": T}` or `{"error": {"kind": .., "message": ..}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    /// The request's answer.
    Ok(T),
    /// Why there is none.
    Error(Failure),
}

/// A request that was not answered, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// What was wrong, for a person.
    pub message: String,
}

/// The kinds of [`Failure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// Not JSON, an unknown op or field, a bad value.
    BadRequest,
    /// A line over the endpoint's limit; the connection is closed.
    TooLong,
    /// More clients than allowed; closed.
    Busy,
    /// No complete request in time; closed.
    Timeout,
    /// No such machine.
    NotFound,
    /// The kernel stopped.
    Closed,
    /// The machine could not be loaded, or the store did not answer a query.
    Unavailable,
}

impl FailureKind {
    /// The kind's name on the wire (`not_found`).
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::BadRequest => "bad_request",
            FailureKind::TooLong => "too_long",
            FailureKind::Busy => "busy",
            FailureKind::Timeout => "timeout",
            FailureKind::NotFound => "not_found",
            FailureKind::Closed => "closed",
            FailureKind::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.message)
    }
}

/// The answer to `hello`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The endpoint's [`PROTOCOL`].
    pub protocol: u32,
    /// The machine type the kernel runs.
    pub machine: String,
}

/// The answer to `table`: the machine type's states and transitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// The machine type.
    pub machine: String,
    /// The initial state's name.
    pub initial: String,
    /// Every state, in declaration order.
    pub states: Vec<TableState>,
    /// Every declared transition (a transition inherited from a superstate once per state
    /// that inherits it).
    pub transitions: Vec<TableTransition>,
    /// The superstates, in declaration order (empty for a flat machine).
    #[serde(default)]
    pub superstates: Vec<TableSuperstate>,
}

/// One superstate of a [`Table`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSuperstate {
    /// Its name.
    pub name: String,
    /// The superstate it is inside, if any.
    pub parent: Option<String>,
    /// The state a transition into it enters.
    pub initial: String,
}

/// One state of a [`Table`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableState {
    /// Its name.
    pub name: String,
    /// Whether it is terminal (no transition leaves it).
    pub terminal: bool,
    /// Its state timeout, if it declares one: milliseconds, and the event it fires.
    pub timeout: Option<(u64, String)>,
    /// The superstates it is inside, innermost first.
    #[serde(default)]
    pub superstates: Vec<String>,
}

/// One transition of a [`Table`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableTransition {
    /// The state it leaves.
    pub from: String,
    /// The event that takes it.
    pub event: String,
    /// The state it enters.
    pub to: String,
}

impl Table {
    /// `table`'s answer for a machine type's compiled table.
    pub fn of(table: &crate::Table) -> Table {
        Table {
            machine: table.machine().to_owned(),
            initial: table.state_name(table.initial()).to_owned(),
            states: table
                .states()
                .iter()
                .enumerate()
                .map(|(i, s)| TableState {
                    name: s.name().to_owned(),
                    terminal: s.is_terminal(),
                    timeout: s
                        .state_timeout()
                        .map(|t| (t.after_ms, table.event_name(t.event).to_owned())),
                    superstates: table
                        .ancestors(crate::StateId::new(i as u16))
                        .filter_map(|a| table.superstates().get(a))
                        .map(|a| a.name().to_owned())
                        .collect(),
                })
                .collect(),
            transitions: table
                .transitions()
                .iter()
                .map(|t| TableTransition {
                    from: table.state_name(t.from).to_owned(),
                    event: table.event_name(t.event).to_owned(),
                    to: table.state_name(t.to).to_owned(),
                })
                .collect(),
            superstates: table
                .superstates()
                .iter()
                .map(|sup| TableSuperstate {
                    name: sup.name().to_owned(),
                    parent: sup
                        .parent()
                        .and_then(|p| table.superstates().get(p))
                        .map(|p| p.name().to_owned()),
                    initial: table.state_name(sup.initial()).to_owned(),
                })
                .collect(),
        }
    }
}

/// The answer to `metrics`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The machine type.
    pub machine: String,
    /// Milliseconds since the kernel started.
    pub uptime_ms: f64,
    /// Times the store was reopened after it stopped.
    pub store_reopens: u64,
    /// All shards together.
    pub total: Shard,
    /// Each shard.
    pub shards: Vec<Shard>,
    /// Each effect worker.
    pub workers: Vec<Worker>,
}

/// One shard's (or all shards') metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    /// Commands by outcome, and the levels.
    pub counts: Counts,
    /// Group commits.
    pub commits: u64,
    /// Snapshots written.
    pub snapshots: u64,
    /// Machines in memory.
    pub resident: usize,
    /// Machines quarantined.
    pub quarantined: usize,
    /// Entries in the timer index.
    pub timer_entries: usize,
    /// The inbox's high-water mark.
    pub high_water: usize,
    /// How long the oldest owed effect has been owed.
    pub oldest_owed_ms: Option<f64>,
    /// Time in the inbox.
    pub wait: Latency,
    /// Time applying.
    pub apply: Latency,
    /// Time committing.
    pub persist: Latency,
    /// Submit to answer.
    pub end_to_end: Latency,
    /// Commands per group commit.
    pub batch: Batch,
    /// Committed transitions per transition of the [`Table`] (in its order; empty until the
    /// first): a live statechart's edge rates are their differences over time.
    #[serde(default)]
    pub transitions: Vec<u64>,
}

/// Commands by outcome, and the levels now: the kernel's own counts, whose outcome fields
/// carry the names of [`Outcome`].
pub use crate::kernel::KernelCounts as Counts;

/// Latency percentiles, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// Commands per group commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Batch {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// One effect worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Worker {
    pub worker: usize,
    pub effects: u64,
    pub errors: u64,
    pub panics: u64,
    pub restarts: u64,
    pub fed_back: u64,
    pub abandoned: u64,
    pub retries: u64,
    pub given_up: u64,
    /// Effects waiting for an escalated worker.
    pub parked: u64,
    pub escalated: bool,
}

/// How a decision ended: the kernel's [`TraceOutcome`](crate::kernel::TraceOutcome), whose
/// names the protocol, the trace filters and the metrics' `outcome` label share.
pub use crate::kernel::TraceOutcome as Outcome;

/// Where a traced command came from: the kernel's
/// [`TraceSource`](crate::kernel::TraceSource).
pub use crate::kernel::TraceSource as Source;

/// One decision in the trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Entry {
    /// Milliseconds since the kernel started.
    pub at_ms: f64,
    pub machine: String,
    pub from: String,
    pub event: String,
    /// `None` when no transition was taken.
    pub to: Option<String>,
    pub outcome: Outcome,
    /// Where the command came from (older endpoints: `command`).
    #[serde(default)]
    pub source: Source,
    /// Effects the transition emitted.
    #[serde(default)]
    pub effects: u32,
    /// The superstate whose transition took the event (it bubbled), or `any state`; `None`:
    /// the state's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_by: Option<String>,
    pub wait_us: f64,
    pub apply_us: f64,
    pub persist_us: f64,
    pub end_to_end_us: f64,
}

/// The answer to `trace_window`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceWindow {
    /// Entries kept per shard.
    pub capacity: usize,
    /// Entries overwritten since the kernel started.
    pub overwritten: u64,
    /// From when every decision is still there (milliseconds since start); `None` while
    /// nothing was overwritten.
    pub complete_since_ms: Option<f64>,
}

/// The answer to `show`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Show {
    /// The machine's id.
    pub machine: String,
    /// Its state's name.
    pub state: String,
    /// The superstates its state is inside, innermost first.
    #[serde(default)]
    pub superstates: Vec<String>,
    /// Its value, printed through `Redact`: sensitive fields never leave the process.
    pub value: String,
    /// The sequence of its durable snapshot.
    pub seq: Option<u64>,
    /// The effects it owes, oldest first.
    pub owed: Vec<Owed>,
    /// Its armed timers, soonest first.
    #[serde(default)]
    pub timers: Vec<Timer>,
    /// The idempotency keys it remembers, oldest first.
    #[serde(default)]
    pub keys: Vec<Key>,
}

/// The answer to `states`: stored machines per state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct States {
    /// Every state the machine type declares, in declaration order (0 when empty), then any
    /// other state names the store holds (a store shared with other types, or states since
    /// renamed), by name.
    pub states: Vec<StateCount>,
    /// Machines whose snapshot does not decode (corrupt, or another type's).
    pub unreadable: u64,
    /// Every machine stored.
    pub total: u64,
}

/// One state's count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCount {
    /// The state's name.
    pub state: String,
    /// Stored machines in it.
    pub machines: u64,
    /// Whether the machine type declares it.
    pub declared: bool,
}

/// The answer to `machines`: one page of ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machines {
    /// The ids, ascending by their bytes.
    pub ids: Vec<String>,
    /// Where the next page starts (pass it as `after`); `None`: this was the last page.
    pub next: Option<String>,
}

/// One owed effect: as `show` answers it, and as `fsm show` and `fsm export` print it offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owed {
    /// Its idempotency key, `machine/seq/index`.
    pub key: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the next attempt may start (wall-clock milliseconds); `None`: at once.
    pub next_attempt_ms: Option<u64>,
    /// When it was first owed (wall-clock milliseconds).
    pub owed_since_ms: u64,
    /// Whether its worker runs it now.
    pub running: bool,
}

/// One armed timer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// `state timeout`, `event timeout` or ``timer `name` ``.
    pub kind: String,
    /// When it fires (wall-clock milliseconds).
    pub deadline_ms: u64,
    /// The duration it was armed for.
    pub after_ms: u64,
    /// The event it fires, when known.
    pub event: Option<String>,
}

/// One remembered idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// The key.
    pub key: String,
    /// The snapshot that holds the transition it caused.
    pub seq: u64,
    /// That transition (`From --Event--> To`), when known.
    pub transition: Option<String>,
}

/// A quarantined machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedMachine {
    /// The machine's id.
    pub machine: String,
    /// Why it is quarantined.
    pub cause: String,
}

/// An escalated effect worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Escalated {
    /// The worker's index.
    pub worker: usize,
    /// When it escalated (milliseconds since the kernel started).
    pub at_ms: f64,
    /// Its restart intensity: at most this many restarts ..
    pub max_restarts: u32,
    /// .. within this many milliseconds.
    pub within_ms: f64,
    /// The failure that escalated it.
    pub failure: String,
}

/// The answer to `restart_worker`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarted {
    /// Whether the worker was escalated and is restarted.
    pub restarted: bool,
}

/// The answer to `release`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// Whether the machine was quarantined.
    pub released: bool,
}

/// The first answer to `watch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watching {
    /// The machine type.
    pub watching: String,
    /// The rate the endpoint keeps to.
    pub max_per_sec: u32,
}

/// A line of a `watch` stream after its first answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WatchMessage {
    /// A matching decision.
    Entry {
        /// The decision.
        entry: Entry,
    },
    /// Once a second when some were not sent.
    Dropped {
        /// Not sent in the last second.
        dropped: u64,
        /// Of which over the rate limit.
        rate_limited: u64,
        /// Of which gone from the ring before they were read.
        overrun: u64,
        /// The rate limit.
        max_per_sec: u32,
    },
}
