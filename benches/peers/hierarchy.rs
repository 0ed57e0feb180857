//! One hierarchical machine written four ways: by hand (a nested `match` with every inherited
//! transition repeated), with this crate's derive flat (the same, declared state by state),
//! with the derive's superstates, and with statig's superstates. Six unit states in three
//! levels, seven events:
//!
//! ```text
//! (any state)  --Reset-->  Idle                    declared once, on the machine / statig's top
//! Idle         --Start-->  Starting
//! Active = { Starting, Working = { Running, Paused } }
//!   Active   --Stop-->   Stopping                  declared on Active: Starting, Running, Paused
//!   Working  --Finish--> Done                      declared on Working: Running, Paused
//!   Starting --Ready-->  Running    Running --Pause--> Paused    Paused --Resume--> Running
//! Stopping     --Finish--> Done
//! ```
//!
//! No hooks: dispatch alone. statig looks an unhandled event up through the superstates at
//! run time; the derive writes each inherited transition into each state's list at compile
//! time, so its hierarchical machine is its flat one. Every implementation is checked against
//! the hand-written one on every (state, event) pair and on each stream first.
//!
//! Included by `benches/peers.rs` and `examples/peers_rounds.rs`.

#![allow(dead_code, unreachable_pub, missing_docs)]

use super::{mix, Ev, St, EVENTS, SEED};

/// The hand-written machine: a nested `match`, the inherited transitions repeated.
#[inline(always)]
pub fn hand_next(s: St, e: Ev) -> Option<St> {
    use Ev::*;
    use St::*;
    if e == Reset {
        return Some(Idle);
    }
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
            Finish => Some(Done),
            _ => None,
        },
        Stopping => match e {
            Finish => Some(Done),
            _ => None,
        },
        Done => None,
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

/// The derive, flat: every transition declared on the state it leaves.
pub mod flat {
    use fsm_core::{Event, StateMachine};

    #[derive(StateMachine, Debug, Clone, Copy, PartialEq, Eq)]
    #[fsm(event = Cmd)]
    pub enum Phase {
        #[fsm(initial, on(Start => Starting, plain), on(Reset => Idle, plain))]
        Idle,
        #[fsm(on(Ready => Running, plain), on(Stop => Stopping, plain), on(Reset => Idle, plain))]
        Starting,
        #[fsm(
            on(Pause => Paused, plain),
            on(Stop => Stopping, plain),
            on(Finish => Done, plain),
            on(Reset => Idle, plain)
        )]
        Running,
        #[fsm(
            on(Resume => Running, plain),
            on(Stop => Stopping, plain),
            on(Finish => Done, plain),
            on(Reset => Idle, plain)
        )]
        Paused,
        #[fsm(on(Finish => Done, plain), on(Reset => Idle, plain))]
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

    phase_loop!();
}

/// The derive with superstates: `Reset` declared once on the machine, `Stop` on `Active`,
/// `Finish` on `Working`.
pub mod nested {
    use fsm_core::StateMachine;

    pub use super::flat::Cmd;

    #[derive(StateMachine, Debug, Clone, Copy, PartialEq, Eq)]
    #[fsm(
        event = Cmd,
        on(Reset => Idle, plain),
        superstate(Active, initial = Starting, on(Stop => Stopping, plain)),
        superstate(Working, parent = Active, initial = Running, on(Finish => Done, plain))
    )]
    pub enum Phase {
        #[fsm(initial, on(Start => Active, plain))]
        Idle,
        #[fsm(parent = Active, on(Ready => Working, plain))]
        Starting,
        #[fsm(parent = Working, on(Pause => Paused, plain))]
        Running,
        #[fsm(parent = Working, on(Resume => Running, plain))]
        Paused,
        #[fsm(on(Finish => Done, plain))]
        Stopping,
        Done,
    }

    phase_loop!();
}

/// statig with superstates: `top` takes `Reset` for every state, `active` takes `Stop`,
/// `working` (inside `active`) takes `Finish`.
pub mod statig_nested {
    use statig::prelude::*;

    use super::Ev;

    #[derive(Default)]
    pub struct Phase;

    #[state_machine(
        initial = "State::idle()",
        state(derive(Debug, Clone, Copy, PartialEq, Eq)),
        superstate(derive(Debug))
    )]
    impl Phase {
        #[state(superstate = "top")]
        fn idle(event: &Ev) -> Outcome<State> {
            match event {
                Ev::Start => Transition(State::starting()),
                _ => Super,
            }
        }

        #[state(superstate = "active")]
        fn starting(event: &Ev) -> Outcome<State> {
            match event {
                Ev::Ready => Transition(State::running()),
                _ => Super,
            }
        }

        #[state(superstate = "working")]
        fn running(event: &Ev) -> Outcome<State> {
            match event {
                Ev::Pause => Transition(State::paused()),
                _ => Super,
            }
        }

        #[state(superstate = "working")]
        fn paused(event: &Ev) -> Outcome<State> {
            match event {
                Ev::Resume => Transition(State::running()),
                _ => Super,
            }
        }

        #[state(superstate = "top")]
        fn stopping(event: &Ev) -> Outcome<State> {
            match event {
                Ev::Finish => Transition(State::done()),
                _ => Super,
            }
        }

        #[state(superstate = "top")]
        fn done(event: &Ev) -> Outcome<State> {
            let _ = event;
            Super
        }

        #[superstate(superstate = "active")]
        fn working(event: &Ev) -> Outcome<State> {
            match event {
                Ev::Finish => Transition(State::done()),
                _ => Super,
            }
        }

        #[superstate(superstate = "top")]
        fn active(event: &Ev) -> Outcome<State> {
            match event {
                Ev::Stop => Transition(State::stopping()),
                _ => Super,
            }
        }

        #[superstate]
        fn top(event: &Ev) -> Outcome<State> {
            match event {
                Ev::Reset => Transition(State::idle()),
                _ => Handled,
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

/// The implementations' names, in the order of [`run_all`]'s results.
pub const NAMES: [&str; 4] = [
    "hand_match",
    "fsm (derive, flat)",
    "fsm (derive, superstates)",
    "statig (superstates)",
];

/// One stream in every implementation's own event type.
pub struct Prepared {
    pub hand: Vec<Ev>,
    pub derived: Vec<flat::Cmd>,
}

impl Prepared {
    pub fn new(events: &[Ev]) -> Self {
        Prepared {
            hand: events.to_vec(),
            derived: events.iter().copied().map(flat::cmd).collect(),
        }
    }
}

/// Every implementation's fingerprint of the stream, in [`NAMES`] order.
pub fn run_all(p: &Prepared) -> [u64; 4] {
    [
        run_hand(&p.hand),
        flat::run(&p.derived),
        nested::run(&p.derived),
        statig_nested::run(&p.hand),
    ]
}

/// The three streams of the peers bench, drawn against this machine: the same cycle of the
/// seven events, a random walk of accepted events, and half accepted, half rejected.
pub fn streams(len: usize, seed: u64) -> [(&'static str, Vec<Ev>); 3] {
    super::streams_of(len, seed, hand_next)
}

/// Checks every implementation against the hand-written one on every (state, event) pair
/// and on each stream.
pub fn check_all(streams: &[(&'static str, Vec<Ev>)]) -> Result<(), String> {
    for path in super::paths_to_every_state(hand_next) {
        for e in EVENTS {
            let mut events = path.clone();
            events.push(e);
            let got = run_all(&Prepared::new(&events));
            if let Some(i) = got.iter().position(|&h| h != got[0]) {
                return Err(format!(
                    "{} disagrees with the hand-written match after {path:?} + {e:?}",
                    NAMES[i]
                ));
            }
        }
    }
    for (stream, events) in streams {
        let got = run_all(&Prepared::new(events));
        if let Some(i) = got.iter().position(|&h| h != got[0]) {
            return Err(format!(
                "{} disagrees with the hand-written match on stream {stream}",
                NAMES[i]
            ));
        }
    }
    Ok(())
}
