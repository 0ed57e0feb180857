// Mistakes in the hierarchy, each reported at its place, all in one compile: a parent nobody
// declared, two superstates inside each other, a superstate without states, one without an
// initial state, an initial state that is not inside it, and a superstate named like a state.
use fsm_core::{Event, StateMachine};

#[derive(StateMachine, Debug, Clone)]
#[fsm(
    event = Cmd,
    superstate(Active, initial = Trial),
    superstate(Loop1, parent = Loop2, initial = Idle),
    superstate(Loop2, parent = Loop1, initial = Idle),
    superstate(Empty, initial = Trial),
    superstate(Billing, parent = Active),
    superstate(Paused, initial = Trial),
    superstate(Done, initial = Done)
)]
enum Sub {
    #[fsm(initial, parent = Active, on(Go => Current, plain))]
    Trial,
    #[fsm(parent = Billing, on(Go => Idle, plain))]
    Current,
    #[fsm(parent = Pausd, on(Go => Done, plain))]
    Idle,
    #[fsm(parent = Paused, on(Go => Done, plain))]
    Held,
    #[fsm(terminal)]
    Done,
}

#[derive(Event, Debug, Clone)]
enum Cmd {
    Go,
}

fn main() {}
