//! Timers in the kernel, rule by rule, against gen_statem's documented behaviour: a state
//! timeout is cancelled by a state change and not by a self-transition; an event timeout by any
//! accepted event; a named timer only by cancel or restart, and a restart replaces it. Then
//! durability: armed timers travel in the snapshot, survive a restart (and a clock step),
//! fire once after a crash between firing and commit, and evicted machines keep them. Time is
//! a `ManualClock` throughout: every test moves it by hand and sees exactly what fires.
#![allow(missing_docs)] // test machines

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fsm_core::kernel::{CommandError, Kernel, KernelBuilder, QuarantineCause, TraceFilter};
use fsm_core::queue::ManualClock;
use fsm_core::store::{
    Capabilities, Codec, MachineId, MemoryStore, Put, Snapshot, SnapshotStore, StoreError,
};
use fsm_core::timer::TimerError;
use fsm_core::{Effects, Event, Handler, Reason, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = Cmd)]
pub enum Watch {
    #[fsm(
        initial,
        on(Go => B), on(Stay => A), on(Restart => A), on(Tick => C), on(Ring => A),
        on(Arm => A), on(Disarm => A), on(Idle => A), on(Hold => Held), on(Wrong => A),
        state_timeout(ms = 1000 => Tick)
    )]
    A,
    #[fsm(
        on(Go => A), on(Stay => B), on(Tick => C), on(Ring => B), on(Arm => B), on(Disarm => B),
        on(Idle => B),
        state_timeout(ms = 500 => Tick)
    )]
    B,
    #[fsm(on(Go => A), on(Tick => C), on(Ring => C), on(Arm => C), on(Idle => C))]
    C,
    #[fsm(on(Release => C), on(Ring => Held), defer(Tick))]
    Held,
}

#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cmd {
    Go,
    Stay,
    Restart,
    Tick,
    Ring,
    Arm { name: String, ms: u64 },
    Disarm { name: String },
    Idle { ms: u64 },
    Hold,
    Release,
    Wrong,
}

/// Handlers that only move to their target.
macro_rules! plain {
    ($($from:ident, $event:ident => $to:ident;)*) => {$(
        impl Handler<cmd::$event, watch::$to> for watch::$from {
            fn handle(_: watch::$from, _: cmd::$event, _: &mut Effects<()>) -> Result<watch::$to, Refusal> {
                Ok(watch::$to)
            }
        }
    )*};
}

plain! {
    A, Go => B; A, Stay => A; A, Tick => C; A, Ring => A; A, Hold => Held;
    B, Go => A; B, Stay => B; B, Tick => C; B, Ring => B;
    C, Go => A; C, Tick => C; C, Ring => C;
    Held, Release => C; Held, Ring => Held;
}

impl Handler<cmd::Restart, watch::A> for watch::A {
    fn handle(_: watch::A, _: cmd::Restart, fx: &mut Effects<()>) -> Result<watch::A, Refusal> {
        fx.restart_state_timeout();
        Ok(watch::A)
    }
}

impl Handler<cmd::Wrong, watch::A> for watch::A {
    fn handle(_: watch::A, _: cmd::Wrong, fx: &mut Effects<()>) -> Result<watch::A, Refusal> {
        // A payload, not the machine's event enum: the kernel refuses it.
        fx.start_timer("x", Duration::from_millis(5), cmd::Ring);
        Ok(watch::A)
    }
}

/// Named timers and the event timeout, armed the same way from every state.
macro_rules! timer_handlers {
    ($($s:ident),*) => {$(
        impl Handler<cmd::Arm, watch::$s> for watch::$s {
            fn handle(_: watch::$s, e: cmd::Arm, fx: &mut Effects<()>) -> Result<watch::$s, Refusal> {
                // A timer whose name starts with `tick` fires `Tick`, any other `Ring`.
                let event = if e.name.starts_with("tick") { Cmd::Tick } else { Cmd::Ring };
                fx.start_timer(e.name, Duration::from_millis(e.ms), event);
                Ok(watch::$s)
            }
        }
        impl Handler<cmd::Idle, watch::$s> for watch::$s {
            fn handle(_: watch::$s, e: cmd::Idle, fx: &mut Effects<()>) -> Result<watch::$s, Refusal> {
                fx.event_timeout(Duration::from_millis(e.ms), Cmd::Ring);
                Ok(watch::$s)
            }
        }
    )*};
}
timer_handlers!(A, B, C);

macro_rules! disarm {
    ($($s:ident),*) => {$(
        impl Handler<cmd::Disarm, watch::$s> for watch::$s {
            fn handle(_: watch::$s, e: cmd::Disarm, fx: &mut Effects<()>) -> Result<watch::$s, Refusal> {
                fx.cancel_timer(e.name);
                Ok(watch::$s)
            }
        }
    )*};
}
disarm!(A, B);

fn id(s: &str) -> MachineId {
    MachineId::new(s).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn arm(name: &str, ms: u64) -> Cmd {
    Cmd::Arm {
        name: name.into(),
        ms,
    }
}

struct Rig {
    clock: ManualClock,
    kernel: Kernel<Watch>,
}

fn builder(store: Arc<dyn SnapshotStore>, clock: &ManualClock) -> KernelBuilder<Watch> {
    Kernel::builder_shared(store, |_| Watch::A)
        .shards(1)
        .clock(clock.clock())
        .timer_events()
}

fn rig() -> Rig {
    let clock = ManualClock::at_wall_ms(1_000_000);
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let kernel = builder(store, &clock).start().unwrap();
    Rig { clock, kernel }
}

impl Rig {
    fn send(&self, m: &MachineId, cmd: Cmd) -> Result<fsm_core::kernel::Committed, CommandError> {
        self.kernel.submit(m, cmd).unwrap().wait()
    }

    /// Moves the clock, fires what is due, waits until the firings are decided; returns how
    /// many fired.
    fn advance(&self, by: u64) -> usize {
        self.clock.advance(ms(by));
        let n = self.kernel.fire_due_timers();
        self.kernel.wait_idle();
        n
    }

    fn state(&self, m: &MachineId) -> Watch {
        self.kernel.state(m).unwrap().0
    }

    /// The firings decided for `m`, oldest first, as `from --event--> to`.
    fn fired(&self, m: &MachineId) -> Vec<String> {
        fired(&self.kernel, m)
    }
}

fn fired(kernel: &Kernel<Watch>, m: &MachineId) -> Vec<String> {
    // Ring and Tick are only ever sent by timers in these tests.
    kernel
        .trace(&TraceFilter::new().machine(m))
        .into_iter()
        .filter(|e| e.event == "Tick" || e.event == "Ring")
        .map(|e| format!("{} --{}--> {}", e.from, e.event, e.to.unwrap_or("-")))
        .collect()
}

#[test]
fn a_state_timeout_fires_after_its_duration_in_the_state_that_armed_it() {
    let r = rig();
    let m = id("w");
    r.send(&m, Cmd::Go).unwrap(); // A -> B at t=0: B's 500 ms timeout
    assert_eq!(r.advance(499), 0);
    assert_eq!(r.state(&m), Watch::B);
    assert_eq!(r.advance(1), 1);
    assert_eq!(r.state(&m), Watch::C);
    assert_eq!(r.fired(&m), ["B --Tick--> C"]);
    // C declares no timeout: nothing more ever fires.
    assert_eq!(r.advance(10_000), 0);
    let counts = r.kernel.metrics().total.counts;
    assert_eq!((counts.timers_fired, counts.committed), (1, 2));
}

#[test]
fn a_state_change_cancels_the_state_timeout_and_arms_the_new_states() {
    let r = rig();
    let m = id("w");
    r.send(&m, Cmd::Go).unwrap(); // B, due at 500
    r.advance(300);
    r.send(&m, Cmd::Go).unwrap(); // A at 300: B's cancelled, A's due at 1300
    assert_eq!(r.advance(200), 0, "B's timeout was cancelled by leaving B");
    assert_eq!(r.advance(799), 0);
    assert_eq!(r.advance(1), 1);
    assert_eq!(r.fired(&m), ["A --Tick--> C"]);
}

#[test]
fn a_self_transition_keeps_the_state_timeout_and_a_restart_replaces_it() {
    let r = rig();
    let m = id("w");
    r.send(&m, Cmd::Go).unwrap();
    r.send(&m, Cmd::Go).unwrap(); // A at 0, due at 1000
    r.advance(600);
    r.send(&m, Cmd::Stay).unwrap(); // self-transition: still due at 1000
    assert_eq!(r.advance(400), 1);
    assert_eq!(r.fired(&m), ["A --Tick--> C"]);

    let n = id("n");
    r.send(&n, Cmd::Go).unwrap();
    r.send(&n, Cmd::Go).unwrap(); // A at 1000, due at 2000
    r.advance(600);
    r.send(&n, Cmd::Restart).unwrap(); // restarted at 1600: due at 2600
    assert_eq!(r.advance(400), 0);
    assert_eq!(r.advance(599), 0);
    assert_eq!(r.advance(1), 1);
    assert_eq!(r.fired(&n), ["A --Tick--> C"]);
}

#[test]
fn any_accepted_event_cancels_the_event_timeout_and_a_rejected_one_does_not() {
    let r = rig();
    let m = id("w");
    r.send(&m, Cmd::Go).unwrap();
    r.send(&m, Cmd::Go).unwrap();
    r.send(&m, Cmd::Idle { ms: 100 }).unwrap(); // A: Ring in 100 unless an event comes
    r.advance(50);
    r.send(&m, Cmd::Stay).unwrap(); // accepted: cancels it
    assert_eq!(r.advance(100), 0);
    r.send(&m, Cmd::Idle { ms: 100 }).unwrap();
    // `Release` has no transition in A: rejected, the machine (and its timers) unchanged.
    assert!(r.send(&m, Cmd::Release).is_err());
    assert_eq!(r.advance(100), 1);
    assert_eq!(r.fired(&m), ["A --Ring--> A"]);
}

#[test]
fn a_named_timer_survives_state_changes_until_cancelled_and_a_restart_replaces_it() {
    let r = rig();
    let m = id("w");
    r.send(&m, arm("retry", 2000)).unwrap(); // in A at 0 (fresh machine): Ring at 2000
    r.send(&m, Cmd::Go).unwrap(); // B: its Tick at 500
    assert_eq!(r.advance(500), 1); // B --Tick--> C
    assert_eq!(r.advance(1499), 0);
    assert_eq!(
        r.advance(1),
        1,
        "the named timer outlived two state changes"
    );
    assert_eq!(r.fired(&m), ["B --Tick--> C", "C --Ring--> C"]);

    let n = id("n");
    r.send(&n, arm("retry", 300)).unwrap();
    r.advance(100);
    r.send(&n, arm("retry", 300)).unwrap(); // replaces: due at +400 from the first arming
    assert_eq!(r.advance(200), 0, "the first arming was replaced");
    assert_eq!(r.advance(200), 1);
    r.send(&n, arm("retry", 300)).unwrap();
    r.send(
        &n,
        Cmd::Disarm {
            name: "retry".into(),
        },
    )
    .unwrap();
    assert_eq!(
        r.advance(1000),
        1,
        "only A's state timeout, not the cancelled timer"
    );
    assert_eq!(r.fired(&n), ["A --Ring--> A", "A --Tick--> C"]);
}

#[test]
fn timers_due_together_fire_in_deadline_order() {
    let r = rig();
    let m = id("w");
    r.send(&m, arm("late", 900)).unwrap();
    r.send(&m, arm("early", 100)).unwrap();
    r.send(&m, arm("middle", 500)).unwrap();
    // A's own state timeout is due at 1000: all four fire in one go, by deadline.
    assert_eq!(r.advance(5000), 4);
    assert_eq!(
        r.fired(&m),
        [
            "A --Ring--> A",
            "A --Ring--> A",
            "A --Ring--> A",
            "A --Tick--> C"
        ]
    );
}

#[test]
fn a_deferred_firing_is_replayed_once_after_the_next_state_change() {
    let r = rig();
    let m = id("w");
    r.send(&m, arm("tick-1", 100)).unwrap(); // fires Tick, which Held defers
    r.send(&m, Cmd::Hold).unwrap();
    assert_eq!(r.advance(100), 1);
    assert_eq!(r.kernel.metrics().total.counts.deferred, 1);
    assert_eq!(r.advance(1000), 0, "a postponed firing is not fired again");
    r.send(&m, Cmd::Release).unwrap(); // Held -> C replays it
    r.kernel.wait_idle();
    assert_eq!(r.fired(&m), ["Held --Tick--> -", "C --Tick--> C"]);
    assert_eq!(r.state(&m), Watch::C);
    assert_eq!(r.advance(10_000), 0, "consumed by its replay");
}

#[test]
fn armed_timers_are_in_the_snapshot_and_fire_after_a_restart_once() {
    let clock = ManualClock::at_wall_ms(1_000_000);
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let m = id("w");
    {
        let kernel = builder(store.clone(), &clock).start().unwrap();
        kernel
            .submit(&m, arm("retry", 5000))
            .unwrap()
            .wait()
            .unwrap();
        kernel.submit(&m, Cmd::Go).unwrap().wait().unwrap(); // B: Tick at 500
        kernel.shutdown(fsm_core::kernel::Shutdown::Drain);
    }
    // Down for 3 s: B's timeout passed while nothing ran, the named timer did not.
    let later = ManualClock::at_wall_ms(1_003_000);
    let kernel = builder(store.clone(), &later).start().unwrap();
    assert_eq!(kernel.recovery().recovered, 1);
    assert_eq!(
        kernel.fire_due_timers(),
        1,
        "the missed state timeout fires at once"
    );
    kernel.wait_idle();
    assert_eq!(kernel.fire_due_timers(), 0, "and only once");
    later.advance(ms(1999));
    assert_eq!(kernel.fire_due_timers(), 0);
    later.advance(ms(1));
    assert_eq!(kernel.fire_due_timers(), 1);
    kernel.wait_idle();
    assert_eq!(fired(&kernel, &m), ["B --Tick--> C", "C --Ring--> C"]);
    drop(kernel);
    // Everything fired is gone from the snapshot: a third start fires nothing.
    let third = builder(store, &ManualClock::at_wall_ms(9_000_000))
        .start()
        .unwrap();
    assert_eq!(third.fire_due_timers(), 0);
}

#[test]
fn a_clock_stepped_back_while_down_never_makes_a_timer_wait_longer_than_its_duration() {
    let clock = ManualClock::at_wall_ms(10_000_000);
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let m = id("w");
    let kernel = builder(store.clone(), &clock).start().unwrap();
    kernel.submit(&m, Cmd::Go).unwrap().wait().unwrap(); // B: due at +500
    drop(kernel);
    // The next process's wall clock is an hour behind.
    let behind = ManualClock::at_wall_ms(10_000_000 - 3_600_000);
    let kernel = builder(store, &behind).start().unwrap();
    behind.advance(ms(499));
    assert_eq!(kernel.fire_due_timers(), 0);
    behind.advance(ms(1));
    assert_eq!(
        kernel.fire_due_timers(),
        1,
        "fired 500 ms after restart, not an hour later"
    );
}

/// A memory store whose next `put_many` calls fail with an unknown outcome (a crash between
/// the write and its acknowledgement), after writing or without writing.
struct Flaky {
    inner: MemoryStore,
    plan: Mutex<Vec<bool>>,
}

impl SnapshotStore for Flaky {
    fn put(&self, id: &MachineId, expected: Option<u64>, s: &Snapshot) -> Result<(), StoreError> {
        self.put_many(&[Put::new(id, expected, s)])
    }
    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        let step = self.plan.lock().unwrap().pop();
        match step {
            None => self.inner.put_many(batch),
            Some(wrote) => {
                if wrote {
                    self.inner.put_many(batch)?;
                }
                Err(StoreError::Backend {
                    backend: "test",
                    message: "connection lost after COMMIT".into(),
                    outcome_unknown: true,
                })
            }
        }
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
fn a_firing_whose_commit_failed_fires_again_and_one_that_committed_does_not() {
    for wrote in [false, true] {
        let clock = ManualClock::at_wall_ms(1_000_000);
        let store = Arc::new(Flaky {
            inner: MemoryStore::new(),
            plan: Mutex::new(Vec::new()),
        });
        let kernel = builder(store.clone(), &clock).start().unwrap();
        let m = id("w");
        kernel.submit(&m, Cmd::Go).unwrap().wait().unwrap(); // B, Tick at 500
        store.plan.lock().unwrap().push(wrote);
        clock.advance(ms(500));
        assert_eq!(kernel.fire_due_timers(), 1);
        kernel.wait_idle();
        assert_eq!(kernel.metrics().total.counts.outcome_unknown, 1);
        // The machine was reloaded from the store: the firing fires again only if it is
        // still armed there, that is only if the write did not happen.
        let again = kernel.fire_due_timers();
        kernel.wait_idle();
        assert_eq!(again, usize::from(!wrote), "wrote = {wrote}");
        let (state, seq) = kernel.state(&m).unwrap();
        assert_eq!((state, seq), (Watch::C, Some(2)), "wrote = {wrote}");
        assert_eq!(kernel.fire_due_timers(), 0);
    }
}

#[test]
fn an_evicted_machine_keeps_its_timers_and_is_loaded_when_they_come_due() {
    let clock = ManualClock::at_wall_ms(1_000_000);
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let kernel = builder(store, &clock).idle_after(ms(100)).start().unwrap();
    let m = id("w");
    kernel
        .submit(&m, arm("far", 60_000))
        .unwrap()
        .wait()
        .unwrap();
    clock.advance(ms(200));
    assert_eq!(kernel.sweep(), 0, "evicted");
    clock.advance(ms(59_800));
    assert_eq!(
        kernel.fire_due_timers(),
        2,
        "the state timeout and the named timer"
    );
    kernel.wait_idle();
    assert_eq!(fired(&kernel, &m), ["A --Tick--> C", "C --Ring--> C"]);
}

#[test]
fn bad_timer_requests_are_typed_errors_and_leave_the_machine_as_it_was() {
    let r = rig();
    let m = id("w");
    let zero = r.send(&m, arm("z", 0)).unwrap_err();
    match &zero {
        CommandError::Rejected(rej) => {
            assert!(
                matches!(rej.reason(), Reason::Timer(e) if matches!(**e, TimerError::ZeroDuration { .. })),
                "{zero}"
            )
        }
        other => panic!("{other}"),
    }
    let long = r.send(&m, arm("l", u64::MAX)).unwrap_err();
    assert!(
        long.to_string().contains("longer than the longest timer"),
        "{long}"
    );
    let bad_name = r.send(&m, arm("a b", 10)).unwrap_err();
    assert!(bad_name.to_string().contains("timer name"), "{bad_name}");
    let wrong = r.send(&m, Cmd::Wrong).unwrap_err();
    assert!(
        matches!(
            &wrong,
            CommandError::Timer(TimerError::WrongEventType { .. })
        ),
        "{wrong}"
    );
    assert!(wrong.to_string().contains("Cmd"), "{wrong}");
    // Nothing above changed the machine: it was never stored.
    assert_eq!(r.kernel.state(&m).unwrap().1, None);

    // More timers than the bound.
    let clock = ManualClock::new();
    let kernel = builder(Arc::new(MemoryStore::new()), &clock)
        .max_timers(3)
        .start()
        .unwrap();
    // A's own state timeout is one of the three.
    for name in ["a", "b"] {
        kernel.submit(&m, arm(name, 10)).unwrap().wait().unwrap();
    }
    let err = kernel.submit(&m, arm("c", 10)).unwrap().wait().unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Timer(TimerError::TooMany { armed: 4, limit: 3 })
        ),
        "{err}"
    );
    assert_eq!(kernel.state(&m).unwrap().1, Some(2));

    // Without `timer_events()`: the derived event type is serde's, so its events are stored
    // all the same (forgetting the call is no longer a trap).
    let kernel = Kernel::builder(MemoryStore::new(), |_| Watch::A)
        .clock(clock.clock())
        .shards(1)
        .start()
        .unwrap();
    kernel.submit(&m, arm("a", 10)).unwrap().wait().unwrap();
    clock.advance(ms(10));
    assert_eq!(kernel.fire_due_timers(), 1);
}

/// A bell whose event type is not serde's: its kernel cannot store a timer's event.
mod plain {
    use std::time::Duration;

    use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
    use serde::{Deserialize, Serialize};

    #[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[fsm(event = BellCmd)]
    pub(crate) enum Bell {
        #[fsm(initial, on(Arm => Quiet), on(Ring => Quiet), state_timeout(ms = 100 => Ring))]
        Quiet,
    }

    #[derive(Event, Debug, Clone, PartialEq)]
    pub(crate) enum BellCmd {
        Arm,
        Ring,
    }

    impl Handler<bell_cmd::Arm, bell::Quiet> for bell::Quiet {
        fn handle(
            _: bell::Quiet,
            _: bell_cmd::Arm,
            fx: &mut Effects<()>,
        ) -> Result<bell::Quiet, Refusal> {
            fx.start_timer("ring", Duration::from_millis(10), BellCmd::Ring);
            Ok(bell::Quiet)
        }
    }

    impl Handler<bell_cmd::Ring, bell::Quiet> for bell::Quiet {
        fn handle(
            _: bell::Quiet,
            _: bell_cmd::Ring,
            _: &mut Effects<()>,
        ) -> Result<bell::Quiet, Refusal> {
            Ok(bell::Quiet)
        }
    }
}

#[test]
fn an_event_type_serde_cannot_store_refuses_named_timers_but_not_state_timeouts() {
    use plain::{Bell, BellCmd};
    let clock = ManualClock::at_wall_ms(1_000_000);
    let kernel = Kernel::builder(MemoryStore::new(), |_| Bell::Quiet)
        .clock(clock.clock())
        .shards(1)
        .start()
        .unwrap();
    let m = MachineId::new("bell").unwrap();
    let err = kernel.submit(&m, BellCmd::Arm).unwrap().wait().unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Timer(TimerError::EventsNotStorable { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("timer_events()"), "{err}");
    // The state timeout's event is in the table: it needs no storage.
    kernel.submit(&m, BellCmd::Ring).unwrap().wait().unwrap();
    clock.advance(ms(100));
    assert_eq!(kernel.fire_due_timers(), 1);
}

#[test]
fn a_snapshot_whose_timers_do_not_fit_is_quarantined() {
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let codec = Codec::<Watch>::new(1);
    let m = id("bad");
    // A state timeout armed in C, which declares none; then bytes that are no section.
    for (i, timers) in [
        postcard::to_allocvec(&(
            1u8,
            2u64,
            vec![(0u8, None::<String>, 1u64, 5u64, 5u64, None::<Vec<u8>>)],
        ))
        .unwrap(),
        vec![0xff, 0xff, 0xff],
    ]
    .into_iter()
    .enumerate()
    {
        let m = id(&format!("bad-{i}"));
        let s = codec
            .encode_with_sections(&Watch::C, 1, &[1, 0], Some(&timers))
            .unwrap();
        store.put(&m, None, &s).unwrap();
    }
    let kernel = builder(store, &ManualClock::new()).start().unwrap();
    let report = kernel.recovery();
    assert_eq!(report.quarantined.len(), 2, "{report}");
    for q in &report.quarantined {
        assert!(
            matches!(&q.cause, QuarantineCause::Section(e) if e.section() == fsm_core::store::Section::Timers),
            "{q}"
        );
    }
    assert!(report.to_string().contains("declares none"), "{report}");
    assert!(
        kernel.submit(&m, Cmd::Go).unwrap().wait().is_ok(),
        "the others run"
    );
}

#[test]
fn a_timer_re_armed_again_and_again_before_its_deadline_keeps_the_index_bounded() {
    let r = rig();
    let m = id("pacer");
    // A pacemaker's pulses: each restarts A's state timeout long before it is due.
    for _ in 0..5000 {
        r.send(&m, Cmd::Restart).unwrap();
    }
    let entries = r.kernel.metrics().total.timer_entries;
    assert!(
        entries <= 2 * 1024 + 8,
        "{entries} index entries for one armed timer"
    );
    assert_eq!(
        r.advance(1000),
        1,
        "and it fires once, at the last restart's deadline"
    );
    assert_eq!(r.fired(&m), ["A --Tick--> C"]);
}
