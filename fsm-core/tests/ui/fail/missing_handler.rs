use fsm_core::{Event, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Go,
    Stop,
}

use fsm_core::{Effects, Handler, Refusal};

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum M {
    #[fsm(initial, on(Go => B), on(Stop => C))]
    A,
    #[fsm(terminal)]
    B,
    #[fsm(terminal)]
    C,
}

impl Handler<cmd::Go, m::B> for m::A {
    fn handle(_: m::A, _: cmd::Go, _: &mut Effects<()>) -> Result<m::B, Refusal> {
        Ok(m::B)
    }
}

fn main() {}
