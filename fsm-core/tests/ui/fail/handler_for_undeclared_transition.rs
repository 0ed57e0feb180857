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
    #[fsm(initial, on(Go => B))]
    A,
    #[fsm(terminal)]
    B,
}

impl Handler<cmd::Go, m::B> for m::A {
    fn handle(_: m::A, _: cmd::Go, _: &mut Effects<()>) -> Result<m::B, Refusal> {
        Ok(m::B)
    }
}

impl Handler<cmd::Stop, m::B> for m::A {
    fn handle(_: m::A, _: cmd::Stop, _: &mut Effects<()>) -> Result<m::B, Refusal> {
        Ok(m::B)
    }
}

fn main() {}
