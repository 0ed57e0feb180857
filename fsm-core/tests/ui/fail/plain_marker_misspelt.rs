use fsm_core::{Event, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Flip,
}

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum Light {
    #[fsm(initial, on(Flip => On, plan))]
    Off,
    #[fsm(on(Flip => Off, plain))]
    On,
}

fn main() {}
