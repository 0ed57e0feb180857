//! Closing: intake stops, accepted commands are drained or handed back, nothing is lost
//! silently.

use std::thread;

use fsm_core::queue::{Outcome, Shutdown, SubmitError};
use fsm_core::Effects;

use crate::light::{self, drain, step, walk, Light};

#[test]
fn a_submit_after_close_hands_the_command_back() {
    let (tx, _rx) = light::queue(4);
    tx.close();
    assert!(tx.is_closed());
    match tx.try_submit(step(0, 3)) {
        Err(SubmitError::Closed(cmd)) => assert_eq!(cmd.into_event(), step(0, 3)),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert_eq!(tx.metrics().counts.closed, 1);
}

#[test]
fn shutdown_with_drain_applies_what_was_queued_and_hands_back_what_stays_postponed() {
    let (tx, mut rx) = light::queue(8);
    tx.try_submit(walk(1)).unwrap();
    let queued: Vec<_> = (0..3)
        .map(|s| tx.try_request(step(0, s)).unwrap())
        .collect();
    let mut machine = Light::Red;
    let mut fx = Effects::new();
    let left = rx.shutdown(Shutdown::Drain, &mut machine, &mut fx);
    // Red -> Amber -> Green (Walk 1 runs) -> Red.
    assert!(queued.into_iter().all(|t| t.wait().is_applied()));
    assert_eq!(machine, Light::Red);
    assert!(left.is_empty());
    assert!(tx.try_submit(step(0, 9)).unwrap_err().is_closed());

    let (tx, mut rx) = light::queue(8);
    let postponed = tx.try_request(walk(2)).unwrap();
    let left = rx.shutdown(Shutdown::Drain, &mut Light::Red, &mut fx);
    assert_eq!(
        left.into_iter().map(|c| c.into_event()).collect::<Vec<_>>(),
        vec![walk(2)]
    );
    assert_eq!(postponed.wait(), Outcome::Closed);
    let c = rx.metrics().counts;
    assert_eq!((c.closed, c.deferred), (1, 0));
    assert!(c.is_balanced());
}

#[test]
fn shutdown_with_hand_back_returns_every_accepted_command_in_order() {
    let (tx, mut rx) = light::queue(8);
    let mut machine = Light::Red;
    tx.try_submit(walk(1)).unwrap();
    drain(&mut rx, &mut machine); // Walk 1 postponed
    let tickets: Vec<_> = (0..3)
        .map(|s| tx.try_request(step(0, s)).unwrap())
        .collect();
    let left = rx.shutdown(Shutdown::HandBack, &mut machine, &mut Effects::new());
    let events: Vec<_> = left.into_iter().map(|c| c.into_event()).collect();
    assert_eq!(events, vec![step(0, 0), step(0, 1), step(0, 2), walk(1)]);
    assert!(tickets.into_iter().all(|t| t.wait() == Outcome::Closed));
    assert_eq!(machine, Light::Red, "nothing was applied");
    let c = rx.metrics().counts;
    assert_eq!((c.submitted, c.closed, c.queued, c.deferred), (4, 4, 0, 0));
}

#[test]
fn close_wakes_a_blocked_producer_with_its_command() {
    let (tx, rx) = light::queue(1);
    tx.try_submit(step(0, 0)).unwrap();
    let blocked = {
        let tx = tx.clone();
        thread::spawn(move || tx.submit(step(0, 1)))
    };
    rx.close();
    match blocked.join().unwrap() {
        Err(SubmitError::Closed(cmd)) => assert_eq!(cmd.into_event(), step(0, 1)),
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[test]
fn dropping_the_consumer_answers_every_ticket_closed() {
    let (tx, rx) = light::queue(4);
    let tickets: Vec<_> = (0..3)
        .map(|s| tx.try_request(step(0, s)).unwrap())
        .collect();
    drop(rx);
    assert!(tickets.into_iter().all(|t| t.wait() == Outcome::Closed));
    assert!(tx.try_submit(step(0, 3)).unwrap_err().is_closed());
    let c = tx.metrics().counts;
    assert_eq!((c.submitted, c.closed, c.queued), (4, 4, 0));
}

#[test]
fn run_returns_once_the_last_sender_is_gone_and_the_queue_is_empty() {
    let (tx, mut rx) = light::queue(2);
    let producers: Vec<_> = (0..3u8)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                for seq in 0..100 {
                    tx.submit(step(p, seq)).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let mut machine = Light::Red;
    let mut applied = 0;
    let left = rx.run(&mut machine, |fx| applied += fx.count());
    producers.into_iter().for_each(|p| p.join().unwrap());
    assert!(left.is_empty());
    assert_eq!(applied, 300);
    assert_eq!(rx.metrics().counts.applied, 300);
}
