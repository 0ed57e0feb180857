//! Overload: four producers submit ten times the capacity against a consumer that falls
//! behind, under each policy; every command's outcome is accounted for, and drops and
//! delegations are observable in the sinks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use fsm_core::queue::{self, Counts, DelegateCause, DumpCause, Overload};

use crate::accounting;
use crate::light::{self, step, Cmd, Light};

const CAPACITY: usize = 16;
const PRODUCERS: usize = 4;
const PER_PRODUCER: usize = 10 * CAPACITY / PRODUCERS;

struct Run {
    /// What the producers saw: one entry per command, from the submit call or the ticket.
    seen: Counts,
    counts: Counts,
    dump_sink: u64,
    overflow_sink: u64,
}

/// Four producers each `request` their share with `blocking` or non-blocking submits. The
/// consumer falls behind: for non-blocking policies it starts only after every producer has
/// submitted everything; under back-pressure it starts once the queue is full and then takes
/// one batch at a time.
fn overload(policy: Overload, blocking: bool) -> Run {
    let dumps = Arc::new(AtomicU64::new(0));
    let delegations = Arc::new(AtomicU64::new(0));
    let (d, g) = (dumps.clone(), delegations.clone());
    let (tx, mut rx) = queue::bounded::<Light>(CAPACITY)
        .overload(policy)
        .on_dump(move |_: &Cmd, _: &DumpCause| {
            d.fetch_add(1, Ordering::Relaxed);
        })
        .overflow(move |_: Cmd, _: &DelegateCause| {
            g.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .build()
        .unwrap();
    let start = Arc::new(Barrier::new(PRODUCERS));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (tx, start) = (tx.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let mut tickets = Vec::new();
                let mut seen = Counts::default();
                for seq in 0..PER_PRODUCER as u32 {
                    let cmd = step(p as u8, seq);
                    let r = if blocking {
                        tx.request(cmd)
                    } else {
                        tx.try_request(cmd)
                    };
                    match r {
                        Ok(t) => tickets.push(t),
                        Err(e) => accounting::refusal(&mut seen, &e),
                    }
                }
                (tickets, seen)
            })
        })
        .collect();
    drop(tx);
    let mut machine = Light::Red;
    if blocking {
        while rx.metrics().depth < CAPACITY {
            thread::yield_now();
        }
        let mut fx = fsm_core::Effects::new();
        while rx.wait() {
            rx.drain(&mut machine, &mut fx);
            fx.drain();
        }
    }
    let results: Vec<_> = producers.into_iter().map(|p| p.join().unwrap()).collect();
    if !blocking {
        let left = rx.run(&mut machine, |_| {});
        assert!(left.is_empty());
    }
    let mut seen = Counts::default();
    for (tickets, refused) in results {
        for t in tickets {
            accounting::outcome(&mut seen, &t.wait());
        }
        accounting::add(&mut seen, &refused);
    }
    let counts = rx.metrics().counts;
    Run {
        seen,
        counts,
        dump_sink: dumps.load(Ordering::Relaxed),
        overflow_sink: delegations.load(Ordering::Relaxed),
    }
}

const TOTAL: u64 = (PRODUCERS * PER_PRODUCER) as u64;

fn accounted(run: &Run) {
    assert_eq!(run.seen.submitted, TOTAL, "{:?}", run.seen);
    assert_eq!(run.counts.submitted, TOTAL);
    assert!(run.counts.is_balanced(), "{:?}", run.counts);
    assert_eq!((run.counts.queued, run.counts.deferred), (0, 0));
    assert_eq!(
        run.seen, run.counts,
        "what producers saw is what the queue counted"
    );
    assert_eq!(
        run.dump_sink, run.counts.dumped,
        "every drop reached the dump sink"
    );
    assert_eq!(
        run.overflow_sink, run.counts.delegated,
        "every delegation reached the sink"
    );
}

#[test]
fn backpressure_applies_every_command_of_an_overload() {
    let run = overload(Overload::Backpressure, true);
    accounted(&run);
    assert_eq!(run.counts.applied, TOTAL);
}

#[test]
fn backpressure_without_waiting_refuses_the_excess_as_full() {
    let run = overload(Overload::Backpressure, false);
    accounted(&run);
    assert_eq!(run.counts.applied, CAPACITY as u64);
    assert_eq!(run.counts.full, TOTAL - CAPACITY as u64);
}

#[test]
fn drop_newest_keeps_the_first_capacity_commands_and_reports_the_rest() {
    let run = overload(Overload::DropNewest, false);
    accounted(&run);
    assert_eq!(run.counts.applied, CAPACITY as u64);
    assert_eq!(run.counts.dumped, TOTAL - CAPACITY as u64);
}

#[test]
fn drop_oldest_keeps_the_last_capacity_commands_and_reports_the_rest() {
    let run = overload(Overload::DropOldest, false);
    accounted(&run);
    assert_eq!(run.counts.applied, CAPACITY as u64);
    assert_eq!(run.counts.dumped, TOTAL - CAPACITY as u64);
}

#[test]
fn delegate_hands_the_excess_to_the_overflow_sink() {
    let run = overload(Overload::Delegate, false);
    accounted(&run);
    assert_eq!(run.counts.applied, CAPACITY as u64);
    assert_eq!(run.counts.delegated, TOTAL - CAPACITY as u64);
}

#[test]
fn a_queue_delegates_to_another_queue() {
    let (spill_tx, mut spill_rx) = light::builder(64).build().unwrap();
    let (tx, mut rx) = queue::bounded::<Light>(2)
        .overload(Overload::Delegate)
        .overflow(spill_tx)
        .build()
        .unwrap();
    for seq in 0..5 {
        let r = tx.try_submit(step(0, seq));
        assert_eq!(r.is_ok(), seq < 2, "{seq}");
    }
    let (mut main, mut spill) = (Light::Red, Light::Red);
    assert_eq!(light::drain(&mut rx, &mut main).len(), 2);
    let spilled = light::drain(&mut spill_rx, &mut spill);
    assert_eq!(
        spilled.iter().map(|s| s.n).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
}
