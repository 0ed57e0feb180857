//! Effect workers and their supervision: effects run on worker threads after the transition
//! that emitted them is durable; a failing worker is restarted within a restart intensity,
//! then escalated.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use crate::machine::StateMachine;
use crate::rejection::panic_message;
use crate::store::MachineId;

use super::inbox::{Answer, Settles};
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
/// [`Kernel::restart_worker`](super::Kernel::restart_worker) runs them. Its machines still take
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
    restarts: VecDeque<Instant>,
    /// Effects sent while the worker was escalated, run when it is restarted.
    parked: VecDeque<Run<M>>,
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
        restarts: VecDeque::new(),
        parked: VecDeque::new(),
    };
    s.start(None);
    for msg in rx {
        match msg {
            WorkerMsg::Stop => break,
            WorkerMsg::Restart => {
                s.restarts.clear();
                s.start(None);
                // What waited for the restart runs now, in the order it came.
                for run in std::mem::take(&mut s.parked) {
                    let shard = s.inner.shard_of(run.id.machine());
                    s.inner.quiet.more(shard, 1);
                    s.effect(run);
                    s.inner.quiet.done(shard, 1);
                }
                s.stats().parked = s.parked.len() as u64;
            }
            WorkerMsg::Effect(run) => {
                let shard = s.inner.shard_of(run.id.machine());
                s.effect(run);
                s.inner.quiet.done(shard, 1);
            }
        }
    }
}

impl<M: Durable> Supervised<M> {
    fn stats(&self) -> std::sync::MutexGuard<'_, super::stats::WorkerMetrics> {
        self.inner.workers[self.index]
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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

    fn effect(&mut self, run: Run<M>) {
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
        let retries = self.inner.effect_retry.max_attempts();
        let last = !run.durable || run.attempt >= retries;
        let ctx = EffectCtx::new(run.id, run.attempt, last, run.durable);
        let result = panic::catch_unwind(AssertUnwindSafe(|| worker.run(&ctx, &run.effect)));
        self.stats().effects += 1;
        let settles = run.durable.then(|| (ctx.id.seq(), ctx.id.index()));
        let (failure, crashed) = match result {
            Ok(Ok(event)) => {
                self.report(&ctx, event, settles);
                return;
            }
            Ok(Err(e)) => {
                self.stats().errors += 1;
                let message = e.to_string();
                (Failure::Error { message }, false)
            }
            Err(p) => {
                self.stats().panics += 1;
                let message = panic_message(&*p);
                (Failure::Panicked { message }, true)
            }
        };
        #[cfg(feature = "tracing")]
        tracing::warn!(worker = self.index, effect = %ctx.id, attempt = ctx.attempt, %failure, "fsm.effect_failed");
        // The failure event is asked of the instance that failed, before a restart: the
        // mapping is a pure function of its arguments.
        let event = if last {
            self.worker.as_ref().and_then(|w| {
                panic::catch_unwind(AssertUnwindSafe(|| {
                    w.failure_event(&ctx, &run.effect, &failure)
                }))
                .ok()
                .flatten()
            })
        } else {
            None
        };
        if crashed {
            self.restart(failure);
        }
        if !last {
            self.stats().retries += 1;
            self.inner.answer(Answer {
                id: ctx.id.machine().clone(),
                settles: (ctx.id.seq(), ctx.id.index()),
                retry: true,
            });
            return;
        }
        if run.durable {
            self.stats().given_up += 1;
        }
        self.report(&ctx, event, settles);
    }

    /// Sends the machine the worker's event, if any; a durable effect is settled with it (or
    /// alone, without one).
    fn report(&mut self, ctx: &EffectCtx, event: Option<M::Event>, settles: Option<Settles>) {
        let machine = ctx.id.machine();
        match (event, settles) {
            (Some(event), settles) => {
                if self.inner.feed_back(machine, event, settles) {
                    self.stats().fed_back += 1;
                }
            }
            (None, Some(settles)) => {
                self.inner.answer(Answer {
                    id: machine.clone(),
                    settles,
                    retry: false,
                });
            }
            (None, None) => {}
        }
    }

    /// Restarts the worker unless that exceeds the intensity, in which case it escalates.
    fn restart(&mut self, failure: Failure) {
        let intensity = self.inner.config.intensity;
        let now = self.inner.config.clock.now();
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= intensity.within)
        {
            self.restarts.pop_front();
        }
        self.worker = None;
        if self.restarts.len() >= intensity.max_restarts as usize {
            self.escalate(failure);
            return;
        }
        self.restarts.push_back(now);
        self.stats().restarts += 1;
        self.start(Some(failure));
    }

    fn escalate(&mut self, failure: Failure) {
        self.worker = None;
        let board = &self.inner.workers[self.index];
        board.escalated.store(true, Ordering::Release);
        self.stats().escalated = true;
        let escalation = Escalation {
            worker: self.index,
            at: self
                .inner
                .config
                .clock
                .now()
                .saturating_duration_since(self.inner.started),
            intensity: self.inner.config.intensity,
            failure,
        };
        #[cfg(feature = "tracing")]
        tracing::error!(worker = self.index, %escalation, "fsm.worker_escalated");
        self.inner
            .escalations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(escalation);
    }
}
