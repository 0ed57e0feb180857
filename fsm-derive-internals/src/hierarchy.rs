//! Superstates: checked, then lowered into the flat table every later stage reads.
//!
//! A superstate (`superstate(Active, initial = Trial, on(Cancel => Cancelled, plain))` on the
//! enum, `parent = Active` on its states) is a name for a group of states, not a variant: the
//! machine is always in one state (a leaf), and that state and its data are what is stored.
//! An event the state has no transition for bubbles to its superstates, innermost first, then
//! to the transitions declared on the enum (from any state that is not terminal). So each
//! state *inherits* the transitions and policies of its superstates for events it does not
//! handle itself, and this module writes them into the state's own list, marked with where
//! they were declared: `check`, `lower` and `expand` then see a flat machine, dispatch costs
//! what the same machine written flat costs, and every typestate type gets a method for each
//! transition it inherits. A transition whose target is a superstate enters that superstate's
//! initial state (through nested initial states). A transition declared on a superstate (or
//! for any state) into the very state the machine is in leaves that state and enters it
//! again, as `reenter` does: SCXML exits a transition source's active descendants.
//!
//! Inner declarations win: a state's own transition for an event, or its own policy for it,
//! hides a superstate's (the diagram draws each where it was declared, so the inner one shows
//! beside the outer). A policy for one event declared on an inner superstate also hides an
//! outer superstate's transition for that event; a bare policy (`defer` for every event
//! without a transition) applies to what no level handles.

use std::collections::HashMap;

use proc_macro2::Span;
use syn::Ident;

use crate::ast::Machine;
use crate::attr::SuperAttr;
use crate::ctxt::Ctxt;
use crate::names::bare;

/// The hierarchy as the table records it.
#[derive(Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct Hierarchy {
    /// The superstates, in declaration order.
    pub(crate) superstates: Vec<Superstate>,
    /// Each state's superstate (an index in `superstates`), in state order.
    pub(crate) parent_of: Vec<Option<usize>>,
}

/// One superstate, resolved.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct Superstate {
    pub(crate) name: Ident,
    pub(crate) parent: Option<usize>,
    /// The state a transition into it enters.
    pub(crate) initial: usize,
    /// Every state inside it, at any depth.
    pub(crate) states: Vec<usize>,
    /// Its hooks: `fn(&mut Effects<F>)`.
    pub(crate) enter: Option<syn::Path>,
    pub(crate) exit: Option<syn::Path>,
    /// Its timeout.
    pub(crate) timeout: Option<crate::attr::TimeoutAttr>,
}

impl Hierarchy {
    pub(crate) fn is_flat(&self) -> bool {
        self.superstates.is_empty()
    }

    /// The superstates state `k` is inside, innermost first.
    pub(crate) fn chain(&self, k: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = self.parent_of.get(k).copied().flatten();
        while let Some(p) = at {
            if out.contains(&p) {
                break;
            }
            out.push(p);
            at = self.superstates.get(p).and_then(|s| s.parent);
        }
        out
    }
}

/// Checks the superstates of `m` and writes what each state inherits into its own lists.
/// Records every mistake in `cx`; with any, nothing is inherited.
pub(crate) fn resolve(cx: &Ctxt, m: &mut Machine<'_>) {
    let supers = std::mem::take(&mut m.attrs.superstates);
    let any_state = std::mem::take(&mut m.attrs.on);
    let parents_given = m.states.iter().any(|s| !s.attrs.parent.is_empty());
    if supers.is_empty() && any_state.is_empty() && !parents_given {
        return;
    }
    m.superstate_names = supers.iter().map(|s| bare(&s.name)).collect();
    let mistake = |span_of: &Ident, message: String| {
        cx.push(syn::Error::new_spanned(span_of, message));
    };

    // Names: distinct, and not a state's.
    let mut index: HashMap<String, usize> = HashMap::new();
    // A superstate with a mistake in its name is not checked further (one error per mistake).
    let mut misnamed = vec![false; supers.len()];
    for (i, s) in supers.iter().enumerate() {
        let name = bare(&s.name);
        if m.state_index(&s.name).is_some() {
            misnamed[i] = true;
            mistake(
                &s.name,
                format!("`{name}` is a state of this machine and cannot also name a superstate: give the superstate another name"),
            );
        } else if index.insert(name.clone(), i).is_some() {
            mistake(
                &s.name,
                format!("superstate `{name}` is declared twice: declare it once"),
            );
        }
    }
    let names = || {
        let mut v: Vec<String> = supers.iter().map(|s| bare(&s.name)).collect();
        v.dedup();
        if v.is_empty() {
            "none is declared; declare one on the enum: `#[fsm(superstate(Name, initial = State))]`"
                .to_owned()
        } else {
            format!("the superstates are: {}", v.join(", "))
        }
    };
    let lookup = |name: &Ident, of: &str| -> Option<usize> {
        let found = index.get(&bare(name)).copied();
        if found.is_none() {
            mistake(
                name,
                format!(
                    "unknown superstate `{}` as the parent of `{of}`; {}",
                    bare(name),
                    names()
                ),
            );
        }
        found
    };

    // Parents.
    let super_parent: Vec<Option<usize>> = supers
        .iter()
        .map(|s| s.parent.as_ref().and_then(|p| lookup(p, &bare(&s.name))))
        .collect();
    let mut parent_of: Vec<Option<usize>> = Vec::with_capacity(m.states.len());
    for s in &m.states {
        let name = bare(s.variant.ident);
        if let Some(extra) = s.attrs.parent.get(1) {
            mistake(extra, format!("state `{name}` names a parent twice: a state is directly inside one superstate"));
        }
        parent_of.push(s.attrs.parent.first().and_then(|p| lookup(p, &name)));
    }

    // No superstate inside itself: each cycle reported once, at its first superstate.
    let mut cyclic = vec![false; supers.len()];
    for (i, s) in supers.iter().enumerate() {
        if cyclic[i] {
            continue;
        }
        let mut path = vec![bare(&s.name)];
        let mut members = vec![i];
        let mut at = super_parent[i];
        while let Some(p) = at {
            path.push(bare(&supers[p].name));
            if p == i {
                for &k in &members {
                    cyclic[k] = true;
                }
                mistake(
                    &s.name,
                    format!("superstate `{}` is inside itself: {}; one of them must have another parent or none", bare(&s.name), path.join(" is inside ")),
                );
                break;
            }
            if path.len() > supers.len() + 1 {
                break; // a cycle further up, reported at its own superstates
            }
            members.push(p);
            at = super_parent[p];
        }
    }

    // Children, and the initial state of each (not asked of a superstate in a cycle: its
    // children are its cycle).
    for (i, s) in supers.iter().enumerate() {
        if misnamed[i] || cyclic[i] {
            continue;
        }
        let name = bare(&s.name);
        let child_states: Vec<usize> = (0..m.states.len())
            .filter(|&k| parent_of[k] == Some(i))
            .collect();
        let child_supers: Vec<usize> = (0..supers.len())
            .filter(|&k| super_parent[k] == Some(i))
            .collect();
        if child_states.is_empty() && child_supers.is_empty() {
            mistake(
                &s.name,
                format!("superstate `{name}` has no states: mark the states inside it `#[fsm(parent = {name})]`, or remove it"),
            );
            continue;
        }
        let children = || {
            child_states
                .iter()
                .map(|&k| bare(m.states[k].variant.ident))
                .chain(child_supers.iter().map(|&k| bare(&supers[k].name)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &s.initial {
            None => mistake(
                &s.name,
                format!("superstate `{name}` has no initial state: add `initial = State`, the state a transition into `{name}` enters (one of: {})", children()),
            ),
            Some(initial) => {
                let direct_state = m
                    .state_index(initial)
                    .filter(|k| parent_of[*k] == Some(i));
                let direct_super = index
                    .get(&bare(initial))
                    .copied()
                    .filter(|k| super_parent[*k] == Some(i));
                if direct_state.is_none() && direct_super.is_none() {
                    mistake(
                        initial,
                        format!("`{}` is not directly inside superstate `{name}`: its initial state is one of its children: {}", bare(initial), children()),
                    );
                }
            }
        }
    }
    check_targets(cx, m, &supers, &any_state, &index);
    if cx.has_errors() || cyclic.iter().any(|&c| c) {
        // Nothing is built on a broken table (`check` skips the graph's checks too, and
        // does not call a target that names a superstate unknown).
        return;
    }

    // The state each superstate enters: down its initial chain to a state.
    let entered: Vec<usize> = (0..supers.len())
        .map(|i| {
            let mut at = i;
            loop {
                let initial = supers[at].initial.as_ref().expect("checked above");
                if let Some(k) = m.state_index(initial) {
                    break k;
                }
                at = index[&bare(initial)];
            }
        })
        .collect();
    let entered_names: Vec<Ident> = entered
        .iter()
        .map(|&k| m.states[k].variant.ident.clone())
        .collect();
    // The state's own name, at the place the superstate was named.
    let resolve_target = |target: &Ident| -> Ident {
        match index.get(&bare(target)) {
            Some(&i) => {
                let mut leaf = entered_names[i].clone();
                leaf.set_span(target.span());
                leaf
            }
            None => target.clone(),
        }
    };

    // A state's own transitions into a superstate enter its initial state.
    for s in &mut m.states {
        for on in &mut s.attrs.on {
            on.into_superstate = index.get(&bare(&on.target)).copied();
            on.target = resolve_target(&on.target);
        }
    }

    // What each state inherits, innermost first, then from the enum.
    for (state, &parent) in m.states.iter_mut().zip(&parent_of) {
        if !state.attrs.terminal.is_empty() {
            continue;
        }
        let mut chain = Vec::new();
        let mut at = parent;
        while let Some(p) = at {
            chain.push(p);
            at = super_parent[p];
        }
        let state_name = bare(state.variant.ident);
        let levels = chain
            .iter()
            .map(|&p| (&supers[p].on, &supers[p].policies[..]))
            .chain(std::iter::once((&any_state, &[][..])));
        for (ons, policies) in levels {
            let attrs = &mut state.attrs;
            for p in policies {
                let taken = match &p.event {
                    Some(e) => {
                        attrs.on.iter().any(|o| bare(&o.event) == bare(e))
                            || attrs
                                .policies
                                .iter()
                                .any(|q| q.event.as_ref().is_some_and(|q| bare(q) == bare(e)))
                    }
                    None => attrs.policies.iter().any(|q| q.event.is_none()),
                };
                if !taken {
                    attrs.policies.push(p.clone());
                }
            }
            for on in ons {
                let event = bare(&on.event);
                let hidden = attrs.on.iter().any(|o| bare(&o.event) == event)
                    || attrs
                        .policies
                        .iter()
                        .any(|q| q.event.as_ref().is_some_and(|q| bare(q) == event));
                if hidden {
                    continue;
                }
                let mut inherited = on.clone();
                inherited.into_superstate = index.get(&bare(&on.target)).copied();
                inherited.target = resolve_target(&on.target);
                if bare(&inherited.target) == state_name {
                    // Declared above the state, into the state it is in: the state is left
                    // and entered again (SCXML exits the source's active descendants).
                    inherited.reenter = Some(Ident::new("reenter", Span::call_site()));
                }
                attrs.on.push(inherited);
            }
        }
    }

    let states_inside = |i: usize| -> Vec<usize> {
        (0..m.states.len())
            .filter(|&k| {
                let mut at = parent_of[k];
                while let Some(p) = at {
                    if p == i {
                        return true;
                    }
                    at = super_parent[p];
                }
                false
            })
            .collect()
    };
    m.hierarchy = Hierarchy {
        superstates: supers
            .iter()
            .enumerate()
            .map(|(i, s)| Superstate {
                name: s.name.clone(),
                parent: super_parent[i],
                initial: entered[i],
                states: states_inside(i),
                enter: s.enter.clone(),
                exit: s.exit.clone(),
                timeout: s.timeout.clone(),
            })
            .collect(),
        parent_of,
    };
    superstate_timeouts_are_sound(cx, m);
}

/// A superstate's timeout is a positive duration no longer than the longest timer, and every
/// state inside the superstate (that is not terminal) takes its event: declared on the
/// superstate, every state inherits it.
fn superstate_timeouts_are_sound(cx: &Ctxt, m: &Machine<'_>) {
    const MAX_MS: u64 = 1 << 40;
    for sup in &m.hierarchy.superstates {
        let Some(t) = &sup.timeout else { continue };
        match t.ms {
            Some(Some(0)) => cx.push(syn::Error::new_spanned(
                &t.amount,
                "a superstate timeout of zero: give a positive duration",
            )),
            Some(Some(ms)) if ms > MAX_MS => cx.push(syn::Error::new_spanned(
                &t.amount,
                "this superstate timeout is longer than the longest timer (2^40 ms, about 34 years)",
            )),
            Some(None) => cx.push(syn::Error::new_spanned(
                &t.amount,
                "this superstate timeout is longer than the longest timer (2^40 ms, about 34 years)",
            )),
            _ => {}
        }
        let missing: Vec<String> = sup
            .states
            .iter()
            .map(|&k| &m.states[k])
            .filter(|s| s.attrs.terminal.is_empty())
            .filter(|s| {
                !s.attrs
                    .on
                    .iter()
                    .any(|on| bare(&on.event) == bare(&t.event))
            })
            .map(|s| format!("`{}`", bare(s.variant.ident)))
            .collect();
        if !missing.is_empty() {
            let name = bare(&sup.name);
            cx.push(syn::Error::new_spanned(
                &t.event,
                format!(
                    "the timeout of superstate `{name}` fires `{ev}`, which {} inside it {} no transition for: declare `on({ev} => Target)` on `{name}` (every state inside then takes it)",
                    missing.join(", "),
                    if missing.len() == 1 { "has" } else { "have" },
                    ev = bare(&t.event)
                ),
            ));
        }
    }
}

/// The targets of transitions declared on superstates and on the enum name a state or a
/// superstate, checked once here (not once per state that inherits them).
fn check_targets(
    cx: &Ctxt,
    m: &Machine<'_>,
    supers: &[SuperAttr],
    any_state: &[crate::attr::OnAttr],
    index: &HashMap<String, usize>,
) {
    for on in supers.iter().flat_map(|s| &s.on).chain(any_state) {
        if m.state_index(&on.target).is_none() && !index.contains_key(&bare(&on.target)) {
            let near = crate::check::near_state(m, &on.target)
                .map(|i| format!("; did you mean `{}`?", bare(m.states[i].variant.ident)))
                .unwrap_or_default();
            cx.push(syn::Error::new_spanned(
                &on.target,
                format!(
                    "unknown target `{}` in `on({} => {})`: not a state or a superstate of `{}`{near}",
                    bare(&on.target),
                    bare(&on.event),
                    bare(&on.target),
                    m.ident
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::{parse_quote, DeriveInput};

    /// Each state's transitions (event => target, where declared) and policies after
    /// resolving.
    fn resolved(input: DeriveInput) -> Vec<(String, Vec<String>, Vec<String>)> {
        let cx = Ctxt::new();
        let mut m = Machine::from_input(&cx, &input).unwrap();
        resolve(&cx, &mut m);
        cx.check().unwrap();
        m.states
            .iter()
            .map(|s| {
                let on = s
                    .attrs
                    .on
                    .iter()
                    .map(|o| {
                        let at = match o.declared {
                            crate::attr::Declared::State => "own".to_owned(),
                            crate::attr::Declared::Superstate(i) => format!("super {i}"),
                            crate::attr::Declared::AnyState => "any".to_owned(),
                        };
                        format!("{} => {} ({at})", o.event, o.target)
                    })
                    .collect();
                let policies = s
                    .attrs
                    .policies
                    .iter()
                    .map(|p| {
                        format!(
                            "{} {}",
                            p.keyword,
                            p.event.as_ref().map_or("*".to_owned(), Ident::to_string)
                        )
                    })
                    .collect();
                (s.variant.ident.to_string(), on, policies)
            })
            .collect()
    }

    #[test]
    fn inner_declarations_hide_outer_ones_and_a_bare_policy_hides_none() {
        let got = resolved(parse_quote! {
            #[fsm(
                event = Cmd,
                on(Audit => Done, plain),
                superstate(Outer, initial = Inner, on(Pay => Done, plain), on(Ping => B, plain)),
                superstate(Inner, parent = Outer, initial = A, defer(Pay), dump)
            )]
            enum M {
                #[fsm(initial, parent = Inner, on(Ping => A, plain))]
                A,
                #[fsm(parent = Outer, on(Go => Outer, plain))]
                B,
                #[fsm(terminal, parent = Outer)]
                Done,
            }
        });
        let row = |s: &str| got.iter().find(|r| r.0 == s).unwrap().clone();
        // A: its own Ping; Inner's `defer(Pay)` hides Outer's Pay; Audit from any state; the
        // bare `dump` hides no transition.
        assert_eq!(row("A").1, ["Ping => A (own)", "Audit => Done (any)"]);
        assert_eq!(row("A").2, ["defer Pay", "dump *"]);
        // B: its own Go, into Outer, enters Outer's initial state Inner and then A.
        assert_eq!(
            row("B").1,
            [
                "Go => A (own)",
                "Pay => Done (super 0)",
                "Ping => B (super 0)",
                "Audit => Done (any)"
            ]
        );
        assert!(row("B").2.is_empty());
        // Terminal: inherits nothing.
        assert!(row("Done").1.is_empty() && row("Done").2.is_empty());
    }

    #[test]
    fn a_machine_without_superstates_is_left_as_it_is() {
        let got = resolved(parse_quote! {
            #[fsm(event = Cmd)]
            enum M {
                #[fsm(initial, on(Go => B, plain))]
                A,
                #[fsm(terminal)]
                B,
            }
        });
        assert_eq!(got[0].1, ["Go => B (own)"]);
    }
}
