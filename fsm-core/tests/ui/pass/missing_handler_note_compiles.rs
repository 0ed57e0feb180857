// The impls the missing-handler notes suggest, pasted as written (with a body for `..`),
// compile: the note spells out every path.
use fsm_core::{Event, Refusal, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Go,
    Stop { code: u8 },
}

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd, effect = &'static str)]
enum M {
    #[fsm(initial, on(Go => B), on(Stop => C))]
    A,
    #[fsm(on(Stop => C))]
    B { n: u8 },
    #[fsm(terminal)]
    C,
}

impl fsm_core::Handler<cmd::Go, m::B> for m::A { fn handle(state: m::A, event: cmd::Go, effects: &mut fsm_core::Effects<&'static str>) -> Result<m::B, fsm_core::Refusal> { let _ = (state, event, effects); Ok(m::B { n: 1 }) } }
impl fsm_core::Handler<cmd::Stop, m::C> for m::A { fn handle(state: m::A, event: cmd::Stop, effects: &mut fsm_core::Effects<&'static str>) -> Result<m::C, fsm_core::Refusal> { let _ = (state, event, effects); Ok(m::C) } }
impl fsm_core::Handler<cmd::Stop, m::C> for m::B { fn handle(state: m::BRef<'_>, event: cmd::Stop, effects: &mut fsm_core::Effects<&'static str>) -> Result<m::C, fsm_core::Refusal> { if *state.n == event.code { Ok(m::C) } else { let _ = effects; Err(Refusal::new("wrong code")) } } }

fn main() {
    let mut machine = M::A;
    machine.apply(Cmd::Go).unwrap();
    machine.apply(Cmd::Stop { code: 1 }).unwrap();
}
