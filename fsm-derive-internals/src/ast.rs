//! The plain model of an annotated enum. Each node keeps the syn node it came from so that
//! later checks can point at the user's source.

use syn::{Data, DeriveInput, Fields, Generics, Ident, Member, Type, Visibility};

use crate::attr::{self, ContainerAttrs, Derive, FieldAttrs, StateAttrs};
use crate::ctxt::Ctxt;
use crate::names::bare;

/// An enum deriving `StateMachine`.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct Machine<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) vis: &'a Visibility,
    pub(crate) generics: &'a Generics,
    pub(crate) attrs: ContainerAttrs,
    pub(crate) states: Vec<State<'a>>,
    /// Each state's name and index, sorted by name: [`Machine::state_index`] is asked for
    /// every transition several times, and comparing two `Ident`s inside the compiler turns
    /// both into strings across the proc-macro bridge, so a linear scan made expansion grow
    /// with states x transitions.
    names: Vec<(String, usize)>,
    /// The superstates and each state's parent, once `hierarchy::resolve` checked them
    /// (empty for a flat machine, or when they have a mistake).
    pub(crate) hierarchy: crate::hierarchy::Hierarchy,
    /// The names the enum declares superstates under (even with a mistake in them).
    pub(crate) superstate_names: Vec<String>,
}

/// An enum deriving `Event`.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct Events<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) vis: &'a Visibility,
    pub(crate) generics: &'a Generics,
    pub(crate) attrs: ContainerAttrs,
    pub(crate) variants: Vec<Variant<'a>>,
}

/// One state: a variant plus its `#[fsm(..)]` attributes.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct State<'a> {
    pub(crate) variant: Variant<'a>,
    pub(crate) attrs: StateAttrs,
}

/// The shape of a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    Unit,
    Tuple,
    Named,
}

/// A variant of either enum.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct Variant<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) style: Style,
    pub(crate) fields: Vec<Field<'a>>,
    pub(crate) original: &'a syn::Variant,
}

/// A field of a variant.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct Field<'a> {
    pub(crate) member: Member,
    pub(crate) ty: &'a Type,
    pub(crate) sensitive: bool,
    /// `strategy = ..` and `arbitrary = ..`: custom generators for the test strategies.
    pub(crate) generators: FieldAttrs,
    pub(crate) docs: Vec<&'a syn::Attribute>,
}

impl<'a> Machine<'a> {
    pub(crate) fn from_input(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let data = enum_data(cx, input, "StateMachine")?;
        let attrs = attr::container(cx, &input.attrs, Derive::StateMachine);
        let states = data
            .variants
            .iter()
            .map(|v| State {
                variant: Variant::from_syn(cx, v),
                attrs: attr::state(cx, &v.attrs),
            })
            .collect::<Vec<State<'a>>>();
        let mut names: Vec<(String, usize)> = states
            .iter()
            .enumerate()
            .map(|(i, s)| (bare(s.variant.ident), i))
            .collect();
        // A name declared twice keeps its first index (rustc reports the duplicate variant).
        names.sort();
        Some(Machine {
            ident: &input.ident,
            vis: &input.vis,
            generics: &input.generics,
            attrs,
            states,
            names,
            hierarchy: crate::hierarchy::Hierarchy::default(),
            superstate_names: Vec::new(),
        })
    }

    /// The index of the state named `name`.
    pub(crate) fn state_index(&self, name: &Ident) -> Option<usize> {
        let name = bare(name);
        let at = self.names.partition_point(|(n, _)| *n < name);
        match self.names.get(at) {
            Some((n, i)) if *n == name => Some(*i),
            _ => None,
        }
    }
}

impl<'a> Events<'a> {
    pub(crate) fn from_input(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let data = enum_data(cx, input, "Event")?;
        let attrs = attr::container(cx, &input.attrs, Derive::Event);
        let variants = data
            .variants
            .iter()
            .map(|v| {
                attr::forbid(cx, &v.attrs, "an event variant");
                Variant::from_syn(cx, v)
            })
            .collect();
        Some(Events {
            ident: &input.ident,
            vis: &input.vis,
            generics: &input.generics,
            attrs,
            variants,
        })
    }
}

impl<'a> Variant<'a> {
    fn from_syn(cx: &Ctxt, v: &'a syn::Variant) -> Self {
        let style = match v.fields {
            Fields::Unit => Style::Unit,
            Fields::Unnamed(_) => Style::Tuple,
            Fields::Named(_) => Style::Named,
        };
        let fields = v
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let generators = attr::field(cx, &f.attrs);
                Field {
                    member: f
                        .ident
                        .clone()
                        .map_or_else(|| Member::Unnamed(i.into()), Member::Named),
                    ty: &f.ty,
                    sensitive: generators.sensitive,
                    generators,
                    docs: f
                        .attrs
                        .iter()
                        .filter(|a| a.path().is_ident("doc"))
                        .collect(),
                }
            })
            .collect();
        Variant {
            ident: &v.ident,
            style,
            fields,
            original: v,
        }
    }
}

fn enum_data<'a>(cx: &Ctxt, input: &'a DeriveInput, derive: &str) -> Option<&'a syn::DataEnum> {
    let kind = match &input.data {
        Data::Enum(data) => return Some(data),
        Data::Struct(_) => "a struct",
        Data::Union(_) => "a union",
    };
    let what = if derive == "Event" {
        "an enum whose variants are the events"
    } else {
        "an enum whose variants are the states"
    };
    cx.push(syn::Error::new_spanned(
        &input.ident,
        format!("`{derive}` cannot be derived for {kind}: derive it on {what}"),
    ));
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    #[test]
    fn model_keeps_styles_fields_and_sensitivity() {
        let input: DeriveInput = parse_quote! {
            #[fsm(event = Cmd)]
            enum M {
                #[fsm(initial, on(Go => B))]
                A,
                #[fsm(terminal)]
                B { x: u8, #[fsm(sensitive)] secret: String },
                C(u8),
            }
        };
        let cx = Ctxt::new();
        let m = Machine::from_input(&cx, &input).unwrap();
        assert!(cx.check().is_ok());
        let styles: Vec<Style> = m.states.iter().map(|s| s.variant.style).collect();
        assert_eq!(styles, [Style::Unit, Style::Named, Style::Tuple]);
        let sensitive: Vec<bool> = m.states[1]
            .variant
            .fields
            .iter()
            .map(|f| f.sensitive)
            .collect();
        assert_eq!(sensitive, [false, true]);
        assert_eq!(
            m.states[2].variant.fields[0].member,
            Member::Unnamed(0.into())
        );
        assert_eq!(m.state_index(&parse_quote!(B)), Some(1));
    }

    #[test]
    fn state_index_finds_every_state_in_declaration_order() {
        // Names whose sorted order differs from their declaration order, a raw identifier,
        // and a duplicate (rustc rejects it; the index must still answer the first one).
        let input: DeriveInput = parse_quote! {
            #[fsm(event = Cmd)]
            enum M { Zeta, Alpha, r#Mid, Beta, Alpha2, Beta, r#Zz }
        };
        let cx = Ctxt::new();
        let m = Machine::from_input(&cx, &input).unwrap();
        let at = |name: &str| m.state_index(&syn::parse_str::<Ident>(name).unwrap());
        assert_eq!(at("Zeta"), Some(0));
        assert_eq!(at("Alpha"), Some(1));
        assert_eq!(at("r#Mid"), Some(2));
        assert_eq!(at("Beta"), Some(3));
        assert_eq!(at("Alpha2"), Some(4));
        assert_eq!(
            at("Mid"),
            Some(2),
            "`r#Mid` and `Mid` are one identifier to rustc"
        );
        assert_eq!(at("Zz"), Some(6));
        assert_eq!(at("r#Zz"), Some(6));
        assert_eq!(at("Gamma"), None);
        assert_eq!(at("Alph"), None);
    }

    #[test]
    fn struct_input_is_refused_with_a_reason() {
        let input: DeriveInput = parse_quote!(
            struct S;
        );
        let cx = Ctxt::new();
        assert!(Machine::from_input(&cx, &input).is_none());
        let err = cx.check().unwrap_err().to_string();
        assert_eq!(
            err,
            "`StateMachine` cannot be derived for a struct: derive it on an enum whose variants are the states"
        );
    }
}
