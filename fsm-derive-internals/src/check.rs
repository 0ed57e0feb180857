//! Checks that need the whole table, one function per rule. Each records its errors in the
//! context, pointing at the offending attribute or variant, and never stops the others.
//!
//! Event names cannot be checked here (the event enum is another item); the expansion makes
//! rustc check them, with the span of the name as written.

use std::collections::{HashMap, VecDeque};

use syn::Ident;

use crate::ast::Machine;
use crate::ctxt::Ctxt;
use crate::names::bare;

pub(crate) fn check(cx: &Ctxt, m: &Machine<'_>) {
    // An attribute that did not parse leaves the table incomplete: checks of the whole graph
    // would then report consequences of that one mistake, so they are skipped.
    let parsed = !cx.has_errors();
    event_type(cx, m);
    has_states(cx, m);
    one_initial(cx, m);
    flags_once(cx, m);
    let targets_known = targets_exist(cx, m);
    no_duplicate_pairs(cx, m);
    terminal_has_no_transitions(cx, m);
    if parsed {
        no_dead_ends(cx, m);
    }
    if parsed && targets_known {
        all_reachable(cx, m);
    }
    policies_are_consistent(cx, m);
    timeouts_are_sound(cx, m);
    plain_targets_hold_no_data(cx, m);
    functions_fit(cx, m);
    reenter_is_a_self_transition(cx, m);
    no_view_name_clash(cx, m);
}

/// `reenter` runs a state's exit and enter hooks on a self-transition; any other transition
/// runs them anyway.
fn reenter_is_a_self_transition(cx: &Ctxt, m: &Machine<'_>) {
    for s in &m.states {
        for on in &s.attrs.on {
            let Some(reenter) = &on.reenter else { continue };
            if bare(&on.target) != bare(s.variant.ident) {
                cx.push(syn::Error::new_spanned(
                    reenter,
                    format!(
                        "`reenter` on `on({} => {})`, which leaves `{}`: a transition into another state runs the exit and enter hooks anyway; `reenter` is for a self-transition (`on({} => {})`)",
                        on.event, on.target, s.variant.ident, on.event, s.variant.ident
                    ),
                ));
            }
        }
    }
}

/// `with = f` and `update = f` replace the handler: not beside `plain`, not both, and
/// `update` (the state changed in place) only on a self-transition.
fn functions_fit(cx: &Ctxt, m: &Machine<'_>) {
    for s in &m.states {
        for on in &s.attrs.on {
            if let (Some(plain), Some((kw, _))) =
                (&on.plain, on.with.as_ref().or(on.update.as_ref()))
            {
                cx.push(syn::Error::new_spanned(
                    kw,
                    format!("`{plain}` and `{kw} = ..` on one transition: a plain transition runs no function; remove one"),
                ));
            }
            if let (Some((w, _)), Some((u, _))) = (&on.with, &on.update) {
                cx.push(syn::Error::new_spanned(
                    u,
                    format!("`{w} = ..` and `{u} = ..` on one transition: give the one function it runs"),
                ));
            }
            if let Some((kw, _)) = &on.update {
                if bare(&on.target) != bare(s.variant.ident) {
                    cx.push(syn::Error::new_spanned(
                        kw,
                        format!(
                            "`update = ..` changes `{}` in place, so it only fits a self-transition, and `on({} => {})` goes to `{}`: use `with = ..` (a function that returns the new state)",
                            s.variant.ident, on.event, on.target, on.target
                        ),
                    ));
                }
            }
        }
    }
}

/// A `plain` transition builds its target from nothing, so the target must be a state without
/// fields.
fn plain_targets_hold_no_data(cx: &Ctxt, m: &Machine<'_>) {
    for s in &m.states {
        for on in &s.attrs.on {
            let Some(plain) = &on.plain else { continue };
            let Some(target) = m.state_index(&on.target).map(|i| &m.states[i]) else {
                continue;
            };
            if !target.variant.fields.is_empty() {
                cx.push(syn::Error::new_spanned(
                    plain,
                    format!(
                        "`plain` transition into `{}`, which holds data: a plain transition builds its target from nothing; remove `plain` and write `impl Handler<..> for {}` for `on({} => {})`",
                        on.target,
                        s.variant.ident,
                        on.event,
                        on.target
                    ),
                ));
            }
        }
    }
}

/// A state timeout: at most one per state, not on a terminal state, a positive duration that
/// fits the timers' range, and an event the state has a transition for (it fires in that
/// state, so it must be taken there).
fn timeouts_are_sound(cx: &Ctxt, m: &Machine<'_>) {
    // MAX_TIMER_DURATION of fsm_core::timer, in milliseconds.
    const MAX_MS: u64 = 1 << 40;
    for s in &m.states {
        let state = s.variant.ident;
        for extra in s.attrs.timeouts.iter().skip(1) {
            cx.push(syn::Error::new_spanned(
                &extra.keyword,
                format!("second `state_timeout` on `{state}`: a state has one state timeout; arm more from its handlers with named timers (`effects.start_timer(..)`)"),
            ));
        }
        let Some(t) = s.attrs.timeouts.first() else {
            continue;
        };
        if !s.attrs.terminal.is_empty() {
            cx.push(syn::Error::new_spanned(
                &t.keyword,
                format!("`state_timeout` on terminal state `{state}`: a terminal state accepts no event, so its timeout could never be taken; remove it"),
            ));
        }
        // A `const` or an expression is checked where rustc evaluates it (the table).
        match t.ms {
            None => {}
            Some(Some(0)) => cx.push(syn::Error::new_spanned(
                &t.amount,
                "a state timeout of zero: give a positive duration",
            )),
            Some(Some(ms)) if ms <= MAX_MS => {}
            Some(_) => cx.push(syn::Error::new_spanned(
                &t.amount,
                "this state timeout is longer than the longest timer (2^40 ms, about 34 years)",
            )),
        }
        if s.attrs.terminal.is_empty()
            && !s
                .attrs
                .on
                .iter()
                .any(|on| bare(&on.event) == bare(&t.event))
        {
            let events: Vec<String> = s
                .attrs
                .on
                .iter()
                .map(|on| format!("`{}`", on.event))
                .collect();
            cx.push(syn::Error::new_spanned(
                &t.event,
                format!(
                    "the state timeout of `{state}` fires `{ev}`, but `{state}` has no transition on `{ev}`: add `on({ev} => Target)` to `{state}`{also}",
                    ev = t.event,
                    also = if events.is_empty() {
                        String::new()
                    } else {
                        format!(" (it has transitions on {})", events.join(", "))
                    }
                ),
            ));
        }
    }
}

/// A state with data gets a view type `<State>Ref` in the generated module; a state of that
/// very name would define the same type twice.
fn no_view_name_clash(cx: &Ctxt, m: &Machine<'_>) {
    for s in m.states.iter().filter(|s| !s.variant.fields.is_empty()) {
        let view = format!("{}Ref", bare(s.variant.ident));
        if let Some(clash) = m.states.iter().find(|o| bare(o.variant.ident) == view) {
            cx.push(syn::Error::new_spanned(
                clash.variant.ident,
                format!(
                    "state `{view}` has the name of the generated view type of state `{}`: rename one of them",
                    s.variant.ident
                ),
            ));
        }
    }
}

fn state_list(m: &Machine<'_>) -> String {
    m.states
        .iter()
        .map(|s| format!("`{}`", s.variant.ident))
        .collect::<Vec<_>>()
        .join(", ")
}

fn event_type(cx: &Ctxt, m: &Machine<'_>) {
    if m.attrs.event.is_none() {
        cx.push(syn::Error::new_spanned(
            m.ident,
            format!(
                "missing event type: add `#[fsm(event = YourEvents)]` on `{}`, where `YourEvents` is the enum (deriving `Event`) of the commands this machine accepts",
                m.ident
            ),
        ));
    }
}

fn has_states(cx: &Ctxt, m: &Machine<'_>) {
    if m.states.is_empty() {
        cx.push(syn::Error::new_spanned(
            m.ident,
            format!(
                "`{}` has no variants: a state machine needs at least one state",
                m.ident
            ),
        ));
    }
}

fn one_initial(cx: &Ctxt, m: &Machine<'_>) {
    let initial: Vec<(&Ident, &Ident)> = m
        .states
        .iter()
        .flat_map(|s| s.attrs.initial.iter().map(move |k| (s.variant.ident, k)))
        .collect();
    match initial.as_slice() {
        [] if !m.states.is_empty() => cx.push(syn::Error::new_spanned(
            m.ident,
            format!(
                "no initial state: mark exactly one state of `{}` with `#[fsm(initial)]`",
                m.ident
            ),
        )),
        [] | [_] => {}
        [(first, _), rest @ ..] => {
            for (state, keyword) in rest {
                let msg = if state == first {
                    format!("duplicate `initial` on `{state}`: give it once")
                } else {
                    format!(
                        "more than one initial state: `{first}` is already initial, so `{state}` cannot be; keep `initial` on exactly one state"
                    )
                };
                cx.push(syn::Error::new_spanned(keyword, msg));
            }
        }
    }
}

fn flags_once(cx: &Ctxt, m: &Machine<'_>) {
    for s in &m.states {
        for k in s.attrs.terminal.iter().skip(1) {
            cx.push(syn::Error::new_spanned(
                k,
                format!(
                    "duplicate `terminal` on `{}`: give it once",
                    s.variant.ident
                ),
            ));
        }
        for (key, paths) in [("enter", &s.attrs.enter), ("exit", &s.attrs.exit)] {
            for p in paths.iter().skip(1) {
                cx.push(syn::Error::new_spanned(
                    p,
                    format!(
                        "second `{key}` on `{}`: a state has one {key} hook; call both functions from one",
                        s.variant.ident
                    ),
                ));
            }
        }
        for p in s.attrs.validate.iter().skip(1) {
            cx.push(syn::Error::new_spanned(
                p,
                format!(
                    "second `validate` on `{}`: a state has one invariant function; combine the checks in it",
                    s.variant.ident
                ),
            ));
        }
    }
}

/// The Levenshtein distance between two names (they are short: the quadratic table is fine).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Returns whether every target is known.
/// The state a misspelt name was probably meant to be: the nearest by edit distance, if it
/// is near enough.
pub(crate) fn near_state(m: &Machine<'_>, written: &Ident) -> Option<usize> {
    let written = written.to_string();
    m.states
        .iter()
        .enumerate()
        .map(|(i, s)| (i, edit_distance(&s.variant.ident.to_string(), &written)))
        .filter(|&(_, d)| d <= 1 + written.len() / 4)
        .min_by_key(|&(_, d)| d)
        .map(|(i, _)| i)
}

fn targets_exist(cx: &Ctxt, m: &Machine<'_>) -> bool {
    let mut known = true;
    for s in &m.states {
        for on in &s.attrs.on {
            if m.state_index(&on.target).is_none() {
                known = false;
                if m.superstate_names.contains(&bare(&on.target)) {
                    // A superstate whose own mistake is reported: that is the one error.
                    continue;
                }
                let near = near_state(m, &on.target).map(|i| m.states[i].variant.ident);
                let hint = near.map_or_else(String::new, |n| format!("; did you mean `{n}`?"));
                cx.push(syn::Error::new_spanned(
                    &on.target,
                    format!(
                        "unknown target state `{}` in `on({} => {})`: the states of `{}` are {}{hint}",
                        on.target,
                        on.event,
                        on.target,
                        m.ident,
                        state_list(m)
                    ),
                ));
            }
        }
    }
    known
}

fn no_duplicate_pairs(cx: &Ctxt, m: &Machine<'_>) {
    for s in &m.states {
        let mut seen: HashMap<String, &Ident> = HashMap::new();
        for on in &s.attrs.on {
            match seen.get(&bare(&on.event)) {
                Some(earlier) => cx.push(syn::Error::new_spanned(
                    &on.event,
                    format!(
                        "duplicate transition: state `{}` already has a transition on `{}` (to `{}`); a state has at most one transition per event",
                        s.variant.ident, on.event, earlier
                    ),
                )),
                None => {
                    seen.insert(bare(&on.event), &on.target);
                }
            }
        }
    }
}

fn terminal_has_no_transitions(cx: &Ctxt, m: &Machine<'_>) {
    for s in m.states.iter().filter(|s| !s.attrs.terminal.is_empty()) {
        for on in &s.attrs.on {
            cx.push(syn::Error::new_spanned(
                on.tokens(),
                format!(
                    "transition out of terminal state `{}`: a terminal state accepts no event; remove `terminal` or this `on({} => {})`",
                    s.variant.ident, on.event, on.target
                ),
            ));
        }
    }
}

fn no_dead_ends(cx: &Ctxt, m: &Machine<'_>) {
    for s in &m.states {
        if s.attrs.terminal.is_empty() && s.attrs.on.is_empty() {
            cx.push(syn::Error::new_spanned(
                s.variant.ident,
                format!(
                    "state `{}` is a dead end: it has no transition out and is not terminal; add `#[fsm(on(Event => Target))]` or mark it `#[fsm(terminal)]`",
                    s.variant.ident
                ),
            ));
        }
    }
}

fn all_reachable(cx: &Ctxt, m: &Machine<'_>) {
    let initial: Vec<usize> = m
        .states
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.attrs.initial.is_empty())
        .map(|(i, _)| i)
        .collect();
    // With no or several initial states reachability is undefined; that error is reported.
    let [start] = initial.as_slice() else { return };
    let mut seen = vec![false; m.states.len()];
    seen[*start] = true;
    let mut queue = VecDeque::from([*start]);
    while let Some(i) = queue.pop_front() {
        for on in &m.states[i].attrs.on {
            if let Some(t) = m.state_index(&on.target) {
                if !seen[t] {
                    seen[t] = true;
                    queue.push_back(t);
                }
            }
        }
    }
    for (s, _) in m.states.iter().zip(&seen).filter(|(_, seen)| !**seen) {
        cx.push(syn::Error::new_spanned(
            s.variant.ident,
            format!(
                "state `{}` is unreachable from the initial state `{}`: add a transition into it (`on(Event => {})` on a reachable state) or remove it",
                s.variant.ident, m.states[*start].variant.ident, s.variant.ident
            ),
        ));
    }
}

fn policies_are_consistent(cx: &Ctxt, m: &Machine<'_>) {
    for s in &m.states {
        let state = s.variant.ident;
        let mut named: HashMap<String, &'static str> = HashMap::new();
        let mut otherwise: Option<&'static str> = None;
        for p in &s.attrs.policies {
            let kw = p.kind.keyword();
            if !s.attrs.terminal.is_empty() && kw == "defer" {
                cx.push(syn::Error::new_spanned(
                    &p.keyword,
                    format!(
                        "`defer` on terminal state `{state}`: a terminal state never changes, so deferred events would wait forever; use `dump` or `delegate`"
                    ),
                ));
            }
            match &p.event {
                Some(event) => {
                    if s.attrs.on.iter().any(|on| bare(&on.event) == bare(event)) {
                        cx.push(syn::Error::new_spanned(
                            event,
                            format!(
                                "`{kw}({event})` on `{state}`, which has a transition on `{event}`: a policy applies only to events without a transition; remove one of them"
                            ),
                        ));
                    } else if let Some(earlier) = named.insert(bare(event), kw) {
                        cx.push(syn::Error::new_spanned(
                            event,
                            format!(
                                "`{event}` already has a policy on `{state}` (`{earlier}`): give each event one policy"
                            ),
                        ));
                    }
                }
                None => {
                    if let Some(earlier) = otherwise.replace(kw) {
                        cx.push(syn::Error::new_spanned(
                            &p.keyword,
                            format!(
                                "`{state}` already has a policy for all other events (`{earlier}`): write one bare `defer`, `dump` or `delegate` per state"
                            ),
                        ));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::{parse_quote, DeriveInput};

    fn errors(input: DeriveInput) -> Vec<String> {
        let cx = Ctxt::new();
        let m = Machine::from_input(&cx, &input).unwrap();
        check(&cx, &m);
        match cx.check() {
            Ok(()) => vec![],
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn a_sound_table_passes() {
        let e = errors(parse_quote! {
            #[fsm(event = Cmd)]
            enum M {
                #[fsm(initial, on(Go => B), defer(Stop))]
                A,
                #[fsm(on(Stop => C), on(Go => B), dump)]
                B,
                #[fsm(terminal, delegate)]
                C,
            }
        });
        assert_eq!(e, Vec::<String>::new());
    }

    #[test]
    fn all_errors_of_one_input_are_reported() {
        let e = errors(parse_quote! {
            enum M {
                #[fsm(initial, on(Go => Nowhere), on(Go => B))]
                A,
                #[fsm(initial)]
                B,
                #[fsm(terminal, on(Go => A), defer(X))]
                C,
            }
        });
        assert_eq!(super::edit_distance("Onn", "On"), 1);
        assert_eq!(super::edit_distance("Toggel", "Toggle"), 2);
        assert_eq!(super::edit_distance("", "ab"), 2);
        let expected = [
            "missing event type",
            "more than one initial state",
            "unknown target state `Nowhere`",
            "duplicate transition: state `A` already has a transition on `Go`",
            "transition out of terminal state `C`",
            "state `B` is a dead end",
            "`defer` on terminal state `C`",
        ];
        for (got, want) in e.iter().zip(expected) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
        assert_eq!(e.len(), expected.len(), "{e:#?}");
    }

    #[test]
    fn unreachable_states_are_found_by_search_from_the_initial_state() {
        let e = errors(parse_quote! {
            #[fsm(event = Cmd)]
            enum M {
                #[fsm(initial, on(Go => B))]
                A,
                #[fsm(on(Go => A))]
                B,
                #[fsm(on(Go => A))]
                Island,
            }
        });
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("state `Island` is unreachable from the initial state `A`"));
    }

    #[test]
    fn a_state_named_like_a_view_type_is_reported() {
        let e = errors(parse_quote! {
            #[fsm(event = Cmd)]
            enum M {
                #[fsm(initial, on(Go => ARef))]
                A(u8),
                #[fsm(terminal)]
                ARef,
            }
        });
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("state `ARef` has the name of the generated view type of state `A`")
        );
    }

    #[test]
    fn conflicting_policies_are_reported() {
        let e = errors(parse_quote! {
            #[fsm(event = Cmd)]
            enum M {
                #[fsm(initial, on(Go => A), defer(Go), defer(X), dump(X), dump, delegate)]
                A,
            }
        });
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].starts_with("`defer(Go)` on `A`, which has a transition on `Go`"));
        assert!(e[1].starts_with("`X` already has a policy on `A` (`defer`)"));
        assert!(e[2].starts_with("`A` already has a policy for all other events (`dump`)"));
    }
}
