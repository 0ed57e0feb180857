//! The outbox: the effects a machine owes the world, kept in its snapshot until a worker's
//! answer is committed.
//!
//! A transition's durable effects are written into the machine's snapshot (the envelope's
//! outbox section) in the same write as the transition, each under an [`EffectId`] that never
//! changes. The shard hands a machine's effects to its worker **one at a time, in emission
//! order**: the next one only once the answer to the previous one is committed, so a receiver
//! sees a machine's effects in the order they were emitted, and a machine owes at most
//! [`KernelBuilder::max_pending_effects`](super::KernelBuilder::max_pending_effects) at once
//! (a transition that would owe more is refused, typed, before anything changes). The answer
//! (the event the worker feeds back, if any) and the removal are one write. A failed attempt
//! is retried per the [`RetryPolicy`], its next deadline stored in the entry like a timer's, so
//! a restart does not reset the backoff; when the attempts are spent the effect leaves the
//! outbox and the machine gets the worker's `failure_event`.
//!
//! After a crash, loading a machine (every machine at start, unless recovery on start is off)
//! hands its first owed effect to its worker again: every committed effect runs at least once,
//! and exactly once as seen by a receiver that deduplicates by [`EffectId::key`].

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{MachineId, Section};

use super::codecs::DecodeEffect;
use super::section::{self, SectionError};

/// The layout version of the outbox section this build writes and reads.
const SECTION_VERSION: u8 = 1;
/// Entries a section may hold, whatever the kernel's bound: more is corruption.
const SECTION_MAX_ENTRIES: usize = 1 << 16;
/// The default bound on a machine's owed effects.
pub const DEFAULT_MAX_PENDING_EFFECTS: usize = 64;

/// The identity of one effect, stable across retries, restarts and crashes: the machine, the
/// sequence of the snapshot that committed the transition which emitted it, and its index
/// among the effects emitted under that sequence. [`EffectId::key`] is what a worker hands
/// the outside world as an idempotency key (a payment API's `Idempotency-Key`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EffectId {
    machine: MachineId,
    seq: u64,
    index: u32,
}

impl EffectId {
    pub(crate) fn new(machine: MachineId, seq: u64, index: u32) -> Self {
        EffectId {
            machine,
            seq,
            index,
        }
    }

    /// The machine that owes the effect.
    pub fn machine(&self) -> &MachineId {
        &self.machine
    }

    /// The sequence of the snapshot that committed the transition that emitted it.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Its index among the effects emitted under that sequence, in emission order.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The idempotency key: `machine/seq/index` (a machine id holds no `/`, so the key is
    /// unambiguous). The same for every attempt, before and after a crash.
    pub fn key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for EffectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.machine, self.seq, self.index)
    }
}

/// How a failed effect is retried: after `initial`, then each delay `factor` times the one
/// before, never more than `max_delay`; after `max_attempts` attempts in all the effect is
/// given up (it leaves the outbox and the machine gets the worker's `failure_event`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    initial: Duration,
    factor: u32,
    max_delay: Duration,
    max_attempts: u32,
}

impl RetryPolicy {
    /// A policy, checked: at least one attempt, a factor of at least 1, and a maximum delay
    /// not below the initial one.
    pub fn new(
        initial: Duration,
        factor: u32,
        max_delay: Duration,
        max_attempts: u32,
    ) -> Result<Self, RetryPolicyError> {
        if max_attempts == 0 {
            return Err(RetryPolicyError::ZeroAttempts);
        }
        if factor == 0 {
            return Err(RetryPolicyError::ZeroFactor);
        }
        if max_delay < initial {
            return Err(RetryPolicyError::MaxBelowInitial { initial, max_delay });
        }
        if max_delay > crate::timer::MAX_TIMER_DURATION {
            return Err(RetryPolicyError::TooLong { max_delay });
        }
        Ok(RetryPolicy {
            initial,
            factor,
            max_delay,
            max_attempts,
        })
    }

    /// One attempt: a failure gives up at once.
    pub fn no_retry() -> Self {
        RetryPolicy {
            initial: Duration::ZERO,
            factor: 1,
            max_delay: Duration::ZERO,
            max_attempts: 1,
        }
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before the attempt that follows `failed` failed attempts (`failed` >= 1).
    pub fn delay(&self, failed: u32) -> Duration {
        let mut delay = self.initial;
        // A factor of 2 or more passes any maximum within 64 steps; a factor of 1 never grows.
        for _ in 1..failed.min(64) {
            if delay >= self.max_delay || self.factor == 1 {
                break;
            }
            delay = delay.saturating_mul(self.factor);
        }
        delay.min(self.max_delay)
    }
}

impl Default for RetryPolicy {
    /// 1 s, doubling, at most 5 minutes apart, 10 attempts (about 17 minutes in all).
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(1),
            factor: 2,
            max_delay: Duration::from_secs(300),
            max_attempts: 10,
        }
    }
}

/// Why a [`RetryPolicy`] makes no sense.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryPolicyError {
    /// No attempt at all: an effect would be given up without running.
    #[error("a retry policy of zero attempts runs nothing; use at least 1 (1 = no retry)")]
    ZeroAttempts,
    /// A factor of 0 makes every delay after the first zero.
    #[error("a backoff factor of 0; use 1 for a constant delay, 2 to double it")]
    ZeroFactor,
    /// The maximum delay is below the first one.
    #[error("the maximum delay {max_delay:?} is below the initial delay {initial:?}")]
    MaxBelowInitial {
        /// The initial delay.
        initial: Duration,
        /// The maximum given.
        max_delay: Duration,
    },
    /// The maximum delay is longer than any deadline the kernel stores.
    #[error("the maximum delay {max_delay:?} is longer than a kernel deadline may be")]
    TooLong {
        /// The maximum given.
        max_delay: Duration,
    },
}

/// Why a transition's effects cannot be owed: the transition is refused, nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The machine would owe more effects than the kernel's bound.
    #[error("the machine would owe {owed} effects, more than the limit of {limit} (its worker is behind or stopped; raise KernelBuilder::max_pending_effects if this is its normal load)")]
    Full {
        /// Effects it would owe.
        owed: usize,
        /// The bound.
        limit: usize,
    },
    /// An effect could not be encoded for the outbox.
    #[error("effect {index} of the transition could not be encoded: {message}")]
    Unencodable {
        /// Its index among the transition's effects.
        index: usize,
        /// The encoder's message.
        message: String,
    },
}

/// One owed effect.
#[derive(Debug)]
pub(crate) struct Owed<F> {
    pub(crate) seq: u64,
    pub(crate) index: u32,
    /// The effect, encoded (what the section stores).
    pub(crate) bytes: Box<[u8]>,
    /// Failed attempts so far.
    pub(crate) attempts: u32,
    /// Kernel milliseconds before which it is not attempted (0: at once).
    pub(crate) not_before: u64,
    /// Kernel milliseconds when it was first owed.
    pub(crate) since: u64,
    /// The effect's value while this process holds it (a fresh one, or one decoded on load),
    /// so the common path decodes nothing.
    pub(crate) value: Option<F>,
    /// Handed to its worker and not answered yet (not stored: after a restart it is not).
    pub(crate) dispatched: bool,
}

/// A machine's owed effects, oldest first.
pub(crate) type Outbox<F> = VecDeque<Owed<F>>;

#[derive(Serialize, Deserialize)]
struct StoredOwed<'a> {
    seq: u64,
    index: u32,
    attempts: u32,
    not_before: u64,
    since: u64,
    #[serde(borrow)]
    effect: &'a [u8],
}

/// The outbox section: its layout version, then every owed effect, oldest first, in
/// postcard's format for `(u8, Vec<StoredOwed>)` (what [`decode_section`] reads with
/// postcard), written by hand: it is written with every commit of a machine that owes.
pub(crate) fn encode_section<F>(outbox: &Outbox<F>) -> Vec<u8> {
    let size = 6 + outbox.iter().map(|o| 40 + o.bytes.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.push(SECTION_VERSION);
    section::varint(&mut out, outbox.len() as u64);
    for o in outbox {
        section::varint(&mut out, o.seq);
        section::varint(&mut out, u64::from(o.index));
        section::varint(&mut out, u64::from(o.attempts));
        section::varint(&mut out, o.not_before);
        section::varint(&mut out, o.since);
        section::counted(&mut out, &o.bytes);
    }
    out
}

/// Decodes an outbox section, each effect with `decode` when the kernel stores effects (`None`:
/// the entries are kept as bytes, written back unchanged and not run).
pub(crate) fn decode_section<F>(
    bytes: &[u8],
    decode: Option<DecodeEffect<F>>,
) -> Result<Outbox<F>, SectionError> {
    let stored: Vec<StoredOwed<'_>> =
        section::decode_versioned(Section::Outbox, bytes, SECTION_VERSION)?;
    let invalid = |problem: String| SectionError::invalid(Section::Outbox, problem);
    if stored.len() > SECTION_MAX_ENTRIES {
        return Err(invalid(format!("{} owed effects", stored.len())));
    }
    let mut out: Outbox<F> = VecDeque::with_capacity(stored.len());
    for s in stored {
        if let Some(last) = out.back() {
            if (s.seq, s.index) <= (last.seq, last.index) {
                return Err(invalid(format!(
                    "effect {}/{} after {}/{}: not in emission order",
                    s.seq, s.index, last.seq, last.index
                )));
            }
        }
        let value = match decode {
            Some(decode) => Some(decode(s.effect).map_err(|e| {
                invalid(format!(
                    "effect {}/{} does not decode as this kernel's effect type: {e}",
                    s.seq, s.index
                ))
            })?),
            None => None,
        };
        out.push_back(Owed {
            seq: s.seq,
            index: s.index,
            bytes: s.effect.into(),
            attempts: s.attempts,
            not_before: s.not_before,
            since: s.since,
            value,
            dispatched: false,
        });
    }
    Ok(out)
}

/// What is owed by one machine, as operators see it ([`KernelHandle::owed`](super::KernelHandle::owed)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwedEffect {
    /// The effect's identity and idempotency key.
    pub id: EffectId,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the next attempt may start, in wall-clock milliseconds since the UNIX epoch (0:
    /// at once).
    pub not_before_ms: u64,
    /// When it was first owed, in wall-clock milliseconds since the UNIX epoch.
    pub since_ms: u64,
    /// Handed to its worker and not answered yet.
    pub running: bool,
}

/// What the outbox section of `snapshot` (of machine `id`) says is owed, without decoding the
/// effects (for tools that read a store offline, as `fsm show` and `fsm export` do): empty
/// when the snapshot has no outbox. Nothing is running in a snapshot.
pub fn owed_in(
    snapshot: &crate::store::Snapshot,
    id: &MachineId,
) -> Result<Vec<OwedEffect>, SectionError> {
    let Some(bytes) = snapshot.outbox() else {
        return Ok(Vec::new());
    };
    let owed: Outbox<()> = decode_section(bytes, None)?;
    Ok(owed.iter().map(|o| o.listed(id)).collect())
}

impl<F> Owed<F> {
    /// This entry as operators see it (machine `id`'s).
    pub(crate) fn listed(&self, id: &MachineId) -> OwedEffect {
        OwedEffect {
            id: EffectId::new(id.clone(), self.seq, self.index),
            attempts: self.attempts,
            not_before_ms: self.not_before,
            since_ms: self.since,
            running: self.dispatched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owed(seq: u64, index: u32, bytes: &[u8]) -> Owed<u32> {
        Owed {
            seq,
            index,
            bytes: bytes.into(),
            attempts: 2,
            not_before: 1_700,
            since: 1_000,
            value: None,
            dispatched: true,
        }
    }

    #[test]
    fn the_section_round_trips_and_refuses_what_does_not_fit() {
        let outbox: Outbox<u32> = [owed(3, 0, &[7]), owed(3, 1, &[9]), owed(5, 0, &[1])].into();
        let bytes = encode_section(&outbox);
        let decode: fn(&[u8]) -> Result<u32, String> = |b| Ok(u32::from(b[0]));
        let back = decode_section(&bytes, Some(decode)).unwrap();
        let seen: Vec<_> = back
            .iter()
            .map(|o| (o.seq, o.index, o.attempts, o.not_before, o.since, o.value))
            .collect();
        assert_eq!(
            seen,
            vec![
                (3, 0, 2, 1_700, 1_000, Some(7)),
                (3, 1, 2, 1_700, 1_000, Some(9)),
                (5, 0, 2, 1_700, 1_000, Some(1))
            ]
        );
        // After a restart nothing is running.
        assert!(back.iter().all(|o| !o.dispatched));
        // Out of emission order: corrupt.
        let swapped: Outbox<u32> = [owed(5, 0, &[1]), owed(3, 0, &[7])].into();
        let err = decode_section(&encode_section(&swapped), Some(decode)).unwrap_err();
        assert_eq!(err.section(), Section::Outbox);
        assert!(err.to_string().contains("not in emission order"), "{err}");
        // An effect the kernel's type does not decode: named.
        let refuse: fn(&[u8]) -> Result<u32, String> = |_| Err("no".into());
        let err = decode_section(&bytes, Some(refuse)).unwrap_err();
        assert!(
            err.to_string().contains("effect 3/0 does not decode"),
            "{err}"
        );
        // Garbage never panics.
        for cut in 0..bytes.len() {
            let _ = decode_section(&bytes[..cut], Some(decode));
        }
    }

    #[test]
    fn the_hand_written_section_is_what_postcard_writes() {
        let outbox: Outbox<u32> = [owed(1 << 40, 3, &[7; 200]), owed(5, 0, &[])].into();
        let stored: Vec<StoredOwed<'_>> = outbox
            .iter()
            .map(|o| StoredOwed {
                seq: o.seq,
                index: o.index,
                attempts: o.attempts,
                not_before: o.not_before,
                since: o.since,
                effect: &o.bytes,
            })
            .collect();
        let by_postcard = postcard::to_allocvec(&(SECTION_VERSION, stored)).unwrap();
        assert_eq!(encode_section(&outbox), by_postcard);
    }

    #[test]
    fn a_retry_policy_backs_off_to_its_maximum_and_refuses_nonsense() {
        let p = RetryPolicy::new(Duration::from_millis(100), 3, Duration::from_secs(1), 5).unwrap();
        let delays: Vec<_> = (1..=5).map(|n| p.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![100, 300, 900, 1000, 1000]);
        assert_eq!(
            RetryPolicy::new(Duration::ZERO, 2, Duration::ZERO, 0),
            Err(RetryPolicyError::ZeroAttempts)
        );
        assert_eq!(
            RetryPolicy::new(Duration::from_secs(2), 2, Duration::from_secs(1), 3),
            Err(RetryPolicyError::MaxBelowInitial {
                initial: Duration::from_secs(2),
                max_delay: Duration::from_secs(1)
            })
        );
        assert_eq!(
            RetryPolicy::new(Duration::from_secs(1), 0, Duration::from_secs(1), 3),
            Err(RetryPolicyError::ZeroFactor)
        );
        // A huge attempt count does not overflow.
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn an_effect_key_names_machine_sequence_and_index() {
        let id = EffectId::new(MachineId::new("sub-7").unwrap(), 12, 1);
        assert_eq!(id.key(), "sub-7/12/1");
    }
}
