// A new user's first typo: one error, at the name, naming it, suggesting the variant.
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Toggle,
}

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum Light {
    #[fsm(initial, on(Toggel => On))]
    Off,
    #[fsm(on(Toggle => Off))]
    On,
}

impl Handler<cmd::Toggle, light::On> for light::Off {
    fn handle(_: light::Off, _: cmd::Toggle, _: &mut Effects<()>) -> Result<light::On, Refusal> {
        Ok(light::On)
    }
}

impl Handler<cmd::Toggle, light::Off> for light::On {
    fn handle(_: light::On, _: cmd::Toggle, _: &mut Effects<()>) -> Result<light::Off, Refusal> {
        Ok(light::Off)
    }
}

fn main() {
    let mut light = Light::Off;
    let _ = light.apply(Cmd::Toggle);
}
