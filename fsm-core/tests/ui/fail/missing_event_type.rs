use fsm_core::{Event, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Go,
    Stop,
}

#[derive(StateMachine, Debug)]
enum M {
    #[fsm(initial, on(Go => B))]
    A,
    #[fsm(terminal)]
    B,
}

fn main() {}
