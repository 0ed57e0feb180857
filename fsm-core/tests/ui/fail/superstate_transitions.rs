// Transitions declared on a superstate or for any state: a target that is neither a state
// nor a superstate (reported once, not once per state inside), `update`, which changes one
// state's data in place and so belongs on a state, and `local` on a state's own transition.
use fsm_core::{Event, StateMachine};

#[derive(StateMachine, Debug, Clone)]
#[fsm(
    event = Cmd,
    on(Stop => Stoped, plain),
    superstate(Active, initial = Trial, on(Cancel => Canceled, plain)),
    superstate(Paused, initial = Held, on(Tick => Held, update = tick))
)]
enum Sub {
    #[fsm(initial, parent = Active, on(Go => Current, plain, local))]
    Trial,
    #[fsm(parent = Active, on(Go => Held, plain))]
    Current,
    #[fsm(parent = Paused, on(Go => Done, plain))]
    Held,
    #[fsm(terminal)]
    Done,
}

#[derive(Event, Debug, Clone)]
enum Cmd {
    Go,
    Stop,
    Cancel,
    Tick,
}

fn main() {}
