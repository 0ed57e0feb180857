//! One plain machine written seven ways: with this crate's derive, by hand (a nested `match`),
//! and with statig, rust-fsm, smlang, sm and finny. Six unit states, seven events, eleven
//! transitions, no data:
//!
//! ```text
//! Idle     --Start-->  Starting      Starting --Ready--> Running    Starting --Stop--> Stopping
//! Running  --Pause-->  Paused        Running  --Stop-->  Stopping   Running  --Finish--> Done
//! Paused   --Resume--> Running       Paused   --Stop-->  Stopping   Paused   --Reset--> Idle
//! Stopping --Finish--> Done          Done     --Reset--> Idle
//! ```
//!
//! The hand-written match and the derive run twice: on the enums in the order above, and on
//! the same enums declared in name order ([`sorted`]), the numbering smlang gives every
//! machine.
//!
//! Every implementation runs a stream of events (each library's own event type, converted
//! before timing) and returns a fingerprint of the states it went through (each loop does
//! the same: apply the event, drop whatever the library returns, fold the state in); the streams are
//! built from [`Ev`] with a fixed seed, and [`check_all`] compares every implementation with
//! the hand-written one on every (state, event) pair and on each stream.
//!
//! Included by `benches/peers.rs` and `examples/peers_icount.rs` (the peers are
//! dev-dependencies, which the library cannot use).

#![allow(dead_code, unreachable_pub, missing_docs)]

/// The states, in one order every implementation maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum St {
    Idle,
    Starting,
    Running,
    Paused,
    Stopping,
    Done,
}

/// The events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Ev {
    Start,
    Ready,
    Pause,
    Resume,
    Stop,
    Finish,
    Reset,
}

pub const STATES: [St; 6] = [
    St::Idle,
    St::Starting,
    St::Running,
    St::Paused,
    St::Stopping,
    St::Done,
];
pub const EVENTS: [Ev; 7] = [
    Ev::Start,
    Ev::Ready,
    Ev::Pause,
    Ev::Resume,
    Ev::Stop,
    Ev::Finish,
    Ev::Reset,
];

/// Folds a state into the running fingerprint of a stream.
#[inline(always)]
fn mix(h: u64, s: u8) -> u64 {
    (h ^ u64::from(s)).wrapping_mul(0x0100_0000_01b3)
}

const SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// In a module with a derived six-state `Phase` (states named as [`St`]'s) and its `Cmd`:
/// `st`, the state as [`St`], and `run`, the derive's loop over a stream (`apply_into` with a
/// reused buffer, the state folded into the fingerprint).
macro_rules! phase_loop {
    () => {
        fn st(p: Phase) -> super::St {
            use super::St;
            match p {
                Phase::Idle => St::Idle,
                Phase::Starting => St::Starting,
                Phase::Running => St::Running,
                Phase::Paused => St::Paused,
                Phase::Stopping => St::Stopping,
                Phase::Done => St::Done,
            }
        }

        #[inline(never)]
        pub fn run(events: &[Cmd]) -> u64 {
            use fsm_core::StateMachine;
            let mut m = Phase::Idle;
            let mut fx = fsm_core::Effects::new();
            let mut h = super::SEED;
            for &e in events {
                let _ = m.apply_into(e, &mut fx);
                h = super::mix(h, st(m) as u8);
            }
            h
        }
    };
}

/// The same events on a machine with superstates (three levels), four ways.
#[path = "hierarchy.rs"]
pub mod hierarchy;

// ---------------------------------------------------------------- by hand

/// The hand-written machine: a nested `match`.
#[inline(always)]
pub fn hand_next(s: St, e: Ev) -> Option<St> {
    use Ev::*;
    use St::*;
    match s {
        Idle => match e {
            Start => Some(Starting),
            _ => None,
        },
        Starting => match e {
            Ready => Some(Running),
            Stop => Some(Stopping),
            _ => None,
        },
        Running => match e {
            Pause => Some(Paused),
            Stop => Some(Stopping),
            Finish => Some(Done),
            _ => None,
        },
        Paused => match e {
            Resume => Some(Running),
            Stop => Some(Stopping),
            Reset => Some(Idle),
            _ => None,
        },
        Stopping => match e {
            Finish => Some(Done),
            _ => None,
        },
        Done => match e {
            Reset => Some(Idle),
            _ => None,
        },
    }
}

#[inline(never)]
pub fn run_hand(events: &[Ev]) -> u64 {
    let mut s = St::Idle;
    let mut h = SEED;
    for &e in events {
        if let Some(next) = hand_next(s, e) {
            s = next;
        }
        h = mix(h, s as u8);
    }
    h
}

// ---------------------------------------------------------------- the derive

pub mod derived {
    use fsm_core::{Event, StateMachine};

    #[derive(StateMachine, Debug, Clone, Copy, PartialEq, Eq)]
    #[fsm(event = Cmd)]
    pub enum Phase {
        #[fsm(initial, on(Start => Starting, plain))]
        Idle,
        #[fsm(on(Ready => Running, plain), on(Stop => Stopping, plain))]
        Starting,
        #[fsm(on(Pause => Paused, plain), on(Stop => Stopping, plain), on(Finish => Done, plain))]
        Running,
        #[fsm(on(Resume => Running, plain), on(Stop => Stopping, plain), on(Reset => Idle, plain))]
        Paused,
        #[fsm(on(Finish => Done, plain))]
        Stopping,
        #[fsm(on(Reset => Idle, plain))]
        Done,
    }

    #[derive(Event, Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Cmd {
        Start,
        Ready,
        Pause,
        Resume,
        Stop,
        Finish,
        Reset,
    }

    phase_loop!();
}

pub fn to_derived(e: Ev) -> derived::Cmd {
    use derived::Cmd;
    match e {
        Ev::Start => Cmd::Start,
        Ev::Ready => Cmd::Ready,
        Ev::Pause => Cmd::Pause,
        Ev::Resume => Cmd::Resume,
        Ev::Stop => Cmd::Stop,
        Ev::Finish => Cmd::Finish,
        Ev::Reset => Cmd::Reset,
    }
}

/// The derive's runtime dispatch, as a user calls it: `apply_into` with a reused buffer.
pub fn run_derived(events: &[derived::Cmd]) -> u64 {
    derived::run(events)
}

// ---------------------------------------------------------------- the same, with handlers

/// The derived machine with a trivial `Handler` for each transition instead of `plain`: what
/// the README's recommendation (`plain` where the handler would only name the target) is
/// measured against.
pub mod handlers {
    use fsm_core::{Effects, Handler, Refusal, StateMachine};

    pub use super::derived::Cmd;

    #[derive(StateMachine, Debug, Clone, Copy, PartialEq, Eq)]
    #[fsm(event = Cmd)]
    pub enum Phase {
        #[fsm(initial, on(Start => Starting))]
        Idle,
        #[fsm(on(Ready => Running), on(Stop => Stopping))]
        Starting,
        #[fsm(on(Pause => Paused), on(Stop => Stopping), on(Finish => Done))]
        Running,
        #[fsm(on(Resume => Running), on(Stop => Stopping), on(Reset => Idle))]
        Paused,
        #[fsm(on(Finish => Done))]
        Stopping,
        #[fsm(on(Reset => Idle))]
        Done,
    }

    macro_rules! trivial {
        ($($from:ident --$event:ident--> $to:ident),* $(,)?) => {$(
            impl Handler<super::derived::cmd::$event, phase::$to> for phase::$from {
                fn handle(
                    _: phase::$from,
                    _: super::derived::cmd::$event,
                    _: &mut Effects<()>,
                ) -> Result<phase::$to, Refusal> {
                    Ok(phase::$to)
                }
            }
        )*};
    }

    trivial! {
        Idle --Start--> Starting,
        Starting --Ready--> Running,
        Starting --Stop--> Stopping,
        Running --Pause--> Paused,
        Running --Stop--> Stopping,
        Running --Finish--> Done,
        Paused --Resume--> Running,
        Paused --Stop--> Stopping,
        Paused --Reset--> Idle,
        Stopping --Finish--> Done,
        Done --Reset--> Idle,
    }

    phase_loop!();
}

// ---------------------------------------------------------------- the same, names sorted

/// The same machine with its states and events declared in name order (Done, Idle, Paused,
/// Running, Starting, Stopping; Finish, Pause, Ready, Reset, Resume, Start, Stop): the
/// discriminants smlang gives every machine, since it sorts the names. The numbering decides
/// which shape LLVM picks for a `match` over the two enums, so the like-for-like comparison
/// with smlang is on these; the hand-written match is here too, over the same numbering.
pub mod sorted {
    use fsm_core::{Effects, Event, StateMachine};

    #[derive(StateMachine, Debug, Clone, Copy, PartialEq, Eq)]
    #[fsm(event = Cmd)]
    pub enum Phase {
        #[fsm(on(Reset => Idle, plain))]
        Done,
        #[fsm(initial, on(Start => Starting, plain))]
        Idle,
        #[fsm(on(Resume => Running, plain), on(Stop => Stopping, plain), on(Reset => Idle, plain))]
        Paused,
        #[fsm(on(Pause => Paused, plain), on(Stop => Stopping, plain), on(Finish => Done, plain))]
        Running,
        #[fsm(on(Ready => Running, plain), on(Stop => Stopping, plain))]
        Starting,
        #[fsm(on(Finish => Done, plain))]
        Stopping,
    }

    #[derive(Event, Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Cmd {
        Finish,
        Pause,
        Ready,
        Reset,
        Resume,
        Start,
        Stop,
    }

    pub fn cmd(e: super::Ev) -> Cmd {
        use super::Ev;
        match e {
            Ev::Start => Cmd::Start,
            Ev::Ready => Cmd::Ready,
            Ev::Pause => Cmd::Pause,
            Ev::Resume => Cmd::Resume,
            Ev::Stop => Cmd::Stop,
            Ev::Finish => Cmd::Finish,
            Ev::Reset => Cmd::Reset,
        }
    }

    fn st(p: Phase) -> super::St {
        use super::St;
        match p {
            Phase::Idle => St::Idle,
            Phase::Starting => St::Starting,
            Phase::Running => St::Running,
            Phase::Paused => St::Paused,
            Phase::Stopping => St::Stopping,
            Phase::Done => St::Done,
        }
    }

    /// The hand-written nested `match` over the sorted enums (the derive's own enums: no
    /// library code runs).
    #[inline(always)]
    fn hand_next(s: Phase, e: Cmd) -> Option<Phase> {
        use Cmd::*;
        use Phase::*;
        match s {
            Done => match e {
                Reset => Some(Idle),
                _ => None,
            },
            Idle => match e {
                Start => Some(Starting),
                _ => None,
            },
            Paused => match e {
                Resume => Some(Running),
                Stop => Some(Stopping),
                Reset => Some(Idle),
                _ => None,
            },
            Running => match e {
                Pause => Some(Paused),
                Stop => Some(Stopping),
                Finish => Some(Done),
                _ => None,
            },
            Starting => match e {
                Ready => Some(Running),
                Stop => Some(Stopping),
                _ => None,
            },
            Stopping => match e {
                Finish => Some(Done),
                _ => None,
            },
        }
    }

    #[inline(never)]
    pub fn run_hand(events: &[Cmd]) -> u64 {
        let mut s = Phase::Idle;
        let mut h = super::SEED;
        for &e in events {
            if let Some(next) = hand_next(s, e) {
                s = next;
            }
            h = super::mix(h, st(s) as u8);
        }
        h
    }

    #[inline(never)]
    pub fn run_derived(events: &[Cmd]) -> u64 {
        let mut m = Phase::Idle;
        let mut fx = Effects::new();
        let mut h = super::SEED;
        for &e in events {
            let _ = m.apply_into(e, &mut fx);
            h = super::mix(h, st(m) as u8);
        }
        h
    }
}

// ---------------------------------------------------------------- rust-fsm

pub mod rustfsm {
    use rust_fsm::*;

    state_machine! {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub phase(Idle)

        Idle(Start) => Starting,
        Starting => {
            Ready => Running,
            Stop => Stopping,
        },
        Running => {
            Pause => Paused,
            Stop => Stopping,
            Finish => Done,
        },
        Paused => {
            Resume => Running,
            Stop => Stopping,
            Reset => Idle,
        },
        Stopping(Finish) => Done,
        Done(Reset) => Idle,
    }
}

pub fn to_rustfsm(e: Ev) -> rustfsm::phase::Input {
    use rustfsm::phase::Input;
    match e {
        Ev::Start => Input::Start,
        Ev::Ready => Input::Ready,
        Ev::Pause => Input::Pause,
        Ev::Resume => Input::Resume,
        Ev::Stop => Input::Stop,
        Ev::Finish => Input::Finish,
        Ev::Reset => Input::Reset,
    }
}

fn rustfsm_state(s: &rustfsm::phase::State) -> St {
    use rustfsm::phase::State;
    match s {
        State::Idle => St::Idle,
        State::Starting => St::Starting,
        State::Running => St::Running,
        State::Paused => St::Paused,
        State::Stopping => St::Stopping,
        State::Done => St::Done,
    }
}

#[inline(never)]
pub fn run_rustfsm(events: &[rustfsm::phase::Input]) -> u64 {
    let mut m = rustfsm::phase::StateMachine::new();
    let mut h = SEED;
    for e in events {
        let _ = m.consume(e);
        h = mix(h, rustfsm_state(m.state()) as u8);
    }
    h
}

// ---------------------------------------------------------------- smlang

pub mod smlang_impl {
    use smlang::statemachine;

    statemachine! {
        derive_states: [Debug, Clone, Copy],
        derive_events: [Debug, Clone, Copy],
        transitions: {
            *Idle + Start = Starting,
            Starting + Ready = Running,
            Starting + Stop = Stopping,
            Running + Pause = Paused,
            Running + Stop = Stopping,
            Running + Finish = Done,
            Paused + Resume = Running,
            Paused + Stop = Stopping,
            Paused + Reset = Idle,
            Stopping + Finish = Done,
            Done + Reset = Idle,
        },
    }

    pub struct Context;

    impl StateMachineContext for Context {}
}

pub fn to_smlang(e: Ev) -> smlang_impl::Events {
    use smlang_impl::Events;
    match e {
        Ev::Start => Events::Start,
        Ev::Ready => Events::Ready,
        Ev::Pause => Events::Pause,
        Ev::Resume => Events::Resume,
        Ev::Stop => Events::Stop,
        Ev::Finish => Events::Finish,
        Ev::Reset => Events::Reset,
    }
}

fn smlang_state(s: &smlang_impl::States) -> St {
    use smlang_impl::States;
    match s {
        States::Idle => St::Idle,
        States::Starting => St::Starting,
        States::Running => St::Running,
        States::Paused => St::Paused,
        States::Stopping => St::Stopping,
        States::Done => St::Done,
    }
}

#[inline(never)]
pub fn run_smlang(events: &[smlang_impl::Events]) -> u64 {
    let mut m = smlang_impl::StateMachine::new(smlang_impl::Context);
    let mut h = SEED;
    for &e in events {
        let _ = m.process_event(e);
        h = mix(h, smlang_state(m.state()) as u8);
    }
    h
}

// ---------------------------------------------------------------- statig

pub mod statig_impl {
    use statig::prelude::*;

    use super::Ev;

    #[derive(Default)]
    pub struct Phase;

    #[state_machine(
        initial = "State::idle()",
        state(derive(Debug, Clone, Copy, PartialEq, Eq))
    )]
    impl Phase {
        #[state]
        fn idle(event: &Ev) -> Outcome<State> {
            match event {
                Ev::Start => Transition(State::starting()),
                _ => Super,
            }
        }

        #[state]
        fn starting(event: &Ev) -> Outcome<State> {
            match event {
                Ev::Ready => Transition(State::running()),
                Ev::Stop => Transition(State::stopping()),
                _ => Super,
            }
        }

        #[state]
        fn running(event: &Ev) -> Outcome<State> {
            match event {
                Ev::Pause => Transition(State::paused()),
                Ev::Stop => Transition(State::stopping()),
                Ev::Finish => Transition(State::done()),
                _ => Super,
            }
        }

        #[state]
        fn paused(event: &Ev) -> Outcome<State> {
            match event {
                Ev::Resume => Transition(State::running()),
                Ev::Stop => Transition(State::stopping()),
                Ev::Reset => Transition(State::idle()),
                _ => Super,
            }
        }

        #[state]
        fn stopping(event: &Ev) -> Outcome<State> {
            match event {
                Ev::Finish => Transition(State::done()),
                _ => Super,
            }
        }

        #[state]
        fn done(event: &Ev) -> Outcome<State> {
            match event {
                Ev::Reset => Transition(State::idle()),
                _ => Super,
            }
        }
    }

    pub fn state_of(s: &State) -> super::St {
        use super::St;
        match s {
            State::Idle {} => St::Idle,
            State::Starting {} => St::Starting,
            State::Running {} => St::Running,
            State::Paused {} => St::Paused,
            State::Stopping {} => St::Stopping,
            State::Done {} => St::Done,
        }
    }

    #[inline(never)]
    pub fn run(events: &[Ev]) -> u64 {
        let mut m = Phase.state_machine();
        let mut h = super::SEED;
        for e in events {
            m.handle(e);
            h = super::mix(h, state_of(m.state()) as u8);
        }
        h
    }
}

// ---------------------------------------------------------------- sm

pub mod sm_impl {
    use sm::sm;

    sm! {
        Phase {
            InitialStates { Idle }

            Start { Idle => Starting }
            Ready { Starting => Running }
            Pause { Running => Paused }
            Resume { Paused => Running }
            Stop { Starting, Running, Paused => Stopping }
            Finish { Running, Stopping => Done }
            Reset { Paused, Done => Idle }
        }
    }

    use super::{Ev, St};
    use Phase::Variant::*;
    use Phase::*;

    /// sm's machines are typestates; events that arrive as data go through its `Variant`
    /// enum, one arm per (variant, valid event), which is what a user of sm writes.
    #[inline(always)]
    pub fn step(v: Variant, e: Ev) -> Variant {
        macro_rules! on {
            ($m:expr, $e:expr, { $($ev:ident => $t:ident),* }) => {
                match $e {
                    $(Ev::$ev => return $m.transition($t).as_enum(),)*
                    _ => {}
                }
            };
        }
        match v {
            InitialIdle(m) => {
                on!(m, e, { Start => Start });
                InitialIdle(m)
            }
            IdleByReset(m) => {
                on!(m, e, { Start => Start });
                IdleByReset(m)
            }
            StartingByStart(m) => {
                on!(m, e, { Ready => Ready, Stop => Stop });
                StartingByStart(m)
            }
            RunningByReady(m) => {
                on!(m, e, { Pause => Pause, Stop => Stop, Finish => Finish });
                RunningByReady(m)
            }
            RunningByResume(m) => {
                on!(m, e, { Pause => Pause, Stop => Stop, Finish => Finish });
                RunningByResume(m)
            }
            PausedByPause(m) => {
                on!(m, e, { Resume => Resume, Stop => Stop, Reset => Reset });
                PausedByPause(m)
            }
            StoppingByStop(m) => {
                on!(m, e, { Finish => Finish });
                StoppingByStop(m)
            }
            DoneByFinish(m) => {
                on!(m, e, { Reset => Reset });
                DoneByFinish(m)
            }
        }
    }

    pub fn state_of(v: &Variant) -> St {
        match v {
            InitialIdle(_) | IdleByReset(_) => St::Idle,
            StartingByStart(_) => St::Starting,
            RunningByReady(_) | RunningByResume(_) => St::Running,
            PausedByPause(_) => St::Paused,
            StoppingByStop(_) => St::Stopping,
            DoneByFinish(_) => St::Done,
        }
    }

    pub fn start() -> Variant {
        Machine::new(Idle).as_enum()
    }

    /// The size of sm's runtime value, its `Variant` enum.
    pub fn variant_size() -> usize {
        std::mem::size_of::<Variant>()
    }

    #[inline(never)]
    pub fn run(events: &[Ev]) -> u64 {
        let mut v = start();
        let mut h = super::SEED;
        for &e in events {
            v = step(v, e);
            h = super::mix(h, state_of(&v) as u8);
        }
        h
    }
}

// ---------------------------------------------------------------- finny

pub mod finny_impl {
    use finny::decl::{BuiltFsm, FsmBuilder};
    use finny::{finny_fsm, FsmCurrentState, FsmFactory};

    #[derive(Default)]
    pub struct Ctx;

    #[derive(Default)]
    pub struct Idle;
    #[derive(Default)]
    pub struct Starting;
    #[derive(Default)]
    pub struct Running;
    #[derive(Default)]
    pub struct Paused;
    #[derive(Default)]
    pub struct Stopping;
    #[derive(Default)]
    pub struct Done;

    #[derive(Clone, Copy, Debug)]
    pub struct Start;
    #[derive(Clone, Copy, Debug)]
    pub struct Ready;
    #[derive(Clone, Copy, Debug)]
    pub struct Pause;
    #[derive(Clone, Copy, Debug)]
    pub struct Resume;
    #[derive(Clone, Copy, Debug)]
    pub struct Stop;
    #[derive(Clone, Copy, Debug)]
    pub struct Finish;
    #[derive(Clone, Copy, Debug)]
    pub struct Reset;

    #[finny_fsm]
    fn phase_fsm(mut fsm: FsmBuilder<PhaseFsm, Ctx>) -> BuiltFsm {
        fsm.initial_state::<Idle>();
        fsm.state::<Idle>()
            .on_event::<Start>()
            .transition_to::<Starting>();
        fsm.state::<Starting>()
            .on_event::<Ready>()
            .transition_to::<Running>();
        fsm.state::<Starting>()
            .on_event::<Stop>()
            .transition_to::<Stopping>();
        fsm.state::<Running>()
            .on_event::<Pause>()
            .transition_to::<Paused>();
        fsm.state::<Running>()
            .on_event::<Stop>()
            .transition_to::<Stopping>();
        fsm.state::<Running>()
            .on_event::<Finish>()
            .transition_to::<Done>();
        fsm.state::<Paused>()
            .on_event::<Resume>()
            .transition_to::<Running>();
        fsm.state::<Paused>()
            .on_event::<Stop>()
            .transition_to::<Stopping>();
        fsm.state::<Paused>()
            .on_event::<Reset>()
            .transition_to::<Idle>();
        fsm.state::<Stopping>()
            .on_event::<Finish>()
            .transition_to::<Done>();
        fsm.state::<Done>()
            .on_event::<Reset>()
            .transition_to::<Idle>();
        fsm.build()
    }

    pub type Events = PhaseFsmEvents;

    pub fn event(e: super::Ev) -> Events {
        use super::Ev;
        match e {
            Ev::Start => Events::Start(Start),
            Ev::Ready => Events::Ready(Ready),
            Ev::Pause => Events::Pause(Pause),
            Ev::Resume => Events::Resume(Resume),
            Ev::Stop => Events::Stop(Stop),
            Ev::Finish => Events::Finish(Finish),
            Ev::Reset => Events::Reset(Reset),
        }
    }

    pub fn state_of(current: [FsmCurrentState<PhaseFsmCurrentState>; 1]) -> super::St {
        use super::St;
        match current[0] {
            FsmCurrentState::State(PhaseFsmCurrentState::Idle) => St::Idle,
            FsmCurrentState::State(PhaseFsmCurrentState::Starting) => St::Starting,
            FsmCurrentState::State(PhaseFsmCurrentState::Running) => St::Running,
            FsmCurrentState::State(PhaseFsmCurrentState::Paused) => St::Paused,
            FsmCurrentState::State(PhaseFsmCurrentState::Stopping) => St::Stopping,
            FsmCurrentState::State(PhaseFsmCurrentState::Done) => St::Done,
            FsmCurrentState::Stopped => panic!("the machine stopped"),
        }
    }

    /// The size of a started finny machine (its frontend, with the event queue and timers).
    pub fn machine_size() -> usize {
        let fsm = PhaseFsm::new(Ctx).expect("the machine builds");
        std::mem::size_of_val(&fsm)
    }

    #[inline(never)]
    pub fn run(events: &[Events]) -> u64 {
        let mut fsm = PhaseFsm::new(Ctx).expect("the machine builds");
        fsm.start().expect("the machine starts");
        let mut h = super::SEED;
        for e in events {
            let _ = fsm.dispatch(e.clone());
            h = super::mix(h, state_of(fsm.get_current_states()) as u8);
        }
        h
    }
}

// ---------------------------------------------------------------- streams and checks

/// The three streams: a lifecycle cycle (every event valid), a random walk of valid events,
/// and a stream where about half the events are invalid in the state they meet.
pub fn streams(len: usize, seed: u64) -> [(&'static str, Vec<Ev>); 3] {
    streams_of(len, seed, hand_next)
}

/// The three streams for the machine whose transitions `next` gives: the cycle of the seven
/// events, a random walk of accepted events, and half accepted, half rejected.
pub fn streams_of(
    len: usize,
    seed: u64,
    next: fn(St, Ev) -> Option<St>,
) -> [(&'static str, Vec<Ev>); 3] {
    let cycle = [
        Ev::Start,
        Ev::Ready,
        Ev::Pause,
        Ev::Resume,
        Ev::Stop,
        Ev::Finish,
        Ev::Reset,
    ];
    let lifecycle: Vec<Ev> = cycle.iter().copied().cycle().take(len).collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut walk = Vec::with_capacity(len);
    let mut half = Vec::with_capacity(len);
    let (mut s, mut t) = (St::Idle, St::Idle);
    for _ in 0..len {
        let valid: Vec<Ev> = EVENTS
            .into_iter()
            .filter(|&e| next(s, e).is_some())
            .collect();
        let e = valid[rng.usize(..valid.len())];
        s = next(s, e).expect("valid");
        walk.push(e);
        let (ok, bad): (Vec<Ev>, Vec<Ev>) = EVENTS.into_iter().partition(|&e| next(t, e).is_some());
        let e = if rng.bool() || bad.is_empty() {
            ok[rng.usize(..ok.len())]
        } else {
            bad[rng.usize(..bad.len())]
        };
        t = next(t, e).unwrap_or(t);
        half.push(e);
    }
    [
        ("lifecycle", lifecycle),
        ("random_walk", walk),
        ("half_invalid", half),
    ]
}

/// A shortest path of accepted events from `Idle` to each state, for the machine whose
/// transitions `next` gives.
pub fn paths_to_every_state(next: fn(St, Ev) -> Option<St>) -> Vec<Vec<Ev>> {
    STATES
        .iter()
        .map(|&target| {
            let mut queue = std::collections::VecDeque::from([(St::Idle, Vec::new())]);
            let mut seen = vec![St::Idle];
            while let Some((s, path)) = queue.pop_front() {
                if s == target {
                    return path;
                }
                for e in EVENTS {
                    if let Some(n) = next(s, e) {
                        if !seen.contains(&n) {
                            seen.push(n);
                            let mut p = path.clone();
                            p.push(e);
                            queue.push_back((n, p));
                        }
                    }
                }
            }
            panic!("{target:?} is unreachable")
        })
        .collect()
}

/// The implementations' names, in the order of [`run_all`]'s results.
pub const NAMES: [&str; 9] = [
    "hand_match",
    "fsm (derive)",
    "hand_match (sorted)",
    "fsm (derive, sorted)",
    "statig",
    "rust-fsm",
    "smlang",
    "sm",
    "finny",
];

/// One stream in every implementation's own event type.
pub struct Prepared {
    pub hand: Vec<Ev>,
    pub derived: Vec<derived::Cmd>,
    pub sorted: Vec<sorted::Cmd>,
    pub rustfsm: Vec<rustfsm::phase::Input>,
    pub smlang: Vec<smlang_impl::Events>,
    pub finny: Vec<finny_impl::Events>,
}

impl Prepared {
    pub fn new(events: &[Ev]) -> Self {
        Prepared {
            hand: events.to_vec(),
            derived: events.iter().copied().map(to_derived).collect(),
            sorted: events.iter().copied().map(sorted::cmd).collect(),
            rustfsm: events.iter().copied().map(to_rustfsm).collect(),
            smlang: events.iter().copied().map(to_smlang).collect(),
            finny: events.iter().copied().map(finny_impl::event).collect(),
        }
    }
}

/// Every implementation's fingerprint of the stream, in [`NAMES`] order.
pub fn run_all(p: &Prepared) -> [u64; 9] {
    [
        run_hand(&p.hand),
        run_derived(&p.derived),
        sorted::run_hand(&p.sorted),
        sorted::run_derived(&p.sorted),
        statig_impl::run(&p.hand),
        run_rustfsm(&p.rustfsm),
        run_smlang(&p.smlang),
        sm_impl::run(&p.hand),
        finny_impl::run(&p.finny),
    ]
}

/// Checks every implementation against the hand-written one on every (state, event) pair
/// (the state reached by a shortest path, then the event) and on each stream.
pub fn check_all(streams: &[(&'static str, Vec<Ev>)]) -> Result<(), String> {
    let paths = paths_to_every_state(hand_next);
    for (s, path) in STATES.iter().zip(&paths) {
        for e in EVENTS {
            let mut events = path.clone();
            events.push(e);
            let p = Prepared::new(&events);
            let got = run_all(&p);
            for (name, h) in NAMES.iter().zip(got) {
                if h != got[0] {
                    return Err(format!(
                        "{name} disagrees with the hand-written match on {s:?} + {e:?}"
                    ));
                }
            }
            if handlers::run(&p.derived) != got[0] {
                return Err(format!(
                    "the derive with handlers disagrees with the hand-written match on {s:?} + {e:?}"
                ));
            }
        }
    }
    for (stream, events) in streams {
        let p = Prepared::new(events);
        let got = run_all(&p);
        for (name, h) in NAMES.iter().zip(got) {
            if h != got[0] {
                return Err(format!(
                    "{name} disagrees with the hand-written match on the {stream} stream"
                ));
            }
        }
        if handlers::run(&p.derived) != got[0] {
            return Err(format!(
                "the derive with handlers disagrees with the hand-written match on the {stream} stream"
            ));
        }
    }
    Ok(())
}
