use fsm_core::{Event, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Pay,
}

// `Paid` holds data: a plain transition has nothing to build it from.
#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum Order {
    #[fsm(initial, on(Pay => Paid, plain))]
    Open,
    #[fsm(terminal)]
    Paid { cents: u64 },
}

fn main() {}
