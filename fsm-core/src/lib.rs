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
//! # Declaring a machine
//!
//! On the enum deriving [`StateMachine`](macro@StateMachine):
//! - `event = Type` (required): the enum deriving [`Event`](macro@Event) whose variants are the
//!   commands the machine accepts;
//! - `effect = Type`: what handlers push into [`Effects`] (default `()`);
//! - `module = name`: the name of the generated module of typed states (default: the enum's
//!   name in snake case); `crate = path`: where `fsm_core` is, if renamed.
//!
//! On each variant (a state):
//! - `initial` (exactly one state), `terminal` (accepts no event);
//! - `on(Event => Target)`, `on(A | B => Target)`: declared transitions, each needing a
//!   [`Handler`] impl; `on(Event => Target, plain)`: one into a state without data that needs
//!   none (the target is built from nothing; its invariant still runs);
//! - `defer(E, ..)`, `dump(E, ..)`, `delegate(E, ..)`, or bare `defer` / `dump` / `delegate`
//!   for every other event: the [`Policy`] for events the state has no transition for (the
//!   command queue acts on it; [`StateMachine::apply`] always rejects such events);
//! - `validate = path`: the state's invariant, a `fn(view) -> Result<(), Refusal>`;
//! - `enter = path`, `exit = path`: hooks, `fn(view, &mut Effects<F>)`, run on every
//!   transition that changes the state (exit, handler, enter; a self-transition only when
//!   marked `on(E => S, reenter)`), never when a snapshot is restored; they push effects and
//!   timer requests and cannot refuse;
//! - `state_timeout(ms = N => Event)` (or `s = N`, `min = N`): the state's timeout, firing
//!   `Event` (a variant without fields that the state has a transition for) N after the state
//!   was entered unless a transition left it first; handlers arm event timeouts and named
//!   timers through [`Effects`] (see [`timer`] for the rules).
//!
//! On a field of a state or an event: `sensitive`, which [`Redacted`] prints as `<redacted>`.
//!
//! On a field of a state or an event, for the generated test strategies (features `proptest`
//! and `arbitrary`): `strategy = path` (a `fn() -> impl Strategy<Value = FieldType>` used
//! instead of `any::<FieldType>()`) and `arbitrary = path` (a
//! `fn(&mut Unstructured<'_>) -> arbitrary::Result<FieldType>`).
//!
//! # Testing a machine
//!
//! With the `proptest` feature, both derives also implement proptest's `Arbitrary` for the
//! enums (so `any::<Order>()` and `any::<OrderCmd>()` exist), and
//! [`testing::check_machine`][check_machine] runs random event sequences against the table in one line; with
//! the `arbitrary` feature they implement `arbitrary::Arbitrary` and
//! [`testing::Checker::fuzz`][fuzz] checks the sequence a fuzzer's bytes decode to. Either feature
//! requires the enums to be `Debug` and their fields to implement the corresponding trait (or
//! name a generator as above); enable them in `[dev-dependencies]`.
//!
//! The derive generates a module named after the enum with one type per state
//! (`light::On`), a view type per state with data (`door::LockedRef<'_>`), and the
//! [`TypedState`] impls that connect them to the enum. Both enums must be declared at module
//! level (not inside a function body), because the generated modules refer to their parent.
//!
// Links to items behind a feature point at their module when the feature is off.
#![cfg_attr(
    feature = "proptest",
    doc = "[check_machine]: crate::testing::check_machine"
)]
#![cfg_attr(not(feature = "proptest"), doc = "[check_machine]: crate::testing")]
#![cfg_attr(feature = "arbitrary", doc = "[fuzz]: crate::testing::Checker::fuzz")]
#![cfg_attr(not(feature = "arbitrary"), doc = "[fuzz]: crate::testing::Checker")]

extern crate self as fsm_core;

mod diagram;
mod effects;
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
pub use table::{EventId, Policy, StateId, StateMeta, StateTimeout, Table, TransitionMeta};

pub use fsm_derive::{Event, StateMachine};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
