use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Pay,
    Expire { reason: String },
}

// A state timeout fires a fixed event: one with fields has nothing to fill them from.
#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum Order {
    #[fsm(initial, on(Pay => Paid), on(Expire => Paid), state_timeout(s = 30 => Expire))]
    Open,
    #[fsm(terminal)]
    Paid,
}

impl Handler<cmd::Pay, order::Paid> for order::Open {
    fn handle(_: order::Open, _: cmd::Pay, _: &mut Effects<()>) -> Result<order::Paid, Refusal> {
        Ok(order::Paid)
    }
}

impl Handler<cmd::Expire, order::Paid> for order::Open {
    fn handle(_: order::Open, _: cmd::Expire, _: &mut Effects<()>) -> Result<order::Paid, Refusal> {
        Ok(order::Paid)
    }
}

fn main() {}
