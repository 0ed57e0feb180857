use fsm_core::{Event, StateMachine};

#[derive(Event)]
enum Cmd {
    Go,
    Stop,
}

#[derive(StateMachine)]
#[fsm(event = Cmd)]
enum M {
    #[fsm(initial, on(Go => B))]
    A,
    #[fsm(terminal, defer(Stop))]
    B,
}

fn main() {}
