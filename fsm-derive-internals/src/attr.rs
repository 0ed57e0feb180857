//! Parsing of `#[fsm(..)]` attributes into plain values. Every error is recorded in the
//! context and parsing goes on, so that one compile reports all of them.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::parse::ParseStream;
use syn::{Attribute, Ident, Path, Token, Type};

use crate::ctxt::Ctxt;

pub(crate) const CONTAINER_KEYS: &str = "event, effect, module, crate, on(Event => Target) (from any state), superstate(Name, initial = State, parent = Superstate, on(..), defer, dump, delegate)";
pub(crate) const EVENT_CONTAINER_KEYS: &str = "module, crate";
pub(crate) const STATE_KEYS: &str =
    "initial, terminal, parent = Superstate, on(Event => Target), on(Event => Target, plain), defer, dump, delegate, validate = path, enter = path, exit = path, state_timeout(ms = N => Event)";
pub(crate) const SUPERSTATE_KEYS: &str =
    "initial = State, parent = Superstate, on(Event => Target), defer, dump, delegate, enter = path, exit = path, state_timeout(ms = N => Event)";
pub(crate) const FIELD_KEYS: &str = "sensitive, strategy = path, arbitrary = path";

/// Attributes on the enum deriving `StateMachine` or `Event`.
#[derive(Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct ContainerAttrs {
    pub(crate) event: Option<Type>,
    pub(crate) effect: Option<Type>,
    pub(crate) module: Option<Ident>,
    pub(crate) krate: Option<Path>,
    /// `on(..)` on the enum: from every state that is not terminal.
    pub(crate) on: Vec<OnAttr>,
    /// `superstate(..)`s, in declaration order.
    pub(crate) superstates: Vec<SuperAttr>,
}

/// `superstate(Name, initial = State, parent = Superstate, on(..), defer(..), ..)` on the enum.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct SuperAttr {
    pub(crate) name: Ident,
    pub(crate) initial: Option<Ident>,
    pub(crate) parent: Option<Ident>,
    pub(crate) on: Vec<OnAttr>,
    pub(crate) policies: Vec<PolicyAttr>,
    /// `enter = path`: `fn(&mut Effects<F>)`, run when a transition enters the superstate.
    pub(crate) enter: Option<Path>,
    /// `exit = path`: `fn(&mut Effects<F>)`, run when a transition leaves it.
    pub(crate) exit: Option<Path>,
    /// `state_timeout(..)`: fires once the machine has been inside the superstate that long,
    /// whatever moves it made between the states inside.
    pub(crate) timeout: Option<TimeoutAttr>,
}

/// Where a transition was declared: on its state, or inherited (see `hierarchy`).
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(test, derive(Debug))]
pub(crate) enum Declared {
    State,
    /// On the superstate with this index.
    Superstate(usize),
    /// On the enum, for every state.
    AnyState,
}

/// What a policy keyword names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PolicyKind {
    Defer,
    Dump,
    Delegate,
}

impl PolicyKind {
    pub(crate) fn keyword(self) -> &'static str {
        match self {
            PolicyKind::Defer => "defer",
            PolicyKind::Dump => "dump",
            PolicyKind::Delegate => "delegate",
        }
    }
}

/// One `on(Event => Target)` (an `on(A | B => T)` gives one per event).
#[derive(Clone)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct OnAttr {
    pub(crate) keyword: Ident,
    pub(crate) event: Ident,
    pub(crate) target: Ident,
    /// `plain`: the transition needs no handler (its target is built from nothing).
    pub(crate) plain: Option<Ident>,
    /// `reenter`: a self-transition that runs the state's exit and enter hooks.
    pub(crate) reenter: Option<Ident>,
    /// `local`: a superstate's transition into a state inside it that does not leave and
    /// enter the superstate again.
    pub(crate) local: Option<Ident>,
    /// `with = path`: the transition's function, `fn(view, payload, &mut Effects<F>) ->
    /// Result<Target, Refusal>`, instead of a `Handler` impl.
    pub(crate) with: Option<(Ident, syn::Path)>,
    /// `update = path`: a self-transition's function that changes the state in place,
    /// `fn(&mut State, payload, &mut Effects<F>) -> Result<(), Refusal>`.
    pub(crate) update: Option<(Ident, syn::Path)>,
    /// Where it was declared.
    pub(crate) declared: Declared,
    /// The superstate its target named, if it named one (`hierarchy` replaces the target by
    /// the state that superstate's initial chain leads to).
    pub(crate) into_superstate: Option<usize>,
}

impl OnAttr {
    /// Whether the transition runs a `Handler` impl (not `plain`, no `with` or `update`).
    pub(crate) fn takes_handler(&self) -> bool {
        self.plain.is_none() && self.with.is_none() && self.update.is_none()
    }

    /// Tokens spanning the attribute from `on` to the target, for error spans.
    pub(crate) fn tokens(&self) -> TokenStream {
        let (k, t) = (&self.keyword, &self.target);
        quote!(#k #t)
    }
}

/// A policy for one event (`defer(E)`) or for all others (bare `defer`).
#[derive(Clone)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct PolicyAttr {
    pub(crate) keyword: Ident,
    pub(crate) kind: PolicyKind,
    pub(crate) event: Option<Ident>,
}

/// `state_timeout(ms = 1200 => Missed)` (or `s = 30`): the state's declared timeout.
#[derive(Clone)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct TimeoutAttr {
    pub(crate) keyword: Ident,
    /// The duration as written: an integer literal, a `const`, or a constant expression.
    pub(crate) amount: syn::Expr,
    /// Milliseconds per unit of `amount` (1, 1,000 or 60,000).
    pub(crate) scale: u64,
    /// For an integer literal, the duration in milliseconds (`Some(None)` if it does not fit,
    /// reported by `check`); `None` for a `const` or an expression, which rustc evaluates and
    /// the generated table checks.
    pub(crate) ms: Option<Option<u64>>,
    pub(crate) event: Ident,
}

/// Attributes on one variant (a state).
#[derive(Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct StateAttrs {
    pub(crate) initial: Vec<Ident>,
    pub(crate) terminal: Vec<Ident>,
    pub(crate) on: Vec<OnAttr>,
    pub(crate) policies: Vec<PolicyAttr>,
    pub(crate) validate: Vec<Path>,
    /// `enter = path`: runs when a transition enters the state.
    pub(crate) enter: Vec<Path>,
    /// `exit = path`: runs when a transition leaves the state.
    pub(crate) exit: Vec<Path>,
    pub(crate) timeouts: Vec<TimeoutAttr>,
    /// `parent = Superstate`.
    pub(crate) parent: Vec<Ident>,
}

/// Which kind of enum the container attributes belong to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Derive {
    StateMachine,
    Event,
}

fn fsm_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|a| a.path().is_ident("fsm"))
}

fn unknown(path: &Path, place: &str, keys: &str) -> syn::Error {
    let name = path
        .get_ident()
        .map_or_else(|| quote!(#path).to_string(), Ident::to_string);
    syn::Error::new_spanned(
        path,
        format!("unknown fsm attribute `{name}` on {place}; expected one of: {keys}"),
    )
}

pub(crate) fn container(cx: &Ctxt, attrs: &[Attribute], derive: Derive) -> ContainerAttrs {
    let mut out = ContainerAttrs::default();
    for attr in fsm_attrs(attrs) {
        let result = attr.parse_nested_meta(|meta| {
            if derive == Derive::StateMachine && meta.path.is_ident("event") {
                set_once(cx, &mut out.event, meta.value()?.parse()?, &meta.path);
            } else if derive == Derive::StateMachine && meta.path.is_ident("effect") {
                set_once(cx, &mut out.effect, meta.value()?.parse()?, &meta.path);
            } else if meta.path.is_ident("module") {
                set_once(cx, &mut out.module, meta.value()?.parse()?, &meta.path);
            } else if meta.path.is_ident("crate") {
                set_once(cx, &mut out.krate, meta.value()?.parse()?, &meta.path);
            } else if derive == Derive::StateMachine && meta.path.is_ident("on") {
                let key = meta.path.get_ident().cloned().expect("checked above");
                let content;
                syn::parenthesized!(content in meta.input);
                let first = out.on.len();
                parse_on(&content, &key, &mut out.on)?;
                for on in &mut out.on[first..] {
                    on.declared = Declared::AnyState;
                }
                strip_state_markers(cx, &mut out.on, first, "on the enum (from any state)");
            } else if derive == Derive::StateMachine && meta.path.is_ident("superstate") {
                let content;
                syn::parenthesized!(content in meta.input);
                let index = out.superstates.len();
                out.superstates.push(parse_superstate(cx, &content, index)?);
            } else {
                let keys = match derive {
                    Derive::StateMachine => CONTAINER_KEYS,
                    Derive::Event => EVENT_CONTAINER_KEYS,
                };
                return Err(unknown(&meta.path, "the enum", keys));
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.push(e);
        }
    }
    out
}

fn set_once<T>(cx: &Ctxt, slot: &mut Option<T>, value: T, path: &Path) {
    if slot.is_some() {
        let name = path.get_ident().map(Ident::to_string).unwrap_or_default();
        cx.push(syn::Error::new_spanned(
            path,
            format!("duplicate fsm attribute `{name}`: give it once"),
        ));
    } else {
        *slot = Some(value);
    }
}

pub(crate) fn state(cx: &Ctxt, attrs: &[Attribute]) -> StateAttrs {
    let mut out = StateAttrs::default();
    for attr in fsm_attrs(attrs) {
        let result = attr.parse_nested_meta(|meta| {
            let Some(key) = meta.path.get_ident().cloned() else {
                return Err(unknown(&meta.path, "a state", STATE_KEYS));
            };
            match key.to_string().as_str() {
                "initial" => out.initial.push(key),
                "parent" => out.parent.push(meta.value()?.parse()?),
                "terminal" => out.terminal.push(key),
                "validate" => out.validate.push(meta.value()?.parse()?),
                "enter" => out.enter.push(meta.value()?.parse()?),
                "exit" => out.exit.push(meta.value()?.parse()?),
                "on" => {
                    let content;
                    syn::parenthesized!(content in meta.input);
                    let first = out.on.len();
                    parse_on(&content, &key, &mut out.on)?;
                    for on in &mut out.on[first..] {
                        if let Some(kw) = on.local.take() {
                            cx.push(syn::Error::new_spanned(
                                kw,
                                "`local` is for a transition declared on a superstate into a state inside it (it then does not leave the superstate); a state's own transition leaves only the state",
                            ));
                        }
                    }
                }
                "state_timeout" => {
                    let content;
                    syn::parenthesized!(content in meta.input);
                    // A mistake inside is reported, and the state's other attributes are still
                    // read, so that code using them meets no error of its own.
                    match parse_timeout(&content, key) {
                        Ok(t) => out.timeouts.push(t),
                        Err(e) => {
                            cx.push(e);
                            let _rest: proc_macro2::TokenStream = content.parse()?;
                        }
                    }
                }
                "defer" | "dump" | "delegate" => parse_policy(meta.input, key, &mut out.policies)?,
                _ => return Err(unknown(&meta.path, "a state", STATE_KEYS)),
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.push(e);
        }
    }
    out
}

/// `Event => Target`, `A | B => Target`, either followed by `, plain`.
fn parse_on(input: ParseStream<'_>, keyword: &Ident, out: &mut Vec<OnAttr>) -> syn::Result<()> {
    let malformed = |span: Span| {
        syn::Error::new(
            span,
            "malformed `on(..)`: write `on(Event => Target)` or `on(EventA | EventB => Target)`, with `, plain` (no handler) or `, reenter` (a self-transition that runs the exit and enter hooks) at the end",
        )
    };
    let mut events = Vec::new();
    loop {
        let event: Ident = input.parse().map_err(|e| malformed(e.span()))?;
        events.push(event);
        if input.peek(Token![|]) {
            input.parse::<Token![|]>()?;
            continue;
        }
        break;
    }
    input
        .parse::<Token![=>]>()
        .map_err(|e| malformed(e.span()))?;
    let target: Ident = input.parse().map_err(|e| malformed(e.span()))?;
    let (mut plain, mut reenter, mut local) = (None, None, None);
    let (mut with, mut update) = (None, None);
    while input.peek(Token![,]) {
        input.parse::<Token![,]>()?;
        let marker: Ident = input.parse().map_err(|e| malformed(e.span()))?;
        let duplicate = || {
            syn::Error::new_spanned(
                &marker,
                format!("duplicate marker `{marker}` in `on(..)`: give it once"),
            )
        };
        let function = match marker.to_string().as_str() {
            "with" => &mut with,
            "update" => &mut update,
            _ => {
                let slot = match marker.to_string().as_str() {
                    "plain" => &mut plain,
                    "reenter" => &mut reenter,
                    "local" => &mut local,
                    _ => {
                        return Err(syn::Error::new_spanned(
                            &marker,
                            format!("unknown marker `{marker}` in `on(..)`: the markers are `plain` (a transition that needs no handler), `reenter` (a self-transition that runs the exit and enter hooks), `local` (a superstate's transition into its own states that does not leave it), `with = function` (the transition's function) and `update = function` (a self-transition's function that changes the state in place)"),
                        ))
                    }
                };
                if slot.is_some() {
                    return Err(duplicate());
                }
                *slot = Some(marker);
                continue;
            }
        };
        if function.is_some() {
            return Err(duplicate());
        }
        input.parse::<Token![=]>().map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("write `{marker} = function`: the path of the function to run"),
            )
        })?;
        let path: syn::Path = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("write `{marker} = function`: the path of the function to run"),
            )
        })?;
        *function = Some((marker, path));
    }
    if let Some((kw, _)) = with.as_ref().or(update.as_ref()) {
        if events.len() > 1 {
            return Err(syn::Error::new_spanned(
                kw,
                format!("`{kw} = ..` names the function of one event's transition (its payload is the function's argument): write one `on(..)` per event"),
            ));
        }
    }
    if !input.is_empty() {
        return Err(malformed(input.span()));
    }
    for event in events {
        out.push(OnAttr {
            keyword: keyword.clone(),
            event,
            target: target.clone(),
            plain: plain.clone(),
            reenter: reenter.clone(),
            local: local.clone(),
            with: with.clone(),
            update: update.clone(),
            declared: Declared::State,
            into_superstate: None,
        });
    }
    Ok(())
}

/// `defer`, `dump` or `delegate` (the keyword `key`), bare or with a list of events.
fn parse_policy(input: ParseStream<'_>, key: Ident, out: &mut Vec<PolicyAttr>) -> syn::Result<()> {
    let kind = match key.to_string().as_str() {
        "defer" => PolicyKind::Defer,
        "dump" => PolicyKind::Dump,
        _ => PolicyKind::Delegate,
    };
    if !input.peek(syn::token::Paren) {
        out.push(PolicyAttr {
            keyword: key,
            kind,
            event: None,
        });
        return Ok(());
    }
    let content;
    syn::parenthesized!(content in input);
    let events = content.parse_terminated(<Ident as syn::parse::Parse>::parse, Token![,])?;
    if events.is_empty() {
        return Err(syn::Error::new_spanned(
            &key,
            format!("`{key}()` lists no event: name events as `{key}(A, B)`, or write a bare `{key}` for every event without a transition"),
        ));
    }
    for event in events {
        out.push(PolicyAttr {
            keyword: key.clone(),
            kind,
            event: Some(event),
        });
    }
    Ok(())
}

/// A `key = value` of `superstate(name, ..)`, given once.
fn once_in<T>(cx: &Ctxt, slot: &mut Option<T>, value: T, key: &Ident, name: &Ident) {
    if slot.is_some() {
        cx.push(syn::Error::new_spanned(
            key,
            format!("duplicate `{key}` in `superstate({name}, ..)`: give it once"),
        ));
    } else {
        *slot = Some(value);
    }
}

/// `reenter` and `update` belong to a state's self-transition: refused on a superstate or the
/// enum, where the state is whichever one the machine is in. Each is reported, and the
/// transitions from `first` on are kept without it (one with `update` is dropped), so that
/// the rest of the declaration is still read.
fn strip_state_markers(cx: &Ctxt, on: &mut Vec<OnAttr>, first: usize, place: &str) {
    let mut i = first;
    while i < on.len() {
        if place.contains("enum") {
            if let Some(kw) = on[i].local.take() {
                cx.push(syn::Error::new_spanned(
                    kw,
                    "`local` is for a transition declared on a superstate into a state inside it; a transition for any state has no superstate to stay in",
                ));
            }
        }
        if let Some(kw) = on[i].reenter.take() {
            cx.push(syn::Error::new_spanned(
                kw,
                format!("`reenter` is for a state's self-transition, not {place}: a transition into a superstate always leaves the state the machine is in and enters the superstate's initial state"),
            ));
        }
        if let Some((kw, _)) = &on[i].update {
            cx.push(syn::Error::new_spanned(
                kw,
                format!("`update = ..` changes one state's data in place, so it cannot be declared {place}: declare it on each state, or use `with = function` (a generic function takes every state's view)"),
            ));
            on.remove(i);
            continue;
        }
        i += 1;
    }
}

/// `Name, initial = State, parent = Superstate, on(..), defer(..), dump, ..`.
fn parse_superstate(cx: &Ctxt, input: ParseStream<'_>, index: usize) -> syn::Result<SuperAttr> {
    let name: Ident = input.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            "malformed `superstate(..)`: write `superstate(Name, initial = State, ..)`",
        )
    })?;
    let mut out = SuperAttr {
        name,
        initial: None,
        parent: None,
        on: Vec::new(),
        policies: Vec::new(),
        enter: None,
        exit: None,
        timeout: None,
    };
    while input.peek(Token![,]) {
        input.parse::<Token![,]>()?;
        if input.is_empty() {
            break;
        }
        let key: Ident = input.parse()?;
        match key.to_string().as_str() {
            "initial" | "parent" => {
                input.parse::<Token![=]>().map_err(|e| {
                    syn::Error::new(e.span(), format!("write `{key} = Name`"))
                })?;
                let value: Ident = input.parse()?;
                let slot = if key == "initial" {
                    &mut out.initial
                } else {
                    &mut out.parent
                };
                once_in(cx, slot, value, &key, &out.name);
            }
            "state_timeout" => {
                let content;
                syn::parenthesized!(content in input);
                let t = parse_timeout(&content, key.clone())?;
                if out.timeout.is_some() {
                    cx.push(syn::Error::new_spanned(
                        &key,
                        format!("second `state_timeout` on superstate `{}`: a superstate has one", out.name),
                    ));
                } else {
                    out.timeout = Some(t);
                }
            }
            "enter" | "exit" => {
                input.parse::<Token![=]>().map_err(|e| {
                    syn::Error::new(e.span(), format!("write `{key} = function`"))
                })?;
                let path: Path = input.parse()?;
                let slot = if key == "enter" {
                    &mut out.enter
                } else {
                    &mut out.exit
                };
                once_in(cx, slot, path, &key, &out.name);
            }
            "on" => {
                let content;
                syn::parenthesized!(content in input);
                let first = out.on.len();
                parse_on(&content, &key, &mut out.on)?;
                for on in &mut out.on[first..] {
                    on.declared = Declared::Superstate(index);
                }
                strip_state_markers(cx, &mut out.on, first, "on a superstate");
            }
            "defer" | "dump" | "delegate" => parse_policy(input, key, &mut out.policies)?,
            _ => {
                return Err(syn::Error::new_spanned(
                    &key,
                    format!(
                        "unknown key `{key}` in `superstate({}, ..)`; expected one of: {SUPERSTATE_KEYS}",
                        out.name
                    ),
                ))
            }
        }
    }
    if !input.is_empty() {
        return Err(syn::Error::new(
            input.span(),
            "malformed `superstate(..)`: write `superstate(Name, initial = State, parent = Superstate, on(Event => Target), ..)`",
        ));
    }
    Ok(out)
}

/// `ms = 1200 => Missed` or `s = 30 => Expire`.
fn parse_timeout(input: ParseStream<'_>, keyword: Ident) -> syn::Result<TimeoutAttr> {
    let malformed = |span: Span| {
        syn::Error::new(
            span,
            "malformed `state_timeout(..)`: write `state_timeout(ms = 1200 => Event)` or `state_timeout(s = 30 => Event)`",
        )
    };
    let unit: Ident = input.parse().map_err(|e| malformed(e.span()))?;
    let scale: u64 = match unit.to_string().as_str() {
        "ms" => 1,
        "s" => 1000,
        "min" => 60_000,
        _ => {
            return Err(syn::Error::new_spanned(
                &unit,
                format!("unknown unit `{unit}` in `state_timeout(..)`: use `ms`, `s` or `min`"),
            ))
        }
    };
    input
        .parse::<Token![=]>()
        .map_err(|e| malformed(e.span()))?;
    let amount: syn::Expr = input.parse().map_err(|e| malformed(e.span()))?;
    let ms = match &amount {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(n),
            ..
        }) => Some(n.base10_parse::<u64>().ok().and_then(|n| n.checked_mul(scale))),
        syn::Expr::Lit(other) => {
            return Err(syn::Error::new_spanned(
                other,
                format!("`state_timeout({unit} = ..)` takes a whole number of {}: an integer literal, a `const` of type `u64`, or a constant expression such as `14 * 24 * 60`", match scale { 1 => "milliseconds", 1000 => "seconds", _ => "minutes" }),
            ))
        }
        _ => None,
    };
    input
        .parse::<Token![=>]>()
        .map_err(|e| malformed(e.span()))?;
    let event: Ident = input.parse().map_err(|e| malformed(e.span()))?;
    if !input.is_empty() {
        return Err(malformed(input.span()));
    }
    Ok(TimeoutAttr {
        keyword,
        amount,
        scale,
        ms,
        event,
    })
}

/// Attributes on a field of a state or an event.
#[derive(Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct FieldAttrs {
    /// `sensitive`: printed as `<redacted>`.
    pub(crate) sensitive: bool,
    /// `strategy = path`: `fn() -> impl proptest::strategy::Strategy<Value = FieldType>`, used
    /// instead of `any::<FieldType>()` by the generated proptest `Arbitrary` impl.
    pub(crate) strategy: Option<Path>,
    /// `arbitrary = path`: `fn(&mut arbitrary::Unstructured<'_>) -> arbitrary::Result<FieldType>`,
    /// used instead of the field type's `arbitrary::Arbitrary` impl.
    pub(crate) arbitrary: Option<Path>,
}

/// The `#[fsm(..)]` attributes of a field.
pub(crate) fn field(cx: &Ctxt, attrs: &[Attribute]) -> FieldAttrs {
    let mut out = FieldAttrs::default();
    for attr in fsm_attrs(attrs) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("sensitive") {
                if out.sensitive {
                    cx.push(syn::Error::new_spanned(
                        &meta.path,
                        "duplicate fsm attribute `sensitive`: give it once",
                    ));
                }
                out.sensitive = true;
            } else if meta.path.is_ident("strategy") {
                let path: Path = meta.value()?.parse()?;
                set_once(cx, &mut out.strategy, path, &meta.path);
            } else if meta.path.is_ident("arbitrary") {
                let path: Path = meta.value()?.parse()?;
                set_once(cx, &mut out.arbitrary, path, &meta.path);
            } else {
                return Err(unknown(&meta.path, "a field", FIELD_KEYS));
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.push(e);
        }
    }
    out
}

/// Rejects `#[fsm(..)]` where it has no meaning (on the variants of an event enum).
pub(crate) fn forbid(cx: &Ctxt, attrs: &[Attribute], place: &str) {
    for attr in fsm_attrs(attrs) {
        cx.push(syn::Error::new_spanned(
            attr,
            format!("`#[fsm(..)]` has no meaning on {place}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    #[test]
    fn parses_every_state_key() {
        let cx = Ctxt::new();
        let attrs: Vec<Attribute> = vec![
            parse_quote!(#[fsm(initial, on(A | B => S2), on(C => S3))]),
            parse_quote!(#[fsm(defer(D, E), dump, validate = crate::ok)]),
        ];
        let s = state(&cx, &attrs);
        assert!(cx.check().is_ok());
        assert_eq!(s.initial.len(), 1);
        let on: Vec<(String, String)> =
            s.on.iter()
                .map(|o| (o.event.to_string(), o.target.to_string()))
                .collect();
        assert_eq!(
            on,
            [("A", "S2"), ("B", "S2"), ("C", "S3")].map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(s.policies.len(), 3);
        assert_eq!(s.policies[2].event, None);
        assert_eq!(s.policies[2].kind, PolicyKind::Dump);
        assert_eq!(s.validate, vec![parse_quote!(crate::ok)]);
    }

    #[test]
    fn parses_a_state_timeout_in_each_unit() {
        let cx = Ctxt::new();
        let attrs: Vec<Attribute> = vec![
            parse_quote!(#[fsm(state_timeout(ms = 1200 => Missed))]),
            parse_quote!(#[fsm(state_timeout(s = 30 => Expire), state_timeout(min = 2 => Late))]),
        ];
        let s = state(&cx, &attrs);
        assert!(cx.check().is_ok());
        let got: Vec<(Option<u64>, String)> = s
            .timeouts
            .iter()
            .map(|t| (t.ms.flatten(), t.event.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (Some(1200), "Missed"),
                (Some(30_000), "Expire"),
                (Some(120_000), "Late")
            ]
            .map(|(ms, e)| (ms, e.to_string()))
        );
        for bad in [
            quote::quote!(#[fsm(state_timeout(ms 5 => A))]),
            quote::quote!(#[fsm(state_timeout(hours = 5 => A))]),
            quote::quote!(#[fsm(state_timeout(ms = 5))]),
            quote::quote!(#[fsm(state_timeout(ms = "two weeks" => A))]),
        ] {
            let cx = Ctxt::new();
            let attr: Attribute = parse_quote!(#bad);
            state(&cx, &[attr]);
            let err = cx.check().unwrap_err().to_string();
            assert!(err.contains("state_timeout"), "{err}");
        }
    }

    #[test]
    fn a_state_timeout_takes_a_const_or_a_constant_expression() {
        let cx = Ctxt::new();
        let attrs: Vec<Attribute> = vec![
            parse_quote!(#[fsm(state_timeout(ms = TRIAL_MS => Missed))]),
            parse_quote!(#[fsm(state_timeout(min = 14 * 24 * 60 => Expire))]),
        ];
        let s = state(&cx, &attrs);
        assert!(cx.check().is_ok());
        let got: Vec<(Option<Option<u64>>, u64, String)> = s
            .timeouts
            .iter()
            .map(|t| (t.ms, t.scale, t.event.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (None, 1, "Missed".to_string()),
                (None, 60_000, "Expire".to_string())
            ]
        );
    }

    #[test]
    fn a_mistake_in_a_state_timeout_keeps_the_states_other_attributes() {
        let cx = Ctxt::new();
        let attrs: Vec<Attribute> =
            vec![parse_quote!(#[fsm(state_timeout(ms = "soon" => A), on(Pay => Active))])];
        let s = state(&cx, &attrs);
        let err = cx.check().unwrap_err().to_string();
        assert!(err.contains("whole number of milliseconds"), "{err}");
        assert_eq!(s.on.len(), 1);
    }

    #[test]
    fn a_plain_marker_follows_the_target() {
        let cx = Ctxt::new();
        let attrs: Vec<Attribute> = vec![parse_quote!(#[fsm(on(A | B => S2, plain), on(C => S3))])];
        let s = state(&cx, &attrs);
        assert!(cx.check().is_ok());
        let plain: Vec<bool> = s.on.iter().map(|o| o.plain.is_some()).collect();
        assert_eq!(plain, [true, true, false]);
        let cx = Ctxt::new();
        let attrs: Vec<Attribute> = vec![parse_quote!(#[fsm(on(A => S2, plan))])];
        state(&cx, &attrs);
        let err = cx.check().unwrap_err().to_string();
        assert!(err.contains("unknown marker `plan`"), "{err}");
    }

    #[test]
    fn unknown_key_lists_the_known_ones() {
        let cx = Ctxt::new();
        let attrs: Vec<Attribute> = vec![parse_quote!(#[fsm(inital)])];
        state(&cx, &attrs);
        let err = cx.check().unwrap_err().to_string();
        assert!(
            err.contains("unknown fsm attribute `inital` on a state"),
            "{err}"
        );
        assert!(err.contains("initial, terminal"), "{err}");
    }

    #[test]
    fn malformed_on_says_how_to_write_it() {
        let cx = Ctxt::new();
        let attrs: Vec<Attribute> = vec![parse_quote!(#[fsm(on(A -> B))])];
        state(&cx, &attrs);
        let err = cx.check().unwrap_err().to_string();
        assert!(err.contains("malformed `on(..)`"), "{err}");
    }

    #[test]
    fn field_keys_name_custom_generators() {
        let cx = Ctxt::new();
        let attrs: Vec<Attribute> = vec![
            parse_quote!(#[fsm(sensitive, strategy = gen::small)]),
            parse_quote!(#[fsm(arbitrary = gen::fuzz_small)]),
        ];
        let f = field(&cx, &attrs);
        assert!(cx.check().is_ok());
        assert!(f.sensitive);
        assert_eq!(f.strategy, Some(parse_quote!(gen::small)));
        assert_eq!(f.arbitrary, Some(parse_quote!(gen::fuzz_small)));

        let cx = Ctxt::new();
        let attrs: Vec<Attribute> =
            vec![parse_quote!(#[fsm(strategy = a, strategy = b, stratgy = c)])];
        field(&cx, &attrs);
        let err = cx.check().unwrap_err();
        let all: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
        assert!(
            all[0].contains("duplicate fsm attribute `strategy`"),
            "{all:?}"
        );
    }

    #[test]
    fn container_keys_depend_on_the_derive() {
        let cx = Ctxt::new();
        let attrs: Vec<Attribute> = vec![parse_quote!(#[fsm(event = Cmd, effect = Fx)])];
        let c = container(&cx, &attrs, Derive::StateMachine);
        assert!(cx.check().is_ok());
        assert_eq!(c.event, Some(parse_quote!(Cmd)));
        let cx = Ctxt::new();
        container(&cx, &attrs, Derive::Event);
        let err = cx.check().unwrap_err().to_string();
        assert!(
            err.contains("unknown fsm attribute `event` on the enum"),
            "{err}"
        );
    }
}
