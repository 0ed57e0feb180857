use fsm_core::{Event, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Flip,
}

fn lit(_: light::On, _: &mut fsm_core::Effects<()>) {}

// `reenter` only means something on a self-transition; a second `enter` is one too many.
#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum Light {
    #[fsm(initial, on(Flip => On, plain, reenter))]
    Off,
    #[fsm(on(Flip => Off, plain), enter = lit, enter = lit)]
    On,
}

fn main() {}
