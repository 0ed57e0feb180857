//! A small machine for the kernel tests over real stores: a tally that adds amounts until
//! it is closed, emitting one effect per addition.

// Shared by several test crates, each of which uses only part of it through `mod`.
#![allow(unreachable_pub, dead_code)]

use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = TallyCmd, effect = Added)]
pub enum Tally {
    #[fsm(initial, on(Add => Open), on(Close => Closed))]
    Open { total: u64 },
    #[fsm(terminal)]
    Closed { total: u64 },
}

#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TallyCmd {
    Add { amount: u64 },
    Close,
}

/// The effect of an addition: the amount added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Added(pub u64);

impl Handler<tally_cmd::Add, tally::Open> for tally::Open {
    fn handle(
        s: tally::OpenRef<'_>,
        ev: tally_cmd::Add,
        fx: &mut Effects<Added>,
    ) -> Result<tally::Open, Refusal> {
        fx.push(Added(ev.amount));
        Ok(tally::Open {
            total: s.total + ev.amount,
        })
    }
}

impl Handler<tally_cmd::Close, tally::Closed> for tally::Open {
    fn handle(
        s: tally::OpenRef<'_>,
        _: tally_cmd::Close,
        _: &mut Effects<Added>,
    ) -> Result<tally::Closed, Refusal> {
        Ok(tally::Closed { total: *s.total })
    }
}

impl Tally {
    /// The sum of the amounts added.
    pub fn total(&self) -> u64 {
        match self {
            Tally::Open { total } | Tally::Closed { total } => *total,
        }
    }
}
