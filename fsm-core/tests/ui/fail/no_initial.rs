use fsm_core::{Event, StateMachine};

#[derive(Event)]
enum Cmd {
    Go,
    Stop,
}

#[derive(StateMachine)]
#[fsm(event = Cmd)]
enum M {
    #[fsm(on(Go => B))]
    A,
    #[fsm(terminal)]
    B,
}

fn main() {}
