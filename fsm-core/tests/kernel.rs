//! The kernel: persist before acknowledge, group commit, idempotency across restarts,
//! supervision with restart intensity, recovery with quarantine, defer, trace, eviction,
//! shutdown.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod support;
use support::Gated;

use fsm_core::kernel::{
    CommandError, EffectCtx, EffectError, EffectWorker, Failure, IdempotencyKey, Kernel,
    QuarantineCause, Request, RetryPolicy, Shutdown, SubmitError, TraceFilter, TraceOutcome,
};
use fsm_core::queue::{ManualClock, Overload};
use fsm_core::store::{
    Capabilities, Codec, Format, MachineId, MemoryStore, Put, Snapshot, SnapshotStore,
    SnapshotStoreExt, StoreError,
};
use fsm_core::{Effects, Event, Handler, Reason, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

/// A build job: queued, running (with attempts), done, or failed.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = Cmd, effect = Fx)]
pub enum Build {
    #[fsm(initial, on(Start => Running), defer(Finish))]
    Queued,
    #[fsm(on(Finish => Done), on(Fail => Failed), on(Tick => Running), validate = sane)]
    Running { attempts: u32 },
    #[fsm(terminal)]
    Done,
    #[fsm(on(Start => Running))]
    Failed { reason: String },
}

#[derive(Event, Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Start,
    Finish,
    Fail {
        reason: String,
    },
    /// Bumps the attempts; panics in the handler when `panic` is set.
    Tick {
        panic: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fx {
    Compile { attempt: u32 },
}

pub fn sane(s: build::RunningRef<'_>) -> Result<(), Refusal> {
    if *s.attempts < 1000 {
        Ok(())
    } else {
        Err(Refusal::new("too many attempts"))
    }
}

impl Handler<cmd::Start, build::Running> for build::Queued {
    fn handle(
        _: build::Queued,
        _: cmd::Start,
        fx: &mut Effects<Fx>,
    ) -> Result<build::Running, Refusal> {
        fx.push(Fx::Compile { attempt: 1 });
        Ok(build::Running { attempts: 1 })
    }
}
impl Handler<cmd::Start, build::Running> for build::Failed {
    fn handle(
        _: build::FailedRef<'_>,
        _: cmd::Start,
        fx: &mut Effects<Fx>,
    ) -> Result<build::Running, Refusal> {
        fx.push(Fx::Compile { attempt: 1 });
        Ok(build::Running { attempts: 1 })
    }
}
impl Handler<cmd::Finish, build::Done> for build::Running {
    fn handle(
        _: build::RunningRef<'_>,
        _: cmd::Finish,
        _: &mut Effects<Fx>,
    ) -> Result<build::Done, Refusal> {
        Ok(build::Done)
    }
}
impl Handler<cmd::Fail, build::Failed> for build::Running {
    fn handle(
        _: build::RunningRef<'_>,
        ev: cmd::Fail,
        _: &mut Effects<Fx>,
    ) -> Result<build::Failed, Refusal> {
        Ok(build::Failed { reason: ev.reason })
    }
}
impl Handler<cmd::Tick, build::Running> for build::Running {
    fn handle(
        s: build::RunningRef<'_>,
        ev: cmd::Tick,
        fx: &mut Effects<Fx>,
    ) -> Result<build::Running, Refusal> {
        fx.push(Fx::Compile {
            attempt: s.attempts + 1,
        });
        if ev.panic {
            panic!("tick handler exploded");
        }
        Ok(build::Running {
            attempts: s.attempts + 1,
        })
    }
}

fn id(s: &str) -> MachineId {
    MachineId::new(s).unwrap()
}

fn key(s: &str) -> IdempotencyKey {
    IdempotencyKey::new(s).unwrap()
}

fn stored(store: &dyn SnapshotStore, m: &MachineId) -> Option<(Build, u64)> {
    store.load(m, &Codec::<Build>::new(1)).unwrap()
}

/// A one-shard kernel over a gated store whose first commit is held, with that commit
/// already in progress: commands submitted now wait behind it.
fn held_kernel(
    configure: impl FnOnce(
        fsm_core::kernel::KernelBuilder<Build>,
    ) -> fsm_core::kernel::KernelBuilder<Build>,
) -> (
    Arc<Gated>,
    Kernel<Build>,
    fsm_core::queue::Ticket<fsm_core::kernel::Answer>,
) {
    let store = Arc::new(Gated::default());
    let kernel = configure(Kernel::builder_shared(store.clone(), |_| Build::Queued).shards(1))
        .start()
        .unwrap();
    store.hold();
    let busy = kernel.submit(&id("busy"), Cmd::Start).unwrap();
    store.wait_entered(1);
    (store, kernel, busy)
}

/// An effect worker that reports every effect it runs and fails as told.
struct Worker {
    seen: mpsc::Sender<(String, Fx)>,
    mode: Arc<AtomicUsize>,
}

const SUCCEED: usize = 0;
const PANIC: usize = 1;
const ERROR: usize = 2;

impl EffectWorker<Build> for Worker {
    fn run(&mut self, ctx: &EffectCtx, effect: &Fx) -> Result<Option<Cmd>, EffectError> {
        let _ = self.seen.send((ctx.machine().to_string(), effect.clone()));
        match self.mode.load(Ordering::SeqCst) {
            PANIC => panic!("compiler crashed"),
            ERROR => Err("compiler said no".into()),
            _ => Ok(None),
        }
    }
    fn failure_event(&self, _: &EffectCtx, _: &Fx, failure: &Failure) -> Option<Cmd> {
        Some(Cmd::Fail {
            reason: failure.to_string(),
        })
    }
}

#[test]
fn a_command_is_acknowledged_only_after_its_snapshot_is_stored() {
    let store = Arc::new(Gated::default());
    let kernel = Kernel::builder_shared(store.clone(), |_| Build::Queued)
        .shards(1)
        .start()
        .unwrap();
    let m = id("job-1");
    store.hold();
    let ticket = kernel.submit(&m, Cmd::Start).unwrap();
    store.wait_entered(1);
    // The commit is in progress and nothing is stored yet: no answer either.
    assert!(ticket.wait_timeout(Duration::from_millis(20)).is_none());
    assert_eq!(stored(&*store, &m), None);
    store.open();
    let committed = ticket.wait().unwrap();
    assert_eq!(committed.seq, 1);
    assert_eq!(committed.transition.to_name(), "Running");
    assert_eq!(
        stored(&*store, &m),
        Some((Build::Running { attempts: 1 }, 1))
    );
}

#[test]
fn commands_for_many_machines_arriving_together_share_one_put_many() {
    let store = Arc::new(Gated::default());
    let kernel = Kernel::builder_shared(store.clone(), |_| Build::Queued)
        .shards(1)
        .start()
        .unwrap();
    store.hold();
    let first = kernel.submit(&id("warm-up"), Cmd::Start).unwrap();
    store.wait_entered(1);
    // While the first commit is held, 50 machines get two commands each.
    let tickets: Vec<_> = (0..50)
        .flat_map(|i| {
            let m = id(&format!("job-{i}"));
            [
                kernel.submit(&m, Cmd::Start).unwrap(),
                kernel.submit(&m, Cmd::Finish).unwrap(),
            ]
        })
        .collect();
    store.open();
    first.wait().unwrap();
    for t in tickets {
        t.wait().unwrap();
    }
    // One batch for the warm-up, then one put_many with one snapshot per machine.
    assert_eq!(*store.batches.lock().unwrap(), vec![1, 50]);
    assert_eq!(stored(&*store, &id("job-7")), Some((Build::Done, 1)));
    let metrics = kernel.metrics();
    assert_eq!(metrics.total.commits, 2);
    assert_eq!(metrics.total.snapshots, 51);
    assert_eq!(metrics.total.counts.committed, 101);
}

#[test]
fn a_batch_submitted_together_is_one_group_commit_per_shard() {
    let store = Arc::new(Gated::default());
    let kernel = Kernel::builder_shared(store.clone(), |_| Build::Queued)
        .shards(2)
        .start()
        .unwrap();
    let commands: Vec<_> = (0..40)
        .map(|i| (id(&format!("job-{i}")), Request::new(Cmd::Start)))
        .chain([(id("job-0"), Request::new(Cmd::Finish))])
        .collect();
    let tickets = kernel.submit_batch(commands);
    let outcomes: Vec<_> = tickets
        .into_iter()
        .map(|t| t.unwrap().wait().unwrap())
        .collect();
    assert_eq!(outcomes[40].transition.to_name(), "Done");
    let mut batches = store.batches.lock().unwrap().clone();
    batches.sort_unstable();
    assert_eq!(batches.len(), 2, "one put_many per shard: {batches:?}");
    assert_eq!(batches.iter().sum::<usize>(), 40);
}

#[test]
fn a_refused_write_rolls_the_machine_back_answers_not_stored_and_runs_no_effect() {
    let store = Arc::new(Gated::default());
    let (seen_tx, seen) = mpsc::channel();
    let mode = Arc::new(AtomicUsize::new(SUCCEED));
    let worker_mode = mode.clone();
    let kernel = Kernel::builder_shared(store.clone(), |_| Build::Queued)
        .shards(1)
        .effects(1, move |_| Worker {
            seen: seen_tx.clone(),
            mode: worker_mode.clone(),
        })
        .start()
        .unwrap();
    let m = id("job-1");
    kernel.submit(&m, Cmd::Start).unwrap().wait().unwrap();
    kernel.wait_idle();
    assert_eq!(seen.try_recv().unwrap().1, Fx::Compile { attempt: 1 });

    store.fail_with(Some(|| StoreError::Io {
        operation: "test write",
        path: None,
        source: std::io::Error::other("disk full"),
    }));
    let err = kernel
        .submit(&m, Cmd::Tick { panic: false })
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(err, CommandError::NotStored { .. }), "{err}");
    kernel.wait_idle();
    assert!(
        seen.try_recv().is_err(),
        "an effect ran for a transition that was not stored"
    );
    // Seq 1 owed the first effect, seq 2 settled it.
    assert_eq!(
        stored(&*store, &m),
        Some((Build::Running { attempts: 1 }, 2))
    );

    // The store recovers: the machine continues from its last durable state.
    store.fail_with(None);
    let c = kernel
        .submit(&m, Cmd::Tick { panic: false })
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(c.seq, 3);
    kernel.wait_idle();
    assert_eq!(seen.try_recv().unwrap().1, Fx::Compile { attempt: 2 });
    assert_eq!(
        stored(&*store, &m),
        Some((Build::Running { attempts: 2 }, 4))
    );
}

#[test]
fn an_unknown_outcome_is_never_success_and_the_machine_is_reloaded_from_the_store() {
    let store = Arc::new(Gated::default());
    let kernel = Kernel::builder_shared(store.clone(), |_| Build::Queued)
        .shards(1)
        .start()
        .unwrap();
    let m = id("job-1");
    kernel.submit(&m, Cmd::Start).unwrap().wait().unwrap();
    store.fail_with(Some(|| StoreError::Backend {
        backend: "test",
        message: "connection lost after COMMIT was sent".into(),
        outcome_unknown: true,
    }));
    let err = kernel
        .submit(&m, Request::new(Cmd::Finish).with_key(key("finish-1")))
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(err.is_outcome_unknown(), "{err}");
    store.fail_with(None);
    // The retry with the same key learns the truth from the reloaded machine: here the write
    // did not happen, so it is applied now, once.
    let c = kernel
        .submit(&m, Request::new(Cmd::Finish).with_key(key("finish-1")))
        .unwrap()
        .wait()
        .unwrap();
    assert!(!c.duplicate);
    assert_eq!(stored(&*store, &m), Some((Build::Done, 2)));
    assert_eq!(kernel.metrics().total.counts.outcome_unknown, 1);
}

#[test]
fn the_same_idempotency_key_applies_once_before_and_after_a_restart() {
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let m = id("job-1");
    let start = || Request::new(Cmd::Start).with_key(key("start-7f3a"));
    {
        let kernel = Kernel::builder_shared(store.clone(), |_| Build::Queued)
            .shards(2)
            .start()
            .unwrap();
        let first = kernel.submit(&m, start()).unwrap().wait().unwrap();
        let again = kernel.submit(&m, start()).unwrap().wait().unwrap();
        assert_eq!((first.seq, first.duplicate), (1, false));
        assert_eq!((again.seq, again.duplicate), (1, true));
        assert_eq!(again.transition, first.transition);
        kernel.shutdown(Shutdown::Drain);
    }
    let kernel = Kernel::builder_shared(store.clone(), |_| Build::Queued)
        .shards(3)
        .start()
        .unwrap();
    assert_eq!(kernel.recovery().recovered, 1);
    let after = kernel.submit(&m, start()).unwrap().wait().unwrap();
    assert_eq!((after.seq, after.duplicate), (1, true));
    assert_eq!(after.transition.to_name(), "Running");
    // Without the key the same event is decided afresh (and rejected: already running).
    let fresh = kernel.submit(&m, Cmd::Start).unwrap().wait().unwrap_err();
    assert!(matches!(fresh, CommandError::Rejected(_)), "{fresh}");
    assert_eq!(
        stored(&*store, &m),
        Some((Build::Running { attempts: 1 }, 1))
    );
    let counts = kernel.metrics().total.counts;
    assert_eq!((counts.duplicates, counts.rejected), (1, 1));
}

#[test]
fn the_idempotency_window_forgets_the_oldest_keys() {
    let kernel = Kernel::builder(MemoryStore::new(), |_| Build::Queued)
        .shards(1)
        .idempotency_window(2)
        .start()
        .unwrap();
    let m = id("job-1");
    kernel
        .submit(&m, Request::new(Cmd::Start).with_key(key("k0")))
        .unwrap()
        .wait()
        .unwrap();
    for k in ["k1", "k2"] {
        let tick = Request::new(Cmd::Tick { panic: false }).with_key(key(k));
        kernel.submit(&m, tick).unwrap().wait().unwrap();
    }
    // k0 fell out of the window of 2: its retry is decided afresh (and rejected).
    let old = kernel
        .submit(&m, Request::new(Cmd::Start).with_key(key("k0")))
        .unwrap()
        .wait();
    assert!(matches!(old, Err(CommandError::Rejected(_))));
    let recent = Request::new(Cmd::Tick { panic: false }).with_key(key("k2"));
    assert!(kernel.submit(&m, recent).unwrap().wait().unwrap().duplicate);
}

#[test]
fn a_panicking_worker_is_restarted_within_its_intensity_then_escalated() {
    let clock = ManualClock::new();
    let (seen_tx, seen) = mpsc::channel();
    let mode = Arc::new(AtomicUsize::new(PANIC));
    let worker_mode = mode.clone();
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let kernel = Kernel::builder_shared(store.clone(), |_| Build::Queued)
        .shards(1)
        .clock(clock.clock())
        .effects(1, move |_| Worker {
            seen: seen_tx.clone(),
            mode: worker_mode.clone(),
        })
        .restart_intensity(2, Duration::from_secs(10))
        // One attempt: a crash gives the effect up at once, and the failure event is fed back.
        .retry(RetryPolicy::no_retry())
        // The old contract, kept as an option: an escalated worker's machines take nothing.
        .refuse_when_escalated(true)
        .start()
        .unwrap();
    let (a, b, c) = (id("job-a"), id("job-b"), id("job-c"));

    // Failure 1: the worker panics; the failure event is fed back (Running --Fail--> Failed).
    kernel.submit(&a, Cmd::Start).unwrap().wait().unwrap();
    kernel.wait_idle();
    assert_eq!(seen.try_recv().unwrap().0, "job-a");
    let (state, seq) = stored(&*store, &a).unwrap();
    assert!(matches!(state, Build::Failed { ref reason } if reason.contains("compiler crashed")));
    assert_eq!(seq, 2);
    assert_eq!(kernel.metrics().workers[0].restarts, 1);

    // Failure 2, 11 s later: the first restart left the window, so this is a restart too.
    clock.advance(Duration::from_secs(11));
    kernel.submit(&b, Cmd::Start).unwrap().wait().unwrap();
    kernel.wait_idle();
    // Failure 3 within 10 s of failure 2: a second restart in the window (the limit).
    kernel.submit(&c, Cmd::Start).unwrap().wait().unwrap();
    kernel.wait_idle();
    assert_eq!(kernel.metrics().workers[0].restarts, 3);
    assert!(kernel.escalations().is_empty());
    // Failure 4: the third within 10 s exceeds 2 restarts: escalation.
    kernel.submit(&a, Cmd::Start).unwrap().wait().unwrap();
    kernel.wait_idle();
    let escalations = kernel.escalations();
    assert_eq!(escalations.len(), 1);
    assert_eq!(escalations[0].worker, 0);
    assert!(matches!(escalations[0].failure, Failure::Panicked { .. }));
    let w = kernel.metrics().workers[0];
    assert_eq!((w.panics, w.restarts, w.escalated), (4, 3, true));

    // The kernel takes no commands for the worker's machines; their state is intact.
    match kernel.submit(&b, Cmd::Start) {
        Err(SubmitError::Escalated { worker: 0, request }) => {
            assert_eq!(request.into_event(), Cmd::Start)
        }
        other => panic!("expected escalation, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        stored(&*store, &b),
        Some((Build::Failed { .. }, 2))
    ));
    assert!(matches!(
        stored(&*store, &a),
        Some((Build::Failed { .. }, 4))
    ));

    // An operator restarts it once the cause is fixed.
    mode.store(SUCCEED, Ordering::SeqCst);
    assert!(kernel.restart_worker(0));
    let resumed = loop {
        match kernel.submit(&b, Cmd::Start) {
            Ok(t) => break t,
            Err(SubmitError::Escalated { .. }) => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    };
    resumed.wait().unwrap();
    kernel.wait_idle();
    // Seq 3 owes the effect; the worker's answer settled it in seq 4.
    assert!(matches!(
        stored(&*store, &b),
        Some((Build::Running { attempts: 1 }, 4))
    ));
    assert!(kernel.owed(&b).unwrap().is_empty());
}

#[test]
fn a_worker_error_is_a_failure_given_up_into_the_failure_event_not_a_crash() {
    let (seen_tx, _seen) = mpsc::channel();
    let mode = Arc::new(AtomicUsize::new(ERROR));
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let kernel = Kernel::builder_shared(store.clone(), |_| Build::Queued)
        .shards(1)
        .effects(2, move |_| Worker {
            seen: seen_tx.clone(),
            mode: mode.clone(),
        })
        .retry(RetryPolicy::no_retry())
        .start()
        .unwrap();
    let m = id("job-1");
    kernel.submit(&m, Cmd::Start).unwrap().wait().unwrap();
    kernel.wait_idle();
    let (state, _) = stored(&*store, &m).unwrap();
    assert_eq!(
        state,
        Build::Failed {
            reason: "error: compiler said no".into()
        }
    );
    let w = kernel.metrics().workers[kernel.worker_of(&m).unwrap()];
    assert_eq!(
        (w.errors, w.panics, w.restarts, w.given_up, w.fed_back),
        (1, 0, 0, 1, 1)
    );
    assert!(kernel.escalations().is_empty());
}

#[test]
fn a_panicking_handler_is_a_rejection_and_the_machine_does_not_move() {
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let kernel = Kernel::builder_shared(store.clone(), |_| Build::Queued)
        .shards(1)
        .start()
        .unwrap();
    let m = id("job-1");
    kernel.submit(&m, Cmd::Start).unwrap().wait().unwrap();
    let err = kernel
        .submit(&m, Cmd::Tick { panic: true })
        .unwrap()
        .wait()
        .unwrap_err();
    match err {
        CommandError::Rejected(r) => assert!(matches!(r.reason(), Reason::Panicked(_))),
        e => panic!("{e}"),
    }
    let c = kernel
        .submit(&m, Cmd::Tick { panic: false })
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(c.seq, 2);
    assert_eq!(
        stored(&*store, &m),
        Some((Build::Running { attempts: 2 }, 2))
    );
    assert_eq!(kernel.metrics().total.counts.panicked, 1);
}

#[test]
fn recovery_quarantines_corrupt_or_invalid_machines_and_runs_the_others() {
    let store = Arc::new(MemoryStore::new());
    let codec = Codec::<Build>::new(1);
    store
        .save(&id("good"), None, &Build::Running { attempts: 3 }, &codec)
        .unwrap();
    // Valid envelope, another machine type.
    let foreign = Snapshot::new("Invoice", 1, 1, Format::Postcard, &[0]).unwrap();
    store.put(&id("foreign"), None, &foreign).unwrap();
    // Decodes, but fails the state's invariant.
    let invalid = codec.encode(&Build::Running { attempts: 5000 }, 1).unwrap();
    store.put(&id("invalid"), None, &invalid).unwrap();
    // A journal that names events the table does not have.
    let bad_journal = Snapshot::with_journal(
        "Build",
        1,
        1,
        Format::Postcard,
        &[1, 1, 1, b'k', 1, 0, 99, 0],
        &postcard::to_allocvec(&Build::Done).unwrap(),
    )
    .unwrap();
    store.put(&id("journal"), None, &bad_journal).unwrap();

    let kernel = Kernel::builder_shared(store.clone(), |_| Build::Queued)
        .shards(2)
        .start()
        .unwrap();
    let report = kernel.recovery();
    assert_eq!(report.recovered, 1, "{report}");
    let mut quarantined: Vec<_> = report
        .quarantined
        .iter()
        .map(|q| {
            (
                q.id.to_string(),
                matches!(q.cause, QuarantineCause::Decode(_)),
                matches!(&q.cause, QuarantineCause::Section(e) if e.section() == fsm_core::store::Section::Journal),
            )
        })
        .collect();
    quarantined.sort();
    assert_eq!(
        quarantined,
        vec![
            ("foreign".to_owned(), true, false),
            ("invalid".to_owned(), true, false),
            ("journal".to_owned(), false, true),
        ]
    );
    assert_eq!(kernel.quarantined().len(), 3);
    let err = kernel
        .submit(&id("invalid"), Cmd::Finish)
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(err, CommandError::Quarantined(_)), "{err}");
    let c = kernel
        .submit(&id("good"), Cmd::Finish)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(c.seq, 2);

    // The operator repairs the snapshot and releases the machine.
    store
        .save(
            &id("invalid"),
            None,
            &Build::Running { attempts: 5 },
            &codec,
        )
        .unwrap_err(); // a corrupt-in-place machine needs a write over its sequence
    store
        .save(
            &id("invalid"),
            Some(1),
            &Build::Running { attempts: 5 },
            &codec,
        )
        .unwrap();
    assert!(kernel.release(&id("invalid")));
    let c = kernel
        .submit(&id("invalid"), Cmd::Finish)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!((c.seq, c.transition.to_name()), (3, "Done"));
    assert_eq!(kernel.quarantined().len(), 2);
}

#[test]
fn a_deferred_command_is_replayed_after_the_next_state_change_and_answered_then() {
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let kernel = Kernel::builder_shared(store.clone(), |_| Build::Queued)
        .shards(1)
        .start()
        .unwrap();
    let m = id("job-1");
    let early = kernel.submit(&m, Cmd::Finish).unwrap();
    kernel.wait_idle();
    assert!(
        early.try_outcome().is_none(),
        "a postponed command has no answer yet"
    );
    assert_eq!(kernel.metrics().total.counts.deferred, 1);
    kernel.submit(&m, Cmd::Start).unwrap().wait().unwrap();
    let finished = early.wait().unwrap();
    assert_eq!(finished.transition.to_name(), "Done");
    // The start and the replayed finish were decided in one batch: one snapshot holds both.
    assert_eq!(finished.seq, 1);
    assert_eq!(stored(&*store, &m), Some((Build::Done, 1)));
    let trace = kernel.trace(&TraceFilter::new().machine(&m));
    let outcomes: Vec<_> = trace.iter().map(|e| (e.event, e.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            ("Finish", TraceOutcome::Deferred),
            ("Start", TraceOutcome::Committed),
            ("Finish", TraceOutcome::Committed),
        ]
    );
    assert_eq!(kernel.metrics().total.counts.deferred, 0);
}

#[test]
fn the_trace_is_bounded_and_filterable_by_machine_state_event_and_outcome() {
    let kernel = Kernel::builder(MemoryStore::new(), |_| Build::Queued)
        .shards(2)
        .trace_capacity(8)
        .start()
        .unwrap();
    for i in 0..4 {
        let m = id(&format!("job-{i}"));
        kernel.submit(&m, Cmd::Start).unwrap().wait().unwrap();
        kernel.submit(&m, Cmd::Start).unwrap().wait().unwrap_err();
        kernel.submit(&m, Cmd::Finish).unwrap().wait().unwrap();
    }
    let all = kernel.trace(&TraceFilter::new());
    assert_eq!(all.len(), 8, "the ring keeps the newest 8 of 12");
    assert!(all.windows(2).all(|w| w[0].at <= w[1].at));
    let job3 = kernel.trace(&TraceFilter::new().machine(&id("job-3")));
    assert_eq!(job3.len(), 3);
    assert_eq!(job3[2].to, Some("Done"));
    let rejected = kernel.trace(&TraceFilter::new().outcome(TraceOutcome::Rejected));
    assert!(rejected
        .iter()
        .all(|e| e.event == "Start" && e.from == "Running"));
    let into_done = kernel.trace(&TraceFilter::new().state("Done").event("Finish").last(2));
    assert_eq!(into_done.len(), 2);
    assert_eq!(into_done[1].machine, id("job-3"));
    assert!(into_done[1]
        .to_string()
        .contains("Running --Finish--> Done Committed"));
}

#[test]
fn idle_machines_are_evicted_and_reloaded_on_their_next_command() {
    let clock = ManualClock::new();
    let kernel = Kernel::builder(MemoryStore::new(), |_| Build::Queued)
        .shards(2)
        .clock(clock.clock())
        .idle_after(Duration::from_secs(60))
        .start()
        .unwrap();
    for i in 0..10 {
        kernel
            .submit(&id(&format!("job-{i}")), Cmd::Start)
            .unwrap()
            .wait()
            .unwrap();
    }
    assert_eq!(kernel.sweep(), 10);
    clock.advance(Duration::from_secs(30));
    kernel
        .submit(&id("job-0"), Cmd::Tick { panic: false })
        .unwrap()
        .wait()
        .unwrap();
    clock.advance(Duration::from_secs(31));
    // Only job-0 was used within the last 60 s.
    assert_eq!(kernel.sweep(), 1);
    assert_eq!(kernel.metrics().total.resident, 1);
    // An evicted machine comes back from the store with its sequence.
    let c = kernel
        .submit(&id("job-5"), Cmd::Finish)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!((c.seq, c.transition.from_name()), (2, "Running"));
}

#[test]
fn a_deadline_that_passed_in_the_inbox_is_expired_not_applied() {
    let clock = ManualClock::new();
    let (store, kernel, busy) = held_kernel(|b| b.clock(clock.clock()));
    let deadline = clock.now() + Duration::from_secs(1);
    let late = kernel
        .submit(
            &id("late"),
            Request::new(Cmd::Start).with_deadline(deadline),
        )
        .unwrap();
    clock.advance(Duration::from_secs(2));
    store.open();
    busy.wait().unwrap();
    assert!(matches!(late.wait(), Err(CommandError::Expired)));
    assert_eq!(stored(&*store, &id("late")), None);
}

#[test]
fn a_full_inbox_refuses_or_drops_as_its_policy_says() {
    let (store, kernel, busy) = held_kernel(|b| b.capacity(2));
    let queued: Vec<_> = (0..2)
        .map(|i| {
            kernel
                .try_submit(&id(&format!("q{i}")), Cmd::Start)
                .unwrap()
        })
        .collect();
    match kernel.try_submit(&id("one-more"), Cmd::Start) {
        Err(SubmitError::Full(r)) => assert_eq!(r.into_event(), Cmd::Start),
        other => panic!("{:?}", other.map(|_| ())),
    }
    store.open();
    busy.wait().unwrap();
    for t in queued {
        t.wait().unwrap();
    }
    assert_eq!(kernel.metrics().total.counts.full, 1);
    drop(kernel);

    let (store, kernel, busy) = held_kernel(|b| b.capacity(2).overload(Overload::DropOldest));
    let oldest = kernel.submit(&id("q0"), Cmd::Start).unwrap();
    let kept = kernel.submit(&id("q1"), Cmd::Start).unwrap();
    let newest = kernel.submit(&id("q2"), Cmd::Start).unwrap();
    assert!(matches!(oldest.wait(), Err(CommandError::Dumped(_))));
    store.open();
    busy.wait().unwrap();
    kept.wait().unwrap();
    newest.wait().unwrap();
    assert_eq!(stored(&*store, &id("q0")), None);
}

#[test]
fn shutdown_drains_or_hands_back_what_is_queued() {
    let (store, kernel, busy) = held_kernel(|b| b.capacity(4));
    let queued: Vec<_> = (0..3)
        .map(|i| kernel.submit(&id(&format!("q{i}")), Cmd::Start).unwrap())
        .collect();
    let parked = kernel.submit(&id("parked"), Cmd::Finish).unwrap();
    // A fifth submitter blocks on the full inbox; shutting down refuses it, and only then is
    // the held commit let go.
    let submitter = kernel.handle();
    let gate = store.clone();
    let blocked = std::thread::spawn(move || {
        let refused = submitter.submit(&id("late"), Cmd::Start);
        gate.open();
        matches!(refused, Err(SubmitError::Closed(_)))
    });
    let report = kernel.shutdown(Shutdown::HandBack);
    assert!(
        blocked.join().unwrap(),
        "the blocked submitter was refused as closed"
    );
    busy.wait().unwrap();
    for t in queued {
        assert!(matches!(t.wait(), Err(CommandError::Closed)));
    }
    assert!(matches!(parked.wait(), Err(CommandError::Closed)));
    let mut back: Vec<_> = report
        .handed_back
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    back.sort();
    assert_eq!(back, ["parked", "q0", "q1", "q2"]);
    assert_eq!(store.ids().unwrap(), vec![id("busy")]);

    // Drain: everything queued is decided and stored.
    let store = Arc::new(Gated::default());
    let kernel = Kernel::builder_shared(store.clone(), |_| Build::Queued)
        .shards(2)
        .start()
        .unwrap();
    let tickets: Vec<_> = (0..20)
        .map(|i| kernel.submit(&id(&format!("d{i}")), Cmd::Start).unwrap())
        .collect();
    let parked = kernel.submit(&id("parked"), Cmd::Finish).unwrap();
    let report = kernel.shutdown(Shutdown::Drain);
    for t in tickets {
        t.wait().unwrap();
    }
    assert!(matches!(parked.wait(), Err(CommandError::Closed)));
    assert_eq!(
        report.handed_back.len(),
        1,
        "only the postponed command comes back"
    );
    assert_eq!(report.metrics.total.counts.committed, 20);
    assert_eq!(store.ids().unwrap().len(), 20);
}

#[test]
fn metrics_add_up_and_report_percentiles() {
    let kernel = Kernel::builder(MemoryStore::new(), |_| Build::Queued)
        .shards(2)
        .start()
        .unwrap();
    for i in 0..50 {
        let m = id(&format!("job-{i}"));
        kernel.submit(&m, Cmd::Start).unwrap().wait().unwrap();
        kernel
            .submit(&m, Cmd::Fail { reason: "x".into() })
            .unwrap()
            .wait()
            .unwrap();
        kernel.submit(&m, Cmd::Finish).unwrap().wait().unwrap_err();
    }
    let m = kernel.metrics();
    let c = m.total.counts;
    assert_eq!((c.submitted, c.committed, c.rejected), (150, 100, 50));
    assert_eq!(
        m.shards.iter().map(|s| s.counts.submitted).sum::<u64>(),
        150
    );
    assert_eq!(m.total.end_to_end.count, 150);
    assert!(m.total.end_to_end.p50 <= m.total.end_to_end.p99);
    assert!(m.total.persist.count >= 1);
    let shown = m.to_string();
    assert!(shown.contains("committed 100"), "{shown}");
}

#[test]
fn invalid_configuration_and_keys_are_typed_errors() {
    let no_shards = Kernel::builder(MemoryStore::new(), |_| Build::Queued)
        .shards(0)
        .start();
    assert!(no_shards.unwrap_err().to_string().contains("zero shards"));
    let zero_defer = Kernel::builder(MemoryStore::new(), |_| Build::Queued)
        .defer_limit(0)
        .start();
    assert!(zero_defer
        .unwrap_err()
        .to_string()
        .contains("state `Queued` defers"));
    assert!(IdempotencyKey::new("x".repeat(65)).is_err());
    assert!(IdempotencyKey::new("tab\there").is_err());
    // An initial function that does not give the initial state is caught, not run.
    let kernel = Kernel::builder(MemoryStore::new(), |_| Build::Done)
        .shards(1)
        .start()
        .unwrap();
    let err = kernel
        .submit(&id("x"), Cmd::Start)
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(err, CommandError::InvalidInitial { .. }), "{err}");
}

// --- Fencing: two nodes over one store, each writing only the machines it owns. ---

/// Two nodes sharing one `MemoryStore` and one ownership table (the "database"), the
/// contract a fencing store keeps: a node writes a machine only under the epoch the table
/// holds for it, learns from a refused write that it lost the machine, and answers
/// `owner_epoch` from what it holds locally.
#[derive(Default)]
struct Cluster {
    store: MemoryStore,
    epochs: Mutex<std::collections::HashMap<MachineId, u64>>,
}

struct Node {
    cluster: Arc<Cluster>,
    held: Mutex<std::collections::HashMap<MachineId, u64>>,
    batches: Mutex<Vec<usize>>,
}

impl Node {
    fn new(cluster: &Arc<Cluster>) -> Arc<Node> {
        Arc::new(Node {
            cluster: cluster.clone(),
            held: Mutex::default(),
            batches: Mutex::default(),
        })
    }

    /// Takes machine `m` over: a new epoch in the table, held here.
    fn acquire(&self, m: &MachineId) -> u64 {
        let mut epochs = self.cluster.epochs.lock().unwrap();
        let epoch = epochs.get(m).map_or(1, |e| e + 1);
        epochs.insert(m.clone(), epoch);
        self.held.lock().unwrap().insert(m.clone(), epoch);
        epoch
    }

    fn fenced(&self, m: &MachineId) -> StoreError {
        StoreError::Fenced {
            id: m.clone(),
            held: self.held.lock().unwrap().get(m).copied(),
            current: self.cluster.epochs.lock().unwrap().get(m).copied(),
        }
    }
}

impl SnapshotStore for Node {
    fn put(&self, id: &MachineId, expected: Option<u64>, s: &Snapshot) -> Result<(), StoreError> {
        self.put_many(&[Put::new(id, expected, s)])
    }
    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        self.batches.lock().unwrap().push(batch.len());
        let epochs = self.cluster.epochs.lock().unwrap();
        let mut held = self.held.lock().unwrap();
        let stale: Vec<&MachineId> = batch
            .iter()
            .map(|p| p.id)
            .filter(|m| held.get(*m).is_none() || held.get(*m) != epochs.get(*m))
            .collect();
        if let Some(first) = stale.first() {
            let error = StoreError::Fenced {
                id: (*first).clone(),
                held: held.get(*first).copied(),
                current: epochs.get(*first).copied(),
            };
            for m in stale {
                held.remove(m);
            }
            return Err(error);
        }
        self.cluster.store.put_many(batch)
    }
    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
        self.cluster.store.get(id)
    }
    fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError> {
        self.cluster.store.sequence(id)
    }
    fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
        self.cluster.store.ids()
    }
    fn capabilities(&self) -> Capabilities {
        self.cluster.store.capabilities()
    }
    fn owner_epoch(&self, id: &MachineId) -> Result<u64, StoreError> {
        let held = self.held.lock().unwrap().get(id).copied();
        held.ok_or_else(|| self.fenced(id))
    }
}

fn node_kernel(node: &Arc<Node>) -> Kernel<Build> {
    Kernel::builder_shared(node.clone(), |_| Build::Queued)
        .shards(1)
        .start()
        .unwrap()
}

#[test]
fn a_machine_another_node_owns_is_not_applied_and_its_commands_are_handed_back() {
    let cluster = Arc::new(Cluster::default());
    let (a, b) = (Node::new(&cluster), Node::new(&cluster));
    let m = id("job-owned-by-a");
    a.acquire(&m);
    let (ka, kb) = (node_kernel(&a), node_kernel(&b));
    ka.submit(&m, Cmd::Start).unwrap().wait().unwrap();

    let requests = [
        Request::new(Cmd::Tick { panic: false }).with_key(key("t-1")),
        Request::new(Cmd::Finish).with_key(key("f-1")),
    ];
    for request in requests {
        let err = kb.submit(&m, request).unwrap().wait().unwrap_err();
        assert!(
            matches!(err, CommandError::Fenced { ref id, .. } if *id == m),
            "{err}"
        );
    }
    // Nothing B saw was applied or written, and no put reached the store from B.
    assert_eq!(stored(&*a, &m), Some((Build::Running { attempts: 1 }, 1)));
    assert!(b.batches.lock().unwrap().is_empty());
    assert!(kb.state(&m).unwrap_err().is_fenced());
    // Both requests come back, in order, with their keys, for the owner.
    let back = kb.take_handed_back();
    assert_eq!(back.len(), 2);
    assert!(back.iter().all(|(mid, _)| *mid == m));
    assert_eq!(back[0].1.key(), Some(&key("t-1")));
    assert_eq!(back[1].1.event(), &Cmd::Finish);
    assert!(kb.take_handed_back().is_empty(), "taking empties the list");
    for (mid, request) in back {
        ka.submit(&mid, request).unwrap().wait().unwrap();
    }
    assert_eq!(stored(&*a, &m), Some((Build::Done, 3)));
    let counts = kb.metrics().total.counts;
    assert_eq!((counts.fenced, counts.committed), (2, 0));
    let traced = kb.trace(&TraceFilter::new().outcome(TraceOutcome::Fenced));
    assert_eq!(traced.len(), 2);
}

#[test]
fn a_fenced_commit_stops_serving_that_machine_and_stores_the_rest_of_the_batch() {
    let cluster = Arc::new(Cluster::default());
    let (a, b) = (Node::new(&cluster), Node::new(&cluster));
    let (lost, kept) = (id("job-lost"), id("job-kept"));
    a.acquire(&lost);
    a.acquire(&kept);
    let ka = node_kernel(&a);
    ka.submit(&lost, Cmd::Start).unwrap().wait().unwrap();
    // A postponed command on a machine A keeps.
    let waiting = id("job-waiting");
    a.acquire(&waiting);
    let deferred = ka
        .submit(&waiting, Request::new(Cmd::Finish).with_key(key("w-1")))
        .unwrap();
    // B takes `lost` over behind A's back (A paused past its lease, say) and moves it on.
    b.acquire(&lost);
    let kb = node_kernel(&b);
    assert_eq!(
        kb.submit(&lost, Cmd::Tick { panic: false })
            .unwrap()
            .wait()
            .unwrap()
            .seq,
        2
    );
    // A still believes it owns `lost`: its late write is refused by the store, the other
    // machine of the same batch is stored all the same.
    let outcomes: Vec<_> = ka
        .submit_batch([
            (
                lost.clone(),
                Request::new(Cmd::Fail {
                    reason: "late".into(),
                }),
            ),
            (kept.clone(), Request::new(Cmd::Start)),
        ])
        .into_iter()
        .map(|t| t.unwrap().wait())
        .collect();
    assert!(
        matches!(outcomes[0], Err(CommandError::Fenced { ref id, .. }) if *id == lost),
        "{:?}",
        outcomes[0]
    );
    assert_eq!(outcomes[1].as_ref().unwrap().seq, 1);
    assert_eq!(
        *a.batches.lock().unwrap().last().unwrap(),
        1,
        "the retry held only `kept`"
    );
    // The new owner's state stands; the late write left nothing.
    assert_eq!(
        stored(&*a, &lost),
        Some((Build::Running { attempts: 2 }, 2))
    );
    assert_eq!(
        stored(&*a, &kept),
        Some((Build::Running { attempts: 1 }, 1))
    );
    // From now on A hands `lost`'s commands back without applying them.
    let err = ka.submit(&lost, Cmd::Finish).unwrap().wait().unwrap_err();
    assert!(err.is_fenced(), "{err}");
    let back = ka.take_handed_back();
    assert_eq!(back.len(), 1, "only the unapplied command comes back");
    assert_eq!(back[0].1.event(), &Cmd::Finish);
    // The machine A still owns still takes its postponed command when it moves.
    ka.submit(&waiting, Cmd::Start).unwrap().wait().unwrap();
    assert_eq!(deferred.wait().unwrap().transition.to_name(), "Done");
    let counts = ka.metrics().total.counts;
    assert_eq!(counts.fenced, 2);
    assert_eq!(counts.not_stored, 0);
}

#[test]
fn a_machine_owned_again_under_a_new_epoch_is_reloaded_with_what_the_other_owner_did() {
    let cluster = Arc::new(Cluster::default());
    let (a, b) = (Node::new(&cluster), Node::new(&cluster));
    let m = id("job-bounced");
    a.acquire(&m);
    let ka = node_kernel(&a);
    ka.submit(&m, Cmd::Start).unwrap().wait().unwrap();
    // A keeps the machine in memory while B owns it and moves it on twice.
    b.acquire(&m);
    let kb = node_kernel(&b);
    for _ in 0..2 {
        kb.submit(&m, Cmd::Tick { panic: false })
            .unwrap()
            .wait()
            .unwrap();
    }
    // A's view still says "held" at the old epoch until it acquires again, at a new one.
    a.held.lock().unwrap().remove(&m);
    assert_eq!(a.acquire(&m), 3);
    let committed = ka
        .submit(&m, Cmd::Tick { panic: false })
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(committed.seq, 4, "A continued from B's state, not its own");
    assert_eq!(stored(&*a, &m), Some((Build::Running { attempts: 4 }, 4)));
    assert_eq!(ka.metrics().total.counts.not_stored, 0);
}

#[test]
fn recovery_loads_only_the_machines_this_node_owns() {
    let cluster = Arc::new(Cluster::default());
    let (a, b) = (Node::new(&cluster), Node::new(&cluster));
    let ms: Vec<MachineId> = (0..6).map(|i| id(&format!("job-{i}"))).collect();
    for m in &ms {
        a.acquire(m);
    }
    let ka = node_kernel(&a);
    for m in &ms {
        ka.submit(m, Cmd::Start).unwrap().wait().unwrap();
    }
    drop(ka);
    for m in &ms[..2] {
        b.acquire(m);
    }
    let kb = node_kernel(&b);
    assert_eq!(kb.recovery().recovered, 2);
    assert_eq!(kb.recovery().not_owned, 4);
    assert!(kb.recovery().to_string().contains("owned by other nodes 4"));
}

#[test]
fn postponed_commands_of_a_machine_this_node_lost_are_handed_back() {
    let cluster = Arc::new(Cluster::default());
    let (a, b) = (Node::new(&cluster), Node::new(&cluster));
    let m = id("job-postponed");
    a.acquire(&m);
    let ka = node_kernel(&a);
    // Queued defers Finish until the build starts.
    let postponed = ka
        .submit(&m, Request::new(Cmd::Finish).with_key(key("fin")))
        .unwrap();
    assert!(postponed.wait_timeout(Duration::from_millis(20)).is_none());
    // A's lease lapses (its view drops the machine), B takes over.
    a.held.lock().unwrap().remove(&m);
    b.acquire(&m);
    let start = ka.submit(&m, Cmd::Start).unwrap().wait().unwrap_err();
    assert!(start.is_fenced(), "{start}");
    assert!(postponed.wait().unwrap_err().is_fenced());
    let back = ka.take_handed_back();
    let events: Vec<_> = back.iter().map(|(_, r)| r.event().clone()).collect();
    assert_eq!(
        events,
        vec![Cmd::Finish, Cmd::Start],
        "postponed first, then the new one"
    );
    assert_eq!(back[0].1.key(), Some(&key("fin")));
    // The new owner gets them and applies them once.
    let kb = node_kernel(&b);
    for (mid, request) in back.into_iter().rev() {
        kb.submit(&mid, request).unwrap().wait().unwrap();
    }
    assert_eq!(stored(&*b, &m), Some((Build::Done, 2)));
    assert_eq!(ka.metrics().total.counts.deferred, 0);
}

#[test]
fn a_handle_is_the_kernel_for_other_threads_and_outlives_it_harmlessly() {
    let store = Arc::new(MemoryStore::new());
    let kernel = Kernel::builder_shared(store.clone(), |_| Build::Queued)
        .shards(2)
        .start()
        .unwrap();
    let handle = kernel.handle();
    let from_thread = {
        let handle = handle.clone();
        std::thread::spawn(move || handle.submit(&id("t"), Cmd::Start).unwrap().wait())
    };
    assert!(from_thread.join().unwrap().is_ok());
    // The kernel and its handles see the same machines.
    assert_eq!(kernel.state(&id("t")).unwrap().1, Some(1));
    assert_eq!(handle.state(&id("t")).unwrap().1, Some(1));
    assert_eq!(handle.recovery().recovered, kernel.recovery().recovered);

    kernel.shutdown(Shutdown::Drain);
    assert!(matches!(
        handle.submit(&id("t"), Cmd::Finish),
        Err(SubmitError::Closed(_))
    ));
    assert!(matches!(handle.state(&id("t")), Err(CommandError::Closed)));
    assert_eq!(store.ids().unwrap(), vec![id("t")]);
}
