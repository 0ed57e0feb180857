// A superstate's timeout must fire an event every state inside it takes (declared on the
// superstate, every state inherits it), and last longer than zero.
use fsm_core::{Event, StateMachine};

#[derive(StateMachine, Debug, Clone)]
#[fsm(
    event = Cmd,
    superstate(Checkout, initial = Cart, state_timeout(min = 30 => Expire)),
    superstate(Hold, initial = Held, state_timeout(ms = 0 => Go), on(Go => Done, plain))
)]
enum Order {
    #[fsm(initial, parent = Checkout, on(Pay => Paying, plain), on(Expire => Done, plain))]
    Cart,
    #[fsm(parent = Checkout, on(Pay => Held, plain))]
    Paying,
    #[fsm(parent = Hold)]
    Held,
    #[fsm(terminal)]
    Done,
}

#[derive(Event, Debug, Clone)]
enum Cmd {
    Pay,
    Expire,
    Go,
}

fn main() {}
