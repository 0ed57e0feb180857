//! Durable effects, rule by rule: owed in the write of their transition and run only once it
//! is stored; settled in the write that decides the worker's answer; retried after a stored
//! backoff a restart does not reset; given up into the failure event; a panic is a crash and an
//! `Err` is not; an escalated worker leaves intake open and its effects owed; at-most-once
//! effects are never stored nor run again; the outbox is bounded; bad sections and effects
//! that do not encode are typed errors.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fsm_core::kernel::{
    BuildError, CommandError, EffectCtx, EffectError, EffectWorker, Failure, Kernel, KernelBuilder,
    OutboxError, QuarantineCause, RetryPolicy, SubmitError,
};
use fsm_core::queue::ManualClock;
use fsm_core::store::{Codec, MachineId, MemoryStore, Section, Sections, SnapshotStore};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = Ev, effect = Fx)]
pub enum Card {
    #[fsm(initial, on(Bill => Card), on(Charged => Card), on(Declined => Card))]
    Card {
        billed: Vec<u32>,
        charged: Vec<u32>,
        declined: Vec<u32>,
    },
}

#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ev {
    /// Bills `n`: owes a charge, and with `log` a log line (at most once where the kernel
    /// says so); `n == 0` owes an effect that cannot be encoded.
    Bill {
        n: u32,
        log: bool,
    },
    Charged {
        n: u32,
    },
    Declined {
        n: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fx {
    Charge { n: u32 },
    Log { n: u32 },
    Broken(Broken),
}

/// An effect serde refuses to encode.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Broken;

impl Serialize for Broken {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this effect has no encoding"))
    }
}

fn card(s: &card::CardRef<'_>) -> card::Card {
    card::Card {
        billed: s.billed.clone(),
        charged: s.charged.clone(),
        declined: s.declined.clone(),
    }
}

impl Handler<ev::Bill, card::Card> for card::Card {
    fn handle(
        s: card::CardRef<'_>,
        e: ev::Bill,
        fx: &mut Effects<Fx>,
    ) -> Result<card::Card, Refusal> {
        if e.n == 0 {
            fx.push(Fx::Broken(Broken));
        } else {
            fx.push(Fx::Charge { n: e.n });
        }
        if e.log {
            fx.push(Fx::Log { n: e.n });
        }
        let mut next = card(&s);
        next.billed.push(e.n);
        Ok(next)
    }
}

impl Handler<ev::Charged, card::Card> for card::Card {
    fn handle(
        s: card::CardRef<'_>,
        e: ev::Charged,
        _: &mut Effects<Fx>,
    ) -> Result<card::Card, Refusal> {
        let mut next = card(&s);
        next.charged.push(e.n);
        Ok(next)
    }
}

impl Handler<ev::Declined, card::Card> for card::Card {
    fn handle(
        s: card::CardRef<'_>,
        e: ev::Declined,
        _: &mut Effects<Fx>,
    ) -> Result<card::Card, Refusal> {
        let mut next = card(&s);
        next.declined.push(e.n);
        Ok(next)
    }
}

fn new_card(_: &MachineId) -> Card {
    Card::Card {
        billed: Vec::new(),
        charged: Vec::new(),
        declined: Vec::new(),
    }
}

/// What the gateway does with a charge of `n`, per attempt (the last entry repeats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Succeed,
    Fail,
    Panic,
}

/// A call the gateway received.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Call {
    key: String,
    attempt: u32,
    effect: Fx,
    /// The sequence the store held for the machine when the call ran.
    stored_seq: Option<u64>,
}

#[derive(Clone, Default)]
struct Gateway {
    script: Arc<Mutex<HashMap<u32, Vec<Act>>>>,
    calls: Arc<Mutex<Vec<Call>>>,
    store: Option<Arc<dyn SnapshotStore>>,
}

impl Gateway {
    fn on(&self, n: u32, acts: &[Act]) {
        self.script.lock().unwrap().insert(n, acts.to_vec());
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn charges(&self, n: u32) -> Vec<u32> {
        self.calls()
            .iter()
            .filter(|c| c.effect == Fx::Charge { n })
            .map(|c| c.attempt)
            .collect()
    }
}

impl EffectWorker<Card> for Gateway {
    fn run(&mut self, ctx: &EffectCtx, effect: &Fx) -> Result<Option<Ev>, EffectError> {
        let stored_seq = self
            .store
            .as_ref()
            .and_then(|s| s.sequence(ctx.machine()).ok().flatten());
        self.calls.lock().unwrap().push(Call {
            key: ctx.key(),
            attempt: ctx.attempt(),
            effect: effect.clone(),
            stored_seq,
        });
        let Fx::Charge { n } = effect else {
            return Ok(None);
        };
        let acts = self.script.lock().unwrap().get(n).cloned();
        let act = acts.map_or(Act::Succeed, |a| {
            a[(ctx.attempt() as usize - 1).min(a.len() - 1)]
        });
        match act {
            Act::Succeed => Ok(Some(Ev::Charged { n: *n })),
            Act::Fail => Err("card declined".into()),
            Act::Panic => panic!("the gateway's connection reset"),
        }
    }

    fn failure_event(&self, _: &EffectCtx, effect: &Fx, _: &Failure) -> Option<Ev> {
        match effect {
            Fx::Charge { n } => Some(Ev::Declined { n: *n }),
            _ => None,
        }
    }
}

fn id(s: &str) -> MachineId {
    MachineId::new(s).unwrap()
}

fn bill(n: u32) -> Ev {
    Ev::Bill { n, log: false }
}

fn builder(
    store: &Arc<dyn SnapshotStore>,
    clock: &ManualClock,
    gw: &Gateway,
) -> KernelBuilder<Card> {
    let gw = gw.clone();
    Kernel::builder_shared(store.clone(), new_card)
        .shards(2)
        .clock(clock.clock())
        .effects(1, move |_| gw.clone())
}

fn state(kernel: &Kernel<Card>, m: &MachineId) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let (
        Card::Card {
            billed,
            charged,
            declined,
        },
        _,
    ) = kernel.state(m).unwrap();
    (billed, charged, declined)
}

fn setup() -> (Arc<dyn SnapshotStore>, ManualClock, Gateway) {
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let gw = Gateway {
        store: Some(store.clone()),
        ..Gateway::default()
    };
    (store, ManualClock::new(), gw)
}

#[test]
fn an_effect_runs_only_once_the_write_that_owes_it_is_stored_and_its_answer_settles_it_in_one_write(
) {
    let (store, clock, gw) = setup();
    let kernel = builder(&store, &clock, &gw).start().unwrap();
    let m = id("card-1");
    let committed = kernel.submit(&m, bill(7)).unwrap().wait().unwrap();
    kernel.wait_idle();
    let calls = gw.calls();
    assert_eq!(calls.len(), 1);
    // The key names the machine, the sequence of the write that owed it, and its index.
    assert_eq!(calls[0].key, format!("card-1/{}/0", committed.seq));
    assert!(
        calls[0].stored_seq >= Some(committed.seq),
        "the effect ran before the write that owes it was stored: {calls:?}"
    );
    // The answer (`Charged`) and the removal: one write after the one that owed it.
    let snapshot = store.get(&m).unwrap();
    assert_eq!(snapshot.seq(), committed.seq + 1);
    assert_eq!(
        snapshot.outbox(),
        None,
        "the settled effect is gone from the outbox"
    );
    assert_eq!(state(&kernel, &m), (vec![7], vec![7], vec![]));
    assert!(kernel.owed(&m).unwrap().is_empty());
    assert_eq!(kernel.metrics().total.counts.owed, 0);
}

#[test]
fn a_failed_attempt_is_retried_after_a_stored_backoff_that_a_restart_does_not_reset() {
    let (store, clock, gw) = setup();
    gw.on(1, &[Act::Fail, Act::Fail, Act::Succeed]);
    let policy = RetryPolicy::new(Duration::from_secs(10), 2, Duration::from_secs(60), 4).unwrap();
    let kernel = builder(&store, &clock, &gw).retry(policy).start().unwrap();
    let m = id("card-1");
    kernel.submit(&m, bill(1)).unwrap().wait().unwrap();
    kernel.wait_idle();
    assert_eq!(gw.charges(1), vec![1]);
    let owed = kernel.owed(&m).unwrap();
    assert_eq!(owed.len(), 1);
    assert_eq!(owed[0].attempts, 1);
    assert!(!owed[0].running);
    let first_retry = owed[0].not_before_ms;
    assert_eq!(
        first_retry,
        clock.wall_ms() + 10_000,
        "the first delay is 10 s"
    );
    // Not before the delay passed.
    clock.advance(Duration::from_millis(9_999));
    kernel.fire_due_timers();
    kernel.wait_idle();
    assert_eq!(gw.charges(1), vec![1]);
    clock.advance(Duration::from_millis(1));
    kernel.fire_due_timers();
    kernel.wait_idle();
    assert_eq!(gw.charges(1), vec![1, 2]);
    let owed = kernel.owed(&m).unwrap();
    assert_eq!(owed[0].attempts, 2);
    assert_eq!(owed[0].not_before_ms, clock.wall_ms() + 20_000, "then 20 s");
    // A restart in the middle of the backoff: the attempt count and the deadline were stored.
    drop(kernel);
    let kernel = builder(&store, &clock, &gw).retry(policy).start().unwrap();
    kernel.wait_idle();
    assert_eq!(
        gw.charges(1),
        vec![1, 2],
        "a restart does not reset the backoff"
    );
    assert_eq!(kernel.owed(&m).unwrap()[0].attempts, 2);
    clock.advance(Duration::from_secs(20));
    kernel.fire_due_timers();
    kernel.wait_idle();
    assert_eq!(gw.charges(1), vec![1, 2, 3]);
    assert_eq!(state(&kernel, &m), (vec![1], vec![1], vec![]));
    assert!(kernel.owed(&m).unwrap().is_empty());
    // Every attempt under one key.
    let keys: Vec<String> = gw.calls().into_iter().map(|c| c.key).collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    let w = kernel.metrics().workers[0];
    assert_eq!(
        (w.errors, w.retries, w.restarts),
        (0, 0, 0),
        "a fresh kernel counts anew"
    );
}

#[test]
fn spent_attempts_give_the_effect_up_into_the_failure_event() {
    let (store, clock, gw) = setup();
    gw.on(3, &[Act::Fail]);
    let policy = RetryPolicy::new(Duration::from_secs(1), 1, Duration::from_secs(1), 2).unwrap();
    let kernel = builder(&store, &clock, &gw).retry(policy).start().unwrap();
    let m = id("card-3");
    kernel.submit(&m, bill(3)).unwrap().wait().unwrap();
    kernel.wait_idle();
    clock.advance(Duration::from_secs(1));
    kernel.fire_due_timers();
    kernel.wait_idle();
    assert_eq!(gw.charges(3), vec![1, 2]);
    assert_eq!(state(&kernel, &m), (vec![3], vec![], vec![3]));
    assert!(kernel.owed(&m).unwrap().is_empty());
    let w = kernel.metrics().workers[0];
    assert_eq!(
        (w.errors, w.retries, w.given_up, w.panics, w.restarts, w.fed_back),
        (2, 1, 1, 0, 0, 1)
    );
    assert!(
        kernel.escalations().is_empty(),
        "a declined card is not a crash"
    );
}

#[test]
fn a_panic_counts_toward_the_intensity_an_error_does_not_and_escalation_leaves_intake_open() {
    let (store, clock, gw) = setup();
    gw.on(1, &[Act::Fail]);
    gw.on(2, &[Act::Panic]);
    gw.on(3, &[Act::Panic]);
    let kernel = builder(&store, &clock, &gw)
        .retry(RetryPolicy::no_retry())
        .restart_intensity(1, Duration::from_secs(3600))
        .start()
        .unwrap();
    let m = id("card-1");
    for _ in 0..5 {
        // Five declined cards: failures, never a restart.
        kernel.submit(&m, bill(1)).unwrap().wait().unwrap();
        kernel.wait_idle();
    }
    assert_eq!(kernel.metrics().workers[0].restarts, 0);
    kernel.submit(&m, bill(2)).unwrap().wait().unwrap();
    kernel.wait_idle();
    assert_eq!(
        kernel.metrics().workers[0].restarts,
        1,
        "a panic is a crash"
    );
    kernel.submit(&m, bill(3)).unwrap().wait().unwrap();
    kernel.wait_idle();
    assert_eq!(
        kernel.escalations().len(),
        1,
        "the second crash within the hour"
    );
    // Escalated: the machine still takes commands; what it owes waits, durably.
    gw.on(4, &[Act::Succeed]);
    kernel.submit(&m, bill(4)).unwrap().wait().unwrap();
    kernel.wait_idle();
    let owed = kernel.owed(&m).unwrap();
    assert_eq!(owed.len(), 1, "{owed:?}");
    assert!(
        owed[0].running,
        "handed to the escalated worker, waiting for its restart"
    );
    assert_eq!(kernel.metrics().workers[0].parked, 1);
    assert!(gw.charges(4).is_empty());
    // The operator restarts the worker: what waited runs.
    assert!(kernel.restart_worker(0));
    while kernel.metrics().workers[0].parked > 0 {
        std::thread::yield_now();
    }
    kernel.wait_idle();
    assert_eq!(gw.charges(4), vec![1]);
    assert!(kernel.owed(&m).unwrap().is_empty());
    let (_, charged, declined) = state(&kernel, &m);
    assert_eq!((charged, declined), (vec![4], vec![1, 1, 1, 1, 1, 2, 3]));
}

#[test]
fn refusal_when_escalated_is_the_users_choice() {
    let (store, clock, gw) = setup();
    gw.on(1, &[Act::Panic]);
    let kernel = builder(&store, &clock, &gw)
        .retry(RetryPolicy::no_retry())
        .restart_intensity(0, Duration::from_secs(3600))
        .refuse_when_escalated(true)
        .start()
        .unwrap();
    let m = id("card-1");
    kernel.submit(&m, bill(1)).unwrap().wait().unwrap();
    kernel.wait_idle();
    assert!(matches!(
        kernel.submit(&m, bill(2)),
        Err(SubmitError::Escalated { worker: 0, .. })
    ));
}

#[test]
fn at_most_once_effects_are_not_stored_and_never_run_again() {
    let (store, clock, gw) = setup();
    gw.on(5, &[Act::Fail, Act::Succeed]);
    let policy =
        RetryPolicy::new(Duration::from_secs(3600), 1, Duration::from_secs(3600), 3).unwrap();
    let start = || {
        builder(&store, &clock, &gw)
            .retry(policy)
            .at_most_once(|fx| matches!(fx, Fx::Log { .. }))
            .start()
            .unwrap()
    };
    let kernel = start();
    let m = id("card-5");
    kernel
        .submit(&m, Ev::Bill { n: 5, log: true })
        .unwrap()
        .wait()
        .unwrap();
    kernel.wait_idle();
    // Only the charge is owed (waiting for its retry); the log line ran once.
    let owed = kernel.owed(&m).unwrap();
    assert_eq!(owed.len(), 1);
    assert_eq!(owed[0].id.index(), 0);
    drop(kernel);
    let kernel = start();
    clock.advance(Duration::from_secs(3600));
    kernel.fire_due_timers();
    kernel.wait_idle();
    let effects: Vec<Fx> = gw.calls().into_iter().map(|c| c.effect).collect();
    assert_eq!(
        effects,
        // At-most-once effects are handed out with the answers, owed ones right after.
        vec![Fx::Log { n: 5 }, Fx::Charge { n: 5 }, Fx::Charge { n: 5 }],
        "the charge ran again after the restart, the log line did not"
    );
    let keys: Vec<String> = gw.calls().into_iter().map(|c| c.key).collect();
    assert_eq!(
        keys[0], "card-5/1/1",
        "an at-most-once effect has its own index"
    );
}

#[test]
fn a_machine_owes_at_most_its_bound_and_the_next_transition_is_refused_unchanged() {
    let (store, clock, gw) = setup();
    for n in 1..=3 {
        gw.on(n, &[Act::Fail]);
    }
    let policy =
        RetryPolicy::new(Duration::from_secs(3600), 1, Duration::from_secs(3600), 10).unwrap();
    let kernel = builder(&store, &clock, &gw)
        .retry(policy)
        .max_pending_effects(2)
        .start()
        .unwrap();
    let m = id("card-1");
    kernel.submit(&m, bill(1)).unwrap().wait().unwrap();
    kernel.submit(&m, bill(2)).unwrap().wait().unwrap();
    let err = kernel.submit(&m, bill(3)).unwrap().wait().unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Outbox(OutboxError::Full { owed: 3, limit: 2 })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("max_pending_effects"), "{err}");
    kernel.wait_idle();
    assert_eq!(
        state(&kernel, &m).0,
        vec![1, 2],
        "the refused bill changed nothing"
    );
    assert_eq!(kernel.owed(&m).unwrap().len(), 2);
    assert_eq!(kernel.metrics().total.counts.owed, 2);
    assert!(matches!(
        Kernel::builder(MemoryStore::new(), new_card)
            .effects(1, |_| Gateway::default())
            .max_pending_effects(0)
            .start(),
        Err(BuildError::Config(_))
    ));
}

#[test]
fn an_effect_that_cannot_be_encoded_refuses_its_transition() {
    let (store, clock, gw) = setup();
    let kernel = builder(&store, &clock, &gw).start().unwrap();
    let m = id("card-1");
    let err = kernel.submit(&m, bill(0)).unwrap().wait().unwrap_err();
    assert!(
        matches!(
            &err,
            CommandError::Outbox(OutboxError::Unencodable { index: 0, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("could not be encoded"), "{err}");
    assert_eq!(state(&kernel, &m).0, Vec::<u32>::new());
    assert!(gw.calls().is_empty());
}

#[test]
fn an_outbox_that_does_not_decode_quarantines_its_machine() {
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let codec = Codec::<Card>::new(1);
    let journal = [1u8, 0];
    let machine = new_card(&id("x"));
    let frame = |outbox: &[u8]| {
        codec
            .encode_framed(
                &machine,
                1,
                Sections {
                    journal: Some(&journal),
                    timers: None,
                    outbox: Some(outbox),
                    state: None,
                    sealed: None,
                },
            )
            .unwrap()
    };
    // Garbage, then a well-formed section whose effect is not this kernel's effect type.
    store
        .put(&id("garbage"), None, &frame(&[1, 0xff, 0xff]))
        .unwrap();
    let wrong = [1u8, 1, 1, 0, 0, 0, 0, 1, 0xee];
    store.put(&id("wrong"), None, &frame(&wrong)).unwrap();
    let kernel = Kernel::builder_shared(store, new_card)
        .shards(1)
        .effects(1, |_| Gateway::default())
        .start()
        .unwrap();
    let report = kernel.recovery();
    assert_eq!(report.quarantined.len(), 2, "{report}");
    for q in &report.quarantined {
        match &q.cause {
            QuarantineCause::Section(e) => assert_eq!(e.section(), Section::Outbox, "{q}"),
            other => panic!("{other}"),
        }
    }
    assert!(report.to_string().contains("does not decode"), "{report}");
}

#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = Lk, effect = Ping)]
pub enum Gate {
    #[fsm(initial, on(Open => Held))]
    Shut,
    #[fsm(defer(Pong), on(Release => Free, plain))]
    Held,
    #[fsm(on(Pong => Done, plain))]
    Free,
    #[fsm(terminal)]
    Done,
}

#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lk {
    Open,
    Pong,
    Release,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping;

impl Handler<lk::Open, gate::Held> for gate::Shut {
    fn handle(_: gate::Shut, _: lk::Open, fx: &mut Effects<Ping>) -> Result<gate::Held, Refusal> {
        fx.push(Ping);
        Ok(gate::Held)
    }
}

#[derive(Clone, Default)]
struct Ponger(Arc<Mutex<u32>>);

impl EffectWorker<Gate> for Ponger {
    fn run(&mut self, _: &EffectCtx, _: &Ping) -> Result<Option<Lk>, EffectError> {
        *self.0.lock().unwrap() += 1;
        Ok(Some(Lk::Pong))
    }
}

#[test]
fn an_answer_the_state_defers_keeps_its_effect_owed_until_it_is_decided() {
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let runs = Ponger::default();
    let start = || {
        let runs = runs.clone();
        Kernel::builder_shared(store.clone(), |_| Gate::Shut)
            .shards(1)
            .effects(1, move |_| runs.clone())
            .start()
            .unwrap()
    };
    let kernel = start();
    let m = id("gate");
    kernel.submit(&m, Lk::Open).unwrap().wait().unwrap();
    kernel.wait_idle();
    // The answer came and `Held` postponed it: the effect is still owed, in memory and stored.
    assert_eq!(*runs.0.lock().unwrap(), 1);
    assert_eq!(kernel.owed(&m).unwrap().len(), 1);
    assert!(store.get(&m).unwrap().outbox().is_some());
    // A crash now loses the postponed answer but not the effect: it runs again.
    drop(kernel);
    let kernel = start();
    kernel.wait_idle();
    assert_eq!(*runs.0.lock().unwrap(), 2);
    // The state changes, the postponed answer is replayed and decided with the removal.
    kernel.submit(&m, Lk::Release).unwrap().wait().unwrap();
    kernel.wait_idle();
    assert_eq!(kernel.state(&m).unwrap().0, Gate::Done);
    assert!(kernel.owed(&m).unwrap().is_empty());
    assert_eq!(store.get(&m).unwrap().outbox(), None);
}
