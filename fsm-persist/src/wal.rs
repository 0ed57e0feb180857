//! The write-ahead log of the file store: batches of snapshots appended to a segment file with
//! one fdatasync each, compacted into the per-machine files later.
//!
//! A segment is a sequence of records:
//!
//! ```text
//! "FSMW" | body length u32 | CRC32C of the body u32 | body
//! body  = count u32 | count x (id length u8 | id | envelope length u32 | envelope)
//! ```
//!
//! A record is the unit of atomicity: a batch is in the log if and only if its whole record
//! verifies. Replay stops at the first record that does not (the torn tail of a crash).

use fsm_core::store::{Limits, MachineId, Put, Snapshot};

const MAGIC: [u8; 4] = *b"FSMW";
const HEADER: usize = 12;

/// The file name of segment `number`.
pub(crate) fn segment_name(number: u64) -> String {
    format!("wal-{number:016x}.log")
}

/// The number of a segment file name, if it is one.
pub(crate) fn segment_number(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Encodes a batch as one record; returns the record and, per put, the offset of its envelope
/// within the record.
pub(crate) fn encode(batch: &[Put<'_>]) -> (Vec<u8>, Vec<usize>) {
    let body_len: usize = 4 + batch
        .iter()
        .map(|p| 1 + p.id.as_str().len() + 4 + p.snapshot.len())
        .sum::<usize>();
    let mut record = Vec::with_capacity(HEADER + body_len);
    record.extend_from_slice(&MAGIC);
    record.extend_from_slice(&(body_len as u32).to_le_bytes());
    record.extend_from_slice(&[0; 4]);
    record.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    let mut offsets = Vec::with_capacity(batch.len());
    for put in batch {
        let id = put.id.as_str().as_bytes();
        // Ids are at most 128 bytes (MachineId guarantees it).
        record.push(id.len() as u8);
        record.extend_from_slice(id);
        record.extend_from_slice(&(put.snapshot.len() as u32).to_le_bytes());
        offsets.push(record.len());
        record.extend_from_slice(put.snapshot.as_bytes());
    }
    let crc = crc32c::crc32c(&record[HEADER..]);
    record[8..12].copy_from_slice(&crc.to_le_bytes());
    (record, offsets)
}

/// One snapshot found in a segment.
pub(crate) struct Entry {
    pub(crate) id: MachineId,
    pub(crate) seq: u64,
    pub(crate) offset: u64,
    pub(crate) len: usize,
    /// The state name the snapshot records.
    pub(crate) state: Option<String>,
}

/// What replaying a segment found.
pub(crate) struct Replay {
    pub(crate) entries: Vec<Entry>,
    pub(crate) records: usize,
    /// Bytes after the last valid record (a torn or garbled tail).
    pub(crate) torn_bytes: usize,
}

/// Reads every valid record of a segment, stopping at the first invalid one.
pub(crate) fn replay(bytes: &[u8], limits: &Limits) -> Replay {
    let mut entries = Vec::new();
    let mut records = 0;
    let mut at = 0;
    while let Some((next, found)) = record_at(bytes, at, limits) {
        entries.extend(found);
        records += 1;
        at = next;
    }
    Replay {
        entries,
        records,
        torn_bytes: bytes.len() - at,
    }
}

fn take<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Parses the record at `at`: the offset after it and its entries, or `None` if it does not
/// verify.
fn record_at(bytes: &[u8], at: usize, limits: &Limits) -> Option<(usize, Vec<Entry>)> {
    if take::<4>(bytes, at)? != MAGIC {
        return None;
    }
    let body_len = u32::from_le_bytes(take(bytes, at + 4)?) as usize;
    let crc = u32::from_le_bytes(take(bytes, at + 8)?);
    let start = at + HEADER;
    let end = start.checked_add(body_len)?;
    let body = bytes.get(start..end)?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let count = u32::from_le_bytes(take(body, 0)?) as usize;
    let mut pos = 4;
    let mut entries = Vec::with_capacity(count.min(body.len() / 8));
    for _ in 0..count {
        let id_len = *body.get(pos)? as usize;
        let id = std::str::from_utf8(body.get(pos + 1..pos + 1 + id_len)?).ok()?;
        let id = MachineId::new(id).ok()?;
        pos += 1 + id_len;
        let len = u32::from_le_bytes(take(body, pos)?) as usize;
        pos += 4;
        let envelope = body.get(pos..pos.checked_add(len)?)?;
        let (verified, state) = Snapshot::verify_prefix_state(envelope, limits).ok()?;
        if verified != len {
            return None;
        }
        let seq = u64::from_le_bytes(take(envelope, 12)?);
        entries.push(Entry {
            id,
            seq,
            offset: (start + pos) as u64,
            len,
            state: state.map(str::to_owned),
        });
        pos += len;
    }
    (pos == body.len()).then_some((end, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fsm_core::store::Format;

    fn batch() -> (Vec<MachineId>, Vec<Snapshot>) {
        let ids: Vec<_> = (0..3)
            .map(|i| MachineId::new(format!("m{i}")).unwrap())
            .collect();
        let snaps = (0..3)
            .map(|i| Snapshot::new("M", 1, i + 1, Format::Postcard, &[i as u8; 40]).unwrap())
            .collect();
        (ids, snaps)
    }

    fn puts<'a>(ids: &'a [MachineId], snaps: &'a [Snapshot]) -> Vec<Put<'a>> {
        ids.iter()
            .zip(snaps)
            .map(|(i, s)| Put::new(i, None, s))
            .collect()
    }

    #[test]
    fn records_replay_with_the_offsets_of_their_envelopes() {
        let (ids, snaps) = batch();
        let puts = puts(&ids, &snaps);
        let (record, offsets) = encode(&puts);
        let mut segment = record.clone();
        segment.extend_from_slice(&record);
        let replay = replay(&segment, &Limits::DEFAULT);
        assert_eq!(replay.records, 2);
        assert_eq!(replay.torn_bytes, 0);
        assert_eq!(replay.entries.len(), 6);
        for (k, e) in replay.entries.iter().enumerate() {
            let i = k % 3;
            assert_eq!(e.id, ids[i]);
            assert_eq!(e.seq, snaps[i].seq());
            let base = if k < 3 { 0 } else { record.len() };
            assert_eq!(e.offset as usize, base + offsets[i]);
            assert_eq!(&segment[e.offset as usize..][..e.len], snaps[i].as_bytes());
        }
    }

    #[test]
    fn replay_stops_at_a_torn_or_flipped_record_and_reports_the_tail() {
        let (ids, snaps) = batch();
        let puts = puts(&ids, &snaps);
        let (record, _) = encode(&puts);
        for cut in 0..record.len() {
            let mut segment = record.clone();
            segment.extend_from_slice(&record[..cut]);
            let r = replay(&segment, &Limits::DEFAULT);
            assert_eq!((r.records, r.torn_bytes), (1, cut), "cut at {cut}");
        }
        for bit in (0..record.len() * 8).step_by(7) {
            let mut segment = record.clone();
            segment[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(replay(&segment, &Limits::DEFAULT).records, 0, "bit {bit}");
        }
    }

    #[test]
    fn segment_names_round_trip_and_foreign_names_are_not_segments() {
        assert_eq!(segment_number(&segment_name(0x2a)), Some(0x2a));
        for name in [
            "wal-2a.log",
            "wal-000000000000002a.snap",
            "x.log",
            "wal-zzzzzzzzzzzzzzzz.log",
        ] {
            assert_eq!(segment_number(name), None, "{name}");
        }
    }
}
