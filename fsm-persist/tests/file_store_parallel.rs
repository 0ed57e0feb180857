//! The file store under several writers at once: compare-and-set as strict as under one lock,
//! compaction on its own thread beside commits and reads, and commits that wait for it when
//! the log is full (and are counted), and the time spent compacting counted while it runs. Power cuts across several log lanes are in
//! `file_store_power_lanes.rs`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use fsm_core::store::{MachineId, Put, Snapshot, SnapshotStore, StoreError};
use fsm_persist::conformance::{id, snapshot};
use fsm_persist::io::{FsSync, Io, IoFile, OsIo};
use fsm_persist::{Compaction, FileStore, SqliteStore};

const PAYLOAD: usize = 48;

fn snap(id: &MachineId, seq: u64) -> Snapshot {
    snapshot(id.as_str(), seq, PAYLOAD)
}

#[test]
fn racing_writers_of_the_same_machines_never_lose_or_double_an_update() {
    let dir = tempfile::tempdir().unwrap();
    racing_writers(Arc::new(
        FileStore::builder(dir.path()).lanes(4).open().unwrap(),
    ));
}

#[test]
fn racing_writers_in_one_sqlite_group_transaction_never_lose_or_double_an_update() {
    // SQLite group-commits concurrent batches in one transaction; when a batch loses its
    // compare-and-set the group is written again with a savepoint per batch, and that batch
    // alone is rolled back. Here conflicts are frequent, so both paths run many times.
    let dir = tempfile::tempdir().unwrap();
    racing_writers(Arc::new(
        SqliteStore::open(dir.path().join("race.sqlite")).unwrap(),
    ));
}

/// Four threads read a machine's sequence and write the next one over it, on six shared
/// machines, alone or two at a time in a batch; only conflicts may fail. Afterwards every
/// machine's sequence is the number of writes to it that won.
fn racing_writers(store: Arc<dyn SnapshotStore>) {
    let ids: Vec<MachineId> = (0..6).map(|i| id(&format!("shared-{i}"))).collect();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (store, ids) = (store.clone(), ids.clone());
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t);
                let mut won: HashMap<MachineId, u64> = HashMap::new();
                for _ in 0..300 {
                    // Read, then write the next sequence over what was read: a lost race is a
                    // conflict, never a silent overwrite.
                    let a = &ids[rng.usize(..ids.len())];
                    let b = &ids[rng.usize(..ids.len())];
                    let targets: Vec<&MachineId> = if a == b { vec![a] } else { vec![a, b] };
                    let seen: Vec<Option<u64>> =
                        targets.iter().map(|m| store.sequence(m).unwrap()).collect();
                    let snapshots: Vec<Snapshot> = targets
                        .iter()
                        .zip(&seen)
                        .map(|(m, s)| snap(m, s.unwrap_or(0) + 1))
                        .collect();
                    let result = if targets.len() == 1 && rng.bool() {
                        store.put(targets[0], seen[0], &snapshots[0])
                    } else {
                        let batch: Vec<Put<'_>> = targets
                            .iter()
                            .zip(&seen)
                            .zip(&snapshots)
                            .map(|((m, s), snap)| Put::new(m, *s, snap))
                            .collect();
                        store.put_many(&batch)
                    };
                    match result {
                        Ok(()) => {
                            for m in targets {
                                *won.entry(m.clone()).or_default() += 1;
                            }
                        }
                        Err(StoreError::Conflict { .. }) => {}
                        Err(e) => panic!("only conflicts are expected: {e}"),
                    }
                }
                won
            })
        })
        .collect();
    let mut won: HashMap<MachineId, u64> = HashMap::new();
    for t in threads {
        for (m, n) in t.join().unwrap() {
            *won.entry(m).or_default() += n;
        }
    }
    // Each successful write moved its machine up by exactly one: the store's sequence is the
    // number of writes that won, for every machine.
    for m in &ids {
        let expected = won.get(m).copied().unwrap_or(0);
        assert_eq!(
            store.sequence(m).unwrap(),
            Some(expected).filter(|&n| n > 0)
        );
        if expected > 0 {
            assert_eq!(store.get(m).unwrap(), snap(m, expected));
        }
    }
    assert!(won.values().sum::<u64>() > 0);
}

#[test]
fn background_compaction_beside_writers_and_readers_keeps_every_acknowledged_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        FileStore::builder(dir.path())
            .lanes(4)
            .checkpoint_bytes(8 << 10)
            .compaction(Compaction::Background)
            .open()
            .unwrap(),
    );
    // Writers go on until the compactor has moved snapshots in several passes beside them
    // (an event the test waits for, not a time); a cap on rounds keeps a broken compactor
    // from running the test for ever.
    const CAP: usize = 50_000;
    let enough = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (store, enough) = (store.clone(), enough.clone());
            std::thread::spawn(move || {
                let ids: Vec<MachineId> = (0..40).map(|i| id(&format!("w{t}-{i}"))).collect();
                let mut seqs = vec![0_u64; ids.len()];
                let mut rng = fastrand::Rng::with_seed(t);
                let mut round = 0;
                while !enough.load(Ordering::SeqCst) && round < CAP {
                    let chosen: Vec<usize> = (0..8).map(|k| (round * 8 + k) % ids.len()).collect();
                    let snapshots: Vec<Snapshot> =
                        chosen.iter().map(|&i| snap(&ids[i], seqs[i] + 1)).collect();
                    let batch: Vec<Put<'_>> = chosen
                        .iter()
                        .zip(&snapshots)
                        .map(|(&i, s)| Put::new(&ids[i], (seqs[i] > 0).then_some(seqs[i]), s))
                        .collect();
                    store.put_many(&batch).unwrap();
                    for &i in &chosen {
                        seqs[i] += 1;
                    }
                    // Whatever compaction is doing, a read returns exactly what was written.
                    let i = rng.usize(..ids.len());
                    if seqs[i] > 0 {
                        assert_eq!(store.get(&ids[i]).unwrap(), snap(&ids[i], seqs[i]));
                    }
                    round += 1;
                }
                (ids, seqs, round)
            })
        })
        .collect();
    while !writers.iter().all(|w| w.is_finished()) {
        let stats = store.stats();
        if stats.compactions >= 3 && stats.compacted_snapshots > 0 {
            enough.store(true, Ordering::SeqCst);
        }
        std::thread::yield_now();
    }
    let written: Vec<(Vec<MachineId>, Vec<u64>)> = writers
        .into_iter()
        .map(|w| {
            let (ids, seqs, rounds) = w.join().unwrap();
            assert!(
                rounds < CAP,
                "{CAP} rounds and the compactor had not moved snapshots in three passes: {:?}",
                store.stats()
            );
            (ids, seqs)
        })
        .collect();
    drop(store);
    // Reopened with one lane (another thread count moves no data): everything is there.
    let store = FileStore::builder(dir.path()).lanes(1).open().unwrap();
    for (ids, seqs) in &written {
        for (m, &seq) in ids.iter().zip(seqs) {
            assert_eq!(store.get(m).unwrap(), snap(m, seq), "{m}");
        }
    }
    assert_eq!(store.recovery().machines, 160);
}

/// The operating system's I/O, with renames held back while a gate is closed: a compaction
/// that stalls, as one on a slow disk does.
#[derive(Clone, Default)]
struct GatedRenames {
    closed: Arc<(Mutex<bool>, Condvar)>,
    waiting: Arc<AtomicBool>,
}

impl GatedRenames {
    fn set(&self, closed: bool) {
        *self.closed.0.lock().unwrap() = closed;
        self.closed.1.notify_all();
    }
}

impl Io for GatedRenames {
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        OsIo.list(dir)
    }
    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        OsIo.read(path, limit)
    }
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        OsIo.read_at(path, offset, len)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        OsIo.create(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut closed = self.closed.0.lock().unwrap();
        while *closed {
            self.waiting.store(true, Ordering::SeqCst);
            closed = self.closed.1.wait(closed).unwrap();
        }
        drop(closed);
        OsIo.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        OsIo.sync_dir(dir)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        OsIo.remove(path)
    }
    fn open_fs(&self, dir: &Path) -> io::Result<Box<dyn FsSync>> {
        OsIo.open_fs(dir)
    }
}

#[test]
fn a_commit_that_finds_the_log_at_its_limit_waits_for_compaction_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let io = GatedRenames::default();
    let store = Arc::new(
        FileStore::builder(dir.path())
            .io(io.clone())
            .checkpoint_bytes(1)
            .log_limit(1)
            .open()
            .unwrap(),
    );
    let (a, b) = (id("first"), id("second"));
    io.set(true);
    store.put_many(&[Put::new(&a, None, &snap(&a, 1))]).unwrap();
    // The compactor now holds back at its rename; the log stays at its limit.
    while !io.waiting.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    let second = {
        let (store, b) = (store.clone(), b.clone());
        std::thread::spawn(move || store.put_many(&[Put::new(&b, None, &snap(&b, 1))]))
    };
    while store.stats().commit_waits == 0 {
        std::thread::yield_now();
    }
    assert!(
        !second.is_finished(),
        "the commit waits while compaction is stalled"
    );
    io.set(false);
    second.join().unwrap().unwrap();
    let stats = store.stats();
    assert_eq!(stats.commit_waits, 1);
    assert!(stats.commit_wait > Duration::ZERO);
    assert_eq!(store.get(&a).unwrap(), snap(&a, 1));
    assert_eq!(store.get(&b).unwrap(), snap(&b, 1));
}

#[test]
fn the_time_spent_compacting_counts_a_compaction_under_way_and_grows_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let io = GatedRenames::default();
    let store = FileStore::builder(dir.path())
        .io(io.clone())
        .checkpoint_bytes(1)
        .open()
        .unwrap();
    assert_eq!(store.stats().compacting, Duration::ZERO);
    let a = id("held");
    io.set(true);
    store.put_many(&[Put::new(&a, None, &snap(&a, 1))]).unwrap();
    // The compactor now holds back at its rename: a compaction under way.
    while !io.waiting.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    let first = store.stats();
    assert_eq!(first.compactions, 0, "still under way: {first:?}");
    assert!(first.compacting > Duration::ZERO, "{first:?}");
    // Held, the time it has taken can only grow, by however long the clock takes to move on.
    let seen = Instant::now();
    while seen.elapsed() == Duration::ZERO {
        std::hint::spin_loop();
    }
    let later = store.stats();
    assert!(
        later.compacting > first.compacting,
        "{first:?} then {later:?}"
    );
    io.set(false);
    // A checkpoint takes its turn after the background compaction, which has then ended; it
    // finds nothing sealed to move.
    store.checkpoint().unwrap();
    let done = store.stats();
    assert_eq!(done.compactions, 1, "{done:?}");
    assert!(
        done.compacting >= later.compacting,
        "{later:?} then {done:?}"
    );
    // Nothing under way: the figure stands still.
    assert_eq!(store.stats().compacting, done.compacting);
}
