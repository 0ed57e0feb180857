//! The derive macros of `fsm-core`: `#[derive(StateMachine)]` and `#[derive(Event)]`.
//!
//! Use them through `fsm_core` (`use fsm_core::{StateMachine, Event};`); the generated code
//! refers to `::fsm_core`. Each derive parses the input into a model (`ast`, `attr`), checks the
//! whole table and reports every error at once (`check`), then writes code (`expand`, `event`).

mod ast;
mod attr;
mod check;
mod ctxt;
mod event;
mod expand;
mod generics;
mod names;
mod shape;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

use crate::ctxt::Ctxt;

/// Derives a state machine from an annotated enum. See the `fsm_core` crate documentation for
/// the attributes (`#[fsm(event = .., effect = ..)]` on the enum; `initial`, `terminal`,
/// `on(Event => Target)`, `defer(..)`, `dump(..)`, `delegate(..)`, `validate = path` on states;
/// `sensitive` on fields).
#[proc_macro_derive(StateMachine, attributes(fsm))]
pub fn derive_state_machine(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    let cx = Ctxt::new();
    let Some(machine) = ast::Machine::from_input(&cx, &input) else {
        return errors(&cx);
    };
    check::check(&cx, &machine);
    match cx.check() {
        Ok(()) => expand::expand(&machine).into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Derives `fsm_core::Event` for the enum of commands a machine accepts, and a module named
/// after it (`OrderCmd` -> `order_cmd`) with one payload type per variant. Fields may be
/// marked `#[fsm(sensitive)]`.
#[proc_macro_derive(Event, attributes(fsm))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    let cx = Ctxt::new();
    let Some(events) = ast::Events::from_input(&cx, &input) else {
        return errors(&cx);
    };
    if events.variants.len() > usize::from(u16::MAX) {
        cx.push(syn::Error::new_spanned(
            &input.ident,
            "an event enum may have at most 65535 variants",
        ));
    }
    match cx.check() {
        Ok(()) => event::expand(&events).into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn errors(cx: &Ctxt) -> TokenStream {
    match cx.check() {
        Ok(()) => TokenStream::new(),
        Err(e) => e.to_compile_error().into(),
    }
}
