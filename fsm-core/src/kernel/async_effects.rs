//! Effects as futures on the user's tokio runtime (feature `tokio`): an [`AsyncEffectWorker`]
//! runs each effect as a task, at most `concurrency` at once, under the same rules as a
//! thread worker (a durable effect settled with its answer, retried after a failure, given up
//! into the failure event; a panicking task or one past the effect timeout is a crash that
//! counts toward the restart intensity; an escalated pool parks what it is sent until
//! [`KernelHandle::restart_worker`](super::KernelHandle::restart_worker)).
//!
//! Order: the shard hands a machine's durable effects out one at a time, so they run in
//! emission order whatever the concurrency; effects of different machines run concurrently.
//! On shutdown, effects still running are not waited for by [`Shutdown::HandBack`]
//! (super::Shutdown::HandBack): their answers find the kernel closed, and a durable one stays
//! owed in its machine's outbox, run again on the next start.

use crate::sync::Recover;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::supervisor::{conclude, escalate, Ended, Outgoing, Run, Window, WorkerMsg};
use super::{Durable, EffectCtx, EffectError, Failure, Inner};
use crate::machine::StateMachine;
use crate::rejection::panic_message;

/// Carries out a machine's effects as futures on a tokio runtime (an HTTP client, a database
/// driver), after the transition that emitted them is durable. Shared by every task of the
/// pool (`&self`): keep connection pools and clients in it.
///
/// The rules are [`EffectWorker`](super::EffectWorker)'s: `Ok(Some(event))` feeds `event` back
/// (in the write that settles a durable effect), an `Err` is a failure (retried, then given up
/// into [`failure_event`](AsyncEffectWorker::failure_event)), a panic or a task that outlives
/// [`KernelBuilder::effect_timeout`](super::KernelBuilder::effect_timeout) is a crash. Hand
/// [`EffectCtx::key`] to the outside world as the idempotency key.
pub trait AsyncEffectWorker<M: StateMachine>: Send + Sync + 'static {
    /// Carries out `effect`.
    fn run(
        &self,
        ctx: &EffectCtx,
        effect: &M::Effect,
    ) -> impl Future<Output = Result<Option<M::Event>, EffectError>> + Send;

    /// The event that tells the machine that `effect` failed for good, if there is one.
    /// Default: none.
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

/// The pool's supervision, shared by its dispatcher thread and its tasks.
struct Pool<M: Durable, W> {
    inner: Arc<Inner<M>>,
    worker: Arc<W>,
    /// Crashes within the intensity's period; whether the pool escalated; what waits.
    state: Mutex<PoolState<M>>,
    timeout: Option<Duration>,
}

struct PoolState<M: Durable> {
    crashes: Window,
    escalated: bool,
    parked: VecDeque<Run<M>>,
}

/// The pool's dispatcher: takes effects from the shards, waits for a free slot (a permit of
/// the semaphore, on this dedicated thread, never on an executor's), and runs each as a task
/// on `runtime`.
pub(crate) fn run<M, W>(
    inner: Arc<Inner<M>>,
    worker: Arc<W>,
    runtime: tokio::runtime::Handle,
    concurrency: usize,
    timeout: Option<Duration>,
    rx: Receiver<WorkerMsg<M>>,
) where
    M: Durable,
    M::Effect: Sync,
    W: AsyncEffectWorker<M>,
{
    let pool = Arc::new(Pool {
        inner,
        worker,
        state: Mutex::new(PoolState {
            crashes: Window::default(),
            escalated: false,
            parked: VecDeque::new(),
        }),
        timeout,
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    for msg in rx {
        match msg {
            WorkerMsg::Stop => break,
            WorkerMsg::Restart => {
                let parked = {
                    let mut state = pool.lock();
                    state.crashes.clear();
                    state.escalated = false;
                    std::mem::take(&mut state.parked)
                };
                pool.inner.workers[0]
                    .escalated
                    .store(false, Ordering::Release);
                pool.stats().escalated = false;
                pool.stats().parked = 0;
                for run in parked {
                    let shard = pool.inner.shard_of(run.id.machine());
                    pool.inner.quiet.more(shard, 1);
                    spawn(&pool, &slots, &runtime, run);
                }
            }
            WorkerMsg::Effect(run) => spawn(&pool, &slots, &runtime, run),
        }
    }
}

impl<M: Durable, W> Pool<M, W> {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState<M>> {
        self.state.lock().recover()
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, super::stats::WorkerMetrics> {
        self.inner.workers[0].stats.lock().recover()
    }

    /// Counts a crash; escalates the pool when it exceeds the intensity.
    fn crashed(&self, failure: &Failure) {
        let now = self.inner.config.clock.now();
        let mut state = self.lock();
        if state.escalated {
            return;
        }
        if state.crashes.admit(now, self.inner.config.intensity) {
            drop(state);
            self.stats().restarts += 1;
        } else {
            state.escalated = true;
            drop(state);
            escalate(&self.inner, 0, failure.clone());
        }
    }
}

/// Runs one effect as a task once a slot is free; its work in flight ends when it answered.
fn spawn<M, W>(
    pool: &Arc<Pool<M, W>>,
    slots: &Arc<tokio::sync::Semaphore>,
    runtime: &tokio::runtime::Handle,
    run: Run<M>,
) where
    M: Durable,
    M::Effect: Sync,
    W: AsyncEffectWorker<M>,
{
    let shard = pool.inner.shard_of(run.id.machine());
    if pool.inner.abandon_effects.load(Ordering::Acquire) {
        pool.stats().abandoned += 1;
        pool.inner.quiet.done(shard, 1);
        return;
    }
    {
        let mut state = pool.lock();
        if state.escalated {
            state.parked.push_back(run);
            let parked = state.parked.len() as u64;
            drop(state);
            pool.stats().parked = parked;
            pool.inner.quiet.done(shard, 1);
            return;
        }
    }
    // Waits here, on the dispatcher's own thread, for a free slot.
    let Ok(permit) = runtime.block_on(slots.clone().acquire_owned()) else {
        pool.inner.quiet.done(shard, 1);
        return;
    };
    let pool = pool.clone();
    runtime.spawn(async move {
        let _permit = permit;
        let last = !run.durable || run.attempt >= pool.inner.effect_retry.max_attempts();
        let ctx = Arc::new(EffectCtx::new(run.id, run.attempt, last, run.durable));
        let effect = Arc::new(run.effect);
        // The effect runs in a task of its own, so a panic ends that task, not this one.
        let task = {
            let (worker, ctx, effect) = (pool.worker.clone(), ctx.clone(), effect.clone());
            tokio::spawn(async move { worker.run(&ctx, &effect).await })
        };
        let abort = task.abort_handle();
        let joined = match pool.timeout {
            Some(limit) => match tokio::time::timeout(limit, task).await {
                Ok(joined) => Some(joined),
                Err(_) => {
                    abort.abort();
                    None
                }
            },
            None => Some(task.await),
        };
        pool.stats().effects += 1;
        let ended = match joined {
            Some(Ok(Ok(event))) => Ended::Done(event),
            Some(Ok(Err(e))) => Ended::Failed {
                failure: Failure::Error {
                    message: e.to_string(),
                },
                crash: false,
            },
            Some(Err(join)) => Ended::Failed {
                failure: Failure::Panicked {
                    message: match join.try_into_panic() {
                        Ok(p) => panic_message(&*p),
                        Err(e) => e.to_string(),
                    },
                },
                crash: true,
            },
            None => Ended::Failed {
                failure: Failure::Panicked {
                    message: format!(
                        "the effect ran past the effect timeout of {:?}",
                        pool.timeout.unwrap_or_default()
                    ),
                },
                crash: true,
            },
        };
        if let Ended::Failed {
            failure,
            crash: true,
        } = &ended
        {
            pool.crashed(failure);
        }
        let worker = pool.worker.clone();
        let mut out = Outgoing::new(pool.inner.inboxes.len());
        let failure_event = |failure: &Failure| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                worker.failure_event(&ctx, &effect, failure)
            }))
            .ok()
            .flatten()
        };
        conclude(&pool.inner, 0, &ctx, ended, failure_event, &mut out);
        out.flush(&pool.inner);
        pool.inner.quiet.done(shard, 1);
    });
}
