//! The machine `queue_ops` drives: a traffic light with every policy the queue acts on.
//! Red -> Amber -> Green -> Red on `Step`; `Stay` is a self-transition; `Walk` is taken only in
//! Green and deferred in Red and Amber; Red dumps `Noise` and delegates `Spam`; `Cross` is
//! guarded in Green (refused when `ok` is false); nothing takes `Bad`. Every applied command
//! records its number as an effect.

use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};

#[derive(Event, Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cmd {
    Step { n: u32 },
    Stay { n: u32 },
    Walk { n: u32 },
    Noise { n: u32 },
    Spam { n: u32 },
    Cross { n: u32, ok: bool },
    Bad { n: u32 },
}

#[derive(StateMachine, Debug, Clone, PartialEq, Eq)]
#[fsm(event = Cmd, effect = u32)]
pub(crate) enum Light {
    #[fsm(initial, on(Step => Amber), on(Stay => Red), defer(Walk), dump(Noise), delegate(Spam))]
    Red,
    #[fsm(on(Step => Green), on(Stay => Amber), defer(Walk))]
    Amber,
    #[fsm(on(Step => Red), on(Stay => Green), on(Walk => Green), on(Cross => Red))]
    Green,
}

type Fx = Effects<u32>;

impl Handler<cmd::Step, light::Amber> for light::Red {
    fn handle(_: light::Red, ev: cmd::Step, fx: &mut Fx) -> Result<light::Amber, Refusal> {
        fx.push(ev.n);
        Ok(light::Amber)
    }
}

impl Handler<cmd::Step, light::Green> for light::Amber {
    fn handle(_: light::Amber, ev: cmd::Step, fx: &mut Fx) -> Result<light::Green, Refusal> {
        fx.push(ev.n);
        Ok(light::Green)
    }
}

impl Handler<cmd::Step, light::Red> for light::Green {
    fn handle(_: light::Green, ev: cmd::Step, fx: &mut Fx) -> Result<light::Red, Refusal> {
        fx.push(ev.n);
        Ok(light::Red)
    }
}

impl Handler<cmd::Stay, light::Red> for light::Red {
    fn handle(_: light::Red, ev: cmd::Stay, fx: &mut Fx) -> Result<light::Red, Refusal> {
        fx.push(ev.n);
        Ok(light::Red)
    }
}

impl Handler<cmd::Stay, light::Amber> for light::Amber {
    fn handle(_: light::Amber, ev: cmd::Stay, fx: &mut Fx) -> Result<light::Amber, Refusal> {
        fx.push(ev.n);
        Ok(light::Amber)
    }
}

impl Handler<cmd::Stay, light::Green> for light::Green {
    fn handle(_: light::Green, ev: cmd::Stay, fx: &mut Fx) -> Result<light::Green, Refusal> {
        fx.push(ev.n);
        Ok(light::Green)
    }
}

impl Handler<cmd::Walk, light::Green> for light::Green {
    fn handle(_: light::Green, ev: cmd::Walk, fx: &mut Fx) -> Result<light::Green, Refusal> {
        fx.push(ev.n);
        Ok(light::Green)
    }
}

impl Handler<cmd::Cross, light::Red> for light::Green {
    fn handle(_: light::Green, ev: cmd::Cross, fx: &mut Fx) -> Result<light::Red, Refusal> {
        // The effect is pushed before the guard decides: a refusal must discard it.
        fx.push(ev.n);
        if ev.ok {
            Ok(light::Red)
        } else {
            Err(Refusal::new("not safe to cross"))
        }
    }
}
