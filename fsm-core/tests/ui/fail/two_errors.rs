use fsm_core::{Event, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Go,
    Stop,
}

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum M {
    #[fsm(initial, on(Go => Nowhere))]
    A,
    #[fsm(terminal, on(Stop => A))]
    B,
}

fn main() {}
