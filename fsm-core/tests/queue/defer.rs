//! `defer(..)`: postponed events replay in their original order after the next real state
//! change, before newer commands, and never after a self-transition or a rejection (the
//! postpone semantics of Erlang's `gen_statem`).

use std::sync::{Arc, Mutex};

use fsm_core::queue::{self, DelegateCause, DumpCause, Outcome, Overload};

use crate::light::{self, drain, stay, step, walks, Cmd, Light};

#[test]
fn deferred_commands_replay_in_original_order_after_a_state_change() {
    let (tx, mut rx) = light::queue(16);
    let mut machine = Light::Red;
    for id in 1..=3 {
        tx.try_submit(light::walk(id)).unwrap();
    }
    assert!(walks(&drain(&mut rx, &mut machine)).is_empty());
    assert_eq!(rx.deferred(), 3);
    assert_eq!(rx.metrics().counts.deferred, 3);

    tx.try_submit(step(0, 0)).unwrap(); // Red -> Amber: still deferred there
    tx.try_submit(step(0, 1)).unwrap(); // Amber -> Green: Walk is taken
    let seen = drain(&mut rx, &mut machine);
    assert_eq!(walks(&seen), vec![1, 2, 3]);
    assert_eq!(rx.deferred(), 0);
    let c = rx.metrics().counts;
    assert_eq!((c.applied, c.deferred), (5, 0));
    assert!(c.is_balanced());
}

#[test]
fn deferred_commands_are_not_replayed_after_a_self_transition() {
    let (tx, mut rx) = light::queue(16);
    let mut machine = Light::Amber;
    let walk = tx.try_request(light::walk(1)).unwrap();
    tx.try_submit(stay(0)).unwrap(); // Amber -> Amber
    drain(&mut rx, &mut machine);
    assert_eq!(rx.deferred(), 1, "a self-transition is not a state change");
    assert_eq!(rx.metrics().replayed, 0, "nothing was retried");
    assert!(walk.try_outcome().is_none());

    tx.try_submit(step(0, 1)).unwrap(); // Amber -> Green
    let seen = drain(&mut rx, &mut machine);
    assert_eq!(walks(&seen), vec![1]);
    assert_eq!(rx.metrics().replayed, 1);
    assert!(walk.wait().is_applied());
}

#[test]
fn deferred_commands_are_not_replayed_after_a_rejection() {
    let (tx, mut rx) = light::queue(16);
    let mut machine = Light::Amber;
    let walk = tx.try_request(light::walk(1)).unwrap();
    let bad = tx.try_request(Cmd::Bad).unwrap();
    drain(&mut rx, &mut machine);
    assert!(matches!(bad.wait(), Outcome::Rejected(_)));
    assert_eq!(
        rx.deferred(),
        1,
        "staying in the same state releases nothing"
    );
    assert_eq!(rx.metrics().replayed, 0, "nothing was retried");
    assert!(walk.try_outcome().is_none());
}

#[test]
fn released_commands_run_before_newer_ones() {
    let (tx, mut rx) = light::queue(16);
    let mut machine = Light::Amber;
    tx.try_submit(light::walk(1)).unwrap();
    tx.try_submit(step(0, 1)).unwrap(); // Amber -> Green: Walk 1 runs next...
    tx.try_submit(light::walk(2)).unwrap(); // ...before this newer Walk, though both arrived earlier
    tx.try_submit(step(0, 2)).unwrap(); // Green -> Red
    let seen = drain(&mut rx, &mut machine);
    let order: Vec<_> = seen.iter().map(|s| (s.event, s.n)).collect();
    assert_eq!(
        order,
        vec![("Step", 1), ("Walk", 1), ("Walk", 2), ("Step", 2)]
    );
    assert_eq!(machine, Light::Red);
}

#[test]
fn a_command_deferred_again_keeps_its_place() {
    let (tx, mut rx) = light::queue(16);
    let mut machine = Light::Red;
    tx.try_submit(light::walk(1)).unwrap();
    tx.try_submit(light::walk(2)).unwrap();
    tx.try_submit(step(0, 0)).unwrap(); // Red -> Amber: 1 and 2 replay and are deferred again
    tx.try_submit(light::walk(3)).unwrap(); // deferred after them
    drain(&mut rx, &mut machine);
    assert_eq!(rx.deferred(), 3);
    assert_eq!(rx.metrics().replayed, 2);

    tx.try_submit(step(0, 1)).unwrap(); // Amber -> Green
    let seen = drain(&mut rx, &mut machine);
    assert_eq!(walks(&seen), vec![1, 2, 3]);
}

#[test]
fn a_released_command_that_changes_state_releases_the_rest_in_order() {
    // Two state changes in one batch: each releases what is postponed at that moment, and the
    // released commands run before the rest of the batch.
    let (tx, mut rx) = light::queue(16);
    let mut machine = Light::Red;
    tx.try_submit(light::walk(1)).unwrap();
    tx.try_submit(step(0, 0)).unwrap(); // Red -> Amber: Walk 1 deferred again
    tx.try_submit(light::walk(2)).unwrap();
    tx.try_submit(step(0, 1)).unwrap(); // Amber -> Green: Walk 1, Walk 2
    tx.try_submit(step(0, 2)).unwrap(); // Green -> Red
    tx.try_submit(light::walk(3)).unwrap(); // deferred in Red
    let seen = drain(&mut rx, &mut machine);
    let order: Vec<_> = seen.iter().map(|s| (s.event, s.n)).collect();
    assert_eq!(
        order,
        vec![
            ("Step", 0),
            ("Step", 1),
            ("Walk", 1),
            ("Walk", 2),
            ("Step", 2)
        ]
    );
    assert_eq!(rx.deferred(), 1);
}

/// What the sinks saw: the walk's id and the cause, as text.
type SinkLog = Arc<Mutex<Vec<(u32, String)>>>;

fn limited(policy: Overload) -> (queue::Sender<Cmd>, queue::Consumer<Light>, SinkLog) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (dumps, delegations) = (log.clone(), log.clone());
    let id = |e: &Cmd| match e {
        Cmd::Walk { id } => *id,
        _ => u32::MAX,
    };
    let (tx, rx) = queue::bounded::<Light>(16)
        .overload(policy)
        .defer_limit(2)
        .on_dump(move |e: &Cmd, c: &DumpCause| dumps.lock().unwrap().push((id(e), c.to_string())))
        .overflow(move |e: Cmd, c: &DelegateCause| {
            delegations.lock().unwrap().push((id(&e), c.to_string()));
            Ok(())
        })
        .build()
        .unwrap();
    (tx, rx, log)
}

#[test]
fn the_defer_limit_dumps_the_newest_under_backpressure() {
    let (tx, mut rx, log) = limited(Overload::Backpressure);
    let tickets: Vec<_> = (1..=3)
        .map(|id| tx.try_request(light::walk(id)).unwrap())
        .collect();
    drain(&mut rx, &mut Light::Red);
    assert_eq!(rx.deferred(), 2);
    assert_eq!(
        tickets[2].try_outcome(),
        Some(Outcome::Dumped(DumpCause::DeferLimit))
    );
    assert_eq!(log.lock().unwrap().len(), 1);
    assert_eq!(log.lock().unwrap()[0].0, 3);
    let c = rx.metrics().counts;
    assert_eq!((c.dumped, c.deferred), (1, 2));
    assert!(c.is_balanced());
}

#[test]
fn the_defer_limit_drops_the_oldest_postponed_under_drop_oldest() {
    let (tx, mut rx, log) = limited(Overload::DropOldest);
    let tickets: Vec<_> = (1..=3)
        .map(|id| tx.try_request(light::walk(id)).unwrap())
        .collect();
    let mut machine = Light::Amber;
    drain(&mut rx, &mut machine);
    assert_eq!(
        tickets[0].try_outcome(),
        Some(Outcome::Dumped(DumpCause::DeferLimit))
    );
    assert_eq!(log.lock().unwrap()[0].0, 1);
    tx.try_submit(step(0, 0)).unwrap();
    assert_eq!(walks(&drain(&mut rx, &mut machine)), vec![2, 3]);
}

#[test]
fn the_defer_limit_delegates_under_delegate() {
    let (tx, mut rx, log) = limited(Overload::Delegate);
    let tickets: Vec<_> = (1..=3)
        .map(|id| tx.try_request(light::walk(id)).unwrap())
        .collect();
    drain(&mut rx, &mut Light::Red);
    assert_eq!(
        tickets[2].try_outcome(),
        Some(Outcome::Delegated(DelegateCause::DeferLimit))
    );
    assert_eq!(log.lock().unwrap()[0].0, 3);
    assert_eq!(rx.metrics().counts.delegated, 1);
}
