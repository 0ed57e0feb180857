// A transition that names its function runs that function: a `Handler` impl written for it as
// well is an error at the impl (it would never run).
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};

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

fn lock(_: door::Closed, ev: cmd::Lock, _: &mut Effects<()>) -> Result<door::Locked, Refusal> {
    Ok(door::Locked { code: ev.code })
}

impl Handler<cmd::Lock, door::Locked> for door::Closed {
    fn handle(_: door::Closed, ev: cmd::Lock, _: &mut Effects<()>) -> Result<door::Locked, Refusal> {
        Ok(door::Locked { code: ev.code })
    }
}

fn main() {}
