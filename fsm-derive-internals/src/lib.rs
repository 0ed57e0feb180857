//! The stages behind `#[derive(StateMachine)]` and `#[derive(Event)]`, as a plain library.
//!
//! Not for direct use: depend on `fsm_core`, which re-exports the derives. This crate exists so
//! that the derive's whole pipeline (parse the input into a model in `ast`/`attr`, check the
//! whole table and collect every error in `check`, write code in `expand`/`event`) runs outside
//! a compiler invocation too: the fuzz target `derive_input` feeds it arbitrary enums and
//! attribute sets and requires that it answers with errors, never a panic.
//!
//! Both entry points take the derive input's tokens and return the tokens to emit: the
//! generated items, or `compile_error!` invocations for every problem found.

mod ast;
mod attr;
mod check;
mod ctxt;
mod event;
mod expand;
mod generics;
mod hierarchy;
mod lower;
mod names;
mod shape;
mod strategy;

use proc_macro2::TokenStream;
use syn::DeriveInput;

use crate::ctxt::Ctxt;

/// `#[derive(StateMachine)]`: the tokens of the annotated enum in, the generated items (or
/// `compile_error!`s naming every problem) out.
pub fn state_machine(input: TokenStream) -> TokenStream {
    match syn::parse2::<DeriveInput>(input) {
        Ok(input) => state_machine_from(&input),
        Err(e) => e.to_compile_error(),
    }
}

/// [`state_machine`] for input already parsed.
pub fn state_machine_from(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let Some(mut machine) = ast::Machine::from_input(&cx, input) else {
        return errors(&cx);
    };
    hierarchy::resolve(&cx, &mut machine);
    check::check(&cx, &machine);
    match cx.check() {
        Ok(()) => expand::expand(&machine),
        Err(e) => {
            let mut out = e.to_compile_error();
            out.extend(expand::fallback(&machine));
            out
        }
    }
}

/// `#[derive(Event)]`: the tokens of the event enum in, the `Event` impl and payload module (or
/// `compile_error!`s) out.
pub fn event(input: TokenStream) -> TokenStream {
    match syn::parse2::<DeriveInput>(input) {
        Ok(input) => event_from(&input),
        Err(e) => e.to_compile_error(),
    }
}

/// [`event`] for input already parsed.
pub fn event_from(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let Some(events) = ast::Events::from_input(&cx, input) else {
        return errors(&cx);
    };
    if events.variants.len() > usize::from(u16::MAX) {
        cx.push(syn::Error::new_spanned(
            &input.ident,
            "an event enum may have at most 65535 variants",
        ));
    }
    match cx.check() {
        Ok(()) => event::expand(&events),
        Err(e) => e.to_compile_error(),
    }
}

fn errors(cx: &Ctxt) -> TokenStream {
    match cx.check() {
        Ok(()) => TokenStream::new(),
        Err(e) => e.to_compile_error(),
    }
}
