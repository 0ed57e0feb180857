use fsm_core::{Event, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Go,
    Late,
}

// A zero timeout, a second timeout on one state, and a timeout on a terminal state.
#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum M {
    #[fsm(initial, on(Go => B), on(Late => B), state_timeout(ms = 0 => Late))]
    A,
    #[fsm(on(Go => C), on(Late => C), state_timeout(s = 5 => Late), state_timeout(ms = 9 => Go))]
    B,
    #[fsm(terminal, state_timeout(min = 1 => Late))]
    C,
}

fn main() {}
