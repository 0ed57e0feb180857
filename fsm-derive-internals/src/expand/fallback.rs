//! What a machine whose table has errors still gets, beside the `compile_error!`s, so that the
//! code written around it (handlers, hooks, typed calls, a kernel) meets no second round of
//! errors hiding the real one. Kept apart from the expansion of a sound table, as thiserror
//! keeps its fallback.

use proc_macro2::TokenStream;
use quote::quote;

use super::Gen;
use crate::ast::{Machine, State};
use crate::names::snake_ident;

/// What a machine whose table has errors still gets, beside the `compile_error!`s: its typed
/// states' module, a `StateMachine` impl, each typed state's `TypedState` impl, a `Declared`
/// impl that accepts any handler, and a method per declared transition into the state it names
/// (or the state a misspelt name was probably meant to be), with bodies that never run (the
/// crate does not compile). The code a user wrote around the machine (handlers, hooks, typed
/// calls, a kernel) then meets no second round of errors hiding the real one.
pub(crate) fn fallback(m: &Machine<'_>) -> TokenStream {
    let Some(g) = Gen::new(m) else {
        return quote!();
    };
    let event = g.event;
    let krate = &g.paths.krate;
    let private = &g.paths.private;
    let module = g.module_items();
    let names = g.name_checks();
    let ident = m.ident;
    let f = &g.effect;
    let (impl_g, ty_g, wc) = m.generics.split_for_impl();
    let name = ident.to_string();
    let never = quote!(#private::core::unreachable!("the machine's table has errors"));
    let per_state = m
        .states
        .iter()
        .enumerate()
        .map(|(i, s)| g.fallback_state(i, s, &never));
    let initial = g.initial_state();
    let out = quote! {
        #module
        #[doc(hidden)]
        const _: () = {
            #names
            #initial
            #[automatically_derived]
            #[allow(unused_variables, unreachable_code)]
            impl #impl_g #krate::StateMachine for #ident #ty_g #wc {
                type Event = #event;
                type Effect = #f;
                const TABLE: &'static #krate::Table = &#krate::Table::new(#name, &[], &[], &[], 0);
                fn state(&self) -> #krate::StateId { #never }
                fn next(
                    &self,
                    event: #event,
                    effects: &mut #krate::Effects<#f>,
                ) -> #private::core::result::Result<(Self, #krate::Transition), #krate::Rejection> {
                    #never
                }
                fn validate(&self) -> #private::core::result::Result<(), #krate::InvalidState> {
                    #never
                }
            }
            #(#per_state)*
        };
    };
    // The input had errors; if what it holds cannot even be written back as items (a field
    // type only the parser's leniency accepted), the errors alone are better than more.
    match syn::parse2::<syn::File>(out.clone()) {
        Ok(_) => out,
        Err(_) => quote!(),
    }
}

impl Gen<'_, '_> {
    /// [`fallback`] for one state: what user code may name of it, and nothing that checks.
    fn fallback_state(&self, index: usize, s: &State<'_>, never: &TokenStream) -> TokenStream {
        let m = self.m;
        let krate = &self.paths.krate;
        let private = &self.paths.private;
        let (impl_g, _, wc) = m.generics.split_for_impl();
        let typed = self.typed(s.variant.ident);
        let f = &self.effect;
        let mut seen: Vec<String> = Vec::new();
        let methods: Vec<TokenStream> = s
            .attrs
            .on
            .iter()
            .filter_map(|on| {
                let method = snake_ident(&on.event, on.event.span());
                let key = method.to_string();
                if seen.contains(&key) {
                    return None;
                }
                seen.push(key);
                let target = m
                    .state_index(&on.target)
                    .or_else(|| crate::check::near_state(m, &on.target));
                Some(match target {
                    Some(t) => {
                        let target = self.typed(m.states[t].variant.ident);
                        let payload = self.payload(&on.event);
                        quote! {
                            #[allow(dead_code, unused_variables, unreachable_code)]
                            pub fn #method(
                                self,
                                event: #payload,
                            ) -> #private::core::result::Result<#krate::Next<#target, #f>, #krate::Rejected<Self>> {
                                #never
                            }
                        }
                    }
                    None => quote! {
                        #[allow(dead_code, unused_variables, clippy::diverging_sub_expression)]
                        pub fn #method<__FsmE>(self, event: __FsmE) -> ! { #never }
                    },
                })
            })
            .collect();
        let inherent =
            (!methods.is_empty()).then(|| quote!(impl #impl_g #typed #wc { #(#methods)* }));
        let mut declared_g = m.generics.clone();
        declared_g.params.push(syn::parse_quote!(__FsmE));
        declared_g.params.push(syn::parse_quote!(__FsmT));
        declared_g.params.push(syn::parse_quote!(__FsmK));
        let (declared_impl_g, _, _) = declared_g.split_for_impl();
        let core = self.typed_state_core(index, s, None);
        quote! {
            #core

            // Any handler: the table that would say which ones hold has errors of its own.
            #[automatically_derived]
            impl #declared_impl_g #private::DeclaredAt<__FsmK, __FsmT, __FsmE> for #typed #wc {}

            #inherent
        }
    }
}
