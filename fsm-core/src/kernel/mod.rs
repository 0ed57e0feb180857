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
//! 5. **effects** go to the effect workers (see [`EffectWorker`]): durable ones were written
//!    into the same snapshots (see Effects below).
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
//! ([`KernelHandle::take_handed_back`]) for the caller to send to the owner. If the store refuses a
//! commit because ownership moved meanwhile (a late write of a paused node), the machines it
//! lost are answered `Fenced`, dropped from memory with their postponed commands handed back,
//! and the rest of the batch is stored. A machine owned again under a newer epoch is reloaded,
//! so it continues from what the other owner stored.
//!
//! # Timers
//! Handlers arm timers through their [`Effects`](crate::Effects) and states declare timeouts
//! in the table (see [`crate::timer`] for the rules). The kernel stores a machine's armed
//! timers in its snapshot, in the same write as the transition that armed them, and fires each
//! as a command through the normal path when its deadline passes (on the system clock the
//! shard sleeps exactly until the next one; on a [`ManualClock`](crate::queue::ManualClock)
//! timers fire in the shard's batches and on [`KernelHandle::fire_due_timers`]). A firing disarms
//! its timer in the same write as the transition it causes: after a crash a timer that had not
//! fired fires once, promptly if its deadline passed meanwhile, and one that fired does not
//! fire again. Deadlines are wall-clock milliseconds read once at start and advanced by the
//! monotonic clock; a restored timer never waits longer than its own duration (a clock set
//! back while the process was down). Named timers and event timeouts carry an event, stored
//! only by a kernel built with [`KernelBuilder::timer_events`].
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
//!
//! # Effects
//! With [`KernelBuilder::effects`] (or [`KernelBuilder::async_effects`][async_effects], feature `tokio`)
//! effects are **durable**: each is written into its machine's snapshot (the envelope's outbox
//! section) in the same write as the transition that emitted it, under an [`EffectId`] that
//! never changes, and handed to the machine's worker once that write is stored, one at a time
//! per machine in emission order. The worker's answer (its event, if any) and the effect's
//! removal are one write. A failed attempt (`Err`) is retried after the [`RetryPolicy`]'s delay,
//! stored in the entry like a timer's deadline; when the attempts are spent the effect is given
//! up and the machine gets the worker's `failure_event`. A panic is a crash of the worker,
//! counted toward its restart intensity, and the attempt is retried like a failure. After a
//! crash, loading a machine (every machine at start, unless recovery on start is off) hands
//! its first owed effect to its worker again: every committed effect runs **at least once**,
//! and exactly once for a receiver that deduplicates by [`EffectId::key`]. Effects for which
//! [`KernelBuilder::at_most_once`] says so, and every effect of a kernel built with
//! [`KernelBuilder::effects_at_most_once`], are not stored: they run at most once, after the
//! commit, and a crash loses them.
//!
//! A machine owes at most [`KernelBuilder::max_pending_effects`] at once (a transition that
//! would owe more is refused with [`CommandError::Outbox`], nothing changed), and machines that
//! owe effects stay in memory. [`KernelHandle::owed`] lists what a machine owes;
//! [`KernelHandle::wait_idle`] waits for effects running or ready to run, not for those waiting out a
//! retry delay or an escalated worker's restart. An escalated worker stops taking effects
//! (they wait, durably) while its machines keep taking commands, unless
//! [`KernelBuilder::refuse_when_escalated`].
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
//!
#![cfg_attr(
    feature = "tokio",
    doc = "[async_effects]: KernelBuilder::async_effects"
)]
#![cfg_attr(not(feature = "tokio"), doc = "[async_effects]: KernelBuilder")]

#[cfg(feature = "admin")]
pub mod admin;
mod armed;
#[cfg(feature = "tokio")]
mod async_effects;
mod builder;
mod codecs;
#[doc(hidden)]
pub use codecs::EventCodec;
mod due;
#[cfg(feature = "metrics")]
mod export;
mod inbox;
mod journal;
mod outbox;
mod outcome;
mod queries;
mod quiet;
mod report;
mod request;
pub(crate) mod section;
mod shard;
mod stats;
mod store_cell;
mod submit;
mod supervisor;
mod time_base;
mod trace;

use crate::sync::Recover;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::machine::StateMachine;
use crate::queue::{Clock, Overflow, Overload, Stamps, Ticket};
use crate::store::{Codec, MachineId, SnapshotStore, StoreError};

pub use crate::queue::Shutdown;
pub use armed::{keys_in, timers_in, AppliedKey, ArmedTimer};
#[cfg(feature = "tokio")]
pub use async_effects::AsyncEffectWorker;
pub use builder::{
    BuildError, KernelBuilder, DEFAULT_IDEMPOTENCY_WINDOW, DEFAULT_INBOX_CAPACITY,
    DEFAULT_TRACE_CAPACITY,
};
pub use outbox::{
    owed_in, EffectId, OutboxError, OwedEffect, RetryPolicy, RetryPolicyError,
    DEFAULT_MAX_PENDING_EFFECTS,
};
pub use outcome::{Answer, CommandError, Committed, QuarantineCause, Quarantined, SubmitError};
pub use report::{RecoveryReport, ShutdownReport};
pub use request::{IdempotencyKey, InvalidKey, Request, MAX_KEY_LEN};
pub use section::SectionError;
pub use stats::{KernelCounts, KernelMetrics, ShardMetrics, WorkerMetrics};
pub use supervisor::{EffectCtx, EffectError, EffectWorker, Escalation, Failure, Intensity};
pub use trace::{TraceEntry, TraceFilter, TraceOutcome, TraceSource};

use inbox::{Closing, Cmd, Inbox, Job};
use quiet::Quiet;
use shard::HandedBack;
use stats::ShardStats;
use store_cell::StoreCell;
use submit::enqueue;
use supervisor::WorkerMsg;

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
    max_timers: usize,
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
    /// How effects are kept owed, if they are durable.
    effect_rules: Option<shard::EffectRules<M::Effect>>,
    /// The retry policy of durable effects (workers read how many attempts there are).
    effect_retry: RetryPolicy,
    /// Whether submits for an escalated worker's machines are refused.
    refuse_escalated: bool,
    started: Instant,
    /// Where timer deadlines are placed (the wall clock, read once at start).
    time: time_base::TimeBase,
    /// How timer events are stored, if the kernel was built to store them.
    timer_events: Option<codecs::EventCodec<M::Event>>,
}

/// A stable hash of the id (see [`MachineId::stable_hash`]), so a machine stays on the same
/// shard and worker across runs and builds.
fn stable_hash(id: &MachineId, salt: u64) -> u64 {
    id.salted_hash(salt)
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

    /// The escalated worker that serves machine `id`, if its worker escalated and the kernel
    /// refuses such machines' commands.
    fn escalated_worker(&self, id: &MachineId) -> Option<usize> {
        if !self.refuse_escalated {
            return None;
        }
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
}

/// What a submit call returns: the ticket of an accepted command, or why it was not.
pub type Submitted<E> = Result<Ticket<Answer>, SubmitError<E>>;

/// Runs machines of type `M`: a registry keyed by [`MachineId`], sharded across threads,
/// in front of a [`SnapshotStore`]. See the [module documentation](self) for what happens
/// to each command and what is guaranteed.
///
/// Dropping a kernel shuts it down as [`Shutdown::HandBack`] does (queued commands are
/// answered [`CommandError::Closed`]); call [`Kernel::shutdown`] to drain it instead.
///
/// The kernel owns its threads; everything else it does is on its [`KernelHandle`], which
/// it dereferences to (`kernel.submit(..)`), and which [`Kernel::handle`] clones for other
/// threads and tasks, as tokio's `Runtime` and `Handle` are split.
pub struct Kernel<M: Durable> {
    handle: KernelHandle<M>,
    shards: Vec<JoinHandle<HandedBack<M::Event>>>,
    workers: Vec<JoinHandle<()>>,
    stopped: bool,
}

/// A cheap, cloneable handle to a running [`Kernel`]: submits commands, reads state, metrics
/// and the trace, fires timers, releases quarantined machines, restarts workers. Clone it
/// into every thread or task that talks to the kernel; it owns no thread, and it outlives the
/// kernel harmlessly (its submits are then refused [`SubmitError::Closed`], its reads
/// [`CommandError::Closed`]).
pub struct KernelHandle<M: Durable> {
    inner: Arc<Inner<M>>,
    recovery: Arc<RecoveryReport>,
}

impl<M: Durable> Clone for KernelHandle<M> {
    fn clone(&self) -> Self {
        KernelHandle {
            inner: self.inner.clone(),
            recovery: self.recovery.clone(),
        }
    }
}

impl<M: Durable> std::ops::Deref for Kernel<M> {
    type Target = KernelHandle<M>;

    fn deref(&self) -> &KernelHandle<M> {
        &self.handle
    }
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

    /// A cheap, cloneable handle to this kernel, for other threads and tasks (the kernel
    /// itself dereferences to one).
    pub fn handle(&self) -> KernelHandle<M> {
        self.handle.clone()
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
        let inner = &*self.handle.inner;
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
        handed_back.append(&mut inner.handed_back.lock().recover());
        #[cfg(feature = "tracing")]
        tracing::info!(
            machine = M::TABLE.machine(),
            handed_back = handed_back.len(),
            "fsm.kernel_stopped"
        );
        handed_back
    }
}

impl<M: Durable> KernelHandle<M> {
    /// Submits a command for machine `id`, waiting for room under back-pressure (up to the
    /// request's deadline). The [`Ticket`] gives the [`Answer`] once the transition is
    /// durable, or why not.
    pub fn submit(
        &self,
        id: &MachineId,
        request: impl Into<Request<M::Event>>,
    ) -> Result<Ticket<Answer>, SubmitError<M::Event>> {
        enqueue(&self.inner, id, request.into(), inbox::Room::Wait)
    }

    /// Like [`KernelHandle::submit`], never waiting: a full inbox under back-pressure refuses at
    /// once with [`SubmitError::Full`].
    pub fn try_submit(
        &self,
        id: &MachineId,
        request: impl Into<Request<M::Event>>,
    ) -> Result<Ticket<Answer>, SubmitError<M::Event>> {
        enqueue(&self.inner, id, request.into(), inbox::Room::Refuse)
    }

    /// Like [`KernelHandle::submit`] for async code (feature `tokio`): under back-pressure it waits
    /// for room as a future, never blocking the executor's thread, up to the request's
    /// deadline (then [`SubmitError::Expired`]). `.await` the ticket it gives for the outcome.
    ///
    /// ```
    /// # use fsm_core::kernel::Kernel;
    /// # use fsm_core::store::{MachineId, MemoryStore};
    /// # use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
    /// # #[fsm(event = Cmd)]
    /// # enum Lamp { #[fsm(initial, on(Toggle => Lamp))] Lamp { on: bool } }
    /// # #[derive(Event, Debug, Clone)]
    /// # enum Cmd { Toggle }
    /// # impl Handler<cmd::Toggle, lamp::Lamp> for lamp::Lamp {
    /// #     fn handle(s: lamp::LampRef<'_>, _: cmd::Toggle, _: &mut Effects<()>) -> Result<lamp::Lamp, Refusal> {
    /// #         Ok(lamp::Lamp { on: !*s.on })
    /// #     }
    /// # }
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    /// let kernel = Kernel::builder(MemoryStore::new(), |_| Lamp::Lamp { on: false }).start()?;
    /// let id = MachineId::new("lamp")?;
    /// let committed = rt.block_on(async {
    ///     kernel.submit_async(&id, Cmd::Toggle).await?.await.map_err(Box::<dyn std::error::Error>::from)
    /// })?;
    /// assert_eq!(committed.seq, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn submit_async(
        &self,
        id: &MachineId,
        request: impl Into<Request<M::Event>>,
    ) -> Result<Ticket<Answer>, SubmitError<M::Event>> {
        submit::enqueue_async(&self.inner, id, request.into()).await
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
                    fire: None,
                    settles: None,
                },
            ));
        }
        for (shard, group) in per_shard.into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let (slots, cmds): (Vec<usize>, Vec<Cmd<M>>) = group.into_iter().unzip();
            inner.quiet.more(shard, cmds.len());
            let results = inner.inboxes[shard].submit_many(
                cmds,
                inner.config.capacity,
                &inner.config.clock,
                || inner.intake_open.load(Ordering::Acquire),
                inner.stamp(),
            );
            for (i, result) in slots.into_iter().zip(results) {
                if let Err((refusal, cmd)) = result {
                    inner.quiet.done(shard, 1);
                    out[i] = Some(Err(refusal.into_error(cmd.request)));
                }
            }
        }
        out.into_iter().flatten().collect()
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
        let now_ms = inner.time.floor(inner.config.clock.now());
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
            let stats = stats.lock().recover();
            let mut counts = stats.counts;
            counts.submitted += submitted;
            counts.full += full;
            counts.dumped += dumped;
            counts.expired += expired;
            counts.closed += closed;
            counts.queued = queued as u64;
            shards.push(ShardMetrics::of(
                counts,
                &stats.hist,
                &stats,
                high_water,
                now_ms,
            ));
            parts.push((counts, stats.hist.clone(), high_water));
        }
        let total = KernelMetrics::total(&parts, &shards, now_ms);
        KernelMetrics {
            machine: M::TABLE.machine(),
            shards,
            total,
            workers: inner
                .workers
                .iter()
                .map(|w| *w.stats.lock().recover())
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
        std::mem::take(&mut *self.inner.handed_back.lock().recover())
    }

    /// The live trace: the most recent decisions matching `filter`, oldest first.
    pub fn trace(&self, filter: &TraceFilter) -> Vec<TraceEntry> {
        self.inner.trace.read(filter)
    }

    /// Workers that exceeded their restart intensity, in order.
    pub fn escalations(&self) -> Vec<Escalation> {
        self.inner.escalations.lock().recover().clone()
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

    /// Fires every timer due now on every shard, and returns how many fired. Shards do this
    /// on their own when a timer comes due on [`Clock::System`]; a kernel on a
    /// [`ManualClock`](crate::queue::ManualClock) fires timers only in its batches, so a test
    /// moves the clock, calls this, then [`KernelHandle::wait_idle`] to see the firings decided.
    pub fn fire_due_timers(&self) -> usize {
        self.inner
            .inboxes
            .iter()
            .filter_map(|inbox| {
                let (ticket, reply) = Ticket::new(|| 0);
                inbox.control(Job::FireTimers(reply)).then(|| ticket.wait())
            })
            .sum()
    }

    /// Machines quarantined now, across all shards, as found at start or on load.
    pub fn quarantined(&self) -> Vec<Arc<Quarantined>> {
        self.inner
            .stats
            .iter()
            .flat_map(|s| s.lock().recover().quarantine.clone())
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

    /// Brings machine `id` into memory if it is not (from the store, or new if nothing is
    /// stored), so its timers are armed and the effects it owes are handed to a worker; returns
    /// the sequence of its newest durable snapshot. For a node that just took over a
    /// partition: its machines' timers fire here from now on.
    pub fn load(&self, id: &MachineId) -> Result<Option<u64>, CommandError> {
        let (ticket, reply) = Ticket::new(|| Err(CommandError::Closed));
        let reader: inbox::Inspector<M> =
            Box::new(move |found| reply.send(found.map(|(_, seq)| seq)));
        if !self.inner.inboxes[self.inner.shard_of(id)].control(Job::Inspect(id.clone(), reader)) {
            return Err(CommandError::Closed);
        }
        ticket.wait()
    }

    /// The durable effects machine `id` owes now, oldest first: each with its key, failed
    /// attempts, when the next attempt may start, and whether its worker runs it now. Read on
    /// the machine's shard between batches; loads the machine if it is not in memory.
    pub fn owed(&self, id: &MachineId) -> Result<Vec<OwedEffect>, CommandError> {
        let (ticket, reply) = Ticket::new(|| Err(CommandError::Closed));
        if !self.inner.inboxes[self.inner.shard_of(id)].control(Job::Owed(id.clone(), reply)) {
            return Err(CommandError::Closed);
        }
        ticket.wait()
    }

    /// The timers machine `id` has armed, soonest first, with the events they fire. Read on
    /// the machine's shard between batches; loads the machine if it is not in memory.
    pub fn timers(&self, id: &MachineId) -> Result<Vec<ArmedTimer>, CommandError> {
        self.details(id).map(|(timers, _)| timers)
    }

    /// The idempotency keys machine `id` remembers (its journal: at most
    /// [`KernelBuilder::idempotency_window`] of them), oldest first, each with the
    /// transition it caused. A retry with one of them gets that original answer.
    pub fn keys(&self, id: &MachineId) -> Result<Vec<AppliedKey>, CommandError> {
        self.details(id).map(|(_, keys)| keys)
    }

    fn details(&self, id: &MachineId) -> Result<inbox::Details, CommandError> {
        let (ticket, reply) = Ticket::new(|| Err(CommandError::Closed));
        if !self.inner.inboxes[self.inner.shard_of(id)].control(Job::Details(id.clone(), reply)) {
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
    /// effect handed to a worker or ready for one has run, and every answer and event those
    /// fed back is decided and stored too. Commands submitted meanwhile are waited for as
    /// well. Effects waiting out a retry delay, or for an escalated worker's restart, are not
    /// work in flight: [`KernelHandle::owed`] shows them.
    pub fn wait_idle(&self) {
        self.inner.quiet.wait_idle();
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
            .field("shards", &self.handle.inner.inboxes.len())
            .field("workers", &self.handle.inner.workers.len())
            .finish_non_exhaustive()
    }
}
