//! Effect workers and their supervision: effects run on worker threads after the transition
//! that emitted them is durable; a failing worker is restarted within a restart intensity,
//! then escalated.

use crate::sync::Recover;
use std::collections::VecDeque;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::machine::StateMachine;
use crate::rejection::panic_message;
use crate::store::MachineId;

use super::inbox::{Cmd, Job, WorkerAnswer};
use super::{Durable, EffectId, Inner};

/// What an effect worker returns when an effect fails.
pub type EffectError = Box<dyn std::error::Error + Send + Sync>;

/// Carries out a machine's effects (charging a card, calling a registrar, sending mail) on a
/// worker thread, after the transition that emitted them is durable.
///
/// **Failure is data, crashes are crashes.** An `Err` is an effect failure: a durable effect
/// is retried per the kernel's [`RetryPolicy`](super::RetryPolicy) (the same
/// [`EffectCtx::key`] every time), and when its attempts are spent the machine gets
/// [`failure_event`](EffectWorker::failure_event). A panic is a crash of the worker: it is
/// counted toward the restart intensity, the worker is remade by the factory given to
/// [`KernelBuilder::effects`](super::KernelBuilder::effects), and the effect is retried like a
/// failure. A worker never sees or changes a machine's state; its only way back is an event.
pub trait EffectWorker<M: StateMachine>: Send + 'static {
    /// Carries out `effect`. `Ok(Some(event))` feeds `event` back to the machine (in the
    /// same write that removes a durable effect from its outbox). Hand
    /// [`ctx.key()`](EffectCtx::key) to the outside world as the idempotency key: a durable
    /// effect may run more than once (after a crash, or a retry of an attempt whose answer
    /// was lost), never with another key.
    fn run(&mut self, ctx: &EffectCtx, effect: &M::Effect)
        -> Result<Option<M::Event>, EffectError>;

    /// The event that tells the machine that `effect` failed for good (its last attempt
    /// failed, or it was at most once), if there is one. It is fed back like a result; the
    /// machine applies it if its current state has a transition for it (the table decides),
    /// and rejects it otherwise. Default: none.
    fn failure_event(
        &self,
        ctx: &EffectCtx,
        effect: &M::Effect,
        failure: &Failure,
    ) -> Option<M::Event> {
        let _ = (ctx, effect, failure);
        None
    }
}

/// What a worker knows of the effect it runs: its identity (the idempotency key) and which
/// attempt this is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectCtx {
    id: EffectId,
    attempt: u32,
    last: bool,
    durable: bool,
}

impl EffectCtx {
    /// A context, for testing a worker outside a kernel.
    pub fn new(id: EffectId, attempt: u32, last: bool, durable: bool) -> Self {
        EffectCtx {
            id,
            attempt,
            last,
            durable,
        }
    }

    /// The effect's identity.
    pub fn id(&self) -> &EffectId {
        &self.id
    }

    /// The machine that emitted it.
    pub fn machine(&self) -> &MachineId {
        self.id.machine()
    }

    /// The idempotency key for the outside world (see [`EffectId::key`]).
    pub fn key(&self) -> String {
        self.id.key()
    }

    /// Which attempt this is, from 1 (counted across restarts: the count is stored).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether a failure of this attempt gives the effect up (no retry follows).
    pub fn is_last_attempt(&self) -> bool {
        self.last
    }

    /// Whether the effect is durable (kept in the outbox until answered) rather than at most
    /// once.
    pub fn is_durable(&self) -> bool {
        self.durable
    }
}

/// How an effect failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The worker returned an error.
    Error {
        /// Its message.
        message: String,
    },
    /// The worker panicked.
    Panicked {
        /// The panic's message.
        message: String,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error { message } => write!(f, "error: {message}"),
            Failure::Panicked { message } => write!(f, "panic: {message}"),
        }
    }
}

/// The restart intensity of an effect worker, as an OTP supervisor's: at most `max_restarts`
/// restarts within any period of `within`; one more failure escalates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts allowed within the period.
    pub max_restarts: u32,
    /// The period.
    pub within: Duration,
}

impl Default for Intensity {
    /// 10 restarts in 10 seconds.
    fn default() -> Self {
        Intensity {
            max_restarts: 10,
            within: Duration::from_secs(10),
        }
    }
}

/// A worker that exceeded its restart intensity (it panicked too often). The kernel stopped
/// it: the effects sent to it wait (durable ones in their machines' outboxes too) until
/// [`KernelHandle::restart_worker`](super::KernelHandle::restart_worker) runs them. Its machines still take
/// commands, unless the kernel was built with
/// [`KernelBuilder::refuse_when_escalated`](super::KernelBuilder::refuse_when_escalated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escalation {
    /// The worker.
    pub worker: usize,
    /// When, as time since the kernel started (on the kernel's clock).
    pub at: Duration,
    /// The intensity it exceeded.
    pub intensity: Intensity,
    /// The failure that exceeded it.
    pub failure: Failure,
}

impl fmt::Display for Escalation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "effect worker {} crashed more than {} times within {:?} ({}); its effects wait until it is restarted",
            self.worker, self.intensity.max_restarts, self.intensity.within, self.failure
        )
    }
}

pub(crate) type Factory<M> = Arc<dyn Fn(usize) -> Box<dyn EffectWorker<M>> + Send + Sync>;

pub(crate) enum WorkerMsg<M: Durable> {
    Effect(Run<M>),
    Restart,
    Stop,
}

/// One effect to run.
pub(crate) struct Run<M: Durable> {
    pub(crate) id: EffectId,
    pub(crate) effect: M::Effect,
    pub(crate) attempt: u32,
    pub(crate) durable: bool,
}

struct Supervised<M: Durable> {
    index: usize,
    inner: Arc<Inner<M>>,
    factory: Factory<M>,
    worker: Option<Box<dyn EffectWorker<M>>>,
    restarts: Window,
    /// Effects sent while the worker was escalated, run when it is restarted.
    parked: VecDeque<Run<M>>,
}

/// The crashes within the restart intensity's period, oldest first.
#[derive(Default)]
pub(crate) struct Window(VecDeque<Instant>);

impl Window {
    /// Records a crash at `now`: `true` if a restart is within `intensity`, `false` if this
    /// crash exceeds it (escalation).
    pub(crate) fn admit(&mut self, now: Instant, intensity: Intensity) -> bool {
        while self
            .0
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= intensity.within)
        {
            self.0.pop_front();
        }
        if self.0.len() >= intensity.max_restarts as usize {
            return false;
        }
        self.0.push_back(now);
        true
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

/// How one attempt of an effect ended.
pub(crate) enum Ended<E> {
    /// The worker answered, with an event for the machine or none.
    Done(Option<E>),
    /// It failed: an error, or a crash (a panic, a hang) when `crash`.
    Failed { failure: Failure, crash: bool },
}

/// Tells the machine how an attempt ended, as the rules of durable effects say: a durable
/// effect is settled with the answer, or retried after a failure while attempts remain, or
/// given up into `failure_event` (asked only then); an at-most-once effect feeds back its
/// event or its failure event. Counts into `worker`'s metrics.
///
/// What goes back to the machine is queued in `out` (see [`Outgoing`]).
pub(crate) fn conclude<M: Durable>(
    inner: &Inner<M>,
    worker: usize,
    ctx: &EffectCtx,
    ended: Ended<M::Event>,
    failure_event: impl FnOnce(&Failure) -> Option<M::Event>,
    out: &mut Outgoing<M>,
) {
    let stats = || inner.workers[worker].stats.lock().recover();
    let settles = ctx.durable.then(|| (ctx.id.seq(), ctx.id.index()));
    let event = match ended {
        Ended::Done(event) => event,
        Ended::Failed { failure, crash } => {
            if crash {
                stats().panics += 1;
            } else {
                stats().errors += 1;
            }
            #[cfg(feature = "tracing")]
            tracing::warn!(worker, effect = %ctx.id, attempt = ctx.attempt, %failure, "fsm.effect_failed");
            if !ctx.last {
                stats().retries += 1;
                out.answer(
                    inner,
                    WorkerAnswer {
                        id: ctx.id.machine().clone(),
                        settles: (ctx.id.seq(), ctx.id.index()),
                        retry: true,
                    },
                );
                return;
            }
            if ctx.durable {
                stats().given_up += 1;
            }
            failure_event(&failure)
        }
    };
    let machine = ctx.id.machine();
    match (event, settles) {
        (Some(event), settles) => {
            stats().fed_back += 1;
            out.feed_back(inner, machine, event, settles);
        }
        (None, Some(settles)) => {
            out.answer(
                inner,
                WorkerAnswer {
                    id: machine.clone(),
                    settles,
                    retry: false,
                },
            );
        }
        (None, None) => {}
    }
}

/// What a worker sends back to the shards (fed-back events, answers), queued per shard and
/// handed over together: a worker that finishes a run of effects wakes each shard once, not
/// once per effect. Each job counts as work in flight from the moment it is queued here.
pub(crate) struct Outgoing<M: Durable> {
    per_shard: Vec<Vec<Job<M>>>,
}

impl<M: Durable> Outgoing<M> {
    pub(crate) fn new(shards: usize) -> Self {
        Outgoing {
            per_shard: (0..shards).map(|_| Vec::new()).collect(),
        }
    }

    fn push(&mut self, inner: &Inner<M>, id: &MachineId, job: Job<M>) {
        let shard = inner.shard_of(id);
        inner.quiet.more(shard, 1);
        self.per_shard[shard].push(job);
    }

    fn answer(&mut self, inner: &Inner<M>, answer: WorkerAnswer) {
        let id = answer.id.clone();
        self.push(inner, &id, Job::Answer(answer));
    }

    fn feed_back(
        &mut self,
        inner: &Inner<M>,
        id: &MachineId,
        event: M::Event,
        settles: Option<super::inbox::Settles>,
    ) {
        let cmd = Cmd {
            id: id.clone(),
            request: super::Request::new(event),
            enqueued: inner.stamp(),
            reply: None,
            fire: None,
            settles,
        };
        self.push(inner, id, Job::Command(cmd));
    }

    /// Hands every queued job to its shard, one lock and one wake per shard; what a stopped
    /// shard refuses is no longer in flight.
    pub(crate) fn flush(&mut self, inner: &Inner<M>) {
        for (shard, jobs) in self.per_shard.iter_mut().enumerate() {
            if jobs.is_empty() {
                continue;
            }
            let jobs = std::mem::take(jobs);
            if let Err(refused) = inner.inboxes[shard].feedback_many(jobs) {
                inner.quiet.done(shard, refused);
            }
        }
    }
}

/// Marks worker `index` escalated and records why.
pub(crate) fn escalate<M: Durable>(inner: &Inner<M>, index: usize, failure: Failure) {
    let board = &inner.workers[index];
    board.escalated.store(true, Ordering::Release);
    board.stats.lock().recover().escalated = true;
    let escalation = Escalation {
        worker: index,
        at: inner
            .config
            .clock
            .now()
            .saturating_duration_since(inner.started),
        intensity: inner.config.intensity,
        failure,
    };
    #[cfg(feature = "tracing")]
    tracing::error!(worker = index, %escalation, "fsm.worker_escalated");
    inner.escalations.lock().recover().push(escalation);
}

/// The worker thread: runs effects one at a time, supervising the worker instance.
pub(crate) fn run<M: Durable>(
    index: usize,
    inner: Arc<Inner<M>>,
    factory: Factory<M>,
    rx: Receiver<WorkerMsg<M>>,
) {
    let mut s = Supervised {
        index,
        inner,
        factory,
        worker: None,
        restarts: Window::default(),
        parked: VecDeque::new(),
    };
    s.start(None);
    let mut out = Outgoing::new(s.inner.inboxes.len());
    // A run of effects already queued is worked through before its answers are handed over
    // (each counts as work in flight until then): one wake of each shard per run.
    'worker: while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut ran = 0;
        while let Some(msg) = next.take() {
            match msg {
                WorkerMsg::Stop => {
                    out.flush(&s.inner);
                    break 'worker;
                }
                WorkerMsg::Restart => {
                    s.restarts.clear();
                    s.start(None);
                    // What waited for the restart runs now, in the order it came.
                    for run in std::mem::take(&mut s.parked) {
                        let shard = s.inner.shard_of(run.id.machine());
                        s.inner.quiet.more(shard, 1);
                        s.effect(run, &mut out);
                        s.inner.quiet.done(shard, 1);
                    }
                    s.stats().parked = s.parked.len() as u64;
                }
                WorkerMsg::Effect(run) => {
                    let shard = s.inner.shard_of(run.id.machine());
                    s.effect(run, &mut out);
                    s.inner.quiet.done(shard, 1);
                }
            }
            ran += 1;
            if ran < BURST {
                next = rx.try_recv().ok();
            }
        }
        out.flush(&s.inner);
    }
}

/// The most effects a worker runs before it hands their answers over (a bound on how long an
/// answer waits for the run it is part of).
const BURST: usize = 16;

impl<M: Durable> Supervised<M> {
    fn stats(&self) -> std::sync::MutexGuard<'_, super::stats::WorkerMetrics> {
        self.inner.workers[self.index].stats.lock().recover()
    }

    /// A fresh worker instance; a factory that panics escalates at once.
    fn start(&mut self, failure: Option<Failure>) {
        let factory = self.factory.clone();
        let index = self.index;
        match panic::catch_unwind(AssertUnwindSafe(|| factory(index))) {
            Ok(w) => {
                self.worker = Some(w);
                self.inner.workers[index]
                    .escalated
                    .store(false, Ordering::Release);
                self.stats().escalated = false;
            }
            Err(p) => {
                let failure = failure.unwrap_or(Failure::Panicked {
                    message: format!("the worker factory panicked: {}", panic_message(&*p)),
                });
                self.escalate(failure);
            }
        }
    }

    fn effect(&mut self, run: Run<M>, out: &mut Outgoing<M>) {
        if self.inner.abandon_effects.load(Ordering::Acquire) {
            // Shutting down: a durable effect stays owed in its outbox for the next start.
            self.stats().abandoned += 1;
            return;
        }
        let Some(worker) = self.worker.as_mut() else {
            // Escalated: the effect waits for the operator's restart.
            self.parked.push_back(run);
            self.stats().parked = self.parked.len() as u64;
            return;
        };
        let last = !run.durable || run.attempt >= self.inner.effect_retry.max_attempts();
        let ctx = EffectCtx::new(run.id, run.attempt, last, run.durable);
        let result = panic::catch_unwind(AssertUnwindSafe(|| worker.run(&ctx, &run.effect)));
        self.stats().effects += 1;
        let ended = match result {
            Ok(Ok(event)) => Ended::Done(event),
            Ok(Err(e)) => Ended::Failed {
                failure: Failure::Error {
                    message: e.to_string(),
                },
                crash: false,
            },
            Err(p) => Ended::Failed {
                failure: Failure::Panicked {
                    message: panic_message(&*p),
                },
                crash: true,
            },
        };
        // The failure event is asked of the instance that failed, before a restart: the
        // mapping is a pure function of its arguments.
        let mut event = None;
        if let Ended::Failed { failure, crash } = &ended {
            if last {
                event = self.worker.as_ref().and_then(|w| {
                    panic::catch_unwind(AssertUnwindSafe(|| {
                        w.failure_event(&ctx, &run.effect, failure)
                    }))
                    .ok()
                    .flatten()
                });
            }
            if *crash {
                self.restart(failure.clone());
            }
        }
        conclude(&self.inner, self.index, &ctx, ended, |_| event, out);
    }

    /// Restarts the worker unless that exceeds the intensity, in which case it escalates.
    fn restart(&mut self, failure: Failure) {
        let now = self.inner.config.clock.now();
        self.worker = None;
        if !self.restarts.admit(now, self.inner.config.intensity) {
            self.escalate(failure);
            return;
        }
        self.stats().restarts += 1;
        self.start(Some(failure));
    }

    fn escalate(&mut self, failure: Failure) {
        self.worker = None;
        escalate(&self.inner, self.index, failure);
    }
}
