//! The derive's own `apply_into` takes direct transitions (plain, no hook around them, a target
//! without an invariant) in place and hands everything else to the default body. Whatever
//! route an event takes, the outcome must be the one `apply` gives: the same transition or
//! rejection, the same machine afterwards, the same effects and timer requests, and on a
//! rejection a machine and buffer exactly as before. Checked on every (state, event) pair of a
//! machine that mixes every kind of transition, from a buffer that already holds work.
#![allow(missing_docs)]

use std::time::Duration;

use fsm_core::{Effects, Event, Handler, Reason, Refusal, StateMachine};

#[derive(StateMachine, Debug, Clone, PartialEq, Eq)]
#[fsm(event = Op, effect = String)]
pub enum Cell {
    /// Direct (`Go`), plain into a state with an enter hook (`Hop`), a handler with a payload
    /// (`Load`).
    #[fsm(initial, on(Go => Armed, plain), on(Hop => Lit, plain), on(Load => Holding))]
    Idle,
    /// Direct (`Back`, `Stop` into a terminal state), a handler that raises (`Kick`), a plain
    /// self-transition (direct: no hook runs on it).
    #[fsm(
        on(Back => Idle, plain), on(Stop => Halted, plain), on(Kick => Armed),
        on(Go => Armed, plain)
    )]
    Armed,
    /// An enter hook; direct (`Go`), plain into a state with an invariant (`Check`).
    #[fsm(on(Go => Idle, plain), on(Check => Audited, plain), enter = light_up)]
    Lit,
    /// A state with data: direct out of it (`Go`), a handler that starts a timer (`Load`).
    #[fsm(on(Go => Idle, plain), on(Load => Holding))]
    Holding { n: u8 },
    /// An invariant that refuses: a plain transition into it is never direct.
    #[fsm(on(Go => Idle, plain), validate = never_audited)]
    Audited,
    #[fsm(terminal)]
    Halted,
}

#[derive(Event, Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Go,
    Hop,
    Back,
    Stop,
    Kick,
    Check,
    Load { n: u8 },
}

fn light_up(_: cell::Lit, fx: &mut Effects<String>) {
    fx.push("light".into());
}

fn never_audited(_: cell::Audited) -> Result<(), Refusal> {
    Err(Refusal::new("audits never pass"))
}

impl Handler<op::Load, cell::Holding> for cell::Idle {
    fn handle(
        _: cell::Idle,
        e: op::Load,
        fx: &mut Effects<String>,
    ) -> Result<cell::Holding, Refusal> {
        if e.n == 0 {
            return Err(Refusal::new("nothing to hold"));
        }
        fx.push(format!("hold {}", e.n));
        Ok(cell::Holding { n: e.n })
    }
}

impl Handler<op::Load, cell::Holding> for cell::Holding {
    fn handle(
        s: cell::HoldingRef<'_>,
        e: op::Load,
        fx: &mut Effects<String>,
    ) -> Result<cell::Holding, Refusal> {
        fx.start_timer("drain", Duration::from_secs(1), Op::Go);
        Ok(cell::Holding {
            n: s.n.saturating_add(e.n),
        })
    }
}

impl Handler<op::Kick, cell::Armed> for cell::Armed {
    fn handle(
        _: cell::Armed,
        _: op::Kick,
        fx: &mut Effects<String>,
    ) -> Result<cell::Armed, Refusal> {
        fx.push("kick".into());
        // Raised: applied right after, through the default body's settle loop.
        fx.raise(Op::Back);
        Ok(cell::Armed)
    }
}

fn states() -> Vec<Cell> {
    vec![
        Cell::Idle,
        Cell::Armed,
        Cell::Lit,
        Cell::Holding { n: 3 },
        Cell::Holding { n: 255 },
        Cell::Audited,
        Cell::Halted,
    ]
}

fn events() -> Vec<Op> {
    vec![
        Op::Go,
        Op::Hop,
        Op::Back,
        Op::Stop,
        Op::Kick,
        Op::Check,
        Op::Load { n: 0 },
        Op::Load { n: 7 },
    ]
}

/// A buffer that already holds an effect and a timer request, as the kernel's reused one may.
fn busy_buffer() -> Effects<String> {
    let mut fx = Effects::new();
    fx.push("earlier".into());
    fx.start_timer("earlier", Duration::from_secs(5), Op::Go);
    fx
}

/// Applies every event to every state both ways and compares; returns (transitions without
/// effects, rejections).
fn agree<M>(states: Vec<M>, events: Vec<M::Event>) -> (usize, usize)
where
    M: StateMachine<Effect = String> + Clone + PartialEq + std::fmt::Debug,
    M::Event: Clone + std::fmt::Debug,
{
    let mut direct = 0;
    let mut rejected = 0;
    for state in states {
        for event in events.clone() {
            let what = format!("{state:?} + {event:?}");
            let mut by_apply = state.clone();
            let applied = by_apply.apply(event.clone());
            let mut by_into = state.clone();
            let mut fx = busy_buffer();
            let into = by_into.apply_into(event.clone(), &mut fx);
            assert_eq!(by_into, by_apply, "machine after {what}");
            match (&applied, &into) {
                (Ok(a), Ok(t)) => {
                    assert_eq!(a.transition, *t, "transition of {what}");
                    let mut expected = vec!["earlier".to_owned()];
                    expected.extend(a.effects.iter().cloned());
                    assert_eq!(fx.as_slice(), expected.as_slice(), "effects of {what}");
                    assert_eq!(
                        fx.timers().len(),
                        1 + a.effects.timers().len(),
                        "timer requests of {what}"
                    );
                    if a.effects.is_empty() && a.raised.is_empty() && a.effects.timers().is_empty()
                    {
                        direct += 1;
                    }
                }
                (Err(a), Err(r)) => {
                    assert_eq!(a, r, "rejection of {what}");
                    assert_eq!(by_into, state, "a rejection leaves {state:?} as it was");
                    assert_eq!(
                        fx.as_slice(),
                        ["earlier".to_owned()],
                        "effects after {what}"
                    );
                    assert_eq!(fx.timers().len(), 1, "timer requests after {what}");
                    assert!(fx.raised().is_empty(), "raised events after {what}");
                    rejected += 1;
                }
                _ => panic!("{what}: apply gave {applied:?}, apply_into gave {into:?}"),
            }
        }
    }
    (direct, rejected)
}

#[test]
fn apply_into_agrees_with_apply_on_every_state_and_event() {
    let (direct, rejected) = agree(states(), events());
    // The pairs exercise both routes: the direct arms and the fall-through.
    assert!(direct >= 6, "only {direct} transitions without effects");
    assert!(rejected >= 20, "only {rejected} rejections");
}

/// Eight unit states whose transitions are all direct: the derive dispatches them from one
/// constant word per event (a byte per state) with no branch on the state or the event. A
/// terminal state, a self-transition, an event with a payload, and from every state events it
/// does not take.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq)]
#[fsm(event = Sig, effect = String)]
pub enum Octet {
    #[fsm(initial, on(Next => B, plain), on(Jump => H, plain))]
    A,
    #[fsm(on(Next => C, plain), on(Back => A, plain))]
    B,
    #[fsm(on(Next => D, plain), on(Back => B, plain), on(Stay => C, plain))]
    C,
    #[fsm(on(Next => E, plain), on(Back => C, plain))]
    D,
    #[fsm(on(Next => F, plain), on(Back => D, plain))]
    E,
    #[fsm(on(Next => G, plain), on(Back => E, plain), on(Data => A, plain))]
    F,
    #[fsm(on(Next => H, plain), on(Back => F, plain))]
    G,
    #[fsm(terminal)]
    H,
}

#[derive(Event, Debug, Clone, PartialEq, Eq)]
pub enum Sig {
    Next,
    Back,
    Stay,
    Jump,
    Data { n: u32 },
}

#[test]
fn a_machine_dispatched_from_its_packed_table_agrees_with_apply_everywhere() {
    use Octet::*;
    let states = vec![A, B, C, D, E, F, G, H];
    let events = vec![
        Sig::Next,
        Sig::Back,
        Sig::Stay,
        Sig::Jump,
        Sig::Data { n: 0 },
        Sig::Data { n: u32::MAX },
    ];
    let (accepted, rejected) = agree(states, events);
    // 8 states x 6 events: 17 transitions (Data twice from F), the rest rejected.
    assert_eq!((accepted, rejected), (17, 31));
    // A walk to the last state and the terminal rejection there.
    let mut m = A;
    let mut fx = Effects::new();
    for _ in 0..7 {
        m.apply_into(Sig::Next, &mut fx).unwrap();
    }
    assert_eq!(m, H);
    let r = m.apply_into(Sig::Back, &mut fx).unwrap_err();
    assert_eq!(r.reason(), &Reason::Terminal);
    assert_eq!(m, H);
    assert!(fx.is_empty());
}

#[test]
fn a_direct_transition_writes_its_target_in_place() {
    let mut c = Cell::Idle;
    let mut fx = busy_buffer();
    let t = c.apply_into(Op::Go, &mut fx).unwrap();
    assert_eq!(c, Cell::Armed);
    assert_eq!(
        (t.from(), t.event(), t.to()),
        (Cell::Idle.state(), Op::Go.id(), Cell::Armed.state())
    );
    let t = c.apply_into(Op::Stop, &mut fx).unwrap();
    assert_eq!(c, Cell::Halted);
    assert_eq!(t.to(), Cell::Halted.state());
    assert_eq!(fx.len(), 1, "a direct transition emits nothing");
}

#[test]
fn rejections_keep_their_reason_on_the_direct_route() {
    let mut fx = busy_buffer();
    let mut c = Cell::Armed;
    let r = c.apply_into(Op::Hop, &mut fx).unwrap_err();
    assert_eq!(r.reason(), &Reason::NoTransition);
    assert_eq!(c, Cell::Armed);
    let mut h = Cell::Halted;
    let r = h.apply_into(Op::Go, &mut fx).unwrap_err();
    assert_eq!(r.reason(), &Reason::Terminal);
    // Plain into a state whose invariant refuses: not direct, rejected by the invariant.
    let mut l = Cell::Lit;
    let r = l.apply_into(Op::Check, &mut fx).unwrap_err();
    assert!(
        matches!(r.reason(), Reason::Invalid { target, .. } if *target == Cell::Audited.state()),
        "got {:?}",
        r.reason()
    );
    assert_eq!(l, Cell::Lit);
    assert_eq!(fx.len(), 1);
}
