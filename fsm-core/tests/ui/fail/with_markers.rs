// `with = ..` beside `plain`, two functions on one transition, one function for two events:
// each one error, all in one compile.
use fsm_core::{Effects, Event, Refusal, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Open,
    Close,
    Kick,
}

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum Door {
    #[fsm(initial, on(Close => Closed, plain, with = close))]
    Open,
    #[fsm(on(Open => Open, with = open, update = open), on(Kick => Closed, plain))]
    Closed,
}

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum Gate {
    #[fsm(initial, on(Open | Kick => Opened, with = open_gate))]
    Shut,
    #[fsm(on(Close => Shut, plain))]
    Opened,
}

fn close(_: door::Open, _: cmd::Close, _: &mut Effects<()>) -> Result<door::Closed, Refusal> {
    Ok(door::Closed)
}

fn open(_: door::Closed, _: cmd::Open, _: &mut Effects<()>) -> Result<door::Open, Refusal> {
    Ok(door::Open)
}

fn main() {}
