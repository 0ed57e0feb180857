//! Async effect workers and the async submit (feature `tokio`): effects as tasks on the
//! user's runtime under a concurrency limit, the same supervision as thread workers (an `Err`
//! retried, a panic or a hang a crash), effects still running at shutdown left owed for the
//! next start, and a submit that waits for room as a future.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use fsm_core::kernel::{
    AsyncEffectWorker, EffectCtx, EffectError, Failure, Kernel, RetryPolicy, Shutdown, SubmitError,
};
use fsm_core::queue::ManualClock;
use fsm_core::store::{
    Capabilities, MachineId, MemoryStore, Put, Snapshot, SnapshotStore, StoreError,
};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = Ev, effect = Call)]
pub enum Hook {
    #[fsm(initial, on(Fire => Hook), on(Acked => Hook), on(Failed => Hook))]
    Hook { fired: u32, acked: u32, failed: u32 },
}

#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ev {
    Fire { how: u8 },
    Acked,
    Failed,
}

/// A webhook call; `how`: 0 answers, 1 fails, 2 panics, 3 never answers, 4 waits at the
/// barrier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    how: u8,
}

fn hook(s: &hook::HookRef<'_>) -> hook::Hook {
    hook::Hook {
        fired: *s.fired,
        acked: *s.acked,
        failed: *s.failed,
    }
}

impl Handler<ev::Fire, hook::Hook> for hook::Hook {
    fn handle(
        s: hook::HookRef<'_>,
        e: ev::Fire,
        fx: &mut Effects<Call>,
    ) -> Result<hook::Hook, Refusal> {
        fx.push(Call { how: e.how });
        let mut next = hook(&s);
        next.fired += 1;
        Ok(next)
    }
}

impl Handler<ev::Acked, hook::Hook> for hook::Hook {
    fn handle(
        s: hook::HookRef<'_>,
        _: ev::Acked,
        _: &mut Effects<Call>,
    ) -> Result<hook::Hook, Refusal> {
        let mut next = hook(&s);
        next.acked += 1;
        Ok(next)
    }
}

impl Handler<ev::Failed, hook::Hook> for hook::Hook {
    fn handle(
        s: hook::HookRef<'_>,
        _: ev::Failed,
        _: &mut Effects<Call>,
    ) -> Result<hook::Hook, Refusal> {
        let mut next = hook(&s);
        next.failed += 1;
        Ok(next)
    }
}

fn new_hook(_: &MachineId) -> Hook {
    Hook::Hook {
        fired: 0,
        acked: 0,
        failed: 0,
    }
}

#[derive(Clone)]
struct Client {
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    barrier: Arc<tokio::sync::Barrier>,
}

impl Client {
    fn new(barrier: usize) -> Self {
        Client {
            running: Arc::default(),
            most: Arc::default(),
            calls: Arc::default(),
            barrier: Arc::new(tokio::sync::Barrier::new(barrier)),
        }
    }
}

impl AsyncEffectWorker<Hook> for Client {
    async fn run(&self, _: &EffectCtx, call: &Call) -> Result<Option<Ev>, EffectError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let result = match call.how {
            0 => Ok(Some(Ev::Acked)),
            1 => Err("503 from the receiver".into()),
            2 => panic!("the client's connection pool is poisoned"),
            3 => std::future::pending().await,
            _ => {
                self.barrier.wait().await;
                Ok(Some(Ev::Acked))
            }
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn failure_event(&self, _: &EffectCtx, _: &Call, _: &Failure) -> Option<Ev> {
        Some(Ev::Failed)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

fn id(i: usize) -> MachineId {
    MachineId::new(format!("hook-{i}")).unwrap()
}

fn counts(kernel: &Kernel<Hook>, m: &MachineId) -> (u32, u32, u32) {
    let (
        Hook::Hook {
            fired,
            acked,
            failed,
        },
        _,
    ) = kernel.state(m).unwrap();
    (fired, acked, failed)
}

#[test]
fn effects_run_as_tasks_at_most_the_concurrency_at_once() {
    let rt = runtime();
    // Each of the first four calls waits until four run together: they complete only if the
    // pool runs four at once (a smaller limit would never let them).
    let client = Client::new(4);
    let kernel = Kernel::builder(MemoryStore::new(), new_hook)
        .shards(2)
        .async_effects(rt.handle().clone(), 4, client.clone())
        .start()
        .unwrap();
    for i in 0..12 {
        kernel
            .submit(&id(i), Ev::Fire { how: 4 })
            .unwrap()
            .wait()
            .unwrap();
    }
    kernel.wait_idle();
    assert_eq!(client.calls.load(Ordering::SeqCst), 12);
    assert_eq!(
        client.most.load(Ordering::SeqCst),
        4,
        "never more than the limit"
    );
    for i in 0..12 {
        assert_eq!(counts(&kernel, &id(i)), (1, 1, 0));
        assert!(kernel.owed(&id(i)).unwrap().is_empty());
    }
}

#[test]
fn an_error_is_retried_and_a_panic_is_a_crash() {
    let rt = runtime();
    let client = Client::new(1);
    let clock = ManualClock::new();
    let kernel = Kernel::builder(MemoryStore::new(), new_hook)
        .shards(1)
        .clock(clock.clock())
        .async_effects(rt.handle().clone(), 2, client.clone())
        .retry(RetryPolicy::new(Duration::from_secs(1), 1, Duration::from_secs(1), 2).unwrap())
        .restart_intensity(5, Duration::from_secs(3600))
        .start()
        .unwrap();
    let (err, panic) = (id(1), id(2));
    kernel
        .submit(&err, Ev::Fire { how: 1 })
        .unwrap()
        .wait()
        .unwrap();
    kernel
        .submit(&panic, Ev::Fire { how: 2 })
        .unwrap()
        .wait()
        .unwrap();
    kernel.wait_idle();
    let w = kernel.metrics().workers[0];
    assert_eq!((w.errors, w.panics, w.retries), (1, 1, 2), "{w:?}");
    assert_eq!(w.restarts, 1, "only the panic counts toward the intensity");
    // The second attempts, after the stored backoff: both given up into `Failed`.
    clock.advance(Duration::from_secs(1));
    kernel.fire_due_timers();
    kernel.wait_idle();
    for m in [&err, &panic] {
        assert_eq!(counts(&kernel, m), (1, 0, 1), "{m}");
        assert!(kernel.owed(m).unwrap().is_empty());
    }
    let w = kernel.metrics().workers[0];
    assert_eq!((w.given_up, w.restarts), (2, 2));
}

#[test]
fn an_effect_past_the_timeout_is_a_crash() {
    // Only an effect that never answers runs in this kernel, so however late a busy machine
    // polls it, the timeout can only end that one (it is a bound on liveness, not a margin).
    let rt = runtime();
    let client = Client::new(1);
    let kernel = Kernel::builder(MemoryStore::new(), new_hook)
        .shards(1)
        .async_effects(rt.handle().clone(), 2, client.clone())
        .retry(RetryPolicy::no_retry())
        .effect_timeout(Duration::from_millis(50))
        .start()
        .unwrap();
    let hang = id(3);
    kernel
        .submit(&hang, Ev::Fire { how: 3 })
        .unwrap()
        .wait()
        .unwrap();
    kernel.wait_idle();
    let w = kernel.metrics().workers[0];
    assert_eq!((w.panics, w.restarts, w.given_up), (1, 1, 1), "{w:?}");
    assert_eq!(counts(&kernel, &hang), (1, 0, 1));
    assert!(kernel.escalations().is_empty());
}

#[test]
fn an_escalated_pool_parks_its_effects_until_restarted() {
    let rt = runtime();
    let client = Client::new(1);
    let kernel = Kernel::builder(MemoryStore::new(), new_hook)
        .shards(1)
        .async_effects(rt.handle().clone(), 2, client.clone())
        .retry(RetryPolicy::no_retry())
        .restart_intensity(0, Duration::from_secs(3600))
        .start()
        .unwrap();
    kernel
        .submit(&id(1), Ev::Fire { how: 2 })
        .unwrap()
        .wait()
        .unwrap();
    kernel.wait_idle();
    assert_eq!(kernel.escalations().len(), 1);
    // Intake stays open; the effect waits.
    kernel
        .submit(&id(2), Ev::Fire { how: 0 })
        .unwrap()
        .wait()
        .unwrap();
    kernel.wait_idle();
    assert_eq!(kernel.owed(&id(2)).unwrap().len(), 1);
    assert_eq!(kernel.metrics().workers[0].parked, 1);
    assert!(kernel.restart_worker(0));
    while kernel.metrics().workers[0].parked > 0 {
        std::thread::yield_now();
    }
    kernel.wait_idle();
    assert_eq!(counts(&kernel, &id(2)), (1, 1, 0));
    assert!(kernel.owed(&id(2)).unwrap().is_empty());
}

#[test]
fn effects_running_at_shutdown_stay_owed_and_run_after_the_next_start() {
    let rt = runtime();
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let client = Client::new(1);
    let kernel = Kernel::builder_shared(store.clone(), new_hook)
        .shards(1)
        .async_effects(rt.handle().clone(), 2, client.clone())
        .start()
        .unwrap();
    // Never answers: still running when the kernel stops.
    kernel
        .submit(&id(1), Ev::Fire { how: 3 })
        .unwrap()
        .wait()
        .unwrap();
    while client.calls.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    kernel.shutdown(Shutdown::HandBack);
    let snapshot = store.get(&id(1)).unwrap();
    assert!(
        snapshot.outbox().is_some(),
        "the running effect is still owed"
    );
    // The next start runs it again (this time the receiver answers: the machine says how).
    struct Answers;
    impl AsyncEffectWorker<Hook> for Answers {
        async fn run(&self, ctx: &EffectCtx, _: &Call) -> Result<Option<Ev>, EffectError> {
            assert_eq!(ctx.key(), "hook-1/1/0", "the same key as the first attempt");
            Ok(Some(Ev::Acked))
        }
    }
    let kernel = Kernel::builder_shared(store, new_hook)
        .shards(1)
        .async_effects(rt.handle().clone(), 2, Answers)
        .start()
        .unwrap();
    kernel.wait_idle();
    assert_eq!(counts(&kernel, &id(1)), (1, 1, 0));
    assert!(kernel.owed(&id(1)).unwrap().is_empty());
}

/// A memory store whose writes wait while the gate is closed.
#[derive(Default)]
struct Gate {
    inner: MemoryStore,
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }
}

impl SnapshotStore for Gate {
    fn put(&self, id: &MachineId, expected: Option<u64>, s: &Snapshot) -> Result<(), StoreError> {
        self.put_many(&[Put::new(id, expected, s)])
    }
    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        drop(closed);
        self.inner.put_many(batch)
    }
    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
        self.inner.get(id)
    }
    fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError> {
        self.inner.sequence(id)
    }
    fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
        self.inner.ids()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

#[test]
fn an_async_submit_waits_for_room_without_blocking_the_executor() {
    // One executor thread: a submit that blocked it would stall the other task for good.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let store = Arc::new(Gate::default());
    let kernel = Arc::new(
        Kernel::builder_shared(store.clone(), new_hook)
            .shards(1)
            .capacity(1)
            .start()
            .unwrap(),
    );
    store.set(true);
    // The shard takes the first command and waits in its commit; the second fills the inbox.
    let first = kernel.submit(&id(1), Ev::Fire { how: 0 }).unwrap();
    while kernel.metrics().total.counts.queued > 0 {
        std::thread::yield_now();
    }
    let second = kernel.submit(&id(2), Ev::Fire { how: 0 }).unwrap();
    assert!(matches!(
        kernel.try_submit(&id(3), Ev::Fire { how: 0 }),
        Err(SubmitError::Full(_))
    ));
    let ticks = Arc::new(AtomicUsize::new(0));
    let outcome = rt.block_on({
        let (kernel, store, ticks) = (kernel.clone(), store.clone(), ticks.clone());
        async move {
            // Another task on the same thread keeps running while the submit waits, and opens
            // the gate once it has run a few times.
            let opener = tokio::spawn(async move {
                while ticks.fetch_add(1, Ordering::SeqCst) < 3 {
                    tokio::task::yield_now().await;
                }
                store.set(false);
            });
            let ticket = kernel.submit_async(&id(3), Ev::Fire { how: 0 }).await;
            opener.await.unwrap();
            ticket.unwrap().await
        }
    });
    assert!(
        ticks.load(Ordering::SeqCst) >= 3,
        "the executor ran the other task"
    );
    assert_eq!(outcome.unwrap().seq, 1);
    first.wait().unwrap();
    second.wait().unwrap();
    // Its waits were not counted as refusals.
    assert_eq!(kernel.metrics().total.counts.full, 1);
}
