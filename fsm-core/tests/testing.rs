//! `fsm_core::testing`: the property check passes a correct machine and names the property a
//! broken one breaks, with a shrunk sequence; the derived strategies generate every variant and
//! use the custom generators fields name.

#![allow(missing_docs)]

use std::collections::BTreeSet;

use arbitrary::{Arbitrary, Unstructured};
use fsm_core::table::{StateMeta, Table, TransitionMeta};
use fsm_core::testing::{check_machine, Checker, Failure, Property};
use fsm_core::{
    Effects, Event, EventId, Handler, InvalidState, Reason, Refusal, Rejection, StateId,
    StateMachine, Transition,
};
use proptest::arbitrary::any;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// A correct machine with guards, an invariant, effects and a terminal state.

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = OrderCmd, effect = String)]
pub enum Order {
    #[fsm(initial, on(Submit => Submitted), on(Cancel => Cancelled))]
    Draft,
    #[fsm(on(Pay => Paid), on(Cancel => Cancelled), validate = domain_ok)]
    Submitted { domain: String },
    #[fsm(on(Confirm => Registered), on(Reject => Submitted))]
    Paid { domain: String, cents: u64 },
    #[fsm(terminal)]
    Registered { domain: String },
    #[fsm(terminal)]
    Cancelled,
}

fn domain_ok(s: order::SubmittedRef<'_>) -> Result<(), Refusal> {
    if s.domain.is_empty() {
        Err(Refusal::new("empty domain"))
    } else {
        Ok(())
    }
}

/// Short lower-case domains, so that guards both pass and fail.
fn domains() -> impl Strategy<Value = String> {
    "[a-c]{0,3}"
}

fn fuzz_domain(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let n = u.int_in_range(0..=3)?;
    (0..n)
        .map(|_| Ok(char::from(b'a' + u.int_in_range(0..=2)?)))
        .collect()
}

#[derive(Event, Debug, Clone)]
pub enum OrderCmd {
    Submit {
        #[fsm(strategy = domains, arbitrary = fuzz_domain)]
        domain: String,
    },
    Pay {
        cents: u64,
    },
    Confirm,
    Reject,
    Cancel,
}

impl Handler<order_cmd::Submit, order::Submitted> for order::Draft {
    fn handle(
        _: order::Draft,
        ev: order_cmd::Submit,
        fx: &mut Effects<String>,
    ) -> Result<order::Submitted, Refusal> {
        fx.push(format!("check {}", ev.domain));
        Ok(order::Submitted { domain: ev.domain })
    }
}

impl Handler<order_cmd::Cancel, order::Cancelled> for order::Draft {
    fn handle(
        _: order::Draft,
        _: order_cmd::Cancel,
        _: &mut Effects<String>,
    ) -> Result<order::Cancelled, Refusal> {
        Ok(order::Cancelled)
    }
}

impl Handler<order_cmd::Pay, order::Paid> for order::Submitted {
    fn handle(
        s: order::SubmittedRef<'_>,
        ev: order_cmd::Pay,
        fx: &mut Effects<String>,
    ) -> Result<order::Paid, Refusal> {
        fx.push("receipt".into());
        if ev.cents < 500 {
            return Err(Refusal::new("below the minimum of 500 cents"));
        }
        Ok(order::Paid {
            domain: s.domain.clone(),
            cents: ev.cents,
        })
    }
}

impl Handler<order_cmd::Cancel, order::Cancelled> for order::Submitted {
    fn handle(
        _: order::SubmittedRef<'_>,
        _: order_cmd::Cancel,
        _: &mut Effects<String>,
    ) -> Result<order::Cancelled, Refusal> {
        Ok(order::Cancelled)
    }
}

impl Handler<order_cmd::Confirm, order::Registered> for order::Paid {
    fn handle(
        s: order::PaidRef<'_>,
        _: order_cmd::Confirm,
        _: &mut Effects<String>,
    ) -> Result<order::Registered, Refusal> {
        Ok(order::Registered {
            domain: s.domain.clone(),
        })
    }
}

impl Handler<order_cmd::Reject, order::Submitted> for order::Paid {
    fn handle(
        s: order::PaidRef<'_>,
        _: order_cmd::Reject,
        _: &mut Effects<String>,
    ) -> Result<order::Submitted, Refusal> {
        Ok(order::Submitted {
            domain: s.domain.clone(),
        })
    }
}

#[test]
fn correct_machine_passes_every_property_and_covers_its_table() {
    let coverage = check_machine(Order::Draft);
    assert!(coverage.sequences >= 256, "{coverage}");
    assert!(coverage.missed().is_empty(), "{coverage}");
}

#[test]
fn check_sequence_reports_what_it_did() {
    let run = Checker::<Order>::new()
        .snapshots()
        .check_sequence(
            &Order::Draft,
            [
                OrderCmd::Pay { cents: 900 },
                OrderCmd::Submit { domain: "".into() },
                OrderCmd::Submit { domain: "a".into() },
                OrderCmd::Pay { cents: 1 },
                OrderCmd::Pay { cents: 900 },
                OrderCmd::Confirm,
                OrderCmd::Cancel,
            ],
        )
        .unwrap();
    assert_eq!((run.steps, run.accepted, run.rejected), (7, 3, 4));
    assert_eq!(run.transitions, [0, 2, 4]);
}

#[test]
fn start_state_failing_its_invariant_is_reported() {
    let v = Checker::<Order>::new()
        .check_sequence(&Order::Submitted { domain: "".into() }, [])
        .unwrap_err();
    assert_eq!(v.property, Property::InvariantsHold);
    assert!(v.detail.contains("empty domain"), "{v}");
}

#[test]
fn fuzz_bytes_decode_into_checked_sequences() {
    let checker = Checker::<Order>::new().snapshots();
    let mut rng = fastrand_bytes(0x5eed);
    let mut accepted = 0;
    for _ in 0..500 {
        let data = rng(64);
        let run = checker.fuzz(&Order::Draft, &data).unwrap();
        accepted += run.accepted;
        let run = checker.fuzz_any_start(&data).unwrap();
        accepted += run.accepted;
    }
    assert!(accepted > 100, "only {accepted} transitions taken");
}

/// Deterministic random bytes, `n` at a time.
fn fastrand_bytes(seed: u64) -> impl FnMut(usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    move |n| {
        let mut out = vec![0u8; n];
        rng.fill(&mut out);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// A handler that panics past a threshold: the failure is shrunk to one event with the
// smallest amount that panics.

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = TankCmd)]
pub enum Tank {
    #[fsm(initial, on(Fill => Filling), on(Drain => Empty))]
    Empty,
    #[fsm(on(Fill => Filling), on(Drain => Empty))]
    Filling { level: u32 },
}

#[derive(Event, Debug, Clone)]
pub enum TankCmd {
    Fill { litres: u8 },
    Drain,
}

/// The bug: a fill of more than the tank holds panics instead of being refused.
fn fill(level: u32, litres: u8) -> Result<tank::Filling, Refusal> {
    assert!(litres <= 100, "tank overflow: a fill of {litres} litres");
    Ok(tank::Filling {
        level: (level + u32::from(litres)).min(100),
    })
}

impl Handler<tank_cmd::Fill, tank::Filling> for tank::Empty {
    fn handle(
        _: tank::Empty,
        ev: tank_cmd::Fill,
        _: &mut Effects<()>,
    ) -> Result<tank::Filling, Refusal> {
        fill(0, ev.litres)
    }
}

impl Handler<tank_cmd::Fill, tank::Filling> for tank::Filling {
    fn handle(
        s: tank::FillingRef<'_>,
        ev: tank_cmd::Fill,
        _: &mut Effects<()>,
    ) -> Result<tank::Filling, Refusal> {
        fill(*s.level, ev.litres)
    }
}

impl Handler<tank_cmd::Drain, tank::Empty> for tank::Empty {
    fn handle(
        _: tank::Empty,
        _: tank_cmd::Drain,
        _: &mut Effects<()>,
    ) -> Result<tank::Empty, Refusal> {
        Ok(tank::Empty)
    }
}

impl Handler<tank_cmd::Drain, tank::Empty> for tank::Filling {
    fn handle(
        _: tank::FillingRef<'_>,
        _: tank_cmd::Drain,
        _: &mut Effects<()>,
    ) -> Result<tank::Empty, Refusal> {
        Ok(tank::Empty)
    }
}

#[test]
fn panicking_handler_is_shrunk_to_a_minimal_sequence() {
    let failure = Checker::<Tank>::new()
        .cases(512)
        .run(Tank::Empty)
        .unwrap_err();
    let Failure::Violated(v) = failure else {
        panic!("expected a violation, got {failure}");
    };
    assert_eq!(v.property, Property::NeverPanics);
    // The smallest sequence that overflows: one fill of 101 litres.
    assert_eq!(v.steps.len(), 1, "{v}");
    assert_eq!(v.steps[0].event, "Fill");
    assert_eq!(v.steps[0].event_value, "Fill { litres: 101 }", "{v}");
    assert_eq!(v.steps[0].from, "Empty");
    let text = v.to_string();
    assert!(
        text.contains("Tank broke `never panics` at step 1"),
        "{text}"
    );
    assert!(
        text.contains("tank overflow: a fill of 101 litres"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// A state whose serde form loses data: the snapshot round trip catches it.

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = CacheCmd)]
pub enum Cache {
    #[fsm(initial, on(Warm => Warm))]
    Cold,
    #[fsm(on(Warm => Warm))]
    Warm {
        #[serde(skip)]
        hits: u32,
    },
}

#[derive(Event, Debug, Clone)]
pub enum CacheCmd {
    Warm,
}

impl Handler<cache_cmd::Warm, cache::Warm> for cache::Cold {
    fn handle(
        _: cache::Cold,
        _: cache_cmd::Warm,
        _: &mut Effects<()>,
    ) -> Result<cache::Warm, Refusal> {
        Ok(cache::Warm { hits: 1 })
    }
}

impl Handler<cache_cmd::Warm, cache::Warm> for cache::Warm {
    fn handle(
        s: cache::WarmRef<'_>,
        _: cache_cmd::Warm,
        _: &mut Effects<()>,
    ) -> Result<cache::Warm, Refusal> {
        Ok(cache::Warm { hits: s.hits + 1 })
    }
}

#[test]
fn lossy_snapshot_breaks_the_round_trip() {
    let failure = Checker::<Cache>::new()
        .snapshots()
        .run(Cache::Cold)
        .unwrap_err();
    let Failure::Violated(v) = failure else {
        panic!("expected a violation, got {failure}");
    };
    assert_eq!(v.property, Property::SnapshotRoundTrips);
    assert_eq!(v.steps.len(), 1, "{v}");
    assert!(
        v.detail
            .contains("came back from its snapshot as Warm { hits: 0 }"),
        "{v}"
    );
    // Without the round trip the same machine passes.
    Checker::<Cache>::new().run(Cache::Cold).unwrap();
}

// ---------------------------------------------------------------------------------------------
// A hand-written machine with a hand-built table, broken in one chosen way per test, for the
// properties a derived machine cannot break (its dispatch is generated from the table).

const STATES: &[StateMeta] = &[
    StateMeta::new("A"),
    StateMeta::new("B"),
    StateMeta::new("C").terminal(),
    StateMeta::new("D"),
];
const EVENTS: &[&str] = &["Go", "Stop", "Poke"];
const TRANSITIONS: &[TransitionMeta] = &[
    TransitionMeta::new(0, 0, 1),
    TransitionMeta::new(1, 1, 2),
    TransitionMeta::new(3, 0, 1),
];
static TABLE: Table = Table::new("Hand", STATES, EVENTS, TRANSITIONS, 0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandEv {
    Go,
    Stop,
    Poke,
}

impl Event for HandEv {
    const NAMES: &'static [&'static str] = EVENTS;
    fn id(&self) -> EventId {
        EventId::new(*self as u16)
    }
}

impl<'a> Arbitrary<'a> for HandEv {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok([HandEv::Go, HandEv::Stop, HandEv::Poke][u.choose_index(3)?])
    }
}

impl proptest::arbitrary::Arbitrary for HandEv {
    type Parameters = ();
    type Strategy = proptest::strategy::BoxedStrategy<HandEv>;
    fn arbitrary_with((): ()) -> Self::Strategy {
        proptest::prop_oneof![
            proptest::strategy::Just(HandEv::Go),
            proptest::strategy::Just(HandEv::Stop),
            proptest::strategy::Just(HandEv::Poke),
        ]
        .boxed()
    }
}

/// Which bug the hand-written machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// `Poke` in A is rejected but bumps a counter.
    RejectionMutates,
    /// `Poke` in A moves to B.
    AcceptsUndeclared,
    /// `Go` in C (terminal) moves to A.
    TerminalAccepts,
    /// `Go` in A is rejected as having no transition.
    RejectsDeclared,
}

#[derive(Debug, Clone, PartialEq)]
struct Hand<const BUG: u8> {
    at: u16,
    /// Counts rejected pokes when the bug is on: a rejection that changes the machine (through
    /// a `Cell`, as `next` only sees `&self`).
    pokes: std::cell::Cell<u32>,
}

const fn bug(code: u8) -> Bug {
    match code {
        1 => Bug::RejectionMutates,
        2 => Bug::AcceptsUndeclared,
        3 => Bug::TerminalAccepts,
        4 => Bug::RejectsDeclared,
        _ => Bug::None,
    }
}

impl<const BUG: u8> StateMachine for Hand<BUG> {
    type Event = HandEv;
    type Effect = ();
    const TABLE: &'static Table = &TABLE;

    fn state(&self) -> StateId {
        StateId::new(self.at)
    }

    fn next(&self, event: HandEv, _: &mut Effects<()>) -> Result<(Self, Transition), Rejection> {
        let from = self.state();
        let go = |to: u16| {
            let next = Hand {
                at: to,
                pokes: self.pokes.clone(),
            };
            Ok((
                next,
                Transition::new(&TABLE, from, event.id(), StateId::new(to)),
            ))
        };
        let reject = |reason| {
            if bug(BUG) == Bug::RejectionMutates && event == HandEv::Poke {
                self.pokes.set(self.pokes.get() + 1);
            }
            Err(Rejection::new(&TABLE, from, event.id(), reason))
        };
        match (bug(BUG), self.at, event) {
            (Bug::AcceptsUndeclared, 0, HandEv::Poke) => go(1),
            (Bug::TerminalAccepts, 2, HandEv::Go) => go(0),
            (Bug::RejectsDeclared, 0, HandEv::Go) => reject(Reason::NoTransition),
            (_, 2, _) => reject(Reason::Terminal),
            (_, _, ev) => match TABLE.target(from, ev.id()) {
                Some(to) => go(to.index() as u16),
                None => reject(Reason::NoTransition),
            },
        }
    }

    fn validate(&self) -> Result<(), InvalidState> {
        Ok(())
    }
}

fn violated<const BUG: u8>() -> fsm_core::testing::Violation {
    match Checker::<Hand<BUG>>::new().cases(512).run(Hand {
        at: 0,
        pokes: Default::default(),
    }) {
        Err(Failure::Violated(v)) => v,
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn correct_hand_written_machine_passes() {
    let coverage = Checker::<Hand<0>>::new()
        .run(Hand {
            at: 0,
            pokes: Default::default(),
        })
        .unwrap();
    // D --Go--> B is declared but D is never entered from A.
    assert_eq!(coverage.missed(), ["D --Go--> B"]);
}

#[test]
fn rejection_that_changes_the_state_is_caught() {
    let v = violated::<1>();
    assert_eq!(v.property, Property::RejectionLeavesStateUnchanged);
    assert_eq!(v.steps.len(), 1, "{v}");
    assert_eq!(v.steps[0].event, "Poke");
    assert!(v.detail.contains("pokes: Cell { value: 1 }"), "{v}");
}

#[test]
fn accepting_an_undeclared_event_is_caught() {
    let v = violated::<2>();
    assert_eq!(v.property, Property::AcceptsExactlyTheTable);
    assert_eq!((v.steps.len(), v.steps[0].event), (1, "Poke"), "{v}");
    assert!(
        v.detail.contains("has no transition for this event here"),
        "{v}"
    );
}

#[test]
fn terminal_state_accepting_an_event_is_caught() {
    let v = violated::<3>();
    assert_eq!(v.property, Property::TerminalAcceptsNothing);
    let path: Vec<&str> = v.steps.iter().map(|s| s.event).collect();
    assert_eq!(path, ["Go", "Stop", "Go"], "{v}");
}

#[test]
fn rejecting_a_declared_event_as_undeclared_is_caught() {
    let v = violated::<4>();
    assert_eq!(v.property, Property::AcceptsExactlyTheTable);
    assert_eq!((v.steps.len(), v.steps[0].event), (1, "Go"), "{v}");
    assert!(v.detail.contains("the table leads to `B`"), "{v}");
}

#[test]
fn unreachable_state_is_caught() {
    let v = Checker::<Hand<0>>::new()
        .check_sequence(
            &Hand {
                at: 3,
                pokes: Default::default(),
            },
            [HandEv::Go],
        )
        .unwrap_err();
    assert_eq!(v.property, Property::VisitedStatesAreReachable);
    assert!(v.detail.contains("`D` is not reachable"), "{v}");
}

// ---------------------------------------------------------------------------------------------
// The derived strategies.

#[test]
fn derived_proptest_strategy_generates_every_variant_and_uses_field_strategies() {
    let mut runner = TestRunner::deterministic();
    let strategy = any::<OrderCmd>();
    let mut seen = BTreeSet::new();
    for _ in 0..500 {
        let cmd = strategy.new_tree(&mut runner).unwrap().current();
        if let OrderCmd::Submit { domain } = &cmd {
            assert!(
                domain.len() <= 3 && domain.chars().all(|c| ('a'..='c').contains(&c)),
                "{domain:?}"
            );
        }
        seen.insert(cmd.name());
    }
    assert_eq!(seen.len(), OrderCmd::NAMES.len(), "{seen:?}");
    let states: BTreeSet<&str> = (0..500)
        .map(|_| {
            any::<Order>()
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .state_name()
        })
        .collect();
    assert_eq!(states.len(), Order::TABLE.states().len(), "{states:?}");
}

#[test]
fn derived_arbitrary_impl_generates_every_variant_and_uses_field_generators() {
    let mut bytes = fastrand_bytes(7);
    let mut seen = BTreeSet::new();
    for _ in 0..500 {
        let data = bytes(32);
        let mut u = Unstructured::new(&data);
        let cmd = OrderCmd::arbitrary(&mut u).unwrap();
        if let OrderCmd::Submit { domain } = &cmd {
            assert!(
                domain.len() <= 3 && domain.chars().all(|c| ('a'..='c').contains(&c)),
                "{domain:?}"
            );
        }
        seen.insert(cmd.name());
    }
    assert_eq!(seen.len(), OrderCmd::NAMES.len(), "{seen:?}");
    // Empty input still yields a value (the first variant) rather than an error.
    assert!(OrderCmd::arbitrary(&mut Unstructured::new(&[])).is_ok());
}

/// Generic event enums get impls bounded on their field types.
#[derive(Event, Debug, Clone)]
pub enum Wrapped<T> {
    Put(T),
    Clear,
}

#[test]
fn generic_enums_get_bounded_strategies() {
    let mut runner = TestRunner::deterministic();
    let v = any::<Wrapped<u8>>()
        .new_tree(&mut runner)
        .unwrap()
        .current();
    assert!(matches!(v, Wrapped::Put(_) | Wrapped::Clear));
    let data = [1u8, 42];
    let w = Wrapped::<u8>::arbitrary(&mut Unstructured::new(&data)).unwrap();
    assert!(matches!(w, Wrapped::Put(_) | Wrapped::Clear));
}

// ---------------------------------------------------------------------------------------------
// Timers: sequences with "time passes" steps.

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = BeatEv)]
pub enum Heart {
    #[fsm(initial, on(Pulse => Sensing), on(Missed => Pacing), on(Snooze => Sensing), on(Wake => Sensing), state_timeout(ms = 1200 => Missed))]
    Sensing,
    #[fsm(on(Pulse => Sensing), on(Missed => Pacing), on(Snooze => Pacing), on(Wake => Pacing), state_timeout(ms = 800 => Missed))]
    Pacing,
}

#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BeatEv {
    Pulse,
    Missed,
    /// Arms a named timer that fires `Wake`.
    Snooze {
        ms: u16,
    },
    Wake,
}

impl Handler<beat_ev::Pulse, heart::Sensing> for heart::Sensing {
    fn handle(
        _: heart::Sensing,
        _: beat_ev::Pulse,
        fx: &mut Effects<()>,
    ) -> Result<heart::Sensing, Refusal> {
        fx.restart_state_timeout();
        Ok(heart::Sensing)
    }
}
impl Handler<beat_ev::Missed, heart::Pacing> for heart::Sensing {
    fn handle(
        _: heart::Sensing,
        _: beat_ev::Missed,
        _: &mut Effects<()>,
    ) -> Result<heart::Pacing, Refusal> {
        Ok(heart::Pacing)
    }
}
impl Handler<beat_ev::Pulse, heart::Sensing> for heart::Pacing {
    fn handle(
        _: heart::Pacing,
        _: beat_ev::Pulse,
        _: &mut Effects<()>,
    ) -> Result<heart::Sensing, Refusal> {
        Ok(heart::Sensing)
    }
}
impl Handler<beat_ev::Missed, heart::Pacing> for heart::Pacing {
    fn handle(
        _: heart::Pacing,
        _: beat_ev::Missed,
        fx: &mut Effects<()>,
    ) -> Result<heart::Pacing, Refusal> {
        fx.restart_state_timeout();
        Ok(heart::Pacing)
    }
}
macro_rules! snooze {
    ($($s:ident),*) => {$(
        impl Handler<beat_ev::Snooze, heart::$s> for heart::$s {
            fn handle(_: heart::$s, e: beat_ev::Snooze, fx: &mut Effects<()>) -> Result<heart::$s, Refusal> {
                fx.start_timer("snooze", std::time::Duration::from_millis(e.ms.into()), BeatEv::Wake);
                Ok(heart::$s)
            }
        }
        impl Handler<beat_ev::Wake, heart::$s> for heart::$s {
            fn handle(_: heart::$s, _: beat_ev::Wake, _: &mut Effects<()>) -> Result<heart::$s, Refusal> {
                Ok(heart::$s)
            }
        }
    )*};
}
snooze!(Sensing, Pacing);

#[test]
fn time_passing_fires_the_state_timeout_and_named_timers_in_order() {
    use fsm_core::testing::Input;
    use std::time::Duration;
    let ms = |n| Input::Elapse(Duration::from_millis(n));
    let run = Checker::<Heart>::new()
        .snapshots()
        .check_timed(
            &Heart::Sensing,
            [
                ms(1000),                                 // nothing due yet (1200)
                Input::Event(BeatEv::Pulse),              // restarts: due at 2200
                Input::Event(BeatEv::Snooze { ms: 500 }), // Wake at 1500
                ms(1500),                                 // to 2500: Wake at 1500, Missed at 2200
            ],
        )
        .unwrap();
    // Missed took the machine to Pacing, whose own timeout (due at 3000) is beyond 2500.
    assert_eq!(run.fired, 2);
    assert_eq!(run.steps, 4);
}

#[test]
fn a_timed_machine_holds_every_property_under_random_time() {
    let coverage = Checker::<Heart>::new()
        .snapshots()
        .run_timed(Heart::Sensing)
        .unwrap();
    // The timeout transitions are taken only when time passes.
    assert!(coverage.missed().is_empty(), "{coverage}");
    fsm_core::testing::check_timed_machine(Heart::Pacing);
}

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = PokeEv)]
pub enum Poked {
    #[fsm(initial, on(Poke => Idle))]
    Idle,
}

#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PokeEv {
    Poke { n: u8 },
}

impl Handler<poke_ev::Poke, poked::Idle> for poked::Idle {
    fn handle(
        _: poked::Idle,
        e: poke_ev::Poke,
        fx: &mut Effects<()>,
    ) -> Result<poked::Idle, Refusal> {
        if e.n > 200 {
            // A bug: a number, not the machine's event.
            fx.start_timer("x", std::time::Duration::from_millis(10), e.n);
        }
        Ok(poked::Idle)
    }
}

#[test]
fn a_timer_request_that_cannot_be_honoured_is_caught_and_shrunk() {
    let failure = Checker::<Poked>::new().run_timed(Poked::Idle).unwrap_err();
    let Failure::Violated(v) = failure else {
        panic!("{failure}");
    };
    assert_eq!(v.property, Property::TimerRequestsHold, "{v}");
    assert!(v.detail.contains("u8"), "{v}");
    assert_eq!(v.steps.len(), 1, "shrunk to the one poke: {v}");
    assert_eq!(v.steps[0].event_value, "Poke { n: 201 }", "{v}");
}

/// A vault whose every transition needs the code 7331: random codes almost never pass.
#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = VaultCmd)]
pub enum Vault {
    #[fsm(initial, on(Unlock => Open))]
    Locked,
    #[fsm(on(Lock => Locked))]
    Open,
}

#[derive(Event, Debug, Clone, PartialEq)]
pub enum VaultCmd {
    Unlock { code: u32 },
    Lock { code: u32 },
}

fn secret(code: u32) -> Result<(), Refusal> {
    if code == 7331 {
        Ok(())
    } else {
        Err(Refusal::new("wrong code"))
    }
}

impl Handler<vault_cmd::Unlock, vault::Open> for vault::Locked {
    fn handle(
        _: vault::Locked,
        e: vault_cmd::Unlock,
        _: &mut Effects<()>,
    ) -> Result<vault::Open, Refusal> {
        secret(e.code).map(|()| vault::Open)
    }
}

impl Handler<vault_cmd::Lock, vault::Locked> for vault::Open {
    fn handle(
        _: vault::Open,
        e: vault_cmd::Lock,
        _: &mut Effects<()>,
    ) -> Result<vault::Locked, Refusal> {
        secret(e.code).map(|()| vault::Locked)
    }
}

#[test]
fn a_run_that_took_no_transition_fails_and_names_what_it_never_took() {
    let failure = Checker::<Vault>::new()
        .cases(64)
        .run(Vault::Locked)
        .unwrap_err();
    let Failure::Uncovered { coverage, required } = &failure else {
        panic!("expected too little coverage, got {failure}");
    };
    assert_eq!((coverage.covered(), *required), (0, 0.5));
    assert!(coverage.steps > 0, "events were applied, all refused");
    let shown = failure.to_string();
    assert!(shown.contains("took 0 of 2 transitions"), "{shown}");
    assert!(shown.contains("Locked --Unlock--> Open"), "{shown}");
    assert!(shown.contains("#[fsm(strategy = ..)]"), "{shown}");
    // Even at no required share, a run that took nothing fails: it tested nothing.
    let none = Checker::<Vault>::new()
        .cases(64)
        .min_coverage(0.0)
        .run(Vault::Locked);
    assert!(matches!(none, Err(Failure::Uncovered { .. })));
    // And check_machine, the one-line form, panics with the same list.
    let panicked = std::panic::catch_unwind(|| check_machine(Vault::Locked)).unwrap_err();
    let message = panicked
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("never taken"), "{message}");
}

/// The vault with a knock anyone can make: one transition of three is reachable at random.
#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = DialCmd)]
pub enum Dial {
    #[fsm(initial, on(Knock => Locked, plain), on(Unlock => Open))]
    Locked,
    #[fsm(on(Lock => Locked))]
    Open,
}

#[derive(Event, Debug, Clone, PartialEq)]
pub enum DialCmd {
    Knock,
    Unlock { code: u32 },
    Lock { code: u32 },
}

impl Handler<dial_cmd::Unlock, dial::Open> for dial::Locked {
    fn handle(
        _: dial::Locked,
        e: dial_cmd::Unlock,
        _: &mut Effects<()>,
    ) -> Result<dial::Open, Refusal> {
        secret(e.code).map(|()| dial::Open)
    }
}

impl Handler<dial_cmd::Lock, dial::Locked> for dial::Open {
    fn handle(
        _: dial::Open,
        e: dial_cmd::Lock,
        _: &mut Effects<()>,
    ) -> Result<dial::Locked, Refusal> {
        secret(e.code).map(|()| dial::Locked)
    }
}

#[test]
fn a_run_short_of_the_required_share_fails_and_a_lower_share_passes_it() {
    let short = Checker::<Dial>::new()
        .cases(64)
        .run(Dial::Locked)
        .unwrap_err();
    let Failure::Uncovered { coverage, .. } = &short else {
        panic!("expected too little coverage, got {short}");
    };
    assert_eq!(coverage.covered(), 1, "{coverage}");
    assert_eq!(coverage.missed().len(), 2, "{coverage}");
    // A table whose guarded transitions are out of reach on purpose says so.
    let lowered = Checker::<Dial>::new()
        .cases(64)
        .min_coverage(0.3)
        .run(Dial::Locked)
        .unwrap();
    assert_eq!(lowered.covered(), 1);
    // The order machine's strategies reach every transition: it passes any share.
    let full = Checker::<Order>::new()
        .min_coverage(1.0)
        .run(Order::Draft)
        .unwrap();
    assert_eq!(full.covered(), full.taken.len());
    assert!(full.is_enough(1.0) && full.missed().is_empty());
}
