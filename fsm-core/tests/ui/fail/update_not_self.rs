// `update = ..` changes a state in place, so only a self-transition may name one.
use fsm_core::{Effects, Event, Refusal, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Lock { code: u32 },
}

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum Door {
    #[fsm(initial, on(Lock => Locked, update = lock))]
    Closed,
    #[fsm(terminal)]
    Locked { code: u32 },
}

fn lock(_: &mut door::Closed, _: cmd::Lock, _: &mut Effects<()>) -> Result<(), Refusal> {
    Ok(())
}

fn main() {}
