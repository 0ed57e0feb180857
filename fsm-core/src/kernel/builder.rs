//! Configuring and starting a kernel: [`KernelBuilder`], and why a start can fail.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codecs::{EffectCodec, EventCodec, OnceFilter};
use super::inbox::Inbox;
use super::outbox::{RetryPolicy, DEFAULT_MAX_PENDING_EFFECTS};
use super::quiet::Quiet;
use super::shard::EffectRules;
use super::shard::Shard;
use super::stats::ShardStats;
use super::store_cell::{Opener, StoreCell};
use super::supervisor::{self, Factory};
use super::time_base::TimeBase;
use super::{
    trace, Config, Durable, EffectWorker, Inner, Intensity, Kernel, KernelHandle, RecoveryReport,
    WorkerBoard, WorkerMetrics,
};
use crate::queue::{Clock, Overflow, Overload, Route, Stamps};
use crate::store::{Codec, MachineId, SnapshotStore, StoreError};

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
    workers: Workers<M>,
    /// How long an async worker's effect may run before it counts as a crash.
    effect_timeout: Option<Duration>,
    /// How effects are stored, when `effects` made them durable.
    effect_codec: Option<EffectCodec<M::Effect>>,
    at_most_once: Option<OnceFilter<M::Effect>>,
    max_owed: usize,
    retry: RetryPolicy,
    refuse_escalated: bool,
    intensity: Intensity,
    recover_on_start: bool,
    max_timers: usize,
    timer_events: Option<EventCodec<M::Event>>,
}

/// Who runs the effects.
enum Workers<M: Durable> {
    None,
    /// Threads, each with a worker made by the factory.
    Threads(usize, Factory<M>),
    /// A pool of tasks on a tokio runtime, started on a dispatcher thread.
    #[cfg(feature = "tokio")]
    Async(AsyncStart<M>),
}

/// Starts an async pool's dispatcher (on the thread it is called on).
#[cfg(feature = "tokio")]
type AsyncStart<M> = Box<
    dyn FnOnce(Arc<Inner<M>>, mpsc::Receiver<super::supervisor::WorkerMsg<M>>, Option<Duration>)
        + Send,
>;

/// The default number of idempotency keys remembered per machine.
pub const DEFAULT_IDEMPOTENCY_WINDOW: usize = 64;
/// The default capacity of each shard's inbox.
pub const DEFAULT_INBOX_CAPACITY: usize = 4096;
/// The default number of trace entries kept.
pub const DEFAULT_TRACE_CAPACITY: usize = 1024;

impl<M: Durable> KernelBuilder<M> {
    pub(super) fn new(
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
            workers: Workers::None,
            effect_timeout: None,
            effect_codec: None,
            at_most_once: None,
            max_owed: DEFAULT_MAX_PENDING_EFFECTS,
            retry: RetryPolicy::default(),
            refuse_escalated: false,
            intensity: Intensity::default(),
            recover_on_start: true,
            max_timers: crate::timer::DEFAULT_MAX_TIMERS,
            timer_events: <M::Event as crate::machine::Event>::__stored(),
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
    /// Each shard keeps its own ring of this many, so that shards never write to the same
    /// lock; a read returns at most this many, the newest over all shards.
    pub fn trace_capacity(mut self, n: usize) -> Self {
        self.trace = n;
        self
    }

    /// Runs effects on `workers` threads, each with a worker made by `factory(index)` and
    /// remade by it after a crash (a panic). A machine's effects always go to the same worker.
    ///
    /// Effects are **durable**: each is written into its machine's outbox in the same write
    /// as the transition that emitted it, handed to the worker once that write is stored, one
    /// at a time per machine in emission order, and removed in the write that decides the
    /// worker's answer; a failed attempt is retried per [`KernelBuilder::retry`]. After a
    /// crash every owed effect runs again, under the same [`EffectId`](super::EffectId): at
    /// least once, exactly once for a receiver that deduplicates by its key. Effects for which
    /// [`KernelBuilder::at_most_once`] says so are not stored, run once after the commit, and
    /// lost in a crash. For an effect type that cannot be serialized, see
    /// [`KernelBuilder::effects_at_most_once`].
    pub fn effects<W, F>(mut self, workers: usize, factory: F) -> Self
    where
        W: EffectWorker<M>,
        F: Fn(usize) -> W + Send + Sync + 'static,
        M::Effect: Serialize + DeserializeOwned,
    {
        let factory: Factory<M> = Arc::new(move |i| Box::new(factory(i)));
        self.workers = Workers::Threads(workers, factory);
        self.effect_codec = Some(EffectCodec::postcard());
        self
    }

    /// Runs effects as futures on `runtime` (feature `tokio`): each effect a task of
    /// `worker` (shared by all of them), at most `concurrency` at once, durable as with
    /// [`KernelBuilder::effects`]. A panicking task, or one that runs past
    /// [`KernelBuilder::effect_timeout`], is a crash; the pool counts as worker 0 for
    /// [`KernelHandle::restart_worker`](super::KernelHandle::restart_worker) and the metrics.
    #[cfg(feature = "tokio")]
    pub fn async_effects<W>(
        mut self,
        runtime: tokio::runtime::Handle,
        concurrency: usize,
        worker: W,
    ) -> Self
    where
        W: super::AsyncEffectWorker<M>,
        M::Effect: Serialize + DeserializeOwned + Sync,
    {
        let worker = Arc::new(worker);
        self.workers = Workers::Async(Box::new(move |inner, rx, timeout| {
            super::async_effects::run(inner, worker, runtime, concurrency, timeout, rx)
        }));
        self.effect_codec = Some(EffectCodec::postcard());
        self
    }

    /// How long an effect of an async worker ([`KernelBuilder::async_effects`][async_effects])
    /// may run before it is cancelled and counted as a crash (a hang); default: no limit. A
    /// thread worker cannot be preempted, so this bounds async workers only.
    ///
    #[cfg_attr(
        feature = "tokio",
        doc = "[async_effects]: KernelBuilder::async_effects"
    )]
    #[cfg_attr(not(feature = "tokio"), doc = "[async_effects]: KernelBuilder")]
    pub fn effect_timeout(mut self, limit: Duration) -> Self {
        self.effect_timeout = Some(limit);
        self
    }

    /// Like [`KernelBuilder::effects`], with every effect **at most once**: nothing is stored,
    /// each effect is handed to its worker after the commit and lost if the process stops
    /// first, and a failure is not retried (the machine gets the worker's `failure_event`).
    /// For effect types that cannot be serialized, or machines whose state itself shows what
    /// is still to do.
    pub fn effects_at_most_once<W, F>(mut self, workers: usize, factory: F) -> Self
    where
        W: EffectWorker<M>,
        F: Fn(usize) -> W + Send + Sync + 'static,
    {
        let factory: Factory<M> = Arc::new(move |i| Box::new(factory(i)));
        self.workers = Workers::Threads(workers, factory);
        self.effect_codec = None;
        self
    }

    /// Which effects are fire-and-forget (at most once: a log line, a metric) in a kernel whose
    /// effects are durable: those for which `once` is true are not stored and never run again
    /// after a crash.
    pub fn at_most_once(
        mut self,
        once: impl Fn(&M::Effect) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.at_most_once = Some(Arc::new(once));
        self
    }

    /// How failed durable effects are retried (default [`RetryPolicy::default`]: 1 s,
    /// doubling, at most 5 minutes apart, 10 attempts).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Durable effects one machine may owe at once (default
    /// [`DEFAULT_MAX_PENDING_EFFECTS`]); a transition that would owe more is refused with
    /// [`CommandError::Outbox`](super::CommandError::Outbox), nothing changed.
    pub fn max_pending_effects(mut self, n: usize) -> Self {
        self.max_owed = n;
        self
    }

    /// Whether submits for the machines of an escalated worker are refused with
    /// [`SubmitError::Escalated`](super::SubmitError::Escalated) (default off: the machines
    /// move on, and what they owe waits for the worker's restart).
    pub fn refuse_when_escalated(mut self, on: bool) -> Self {
        self.refuse_escalated = on;
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

    /// Timers one machine may hold armed at once (default
    /// [`DEFAULT_MAX_TIMERS`](crate::timer::DEFAULT_MAX_TIMERS)); a transition that would arm
    /// more is refused with [`CommandError::Timer`](super::CommandError::Timer).
    pub fn max_timers(mut self, n: usize) -> Self {
        self.max_timers = n;
        self
    }

    /// Stores the events of named timers and event timeouts in the snapshots (postcard), so
    /// handlers may arm them ([`Effects::start_timer`](crate::Effects::start_timer),
    /// [`Effects::event_timeout`](crate::Effects::event_timeout)). Needed only for an event
    /// type whose `Event` impl is written by hand: one from `#[derive(Event)]` that also
    /// derives `Serialize` and `Deserialize` is stored without it. State timeouts need no
    /// event storage (their event is in the table); an event type that cannot be stored
    /// refuses arming a timer that carries it with
    /// [`TimerError::EventsNotStorable`](crate::timer::TimerError).
    pub fn timer_events(mut self) -> Self
    where
        M::Event: Serialize + DeserializeOwned,
    {
        self.timer_events = Some(EventCodec::postcard());
        self
    }

    /// How to reopen the store after it stops (is poisoned, as the file store is after a
    /// failed fsync); without it, a stopped store leaves every later command
    /// [`CommandError::Unavailable`](super::CommandError::Unavailable).
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
        if self.max_owed == 0 && self.effect_codec.is_some() {
            return Err(BuildError::Config(
                "max_pending_effects 0 refuses every transition with an effect; use at least 1"
                    .into(),
            ));
        }
        if matches!(self.workers, Workers::Threads(0, _)) {
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
        let workers = match &self.workers {
            Workers::None => 0,
            Workers::Threads(n, _) => *n,
            #[cfg(feature = "tokio")]
            Workers::Async(_) => 1,
        };
        let mut receivers = Vec::with_capacity(workers);
        let mut effect_tx = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::channel();
            effect_tx.push(tx);
            receivers.push(rx);
        }
        let started = self.clock.now();
        let clock_for_time = self.clock.clone();
        let inner = Arc::new(Inner {
            inboxes: (0..self.shards).map(|_| Inbox::new()).collect(),
            stats: (0..self.shards)
                .map(|_| Mutex::new(ShardStats::new()))
                .collect(),
            store: StoreCell {
                current: RwLock::new((0, store)),
                generation: AtomicU64::new(0),
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
                max_timers: self.max_timers,
            },
            trace: trace::Trace::new(self.trace, self.shards),
            workers: (0..workers)
                .map(|_| WorkerBoard {
                    escalated: AtomicBool::new(false),
                    stats: Mutex::new(WorkerMetrics::default()),
                })
                .collect(),
            effect_tx,
            escalations: Mutex::new(Vec::new()),
            handed_back: Mutex::new(Vec::new()),
            quiet: Quiet::new(self.shards),
            intake_open: AtomicBool::new(true),
            abandon_effects: AtomicBool::new(false),
            effect_rules: self.effect_codec.map(|codec| EffectRules {
                codec,
                at_most_once: self.at_most_once,
                limit: self.max_owed,
                retry: self.retry,
            }),
            effect_retry: self.retry,
            refuse_escalated: self.refuse_escalated,
            started,
            time: TimeBase::new(&clock_for_time),
            timer_events: self.timer_events,
        });
        let mut per_shard = vec![Vec::new(); self.shards];
        for id in ids {
            per_shard[inner.shard_of(&id)].push(id);
        }
        let mut kernel = Kernel {
            handle: KernelHandle {
                inner: inner.clone(),
                recovery: Arc::new(RecoveryReport::default()),
            },
            shards: Vec::with_capacity(self.shards),
            workers: Vec::with_capacity(workers),
            stopped: false,
        };
        let mut recovery = RecoveryReport::default();
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
            recovery.recovered += report.recovered;
            recovery.quarantined.extend(report.quarantined);
            recovery.unavailable.extend(report.unavailable);
            recovery.not_owned += report.not_owned;
        }
        kernel.handle.recovery = Arc::new(recovery);
        match self.workers {
            Workers::None => {}
            Workers::Threads(_, factory) => {
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
            #[cfg(feature = "tokio")]
            Workers::Async(start) => {
                let inner = inner.clone();
                let timeout = self.effect_timeout;
                let rx = receivers
                    .pop()
                    .ok_or_else(|| BuildError::Config("the async pool has no channel".into()))?;
                let handle = std::thread::Builder::new()
                    .name("fsm-async-effects".into())
                    .spawn(move || start(inner, rx, timeout))
                    .map_err(BuildError::Spawn)?;
                kernel.workers.push(handle);
            }
        }
        #[cfg(feature = "tracing")]
        tracing::info!(
            machine = M::TABLE.machine(),
            recovered = kernel.handle.recovery.recovered,
            quarantined = kernel.handle.recovery.quarantined.len(),
            "fsm.kernel_started"
        );
        Ok(kernel)
    }
}
