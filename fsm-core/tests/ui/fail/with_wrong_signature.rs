// A function named with `with = ..` whose signature does not fit the transition: one error, at
// the function's name in the table, saying what was expected.
use fsm_core::{Effects, Event, Refusal, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Lock { code: u32 },
}

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum Door {
    #[fsm(initial, on(Lock => Locked, with = lock))]
    Closed,
    #[fsm(terminal)]
    Locked { code: u32 },
}

// Returns the wrong state.
fn lock(_: door::Closed, _: cmd::Lock, _: &mut Effects<()>) -> Result<door::Closed, Refusal> {
    Ok(door::Closed)
}

fn main() {}
