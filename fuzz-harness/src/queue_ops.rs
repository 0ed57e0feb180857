//! Arbitrary interleavings of queue operations, on one thread so that every input replays
//! exactly.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Unstructured;
use fsm_core::queue::{
    self, Command, Counts, DelegateCause, DumpCause, ManualClock, Outcome, Overload, Shutdown,
    SubmitError, Ticket,
};
use fsm_core::Effects;

use crate::queue_machine::{Cmd, Light};

/// Decodes a queue configuration (capacity 1-8, overload policy, defer limit, whether the
/// overflow sink takes commands, blocking or non-blocking submits) and a list of operations
/// (submit a command, with or without a deadline; close; drain; advance the clock), runs them,
/// then shuts the queue down (drain or hand back). Must hold, after every operation and at the
/// end: the queue's counts balance (`submitted = decided + queued + deferred`); at the end
/// nothing is queued or deferred, every ticket holds a definite outcome, what submitters saw
/// (refusals plus ticket outcomes) equals the queue's counts, the dump and overflow sinks saw
/// exactly the dumped and delegated commands, one effect was recorded per applied command,
/// and no command was applied twice.
pub fn queue_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(config) = Config::decode(&mut u) else {
        return;
    };
    let clock = ManualClock::new();
    let delegations = Arc::new(AtomicU64::new(0));
    let dump_count = Arc::new(AtomicU64::new(0));
    let (d, g, accepts) = (
        dump_count.clone(),
        delegations.clone(),
        config.overflow_accepts,
    );
    let (tx, mut rx) = queue::bounded::<Light>(config.capacity)
        .overload(config.policy)
        .defer_limit(config.defer_limit)
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
        .expect("a valid configuration");

    let mut machine = Light::Red;
    let mut effects: Effects<u32> = Effects::new();
    let mut applied: Vec<u32> = Vec::new();
    let mut seen = Counts::default();
    let mut tickets: Vec<Ticket> = Vec::new();
    let mut n: u32 = 0;
    while !u.is_empty() {
        let Ok(op) = u.choose_index(5) else { break };
        match op {
            0 | 1 => {
                let Ok(kind) = u.choose_index(7) else { break };
                let ok = u.arbitrary::<bool>().unwrap_or(true);
                let deadline: Option<u8> = u.arbitrary().unwrap_or(None);
                let mut command = Command::new(event(kind, n, ok));
                n += 1;
                if let Some(ms) = deadline {
                    command = command
                        .with_deadline(clock.now() + Duration::from_millis(u64::from(ms % 4)));
                }
                // Back-pressure would block a blocking submit for ever on one thread.
                let blocking = config.blocking && config.policy != Overload::Backpressure;
                let result = if blocking {
                    tx.request(command)
                } else {
                    tx.try_request(command)
                };
                match result {
                    Ok(t) => tickets.push(t),
                    Err(e) => refusal(&mut seen, &e),
                }
            }
            2 => tx.close(),
            3 => {
                rx.drain(&mut machine, &mut effects);
                applied.extend(effects.drain());
            }
            _ => clock.advance(Duration::from_millis(1)),
        }
        let c = tx.metrics().counts;
        assert!(c.is_balanced(), "unbalanced after operation {op}: {c:?}");
    }

    let how = if config.hand_back {
        Shutdown::HandBack
    } else {
        Shutdown::Drain
    };
    let handed_back = rx.shutdown(how, &mut machine, &mut effects);
    applied.extend(effects.drain());
    for ticket in &tickets {
        let outcome = ticket
            .try_outcome()
            .expect("after shutdown every accepted command has an outcome");
        tally(&mut seen, &outcome);
    }
    let c = rx.metrics().counts;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!((c.queued, c.deferred), (0, 0), "{c:?}");
    assert_eq!(c.submitted, u64::from(n));
    assert_eq!(seen, c, "what submitters saw is what the queue counted");
    assert!(c.closed >= handed_back.len() as u64);
    assert_eq!(dump_count.load(Ordering::Relaxed), c.dumped);
    assert_eq!(delegations.load(Ordering::Relaxed), c.delegated);
    assert_eq!(
        applied.len() as u64,
        c.applied,
        "one effect per applied command"
    );
    let distinct: BTreeSet<u32> = applied.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        applied.len(),
        "a command was applied twice: {applied:?}"
    );
}

struct Config {
    capacity: usize,
    policy: Overload,
    defer_limit: usize,
    overflow_accepts: bool,
    blocking: bool,
    hand_back: bool,
}

impl Config {
    fn decode(u: &mut Unstructured<'_>) -> arbitrary::Result<Config> {
        let policy = [
            Overload::Backpressure,
            Overload::DropNewest,
            Overload::DropOldest,
            Overload::Delegate,
        ][u.choose_index(4)?];
        Ok(Config {
            capacity: u.int_in_range(1..=8)?,
            policy,
            defer_limit: u.int_in_range(1..=4)?,
            overflow_accepts: u.arbitrary()?,
            blocking: u.arbitrary()?,
            hand_back: u.arbitrary()?,
        })
    }
}

fn event(kind: usize, n: u32, ok: bool) -> Cmd {
    match kind {
        0 => Cmd::Step { n },
        1 => Cmd::Stay { n },
        2 => Cmd::Walk { n },
        3 => Cmd::Noise { n },
        4 => Cmd::Spam { n },
        5 => Cmd::Cross { n, ok },
        _ => Cmd::Bad { n },
    }
}

fn tally(seen: &mut Counts, outcome: &Outcome) {
    seen.submitted += 1;
    match outcome {
        Outcome::Applied(_) => seen.applied += 1,
        Outcome::Rejected(_) => seen.rejected += 1,
        Outcome::Dumped(_) => seen.dumped += 1,
        Outcome::Delegated(_) => seen.delegated += 1,
        Outcome::Expired => seen.expired += 1,
        Outcome::Closed => seen.closed += 1,
        other => panic!("an outcome this target does not know: {other:?}"),
    }
}

fn refusal(seen: &mut Counts, error: &SubmitError<Cmd>) {
    seen.submitted += 1;
    match error {
        SubmitError::Full(_) => seen.full += 1,
        SubmitError::Dumped(_) => seen.dumped += 1,
        SubmitError::Delegated => seen.delegated += 1,
        SubmitError::Expired(_) => seen.expired += 1,
        SubmitError::Closed(_) => seen.closed += 1,
        other => panic!("a refusal this target does not know: {other:?}"),
    }
}
