use fsm_core::{Event, StateMachine};

#[derive(Event)]
enum Cmd {
    Go,
    Stop,
}

#[derive(StateMachine)]
enum M {
    #[fsm(initial, on(Go => B))]
    A,
    #[fsm(terminal)]
    B,
}

fn main() {}
