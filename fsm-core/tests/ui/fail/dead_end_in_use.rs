// A table error is reported once; code that uses the machine does not add a cascade.
use fsm_core::{Event, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Toggle,
}

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum Light {
    #[fsm(initial, on(Toggle => On, plain))]
    Off,
    On,
}

fn main() {
    let mut light = Light::Off;
    let _ = light.apply(Cmd::Toggle);
    let _ = light::Off.toggle(cmd::Toggle);
}
