//! Event sequences on the example machines, checked by `fsm_core::testing`.

use fsm_core::testing::{Checker, Run};
use fsm_core::{StateMachine, Table};
use fsm_examples::registrar::{Order, OrderCmd};
use fsm_examples::registrar_by_hand::HandOrder;

/// The first byte picks where sequences start (the initial state, or a state drawn from the
/// bytes); the rest are events. Checks every property of `fsm_core::testing` (with the snapshot
/// round trip) on the derived registrar, runs the same sequence on the hand-written registrar,
/// and requires both to decide every step alike.
pub fn transition_table(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let checker = Checker::<Order>::new().snapshots().max_len(256);
    let run = if mode & 1 == 0 {
        checker.fuzz(&Order::Draft, rest)
    } else {
        checker.fuzz_any_start(rest)
    };
    let run = run.unwrap_or_else(|v| panic!("{v}"));
    if mode & 1 == 0 {
        let hand = Checker::<HandOrder>::new()
            .max_len(256)
            .fuzz(&HandOrder::Draft, rest)
            .unwrap_or_else(|v| panic!("{v}"));
        mirrored(&run, &hand, rest);
    }
}

/// The derived machine and the hand-written one have the same table, so the same sequence must
/// take the same transitions (compared by name: the tables may list them in another order).
fn mirrored(derived: &Run, hand: &Run, data: &[u8]) {
    let names = |table: &'static Table, run: &Run| -> Vec<String> {
        run.transitions
            .iter()
            .filter_map(|&i| table.transitions().get(i))
            .map(|t| {
                format!(
                    "{} --{}--> {}",
                    table.state_name(t.from),
                    table.event_name(t.event),
                    table.state_name(t.to)
                )
            })
            .collect()
    };
    assert_eq!(
        (derived.accepted, derived.rejected, names(Order::TABLE, derived)),
        (hand.accepted, hand.rejected, names(HandOrder::TABLE, hand)),
        "the derived and the hand-written registrar decided the sequence from {:?} differently: {:?}",
        data,
        decode_events(data)
    );
}

fn decode_events(data: &[u8]) -> Vec<OrderCmd> {
    use arbitrary::{Arbitrary, Unstructured};
    let mut u = Unstructured::new(data);
    let mut out = Vec::new();
    while let Ok(e) = OrderCmd::arbitrary(&mut u) {
        out.push(e);
        if u.is_empty() {
            break;
        }
    }
    out
}
