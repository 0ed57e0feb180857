//! What a store can answer instead of success.

use std::io;
use std::path::PathBuf;

use super::envelope::EnvelopeError;
use super::id::MachineId;

/// An error from a [`SnapshotStore`](super::SnapshotStore) operation.
///
/// The variants sort by what a caller does next:
/// - [`NotFound`](StoreError::NotFound): create the machine in its initial state.
/// - [`Conflict`](StoreError::Conflict): someone else wrote first; reload and decide again.
/// - [`Corrupt`](StoreError::Corrupt): the stored bytes do not verify; fall back to another
///   copy (a mirror) or quarantine the machine. Never treat them as data.
/// - [`Io`](StoreError::Io): the operation did not happen (nothing was changed); retrying is
///   safe.
/// - [`OutcomeUnknown`](StoreError::OutcomeUnknown): a write may or may not be durable. Do not
///   treat it as success or as failure: stop, reopen the store and read what it holds.
/// - [`Poisoned`](StoreError::Poisoned): an earlier unknown outcome stopped the store; reopen
///   it (reopening verifies the disk).
/// - [`InvalidSequence`](StoreError::InvalidSequence), [`InvalidBatch`](StoreError::InvalidBatch):
///   the caller's request is wrong; fix the caller.
/// - [`Fenced`](StoreError::Fenced): another node owns the machine now; stop serving it and
///   send its commands to the owner. Nothing was written.
/// - [`Unavailable`](StoreError::Unavailable): a database could not be reached; nothing was
///   written, retrying later is safe.
/// - [`ConnectionLost`](StoreError::ConnectionLost): the connection broke after a write was
///   sent; like `OutcomeUnknown`, read back what the database holds before deciding again.
/// - [`NotSupported`](StoreError::NotSupported): this backend cannot do it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No snapshot is stored under this id.
    #[error("no snapshot stored for machine {id}")]
    NotFound {
        /// The id asked for.
        id: MachineId,
    },
    /// Compare-and-set failed: the stored sequence is not the one the writer expected.
    #[error(
        "conflict on machine {id}: the writer expected sequence {}, the store holds {}; reload it and decide again",
        show(*expected), show(*found)
    )]
    Conflict {
        /// The machine.
        id: MachineId,
        /// The sequence the writer expected (`None`: that nothing was stored).
        expected: Option<u64>,
        /// The sequence stored (`None`: nothing is).
        found: Option<u64>,
    },
    /// A write whose new sequence does not rise above the expected one.
    #[error(
        "snapshot sequence {new} for machine {id} does not rise above the expected {}; sequences start at 1 and rise with every write",
        show(*expected)
    )]
    InvalidSequence {
        /// The machine.
        id: MachineId,
        /// The expected (previous) sequence.
        expected: Option<u64>,
        /// The sequence of the snapshot offered.
        new: u64,
    },
    /// A batch that names one machine twice.
    #[error("batch names machine {id} more than once; put one snapshot per machine per batch")]
    InvalidBatch {
        /// The repeated id.
        id: MachineId,
    },
    /// Stored bytes that do not verify.
    #[error("corrupt snapshot at {location}: {problem}")]
    Corrupt {
        /// Where: the machine id, a file, a log segment offset.
        location: String,
        /// What is wrong.
        problem: Corruption,
    },
    /// An I/O error before anything was changed: the store holds what it held before.
    #[error("{operation} failed{}: {source}; nothing was changed", at(path))]
    Io {
        /// The step that failed.
        operation: &'static str,
        /// The file involved, if any.
        path: Option<PathBuf>,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An error after which a write may or may not be durable. The store is poisoned.
    #[error("{operation} failed{}: {source}; the write may or may not be durable, reopen the store and read it back", at(path))]
    OutcomeUnknown {
        /// The step that failed.
        operation: &'static str,
        /// The file involved, if any.
        path: Option<PathBuf>,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The store stopped after an earlier unknown outcome and refuses every call until it is
    /// reopened.
    #[error("store is poisoned since {cause}; reopen it to verify the disk and continue")]
    Poisoned {
        /// What poisoned it.
        cause: String,
    },
    /// An error reported by a database backend.
    #[error("{backend} error{}: {message}", if *outcome_unknown { " (outcome unknown)" } else { "" })]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// The backend's message.
        message: String,
        /// Whether a write may have happened.
        outcome_unknown: bool,
    },
    /// The machine belongs to another owner: the store's fencing refused the write (or knows
    /// without writing that this node's ownership ended). Nothing was written.
    #[error(
        "machine {id} is fenced: this node writes it under epoch {}, its owner's epoch is {}; stop serving it here and send its commands to the owner",
        show(*held), show(*current)
    )]
    Fenced {
        /// The machine.
        id: MachineId,
        /// The epoch this node holds for the machine (`None`: it holds no ownership of it).
        held: Option<u64>,
        /// The owner's epoch, as far as this node knows (`None`: unknown or nobody owns it).
        current: Option<u64>,
    },
    /// A database that could not be reached (no connection, a pool timeout, a server shutting
    /// down) before anything was sent: nothing was written.
    #[error("{backend} is unavailable: {message}; nothing was written, retry later")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// The connection broke after a write was sent and before its answer came: it may or may
    /// not be durable.
    #[error("the connection to {backend} was lost during a write: {message}; the write may or may not be durable, read it back (retry with the same idempotency key)")]
    ConnectionLost {
        /// The backend's name.
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// The backend does not support the operation.
    #[error("{backend} does not support {operation}")]
    NotSupported {
        /// The operation.
        operation: &'static str,
        /// The backend's name.
        backend: &'static str,
    },
}

fn show(seq: Option<u64>) -> String {
    seq.map_or_else(|| "none".to_owned(), |s| s.to_string())
}

fn at(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map_or_else(String::new, |p| format!(" on {}", p.display()))
}

impl StoreError {
    /// Whether a write may have happened in spite of the error: the caller must not treat
    /// the write as failed (nor as done) and should recover from the store.
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            StoreError::OutcomeUnknown { .. } | StoreError::ConnectionLost { .. } => true,
            StoreError::Backend {
                outcome_unknown, ..
            } => *outcome_unknown,
            _ => false,
        }
    }

    /// Whether another node owns the machine ([`StoreError::Fenced`]).
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced { .. })
    }

    /// Whether the operation certainly did not happen and may simply be tried again later
    /// ([`StoreError::Io`], [`StoreError::Unavailable`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Io { .. } | StoreError::Unavailable { .. })
    }

    /// Whether the store has stopped and must be reopened.
    pub fn is_poisoned(&self) -> bool {
        matches!(self, StoreError::Poisoned { .. })
    }

    /// A [`StoreError::Corrupt`] for an envelope that did not verify.
    pub fn corrupt(location: impl Into<String>, problem: impl Into<Corruption>) -> StoreError {
        StoreError::Corrupt {
            location: location.into(),
            problem: problem.into(),
        }
    }
}

/// What is wrong with corrupt stored bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// The envelope does not verify (checksum, truncation, layout).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The bytes verify but are not the generation the store recorded: a stale or misplaced
    /// copy.
    #[error("holds sequence {found}, the store recorded {expected}")]
    Generation {
        /// The sequence the store's index holds.
        expected: u64,
        /// The sequence found in the bytes.
        found: u64,
    },
    /// Anything else a backend detects.
    #[error("{0}")]
    Other(String),
}
