//! Code generation for `#[derive(StateMachine)]`. Only writes code; every error was reported
//! by `check` before this runs.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, Type};

use crate::ast::{Machine, State};
use crate::attr::{Declared, PolicyKind};
use crate::generics::{inner_visibility, with_view_lifetime};
use crate::lower::{lower, Hook, Ir, Kind, Plan};
use crate::names::{bare, snake_ident, variant_hash};
use crate::shape::{
    bindings, enum_redact_impl, idents, own_fields, owned_struct, redact_impls, self_fields,
    variant_fields, view_struct, Paths,
};
use crate::strategy;

mod fallback;
pub(crate) use fallback::fallback;

/// Everything the expansion of one machine needs, computed once.
struct Gen<'m, 'a> {
    m: &'m Machine<'a>,
    /// Every transition's plan.
    ir: Ir<'m>,
    paths: Paths,
    module: Ident,
    event: &'m Type,
    effect: TokenStream,
}

pub(crate) fn expand(m: &Machine<'_>) -> TokenStream {
    let Some(g) = Gen::new(m) else {
        // `check` reported the missing event type; nothing sensible can be generated.
        return quote!();
    };
    let module = g.module_items();
    let machine = g.machine_impl();
    let redact = g.redact_impl();
    let variants: Vec<_> = m.states.iter().map(|s| &s.variant).collect();
    let strategies = strategy::expand(m.ident, m.generics, &variants, &g.paths);
    let per_state = m
        .states
        .iter()
        .enumerate()
        .map(|(i, s)| g.state_impls(i, s));
    let names = g.name_checks();
    let initial = g.initial_state();
    let within = g.superstate_queries();
    quote! {
        #module
        #[doc(hidden)]
        const _: () = {
            #names
            #initial
            #within
            #machine
            #redact
            #strategies
            #(#per_state)*
        };
    }
}

impl<'m, 'a> Gen<'m, 'a> {
    /// The generator for `m`, if it names its event type.
    fn new(m: &'m Machine<'a>) -> Option<Self> {
        let event = m.attrs.event.as_ref()?;
        Some(Gen {
            m,
            ir: lower(m),
            paths: Paths::new(m.attrs.krate.as_ref()),
            module: m
                .attrs
                .module
                .clone()
                .unwrap_or_else(|| snake_ident(m.ident, m.ident.span())),
            event,
            effect: m
                .attrs
                .effect
                .as_ref()
                .map_or_else(|| quote!(()), |t| quote!(#t)),
        })
    }
}

impl Gen<'_, '_> {
    /// `<Events as Variant<key>>` for an event name, spanned at the name so that an unknown
    /// event is reported there.
    ///
    /// The key is the name's hash. For an event type without generic arguments it goes
    /// through a const of its own (see [`Gen::name_checks`]) whose body names the variant
    /// (`Cmd::Toggle { .. }`): a misspelt name is then one error, rustc's own "no variant named
    /// `Toggel`, there is a variant with a similar name: `Toggle`", and every use of the const
    /// is an error already reported, which rustc does not report again.
    fn variant(&self, event: &Ident) -> TokenStream {
        let e = self.event;
        let private = &self.paths.private;
        let key = self.key(event);
        // Every token at the event's name, so that rustc reports an unknown event there.
        respan(quote!(<#e as #private::Variant<#key>>), event.span())
    }

    /// The key an event name is looked up by: its checked const (see [`Gen::name_checks`])
    /// for an event type without generic arguments, else the name's hash.
    fn key(&self, event: &Ident) -> TokenStream {
        match self.event_path() {
            Some(_) => {
                let c = name_const(event);
                quote!(#c)
            }
            None => {
                let h = variant_hash(&event.to_string());
                quote!(#h)
            }
        }
    }

    /// The id (`u16`) of event `event`: for an event type without generic arguments the
    /// const [`Gen::name_checks`] defines once per name, so that the many uses (the table, the
    /// dispatch, the typestate methods) are plain constants and not each a trait projection
    /// for rustc to resolve; else `<Events as Variant<key>>::ID`.
    fn id(&self, event: &Ident) -> TokenStream {
        self.resolved(event, id_const, quote!(ID))
    }

    /// The payload type of event `event`, through an alias defined once per name like
    /// [`Gen::id`].
    fn payload(&self, event: &Ident) -> TokenStream {
        self.resolved(event, payload_alias, quote!(Payload))
    }

    /// The per-name item `local(event)` where [`Gen::name_checks`] defines one, else the
    /// projection `<Events as Variant<key>>::member`.
    fn resolved(
        &self,
        event: &Ident,
        local: fn(&Ident) -> Ident,
        member: TokenStream,
    ) -> TokenStream {
        if self.event_path().is_some() {
            let item = local(event);
            return quote!(#item);
        }
        let variant = self.variant(event);
        quote!(#variant::#member)
    }

    /// The event type as a path a pattern can name variants through, if it has no generic
    /// arguments (a const cannot name a machine's type parameters).
    fn event_path(&self) -> Option<&syn::Path> {
        match self.event {
            Type::Path(tp)
                if tp.qself.is_none()
                    && tp
                        .path
                        .segments
                        .iter()
                        .all(|s| matches!(s.arguments, syn::PathArguments::None)) =>
            {
                Some(&tp.path)
            }
            _ => None,
        }
    }

    /// One const per event name the table mentions, holding its hash, whose body checks that
    /// the event enum has a variant of that name (spanned at the name's first mention).
    fn name_checks(&self) -> TokenStream {
        let Some(path) = self.event_path() else {
            return quote!();
        };
        let private = &self.paths.private;
        let mut seen: Vec<String> = Vec::new();
        let mut out = TokenStream::new();
        let names = self.m.states.iter().flat_map(|s| {
            let on = s.attrs.on.iter().map(|o| &o.event);
            let policies = s.attrs.policies.iter().filter_map(|p| p.event.as_ref());
            let timeouts = s.attrs.timeouts.iter().map(|t| &t.event);
            on.chain(policies).chain(timeouts)
        });
        for name in names {
            // `r#Next` and `Next` are one name, and one set of consts.
            let text = bare(name);
            if seen.contains(&text) {
                continue;
            }
            let c = name_const(name);
            let h = variant_hash(&text);
            let pattern = quote!(#path::#name { .. });
            let id = id_const(name);
            let payload = payload_alias(name);
            let variant = self.variant(name);
            out.extend(quote! {
                #[allow(non_upper_case_globals)]
                // The name is checked in the const's own body, so that a name the event enum
                // lacks leaves the const (and every item keyed by it) an error, not a hash
                // that two impls could both be keyed by.
                const #c: u64 = match #private::core::option::Option::<&#path>::None {
                    #private::core::option::Option::Some(#pattern) => #h,
                    _ => #h,
                };
                #[allow(non_upper_case_globals)]
                const #id: u16 = #variant::ID;
                #[allow(non_camel_case_types)]
                type #payload = #variant::Payload;
            });
            seen.push(text);
        }
        out
    }

    /// The hidden trait through which the forwarder of the transition `on` from state `s`
    /// calls the user's handler. It holds for every type with that `Handler` impl; its own
    /// `on_unimplemented` turns a missing handler into one error, at the `on(..)`, whose note
    /// is the impl to write with every path spelt out (rustc's printing of the types would
    /// drop the modules, and the pasted code would not compile).
    fn need_handler(&self, s: &State<'_>, on: &crate::attr::OnAttr) -> TokenStream {
        let krate = &self.paths.krate;
        let need = need_trait(s.variant.ident, &on.event);
        let module = &self.module;
        let from = s.variant.ident;
        let to = &on.target;
        let state_param = if s.variant.fields.is_empty() {
            format!("{module}::{from}")
        } else {
            format!("{module}::{from}Ref<'_>")
        };
        let event_module = self.event_module();
        let krate_text = tidy(&krate.to_string());
        let krate_text = krate_text.trim_start_matches("::");
        let effect = tidy(&self.effect.to_string());
        let message = format!(
            "missing handler: state `{from}` declares a transition on `{}` into `{to}` but has no handler for it",
            on.event
        );
        let note = format!(
            "write `impl {krate_text}::Handler<{event_module}{ev}, {module}::{to}> for {module}::{from} {{{{ fn handle(state: {state_param}, event: {event_module}{ev}, effects: &mut {krate_text}::Effects<{effect}>) -> Result<{module}::{to}, {krate_text}::Refusal> {{{{ .. }}}} }}}}`, or name a function in the table (`on({ev} => {to}, with = function)`), or mark the transition `plain` if it needs no handler",
            ev = on.event
        );
        quote! {
            #[diagnostic::on_unimplemented(
                message = #message,
                label = "this transition needs a handler",
                note = #note
            )]
            #[doc(hidden)]
            #[allow(non_camel_case_types)]
            trait #need<__FsmE, __FsmT: #krate::TypedState>: #krate::TypedState {
                fn __fsm_handle<'__fsm_v>(
                    view: <Self as #krate::TypedState>::Ref<'__fsm_v>,
                    event: __FsmE,
                    effects: &mut #krate::Effects<#krate::EffectOf<Self>>,
                ) -> ::core::result::Result<__FsmT, #krate::Refusal>
                where
                    Self: '__fsm_v;
            }

            // Not recommended: rustc then reports the missing handler as this trait's own
            // message (at the `on(..)`), not as a bound of this impl to write by hand.
            #[automatically_derived]
            #[diagnostic::do_not_recommend]
            impl<__FsmS, __FsmE, __FsmT> #need<__FsmE, __FsmT> for __FsmS
            where
                __FsmS: #krate::Handler<__FsmE, __FsmT>,
                __FsmT: #krate::TypedState,
            {
                #[inline(always)]
                fn __fsm_handle<'__fsm_v>(
                    view: <Self as #krate::TypedState>::Ref<'__fsm_v>,
                    event: __FsmE,
                    effects: &mut #krate::Effects<#krate::EffectOf<Self>>,
                ) -> ::core::result::Result<__FsmT, #krate::Refusal>
                where
                    Self: '__fsm_v,
                {
                    <Self as #krate::Handler<__FsmE, __FsmT>>::handle(view, event, effects)
                }
            }
        }
    }

    /// The path prefix of the event enum's payload types, `order_cmd::`, as the event derive
    /// names its module by default (a module renamed there is not known here).
    fn event_module(&self) -> String {
        let Type::Path(tp) = self.event else {
            return String::new();
        };
        let segments: Vec<&Ident> = tp.path.segments.iter().map(|s| &s.ident).collect();
        let Some((last, prefix)) = segments.split_last() else {
            return String::new();
        };
        let module = snake_ident(last, last.span());
        let mut out: String = prefix.iter().map(|p| format!("{p}::")).collect();
        out.push_str(&format!("{module}::"));
        out
    }

    /// The typed state's type, `order::Submitted<T>`.
    fn typed(&self, state: &Ident) -> TokenStream {
        let module = &self.module;
        let (_, ty_g, _) = self.m.generics.split_for_impl();
        quote!(#module::#state #ty_g)
    }

    fn view_ident(state: &State<'_>) -> Ident {
        format_ident!("{}Ref", state.variant.ident)
    }

    /// The view's type with the given lifetime (a unit state is its own view).
    fn view_type(&self, state: &State<'_>, lifetime: &TokenStream) -> TokenStream {
        if state.variant.fields.is_empty() {
            return self.typed(state.variant.ident);
        }
        let module = &self.module;
        let view = Self::view_ident(state);
        let params = self.m.generics.params.iter().map(|p| match p {
            syn::GenericParam::Type(t) => {
                let i = &t.ident;
                quote!(#i)
            }
            syn::GenericParam::Lifetime(l) => {
                let l = &l.lifetime;
                quote!(#l)
            }
            syn::GenericParam::Const(c) => {
                let i = &c.ident;
                quote!(#i)
            }
        });
        quote!(#module::#view<#lifetime, #(#params),*>)
    }

    /// An expression building the view (or unit typed state) from the given field values.
    fn view_expr(&self, state: &State<'_>, values: &[TokenStream]) -> TokenStream {
        let module = &self.module;
        let private = &self.paths.private;
        let name = if state.variant.fields.is_empty() {
            state.variant.ident.clone()
        } else {
            Self::view_ident(state)
        };
        let fields = own_fields(
            &state.variant,
            self.m.generics,
            values,
            quote!(#private::core::marker::PhantomData),
        );
        quote!(#module::#name #fields)
    }

    fn module_items(&self) -> TokenStream {
        let m = self.m;
        let vis = m.vis;
        let module = &self.module;
        let machine = m.ident;
        let inner = inner_visibility(vis);
        let items = m.states.iter().map(|s| {
            let v = &s.variant;
            let doc = format!(
                "The `{}` state of [`{machine}`] as a type of its own. Convert with `{machine}::from` and `TryFrom<{machine}>`; each declared transition is a method.",
                v.ident
            );
            let owned = owned_struct(v, m.generics, &inner, &doc, &self.paths);
            let view = (!v.fields.is_empty())
                .then(|| view_struct(v, m.generics, &inner, &Self::view_ident(s), &self.paths));
            quote!(#owned #view)
        });
        let doc = format!(
            "Typed states of [`{machine}`]: one type per state, with its declared transitions as methods (generated by `#[derive(StateMachine)]`)."
        );
        quote! {
            #[doc = #doc]
            #vis mod #module {
                #[allow(unused_imports)]
                use super::*;
                #(#items)*
            }
        }
    }

    fn table(&self) -> TokenStream {
        let m = self.m;
        let krate = &self.paths.krate;
        let e = self.event;
        let name = m.ident.to_string();
        let h = &m.hierarchy;
        let states = m.states.iter().enumerate().map(|(k, s)| {
            let n = s.variant.ident.to_string();
            let mut meta = quote!(#krate::StateMeta::new(#n));
            if let Some(p) = h.parent_of.get(k).copied().flatten() {
                let p = p as u16;
                meta = quote!(#meta.within(#p));
            }
            if !s.attrs.terminal.is_empty() {
                meta = quote!(#meta.terminal());
            }
            if !s.attrs.validate.is_empty() {
                meta = quote!(#meta.validated());
            }
            let named: Vec<TokenStream> = s
                .attrs
                .policies
                .iter()
                .filter_map(|p| {
                    let ev = p.event.as_ref()?;
                    let id = self.id(ev);
                    let policy = policy(krate, p.kind);
                    Some(quote!((#krate::EventId::new(#id), #policy)))
                })
                .collect();
            if !named.is_empty() {
                meta = quote!(#meta.policies(&[#(#named),*]));
            }
            if let Some(p) = s.attrs.policies.iter().find(|p| p.event.is_none()) {
                let policy = policy(krate, p.kind);
                meta = quote!(#meta.otherwise(#policy));
            }
            if let Some(t) = s.attrs.timeouts.first() {
                let ms = self.timeout_ms(t);
                let id = self.id(&t.event);
                meta = quote!(#meta.timeout(#ms, #id));
            }
            meta
        });
        let transitions = self.ir.states.iter().enumerate().flat_map(|(i, plans)| {
            plans.iter().map(move |p| {
                let from = i as u16;
                let to = p.to();
                let id = self.id(&p.on.event);
                let meta = match p.on.declared {
                    Declared::State => quote!(#krate::TransitionMeta::new(#from, #id, #to)),
                    Declared::Superstate(sup) => {
                        let sup = sup as u16;
                        quote!(#krate::TransitionMeta::new(#from, #id, #to).inherited_from(#sup))
                    }
                    Declared::AnyState => {
                        quote!(#krate::TransitionMeta::new(#from, #id, #to).from_any_state())
                    }
                };
                match p.reenters {
                    Some(sup) => {
                        let sup = sup as u16;
                        quote!(#meta.reentering(#sup))
                    }
                    None => meta,
                }
            })
        });
        let initial = m
            .states
            .iter()
            .position(|s| !s.attrs.initial.is_empty())
            .unwrap_or(0) as u16;
        let superstates = (!h.is_flat()).then(|| {
            let metas = h.superstates.iter().map(|sup| {
                let n = bare(&sup.name);
                let initial = sup.initial as u16;
                let mut meta = quote!(#krate::SuperstateMeta::new(#n, #initial));
                if let Some(p) = sup.parent {
                    let p = p as u16;
                    meta = quote!(#meta.within(#p));
                }
                if let Some(t) = &sup.timeout {
                    let ms = self.timeout_ms(t);
                    let id = self.id(&t.event);
                    meta = quote!(#meta.timeout(#ms, #id));
                }
                meta
            });
            quote!(.with_superstates(&[#(#metas),*]))
        });
        quote! {
            &#krate::Table::new(
                #name,
                &[#(#states),*],
                <#e as #krate::Event>::NAMES,
                &[#(#transitions),*],
                #initial,
            )#superstates
        }
    }

    fn machine_impl(&self) -> TokenStream {
        let m = self.m;
        let krate = &self.paths.krate;
        let private = &self.paths.private;
        let ident = m.ident;
        let e = self.event;
        let f = &self.effect;
        let (impl_g, ty_g, wc) = m.generics.split_for_impl();
        let table = self.table();
        let state_arms = m.states.iter().enumerate().map(|(i, s)| {
            let v = s.variant.ident;
            let i = i as u16;
            quote!(Self::#v { .. } => #krate::StateId::new(#i))
        });
        let next_arms = m
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| self.next_arm(i, s));
        let validate_arms = m
            .states
            .iter()
            .filter(|s| !s.attrs.validate.is_empty())
            .map(|s| {
                let v = &s.variant;
                let ident = v.ident;
                let binds = bindings(v);
                let pat = variant_fields(v, &idents(&binds));
                let view = self.view_expr(s, &idents(&binds));
                let typed = self.typed(ident);
                quote!(Self::#ident #pat => #private::validate::<#typed>(#view))
            });
        let timeout_arms: Vec<TokenStream> = m
            .states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let t = s.attrs.timeouts.first()?;
                let i = i as u16;
                let unit = self.unit_event(&t.event);
                Some(quote!(#i => #private::core::option::Option::Some(#unit),))
            })
            .collect();
        let timeout_event = (!timeout_arms.is_empty()).then(|| {
            quote! {
                fn timeout_event(__fsm_state: #krate::StateId) -> #private::core::option::Option<#e> {
                    match __fsm_state.index() as u16 {
                        #(#timeout_arms)*
                        _ => #private::core::option::Option::None,
                    }
                }
            }
        });
        let super_timeout_arms: Vec<TokenStream> = m
            .hierarchy
            .superstates
            .iter()
            .enumerate()
            .filter_map(|(i, sup)| {
                let t = sup.timeout.as_ref()?;
                let unit = self.unit_event(&t.event);
                Some(quote!(#i => #private::core::option::Option::Some(#unit),))
            })
            .collect();
        let super_timeout_event = (!super_timeout_arms.is_empty()).then(|| {
            quote! {
                fn superstate_timeout_event(__fsm_superstate: usize) -> #private::core::option::Option<#e> {
                    match __fsm_superstate {
                        #(#super_timeout_arms)*
                        _ => #private::core::option::Option::None,
                    }
                }
            }
        });
        let sensitive_arms: Vec<TokenStream> = m
            .states
            .iter()
            .filter(|s| s.variant.fields.iter().any(|f| f.sensitive))
            .map(|s| {
                let v = &s.variant;
                let ident = v.ident;
                let binds = bindings(v);
                let pat = variant_fields(v, &idents(&binds));
                let visits = v
                    .fields
                    .iter()
                    .zip(&binds)
                    .filter(|(f, _)| f.sensitive)
                    .map(|(f, bind)| {
                        let name = match &f.member {
                            syn::Member::Named(id) => {
                                id.to_string().trim_start_matches("r#").to_string()
                            }
                            syn::Member::Unnamed(i) => i.index.to_string(),
                        };
                        // Spanned at the field's type: a type that cannot be sealed is
                        // reported there.
                        let coerce =
                            respan(quote!(#bind as &mut dyn #private::SealField), f.ty.span());
                        quote!(__fsm_visit.field(#name, #coerce)?;)
                    });
                quote!(Self::#ident #pat => { #(#visits)* })
            })
            .collect();
        let sensitive_states: Vec<TokenStream> = m
            .states
            .iter()
            .filter(|s| s.variant.fields.iter().any(|f| f.sensitive))
            .map(|s| {
                let ident = s.variant.ident;
                quote!(Self::#ident { .. })
            })
            .collect();
        let sensitive_fields = (!sensitive_arms.is_empty()).then(|| {
            quote! {
                #[inline]
                fn __has_sensitive_fields(&self) -> bool {
                    #[allow(unreachable_patterns)]
                    match self {
                        #(#sensitive_states)|* => true,
                        _ => false,
                    }
                }

                #[allow(unused_variables, unreachable_patterns)]
                fn __sensitive_fields(
                    &mut self,
                    __fsm_visit: &mut dyn #private::SealVisit,
                ) -> #private::core::result::Result<(), #private::String> {
                    match self {
                        #(#sensitive_arms)*
                        _ => {}
                    }
                    #private::core::result::Result::Ok(())
                }
            }
        });
        let apply_into = self.apply_into();
        let empty = if m.states.is_empty() {
            quote!(match *self {})
        } else {
            quote!()
        };
        quote! {
            #[automatically_derived]
            impl #impl_g #krate::StateMachine for #ident #ty_g #wc {
                type Event = #e;
                type Effect = #f;
                const TABLE: &'static #krate::Table = #table;

                #[inline]
                fn state(&self) -> #krate::StateId {
                    #empty
                    match self { #(#state_arms,)* }
                }

                #[inline]
                fn next(
                    &self,
                    __fsm_event: #e,
                    __fsm_effects: &mut #krate::Effects<#f>,
                ) -> #private::core::result::Result<(Self, #krate::Transition), #krate::Rejection> {
                    match self { #(#next_arms)* }
                }

                #apply_into

                #timeout_event
                #super_timeout_event

                fn validate(&self) -> #private::core::result::Result<(), #krate::InvalidState> {
                    #[allow(unreachable_patterns)]
                    match self {
                        #(#validate_arms,)*
                        _ => #private::core::result::Result::Ok(()),
                    }
                }

                #sensitive_fields
            }
        }
    }

    /// `apply_into` for a machine with direct transitions (see [`Kind::Direct`]): each of
    /// them writes its target in place and returns, the way a hand-written `match` on `*self`
    /// would, instead of building `(Self, Transition)` for the default body to move into
    /// `self`. A state whose transitions are all direct (or which has none) also rejects in
    /// place; anything else falls through to the default body. `None` when no transition is
    /// direct: the default is then exactly right and the machine's code does not grow.
    fn apply_into(&self) -> Option<TokenStream> {
        let m = self.m;
        if !self.ir.any_direct() {
            return None;
        }
        if let Some(packed) = self.packed_apply_into() {
            return Some(packed);
        }
        let krate = &self.paths.krate;
        let private = &self.paths.private;
        let e = self.event;
        let f = &self.effect;
        let arms = m.states.iter().zip(&self.ir.states).enumerate().filter_map(|(i, (s, plans))| {
            let ident = s.variant.ident;
            let all_direct = plans.iter().all(Plan::is_direct);
            let i = i as u16;
            let tries: Vec<TokenStream> = plans
                .iter()
                .filter(|p| p.is_direct())
                .map(|p| {
                    let id = self.id(&p.on.event);
                    let target = &p.on.target;
                    let to = p.to();
                    quote! {
                        if #private::is(&__fsm_event, #id) {
                            *self = Self::#target;
                            return #private::direct::<Self>(#i, #id, #to);
                        }
                    }
                })
                .collect();
            if all_direct {
                let reject_fn = if s.attrs.terminal.is_empty() {
                    quote!(#private::no_transition::<Self>)
                } else {
                    quote!(#private::terminal::<Self>)
                };
                Some(quote! {
                    Self::#ident { .. } => {
                        #(#tries)*
                        return #private::core::result::Result::Err(#reject_fn(#i, &__fsm_event));
                    }
                })
            } else if tries.is_empty() {
                None
            } else {
                Some(quote!(Self::#ident { .. } => { #(#tries)* }))
            }
        });
        Some(quote! {
            #[inline]
            fn apply_into(
                &mut self,
                __fsm_event: #e,
                __fsm_effects: &mut #krate::Effects<#f>,
            ) -> #private::core::result::Result<#krate::Transition, #krate::Rejection> {
                #[allow(unreachable_patterns)]
                match *self {
                    #(#arms)*
                    _ => {}
                }
                #private::apply_into::<Self>(self, __fsm_event, __fsm_effects)
            }
        })
    }

    /// `apply_into` for a small machine of unit states whose transitions are all direct: no
    /// branch on the state or the event. A constant holds, per event, one word with a byte per
    /// state (the target's index, bit 7 set where there is a transition); dispatch reads the
    /// event's word and shifts it by the state. The event's word does not depend on the state,
    /// so it is loaded ahead, and the next state is one shift away from the last: nothing for a
    /// branch predictor to miss, where a jump on the state mispredicts on every surprising
    /// event. `None` unless every state is a unit variant, every transition direct, the enum
    /// has no generics and at most 8 states (a byte each in a `u64`).
    fn packed_apply_into(&self) -> Option<TokenStream> {
        let m = self.m;
        let n = m.states.len();
        let all_direct = self.ir.states.iter().flatten().all(Plan::is_direct);
        if n > 8
            || !all_direct
            || !m.generics.params.is_empty()
            || m.states.iter().any(|s| !s.variant.fields.is_empty())
        {
            return None;
        }
        let krate = &self.paths.krate;
        let private = &self.paths.private;
        let e = self.event;
        let f = &self.effect;
        // Every state rejects every event: its own index, without bit 7.
        let reject_all: u64 = (0..n as u64).map(|i| i << (8 * i)).sum();
        let sets = self.ir.states.iter().enumerate().flat_map(|(from, plans)| {
            plans.iter().map(move |p| {
                let id = self.id(&p.on.event);
                let shift = 8 * from as u32;
                let byte = 0x80_u64 | u64::from(p.to());
                quote! {
                    let __fsm_i = #id as usize;
                    __fsm_t[__fsm_i] = (__fsm_t[__fsm_i] & !(0xff_u64 << #shift)) | (#byte << #shift);
                }
            })
        });
        let terminal_mask: u8 = m
            .states
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.attrs.terminal.is_empty())
            .map(|(i, _)| 1_u8 << i)
            .sum();
        let from_index = m.states.iter().enumerate().map(|(i, s)| {
            let ident = s.variant.ident;
            let i = i as u8;
            quote!(#i => Self::#ident,)
        });
        Some(quote! {
            #[inline]
            fn apply_into(
                &mut self,
                __fsm_event: #e,
                __fsm_effects: &mut #krate::Effects<#f>,
            ) -> #private::core::result::Result<#krate::Transition, #krate::Rejection> {
                const __FSM_NEXT: [u64; <#e as #krate::Event>::NAMES.len()] = {
                    let mut __fsm_t = [#reject_all; <#e as #krate::Event>::NAMES.len()];
                    #(#sets)*
                    __fsm_t
                };
                let _ = __fsm_effects;
                let __fsm_e = #krate::Event::id(&__fsm_event).index();
                let __fsm_s = #krate::StateMachine::state(self).index() & 7;
                let __fsm_b = match __FSM_NEXT.get(__fsm_e) {
                    #private::core::option::Option::Some(__fsm_w) => (*__fsm_w >> (8 * __fsm_s)) as u8,
                    #private::core::option::Option::None => __fsm_s as u8,
                };
                let (__fsm_from, __fsm_ev) = (__fsm_s as u16, __fsm_e as u16);
                *self = match __fsm_b & 0x7f {
                    #(#from_index)*
                    // Never: the constant holds only the states' indices.
                    _ => #private::core::unreachable!("a state index outside the table"),
                };
                if __fsm_b & 0x80 != 0 {
                    #private::direct::<Self>(__fsm_from, __fsm_ev, u16::from(__fsm_b & 0x7f))
                } else if (#terminal_mask >> __fsm_s) & 1 != 0 {
                    #private::core::result::Result::Err(#private::terminal::<Self>(__fsm_from, &__fsm_event))
                } else {
                    #private::core::result::Result::Err(#private::no_transition::<Self>(__fsm_from, &__fsm_event))
                }
            }
        })
    }

    /// The dispatch arm of one state: test the event's id against each declared event, split
    /// out the payload of the matching one and run its handler; else reject.
    fn next_arm(&self, index: usize, s: &State<'_>) -> TokenStream {
        let private = &self.paths.private;
        let v = &s.variant;
        let ident = v.ident;
        let i = index as u16;
        // Terminal or not is known here, so the rejection path does no table lookup.
        let reject_fn = if s.attrs.terminal.is_empty() {
            quote!(#private::no_transition::<Self>)
        } else {
            quote!(#private::terminal::<Self>)
        };
        let reject = quote!(#private::core::result::Result::Err(#reject_fn(#i, &__fsm_event)));
        if s.attrs.on.is_empty() {
            return quote!(Self::#ident { .. } => #reject,);
        }
        let binds = bindings(v);
        let pat = variant_fields(v, &idents(&binds));
        let view = self.view_expr(s, &idents(&binds));
        let typed = self.typed(ident);
        let tries = self.ir.states[index].iter().map(|p| {
            let on = p.on;
            let variant = self.variant(&on.event);
            let id = self.id(&on.event);
            if p.is_direct() {
                let target = &on.target;
                let to = p.to();
                return quote! {
                    if #private::is(&__fsm_event, #id) {
                        let _ = __fsm_effects;
                        return #private::direct_next::<Self>(Self::#target, #i, #id, #to);
                    }
                };
            }
            let target = self.typed(&on.target);
            let forward = forwarder(&on.event);
            let run = quote!(#private::run::<#typed, _, #target, _>);
            quote! {
                if #private::is(&__fsm_event, #id) {
                    return match #variant::split(__fsm_event) {
                        #private::core::result::Result::Ok(__fsm_p) => {
                            #run(__fsm_view, __fsm_p, __fsm_effects, #id, <#typed>::#forward)
                        }
                        #private::core::result::Result::Err(__fsm_e) => {
                            #private::core::result::Result::Err(#reject_fn(#i, &__fsm_e))
                        }
                    };
                }
            }
        });
        quote! {
            Self::#ident #pat => {
                let __fsm_view = #view;
                let _ = &__fsm_view;
                #(#tries)*
                #reject
            }
        }
    }

    fn redact_impl(&self) -> TokenStream {
        let variants: Vec<_> = self.m.states.iter().map(|s| &s.variant).collect();
        enum_redact_impl(self.m.ident, self.m.generics, &variants, &self.paths)
    }

    /// `Machine::initial_state`, for a machine whose (one) initial state holds no data: the
    /// kernel's `initial` function read from the table, so the initial state is written once.
    fn initial_state(&self) -> TokenStream {
        let m = self.m;
        let krate = &self.paths.krate;
        let mut initial = m.states.iter().filter(|s| !s.attrs.initial.is_empty());
        let (Some(s), None) = (initial.next(), initial.next()) else {
            return quote!();
        };
        if !s.variant.fields.is_empty() {
            return quote!();
        }
        let ident = m.ident;
        let state = s.variant.ident;
        let (impl_g, ty_g, wc) = m.generics.split_for_impl();
        let doc = format!(
            "The table's initial state, `{state}`, for any machine id: the kernel's `initial` function (`Kernel::builder(store, {ident}::initial_state)`), so the initial state is written once, in the table. Generated for a machine whose initial state holds no data."
        );
        quote! {
            #[automatically_derived]
            impl #impl_g #ident #ty_g #wc {
                #[doc = #doc]
                #[inline]
                pub fn initial_state(_: &#krate::store::MachineId) -> Self {
                    #ident::#state
                }
            }
        }
    }

    /// The value of event `event`, a variant without fields (what a timeout fires), spanned at
    /// the event's name: a variant with fields is reported there.
    fn unit_event(&self, event: &Ident) -> TokenStream {
        let e = self.event;
        let private = &self.paths.private;
        let key = self.key(event);
        respan(
            quote!(<#e as #private::UnitVariant<#key>>::unit()),
            event.span(),
        )
    }

    /// A timeout's duration in milliseconds: the literal, or a constant expression evaluated
    /// by rustc where the table is built, with the bounds `check` applies to a literal.
    fn timeout_ms(&self, t: &crate::attr::TimeoutAttr) -> TokenStream {
        let private = &self.paths.private;
        match t.ms {
            Some(ms) => {
                let ms = ms.unwrap_or(0);
                quote!(#ms)
            }
            None => {
                let amount = &t.amount;
                let scale = t.scale;
                let span = amount.span();
                let amount = quote_spanned!(span=> let amount: u64 = #amount;);
                quote_spanned!(span=> const {
                    #amount
                    match amount.checked_mul(#scale) {
                        #private::core::option::Option::Some(0) => #private::core::panic!("a state timeout of zero: give a positive duration"),
                        #private::core::option::Option::Some(ms) if ms <= 1 << 40 => ms,
                        _ => #private::core::panic!("this state timeout is longer than the longest timer (2^40 ms, about 34 years)"),
                    }
                })
            }
        }
    }

    /// `in_active()` per superstate: whether the machine is in one of the states inside it.
    fn superstate_queries(&self) -> TokenStream {
        let m = self.m;
        if m.hierarchy.is_flat() {
            return quote!();
        }
        let ident = m.ident;
        let (impl_g, ty_g, wc) = m.generics.split_for_impl();
        let methods = m.hierarchy.superstates.iter().map(|sup| {
            let name = bare(&sup.name);
            let method = format_ident!("in_{}", snake_ident(&sup.name, sup.name.span()));
            let inside: Vec<&Ident> = sup
                .states
                .iter()
                .map(|&k| m.states[k].variant.ident)
                .collect();
            let list = inside
                .iter()
                .map(|i| format!("`{}`", bare(i)))
                .collect::<Vec<_>>()
                .join(", ");
            let doc = format!("Whether the machine is in superstate `{name}`: in one of {list}.");
            quote! {
                #[doc = #doc]
                #[inline]
                pub fn #method(&self) -> bool {
                    match self {
                        #(#ident::#inside { .. })|* => true,
                        _ => false,
                    }
                }
            }
        });
        quote! {
            #[automatically_derived]
            impl #impl_g #ident #ty_g #wc {
                #(#methods)*
            }
        }
    }

    /// What every typed state gets, with or without a table error: its `TypedState` impl
    /// (with `check` for a state's invariant), the conversion into the machine, and redacting
    /// `Debug` for it and its view.
    fn typed_state_core(
        &self,
        index: usize,
        s: &State<'_>,
        check: Option<TokenStream>,
    ) -> TokenStream {
        let m = self.m;
        let krate = &self.paths.krate;
        let private = &self.paths.private;
        let machine = m.ident;
        let v = &s.variant;
        let ident = v.ident;
        let (impl_g, ty_g, wc) = m.generics.split_for_impl();
        let typed = self.typed(ident);
        let machine_ty = quote!(#machine #ty_g);
        let i = index as u16;
        let lt = crate::generics::view_lifetime();
        let view_ty = self.view_type(s, &quote!(#lt));
        let view_ty_anon = self.view_type(s, &quote!('_));
        let self_vals = self_fields(v);
        let refs: Vec<TokenStream> = self_vals.iter().map(|f| quote!(&#f)).collect();
        let view_of_self = self.view_expr(s, &refs);
        let into_variant = variant_fields(v, &self_vals);
        let redact_owned = redact_impls(typed.clone(), m.generics, v, &self.paths);
        let redact_view = (!v.fields.is_empty()).then(|| {
            let vg = with_view_lifetime(m.generics);
            redact_impls(view_ty.clone(), &vg, v, &self.paths)
        });
        quote! {
            #[automatically_derived]
            impl #impl_g #krate::TypedState for #typed #wc {
                type Machine = #machine_ty;
                type Ref<#lt> = #view_ty where Self: #lt;
                const ID: #krate::StateId = #krate::StateId::new(#i);

                #[inline]
                fn view(&self) -> #view_ty_anon {
                    #view_of_self
                }

                #check

                #[inline]
                fn into_machine(self) -> #machine_ty {
                    #machine::#ident #into_variant
                }
            }

            #[automatically_derived]
            impl #impl_g #private::core::convert::From<#typed> for #machine_ty #wc {
                #[inline]
                fn from(state: #typed) -> Self {
                    #krate::TypedState::into_machine(state)
                }
            }

            #redact_owned
            #redact_view
        }
    }

    /// For one state: `TypedState`, conversions, `Declared` per transition, the typestate
    /// methods, and redacting `Debug` for the typed state and its view.
    fn state_impls(&self, index: usize, s: &State<'_>) -> TokenStream {
        let m = self.m;
        let krate = &self.paths.krate;
        let private = &self.paths.private;
        let module = &self.module;
        let machine = m.ident;
        let v = &s.variant;
        let ident = v.ident;
        let (impl_g, ty_g, wc) = m.generics.split_for_impl();
        let typed = self.typed(ident);
        let machine_ty = quote!(#machine #ty_g);
        let view_ty_anon = self.view_type(s, &quote!('_));
        let marker = quote!(#private::core::marker::PhantomData);

        // A state without an invariant keeps the trait's default `check` (always `Ok`).
        let check = s.attrs.validate.first().map(|path| {
            let call = quote_spanned!(path.span()=> #path(__fsm_view));
            quote! {
                #[inline]
                fn check(__fsm_view: #view_ty_anon) -> #private::core::result::Result<(), #krate::Refusal> {
                    #call
                }
            }
        });
        let binds = bindings(v);
        let pat = variant_fields(v, &idents(&binds));
        let typed_from_binds = own_fields(v, m.generics, &idents(&binds), quote!(#marker));

        // A plain transition has no handler, so it is not `Declared`: a handler written for it
        // anyway is an error (it would never run).
        let handled: Vec<_> = s.attrs.on.iter().filter(|on| on.takes_handler()).collect();
        let declared = handled.iter().map(|on| {
            let payload = self.payload(&on.event);
            let target = self.typed(&on.target);
            // Keyed by the name's checked const where no other transition of this state into
            // this target takes a handler: a misspelt name leaves the const an error, which
            // rustc lets match the handler written for the real name, so the misspelling is
            // the only error. Beside another one, by the literal hash, so that the two impls
            // never overlap (a misspelling then also orphans its handler: a second error).
            let alone = handled
                .iter()
                .filter(|o| bare(&o.target) == bare(&on.target))
                .count()
                == 1;
            let h = match (alone, self.event_path()) {
                (true, Some(_)) => {
                    let c = name_const(&on.event);
                    quote!(#c)
                }
                _ => {
                    let h = variant_hash(&bare(&on.event));
                    quote!(#h)
                }
            };
            quote! {
                #[automatically_derived]
                #[diagnostic::do_not_recommend]
                impl #impl_g #private::DeclaredAt<#private::Key<#h>, #target, #payload> for #typed #wc {}
            }
        });
        let needs = s
            .attrs
            .on
            .iter()
            .filter(|on| on.takes_handler())
            .map(|on| self.need_handler(s, on));
        let plans = &self.ir.states[index];
        let methods = plans.iter().map(|p| {
            let on = p.on;
            let id = self.id(&on.event);
            let payload = self.payload(&on.event);
            let target = self.typed(&on.target);
            let name = snake_ident(&on.event, on.event.span());
            let f = &self.effect;
            let direct = p.is_direct();
            let doc = if direct {
                format!(
                    "Takes the declared plain transition on `{}` from `{ident}` into `{}`: no handler, hook or invariant, so it is never refused.",
                    on.event, on.target
                )
            } else {
                let handler = match (p.kind, on.with.as_ref().or(on.update.as_ref())) {
                    (Kind::Direct | Kind::Plain, _) => {
                        "builds the target (a plain transition)".to_string()
                    }
                    (Kind::With | Kind::Update, Some((_, f))) => {
                        format!("runs `{}`", tidy(&quote!(#f).to_string()))
                    }
                    _ => "runs its handler".to_string(),
                };
                format!(
                    "Takes the declared transition on `{}` from `{ident}` into `{}`: {handler}, its hooks, then the target's invariant. On rejection the state is handed back unchanged.",
                    on.event, on.target
                )
            };
            if direct {
                let unit = p
                    .target
                    .map(|i| self.view_expr(&self.m.states[i], &[]))
                    .unwrap_or_default();
                return quote! {
                    #[doc = #doc]
                    #[inline]
                    pub fn #name(
                        self,
                        event: #payload,
                    ) -> #private::core::result::Result<#krate::Next<#target, #f>, #krate::Rejected<Self>> {
                        let _ = (self, event);
                        #private::core::result::Result::Ok(#krate::Next {
                            state: #unit,
                            effects: #krate::Effects::new(),
                        })
                    }
                };
            }
            let forward = forwarder(&on.event);
            let typed_fn = quote!(#private::typed::<Self, _, #target, _>);
            quote! {
                #[doc = #doc]
                #[inline]
                pub fn #name(
                    self,
                    event: #payload,
                ) -> #private::core::result::Result<#krate::Next<#target, #f>, #krate::Rejected<Self>> {
                    #typed_fn(self, event, #id, |__fsm_s, __fsm_e, __fsm_fx| {
                        Self::#forward(#krate::TypedState::view(__fsm_s), __fsm_e, __fsm_fx)
                    })
                }
            }
        });
        let forwarders = plans.iter().filter(|p| !p.is_direct()).map(|p| {
            let on = p.on;
            let payload = self.payload(&on.event);
            let target = self.typed(&on.target);
            let forward = forwarder(&on.event);
            let f = &self.effect;
            // The one place that requires the user's handler impl, spanned at the `on(..)`
            // event so that a missing handler is reported there, once. A plain transition
            // builds its (unit) target instead.
            let target_state = p.target.map(|i| &self.m.states[i]);
            // What computes the new state, as a `Result<Target, Refusal>`: the handler impl,
            // or the function the table names (`with`), or a copy of the state changed in
            // place by the `update` function (a self-transition; its invariant still runs).
            let call = match (p.kind, &on.with, &on.update) {
                (Kind::With, Some((_, function)), _) => quote_spanned! {function.span()=>
                    #function(view, event, effects)
                },
                (Kind::Update, _, Some((_, function))) => {
                    let copy: Vec<TokenStream> = v
                        .fields
                        .iter()
                        .map(|field| {
                            let member = &field.member;
                            quote!(#private::core::clone::Clone::clone(view.#member))
                        })
                        .collect();
                    let owned = if v.fields.is_empty() {
                        quote!(view)
                    } else {
                        let fields = own_fields(v, m.generics, &copy, quote!(#marker));
                        quote!(#module::#ident #fields)
                    };
                    let apply = quote_spanned! {function.span()=>
                        let () = #function(&mut __fsm_next, event, effects)?;
                    };
                    quote!({
                        let mut __fsm_next: #target = #owned;
                        #apply
                        #private::core::result::Result::Ok(__fsm_next)
                    })
                }
                _ => {
                    let need = need_trait(ident, &on.event);
                    quote_spanned! {on.event.span()=>
                        <Self as #need<#payload, #target>>::__fsm_handle(view, event, effects)
                    }
                }
            };
            let next = match target_state {
                Some(target_state) if p.kind == Kind::Plain => {
                    let unit = self.view_expr(target_state, &[]);
                    quote!({
                        let _ = event;
                        #unit
                    })
                }
                _ => quote!(#call?),
            };
            // The state's exit hook, the handler, the target's enter hook, as planned.
            // `let () =`: a hook returns nothing, so one that returns a verdict (which would be
            // ignored) does not compile.
            let exit: Vec<TokenStream> = p
                .exits
                .iter()
                .map(|hook| match hook {
                    Hook::State(hook) => {
                        quote_spanned!(hook.span()=> let () = #hook(view, effects);)
                    }
                    Hook::Superstate(hook) => quote_spanned!(hook.span()=> let () = #hook(effects);),
                })
                .collect();
            let enter: Vec<TokenStream> = p
                .enters
                .iter()
                .map(|hook| match hook {
                    Hook::State(hook) => {
                        quote_spanned!(hook.span()=> let () = #hook(#krate::TypedState::view(&__fsm_next), effects);)
                    }
                    Hook::Superstate(hook) => quote_spanned!(hook.span()=> let () = #hook(effects);),
                })
                .collect();
            let hooks = !exit.is_empty() || !enter.is_empty();
            let body = match (hooks, p.kind == Kind::Plain) {
                // No hook: exactly the handler's call (or the plain target), nothing around it,
                // so a machine without hooks pays nothing for them.
                (false, false) => call,
                (false, true) => quote!({
                    let _ = (view, effects);
                    #private::core::result::Result::Ok(#next)
                }),
                _ => quote!({
                    let _ = (&view, &effects);
                    #(#exit)*
                    let __fsm_next = #next;
                    #(#enter)*
                    #private::core::result::Result::Ok(__fsm_next)
                }),
            };
            quote! {
                #[inline(always)]
                fn #forward<'__fsm_v>(
                    view: <Self as #krate::TypedState>::Ref<'__fsm_v>,
                    event: #payload,
                    effects: &mut #krate::Effects<#f>,
                ) -> #private::core::result::Result<#target, #krate::Refusal>
                where
                    Self: '__fsm_v,
                {
                    #body
                }
            }
        });
        let inherent = (!s.attrs.on.is_empty()).then(|| {
            quote! {
                impl #impl_g #typed #wc {
                    #(#methods)*
                    #(#forwarders)*
                }
            }
        });
        let core = self.typed_state_core(index, s, check);
        quote! {
            #core

            #[automatically_derived]
            impl #impl_g #private::core::convert::TryFrom<#machine_ty> for #typed #wc {
                type Error = #machine_ty;
                #[inline]
                #[allow(unreachable_patterns)]
                fn try_from(machine: #machine_ty) -> #private::core::result::Result<Self, #machine_ty> {
                    match machine {
                        #machine::#ident #pat => #private::core::result::Result::Ok(#module::#ident #typed_from_binds),
                        other => #private::core::result::Result::Err(other),
                    }
                }
            }

            #(#declared)*
            #(#needs)*
            #inherent
        }
    }
}

/// The hidden trait the forwarder of `state`'s transition on `event` calls the handler
/// through (see [`Gen::need_handler`]).
fn need_trait(state: &Ident, event: &Ident) -> Ident {
    // `format_ident!` writes an `Ident` argument without its `r#`, here and below.
    // Read in rustc's help line for a missing handler: "the trait `ActiveNeedsRefundHandler<..>`
    // is not implemented for `Active`". Private to the derive's `const _` block.
    format_ident!("{}Needs{}Handler", state, event)
}

/// Type tokens as a person writes them (`&'static str`, not `& 'static str`).
fn tidy(tokens: &str) -> String {
    tokens
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace(" <", "<")
        .replace("< ", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
        .replace("& ", "&")
        .replace("( )", "()")
}

/// The const holding the key of event name `event` (see [`Gen::variant`]).
fn name_const(event: &Ident) -> Ident {
    format_ident!("__FSM_EVENT_{}", event)
}

/// The private associated function that forwards to the handler of the transition on `event`.
fn forwarder(event: &Ident) -> Ident {
    format_ident!("__fsm_on_{}", snake_ident(event, event.span()))
}

/// `tokens` with every span set to `span`, recursively.
fn respan(tokens: TokenStream, span: proc_macro2::Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let proc_macro2::TokenTree::Group(g) = &tt {
                let mut ng = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                ng.set_span(span);
                tt = proc_macro2::TokenTree::Group(ng);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}

fn policy(krate: &TokenStream, kind: PolicyKind) -> TokenStream {
    match kind {
        PolicyKind::Defer => quote!(#krate::Policy::Defer),
        PolicyKind::Dump => quote!(#krate::Policy::Dump),
        PolicyKind::Delegate => quote!(#krate::Policy::Delegate),
    }
}

/// The const holding the id of event name `event` (see [`Gen::id`]).
fn id_const(event: &Ident) -> Ident {
    format_ident!("__FSM_ID_{}", event)
}

/// The alias of the payload type of event name `event` (see [`Gen::payload`]).
fn payload_alias(event: &Ident) -> Ident {
    format_ident!("__FsmPayload_{}", event)
}
