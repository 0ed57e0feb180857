//! The file store's own figures (log, compactions, commits that waited, time spent compacting)
//! through the `metrics` facade, as Prometheus scrapes them, equal to `FileStore::stats`.
#![allow(missing_docs)]

use fsm_core::store::{Format, MachineId, Put, Snapshot, SnapshotStore};
use fsm_persist::io::{FsSync, Io, IoFile, OsIo};
use fsm_persist::FileStore;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[test]
fn the_file_store_publishes_its_log_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let ids: Vec<MachineId> = (0..10)
        .map(|i| MachineId::new(format!("m{i}")).unwrap())
        .collect();
    let snap = Snapshot::new("T", 1, 1, Format::Postcard, b"x").unwrap();
    let batch: Vec<Put<'_>> = ids.iter().map(|id| Put::new(id, None, &snap)).collect();
    store.put_many(&batch).unwrap();
    store.checkpoint().unwrap();
    let stats = store.stats();
    assert!(stats.compactions >= 1, "{stats:?}");
    assert!(stats.compacting > Duration::ZERO, "{stats:?}");
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || store.publish_metrics());
    let text = handle.render();
    for name in [
        "fsm_file_store_log_bytes",
        "fsm_file_store_log_segments",
        "fsm_file_store_compactions_total",
        "fsm_file_store_compacted_snapshots_total",
        "fsm_file_store_commit_waits_total",
        "fsm_file_store_commit_wait_seconds",
        "fsm_file_store_compacting_seconds",
        "fsm_file_store_poisoned",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("fsm_file_store_compactions_total{"))
        .unwrap();
    assert!(line.ends_with(&format!(" {}", stats.compactions)), "{line}");
    let poisoned = text
        .lines()
        .find(|l| l.starts_with("fsm_file_store_poisoned{"))
        .unwrap();
    assert!(poisoned.ends_with(" 0"), "{poisoned}");
    let compacting = text
        .lines()
        .find(|l| l.starts_with("fsm_file_store_compacting_seconds{"))
        .unwrap();
    let seconds: f64 = compacting.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(seconds, stats.compacting.as_secs_f64(), "{compacting}");
}

/// An `Io` whose file-system sync, which compaction opens before its first write, waits until
/// the test lets it go: a compaction held under way.
#[derive(Clone, Default)]
struct HeldCompaction {
    gate: Arc<(Mutex<(bool, bool)>, Condvar)>,
}

impl HeldCompaction {
    /// Waits until a compaction is held at the gate.
    fn wait_until_held(&self) {
        let (state, changed) = &*self.gate;
        let mut s = state.lock().unwrap();
        while !s.0 {
            s = changed.wait(s).unwrap();
        }
    }

    fn release(&self) {
        let (state, changed) = &*self.gate;
        state.lock().unwrap().1 = true;
        changed.notify_all();
    }
}

impl Io for HeldCompaction {
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
        OsIo.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        OsIo.sync_dir(dir)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        OsIo.remove(path)
    }
    fn open_fs(&self, dir: &Path) -> io::Result<Box<dyn FsSync>> {
        let (state, changed) = &*self.gate;
        let mut s = state.lock().unwrap();
        s.0 = true;
        changed.notify_all();
        while !s.1 {
            s = changed.wait(s).unwrap();
        }
        drop(s);
        OsIo.open_fs(dir)
    }
}

#[test]
fn the_time_spent_compacting_counts_a_compaction_under_way_and_grows_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let held = HeldCompaction::default();
    let store = Arc::new(
        FileStore::builder(dir.path())
            .io(held.clone())
            .open()
            .unwrap(),
    );
    assert_eq!(store.stats().compacting, Duration::ZERO);
    let ids: Vec<MachineId> = (0..10)
        .map(|i| MachineId::new(format!("m{i}")).unwrap())
        .collect();
    let snap = Snapshot::new("T", 1, 1, Format::Postcard, b"x").unwrap();
    let batch: Vec<Put<'_>> = ids.iter().map(|id| Put::new(id, None, &snap)).collect();
    store.put_many(&batch).unwrap();
    let checkpoint = {
        let store = store.clone();
        std::thread::spawn(move || store.checkpoint())
    };
    held.wait_until_held();
    let first = store.stats();
    assert_eq!(first.compactions, 0, "still under way: {first:?}");
    assert!(first.compacting > Duration::ZERO, "{first:?}");
    // The compaction is held: the time it has taken can only grow, by however long the
    // clock takes to move on.
    let seen = Instant::now();
    while seen.elapsed() == Duration::ZERO {
        std::hint::spin_loop();
    }
    let later = store.stats();
    assert!(
        later.compacting > first.compacting,
        "{first:?} then {later:?}"
    );
    held.release();
    checkpoint.join().unwrap().unwrap();
    let done = store.stats();
    assert_eq!(done.compactions, 1, "{done:?}");
    assert!(
        done.compacting >= later.compacting,
        "{later:?} then {done:?}"
    );
    // Nothing under way: the figure stands still.
    assert_eq!(store.stats().compacting, done.compacting);
}
