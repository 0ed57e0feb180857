use fsm_core::{Event, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Go,
    Stop,
}

#[derive(StateMachine)]
#[fsm(event = Cmd)]
union M {
    a: u8,
    b: u16,
}

fn main() {}
