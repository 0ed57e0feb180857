//! What every backend checks before stored bytes count as data.

use fsm_core::store::{Corruption, MachineId, Snapshot, StoreError};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use fsm_core::store::{EnvelopeError, Limits};

/// `snapshot`, read for machine `id`, if it is the generation the store recorded (`seq`); a
/// stale or misplaced copy is `Corrupt`.
pub(crate) fn recorded(
    id: &MachineId,
    snapshot: Snapshot,
    seq: u64,
) -> Result<Snapshot, StoreError> {
    if snapshot.seq() != seq {
        return Err(StoreError::corrupt(
            id.to_string(),
            Corruption::Generation {
                expected: seq,
                found: snapshot.seq(),
            },
        ));
    }
    Ok(snapshot)
}

/// Verifies what a database row of machine `id` holds: its recorded sequence `seq`, the
/// stored length `len`, and the bytes (`None` when the database did not send them because
/// `len` is over the limit). Only an envelope that verifies and carries the row's sequence is
/// data; anything else is `Corrupt`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn row(
    id: &MachineId,
    seq: u64,
    len: u64,
    bytes: Option<Vec<u8>>,
    limits: &Limits,
) -> Result<Snapshot, StoreError> {
    let Some(bytes) = bytes else {
        return Err(StoreError::corrupt(
            id.to_string(),
            EnvelopeError::TooLarge {
                len: usize::try_from(len).unwrap_or(usize::MAX),
                limit: limits.max_envelope(),
            },
        ));
    };
    let snapshot =
        Snapshot::from_bytes(bytes, limits).map_err(|e| StoreError::corrupt(id.to_string(), e))?;
    recorded(id, snapshot, seq)
}
