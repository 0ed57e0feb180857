//! The lowering stage, between `check` and `expand`: what each declared transition does,
//! decided once, so that `expand` only prints.
//!
//! A transition's plan says how its target is computed ([`Kind`]), which state it enters
//! (as an index in the table), and which hooks run around it. The rules live here and
//! nowhere else: a transition *moves* when its target is another state or it is marked
//! `reenter`; a moving transition runs the source's exit hook before computing the target
//! and the target's enter hook after; a `plain` transition into a unit state without an
//! invariant, around which no hook runs, is *direct* (dispatch writes the target in place,
//! with no forwarder and no generic runner).

use syn::Path;

use crate::ast::Machine;
use crate::attr::OnAttr;
use crate::names::bare;

/// How a transition computes its target.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(test, derive(Debug))]
pub(crate) enum Kind {
    /// `plain` into a unit state with no invariant and no hook around it: written in place.
    Direct,
    /// `plain` with a hook or an invariant around it: the unit target built from nothing.
    Plain,
    /// `with = f`: the function the table names.
    With,
    /// `update = f`: a copy of the state changed in place by the function the table names.
    Update,
    /// The user's `Handler` impl.
    Handler,
}

/// A hook a transition runs.
#[derive(Clone, Copy)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) enum Hook<'m> {
    /// A state's: `fn(view, &mut Effects<F>)`.
    State(&'m Path),
    /// A superstate's: `fn(&mut Effects<F>)`.
    Superstate(&'m Path),
}

/// One declared transition, planned.
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct Plan<'m> {
    /// The declaration.
    pub(crate) on: &'m OnAttr,
    pub(crate) kind: Kind,
    /// The target's index in the table; `None` for a state the machine does not declare
    /// (`check` reported it).
    pub(crate) target: Option<usize>,
    /// The hooks run before the target is computed, in order: the state's exit hook, then
    /// those of the superstates it leaves, innermost first.
    pub(crate) exits: Vec<Hook<'m>>,
    /// The hooks run after: those of the superstates it enters, outermost first, then the
    /// target's enter hook.
    pub(crate) enters: Vec<Hook<'m>>,
    /// The outermost superstate the transition leaves and enters again though the source and
    /// the target are both inside it (an external transition declared on a superstate):
    /// recorded in the table, where the timer rules read which superstates a transition
    /// crosses. `None` when it crosses only those the states themselves are not both in.
    pub(crate) reenters: Option<usize>,
}

impl Plan<'_> {
    pub(crate) fn is_direct(&self) -> bool {
        self.kind == Kind::Direct
    }

    /// The target's index as the table's `u16` (0 for an unknown target: `check` reported
    /// it and the expansion is not compiled as a working machine).
    pub(crate) fn to(&self) -> u16 {
        self.target.unwrap_or(0) as u16
    }
}

/// The plans of a machine: per state (in declaration order), its transitions' plans (in
/// declaration order).
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct Ir<'m> {
    pub(crate) states: Vec<Vec<Plan<'m>>>,
}

impl Ir<'_> {
    /// Whether any transition is direct (the machine then gets its own `apply_into`).
    pub(crate) fn any_direct(&self) -> bool {
        self.states.iter().flatten().any(Plan::is_direct)
    }
}

/// Plans every transition of `m`.
///
/// The hooks follow UML's and SCXML's order. A transition that moves leaves the state and
/// every superstate of it below the least common ancestor of the source and the target (the
/// innermost superstate both are inside), runs its handler, then enters every superstate of
/// the target below that ancestor, outermost first, and the target. A transition declared on
/// a superstate into a state inside it (or into the superstate itself) leaves that superstate
/// too and enters it again (SCXML's external transition), unless it is marked `local`.
pub(crate) fn lower<'m>(m: &'m Machine<'_>) -> Ir<'m> {
    let h = &m.hierarchy;
    let states = m
        .states
        .iter()
        .enumerate()
        .map(|(from, s)| {
            s.attrs
                .on
                .iter()
                .map(|on| {
                    let target = m.state_index(&on.target);
                    let target_state = target.map(|i| &m.states[i]);
                    let moves = bare(&on.target) != bare(s.variant.ident) || on.reenter.is_some();
                    let (mut exits, mut enters) = (Vec::new(), Vec::new());
                    let mut reenters = None;
                    if moves {
                        let source_chain = h.chain(from);
                        let target_chain = target.map(|t| h.chain(t)).unwrap_or_default();
                        // The least common ancestor: the innermost superstate of the source
                        // that the target is inside too; for a transition declared on a
                        // superstate into itself or below, that superstate's parent.
                        let mut common = source_chain
                            .iter()
                            .position(|sup| target_chain.contains(sup))
                            .unwrap_or(source_chain.len());
                        let shared = common;
                        // `local` keeps a transition into a state inside the superstate
                        // from leaving it; into the superstate itself it is external all the
                        // same (SCXML: its target is not a proper descendant).
                        let external = |declared: usize| {
                            on.local.is_none() || on.into_superstate == Some(declared)
                        };
                        if let crate::attr::Declared::Superstate(declared) = on.declared {
                            if let Some(at) = source_chain.iter().position(|&sup| sup == declared) {
                                if target_chain.contains(&declared) && external(declared) {
                                    common = common.max(at + 1);
                                }
                            }
                        }
                        if common > shared {
                            reenters = Some(source_chain[common - 1]);
                        }
                        let common_sup = source_chain.get(common).copied();
                        exits.extend(s.attrs.exit.first().map(Hook::State));
                        exits.extend(
                            source_chain[..common]
                                .iter()
                                .filter_map(|&sup| h.superstates[sup].exit.as_ref())
                                .map(Hook::Superstate),
                        );
                        let below: Vec<usize> = target_chain
                            .iter()
                            .copied()
                            .take_while(|&sup| Some(sup) != common_sup)
                            .collect();
                        enters.extend(
                            below
                                .iter()
                                .rev()
                                .filter_map(|&sup| h.superstates[sup].enter.as_ref())
                                .map(Hook::Superstate),
                        );
                        enters.extend(
                            target_state
                                .and_then(|t| t.attrs.enter.first())
                                .map(Hook::State),
                        );
                    }
                    let kind = match (&on.plain, &on.with, &on.update) {
                        (Some(_), _, _) => {
                            let bare_unit = target_state.is_some_and(|t| {
                                t.attrs.validate.is_empty() && t.variant.fields.is_empty()
                            });
                            if bare_unit && exits.is_empty() && enters.is_empty() {
                                Kind::Direct
                            } else {
                                Kind::Plain
                            }
                        }
                        (None, Some(_), _) => Kind::With,
                        (None, None, Some(_)) => Kind::Update,
                        (None, None, None) => Kind::Handler,
                    };
                    Plan {
                        on,
                        kind,
                        target,
                        exits,
                        enters,
                        reenters,
                    }
                })
                .collect()
        })
        .collect();
    Ir { states }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctxt::Ctxt;
    use syn::{parse_quote, DeriveInput};

    /// The plans of `input`'s machine as (state, event, kind, target, exit, enter) rows.
    fn plans(input: DeriveInput) -> Vec<(String, String, Kind, Option<usize>, bool, bool)> {
        let cx = Ctxt::new();
        let m = Machine::from_input(&cx, &input).unwrap();
        let _ = cx.check();
        let ir = lower(&m);
        m.states
            .iter()
            .zip(&ir.states)
            .flat_map(|(s, plans)| {
                plans.iter().map(|p| {
                    (
                        s.variant.ident.to_string(),
                        p.on.event.to_string(),
                        p.kind,
                        p.target,
                        !p.exits.is_empty(),
                        !p.enters.is_empty(),
                    )
                })
            })
            .collect()
    }

    #[test]
    fn each_kind_of_transition_is_planned_once() {
        let rows = plans(parse_quote! {
            #[fsm(event = Cmd)]
            enum Job {
                #[fsm(initial, on(Start => Running, plain), on(Load => Loaded, with = load))]
                Idle,
                #[fsm(on(Tick => Running, update = tick), on(Stop => Idle, plain), exit = leave)]
                Running { n: u32 },
                #[fsm(on(Run => Running), on(Check => Checked, plain))]
                Loaded { data: u8 },
                #[fsm(terminal, validate = ok)]
                Checked,
            }
        });
        assert_eq!(
            rows,
            [
                (
                    "Idle".into(),
                    "Start".into(),
                    Kind::Plain,
                    Some(1),
                    false,
                    false
                ),
                (
                    "Idle".into(),
                    "Load".into(),
                    Kind::With,
                    Some(2),
                    false,
                    false
                ),
                // A self-transition does not move: no hook runs.
                (
                    "Running".into(),
                    "Tick".into(),
                    Kind::Update,
                    Some(1),
                    false,
                    false
                ),
                // Into a unit state, but the exit hook runs: not direct.
                (
                    "Running".into(),
                    "Stop".into(),
                    Kind::Plain,
                    Some(0),
                    true,
                    false
                ),
                (
                    "Loaded".into(),
                    "Run".into(),
                    Kind::Handler,
                    Some(1),
                    false,
                    false
                ),
                // Into a unit state with an invariant: not direct.
                (
                    "Loaded".into(),
                    "Check".into(),
                    Kind::Plain,
                    Some(3),
                    false,
                    false
                ),
            ]
        );
    }

    #[test]
    fn a_plain_transition_into_a_bare_unit_state_is_direct_unless_a_hook_runs() {
        let rows = plans(parse_quote! {
            #[fsm(event = Cmd)]
            enum Door {
                #[fsm(initial, on(Close => Closed, plain), on(Stay => Open, plain, reenter))]
                Open,
                #[fsm(on(Open => Open, plain), on(Knock => Closed, plain), enter = shut)]
                Closed,
            }
        });
        assert_eq!(
            rows,
            [
                // Closed's enter hook runs: not direct.
                (
                    "Open".into(),
                    "Close".into(),
                    Kind::Plain,
                    Some(1),
                    false,
                    true
                ),
                // `reenter` moves, but Open has no hooks: direct.
                (
                    "Open".into(),
                    "Stay".into(),
                    Kind::Direct,
                    Some(0),
                    false,
                    false
                ),
                (
                    "Closed".into(),
                    "Open".into(),
                    Kind::Direct,
                    Some(0),
                    false,
                    false
                ),
                // A self-transition without `reenter` runs no hook, even with one declared.
                (
                    "Closed".into(),
                    "Knock".into(),
                    Kind::Direct,
                    Some(1),
                    false,
                    false
                ),
            ]
        );
        let cx = Ctxt::new();
        let input: DeriveInput = parse_quote! {
            #[fsm(event = Cmd)]
            enum Door {
                #[fsm(initial, on(Close => Closed, plain))]
                Open,
                #[fsm(on(Open => Open, plain), enter = shut)]
                Closed,
            }
        };
        let m = Machine::from_input(&cx, &input).unwrap();
        let _ = cx.check();
        assert!(lower(&m).any_direct());
    }

    #[test]
    fn a_reentered_self_transition_runs_both_hooks_and_an_unknown_target_has_no_index() {
        let rows = plans(parse_quote! {
            #[fsm(event = Cmd)]
            enum Lamp {
                #[fsm(initial, on(Blink => On, reenter), on(Off => Nowhere, plain), enter = lit, exit = dim)]
                On,
            }
        });
        assert_eq!(
            rows,
            [
                (
                    "On".into(),
                    "Blink".into(),
                    Kind::Handler,
                    Some(0),
                    true,
                    true
                ),
                ("On".into(), "Off".into(), Kind::Plain, None, true, false),
            ]
        );
    }
}
