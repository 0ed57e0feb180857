//! The registrar machine: the derived machine against the hand-written mirror, and properties
//! of runtime dispatch checked over random event sequences.

use fsm_core::{Effects, Event, Reason, Redacted, StateId, StateMachine, TypedState};
use fsm_examples::registrar::{order, order_cmd, Order, OrderCmd, OrderEffect};
use fsm_examples::registrar_by_hand::{self, HandOrder};
use proptest::prelude::*;

fn domain() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("example.org".to_string()),
        Just("rust-lang.org".to_string()),
        Just("-bad-.org".to_string()),
        Just("nodot".to_string()),
        Just(String::new()),
    ]
}

fn command() -> impl Strategy<Value = OrderCmd> {
    prop_oneof![
        domain().prop_map(|domain| OrderCmd::Submit { domain }),
        (
            prop_oneof![Just(0u64), Just(999), Just(1_000), Just(25_000)],
            "[a-z]{0,6}"
        )
            .prop_map(|(cents, card_token)| OrderCmd::Pay { cents, card_token }),
        Just(OrderCmd::Confirm),
        "[a-z ]{0,12}".prop_map(|reason| OrderCmd::Reject { reason }),
        Just(OrderCmd::Retry),
        Just(OrderCmd::Cancel),
    ]
}

#[test]
fn derived_table_equals_the_hand_written_table() {
    assert_eq!(Order::TABLE, &registrar_by_hand::TABLE);
    assert_eq!(Order::TABLE.verify(), Ok(()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn derived_machine_behaves_exactly_like_the_hand_written_one(
        cmds in prop::collection::vec(command(), 0..40)
    ) {
        let mut derived = Order::Draft;
        let mut hand = HandOrder::Draft;
        let (mut fx_d, mut fx_h) = (Effects::new(), Effects::new());
        for cmd in cmds {
            let d = derived.apply_into(cmd.clone(), &mut fx_d);
            let h = hand.apply_into(cmd, &mut fx_h);
            match (d, h) {
                (Ok(d), Ok(h)) => {
                    prop_assert_eq!((d.from(), d.event(), d.to()), (h.from(), h.event(), h.to()));
                }
                (Err(d), Err(h)) => {
                    prop_assert_eq!(d.reason(), h.reason());
                    prop_assert_eq!(d.to_string(), h.to_string());
                }
                (d, h) => prop_assert!(false, "derived {:?} but hand-written {:?}", d, h),
            }
            prop_assert_eq!(format!("{derived:?}"), format!("{hand:?}"));
            prop_assert_eq!(fx_d.as_slice(), fx_h.as_slice());
        }
    }

    #[test]
    fn accepts_exactly_the_transitions_the_table_lists(
        cmds in prop::collection::vec(command(), 0..40)
    ) {
        let table = Order::TABLE;
        let mut m = Order::Draft;
        for cmd in cmds {
            let from = m.state();
            let target = table.target(from, cmd.id());
            prop_assert_eq!(m.accepts(&cmd), target.is_some());
            match (m.apply(cmd), target) {
                (Ok(applied), Some(to)) => {
                    prop_assert_eq!(applied.transition.from(), from);
                    prop_assert_eq!(applied.transition.to(), to);
                    prop_assert_eq!(m.state(), to);
                }
                // Guards and invariants may refuse a declared transition...
                (Err(r), Some(_)) => prop_assert!(
                    matches!(r.reason(), Reason::Refused(_) | Reason::Invalid { .. }),
                    "declared transition rejected for {r}"
                ),
                // ...but an undeclared one is always rejected as such.
                (Err(r), None) => {
                    let expected = if table.is_terminal(from) { Reason::Terminal } else { Reason::NoTransition };
                    prop_assert_eq!(r.reason(), &expected);
                }
                (Ok(a), None) => prop_assert!(false, "undeclared transition taken: {:?}", a.transition),
            }
        }
    }

    #[test]
    fn rejected_event_leaves_state_and_effects_unchanged(
        cmds in prop::collection::vec(command(), 0..40)
    ) {
        let mut m = Order::Draft;
        let mut effects = Effects::new();
        for cmd in cmds {
            let before = m.clone();
            let effects_before = effects.as_slice().to_vec();
            if let Err(r) = m.apply_into(cmd, &mut effects) {
                prop_assert_eq!(&m, &before);
                prop_assert_eq!(effects.as_slice(), effects_before.as_slice());
                prop_assert_eq!(r.state(), before.state());
            }
        }
    }

    #[test]
    fn invariants_hold_and_states_are_reachable_after_every_accepted_transition(
        cmds in prop::collection::vec(command(), 0..40)
    ) {
        let reachable = Order::TABLE.reachable();
        let mut m = Order::Draft;
        for cmd in cmds {
            if m.apply(cmd).is_ok() {
                prop_assert!(m.validate().is_ok(), "{m:?} breaks its invariant");
                prop_assert!(reachable.contains(&m.state()));
            }
        }
    }
}

#[test]
fn a_guard_refusal_and_a_broken_invariant_are_typed_rejections() {
    let mut m = Order::Draft;
    let r = m
        .apply(OrderCmd::Submit {
            domain: "not a domain".into(),
        })
        .unwrap_err();
    assert_eq!(m, Order::Draft);
    assert_eq!(
        r.reason(),
        &Reason::Invalid {
            target: StateId::new(1),
            refusal: fsm_core::Refusal::new("not a valid domain name")
        }
    );
    assert_eq!(
        r.to_string(),
        "Order rejected event `Submit` in state `Draft`: the new state `Submitted` would break its invariant: not a valid domain name"
    );
    m.apply(OrderCmd::Submit {
        domain: "example.org".into(),
    })
    .unwrap();
    let r = m
        .apply(OrderCmd::Pay {
            cents: 5,
            card_token: "tok_secret_4242".into(),
        })
        .unwrap_err();
    assert!(matches!(r.reason(), Reason::Refused(_)));
    assert_eq!(r.state_name(), "Submitted");
    assert_eq!(r.event_name(), "Pay");
}

#[test]
fn sensitive_fields_never_appear_in_rejections_or_redacted_output() {
    const SECRET: &str = "tok_secret_4242";
    let pay = || OrderCmd::Pay {
        cents: 5,
        card_token: SECRET.into(),
    };
    let mut m = Order::Draft;
    let rejection = m.apply(pay()).unwrap_err();
    let printed = format!("{rejection} {rejection:?} {:#?}", rejection);
    assert!(!printed.contains(SECRET), "{printed}");
    let redacted = format!("{:?} {}", Redacted(&pay()), Redacted(&pay()));
    assert!(!redacted.contains(SECRET), "{redacted}");
    assert!(redacted.contains("card_token: <redacted>"), "{redacted}");
    let payload = order_cmd::Pay::try_from(pay()).unwrap();
    assert_eq!(
        format!("{payload:?}"),
        "Pay { cents: 5, card_token: <redacted> }"
    );
}

#[test]
fn typestate_walks_the_declared_path_and_hands_back_refused_states() {
    let submitted = order::Draft
        .submit(order_cmd::Submit {
            domain: "example.org".into(),
        })
        .unwrap()
        .into_state();
    let refused = submitted
        .pay(order_cmd::Pay {
            cents: 1,
            card_token: String::new(),
        })
        .unwrap_err();
    assert!(matches!(refused.rejection.reason(), Reason::Refused(_)));
    let submitted = refused.state;
    assert_eq!(submitted.domain, "example.org");
    let paid = submitted
        .pay(order_cmd::Pay {
            cents: 1_500,
            card_token: "t".into(),
        })
        .unwrap();
    assert_eq!(
        paid.effects.as_slice(),
        [OrderEffect::Register {
            domain: "example.org".into(),
            cents: 1_500
        }]
    );
    let registered = paid.state.confirm(order_cmd::Confirm).unwrap().into_state();
    let as_enum: Order = registered.into();
    assert_eq!(
        as_enum,
        Order::Registered {
            domain: "example.org".into()
        }
    );
}

#[test]
fn conversions_between_the_enum_and_typed_states_are_explicit_moves() {
    assert_eq!(
        order::Paid::try_from(Order::Draft).unwrap_err(),
        Order::Draft
    );
    let paid = order::Paid::try_from(Order::Paid {
        domain: "a.io".into(),
        cents: 9,
    })
    .unwrap();
    assert_eq!((paid.domain.as_str(), paid.cents), ("a.io", 9));
    assert_eq!(
        <order::Paid as TypedState>::ID,
        Order::TABLE.state_id("Paid").unwrap()
    );
    assert_eq!(Order::from(order::Cancelled), Order::Cancelled);
    assert_eq!(
        OrderCmd::from(order_cmd::Reject { reason: "x".into() }),
        OrderCmd::Reject { reason: "x".into() }
    );
}

#[test]
fn restored_values_are_validated() {
    let bad = Order::Submitted {
        domain: "NOT VALID".into(),
    };
    let err = bad.validate().unwrap_err();
    assert_eq!(err.state_name(), "Submitted");
    assert_eq!(
        err.to_string(),
        "Order in state `Submitted` breaks its invariant: not a valid domain name"
    );
    assert!(Order::Cancelled.validate().is_ok());
}

#[test]
fn metadata_answers_reachability_and_draws_diagrams() {
    let t = Order::TABLE;
    let registered = t.state_id("Registered").unwrap();
    let path: Vec<&str> = t
        .path_to(registered)
        .unwrap()
        .iter()
        .map(|tr| t.event_name(tr.event))
        .collect();
    assert_eq!(path, ["Submit", "Pay", "Confirm"]);
    assert_eq!(t.reachable().len(), 6);
    let submitted = t.state_id("Submitted").unwrap();
    assert_eq!(
        t.policy(submitted, t.event_id("Confirm").unwrap()),
        Some(fsm_core::Policy::Defer)
    );
    let mermaid = t.to_mermaid();
    assert!(mermaid.starts_with("stateDiagram-v2\n    [*] --> Draft\n"));
    assert!(mermaid.contains("    Failed --> Submitted : Retry\n"));
    assert!(mermaid.contains("    note right of Submitted : defers Confirm\n"));
    assert!(t.to_dot().contains("Paid -> Failed [label=\"Reject\"];"));
}

#[test]
fn benchmark_workloads_are_what_they_claim() {
    use fsm_examples::workload::{w1_cycle, w2_half_invalid};
    let run = |events: Vec<OrderCmd>| {
        let mut m = Order::Draft;
        let ok = events
            .into_iter()
            .filter(|e| m.apply(e.clone()).is_ok())
            .count();
        (ok, m.is_terminal())
    };
    let (ok, terminal) = run(w1_cycle(10_000));
    assert_eq!(ok, 10_000, "W1 is all valid");
    assert!(!terminal);
    let (ok, terminal) = run(w2_half_invalid(10_000, 7));
    assert!((4_000..=6_000).contains(&ok), "W2 accepted {ok} of 10000");
    assert!(!terminal);
}
