//! Corruption on disk: flipped bits, truncated files, stale generations, torn log tails,
//! snapshots of another machine type or a newer schema. Each is a typed error, never data;
//! the mirror repairs a corrupt or stale copy from the other side.
#![allow(missing_docs)] // test machine

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fsm_core::store::{
    Codec, Corruption, DecodeError, EnvelopeError, LoadError, MachineId, Put, SnapshotStore,
    SnapshotStoreExt, StoreError,
};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use fsm_persist::conformance::{id, snapshot};
use fsm_persist::fault::{Fault, FaultyIo, Step};
use fsm_persist::{FileStore, MirrorStatus, MirroredStore, Side, SqliteStore};
use serde::{Deserialize, Serialize};

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = Tick)]
pub enum Meter {
    #[fsm(initial, on(Tick => Counting))]
    Zero,
    #[fsm(on(Tick => Counting))]
    Counting { n: u32 },
}

#[derive(Event, Debug, Clone)]
pub enum Tick {
    Tick,
}

impl Handler<tick::Tick, meter::Counting> for meter::Zero {
    fn handle(
        _: meter::Zero,
        _: tick::Tick,
        _: &mut Effects<()>,
    ) -> Result<meter::Counting, Refusal> {
        Ok(meter::Counting { n: 1 })
    }
}

impl Handler<tick::Tick, meter::Counting> for meter::Counting {
    fn handle(
        s: meter::CountingRef<'_>,
        _: tick::Tick,
        _: &mut Effects<()>,
    ) -> Result<meter::Counting, Refusal> {
        Ok(meter::Counting { n: s.n + 1 })
    }
}

fn snap_file(dir: &Path, m: &str) -> std::path::PathBuf {
    dir.join(format!("{m}.snap"))
}

fn corrupt_problem(err: StoreError) -> Corruption {
    match err {
        StoreError::Corrupt { problem, .. } => problem,
        other => panic!("expected Corrupt, got {other}"),
    }
}

/// A file store holding machine `m` at sequence 1 (500 bytes of payload), and its file.
fn one_machine_on_disk() -> (tempfile::TempDir, MachineId, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let m = id("m");
    FileStore::open(dir.path())
        .unwrap()
        .put(&m, None, &snapshot("m", 1, 500))
        .unwrap();
    let path = snap_file(dir.path(), "m");
    (dir, m, path)
}

#[test]
fn a_flipped_bit_in_a_snapshot_file_is_a_checksum_error_at_open_and_on_read() {
    let (dir, m, path) = one_machine_on_disk();
    let mut bytes = fs::read(&path).unwrap();
    bytes[300] ^= 0x10;
    fs::write(&path, bytes).unwrap();

    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(store.recovery().corrupt.len(), 1, "{:?}", store.recovery());
    assert_eq!(store.recovery().corrupt[0].0, "m.snap");
    let problem = corrupt_problem(store.get(&m).unwrap_err());
    assert!(
        matches!(
            problem,
            Corruption::Envelope(EnvelopeError::Checksum { .. })
        ),
        "{problem}"
    );
    assert!(
        store.sequence(&m).is_err(),
        "a corrupt machine has no trustworthy sequence"
    );
    // The file stays on disk for inspection until a write that expects nothing replaces it.
    assert!(path.exists());
    assert!(matches!(
        store.put(&m, Some(1), &snapshot("m", 2, 500)),
        Err(StoreError::Conflict { found: None, .. })
    ));
    store.put(&m, None, &snapshot("m", 2, 500)).unwrap();
    assert_eq!(store.get(&m).unwrap(), snapshot("m", 2, 500));
}

#[test]
fn a_truncated_snapshot_file_is_a_truncation_error() {
    let (dir, m, path) = one_machine_on_disk();
    let bytes = fs::read(&path).unwrap();
    for keep in [0, 10, 40, bytes.len() - 1] {
        fs::write(&path, &bytes[..keep]).unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let problem = corrupt_problem(store.get(&m).unwrap_err());
        assert!(
            matches!(
                problem,
                Corruption::Envelope(EnvelopeError::Truncated { .. })
            ),
            "{keep}: {problem}"
        );
    }
}

#[test]
fn an_older_valid_copy_put_back_in_place_is_a_generation_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = id("m");
    let store = FileStore::open(dir.path()).unwrap();
    store.put(&m, None, &snapshot("m", 1, 100)).unwrap();
    let old = fs::read(snap_file(dir.path(), "m")).unwrap();
    store.put(&m, Some(1), &snapshot("m", 2, 100)).unwrap();
    // Someone restores an old backup under the store's feet.
    fs::write(snap_file(dir.path(), "m"), old).unwrap();
    let problem = corrupt_problem(store.get(&m).unwrap_err());
    assert_eq!(
        problem,
        Corruption::Generation {
            expected: 2,
            found: 1
        }
    );
}

#[test]
fn stray_temp_files_are_removed_and_foreign_files_left_alone_on_open() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(".tmp-m-7"), b"half a snapshot").unwrap();
    fs::write(dir.path().join("README"), b"not ours").unwrap();
    fs::write(dir.path().join("..snap"), b"not a machine id").unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(store.recovery().stray_temps_removed, 1);
    assert!(!dir.path().join(".tmp-m-7").exists());
    let mut foreign = store.recovery().foreign_files.clone();
    foreign.sort();
    assert_eq!(foreign, ["..snap", "README"]);
    assert!(dir.path().join("README").exists());
    assert!(store.ids().unwrap().is_empty());
}

#[test]
fn snapshot_and_log_files_are_private_to_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let (a, b) = (id("a"), id("b"));
    store.put(&a, None, &snapshot("a", 1, 10)).unwrap();
    let sb = snapshot("b", 1, 10);
    store.put_many(&[Put::new(&b, None, &sb)]).unwrap();
    let mut checked = 0;
    for entry in fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?} has mode {mode:o}", entry.file_name());
        checked += 1;
    }
    assert_eq!(checked, 2, "one snapshot file and one log segment");
}

#[test]
fn a_torn_log_tail_is_dropped_and_everything_before_it_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<MachineId> = (0..3).map(|i| id(&format!("w{i}"))).collect();
    {
        let store = FileStore::open(dir.path()).unwrap();
        for seq in 1..=3u64 {
            let snaps: Vec<_> = ids.iter().map(|m| snapshot(m.as_str(), seq, 64)).collect();
            let batch: Vec<_> = ids
                .iter()
                .zip(&snaps)
                .map(|(m, s)| Put::new(m, (seq > 1).then_some(seq - 1), s))
                .collect();
            store.put_many(&batch).unwrap();
        }
    }
    let segment = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("the batches are in the log");
    // A crash in the middle of a fourth batch: half a record of garbage at the end.
    let mut bytes = fs::read(&segment).unwrap();
    bytes.extend_from_slice(b"FSMW\x40\x00\x00\x00garbage");
    fs::write(&segment, bytes).unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let r = store.recovery();
    assert_eq!(
        (r.wal_segments, r.wal_records, r.wal_torn_bytes),
        (1, 3, 15),
        "{r:?}"
    );
    for m in &ids {
        assert_eq!(store.get(m).unwrap(), snapshot(m.as_str(), 3, 64));
    }
    assert!(!segment.exists(), "open compacts the log into the files");
}

#[test]
fn a_snapshot_of_another_machine_type_or_a_newer_schema_fails_to_load_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let codec = Codec::<Meter>::new(2);
    let (other, newer) = (id("other"), id("newer"));
    // `snapshot` writes machine type "Conformance".
    store.put(&other, None, &snapshot("other", 1, 10)).unwrap();
    let err = store.load(&other, &codec).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Decode(DecodeError::WrongMachine {
                expected: "Meter",
                ..
            })
        ),
        "{err}"
    );
    store
        .save(
            &newer,
            None,
            &Meter::Counting { n: 3 },
            &Codec::<Meter>::new(3),
        )
        .unwrap();
    let err = store.load(&newer, &codec).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Decode(DecodeError::NewerSchema {
                found: 3,
                supported: 2,
                ..
            })
        ),
        "{err}"
    );
    // And what this build wrote it reads.
    store
        .save(&newer, Some(1), &Meter::Counting { n: 4 }, &codec)
        .unwrap();
    assert_eq!(
        store.load(&newer, &codec).unwrap(),
        Some((Meter::Counting { n: 4 }, 2))
    );
}

#[test]
fn sqlite_detects_a_corrupt_blob_and_a_row_whose_sequence_disagrees() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = SqliteStore::open(&path).unwrap();
    let (a, b) = (id("a"), id("b"));
    store.put(&a, None, &snapshot("a", 1, 100)).unwrap();
    store.put(&b, None, &snapshot("b", 1, 100)).unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute(
        "UPDATE fsm_snapshots SET snapshot = substr(snapshot, 1, 50) WHERE id = 'a'",
        [],
    )
    .unwrap();
    raw.execute("UPDATE fsm_snapshots SET seq = 9 WHERE id = 'b'", [])
        .unwrap();
    let problem = corrupt_problem(store.get(&a).unwrap_err());
    assert!(
        matches!(
            problem,
            Corruption::Envelope(EnvelopeError::Truncated { .. })
        ),
        "{problem}"
    );
    let problem = corrupt_problem(store.get(&b).unwrap_err());
    assert_eq!(
        problem,
        Corruption::Generation {
            expected: 9,
            found: 1
        }
    );
}

fn mirror(a: &Path, b: &Path) -> MirroredStore {
    MirroredStore::new(FileStore::open(a).unwrap(), FileStore::open(b).unwrap())
}

#[test]
fn the_mirror_serves_the_valid_copy_and_repairs_a_corrupt_one() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let m = id("m");
    mirror(a.path(), b.path())
        .put(&m, None, &snapshot("m", 1, 200))
        .unwrap();
    let path = snap_file(a.path(), "m");
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 1;
    fs::write(&path, bytes).unwrap();

    let store = mirror(a.path(), b.path());
    assert_eq!(store.get(&m).unwrap(), snapshot("m", 1, 200));
    assert_eq!(store.counts().repairs, 1);
    assert_eq!(store.status(), MirrorStatus::Healthy);
    // The primary's copy was rewritten: it verifies on its own now, also after reopening.
    assert_eq!(
        store.side(Side::Primary).get(&m).unwrap(),
        snapshot("m", 1, 200)
    );
    drop(store);
    assert_eq!(
        FileStore::open(a.path()).unwrap().get(&m).unwrap(),
        snapshot("m", 1, 200)
    );
}

/// Found by the lunar module example: a copy damaged while the store is open (after it was
/// verified at open) was detected on read but could not be repaired: the store still counted
/// it valid at its old sequence, so the mirror's repair (a write at that same sequence) was
/// refused and counted as a failure of the side.
#[test]
fn the_mirror_repairs_a_copy_damaged_while_the_stores_are_open() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let m = id("m");
    let store = mirror(a.path(), b.path());
    store.put(&m, None, &snapshot("m", 1, 200)).unwrap();
    let path = snap_file(b.path(), "m");
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 1;
    fs::write(&path, bytes).unwrap();

    assert_eq!(store.get(&m).unwrap(), snapshot("m", 1, 200));
    let counts = store.counts();
    assert_eq!((counts.repairs, counts.failures), (1, [0, 0]), "{counts:?}");
    assert_eq!(store.status(), MirrorStatus::Healthy);
    // The next write goes through on both sides, from the repaired sequence.
    store.put(&m, Some(1), &snapshot("m", 2, 200)).unwrap();
    drop(store);
    assert_eq!(
        FileStore::open(b.path()).unwrap().get(&m).unwrap(),
        snapshot("m", 2, 200)
    );
}

/// On its own, a file store that finds a copy damaged on read keeps reporting it corrupt (it
/// does not serve it again nor accept a write that expects the old sequence), and a write that
/// expects nothing replaces it.
#[test]
fn a_copy_found_damaged_on_read_stays_corrupt_until_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let m = id("m");
    let store = FileStore::open(dir.path()).unwrap();
    store.put(&m, None, &snapshot("m", 1, 200)).unwrap();
    let path = snap_file(dir.path(), "m");
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 1;
    fs::write(&path, bytes).unwrap();
    assert!(matches!(store.get(&m), Err(StoreError::Corrupt { .. })));
    assert!(matches!(
        store.sequence(&m),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(store.put(&m, Some(1), &snapshot("m", 2, 200)).is_err());
    store.put(&m, None, &snapshot("m", 2, 200)).unwrap();
    assert_eq!(store.get(&m).unwrap(), snapshot("m", 2, 200));
}

#[test]
fn the_mirror_brings_a_stale_or_missing_copy_forward_on_read() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (m, fresh) = (id("m"), id("fresh"));
    let store = mirror(a.path(), b.path());
    store.put(&m, None, &snapshot("m", 1, 50)).unwrap();
    // The secondary misses two writes and a whole machine (as if it had been down).
    store
        .side(Side::Primary)
        .put(&m, Some(1), &snapshot("m", 3, 50))
        .unwrap();
    store
        .side(Side::Primary)
        .put(&fresh, None, &snapshot("fresh", 1, 50))
        .unwrap();
    assert_eq!(
        store.sequence(&m).unwrap(),
        Some(3),
        "the newer side counts"
    );
    assert_eq!(store.get(&m).unwrap(), snapshot("m", 3, 50));
    assert_eq!(store.get(&fresh).unwrap(), snapshot("fresh", 1, 50));
    assert_eq!(store.counts().repairs, 2);
    assert_eq!(
        store.side(Side::Secondary).get(&m).unwrap(),
        snapshot("m", 3, 50)
    );
    assert_eq!(
        store.side(Side::Secondary).get(&fresh).unwrap(),
        snapshot("fresh", 1, 50)
    );
    // A writer holding the stale sequence is refused by the mirror as a whole.
    assert!(matches!(
        store.put(&m, Some(1), &snapshot("m", 2, 50)),
        Err(StoreError::Conflict { found: Some(3), .. })
    ));
}

#[test]
fn the_mirror_keeps_serving_when_one_side_fails_and_reports_itself_degraded() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let m = id("m");
    let broken = FileStore::builder(b.path())
        .io(FaultyIo::new(Step::Create, 1, Fault::FailForever))
        .open()
        .unwrap();
    let store = MirroredStore::new(FileStore::open(a.path()).unwrap(), broken);
    store.put(&m, None, &snapshot("m", 1, 50)).unwrap();
    assert_eq!(store.status(), MirrorStatus::Healthy);
    // From the second file creation on, the secondary cannot write.
    store.put(&m, Some(1), &snapshot("m", 2, 50)).unwrap();
    let sb = snapshot("m", 3, 50);
    store.put_many(&[Put::new(&m, Some(2), &sb)]).unwrap();
    assert!(
        matches!(store.status(), MirrorStatus::Degraded { side: Side::Secondary, ref cause } if cause.contains("injected")),
        "{:?}",
        store.status()
    );
    let counts = store.counts();
    assert_eq!((counts.degraded, counts.failures), (2, [0, 2]));
    assert_eq!(store.get(&m).unwrap(), snapshot("m", 3, 50));
    // The secondary still holds sequence 1: nothing it acknowledged was lost, it is just behind.
    assert_eq!(
        FileStore::open(b.path()).unwrap().get(&m).unwrap(),
        snapshot("m", 1, 50)
    );
}

#[test]
fn the_mirror_fails_only_when_both_sides_fail() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let m = id("m");
    let store = MirroredStore::new(
        FileStore::builder(a.path())
            .io(FaultyIo::new(Step::Create, 0, Fault::FailForever))
            .open()
            .unwrap(),
        FileStore::builder(b.path())
            .io(FaultyIo::new(Step::Create, 0, Fault::FailForever))
            .open()
            .unwrap(),
    );
    let err = store.put(&m, None, &snapshot("m", 1, 50)).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert!(
        matches!(store.status(), MirrorStatus::Down { .. }),
        "{:?}",
        store.status()
    );
    assert!(matches!(store.get(&m), Err(StoreError::NotFound { .. })));
}

#[test]
fn a_corrupt_file_with_an_older_copy_in_the_log_falls_back_and_is_still_reported() {
    let dir = tempfile::tempdir().unwrap();
    let m = id("m");
    {
        let store = FileStore::open(dir.path()).unwrap();
        let s1 = snapshot("m", 1, 200);
        store.put_many(&[Put::new(&m, None, &s1)]).unwrap(); // in the log
        store.put(&m, Some(1), &snapshot("m", 2, 200)).unwrap(); // in m.snap
    }
    let path = snap_file(dir.path(), "m");
    let mut bytes = fs::read(&path).unwrap();
    bytes[50] ^= 4;
    fs::write(&path, bytes).unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    // Sequence 2 is gone with the flipped bit; the log still held 1. The store serves it, but
    // the loss is reported so the caller can tell a fallback from a clean recovery.
    assert_eq!(store.get(&m).unwrap(), snapshot("m", 1, 200));
    assert_eq!(store.recovery().corrupt.len(), 1, "{:?}", store.recovery());
    assert_eq!(store.recovery().wal_snapshots_applied, 1);
}

/// A directory as a crash in the middle of a compaction leaves it: machine `m` at sequences 1
/// and 2 in the log (not compacted), and `m.snap` holding what `file` says.
fn log_with_a_file_beside(file: impl FnOnce(&[u8]) -> Vec<u8>) -> (tempfile::TempDir, MachineId) {
    let dir = tempfile::tempdir().unwrap();
    let m = id("m");
    {
        let store = FileStore::builder(dir.path())
            .checkpoint_bytes(1 << 40)
            .open()
            .unwrap();
        let s1 = snapshot("m", 1, 300);
        store.put_many(&[Put::new(&m, None, &s1)]).unwrap();
        store
            .put_many(&[Put::new(&m, Some(1), &snapshot("m", 2, 300))])
            .unwrap();
        assert_eq!(store.stats().compactions, 0);
    }
    let bytes = file(snapshot("m", 1, 300).as_bytes());
    fs::write(snap_file(dir.path(), "m"), bytes).unwrap();
    (dir, m)
}

#[test]
fn a_file_a_compaction_left_short_is_replaced_from_the_log_and_reported_torn_not_corrupt() {
    // The compaction was moving sequence 1 when the power went: its file kept a prefix, one
    // block of it zeros, while a newer copy was already in the log.
    let (dir, m) = log_with_a_file_beside(|copy| {
        let mut torn = copy[..200].to_vec();
        torn[40..80].fill(0);
        torn
    });
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(store.recovery().torn_files, vec!["m.snap".to_owned()]);
    assert!(
        store.recovery().corrupt.is_empty(),
        "{:?}",
        store.recovery()
    );
    assert_eq!(store.get(&m).unwrap(), snapshot("m", 2, 300));
    drop(store);
    // Recovery compacted the newest copy over the torn file: a clean open now.
    let again = FileStore::open(dir.path()).unwrap();
    assert!(again.recovery().torn_files.is_empty() && again.recovery().corrupt.is_empty());
    assert_eq!(again.get(&m).unwrap(), snapshot("m", 2, 300));
}

#[test]
fn a_damaged_file_that_is_no_copy_of_the_log_is_still_reported_corrupt() {
    // The same prefix with one byte that neither copy in the log has there: not a torn write
    // of either, so recovery cannot tell what the file held and says so.
    let (dir, m) = log_with_a_file_beside(|copy| {
        let mut damaged = copy[..200].to_vec();
        damaged[150] ^= 0x5a;
        damaged
    });
    let store = FileStore::open(dir.path()).unwrap();
    assert!(store.recovery().torn_files.is_empty());
    assert_eq!(store.recovery().corrupt.len(), 1, "{:?}", store.recovery());
    assert_eq!(store.recovery().corrupt[0].0, "m.snap");
    // The log's newest copy is served, as for any corrupt file with a copy in the log.
    assert_eq!(store.get(&m).unwrap(), snapshot("m", 2, 300));
}
