//! The derive macros of `fsm-core`: `#[derive(StateMachine)]` and `#[derive(Event)]`.
//!
//! Use them through `fsm_core` (`use fsm_core::{StateMachine, Event};`); the generated code
//! refers to `::fsm_core`. The work happens in `fsm-derive-internals` (parse into a model, check
//! the whole table and report every error at once, write code); this crate is the compiler's
//! entry point to it.

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Derives a state machine from an annotated enum. See the `fsm_core` crate documentation for
/// the attributes (`#[fsm(event = .., effect = ..)]` on the enum; `initial`, `terminal`,
/// `on(Event => Target)`, `defer(..)`, `dump(..)`, `delegate(..)`, `validate = path` on states;
/// `sensitive`, `strategy = path`, `arbitrary = path` on fields).
#[proc_macro_derive(StateMachine, attributes(fsm))]
pub fn derive_state_machine(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    fsm_derive_internals::state_machine_from(&input).into()
}

/// Derives `fsm_core::Event` for the enum of commands a machine accepts, and a module named
/// after it (`OrderCmd` -> `order_cmd`) with one payload type per variant. Fields may be
/// marked `#[fsm(sensitive)]`, `#[fsm(strategy = path)]` and `#[fsm(arbitrary = path)]`.
#[proc_macro_derive(Event, attributes(fsm))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    fsm_derive_internals::event_from(&input).into()
}
