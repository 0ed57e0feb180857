//! Deadlines, on a manual clock: no test sleeps.

use std::thread;
use std::time::Duration;

use fsm_core::queue::{self, Command, ManualClock, Outcome, SubmitError};

use crate::light::{self, drain, step, walk, Cmd, Light};

fn queue_on(clock: &ManualClock, capacity: usize) -> (queue::Sender<Cmd>, queue::Consumer<Light>) {
    light::builder(capacity)
        .clock(clock.clock())
        .build()
        .unwrap()
}

#[test]
fn a_command_that_waited_past_its_deadline_expires_and_is_not_applied() {
    let clock = ManualClock::new();
    let (tx, mut rx) = queue_on(&clock, 8);
    let deadline = clock.now() + Duration::from_millis(10);
    let late = tx
        .try_request(Command::new(step(0, 0)).with_deadline(deadline))
        .unwrap();
    clock.advance(Duration::from_millis(10));
    let mut machine = Light::Red;
    let seen = drain(&mut rx, &mut machine);
    assert_eq!(late.wait(), Outcome::Expired);
    assert!(seen.is_empty());
    assert_eq!(machine, Light::Red);
    let c = rx.metrics().counts;
    assert_eq!((c.expired, c.applied), (1, 0));
    assert!(c.is_balanced());
}

#[test]
fn a_command_within_its_deadline_is_applied() {
    let clock = ManualClock::new();
    let (tx, mut rx) = queue_on(&clock, 8);
    let deadline = clock.now() + Duration::from_millis(10);
    let on_time = tx
        .try_request(Command::new(step(0, 0)).with_deadline(deadline))
        .unwrap();
    clock.advance(Duration::from_millis(9));
    drain(&mut rx, &mut Light::Red);
    assert!(on_time.wait().is_applied());
}

#[test]
fn a_command_past_its_deadline_at_submit_is_handed_back() {
    let clock = ManualClock::new();
    let (tx, _rx) = queue_on(&clock, 8);
    let deadline = clock.now();
    match tx.try_submit(Command::new(step(0, 7)).with_deadline(deadline)) {
        Err(SubmitError::Expired(cmd)) => assert_eq!(cmd.into_event(), step(0, 7)),
        other => panic!("expected Expired, got {other:?}"),
    }
    assert_eq!(tx.metrics().counts.expired, 1);
}

#[test]
fn a_postponed_command_expires_at_its_deadline_without_a_state_change() {
    let clock = ManualClock::new();
    let (tx, mut rx) = queue_on(&clock, 8);
    let deadline = clock.now() + Duration::from_millis(3);
    let walk = tx
        .try_request(Command::new(walk(1)).with_deadline(deadline))
        .unwrap();
    let mut machine = Light::Red;
    drain(&mut rx, &mut machine);
    assert_eq!(rx.deferred(), 1);
    clock.advance(Duration::from_millis(3));
    drain(&mut rx, &mut machine);
    assert_eq!(walk.wait(), Outcome::Expired);
    assert_eq!(rx.deferred(), 0);
    let c = rx.metrics().counts;
    assert_eq!((c.expired, c.deferred), (1, 0));
    assert!(c.is_balanced());
}

#[test]
fn a_blocked_submit_gives_up_when_the_clock_passes_its_deadline() {
    let clock = ManualClock::new();
    let (tx, rx) = queue_on(&clock, 1);
    tx.try_submit(step(0, 0)).unwrap(); // full
    let deadline = clock.now() + Duration::from_millis(5);
    let blocked = {
        let tx = tx.clone();
        thread::spawn(move || tx.submit(Command::new(step(0, 1)).with_deadline(deadline)))
    };
    clock.advance(Duration::from_millis(5));
    match blocked.join().unwrap() {
        Err(SubmitError::Expired(cmd)) => assert_eq!(cmd.into_event(), step(0, 1)),
        other => panic!("expected Expired, got {other:?}"),
    }
    let c = rx.metrics().counts;
    assert_eq!((c.submitted, c.expired, c.queued), (2, 1, 1));
}
