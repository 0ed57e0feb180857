// A misspelt target state: one error at the name, with the state it was probably meant to be.
use fsm_core::{Event, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Toggle,
}

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum Light {
    #[fsm(initial, on(Toggle => Onn, plain))]
    Off,
    #[fsm(on(Toggle => Off, plain))]
    On,
}

fn main() {
    let mut light = Light::Off;
    let _ = light.apply(Cmd::Toggle);
}
