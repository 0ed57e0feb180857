//! The kernel: many machines, their inboxes and a [`SnapshotStore`], run so that nothing is
//! acknowledged before it is durable.
//!
//! Per command, on the shard thread that owns the machine:
//! 1. **validate at the border**: the machine is loaded on first use (its newest snapshot
//!    decoded and its invariant checked, or the initial state if the store holds none); a
//!    retried idempotency key is recognised; the state's policy for the event is applied
//!    (`defer(..)`, `dump(..)`, `delegate(..)`);
//! 2. **apply** the event ([`StateMachine::next`]): a rejection or a panicking handler leaves
//!    the machine as it was;
//! 3. **persist**: every machine changed by the batch of commands the shard took together is
//!    stored with one [`SnapshotStore::put_many`] (one fsync or one transaction: group
//!    commit);
//! 4. **acknowledge**: only now does any submitter of the batch get its answer;
//! 5. **effects** go to the effect workers (see [`EffectWorker`]).
//!
//! If the store refuses the batch, every changed machine goes back to its last durable state
//! (it is reloaded from the store), its commands are answered [`CommandError::NotStored`] and
//! no effect runs. If the store cannot say whether it stored the batch
//! ([`StoreError::is_outcome_unknown`], or it stopped, poisoned), the commands are answered
//! [`CommandError::OutcomeUnknown`], never success; the machines are reloaded from the store,
//! after reopening it if it stopped and the kernel knows how (see
//! [`KernelBuilder::reopen_with`]).
//!
//! # Several nodes
//! Over a store that fences writers (PostgreSQL with ownership, in `fsm-persist`), each node
//! runs a kernel and applies commands only to the machines it owns: before a command is
//! applied the kernel asks the store ([`SnapshotStore::owner_epoch`]); a machine another node
//! owns is not applied here, its command is answered [`CommandError::Fenced`] and handed back
//! ([`Kernel::take_handed_back`]) for the caller to send to the owner. If the store refuses a
//! commit because ownership moved meanwhile (a late write of a paused node), the machines it
//! lost are answered `Fenced`, dropped from memory with their postponed commands handed back,
//! and the rest of the batch is stored. A machine owned again under a newer epoch is reloaded,
//! so it continues from what the other owner stored.
//!
//! # Delivery semantics
//! Submission is **at least once**: a submitter that did not get an answer (a timeout, a crash
//! of either side) must retry. Application is **exactly once per idempotency key**: the kernel
//! stores the last [`KernelBuilder::idempotency_window`] keys of each machine inside its
//! snapshot, in the same write as the transition they caused, so a retried key is answered
//! with the original [`Committed`] (marked `duplicate`) and never applied twice, across
//! crashes and restarts. A command without a key may be applied twice if it is retried after
//! its answer was lost. A key whose first attempt was *not* applied (rejected, expired, not
//! stored) is not remembered: its retry is decided afresh, against the current state.
//! Effects run **at most once** per committed transition, in order per machine; an effect
//! whose transition committed just before a crash does not run after the restart (the
//! machine's state shows what was done, and a worker can be re-driven from it).
//!
//! ```
//! use fsm_core::kernel::{Kernel, Request, IdempotencyKey};
//! use fsm_core::store::{MachineId, MemoryStore};
//! use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
//! #[fsm(event = Cmd)]
//! enum Ticket {
//!     #[fsm(initial, on(Close => Closed))]
//!     Open,
//!     #[fsm(terminal)]
//!     Closed,
//! }
//! #[derive(Event, Debug, Clone)]
//! enum Cmd { Close }
//! impl Handler<cmd::Close, ticket::Closed> for ticket::Open {
//!     fn handle(_: ticket::Open, _: cmd::Close, _: &mut Effects<()>) -> Result<ticket::Closed, Refusal> {
//!         Ok(ticket::Closed)
//!     }
//! }
//!
//! let kernel = Kernel::builder(MemoryStore::new(), |_| Ticket::Open).shards(2).start()?;
//! let id = MachineId::new("ticket-1")?;
//! let key = IdempotencyKey::new("close-1")?;
//! let first = kernel.submit(&id, Request::new(Cmd::Close).with_key(key.clone()))?.wait()?;
//! // A retry of the same key is answered with the original outcome, not applied again.
//! let retry = kernel.submit(&id, Request::new(Cmd::Close).with_key(key))?.wait()?;
//! assert_eq!((first.seq, retry.seq, retry.duplicate), (1, 1, true));
//! // Without the key, closing twice is rejected: the machine is terminal.
//! assert!(kernel.submit(&id, Cmd::Close)?.wait().is_err());
//! let report = kernel.shutdown(fsm_core::kernel::Shutdown::Drain);
//! assert_eq!(report.metrics.total.counts.committed, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod inbox;
mod journal;
mod outcome;
mod request;
mod shard;
mod stats;
mod supervisor;
mod trace;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::machine::StateMachine;
use crate::queue::{Clock, Overflow, Overload, Route, Stamps, Ticket};
use crate::store::{Codec, MachineId, SnapshotStore, StoreError};

pub use outcome::{CommandError, Committed, Outcome, QuarantineCause, Quarantined, SubmitError};
pub use request::{IdempotencyKey, InvalidKey, Request, MAX_KEY_LEN};
pub use stats::{KernelCounts, KernelMetrics, ShardMetrics, WorkerMetrics};
pub use supervisor::{EffectError, EffectWorker, Escalation, Failure, Intensity};
pub use trace::{TraceEntry, TraceFilter, TraceOutcome};

use inbox::{Admitted, Closing, Cmd, Inbox, Job, Refusal};
use shard::{HandedBack, Shard};
use stats::ShardStats;
use supervisor::{Factory, WorkerMsg};

/// A machine the kernel can run: serializable (its snapshot), sendable to shard threads, with
/// events and effects that can cross threads. Implemented for every such machine.
pub trait Durable:
    StateMachine<Event: Send + 'static, Effect: Send + 'static>
    + Serialize
    + DeserializeOwned
    + Send
    + 'static
{
}

impl<M> Durable for M where
    M: StateMachine<Event: Send + 'static, Effect: Send + 'static>
        + Serialize
        + DeserializeOwned
        + Send
        + 'static
{
}

type Opener = Box<dyn Fn() -> Result<Arc<dyn SnapshotStore>, StoreError> + Send + Sync>;

/// The store, and how to reopen it when it stops.
struct StoreCell {
    current: RwLock<(u64, Arc<dyn SnapshotStore>)>,
    reopen: Option<Opener>,
    reopening: Mutex<()>,
    reopens: AtomicU64,
}

impl StoreCell {
    fn current(&self) -> (u64, Arc<dyn SnapshotStore>) {
        let guard = self.current.read().unwrap_or_else(PoisonError::into_inner);
        (guard.0, guard.1.clone())
    }

    /// The store of `generation` stopped (it answers `Poisoned`): reopens it, once, whichever
    /// shard asks first. Returns whether a newer store is in place.
    fn reopen(&self, generation: u64) -> bool {
        let _one_at_a_time = self
            .reopening
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.current().0 != generation {
            return true;
        }
        let Some(reopen) = &self.reopen else {
            return false;
        };
        match reopen() {
            Ok(store) => {
                let mut guard = self.current.write().unwrap_or_else(PoisonError::into_inner);
                *guard = (generation + 1, store);
                self.reopens.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "tracing")]
                tracing::warn!(generation = generation + 1, "fsm.store_reopened");
                true
            }
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::error!(error = %_e, "fsm.store_reopen_failed");
                false
            }
        }
    }
}

/// Counts the work in flight (queued commands and effects), so a draining shutdown knows when
/// everything accepted has been decided and every effect run.
struct Quiet {
    busy: Mutex<i64>,
    idle: Condvar,
}

impl Quiet {
    fn more(&self, n: usize) {
        if n > 0 {
            *self.busy.lock().unwrap_or_else(PoisonError::into_inner) += n as i64;
        }
    }

    fn done(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        *busy -= n as i64;
        if *busy <= 0 {
            self.idle.notify_all();
        }
    }

    fn wait_idle(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        while *busy > 0 {
            busy = self.idle.wait(busy).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

struct Config {
    capacity: usize,
    overload: Overload,
    window: usize,
    idle_after: Duration,
    defer_limit: usize,
    clock: Clock,
    stamps: Stamps,
    latency: bool,
    intensity: Intensity,
}

struct WorkerBoard {
    escalated: AtomicBool,
    stats: Mutex<WorkerMetrics>,
}

/// What shard threads, worker threads and the handle share.
struct Inner<M: Durable> {
    inboxes: Box<[Inbox<M>]>,
    stats: Box<[Mutex<ShardStats>]>,
    store: StoreCell,
    codec: Codec<M>,
    initial: Box<dyn Fn(&MachineId) -> M + Send + Sync>,
    overflow: Option<Arc<dyn Overflow<(MachineId, M::Event)>>>,
    config: Config,
    trace: trace::Trace,
    workers: Box<[WorkerBoard]>,
    effect_tx: Vec<mpsc::Sender<WorkerMsg<M>>>,
    escalations: Mutex<Vec<Escalation>>,
    /// Commands of machines another node owns, not applied here, for the caller to route.
    handed_back: Mutex<HandedBack<M::Event>>,
    quiet: Quiet,
    intake_open: AtomicBool,
    abandon_effects: AtomicBool,
    started: Instant,
}

/// A stable hash (FNV-1a, then a 64-bit finalizer so every bit depends on every byte), so a
/// machine stays on the same shard and worker across runs and builds.
fn stable_hash(id: &MachineId, salt: u64) -> u64 {
    let h = id
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325 ^ salt, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl<M: Durable> Inner<M> {
    fn shard_of(&self, id: &MachineId) -> usize {
        (stable_hash(id, 0) % self.inboxes.len() as u64) as usize
    }

    fn worker_of(&self, id: &MachineId) -> Option<usize> {
        let n = self.workers.len() as u64;
        // Another salt than the shard's, so workers spread within a shard too.
        (n > 0).then(|| (stable_hash(id, 0x9e37_79b9_7f4a_7c15) % n) as usize)
    }

    /// The escalated worker that serves machine `id`, if its worker escalated.
    fn escalated_worker(&self, id: &MachineId) -> Option<usize> {
        self.worker_of(id)
            .filter(|&w| self.workers[w].escalated.load(Ordering::Acquire))
    }

    fn stamp(&self) -> u64 {
        if self.config.latency {
            self.config.stamps.stamp()
        } else {
            0
        }
    }

    fn nanos(&self, from: u64, to: u64) -> u64 {
        if self.config.latency {
            self.config.stamps.nanos(from, to)
        } else {
            0
        }
    }

    /// Queues an event an effect worker fed back; `false` if the kernel stopped.
    fn feed_back(&self, id: &MachineId, event: M::Event) -> bool {
        let cmd = Cmd {
            id: id.clone(),
            request: Request::new(event),
            enqueued: self.stamp(),
            reply: None,
        };
        self.quiet.more(1);
        match self.inboxes[self.shard_of(id)].feedback(cmd) {
            Ok(()) => true,
            Err(_) => {
                self.quiet.done(1);
                false
            }
        }
    }
}

/// What a submit call returns: the ticket of an accepted command, or why it was not.
pub type Submitted<E> = Result<Ticket<Outcome>, SubmitError<E>>;

/// What recovery on start found.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Machines loaded from their newest valid snapshot (invariants checked).
    pub recovered: usize,
    /// Machines whose snapshot is corrupt or invalid: quarantined, not run. The others run.
    pub quarantined: Vec<Arc<Quarantined>>,
    /// Machines that could not be read for another reason (the store failed); they are
    /// loaded again on first use.
    pub unavailable: Vec<(MachineId, String)>,
    /// Stored machines another node owns (the store fences this one): not loaded here.
    pub not_owned: usize,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recovered {} machines, quarantined {}, unavailable {}",
            self.recovered,
            self.quarantined.len(),
            self.unavailable.len()
        )?;
        if self.not_owned > 0 {
            write!(f, ", owned by other nodes {}", self.not_owned)?;
        }
        for q in &self.quarantined {
            write!(f, "\n  {q}")?;
        }
        for (id, e) in &self.unavailable {
            write!(f, "\n  machine `{id}` unavailable: {e}")?;
        }
        Ok(())
    }
}

/// How [`Kernel::shutdown`] treats commands already accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Shutdown {
    /// Stop intake, decide (and persist) every queued command, run every pending effect and
    /// the events they feed back; hand back only postponed commands no state ever took.
    Drain,
    /// Stop intake, decide nothing more: hand back every queued and postponed command
    /// (answered [`CommandError::Closed`]) and abandon effects not yet started.
    HandBack,
}

/// What [`Kernel::shutdown`] returns.
pub struct ShutdownReport<E> {
    /// Commands that were accepted but never applied, handed back with their machine.
    pub handed_back: Vec<(MachineId, Request<E>)>,
    /// The kernel's final metrics.
    pub metrics: KernelMetrics,
}

impl<E> fmt::Debug for ShutdownReport<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownReport")
            .field("handed_back", &self.handed_back.len())
            .field("metrics", &self.metrics)
            .finish()
    }
}

/// Why a kernel could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Zero shards, zero capacity, zero effect workers or a zero defer limit where a state
    /// defers.
    #[error("invalid kernel configuration: {0}")]
    Config(String),
    /// Delegation is in play but no overflow sink was given.
    #[error("{needed_by} delegates commands but the kernel has no overflow sink; add KernelBuilder::overflow")]
    MissingOverflow {
        /// What delegates.
        needed_by: String,
    },
    /// The store could not be opened or could not list its machines for recovery.
    #[error("the store could not be read for recovery: {0}")]
    Store(#[from] StoreError),
    /// A thread could not be spawned.
    #[error("cannot spawn a kernel thread: {0}")]
    Spawn(std::io::Error),
}

/// Configures and starts a [`Kernel`].
pub struct KernelBuilder<M: Durable> {
    store: Result<Arc<dyn SnapshotStore>, StoreError>,
    reopen: Option<Opener>,
    initial: Box<dyn Fn(&MachineId) -> M + Send + Sync>,
    codec: Codec<M>,
    shards: usize,
    capacity: usize,
    overload: Overload,
    overflow: Option<Arc<dyn Overflow<(MachineId, M::Event)>>>,
    window: usize,
    idle_after: Duration,
    defer_limit: usize,
    clock: Clock,
    latency: bool,
    trace: usize,
    workers: Option<(usize, Factory<M>)>,
    intensity: Intensity,
    recover_on_start: bool,
}

/// The default number of idempotency keys remembered per machine.
pub const DEFAULT_IDEMPOTENCY_WINDOW: usize = 64;
/// The default capacity of each shard's inbox.
pub const DEFAULT_INBOX_CAPACITY: usize = 4096;
/// The default number of trace entries kept.
pub const DEFAULT_TRACE_CAPACITY: usize = 1024;

impl<M: Durable> KernelBuilder<M> {
    fn new(
        store: Result<Arc<dyn SnapshotStore>, StoreError>,
        initial: Box<dyn Fn(&MachineId) -> M + Send + Sync>,
    ) -> Self {
        KernelBuilder {
            store,
            reopen: None,
            initial,
            codec: Codec::new(1),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            capacity: DEFAULT_INBOX_CAPACITY,
            overload: Overload::Backpressure,
            overflow: None,
            window: DEFAULT_IDEMPOTENCY_WINDOW,
            idle_after: Duration::from_secs(60),
            defer_limit: crate::queue::DEFAULT_DEFER_LIMIT,
            clock: Clock::System,
            latency: true,
            trace: DEFAULT_TRACE_CAPACITY,
            workers: None,
            intensity: Intensity::default(),
            recover_on_start: true,
        }
    }

    /// Codec for the machine's snapshots (default: `Codec::new(1)`, postcard). Register
    /// migrations here when the machine's schema changes.
    pub fn codec(mut self, codec: Codec<M>) -> Self {
        self.codec = codec;
        self
    }

    /// Shard threads (default: the machine's available parallelism). A machine always runs
    /// on the same shard (chosen by a stable hash of its id).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }

    /// Commands each shard's inbox holds (default [`DEFAULT_INBOX_CAPACITY`]).
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }

    /// What a full inbox does with one more command (default [`Overload::Backpressure`]:
    /// `submit` waits for room up to the request's deadline, `try_submit` refuses at once).
    pub fn overload(mut self, policy: Overload) -> Self {
        self.overload = policy;
        self
    }

    /// Where delegated commands go (by [`Overload::Delegate`] or a state's `delegate(..)`).
    pub fn overflow(mut self, sink: impl Overflow<(MachineId, M::Event)> + 'static) -> Self {
        self.overflow = Some(Arc::new(sink));
        self
    }

    /// Idempotency keys remembered per machine, inside its snapshot (default
    /// [`DEFAULT_IDEMPOTENCY_WINDOW`]). A retry older than the last `n` keyed commands of
    /// its machine is no longer recognised.
    pub fn idempotency_window(mut self, n: usize) -> Self {
        self.window = n;
        self
    }

    /// A machine untouched this long, with no postponed commands, is evicted from memory
    /// (default 60 s, on the kernel's clock); it is reloaded on its next command.
    pub fn idle_after(mut self, idle: Duration) -> Self {
        self.idle_after = idle;
        self
    }

    /// Commands one machine may hold postponed by `defer(..)` (default 1024); more are
    /// dumped with [`DumpCause::DeferLimit`](crate::queue::DumpCause::DeferLimit).
    pub fn defer_limit(mut self, n: usize) -> Self {
        self.defer_limit = n;
        self
    }

    /// The time source for deadlines, idleness, restart intensity and the trace (default
    /// [`Clock::System`]; tests use a [`ManualClock`](crate::queue::ManualClock)).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Whether to measure latencies (default on).
    pub fn latency(mut self, on: bool) -> Self {
        self.latency = on;
        self
    }

    /// Entries kept in the live trace (default [`DEFAULT_TRACE_CAPACITY`]; 0 turns it off).
    pub fn trace_capacity(mut self, n: usize) -> Self {
        self.trace = n;
        self
    }

    /// Runs effects on `workers` threads, each with a worker made by `factory(index)` and
    /// remade by it after a failure. A machine's effects always go to the same worker, in
    /// order.
    pub fn effects<W, F>(mut self, workers: usize, factory: F) -> Self
    where
        W: EffectWorker<M>,
        F: Fn(usize) -> W + Send + Sync + 'static,
    {
        let factory: Factory<M> = Arc::new(move |i| Box::new(factory(i)));
        self.workers = Some((workers, factory));
        self
    }

    /// The effect workers' restart intensity (default [`Intensity::default`]).
    pub fn restart_intensity(mut self, max_restarts: u32, within: Duration) -> Self {
        self.intensity = Intensity {
            max_restarts,
            within,
        };
        self
    }

    /// Whether to load and check every stored machine when starting (default on); off, each
    /// machine is checked when it is first used.
    pub fn recover_on_start(mut self, on: bool) -> Self {
        self.recover_on_start = on;
        self
    }

    /// How to reopen the store after it stops (is poisoned, as the file store is after a
    /// failed fsync); without it, a stopped store leaves every later command
    /// [`CommandError::Unavailable`].
    pub fn reopen_with(
        mut self,
        open: impl Fn() -> Result<Arc<dyn SnapshotStore>, StoreError> + Send + Sync + 'static,
    ) -> Self {
        self.reopen = Some(Box::new(open));
        self
    }

    fn check(&self) -> Result<(), BuildError> {
        if self.shards == 0 {
            return Err(BuildError::Config("zero shards; use at least 1".into()));
        }
        if self.capacity == 0 {
            return Err(BuildError::Config(
                "zero inbox capacity; use at least 1".into(),
            ));
        }
        if matches!(self.workers, Some((0, _))) {
            return Err(BuildError::Config(
                "zero effect workers; use at least 1, or no `effects` at all".into(),
            ));
        }
        let routes = crate::queue::routes(M::TABLE);
        let first = |route| crate::queue::states_with(M::TABLE, &routes, route).next();
        if self.overflow.is_none() {
            if self.overload == Overload::Delegate {
                return Err(BuildError::MissingOverflow {
                    needed_by: "the overload policy `Overload::Delegate`".into(),
                });
            }
            if let Some(state) = first(Route::Delegate) {
                return Err(BuildError::MissingOverflow {
                    needed_by: format!("state `{state}` (`delegate(..)`)"),
                });
            }
        }
        if self.defer_limit == 0 {
            if let Some(state) = first(Route::Defer) {
                return Err(BuildError::Config(format!(
                    "defer limit 0 but state `{state}` defers events"
                )));
            }
        }
        Ok(())
    }

    /// Starts the shards (recovering every stored machine first, unless turned off) and the
    /// effect workers.
    pub fn start(self) -> Result<Kernel<M>, BuildError> {
        self.check()?;
        let store = self.store?;
        let ids = if self.recover_on_start {
            store.ids()?
        } else {
            Vec::new()
        };
        let (workers, factory) = match self.workers {
            Some((n, f)) => (n, Some(f)),
            None => (0, None),
        };
        let mut receivers = Vec::with_capacity(workers);
        let mut effect_tx = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::channel();
            effect_tx.push(tx);
            receivers.push(rx);
        }
        let started = self.clock.now();
        let inner = Arc::new(Inner {
            inboxes: (0..self.shards).map(|_| Inbox::new()).collect(),
            stats: (0..self.shards)
                .map(|_| Mutex::new(ShardStats::new()))
                .collect(),
            store: StoreCell {
                current: RwLock::new((0, store)),
                reopen: self.reopen,
                reopening: Mutex::new(()),
                reopens: AtomicU64::new(0),
            },
            codec: self.codec,
            initial: self.initial,
            overflow: self.overflow,
            config: Config {
                capacity: self.capacity,
                overload: self.overload,
                window: self.window,
                idle_after: self.idle_after,
                defer_limit: self.defer_limit,
                stamps: Stamps::new(&self.clock),
                clock: self.clock,
                latency: self.latency,
                intensity: self.intensity,
            },
            trace: trace::Trace::new(self.trace),
            workers: (0..workers)
                .map(|_| WorkerBoard {
                    escalated: AtomicBool::new(false),
                    stats: Mutex::new(WorkerMetrics::default()),
                })
                .collect(),
            effect_tx,
            escalations: Mutex::new(Vec::new()),
            handed_back: Mutex::new(Vec::new()),
            quiet: Quiet {
                busy: Mutex::new(0),
                idle: Condvar::new(),
            },
            intake_open: AtomicBool::new(true),
            abandon_effects: AtomicBool::new(false),
            started,
        });
        let mut per_shard = vec![Vec::new(); self.shards];
        for id in ids {
            per_shard[inner.shard_of(&id)].push(id);
        }
        let mut kernel = Kernel {
            inner: inner.clone(),
            shards: Vec::with_capacity(self.shards),
            workers: Vec::with_capacity(workers),
            recovery: RecoveryReport::default(),
            stopped: false,
        };
        let (report_tx, report_rx) = mpsc::channel();
        for (index, ids) in per_shard.into_iter().enumerate() {
            let inner = inner.clone();
            let report_tx = report_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("fsm-shard-{index}"))
                .spawn(move || {
                    let mut shard = Shard::new(index, inner);
                    let _ = report_tx.send(shard.recover(ids));
                    drop(report_tx);
                    shard.run()
                })
                .map_err(BuildError::Spawn)?;
            kernel.shards.push(handle);
        }
        drop(report_tx);
        for report in report_rx {
            kernel.recovery.recovered += report.recovered;
            kernel.recovery.quarantined.extend(report.quarantined);
            kernel.recovery.unavailable.extend(report.unavailable);
            kernel.recovery.not_owned += report.not_owned;
        }
        if let Some(factory) = factory {
            for (index, rx) in receivers.into_iter().enumerate() {
                let inner = inner.clone();
                let factory = factory.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("fsm-effects-{index}"))
                    .spawn(move || supervisor::run(index, inner, factory, rx))
                    .map_err(BuildError::Spawn)?;
                kernel.workers.push(handle);
            }
        }
        #[cfg(feature = "tracing")]
        tracing::info!(
            machine = M::TABLE.machine(),
            recovered = kernel.recovery.recovered,
            quarantined = kernel.recovery.quarantined.len(),
            "fsm.kernel_started"
        );
        Ok(kernel)
    }
}

/// Runs machines of type `M`: a registry keyed by [`MachineId`], sharded across threads,
/// in front of a [`SnapshotStore`]. See the [module documentation](self) for what happens
/// to each command and what is guaranteed.
///
/// Dropping a kernel shuts it down as [`Shutdown::HandBack`] does (queued commands are
/// answered [`CommandError::Closed`]); call [`Kernel::shutdown`] to drain it instead.
pub struct Kernel<M: Durable> {
    inner: Arc<Inner<M>>,
    shards: Vec<JoinHandle<HandedBack<M::Event>>>,
    workers: Vec<JoinHandle<()>>,
    recovery: RecoveryReport,
    stopped: bool,
}

impl<M: Durable> Kernel<M> {
    /// Starts configuring a kernel over `store`; `initial` gives a machine the store holds
    /// nothing for (it must be in the table's initial state).
    pub fn builder(
        store: impl SnapshotStore + 'static,
        initial: impl Fn(&MachineId) -> M + Send + Sync + 'static,
    ) -> KernelBuilder<M> {
        Kernel::builder_shared(Arc::new(store), initial)
    }

    /// Like [`Kernel::builder`], for a store shared with other code (or already opened as a
    /// trait object).
    pub fn builder_shared(
        store: Arc<dyn SnapshotStore>,
        initial: impl Fn(&MachineId) -> M + Send + Sync + 'static,
    ) -> KernelBuilder<M> {
        KernelBuilder::new(Ok(store), Box::new(initial))
    }

    /// Like [`Kernel::builder`], opening the store with `open` now and again whenever it
    /// stops (see [`KernelBuilder::reopen_with`]).
    pub fn builder_reopening(
        open: impl Fn() -> Result<Arc<dyn SnapshotStore>, StoreError> + Send + Sync + 'static,
        initial: impl Fn(&MachineId) -> M + Send + Sync + 'static,
    ) -> KernelBuilder<M> {
        KernelBuilder::new(open(), Box::new(initial)).reopen_with(open)
    }

    /// Submits a command for machine `id`, waiting for room under back-pressure (up to the
    /// request's deadline). The [`Ticket`] gives the [`Outcome`] once the transition is
    /// durable, or why not.
    pub fn submit(
        &self,
        id: &MachineId,
        request: impl Into<Request<M::Event>>,
    ) -> Result<Ticket<Outcome>, SubmitError<M::Event>> {
        enqueue(&self.inner, id, request.into(), true)
    }

    /// Like [`Kernel::submit`], never waiting: a full inbox under back-pressure refuses at
    /// once with [`SubmitError::Full`]. Use it from async code and `.await` the ticket.
    pub fn try_submit(
        &self,
        id: &MachineId,
        request: impl Into<Request<M::Event>>,
    ) -> Result<Ticket<Outcome>, SubmitError<M::Event>> {
        enqueue(&self.inner, id, request.into(), false)
    }

    /// Submits commands that arrive together (for many machines, or several for one, in
    /// order): each shard's share is queued under one lock, so it is decided and stored in
    /// one batch, one group commit. Never waits for room: what does not fit is refused
    /// [`SubmitError::Full`]. Returns one result per command, in order.
    pub fn submit_batch(
        &self,
        commands: impl IntoIterator<Item = (MachineId, Request<M::Event>)>,
    ) -> Vec<Submitted<M::Event>> {
        let inner = &*self.inner;
        let shards = inner.inboxes.len();
        let mut per_shard: Vec<Vec<(usize, Cmd<M>)>> = (0..shards).map(|_| Vec::new()).collect();
        let mut out: Vec<Option<Submitted<M::Event>>> = Vec::new();
        for (i, (id, request)) in commands.into_iter().enumerate() {
            out.push(None);
            if let Some(worker) = inner.escalated_worker(&id) {
                out[i] = Some(Err(SubmitError::Escalated { request, worker }));
                continue;
            }
            let (ticket, reply) = Ticket::new(|| Err(CommandError::Closed));
            out[i] = Some(Ok(ticket));
            per_shard[inner.shard_of(&id)].push((
                i,
                Cmd {
                    id,
                    request,
                    enqueued: 0,
                    reply: Some(reply),
                },
            ));
        }
        for (shard, group) in per_shard.into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let (slots, cmds): (Vec<usize>, Vec<Cmd<M>>) = group.into_iter().unzip();
            inner.quiet.more(cmds.len());
            let results = inner.inboxes[shard].submit_many(
                cmds,
                inner.config.capacity,
                &inner.config.clock,
                || inner.intake_open.load(Ordering::Acquire),
                inner.stamp(),
            );
            for (i, result) in slots.into_iter().zip(results) {
                if let Err((refusal, cmd)) = result {
                    inner.quiet.done(1);
                    out[i] = Some(Err(refusal.into_error(cmd.request)));
                }
            }
        }
        out.into_iter().flatten().collect()
    }

    /// A cheap, cloneable handle that submits to this kernel from other threads; it outlives
    /// the kernel harmlessly (its submits are then refused [`SubmitError::Closed`]).
    pub fn submitter(&self) -> Submitter<M> {
        Submitter {
            inner: self.inner.clone(),
        }
    }

    /// The shard that runs machine `id`.
    pub fn shard_of(&self, id: &MachineId) -> usize {
        self.inner.shard_of(id)
    }

    /// The effect worker that runs machine `id`'s effects, if the kernel has workers.
    pub fn worker_of(&self, id: &MachineId) -> Option<usize> {
        self.inner.worker_of(id)
    }

    /// What recovery on start found.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Metrics per shard and for the kernel, read without stopping it.
    pub fn metrics(&self) -> KernelMetrics {
        let inner = &*self.inner;
        let mut parts = Vec::with_capacity(inner.inboxes.len());
        let mut shards = Vec::with_capacity(inner.inboxes.len());
        for (inbox, stats) in inner.inboxes.iter().zip(inner.stats.iter()) {
            let (submitted, full, dumped, expired, closed, queued, high_water) = {
                let s = inbox.lock();
                (
                    s.submitted,
                    s.full,
                    s.dumped,
                    s.expired,
                    s.closed,
                    s.commands,
                    s.high_water,
                )
            };
            let stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
            let mut counts = stats.counts;
            counts.submitted += submitted;
            counts.full += full;
            counts.dumped += dumped;
            counts.expired += expired;
            counts.closed += closed;
            counts.queued = queued as u64;
            shards.push(ShardMetrics::of(counts, &stats.hist, &stats, high_water));
            parts.push((counts, stats.hist.clone(), high_water));
        }
        let total = KernelMetrics::total(&parts, &shards);
        KernelMetrics {
            machine: M::TABLE.machine(),
            shards,
            total,
            workers: inner
                .workers
                .iter()
                .map(|w| *w.stats.lock().unwrap_or_else(PoisonError::into_inner))
                .collect(),
            store_reopens: inner.store.reopens.load(Ordering::Relaxed),
            uptime: inner
                .config
                .clock
                .now()
                .saturating_duration_since(inner.started),
        }
    }

    /// Takes the commands this kernel handed back because another node owns their machine
    /// (each was answered [`CommandError::Fenced`]), oldest first, so the caller can send them
    /// to the owner. Keys travel with them: resubmitted to the owner, a command applies once.
    /// Whatever is not taken is returned by [`Kernel::shutdown`] too.
    pub fn take_handed_back(&self) -> Vec<(MachineId, Request<M::Event>)> {
        std::mem::take(
            &mut *self
                .inner
                .handed_back
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// The live trace: the most recent decisions matching `filter`, oldest first.
    pub fn trace(&self, filter: &TraceFilter) -> Vec<TraceEntry> {
        self.inner.trace.read(filter)
    }

    /// Workers that exceeded their restart intensity, in order.
    pub fn escalations(&self) -> Vec<Escalation> {
        self.inner
            .escalations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Restarts an escalated effect worker (an operator's decision, once the cause is
    /// fixed): a fresh instance, an empty restart history, and its machines take commands
    /// again. Returns `false` if there is no such worker.
    pub fn restart_worker(&self, worker: usize) -> bool {
        let Some(tx) = self.inner.effect_tx.get(worker) else {
            return false;
        };
        // The flag clears when the fresh instance is up; commands wait for that.
        tx.send(WorkerMsg::Restart).is_ok()
    }

    /// Evicts idle machines on every shard now (shards also do it on their own every quarter
    /// of [`KernelBuilder::idle_after`] of real time); returns how many machines stay in
    /// memory.
    pub fn sweep(&self) -> usize {
        self.inner
            .inboxes
            .iter()
            .filter_map(|inbox| {
                let (ticket, reply) = Ticket::new(|| 0);
                inbox.control(Job::Sweep(reply)).then(|| ticket.wait())
            })
            .sum()
    }

    /// Machines quarantined now, across all shards, as found at start or on load.
    pub fn quarantined(&self) -> Vec<Arc<Quarantined>> {
        self.inner
            .stats
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .quarantine
                    .clone()
            })
            .collect()
    }

    /// Machine `id`'s current state and the sequence of its newest durable snapshot (`None`
    /// if it was never stored), read on its shard between batches, so it is exactly what the
    /// next command will see: always durable state, never a change still being committed.
    /// Loads the machine if it is not in memory.
    pub fn state(&self, id: &MachineId) -> Result<(M, Option<u64>), CommandError>
    where
        M: Clone,
    {
        let (ticket, reply) = Ticket::new(|| Err(CommandError::Closed));
        let reader: inbox::Inspector<M> =
            Box::new(move |found| reply.send(found.map(|(m, seq)| (m.clone(), seq))));
        if !self.inner.inboxes[self.inner.shard_of(id)].control(Job::Inspect(id.clone(), reader)) {
            return Err(CommandError::Closed);
        }
        ticket.wait()
    }

    /// Lifts machine `id`'s quarantine, after an operator repaired or replaced its snapshot:
    /// its next command loads it again (and quarantines it again if it is still bad).
    /// Returns whether it was quarantined.
    pub fn release(&self, id: &MachineId) -> bool {
        let (ticket, reply) = Ticket::new(|| false);
        self.inner.inboxes[self.inner.shard_of(id)].control(Job::Release(id.clone(), reply))
            && ticket.wait()
    }

    /// Blocks until every command accepted so far is decided (postponed ones aside), every
    /// effect handed to a worker has run, and every event those fed back is decided too.
    /// Commands submitted meanwhile are waited for as well.
    pub fn wait_idle(&self) {
        self.inner.quiet.wait_idle();
    }

    /// Stops the kernel: no new commands; then, as `mode` says, drain or hand back what is
    /// queued; join the shards and the workers.
    pub fn shutdown(mut self, mode: Shutdown) -> ShutdownReport<M::Event> {
        let handed_back = self.stop(mode);
        ShutdownReport {
            handed_back,
            metrics: self.metrics(),
        }
    }

    fn stop(&mut self, mode: Shutdown) -> HandedBack<M::Event> {
        if self.stopped {
            return Vec::new();
        }
        self.stopped = true;
        let inner = &*self.inner;
        let closing = match mode {
            Shutdown::Drain => {
                // Blocked submitters are refused before the kernel waits for the rest.
                inner.intake_open.store(false, Ordering::Release);
                for inbox in inner.inboxes.iter() {
                    inbox.release_waiters();
                }
                inner.quiet.wait_idle();
                Closing::Drain
            }
            _ => {
                inner.abandon_effects.store(true, Ordering::Release);
                Closing::HandBack
            }
        };
        // Closing the inboxes refuses submitters too; intake is marked closed only after,
        // so a refused submitter knows the shards were told.
        for inbox in inner.inboxes.iter() {
            inbox.close(closing);
        }
        inner.intake_open.store(false, Ordering::Release);
        let mut handed_back = Vec::new();
        for shard in self.shards.drain(..) {
            if let Ok(mut back) = shard.join() {
                handed_back.append(&mut back);
            }
        }
        for tx in &inner.effect_tx {
            let _ = tx.send(WorkerMsg::Stop);
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        // Fenced commands nobody took yet are returned too: nothing accepted is dropped.
        handed_back.append(
            &mut inner
                .handed_back
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        #[cfg(feature = "tracing")]
        tracing::info!(
            machine = M::TABLE.machine(),
            handed_back = handed_back.len(),
            "fsm.kernel_stopped"
        );
        handed_back
    }
}

fn enqueue<M: Durable>(
    inner: &Inner<M>,
    id: &MachineId,
    request: Request<M::Event>,
    block: bool,
) -> Result<Ticket<Outcome>, SubmitError<M::Event>> {
    let shard = inner.shard_of(id);
    if let Some(worker) = inner.escalated_worker(id) {
        let mut stats = inner.stats[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        stats.counts.submitted += 1;
        stats.counts.escalated += 1;
        return Err(SubmitError::Escalated { request, worker });
    }
    let (ticket, reply) = Ticket::new(|| Err(CommandError::Closed));
    let cmd = Cmd {
        id: id.clone(),
        request,
        enqueued: 0,
        reply: Some(reply),
    };
    inner.quiet.more(1);
    let result = inner.inboxes[shard].submit(
        cmd,
        inner.config.capacity,
        inner.config.overload,
        &inner.config.clock,
        block,
        || inner.intake_open.load(Ordering::Acquire),
        || inner.stamp(),
    );
    let (refusal, cmd) = match result {
        Ok(Admitted::Queued) => return Ok(ticket),
        Ok(Admitted::Evicted) => {
            inner.quiet.done(1);
            return Ok(ticket);
        }
        Err(refused) => refused,
    };
    inner.quiet.done(1);
    // Refused: the ticket is not handed out; the request goes back to the caller.
    drop(ticket);
    let Cmd { id, request, .. } = cmd;
    Err(match refusal {
        Refusal::Full if inner.config.overload == Overload::Delegate => match &inner.overflow {
            Some(sink) => {
                match sink.delegate((id, request.event), &crate::queue::DelegateCause::QueueFull) {
                    Ok(()) => {
                        inner.inboxes[shard].count_delegated();
                        SubmitError::Delegated
                    }
                    Err((_, event)) => SubmitError::Full(Request {
                        event,
                        key: request.key,
                        deadline: request.deadline,
                    }),
                }
            }
            None => SubmitError::Full(request),
        },
        refusal => refusal.into_error(request),
    })
}

/// Submits commands to a [`Kernel`] from any thread; cloning is cheap.
pub struct Submitter<M: Durable> {
    inner: Arc<Inner<M>>,
}

impl<M: Durable> Clone for Submitter<M> {
    fn clone(&self) -> Self {
        Submitter {
            inner: self.inner.clone(),
        }
    }
}

impl<M: Durable> Submitter<M> {
    /// As [`Kernel::submit`].
    pub fn submit(
        &self,
        id: &MachineId,
        request: impl Into<Request<M::Event>>,
    ) -> Result<Ticket<Outcome>, SubmitError<M::Event>> {
        enqueue(&self.inner, id, request.into(), true)
    }

    /// As [`Kernel::try_submit`].
    pub fn try_submit(
        &self,
        id: &MachineId,
        request: impl Into<Request<M::Event>>,
    ) -> Result<Ticket<Outcome>, SubmitError<M::Event>> {
        enqueue(&self.inner, id, request.into(), false)
    }
}

impl<M: Durable> fmt::Debug for Submitter<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submitter")
            .field("machine", &M::TABLE.machine())
            .finish_non_exhaustive()
    }
}

impl<M: Durable> Drop for Kernel<M> {
    fn drop(&mut self) {
        self.stop(Shutdown::HandBack);
    }
}

impl<M: Durable> fmt::Debug for Kernel<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field("machine", &M::TABLE.machine())
            .field("shards", &self.inner.inboxes.len())
            .field("workers", &self.inner.workers.len())
            .finish_non_exhaustive()
    }
}
