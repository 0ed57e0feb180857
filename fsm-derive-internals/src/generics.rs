//! Generic parameters of the generated types. Every typed state, view and event payload
//! carries all of the enum's parameters, with a marker field when there are any, so that each
//! can name its machine.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{GenericParam, Generics, Lifetime, LifetimeParam, Type, WherePredicate};

/// The lifetime of views.
pub(crate) fn view_lifetime() -> Lifetime {
    Lifetime::new("'fsm", proc_macro2::Span::call_site())
}

/// Whether the generics have a type or lifetime parameter (which then needs a marker).
pub(crate) fn needs_marker(g: &Generics) -> bool {
    g.params
        .iter()
        .any(|p| matches!(p, GenericParam::Type(_) | GenericParam::Lifetime(_)))
}

/// `PhantomData<fn() -> (T, &'a (), ..)>`, which uses every parameter without owning it.
pub(crate) fn marker_type(g: &Generics, private: &TokenStream) -> TokenStream {
    let parts = g.params.iter().filter_map(|p| match p {
        GenericParam::Type(t) => {
            let id = &t.ident;
            Some(quote!(#id))
        }
        GenericParam::Lifetime(l) => {
            let lt = &l.lifetime;
            Some(quote!(&#lt ()))
        }
        GenericParam::Const(_) => None,
    });
    quote!(#private::core::marker::PhantomData<fn() -> (#(#parts,)*)>)
}

/// The generics with the view lifetime added in front.
pub(crate) fn with_view_lifetime(g: &Generics) -> Generics {
    let mut g = g.clone();
    g.params.insert(
        0,
        GenericParam::Lifetime(LifetimeParam::new(view_lifetime())),
    );
    g
}

/// The generics with extra where-predicates, `Ty: Bound` for each given type.
pub(crate) fn with_bounds<'a>(
    g: &Generics,
    types: impl IntoIterator<Item = &'a Type>,
    bound: &TokenStream,
) -> Generics {
    let mut g = g.clone();
    let wc = g.make_where_clause();
    for ty in types {
        let p: WherePredicate = syn::parse_quote!(#ty: #bound);
        wc.predicates.push(p);
    }
    g
}

/// The visibility, inside the generated module, that equals `vis` outside of it: types in the
/// module must be exactly as visible as the enum, or rustc sees a private type (the enum) in
/// the public interface of a trait impl.
pub(crate) fn inner_visibility(vis: &syn::Visibility) -> TokenStream {
    match vis {
        syn::Visibility::Public(_) => quote!(pub),
        syn::Visibility::Inherited => quote!(pub(super)),
        syn::Visibility::Restricted(r) => {
            let path = &r.path;
            let first = path.segments.first().map(|s| s.ident.to_string());
            match first.as_deref() {
                Some("crate") if path.segments.len() == 1 => quote!(pub(crate)),
                Some("self") if path.segments.len() == 1 => quote!(pub(super)),
                Some("self") => {
                    let rest = path.segments.iter().skip(1);
                    quote!(pub(in super #(::#rest)*))
                }
                Some("super") => quote!(pub(in super::#path)),
                // `crate::a::b` and `::a::b` mean the same inside the module.
                _ => quote!(pub(in #path)),
            }
        }
    }
}
