//! The timer rules and the timers section, on a two-state pacer.

use super::rules::*;
use super::section::*;
use super::*;
use crate::machine::Transition;
use crate::table::{EventId, StateMeta, TransitionMeta};

// Sensing --Pulse--> Sensing, Sensing --Missed--> Pacing, Pacing --Pulse--> Sensing.
static TABLE: Table = Table::new(
    "Pacer",
    &[
        StateMeta::new("Sensing").timeout(1200, 1),
        StateMeta::new("Pacing"),
    ],
    &["Pulse", "Missed"],
    &[
        TransitionMeta::new(0, 0, 0),
        TransitionMeta::new(0, 1, 1),
        TransitionMeta::new(1, 0, 0),
    ],
    0,
);

fn t(from: u16, event: u16, to: u16) -> Transition {
    Transition::new(
        &TABLE,
        StateId::new(from),
        EventId::new(event),
        StateId::new(to),
    )
}

fn run(
    timers: &mut Timers<u32>,
    tr: Transition,
    requests: Vec<TimerRequest>,
    now: u64,
) -> Result<(), TimerError> {
    on_accepted(timers, &TABLE, &tr, requests, now, 3, |_, e| {
        e.downcast::<u32>().map_err(|e| TimerError::WrongEventType {
            timer: TimerKind::Event,
            expected: "u32",
            found: e.type_name(),
        })
    })
}

fn start(name: &'static str, ms: u64, e: u32) -> TimerRequest {
    TimerRequest::Start {
        name: name.into(),
        after: Duration::from_millis(ms),
        event: TimerEvent::new(e),
    }
}

#[test]
fn entering_a_state_arms_its_timeout_and_leaving_it_cancels_it() {
    let mut timers = Timers::default();
    run(&mut timers, t(1, 0, 0), vec![], 1000).unwrap();
    let armed = timers.get(&TimerKind::State).unwrap();
    assert_eq!((armed.deadline, armed.instance), (2200, 1));
    run(&mut timers, t(0, 1, 1), vec![], 1500).unwrap();
    assert!(timers.is_empty());
}

#[test]
fn a_self_transition_keeps_the_state_timeout_unless_restarted() {
    let mut timers = Timers::default();
    run(&mut timers, t(1, 0, 0), vec![], 1000).unwrap();
    run(&mut timers, t(0, 0, 0), vec![], 1100).unwrap();
    assert_eq!(timers.get(&TimerKind::State).unwrap().deadline, 2200);
    run(
        &mut timers,
        t(0, 0, 0),
        vec![TimerRequest::RestartStateTimeout],
        1100,
    )
    .unwrap();
    let armed = timers.get(&TimerKind::State).unwrap();
    assert_eq!((armed.deadline, armed.instance), (2300, 2));
}

#[test]
fn any_accepted_event_cancels_the_event_timeout_and_named_timers_survive() {
    let mut timers = Timers::default();
    let idle = TimerRequest::EventTimeout {
        after: Duration::from_millis(50),
        event: TimerEvent::new(7u32),
    };
    run(
        &mut timers,
        t(0, 0, 0),
        vec![idle, start("retry", 500, 9)],
        0,
    )
    .unwrap();
    assert!(timers.get(&TimerKind::Event).is_some());
    run(&mut timers, t(0, 1, 1), vec![], 10).unwrap();
    assert!(timers.get(&TimerKind::Event).is_none());
    let retry = timers.get(&TimerKind::Named("retry".into())).unwrap();
    assert_eq!((retry.deadline, retry.event), (500, Some(9)));
}

#[test]
fn restarting_a_named_timer_replaces_it_with_a_new_instance() {
    let mut timers = Timers::default();
    run(&mut timers, t(1, 0, 0), vec![start("retry", 500, 1)], 0).unwrap();
    let first = timers
        .get(&TimerKind::Named("retry".into()))
        .unwrap()
        .instance;
    run(&mut timers, t(0, 0, 0), vec![start("retry", 800, 2)], 100).unwrap();
    let named: Vec<_> = timers
        .armed
        .iter()
        .filter(|a| matches!(a.kind, TimerKind::Named(_)))
        .collect();
    assert_eq!(named.len(), 1);
    assert!(named[0].instance > first);
    assert_eq!((named[0].deadline, named[0].event), (900, Some(2)));
    assert!(!timers.is_armed(&TimerKind::Named("retry".into()), first));
}

#[test]
fn bad_requests_are_typed_errors() {
    let mut timers = Timers::default();
    let zero = run(&mut timers, t(0, 0, 0), vec![start("a", 0, 1)], 0).unwrap_err();
    assert!(matches!(zero, TimerError::ZeroDuration { .. }), "{zero}");
    let many = vec![
        start("a", 1, 1),
        start("b", 1, 1),
        start("c", 1, 1),
        start("d", 1, 1),
    ];
    let err = run(&mut timers, t(0, 0, 0), many, 0).unwrap_err();
    assert_eq!(err, TimerError::TooMany { armed: 4, limit: 3 });
    let wrong = TimerRequest::Start {
        name: "a".into(),
        after: Duration::from_millis(1),
        event: TimerEvent::new("text"),
    };
    let err = run(&mut timers, t(0, 0, 0), vec![wrong], 0).unwrap_err();
    assert!(err.to_string().contains("&str"), "{err}");
    let overflow = run(
        &mut timers,
        t(0, 0, 0),
        vec![start("a", 5, 1)],
        u64::MAX - 1,
    )
    .unwrap_err();
    assert!(matches!(overflow, TimerError::Overflow { .. }));
    let bad_name = TimerRequest::Cancel { name: "a b".into() };
    assert!(check_request(&bad_name, &TABLE, StateId::new(0)).is_err());
    let no_timeout = check_request(&TimerRequest::RestartStateTimeout, &TABLE, StateId::new(1));
    assert_eq!(
        no_timeout,
        Err(TimerError::NoStateTimeout { state: "Pacing" })
    );
}

#[test]
fn a_refused_transition_leaves_the_timers_exactly_as_they_were() {
    let mut timers = Timers::default();
    run(&mut timers, t(1, 0, 0), vec![start("a", 100, 1)], 0).unwrap();
    let before = timers.clone();
    // Leaving the state and cancelling `a` would have happened; the third named timer
    // is one too many: none of it happens.
    let requests = vec![
        TimerRequest::Cancel { name: "a".into() },
        start("b", 5, 2),
        start("c", 5, 3),
        start("d", 5, 4),
        start("e", 5, 5),
    ];
    let err = run(&mut timers, t(0, 1, 1), requests, 10).unwrap_err();
    assert!(
        matches!(err, TimerError::TooMany { armed: 4, limit: 3 }),
        "{err}"
    );
    assert_eq!(timers, before);
    let wrong = vec![
        start("b", 5, 2),
        TimerRequest::Start {
            name: "c".into(),
            after: Duration::from_millis(1),
            event: TimerEvent::new("text"),
        },
    ];
    assert!(run(&mut timers, t(0, 1, 1), wrong, 10).is_err());
    assert_eq!(timers, before);
}

#[test]
fn due_timers_come_in_deadline_then_arming_order() {
    let mut timers = Timers::default();
    run(
        &mut timers,
        t(1, 0, 0),
        vec![start("b", 1200, 1), start("a", 100, 2)],
        0,
    )
    .unwrap();
    let due = timers.due(1200);
    assert_eq!(
        due.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>(),
        ["timer `a`", "state timeout", "timer `b`"]
    );
    assert!(timers.due(99).is_empty());
}

#[test]
fn a_restored_deadline_never_waits_longer_than_its_duration() {
    let mut timers: Timers<Box<[u8]>> = Timers::default();
    timers.arm(TimerKind::State, 1200, 10_000_000, None);
    // The wall clock was stepped back an hour while the machine was down.
    timers.rebase(10_000_000 - 3_600_000);
    assert_eq!(timers.armed[0].deadline, 10_000_000 - 3_600_000 + 1200);
    // Stepped forward: already due, fires at once.
    let mut late = timers.clone();
    late.rebase(20_000_000);
    assert_eq!(late.due(20_000_000).len(), 1);
}

#[test]
fn the_section_round_trips_and_refuses_what_does_not_fit() {
    let mut timers: Timers<Box<[u8]>> = Timers::default();
    timers.arm(TimerKind::State, 1200, 5, None);
    timers.arm(
        TimerKind::Named("retry".into()),
        30,
        5,
        Some(vec![1, 2, 3].into()),
    );
    let bytes = encode_section(&timers);
    assert_eq!(
        decode_section(&bytes, &TABLE, StateId::new(0)).unwrap(),
        timers
    );
    // Pacing declares no timeout: a state timeout there is corruption.
    let err = decode_section(&bytes, &TABLE, StateId::new(1)).unwrap_err();
    assert!(err.to_string().contains("declares none"), "{err}");
    let mut newer = bytes.clone();
    newer[0] = 2;
    assert!(decode_section(&newer, &TABLE, StateId::new(0))
        .unwrap_err()
        .to_string()
        .contains("version 2"));
    assert!(decode_section(&bytes[..bytes.len() - 1], &TABLE, StateId::new(0)).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode_section(&longer, &TABLE, StateId::new(0)).is_err());
}

#[test]
fn the_hand_written_section_is_what_postcard_writes() {
    let mut timers: Timers<Box<[u8]>> = Timers {
        next: 300,
        ..Timers::default()
    };
    timers.arm(TimerKind::State, 1200, 1_800_000_000_000, None);
    timers.arm(TimerKind::Event, 1 << 35, 7, Some(vec![9; 200].into()));
    timers.arm(
        TimerKind::Named("a-long-enough-name".into()),
        5,
        0,
        Some(vec![].into()),
    );
    timers.arm(TimerKind::Superstate("Checkout".into()), 1_800_000, 3, None);
    let stored: Vec<StoredTimer> = timers
        .armed
        .iter()
        .map(|a| StoredTimer {
            kind: match a.kind {
                TimerKind::State => 0,
                TimerKind::Event => 1,
                TimerKind::Named(_) => 2,
                TimerKind::Superstate(_) => 3,
            },
            name: match &a.kind {
                TimerKind::Named(n) | TimerKind::Superstate(n) => Some(n.to_string()),
                _ => None,
            },
            instance: a.instance,
            deadline: a.deadline,
            after: a.after,
            event: a.event.as_ref().map(|e| e.to_vec()),
        })
        .collect();
    let by_postcard = postcard::to_allocvec(&(SECTION_VERSION, timers.next, stored)).unwrap();
    assert_eq!(encode_section(&timers), by_postcard);
}

#[test]
fn human_durations() {
    assert_eq!(human_ms(1200), "1200 ms");
    assert_eq!(human_ms(90_000), "90 s");
    assert_eq!(human_ms(300_000), "5 min");
    assert_eq!(human_ms(7_200_000), "2 h");
}
