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

use super::{Durable, Inner};

/// What an effect worker returns when an effect fails.
pub type EffectError = Box<dyn std::error::Error + Send + Sync>;

/// Carries out a machine's effects (charging a card, calling a registrar, sending mail) on a
/// worker thread, after the transition that emitted them is durable.
///
/// A worker may fail (return an error) or panic: the kernel catches it, counts it, asks
/// [`failure_event`](EffectWorker::failure_event) for an event to tell the machine, and
/// restarts the worker with a fresh instance from the factory given to
/// [`KernelBuilder::effects`](super::KernelBuilder::effects), within the restart intensity.
/// A worker never sees or changes a machine's state; its only way back is an event.
pub trait EffectWorker<M: StateMachine>: Send + 'static {
    /// Carries out `effect` of machine `id`. `Ok(Some(event))` feeds `event` back to the
    /// machine (as a command the kernel applies like any other).
    fn run(&mut self, id: &MachineId, effect: &M::Effect) -> Result<Option<M::Event>, EffectError>;

    /// The event that tells machine `id` that `effect` failed, if there is one. It is fed
    /// back like a result; the machine applies it if its current state has a transition for
    /// it (the table decides), and rejects it otherwise. Default: none.
    fn failure_event(
        &self,
        id: &MachineId,
        effect: &M::Effect,
        failure: &Failure,
    ) -> Option<M::Event> {
        let _ = (id, effect, failure);
        None
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

/// A worker that exceeded its restart intensity. The kernel stopped it and takes no commands
/// for its machines until [`Kernel::restart_worker`](super::Kernel::restart_worker).
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
            "effect worker {} failed more than {} times within {:?} ({}); its machines take no commands until it is restarted",
            self.worker, self.intensity.max_restarts, self.intensity.within, self.failure
        )
    }
}

pub(crate) type Factory<M> = Arc<dyn Fn(usize) -> Box<dyn EffectWorker<M>> + Send + Sync>;

pub(crate) enum WorkerMsg<M: Durable> {
    Effect { id: MachineId, effect: M::Effect },
    Restart,
    Stop,
}

struct Supervised<M: Durable> {
    index: usize,
    inner: Arc<Inner<M>>,
    factory: Factory<M>,
    worker: Option<Box<dyn EffectWorker<M>>>,
    restarts: VecDeque<Instant>,
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
    };
    s.start(None);
    for msg in rx {
        match msg {
            WorkerMsg::Stop => break,
            WorkerMsg::Restart => {
                s.restarts.clear();
                s.start(None);
            }
            WorkerMsg::Effect { id, effect } => {
                s.effect(&id, &effect);
                s.inner.quiet.done(s.inner.shard_of(&id), 1);
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

    fn effect(&mut self, id: &MachineId, effect: &M::Effect) {
        if self.inner.abandon_effects.load(Ordering::Acquire) {
            self.stats().abandoned += 1;
            return;
        }
        let Some(worker) = self.worker.as_mut() else {
            self.stats().abandoned += 1;
            return;
        };
        let result = panic::catch_unwind(AssertUnwindSafe(|| worker.run(id, effect)));
        self.stats().effects += 1;
        let failure = match result {
            Ok(Ok(event)) => {
                if let Some(event) = event {
                    self.feed_back(id, event);
                }
                return;
            }
            Ok(Err(e)) => {
                self.stats().errors += 1;
                Failure::Error {
                    message: e.to_string(),
                }
            }
            Err(p) => {
                self.stats().panics += 1;
                Failure::Panicked {
                    message: panic_message(&*p),
                }
            }
        };
        #[cfg(feature = "tracing")]
        tracing::warn!(worker = self.index, machine = %id, %failure, "fsm.effect_failed");
        // Ask the instance that failed: the mapping is a pure function of its arguments, and
        // asking before the restart means an escalating failure is still reported.
        let event = self.worker.as_ref().and_then(|w| {
            panic::catch_unwind(AssertUnwindSafe(|| w.failure_event(id, effect, &failure)))
                .ok()
                .flatten()
        });
        self.restart(failure);
        if let Some(event) = event {
            self.feed_back(id, event);
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

    fn feed_back(&mut self, id: &MachineId, event: M::Event) {
        if self.inner.feed_back(id, event) {
            self.stats().fed_back += 1;
        }
    }
}
