use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Flip,
}

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum Light {
    #[fsm(initial, on(Flip => On, plain))]
    Off,
    #[fsm(on(Flip => Off, plain))]
    On,
}

// The transition is plain: this handler would never run, so it does not compile.
impl Handler<cmd::Flip, light::On> for light::Off {
    fn handle(_: light::Off, _: cmd::Flip, _: &mut Effects<()>) -> Result<light::On, Refusal> {
        Ok(light::On)
    }
}

fn main() {}
