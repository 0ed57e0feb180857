//! Properties of random concurrent workloads: several producer threads, random overload
//! policies, capacities, deadlines, sink behaviour and closes. Whatever happens, the counts
//! add up exactly (at every moment and at the end), every command's outcome is accounted for
//! by its producer, and among applied commands each producer's order is preserved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use fsm_core::queue::{
    self, Command, Counts, DelegateCause, DumpCause, ManualClock, Overload, Shutdown,
};
use fsm_core::Effects;
use proptest::prelude::*;

use crate::accounting;
use crate::light::{Cmd, Light, Seen};

#[derive(Clone, Debug)]
struct Op {
    kind: u8,
    deadline_ms: Option<u64>,
}

#[derive(Clone, Debug)]
struct Workload {
    capacity: usize,
    policy: Overload,
    blocking: bool,
    overflow_accepts: bool,
    defer_limit: usize,
    producers: Vec<Vec<Op>>,
    /// Producer `.0` closes the queue after its `.1`-th submit.
    close_after: Option<(usize, usize)>,
}

fn op() -> impl Strategy<Value = Op> {
    (0u8..6, prop::option::weighted(0.3, 0u64..4))
        .prop_map(|(kind, deadline_ms)| Op { kind, deadline_ms })
}

fn workload() -> impl Strategy<Value = Workload> {
    (
        1usize..12,
        prop_oneof![
            Just(Overload::Backpressure),
            Just(Overload::DropNewest),
            Just(Overload::DropOldest),
            Just(Overload::Delegate),
        ],
        any::<bool>(),
        any::<bool>(),
        1usize..6,
        prop::collection::vec(prop::collection::vec(op(), 0..40), 1..5),
        prop::option::weighted(0.3, (0usize..4, 0usize..40)),
    )
        .prop_map(
            |(capacity, policy, blocking, overflow_accepts, defer_limit, producers, close)| {
                let close_after = close.map(|(p, i)| (p % producers.len(), i));
                Workload {
                    capacity,
                    policy,
                    blocking,
                    overflow_accepts,
                    defer_limit,
                    producers,
                    close_after,
                }
            },
        )
}

fn event(p: u8, seq: u32, kind: u8) -> Cmd {
    match kind {
        0 => Cmd::Step { p, seq },
        1 => Cmd::Stay { p, seq },
        2 => Cmd::Walk { id: seq },
        3 => Cmd::Bad,
        4 => Cmd::Noise { id: seq },
        _ => Cmd::Spam { id: seq },
    }
}

fn run(w: &Workload) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let dumps = Arc::new(AtomicU64::new(0));
    let delegations = Arc::new(AtomicU64::new(0));
    let (d, g, accepts) = (dumps.clone(), delegations.clone(), w.overflow_accepts);
    let (tx, mut rx) = queue::bounded::<Light>(w.capacity)
        .overload(w.policy)
        .defer_limit(w.defer_limit)
        .clock(clock.clock())
        .on_dump(move |_: &Cmd, _: &DumpCause| {
            d.fetch_add(1, Ordering::Relaxed);
        })
        .overflow(move |e: Cmd, _: &DelegateCause| {
            if accepts {
                g.fetch_add(1, Ordering::Relaxed);
                Ok(())
            } else {
                Err(e)
            }
        })
        .build()
        .unwrap();

    let producers: Vec<_> = w
        .producers
        .iter()
        .cloned()
        .enumerate()
        .map(|(p, ops)| {
            let (tx, clock, blocking, close_after) =
                (tx.clone(), clock.clone(), w.blocking, w.close_after);
            thread::spawn(move || {
                let mut refused = Counts::default();
                let mut tickets = Vec::new();
                for (i, op) in ops.iter().enumerate() {
                    let mut cmd = Command::new(event(p as u8, i as u32, op.kind));
                    if let Some(ms) = op.deadline_ms {
                        cmd = cmd.with_deadline(clock.now() + Duration::from_millis(ms));
                    }
                    let r = if blocking {
                        tx.request(cmd)
                    } else {
                        tx.try_request(cmd)
                    };
                    match r {
                        Ok(t) => tickets.push(t),
                        Err(e) => accounting::refusal(&mut refused, &e),
                    }
                    let c = tx.metrics().counts;
                    assert!(c.is_balanced(), "unbalanced while running: {c:?}");
                    if close_after == Some((p, i)) {
                        tx.close();
                    }
                }
                (refused, tickets)
            })
        })
        .collect();
    drop(tx);

    let mut machine = Light::Red;
    let mut applied: Vec<Seen> = Vec::new();
    let mut fx = Effects::new();
    while rx.wait() {
        rx.drain(&mut machine, &mut fx);
        applied.extend(fx.drain());
        clock.advance(Duration::from_millis(1));
        let c = rx.metrics().counts;
        prop_assert!(c.is_balanced(), "unbalanced while running: {:?}", c);
    }
    let results: Vec<_> = producers.into_iter().map(|p| p.join().unwrap()).collect();
    let left = rx.shutdown(Shutdown::Drain, &mut machine, &mut fx);
    applied.extend(fx.drain());
    let handed_back = left.len() as u64;

    let mut seen = Counts::default();
    for (refused, tickets) in results {
        accounting::add(&mut seen, &refused);
        for ticket in tickets {
            accounting::outcome(&mut seen, &ticket.wait());
        }
    }
    let total: u64 = w.producers.iter().map(|p| p.len() as u64).sum();
    let c = rx.metrics().counts;
    prop_assert_eq!(seen.submitted, total);
    prop_assert_eq!(c.submitted, total);
    prop_assert!(c.is_balanced(), "{:?}", c);
    prop_assert_eq!((c.queued, c.deferred), (0, 0));
    prop_assert_eq!(seen, c, "what producers saw is what the queue counted");
    prop_assert!(c.closed >= handed_back);
    prop_assert_eq!(dumps.load(Ordering::Relaxed), c.dumped);
    prop_assert_eq!(delegations.load(Ordering::Relaxed), c.delegated);
    prop_assert_eq!(
        applied.len() as u64,
        c.applied,
        "one effect per applied command"
    );

    // Per-producer order among applied Step/Stay commands (Walks may be postponed by design).
    for p in 0..w.producers.len() as u8 {
        let seqs: Vec<u32> = applied
            .iter()
            .filter(|s| s.p == p && s.event != "Walk")
            .map(|s| s.n)
            .collect();
        prop_assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "producer {} applied out of order: {:?}",
            p,
            seqs
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn counts_add_up_and_each_producers_order_is_preserved(w in workload()) {
        run(&w)?;
    }
}
