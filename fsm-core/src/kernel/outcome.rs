//! How a command ends: committed (applied and durable), or a typed error that says whether
//! anything was stored and what to do next.

use std::fmt;
use std::sync::Arc;

use crate::machine::{Event, Transition};
use crate::queue::{DelegateCause, DumpCause};
use crate::rejection::Rejection;
use crate::store::{DecodeError, MachineId, StoreError};

use super::request::Request;

/// The answer to a command the kernel accepted, what its ticket resolves to: [`Committed`] or
/// a [`CommandError`]. (A command queue's answer is [`queue::Outcome`](crate::queue::Outcome).)
pub type Answer = Result<Committed, CommandError>;

/// A command whose transition is applied **and durable**: the snapshot holding it was stored
/// before this answer was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The transition taken.
    pub transition: Transition,
    /// The sequence number of the snapshot that holds it.
    pub seq: u64,
    /// `true` if this command's idempotency key had already been applied: this is the
    /// original outcome, and nothing was applied this time.
    pub duplicate: bool,
}

/// Why a command the kernel accepted was not committed. Each variant says whether the machine
/// changed: only [`CommandError::OutcomeUnknown`] leaves that open.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The machine refused the event (no transition, a guard, an invariant, or a panicking
    /// handler); it is exactly as it was.
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// Its deadline passed before the machine took it; not applied.
    #[error("expired: the deadline passed before the machine took it")]
    Expired,
    /// Dropped by policy (the state's `dump(..)`, the defer limit, or a full inbox evicting
    /// its oldest command); not applied.
    #[error("dumped: {0}")]
    Dumped(DumpCause),
    /// Handed to the kernel's overflow sink (the state's `delegate(..)`); not applied here.
    #[error("delegated: {0}")]
    Delegated(DelegateCause),
    /// The store refused the new snapshot and **nothing was stored**: the machine is back at
    /// its last durable state, no effect ran. Retrying is safe.
    #[error("not stored: machine `{id}` is back at its last durable state: {error}")]
    NotStored {
        /// The machine.
        id: MachineId,
        /// What the store said.
        error: Arc<StoreError>,
    },
    /// The store failed in a way that leaves open whether the snapshot was stored (an fsync
    /// error, a lost connection). The machine was stopped and is reloaded from the store; no
    /// effect ran. Retry with the same idempotency key to learn the outcome without applying
    /// the command twice.
    #[error("outcome unknown: machine `{id}` is being recovered from the store; retry with the same idempotency key: {error}")]
    OutcomeUnknown {
        /// The machine.
        id: MachineId,
        /// What the store said.
        error: Arc<StoreError>,
    },
    /// The machine could not be loaded from the store (the store is unavailable); nothing was
    /// applied. Retrying later is safe.
    #[error("machine `{id}` could not be loaded: {error}")]
    Unavailable {
        /// The machine.
        id: MachineId,
        /// What the store said.
        error: Arc<StoreError>,
    },
    /// The machine's stored snapshot is corrupt or invalid; it is quarantined until an
    /// operator repairs it and calls [`KernelHandle::release`](super::KernelHandle::release).
    #[error("{0}")]
    Quarantined(Arc<Quarantined>),
    /// The machine's state could not be encoded (serde refused it); nothing stored, the
    /// machine is back at its last durable state.
    #[error("machine `{id}` could not be encoded, nothing stored: {message}")]
    Unencodable {
        /// The machine.
        id: MachineId,
        /// serde's message.
        message: String,
    },
    /// The store holds nothing for the machine and the kernel's initial function gave a
    /// value that is not the table's initial state or fails its invariant (a bug in the
    /// function given to [`Kernel::builder`](super::Kernel::builder)).
    #[error("machine `{id}` cannot start: {problem}")]
    InvalidInitial {
        /// The machine.
        id: MachineId,
        /// What is wrong.
        problem: String,
    },
    /// Another node owns the machine now (the store fenced this node, see
    /// [`StoreError::Fenced`]): **nothing was stored here**, no effect ran, and this kernel
    /// stopped serving the machine. A command that had not been applied yet is handed back
    /// by [`KernelHandle::take_handed_back`](super::KernelHandle::take_handed_back); send it (or resubmit
    /// this one, with the same idempotency key) to the machine's owner.
    #[error("fenced: machine `{id}` is served by another node now, nothing was stored here; send the command to its owner with the same idempotency key: {error}")]
    Fenced {
        /// The machine.
        id: MachineId,
        /// What the store said.
        error: Arc<StoreError>,
    },
    /// The transition asked for a timer the kernel cannot arm (too many armed, an event of
    /// the wrong type, events it cannot store, a deadline past the clock): **not applied**,
    /// the machine is exactly as it was.
    #[error("timer refused, not applied: {0}")]
    Timer(crate::timer::TimerError),
    /// The transition's effects cannot be owed (the machine would owe more than the kernel's
    /// bound, or an effect does not encode): **not applied**, the machine is exactly as it
    /// was.
    #[error("effects refused, not applied: {0}")]
    Outbox(super::outbox::OutboxError),
    /// The kernel shut down before the machine took the command; not applied.
    #[error("closed: the kernel shut down before the machine took the command")]
    Closed,
}

impl CommandError {
    /// Whether the machine may have changed (only [`CommandError::OutcomeUnknown`]).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, CommandError::OutcomeUnknown { .. })
    }

    /// Whether another node serves the machine now ([`CommandError::Fenced`]).
    pub fn is_fenced(&self) -> bool {
        matches!(self, CommandError::Fenced { .. })
    }
}

/// A machine the kernel will not run: its snapshot is corrupt, undecodable or invalid.
#[derive(Debug, thiserror::Error)]
#[error("machine `{id}` is quarantined: {cause}")]
pub struct Quarantined {
    /// The machine.
    pub id: MachineId,
    /// What is wrong with its snapshot.
    pub cause: QuarantineCause,
}

/// What is wrong with a quarantined machine's snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuarantineCause {
    /// The store found the bytes corrupt (checksum, truncation, a stale generation).
    #[error("corrupt snapshot: {0}")]
    Corrupt(StoreError),
    /// The envelope verified but the machine did not decode or failed its invariant
    /// (another machine type, a newer schema, no migration, bad payload, invalid state).
    #[error("snapshot does not decode: {0}")]
    Decode(DecodeError),
    /// One of the kernel's sections of the snapshot (the journal, the timers, the outbox) does
    /// not decode or does not fit the machine (a state timeout in a state that declares none,
    /// a timer event or an owed effect this kernel cannot decode).
    #[error("{0}")]
    Section(super::section::SectionError),
}

/// Why the kernel did not accept a command; the request is handed back where it was not
/// kept.
#[non_exhaustive]
pub enum SubmitError<E> {
    /// The machine's shard inbox is full and the policy is back-pressure: retry later.
    Full(Request<E>),
    /// The kernel is shutting down or has shut down.
    Closed(Request<E>),
    /// The deadline passed while waiting for room.
    Expired(Request<E>),
    /// The inbox is full and the policy drops the newest command (this one).
    Dumped(Request<E>),
    /// The inbox is full and the overflow sink took the command.
    Delegated,
    /// The effect worker that serves this machine exceeded its restart intensity; the kernel
    /// takes no commands for its machines until [`KernelHandle::restart_worker`](super::KernelHandle::restart_worker).
    Escalated {
        /// The request, handed back.
        request: Request<E>,
        /// The escalated worker.
        worker: usize,
    },
}

impl<E> SubmitError<E> {
    /// The request, if it was handed back.
    pub fn into_request(self) -> Option<Request<E>> {
        match self {
            SubmitError::Full(r)
            | SubmitError::Closed(r)
            | SubmitError::Expired(r)
            | SubmitError::Dumped(r)
            | SubmitError::Escalated { request: r, .. } => Some(r),
            SubmitError::Delegated => None,
        }
    }
}

impl<E: Event> fmt::Debug for SubmitError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Full(r) => f.debug_tuple("Full").field(r).finish(),
            SubmitError::Closed(r) => f.debug_tuple("Closed").field(r).finish(),
            SubmitError::Expired(r) => f.debug_tuple("Expired").field(r).finish(),
            SubmitError::Dumped(r) => f.debug_tuple("Dumped").field(r).finish(),
            SubmitError::Delegated => f.write_str("Delegated"),
            SubmitError::Escalated { request, worker } => f
                .debug_struct("Escalated")
                .field("request", request)
                .field("worker", worker)
                .finish(),
        }
    }
}

impl<E> fmt::Display for SubmitError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Full(_) => f.write_str("the machine's inbox is full; retry later"),
            SubmitError::Closed(_) => f.write_str("the kernel is shut down"),
            SubmitError::Expired(_) => f.write_str("the deadline passed while waiting for room"),
            SubmitError::Dumped(_) => {
                f.write_str("the machine's inbox is full and drops the newest command")
            }
            SubmitError::Delegated => {
                f.write_str("the machine's inbox is full; the overflow sink took the command")
            }
            SubmitError::Escalated { worker, .. } => write!(
                f,
                "effect worker {worker} exceeded its restart intensity; its machines take no commands until it is restarted"
            ),
        }
    }
}

impl<E: Event> std::error::Error for SubmitError<E> {}
