//! A snapshot kept in a database row, as the SQL backends read it back.

use fsm_core::store::{Corruption, EnvelopeError, Limits, MachineId, Snapshot, StoreError};

/// Verifies what a row of machine `id` holds: its recorded sequence `seq`, the stored
/// length `len`, and the bytes (`None` when the database did not send them because `len` is
/// over the limit). Only an envelope that verifies and carries the row's sequence is data;
/// anything else is `Corrupt`.
pub(crate) fn verified(
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
