//! The machine the queue tests run: a traffic light that cycles Red -> Amber -> Green -> Red on
//! `Step`, stays put on `Stay` (a self-transition), takes `Walk` only in Green (Red and Amber
//! postpone it), dumps `Noise` and delegates `Spam` in Red, and never takes `Bad`.
//!
//! Every handler records the command it applied as an effect, so tests see the exact order in
//! which the machine took commands. `Stay { seq: u32::MAX }` in Amber panics after emitting its
//! effect (a handler bug on demand).

use fsm_core::queue::{self, Consumer, QueueBuilder, Sender};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};

#[derive(Event, Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cmd {
    /// Producer `p`'s `seq`-th command.
    Step {
        p: u8,
        seq: u32,
    },
    Stay {
        p: u8,
        seq: u32,
    },
    Walk {
        id: u32,
    },
    Noise {
        id: u32,
    },
    Spam {
        id: u32,
    },
    Bad,
}

/// What a handler saw: the event's name and its number (`seq` or `id`), and the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) event: &'static str,
    pub(crate) p: u8,
    pub(crate) n: u32,
}

#[derive(StateMachine, Debug, Clone, PartialEq, Eq)]
#[fsm(event = Cmd, effect = Seen)]
pub(crate) enum Light {
    #[fsm(initial, on(Step => Amber), on(Stay => Red), defer(Walk), dump(Noise), delegate(Spam))]
    Red,
    #[fsm(on(Step => Green), on(Stay => Amber), defer(Walk))]
    Amber,
    #[fsm(on(Step => Red), on(Stay => Green), on(Walk => Green))]
    Green,
}

fn seen(event: &'static str, p: u8, n: u32) -> Seen {
    Seen { event, p, n }
}

impl Handler<cmd::Step, light::Amber> for light::Red {
    fn handle(
        _: light::Red,
        ev: cmd::Step,
        fx: &mut Effects<Seen>,
    ) -> Result<light::Amber, Refusal> {
        fx.push(seen("Step", ev.p, ev.seq));
        Ok(light::Amber)
    }
}
impl Handler<cmd::Step, light::Green> for light::Amber {
    fn handle(
        _: light::Amber,
        ev: cmd::Step,
        fx: &mut Effects<Seen>,
    ) -> Result<light::Green, Refusal> {
        fx.push(seen("Step", ev.p, ev.seq));
        Ok(light::Green)
    }
}
impl Handler<cmd::Step, light::Red> for light::Green {
    fn handle(
        _: light::Green,
        ev: cmd::Step,
        fx: &mut Effects<Seen>,
    ) -> Result<light::Red, Refusal> {
        fx.push(seen("Step", ev.p, ev.seq));
        Ok(light::Red)
    }
}
impl Handler<cmd::Stay, light::Red> for light::Red {
    fn handle(_: light::Red, ev: cmd::Stay, fx: &mut Effects<Seen>) -> Result<light::Red, Refusal> {
        fx.push(seen("Stay", ev.p, ev.seq));
        Ok(light::Red)
    }
}
impl Handler<cmd::Stay, light::Amber> for light::Amber {
    fn handle(
        _: light::Amber,
        ev: cmd::Stay,
        fx: &mut Effects<Seen>,
    ) -> Result<light::Amber, Refusal> {
        fx.push(seen("Stay", ev.p, ev.seq));
        // A handler bug on demand: the queue must answer the command and stay consistent.
        assert!(ev.seq != u32::MAX, "bulb blew");
        Ok(light::Amber)
    }
}
impl Handler<cmd::Stay, light::Green> for light::Green {
    fn handle(
        _: light::Green,
        ev: cmd::Stay,
        fx: &mut Effects<Seen>,
    ) -> Result<light::Green, Refusal> {
        fx.push(seen("Stay", ev.p, ev.seq));
        Ok(light::Green)
    }
}
impl Handler<cmd::Walk, light::Green> for light::Green {
    fn handle(
        _: light::Green,
        ev: cmd::Walk,
        fx: &mut Effects<Seen>,
    ) -> Result<light::Green, Refusal> {
        fx.push(seen("Walk", 0, ev.id));
        Ok(light::Green)
    }
}

pub(crate) fn step(p: u8, seq: u32) -> Cmd {
    Cmd::Step { p, seq }
}

pub(crate) fn stay(seq: u32) -> Cmd {
    Cmd::Stay { p: 0, seq }
}

pub(crate) fn walk(id: u32) -> Cmd {
    Cmd::Walk { id }
}

/// A bounded queue builder with an overflow sink that accepts everything (Light delegates
/// `Spam`, so every Light queue needs one).
pub(crate) fn builder(capacity: usize) -> QueueBuilder<Light> {
    queue::bounded::<Light>(capacity).overflow(|_: Cmd, _: &queue::DelegateCause| Ok(()))
}

/// [`builder`], built.
pub(crate) fn queue(capacity: usize) -> (Sender<Cmd>, Consumer<Light>) {
    builder(capacity).build().expect("valid configuration")
}

/// Drains and returns the machine's effects (the commands it applied, in order).
pub(crate) fn drain(rx: &mut Consumer<Light>, light: &mut Light) -> Vec<Seen> {
    let mut fx = Effects::new();
    rx.drain(light, &mut fx);
    fx.into_vec()
}

/// The `n`s of the walks among `seen`, in order.
pub(crate) fn walks(seen: &[Seen]) -> Vec<u32> {
    seen.iter()
        .filter(|s| s.event == "Walk")
        .map(|s| s.n)
        .collect()
}
