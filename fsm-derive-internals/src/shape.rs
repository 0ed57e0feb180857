//! Code shared by both derives for turning a variant into a type of its own: the struct
//! definition, moving fields between the variant and the struct, and redacted formatting.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Generics, Ident, Member};

use crate::ast::{Style, Variant};
use crate::generics::{marker_type, needs_marker, view_lifetime, with_bounds, with_view_lifetime};

/// Paths the generated code uses.
pub(crate) struct Paths {
    pub(crate) krate: TokenStream,
    pub(crate) private: TokenStream,
}

impl Paths {
    pub(crate) fn new(krate: Option<&syn::Path>) -> Self {
        let krate = krate.map_or_else(|| quote!(::fsm_core), |p| quote!(#p));
        let private = quote!(#krate::__private);
        Paths { krate, private }
    }
}

/// The local names a variant's fields are bound to: `__fsm_f0`, `__fsm_f1`, ...
pub(crate) fn bindings(v: &Variant<'_>) -> Vec<Ident> {
    (0..v.fields.len())
        .map(|i| format_ident!("__fsm_f{}", i))
        .collect()
}

/// `{ a: x0, b: x1 }` / `(x0, x1)` / nothing, with the given expressions, plus a marker.
fn fields_with(
    v: &Variant<'_>,
    values: &[TokenStream],
    marker: Option<TokenStream>,
) -> TokenStream {
    match v.style {
        Style::Named => {
            let names = v.fields.iter().map(|f| &f.member);
            let marker = marker.map(|m| quote!(__marker: #m,));
            quote!({ #(#names: #values,)* #marker })
        }
        Style::Tuple | Style::Unit if values.is_empty() && marker.is_none() => quote!(),
        Style::Tuple | Style::Unit => quote!((#(#values,)* #marker)),
    }
}

/// A pattern or constructor for the enum's own variant `Path::Variant{..}` with bindings.
pub(crate) fn variant_fields(v: &Variant<'_>, values: &[TokenStream]) -> TokenStream {
    fields_with(v, values, None)
}

/// A constructor or pattern for a generated type (typed state, view, payload) from values; adds
/// the marker when the enum's generics need one.
pub(crate) fn own_fields(
    v: &Variant<'_>,
    g: &Generics,
    values: &[TokenStream],
    marker_value: TokenStream,
) -> TokenStream {
    let marker = needs_marker(g).then_some(marker_value);
    fields_with(v, values, marker)
}

/// `self.a` / `self.0` for each field.
pub(crate) fn self_fields(v: &Variant<'_>) -> Vec<TokenStream> {
    v.fields
        .iter()
        .map(|f| {
            let m = &f.member;
            quote!(self.#m)
        })
        .collect()
}

/// Binding idents as token streams.
pub(crate) fn idents(ids: &[Ident]) -> Vec<TokenStream> {
    ids.iter().map(|i| quote!(#i)).collect()
}

/// The owned struct for a variant, in the generated module: public fields with the variant's
/// docs, plus a hidden marker when the enum is generic. A unit variant gets `Clone, Copy`.
pub(crate) fn owned_struct(
    v: &Variant<'_>,
    g: &Generics,
    vis: &TokenStream,
    doc: &str,
    paths: &Paths,
) -> TokenStream {
    let ident = v.ident;
    let (_, _, where_clause) = g.split_for_impl();
    let params = &g.params;
    let variant_docs = v.original.attrs.iter().filter(|a| a.path().is_ident("doc"));
    let body = struct_body(v, g, paths, |f| {
        let ty = f.ty;
        quote!(#ty)
    });
    let decl = struct_decl(v.style, vis, ident, params, where_clause, body);
    let unit_derive = unit_copy(v, g, paths);
    quote! {
        #[doc = #doc]
        #[doc = ""]
        #(#variant_docs)*
        #decl
        #unit_derive
    }
}

/// `vis struct Name<..> where .. { .. }` or `vis struct Name<..>(..) where ..;`: the where
/// clause goes before a braced body and after a tuple body.
fn struct_decl(
    style: Style,
    vis: &TokenStream,
    ident: &Ident,
    params: &syn::punctuated::Punctuated<syn::GenericParam, syn::Token![,]>,
    where_clause: Option<&syn::WhereClause>,
    body: TokenStream,
) -> TokenStream {
    if style == Style::Named {
        quote!(#vis struct #ident <#params> #where_clause #body)
    } else {
        quote!(#vis struct #ident <#params> #body #where_clause;)
    }
}

/// `Clone + Copy` for a field-less generated type (the derives would demand `T: Copy`).
fn unit_copy(v: &Variant<'_>, g: &Generics, paths: &Paths) -> TokenStream {
    if !v.fields.is_empty() {
        return quote!();
    }
    let ident = v.ident;
    let private = &paths.private;
    let (impl_g, ty_g, wc) = g.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_g #private::core::clone::Clone for #ident #ty_g #wc {
            #[inline]
            fn clone(&self) -> Self { *self }
        }
        #[automatically_derived]
        impl #impl_g #private::core::marker::Copy for #ident #ty_g #wc {}
    }
}

/// The view struct `XRef<'fsm, ..>` of a state with fields: a reference per field.
pub(crate) fn view_struct(
    v: &Variant<'_>,
    g: &Generics,
    vis: &TokenStream,
    view: &Ident,
    paths: &Paths,
) -> TokenStream {
    let lt = view_lifetime();
    let vg = with_view_lifetime(g);
    let (impl_g, ty_g, where_clause) = vg.split_for_impl();
    let params = &vg.params;
    let body = struct_body(v, g, paths, |f| {
        let ty = f.ty;
        quote!(&#lt #ty)
    });
    let state = v.ident;
    let doc = format!(
        "A borrowed view of the [`{state}`] state's data: what handlers and invariants receive."
    );
    let private = &paths.private;
    let decl = struct_decl(v.style, vis, view, params, where_clause, body);
    quote! {
        #[doc = #doc]
        #decl
        #[automatically_derived]
        impl #impl_g #private::core::clone::Clone for #view #ty_g #where_clause {
            #[inline]
            fn clone(&self) -> Self { *self }
        }
        #[automatically_derived]
        impl #impl_g #private::core::marker::Copy for #view #ty_g #where_clause {}
    }
}

fn struct_body(
    v: &Variant<'_>,
    g: &Generics,
    paths: &Paths,
    ty: impl Fn(&crate::ast::Field<'_>) -> TokenStream,
) -> TokenStream {
    let marker = needs_marker(g).then(|| marker_type(g, &paths.private));
    match v.style {
        Style::Named => {
            let fields = v.fields.iter().map(|f| {
                let docs = &f.docs;
                let name = &f.member;
                let t = ty(f);
                let doc = (f.docs.is_empty()).then(|| {
                    let d = format!("Field `{}` of the state.", quote!(#name));
                    quote!(#[doc = #d])
                });
                quote!(#(#docs)* #doc pub #name: #t)
            });
            let marker = marker.map(|m| quote!(#[doc(hidden)] pub __marker: #m,));
            quote!({ #(#fields,)* #marker })
        }
        Style::Tuple | Style::Unit => {
            if v.fields.is_empty() && marker.is_none() {
                return quote!();
            }
            let fields = v.fields.iter().map(|f| {
                let t = ty(f);
                quote!(pub #t)
            });
            let marker = marker.map(|m| quote!(#[doc(hidden)] pub #m,));
            quote!((#(#fields,)* #marker))
        }
    }
}

/// The body of `fmt_redacted` for one variant, given an expression for each field (a reference
/// or something that derefs to one).
pub(crate) fn fmt_redacted(
    name: &Ident,
    v: &Variant<'_>,
    values: &[TokenStream],
    paths: &Paths,
) -> TokenStream {
    let private = &paths.private;
    let name = name.to_string();
    let field_values = v.fields.iter().zip(values).map(|(f, value)| {
        if f.sensitive {
            quote!(#private::HIDDEN)
        } else {
            quote!(&#value)
        }
    });
    match v.style {
        Style::Unit => quote!(__fsm_f.write_str(#name)),
        Style::Tuple => quote! {
            __fsm_f.debug_tuple(#name) #(.field(#field_values))* .finish()
        },
        Style::Named => {
            let names = v.fields.iter().map(|f| match &f.member {
                Member::Named(id) => id.to_string().trim_start_matches("r#").to_string(),
                Member::Unnamed(i) => i.index.to_string(),
            });
            quote! {
                __fsm_f.debug_struct(#name) #(.field(#names, #field_values))* .finish()
            }
        }
    }
}

/// Generics with `Ty: Debug` for every field that is printed (not sensitive).
pub(crate) fn debug_bounds<'a>(
    g: &Generics,
    variants: impl IntoIterator<Item = &'a Variant<'a>>,
    paths: &Paths,
) -> Generics {
    let private = &paths.private;
    let types: Vec<&syn::Type> = variants
        .into_iter()
        .flat_map(|v| v.fields.iter().filter(|f| !f.sensitive).map(|f| f.ty))
        .collect();
    with_bounds(g, types, &quote!(#private::core::fmt::Debug))
}

/// `Redact` and a redacting `Debug` for a generated type (typed state, view or payload).
pub(crate) fn redact_impls(
    ty: TokenStream,
    g: &Generics,
    v: &Variant<'_>,
    paths: &Paths,
) -> TokenStream {
    let krate = &paths.krate;
    let private = &paths.private;
    let bounded = debug_bounds(g, [v], paths);
    let (impl_g, _, wc) = bounded.split_for_impl();
    let body = fmt_redacted(v.ident, v, &self_fields(v), paths);
    quote! {
        #[automatically_derived]
        impl #impl_g #krate::Redact for #ty #wc {
            fn fmt_redacted(&self, __fsm_f: &mut #private::core::fmt::Formatter<'_>) -> #private::core::fmt::Result {
                #body
            }
        }
        #[automatically_derived]
        impl #impl_g #private::core::fmt::Debug for #ty #wc {
            fn fmt(&self, __fsm_f: &mut #private::core::fmt::Formatter<'_>) -> #private::core::fmt::Result {
                #krate::Redact::fmt_redacted(self, __fsm_f)
            }
        }
    }
}

/// `Redact` for the enum itself (states or events): one arm per variant.
pub(crate) fn enum_redact_impl(
    ident: &Ident,
    g: &Generics,
    variants: &[&Variant<'_>],
    paths: &Paths,
) -> TokenStream {
    let krate = &paths.krate;
    let private = &paths.private;
    let bounded = debug_bounds(g, variants.iter().copied(), paths);
    let (impl_g, _, wc) = bounded.split_for_impl();
    let (_, ty_g, _) = g.split_for_impl();
    let arms = variants.iter().map(|v| {
        let binds = bindings(v);
        let pat = variant_fields(v, &idents(&binds));
        let values: Vec<TokenStream> = binds.iter().map(|b| quote!(*#b)).collect();
        let body = fmt_redacted(v.ident, v, &values, paths);
        let vi = v.ident;
        quote!(Self::#vi #pat => #body,)
    });
    let empty = variants.is_empty().then(|| quote!(match *self {}));
    quote! {
        #[automatically_derived]
        impl #impl_g #krate::Redact for #ident #ty_g #wc {
            fn fmt_redacted(&self, __fsm_f: &mut #private::core::fmt::Formatter<'_>) -> #private::core::fmt::Result {
                #empty
                match self { #(#arms)* }
            }
        }
    }
}
