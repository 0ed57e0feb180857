//! What a machine has armed and which keys it remembers, for operators: read from a running
//! kernel ([`KernelHandle::timers`](super::KernelHandle::timers),
//! [`KernelHandle::keys`](super::KernelHandle::keys)) or from a stored snapshot offline
//! ([`timers_in`], [`keys_in`]), as `fsm show` and `fsm export` print them.

use super::journal::StoredEntry;
use super::section::{self, SectionError};
use crate::machine::Transition;
use crate::store::{Section, Snapshot};
use crate::timer::{StoredTimer, TimerKind};

/// A timer a machine has armed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArmedTimer {
    /// State timeout, event timeout, or a named timer.
    pub kind: TimerKind,
    /// When it fires, in wall-clock milliseconds since the UNIX epoch.
    pub deadline_ms: u64,
    /// The duration it was armed for, in milliseconds.
    pub after_ms: u64,
    /// The event it fires, by name, when it is known (from a running kernel; offline, only a
    /// reader with the machine's types knows it).
    pub event: Option<&'static str>,
}

/// An idempotency key a machine remembers: a retry with it gets the original answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppliedKey {
    /// The key.
    pub key: String,
    /// The sequence of the snapshot that holds the transition the key caused.
    pub seq: u64,
    /// That transition, when the machine's table is known (from a running kernel).
    pub transition: Option<Transition>,
}

/// The timers armed in `snapshot`, without its machine's types (so no event names): empty
/// when it has no timers section. For tools that read a store offline.
pub fn timers_in(snapshot: &Snapshot) -> Result<Vec<ArmedTimer>, SectionError> {
    let Some(bytes) = snapshot.timers() else {
        return Ok(Vec::new());
    };
    let (_next, stored): (u64, Vec<StoredTimer>) =
        section::decode_versioned(Section::Timers, bytes, crate::timer::SECTION_VERSION)?;
    stored
        .into_iter()
        .map(|s| {
            let kind = match (s.kind, s.name) {
                (0, None) => TimerKind::State,
                (1, None) => TimerKind::Event,
                (2, Some(name)) => TimerKind::Named(name.into()),
                (3, Some(name)) => TimerKind::Superstate(name.into()),
                (k, _) => {
                    return Err(SectionError::invalid(
                        Section::Timers,
                        format!("unknown timer kind {k}"),
                    ))
                }
            };
            Ok(ArmedTimer {
                kind,
                deadline_ms: s.deadline,
                after_ms: s.after,
                event: None,
            })
        })
        .collect()
}

/// The idempotency keys remembered in `snapshot`, oldest first, without its machine's types
/// (so no transitions): empty when it has no journal. For tools that read a store offline.
pub fn keys_in(snapshot: &Snapshot) -> Result<Vec<AppliedKey>, SectionError> {
    let Some(bytes) = snapshot.journal() else {
        return Ok(Vec::new());
    };
    let stored: Vec<StoredEntry<'_>> =
        section::decode_versioned(Section::Journal, bytes, super::journal::VERSION)?;
    Ok(stored
        .into_iter()
        .map(|k| AppliedKey {
            key: k.key.to_owned(),
            seq: k.seq,
            transition: None,
        })
        .collect())
}
