// A sensitive field of a state is sealed at rest: its type must have a default (what the
// stored payload holds in its place) and be serde, or the derive says so at the field
// (`NonZeroU32` has no default).
use fsm_core::{Event, StateMachine};
use serde::{Deserialize, Serialize};

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = Cmd)]
pub enum Account {
    #[fsm(initial, on(Close => Closed, plain))]
    Active {
        #[fsm(sensitive)]
        pin: std::num::NonZeroU32,
    },
    #[fsm(terminal)]
    Closed,
}

#[derive(Event, Debug, Clone)]
pub enum Cmd {
    Close,
}

fn main() {}
