use fsm_core::{Effects, Event, Refusal, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Flip,
}

// A hook sees the state and the effects buffer and returns nothing: it cannot refuse (a
// verdict it returned would be ignored), and it cannot do without the buffer.
fn lit(_: light::On, _: &mut Effects<()>) -> Result<(), Refusal> {
    Ok(())
}
fn dark(_: light::Off) {}

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum Light {
    #[fsm(initial, on(Flip => On, plain), enter = dark)]
    Off,
    #[fsm(on(Flip => Off, plain), enter = lit)]
    On,
}

fn main() {}
