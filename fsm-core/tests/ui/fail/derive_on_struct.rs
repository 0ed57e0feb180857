use fsm_core::{Event, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Go,
    Stop,
}

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
struct M {
    state: u8,
}

fn main() {}
