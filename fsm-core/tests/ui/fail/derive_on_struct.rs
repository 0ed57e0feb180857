use fsm_core::{Event, StateMachine};

#[derive(Event)]
enum Cmd {
    Go,
    Stop,
}

#[derive(StateMachine)]
#[fsm(event = Cmd)]
struct M {
    state: u8,
}

fn main() {}
