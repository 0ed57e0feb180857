// A missing handler from a state with data: the note names its view type and the effect type.
use fsm_core::{Event, StateMachine};

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

fn main() {
    let mut machine = M::A;
    machine.apply(Cmd::Go).unwrap();
    machine.apply(Cmd::Stop { code: 1 }).unwrap();
}
