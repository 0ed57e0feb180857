//! Compile-time-checked state machines for systems that must not lose their state.
//!
//! `#[derive(StateMachine)]` turns an annotated enum into a machine whose transition table is
//! checked at compile time, with a typestate API for code paths known in advance and a
//! runtime dispatch ([`StateMachine::apply`]) for commands that arrive as data.
//!
//! ```
//! use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
//!
//! #[derive(StateMachine, Debug, Clone, PartialEq)]
//! #[fsm(event = Cmd)]
//! enum Light {
//!     #[fsm(initial, on(Flip => On))]
//!     Off,
//!     #[fsm(on(Flip => Off), on(Break => Broken))]
//!     On,
//!     #[fsm(terminal)]
//!     Broken,
//! }
//!
//! #[derive(Event, Debug, Clone)]
//! enum Cmd { Flip, Break }
//!
//! impl Handler<cmd::Flip, light::On> for light::Off {
//!     fn handle(_: light::Off, _: cmd::Flip, _: &mut Effects<()>) -> Result<light::On, Refusal> { Ok(light::On) }
//! }
//! impl Handler<cmd::Flip, light::Off> for light::On {
//!     fn handle(_: light::On, _: cmd::Flip, _: &mut Effects<()>) -> Result<light::Off, Refusal> { Ok(light::Off) }
//! }
//! impl Handler<cmd::Break, light::Broken> for light::On {
//!     fn handle(_: light::On, _: cmd::Break, _: &mut Effects<()>) -> Result<light::Broken, Refusal> { Ok(light::Broken) }
//! }
//!
//! let mut l = Light::Off;
//! l.apply(Cmd::Flip).unwrap();
//! assert_eq!(l, Light::On);
//! let err = l.clone().apply(Cmd::Flip).and_then(|_| Ok(())).err();
//! assert!(err.is_none());
//! // Off accepts only Flip: Break is rejected and the machine does not move.
//! let mut off = Light::Off;
//! let rejection = off.apply(Cmd::Break).unwrap_err();
//! assert_eq!(off, Light::Off);
//! assert_eq!(rejection.to_string(), "Light rejected event `Break` in state `Off`: no transition for it here (this state accepts `Flip`)");
//! ```
//!
//! # Where to read on
//!
//! The [`guide`] is the manual, in chapters whose examples are doctests: start with
//! [writing a machine](guide::writing), which is also the reference of every `#[fsm(..)]`
//! attribute. The modules below are the reference: [`queue`] (the command queue), [`store`]
//! (snapshots and the store contract), [`kernel`] (many machines, durably), [`timer`],
//! [`table`] (the const transition table and its diagrams) and [`testing`] (property checks).

extern crate self as fsm_core;

mod diagram;
mod effects;
pub mod guide;
pub mod kernel;
mod machine;
pub mod queue;
mod redact;
mod rejection;
pub mod store;
mod sync;
pub mod table;
pub mod testing;
pub mod timer;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use effects::{Effects, NoEffect, Raised};
pub use machine::{
    Applied, Declared, EffectOf, Event, Handler, Next, Rejected, StateMachine, Transition,
    TypedState, RAISE_LIMIT,
};
pub use redact::{Redact, Redacted};
pub use rejection::{InvalidState, Reason, Refusal, Rejection};
pub use table::{
    DeclaredOn, EventId, Policy, StateId, StateMeta, StateTimeout, SuperstateMeta, Table,
    TransitionMeta,
};

pub use fsm_derive::{Event, StateMachine};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
