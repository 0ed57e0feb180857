//! Code generation for `#[derive(Event)]`: the `Event` impl, a module with one payload type per
//! variant, and the hidden per-variant trait through which the state derive names variants.

use proc_macro2::TokenStream;
use quote::quote;

use crate::ast::Events;
use crate::generics::inner_visibility;
use crate::names::{snake_ident, variant_hash};
use crate::shape::{
    bindings, enum_redact_impl, idents, own_fields, owned_struct, redact_impls, variant_fields,
    Paths,
};
use crate::strategy;

pub(crate) fn expand(ev: &Events<'_>) -> TokenStream {
    let paths = Paths::new(ev.attrs.krate.as_ref());
    let krate = &paths.krate;
    let private = &paths.private;
    let ident = ev.ident;
    let vis = ev.vis;
    let module = ev
        .attrs
        .module
        .clone()
        .unwrap_or_else(|| snake_ident(ident, ident.span()));
    let (impl_g, ty_g, wc) = ev.generics.split_for_impl();
    let enum_ty = quote!(#ident #ty_g);
    let names = ev.variants.iter().map(|v| v.ident.to_string());
    let empty = ev.variants.is_empty().then(|| quote!(match *self {}));
    // A raised event travels type-erased; only a type without parameters can be taken back
    // from `Any` (the impl cannot ask its parameters to be `'static`).
    let from_raised = ev.generics.params.is_empty().then(|| {
        quote! {
            #[inline]
            fn from_raised(
                raised: #krate::timer::TimerEvent,
            ) -> #private::core::result::Result<Self, #krate::timer::TimerEvent> {
                raised.downcast::<Self>()
            }

            // Storable when the type is also serde's: decided here, where it is concrete.
            #[inline]
            fn __stored() -> #private::core::option::Option<#private::EventCodec<Self>> {
                #[allow(unused_imports)]
                use #private::{PlainEvent as _, SerdeEvent as _};
                (&#private::Probe::<Self>::new()).stored()
            }
        }
    });

    let id_arms = ev.variants.iter().enumerate().map(|(i, v)| {
        let vi = v.ident;
        let i = i as u16;
        quote!(Self::#vi { .. } => #krate::EventId::new(#i),)
    });

    let inner = inner_visibility(vis);
    let payloads = ev.variants.iter().map(|v| {
        let doc = format!(
            "The payload of the `{}` event of [`{ident}`], as handlers receive it. Converts into the enum with `{ident}::from`.",
            v.ident
        );
        owned_struct(v, ev.generics, &inner, &doc, &paths)
    });

    let per_variant = ev.variants.iter().enumerate().map(|(i, v)| {
        let vi = v.ident;
        let i = i as u16;
        let h = variant_hash(&vi.to_string());
        let payload = quote!(#module::#vi #ty_g);
        let binds = bindings(v);
        let pat = variant_fields(v, &idents(&binds));
        let build = own_fields(
            v,
            ev.generics,
            &idents(&binds),
            quote!(#private::core::marker::PhantomData),
        );
        let from_payload: Vec<TokenStream> = v
            .fields
            .iter()
            .map(|f| {
                let m = &f.member;
                quote!(payload.#m)
            })
            .collect();
        let back = variant_fields(v, &from_payload);
        let redact = redact_impls(payload.clone(), ev.generics, v, &paths);
        // Only a variant without fields can be fired by a state timeout declared in a table.
        let unit = (v.style == crate::ast::Style::Unit).then(|| {
            quote! {
                #[automatically_derived]
                impl #impl_g #private::UnitVariant<#h> for #enum_ty #wc {
                    #[inline]
                    fn unit() -> Self {
                        #ident::#vi
                    }
                }
            }
        });
        quote! {
            #unit

            #[automatically_derived]
            impl #impl_g #private::Variant<#h> for #enum_ty #wc {
                type Payload = #payload;
                const ID: u16 = #i;
                #[inline(always)]
                #[allow(unreachable_patterns)]
                fn split(self) -> #private::core::result::Result<#payload, Self> {
                    match self {
                        Self::#vi #pat => #private::core::result::Result::Ok(#module::#vi #build),
                        other => #private::core::result::Result::Err(other),
                    }
                }
            }

            #[automatically_derived]
            impl #impl_g #private::Keyed for #payload #wc {
                type Key = #private::Key<#h>;
            }

            #[automatically_derived]
            impl #impl_g #private::core::convert::From<#payload> for #enum_ty #wc {
                #[inline]
                fn from(payload: #payload) -> Self {
                    let _ = &payload;
                    #ident::#vi #back
                }
            }

            #[automatically_derived]
            impl #impl_g #private::core::convert::TryFrom<#enum_ty> for #payload #wc {
                type Error = #enum_ty;
                #[inline]
                fn try_from(event: #enum_ty) -> #private::core::result::Result<Self, #enum_ty> {
                    <#enum_ty as #private::Variant<#h>>::split(event)
                }
            }

            #redact
        }
    });

    let variants: Vec<_> = ev.variants.iter().collect();
    let redact = enum_redact_impl(ident, ev.generics, &variants, &paths);
    let strategies = strategy::expand(ident, ev.generics, &variants, &paths);
    let module_doc = format!(
        "Payload types of the events of [`{ident}`], one per variant (generated by `#[derive(Event)]`)."
    );

    quote! {
        #[doc = #module_doc]
        #vis mod #module {
            #[allow(unused_imports)]
            use super::*;
            #(#payloads)*
        }

        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #impl_g #krate::Event for #enum_ty #wc {
                const NAMES: &'static [&'static str] = &[#(#names),*];
                #[inline]
                fn id(&self) -> #krate::EventId {
                    #empty
                    match self { #(#id_arms)* }
                }
                #from_raised
            }

            #redact

            #strategies

            #(#per_variant)*
        };
    }
}
