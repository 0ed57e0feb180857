//! Event streams for the registrar, shared by the benchmarks and the tests.
//!
//! - W1: a valid cycle, `Submit` then `Pay, Reject, Retry` over and over.
//! - W2: a fixed-seed random stream of which about half the events are invalid in the state
//!   the machine is in when they arrive (no transition, a refused guard, a broken invariant).
//!
//! Neither stream ever reaches a terminal state, so one machine runs through the whole stream.

use crate::registrar::{OrderCmd, MIN_PRICE_CENTS};

/// A small, fast, seedable generator (SplitMix64); enough for reproducible workloads.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The W1 stream of `len` events.
pub fn w1_cycle(len: usize) -> Vec<OrderCmd> {
    let mut out = Vec::with_capacity(len);
    if len > 0 {
        out.push(OrderCmd::Submit {
            domain: "example.org".into(),
        });
    }
    let cycle = [
        OrderCmd::Pay {
            cents: 1_500,
            card_token: "tok_visa".into(),
        },
        OrderCmd::Reject {
            reason: "name server unreachable".into(),
        },
        OrderCmd::Retry,
    ];
    out.extend(cycle.iter().cycle().take(len.saturating_sub(1)).cloned());
    out
}

/// Where a W2 stream believes the machine is (the live, non-terminal part of the table).
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    Draft,
    Submitted,
    Paid,
    Failed,
}

/// The W2 stream of `len` events from `seed`.
pub fn w2_half_invalid(len: usize, seed: u64) -> Vec<OrderCmd> {
    let mut rng = SplitMix64::new(seed);
    let mut at = At::Draft;
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let valid = rng.below(2) == 0;
        let cmd = if valid {
            let (cmd, next) = match at {
                At::Draft => (
                    OrderCmd::Submit {
                        domain: "example.org".into(),
                    },
                    At::Submitted,
                ),
                At::Submitted => (
                    OrderCmd::Pay {
                        cents: MIN_PRICE_CENTS + rng.below(10_000),
                        card_token: "tok_visa".into(),
                    },
                    At::Paid,
                ),
                At::Paid => (
                    OrderCmd::Reject {
                        reason: "registry timeout".into(),
                    },
                    At::Failed,
                ),
                At::Failed => (OrderCmd::Retry, At::Submitted),
            };
            at = next;
            cmd
        } else {
            invalid(at, &mut rng)
        };
        out.push(cmd);
    }
    out
}

/// An event the machine rejects in `at`: mostly one without a transition, sometimes a refused
/// guard or a broken invariant.
fn invalid(at: At, rng: &mut SplitMix64) -> OrderCmd {
    match (at, rng.below(4)) {
        (At::Draft, 0) => OrderCmd::Submit {
            domain: "not a domain".into(),
        },
        (At::Submitted, 0) => OrderCmd::Pay {
            cents: rng.below(MIN_PRICE_CENTS),
            card_token: "tok_visa".into(),
        },
        (At::Draft, _) => pick(rng, &[OrderCmd::Confirm, OrderCmd::Retry, reject()]),
        (At::Submitted, _) => pick(rng, &[OrderCmd::Retry, OrderCmd::Confirm, reject()]),
        (At::Paid, _) => pick(rng, &[OrderCmd::Retry, OrderCmd::Cancel, submit()]),
        (At::Failed, _) => pick(rng, &[OrderCmd::Confirm, reject(), submit()]),
    }
}

fn reject() -> OrderCmd {
    OrderCmd::Reject {
        reason: "late".into(),
    }
}

fn submit() -> OrderCmd {
    OrderCmd::Submit {
        domain: "example.net".into(),
    }
}

fn pick(rng: &mut SplitMix64, choices: &[OrderCmd]) -> OrderCmd {
    choices[rng.below(choices.len() as u64) as usize].clone()
}
