//! Every command ends in one typed outcome; state policies route events the state has no
//! transition for; configurations that cannot work are refused when the queue is built.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fsm_core::queue::{self, ConfigError, DelegateCause, DumpCause, ManualClock, Outcome};
use fsm_core::{Reason, StateMachine};

use crate::light::{self, drain, step, Cmd, Light};

#[test]
fn applied_and_rejected_commands_answer_their_tickets() {
    let (tx, mut rx) = light::queue(8);
    let applied = tx.try_request(step(0, 1)).unwrap();
    let rejected = tx.try_request(Cmd::Bad).unwrap();
    let mut machine = Light::Red;
    let seen = drain(&mut rx, &mut machine);

    match applied.wait() {
        Outcome::Applied(t) => {
            assert_eq!(
                (t.from_name(), t.event_name(), t.to_name()),
                ("Red", "Step", "Amber")
            );
        }
        other => panic!("expected applied, got {other:?}"),
    }
    match rejected.wait() {
        Outcome::Rejected(r) => {
            assert_eq!((r.state_name(), r.event_name()), ("Amber", "Bad"));
            assert_eq!(r.reason(), &Reason::NoTransition);
        }
        other => panic!("expected rejected, got {other:?}"),
    }
    assert_eq!(machine, Light::Amber);
    assert_eq!(seen.len(), 1, "the rejected command emitted nothing");
    let c = rx.metrics().counts;
    assert_eq!((c.submitted, c.applied, c.rejected), (2, 1, 1));
    assert!(c.is_balanced());
}

#[test]
fn a_state_that_dumps_an_event_reports_it_to_the_dump_sink() {
    let dumped = Arc::new(Mutex::new(Vec::new()));
    let sink = dumped.clone();
    let (tx, mut rx) = light::builder(8)
        .on_dump(move |e: &Cmd, cause: &DumpCause| {
            sink.lock().unwrap().push((e.clone(), cause.clone()))
        })
        .build()
        .unwrap();
    let in_red = tx.try_request(Cmd::Noise { id: 1 }).unwrap();
    tx.try_submit(step(0, 0)).unwrap(); // to Amber, which has no policy for Noise
    let in_amber = tx.try_request(Cmd::Noise { id: 2 }).unwrap();
    let mut machine = Light::Red;
    drain(&mut rx, &mut machine);

    let red = DumpCause::StatePolicy { state: "Red" };
    assert_eq!(in_red.wait(), Outcome::Dumped(red.clone()));
    assert!(matches!(in_amber.wait(), Outcome::Rejected(r) if r.state_name() == "Amber"));
    assert_eq!(*dumped.lock().unwrap(), vec![(Cmd::Noise { id: 1 }, red)]);
    let c = rx.metrics().counts;
    assert_eq!((c.dumped, c.rejected, c.applied), (1, 1, 1));
}

#[test]
fn a_state_that_delegates_an_event_hands_it_to_the_overflow_sink() {
    let taken = Arc::new(Mutex::new(Vec::new()));
    let sink = taken.clone();
    let (tx, mut rx) = queue::bounded::<Light>(8)
        .overflow(move |e: Cmd, cause: &DelegateCause| {
            sink.lock().unwrap().push((e, cause.clone()));
            Ok(())
        })
        .build()
        .unwrap();
    let ticket = tx.try_request(Cmd::Spam { id: 7 }).unwrap();
    let mut machine = Light::Red;
    drain(&mut rx, &mut machine);

    let cause = DelegateCause::StatePolicy { state: "Red" };
    assert_eq!(ticket.wait(), Outcome::Delegated(cause.clone()));
    assert_eq!(*taken.lock().unwrap(), vec![(Cmd::Spam { id: 7 }, cause)]);
    assert_eq!(rx.metrics().counts.delegated, 1);
}

#[test]
fn a_refusing_overflow_sink_turns_a_delegation_into_a_counted_dump() {
    let dumps = Arc::new(Mutex::new(Vec::new()));
    let sink = dumps.clone();
    let (tx, mut rx) = queue::bounded::<Light>(8)
        .overflow(|e: Cmd, _: &DelegateCause| Err(e))
        .on_dump(move |e: &Cmd, c: &DumpCause| sink.lock().unwrap().push((e.clone(), c.clone())))
        .build()
        .unwrap();
    let ticket = tx.try_request(Cmd::Spam { id: 3 }).unwrap();
    drain(&mut rx, &mut Light::Red);
    assert_eq!(ticket.wait(), Outcome::Dumped(DumpCause::OverflowRefused));
    assert_eq!(
        *dumps.lock().unwrap(),
        vec![(Cmd::Spam { id: 3 }, DumpCause::OverflowRefused)]
    );
}

#[test]
fn configurations_that_cannot_work_are_refused_at_build() {
    let zero = light::builder(0).build();
    assert_eq!(zero.err(), Some(ConfigError::ZeroCapacity));

    let no_sink = queue::bounded::<Light>(4).build().err().unwrap();
    assert_eq!(
        no_sink.to_string(),
        "state `Red` (`delegate(..)`) delegates commands, but the queue has no overflow sink: add one with `.overflow(..)`"
    );

    let no_defer = light::builder(4).defer_limit(0).build().err();
    assert_eq!(no_defer, Some(ConfigError::ZeroDeferLimit { state: "Red" }));
}

#[test]
fn an_unbounded_queue_takes_any_number_of_commands() {
    let (tx, mut rx) = queue::unbounded::<Light>()
        .overflow(|_: Cmd, _: &DelegateCause| Ok(()))
        .build()
        .unwrap();
    for seq in 0..10_000 {
        tx.try_submit(step(0, seq)).unwrap();
    }
    let m = tx.metrics();
    assert_eq!((m.depth, m.high_water, m.capacity), (10_000, 10_000, None));
    let seen = drain(&mut rx, &mut Light::Red);
    assert_eq!(seen.len(), 10_000);
}

#[test]
fn metrics_measure_wait_apply_and_end_to_end_on_the_queue_clock() {
    let clock = ManualClock::new();
    let (tx, mut rx) = light::builder(8).clock(clock.clock()).build().unwrap();
    tx.try_submit(step(0, 0)).unwrap();
    clock.advance(Duration::from_millis(5));
    tx.try_submit(step(0, 1)).unwrap();
    clock.advance(Duration::from_millis(5));
    drain(&mut rx, &mut Light::Red);

    let m = rx.metrics();
    assert_eq!(m.wait.count, 2);
    // Waits of 10 ms and 5 ms (two significant digits: within 1%).
    let close_to = |d: Duration, ms: u64| {
        let want = Duration::from_millis(ms);
        d >= want && d <= want + want / 100
    };
    assert!(close_to(m.wait.max, 10), "{:?}", m.wait);
    assert!(close_to(m.wait.p50, 5), "{:?}", m.wait);
    assert!(close_to(m.end_to_end.max, 10), "{:?}", m.end_to_end);
    // The manual clock does not move while the machine works.
    assert!(m.apply.max <= Duration::from_nanos(1), "{:?}", m.apply);
    assert_eq!(m.uptime, Duration::from_millis(10));
    assert!((m.throughput - 200.0).abs() < 1e-6, "2 commands in 10 ms");
    assert!(m.to_string().contains("submitted 2 = applied 2"));
    assert_eq!(rx.latencies().end_to_end.len(), 2);
}

#[test]
fn async_submit_waits_for_room_without_blocking_the_executor() {
    let (tx, mut rx) = light::queue(1);
    let (go, start) = std::sync::mpsc::channel::<()>();
    let consumer = std::thread::spawn(move || {
        // Starts only when the executor's thread says so: had the second submit blocked that
        // thread, the signal never comes and `signalled` is false.
        let signalled = start.recv_timeout(Duration::from_secs(30)).is_ok();
        let mut machine = Light::Red;
        let left = rx.run(&mut machine, |_| {});
        (signalled, machine, left.len())
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let outcomes = rt.block_on(async move {
        let first = tx.request_async(step(0, 0)).await.unwrap(); // fills the queue of one
        let b = tx.clone();
        let second = tokio::spawn(async move { b.request_async(step(0, 1)).await.unwrap().await });
        tokio::task::yield_now().await; // the second submit runs, finds no room, yields
        go.send(()).unwrap();
        let outcomes = (first.await, second.await.unwrap());
        drop(tx);
        outcomes
    });
    assert!(
        outcomes.0.is_applied() && outcomes.1.is_applied(),
        "{outcomes:?}"
    );
    let (signalled, machine, left) = consumer.join().unwrap();
    assert!(signalled, "the pending submit blocked the executor thread");
    assert_eq!((machine, left), (Light::Green, 0));
}

#[test]
fn a_ticket_is_a_future_under_any_executor() {
    let (tx, mut rx) = light::queue(4);
    let ticket = futures_executor::block_on(tx.request_async(step(0, 0))).unwrap();
    drain(&mut rx, &mut Light::Red);
    let outcome = futures_executor::block_on(ticket);
    assert!(outcome.is_applied());
    assert_eq!(Light::TABLE.machine(), "Light");
}

#[test]
fn a_panicking_handler_answers_its_command_and_the_queue_stays_consistent() {
    let (tx, mut rx) = light::queue(8);
    let first = tx.try_request(step(0, 0)).unwrap(); // Red -> Amber
    let buggy = tx
        .try_request(Cmd::Stay {
            p: 0,
            seq: u32::MAX,
        })
        .unwrap();
    let after = tx.try_request(step(0, 1)).unwrap(); // Amber -> Green
    let mut machine = Light::Red;
    let mut fx = fsm_core::Effects::new();
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rx.drain(&mut machine, &mut fx);
    }));
    assert!(crashed.is_err(), "the panic reaches the consumer's owner");
    assert!(first.wait().is_applied());
    match buggy.wait() {
        Outcome::Rejected(r) => {
            assert_eq!(
                r.reason(),
                &Reason::Panicked(fsm_core::Refusal::new("bulb blew"))
            );
            assert!(
                r.to_string().contains("the handler panicked (bulb blew)"),
                "{r}"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        machine,
        Light::Amber,
        "the machine is unchanged by the panic"
    );
    assert_eq!(fx.len(), 1, "the panicking handler's effect was discarded");
    assert!(after.try_outcome().is_none());
    let c = rx.metrics().counts;
    assert!(c.is_balanced(), "{c:?}");

    // The owner restarts the consumer: the rest of the batch is still there.
    rx.drain(&mut machine, &mut fx);
    assert!(after.wait().is_applied());
    assert_eq!(machine, Light::Green);
    let c = rx.metrics().counts;
    assert_eq!((c.applied, c.rejected, c.queued), (2, 1, 0));
}

#[test]
fn a_sink_may_read_the_metrics_of_its_own_queue() {
    let sender: Arc<std::sync::OnceLock<queue::Sender<Cmd>>> = Arc::default();
    let seen_by_sink = Arc::new(Mutex::new(None));
    let (s, seen) = (sender.clone(), seen_by_sink.clone());
    let (tx, mut rx) = light::builder(8)
        .on_dump(move |_: &Cmd, _: &DumpCause| {
            // Runs on the consumer's thread, in the middle of a batch.
            *seen.lock().unwrap() = s.get().map(|tx| tx.metrics().counts.submitted);
        })
        .build()
        .unwrap();
    sender.set(tx.clone()).unwrap();
    tx.try_submit(Cmd::Noise { id: 1 }).unwrap();
    drain(&mut rx, &mut Light::Red);
    assert_eq!(*seen_by_sink.lock().unwrap(), Some(1));
}
