use fsm_core::{Event, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Pulse,
    Missed,
}

// The timeout fires `Missed`, which `Sensing` has no transition for: it could never be taken.
#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum Pacer {
    #[fsm(initial, on(Pulse => Sensing), state_timeout(ms = 1200 => Missed))]
    Sensing,
}

fn main() {}
