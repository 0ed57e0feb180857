//! Fault injection into the file store at every step: each write, fsync, rename, directory
//! fsync, file creation and removal, failing once, failing forever, crashing before it, and
//! (for writes) tearing it or leaving garbage in its last block before crashing.
//!
//! For each (step, occurrence, fault) the scenario below runs against a store doing real I/O
//! through `FaultyIo`; then the store is reopened with plain I/O and every machine must hold
//! a verified snapshot that is either the last acknowledged one or a newer one whose write did
//! not return a definite "not applied". Nothing acknowledged is lost; nothing corrupt is read.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use fsm_core::store::{MachineId, Put, SnapshotStore, StoreError};
use fsm_persist::conformance::{id, snapshot};
use fsm_persist::fault::{Fault, FaultyIo, PowerLossIo, Step};
use fsm_persist::FileStore;

const LEN: usize = 300;

/// What the scenario may have left on disk per machine.
#[derive(Default, Debug)]
struct Model {
    acked: HashMap<MachineId, u64>,
    /// Sequences whose write ended in an unknown outcome: they may be on disk.
    maybe: HashMap<MachineId, Vec<u64>>,
    /// Sequences whose write was definitely not applied.
    never: HashMap<MachineId, Vec<u64>>,
}

impl Model {
    fn expected(&self, m: &MachineId) -> Option<u64> {
        self.acked.get(m).copied()
    }

    fn record(&mut self, writes: &[(MachineId, u64)], result: &Result<(), StoreError>) {
        for (m, seq) in writes {
            match result {
                Ok(()) => {
                    self.acked.insert(m.clone(), *seq);
                }
                Err(e) if e.is_outcome_unknown() => {
                    self.maybe.entry(m.clone()).or_default().push(*seq)
                }
                Err(StoreError::Conflict { .. } | StoreError::InvalidSequence { .. }) => {
                    panic!("the scenario never writes a stale sequence: {result:?}")
                }
                Err(_) => self.never.entry(m.clone()).or_default().push(*seq),
            }
        }
    }

    fn check(&self, store: &FileStore, context: &str) {
        if let Err(problem) = self.verify(store, context) {
            panic!("{problem}");
        }
    }

    /// What `check` asserts, as a value: the first thing wrong, if any.
    fn verify(&self, store: &FileStore, context: &str) -> Result<(), String> {
        if !store.recovery().corrupt.is_empty() {
            return Err(format!(
                "{context}: recovery found corrupt files: {:?}",
                store.recovery()
            ));
        }
        for (m, &acked) in &self.acked {
            let got = store.get(m).map_err(|e| {
                format!("{context}: {m} acknowledged at {acked} but get failed: {e}")
            })?;
            let seq = got.seq();
            if got != snapshot(m.as_str(), seq, LEN) {
                return Err(format!("{context}: {m} holds foreign bytes"));
            }
            if seq < acked {
                return Err(format!(
                    "{context}: {m} lost acknowledged sequence {acked}, has {seq}"
                ));
            }
            let maybe = self.maybe.get(m).is_some_and(|v| v.contains(&seq));
            if seq != acked && !maybe {
                return Err(format!(
                    "{context}: {m} holds {seq}, neither acknowledged ({acked}) nor possibly written"
                ));
            }
            if self.never.get(m).is_some_and(|v| v.contains(&seq)) {
                return Err(format!(
                    "{context}: {m} holds {seq}, whose write reported nothing was changed"
                ));
            }
        }
        Ok(())
    }
}

fn ids() -> [MachineId; 4] {
    [id("m"), id("n"), id("o"), id("p")]
}

/// The state before the faulty run: m, n, o at sequence 1, written singly and in a batch that
/// is still in the log when the faulty store opens (so its open compacts it).
fn setup(dir: &Path, model: &mut Model) {
    let [m, n, o, _] = ids();
    let store = FileStore::open(dir).unwrap();
    let sm = snapshot("m", 1, LEN);
    store.put(&m, None, &sm).unwrap();
    let (sn, so) = (snapshot("n", 1, LEN), snapshot("o", 1, LEN));
    store
        .put_many(&[Put::new(&n, None, &sn), Put::new(&o, None, &so)])
        .unwrap();
    for x in [&m, &n, &o] {
        model.acked.insert(x.clone(), 1);
    }
}

fn put_one(store: &FileStore, model: &mut Model, m: &MachineId, seq: u64) {
    let r = store.put(m, model.expected(m), &snapshot(m.as_str(), seq, LEN));
    model.record(&[(m.clone(), seq)], &r);
}

fn put_batch(store: &FileStore, model: &mut Model, writes: &[(&MachineId, u64)]) {
    let snaps: Vec<_> = writes
        .iter()
        .map(|(m, seq)| snapshot(m.as_str(), *seq, LEN))
        .collect();
    let batch: Vec<Put<'_>> = writes
        .iter()
        .zip(&snaps)
        .map(|((m, _), s)| Put::new(m, model.expected(m), s))
        .collect();
    let r = store.put_many(&batch);
    let owned: Vec<_> = writes.iter().map(|(m, s)| ((*m).clone(), *s)).collect();
    model.record(&owned, &r);
}

/// Single puts, batches through the log, a compaction, and a put after it.
fn scenario(store: &FileStore, model: &mut Model) {
    let [m, n, o, p] = ids();
    put_one(store, model, &m, 2);
    put_batch(store, model, &[(&m, 3), (&n, 2)]);
    put_one(store, model, &o, 2);
    put_batch(store, model, &[(&n, 3), (&o, 3), (&p, 1)]);
    let _ = store.checkpoint();
    put_one(store, model, &p, 2);
    put_batch(store, model, &[(&m, 4), (&p, 3)]);
}

/// Runs the scenario under `io`; returns the model and whether the store ended poisoned.
fn run(dir: &Path, io: FaultyIo) -> (Model, Option<bool>) {
    let mut model = Model::default();
    setup(dir, &mut model);
    match FileStore::builder(dir).io(io).open() {
        Ok(store) => {
            scenario(&store, &mut model);
            let poisoned = store.is_poisoned();
            (model, Some(poisoned))
        }
        // A fault while opening (its compaction): nothing new was acknowledged.
        Err(_) => (model, None),
    }
}

#[test]
fn the_scenario_without_faults_acknowledges_everything() {
    let dir = tempfile::tempdir().unwrap();
    let io = FaultyIo::counting();
    let (model, poisoned) = run(dir.path(), io.clone());
    assert_eq!(poisoned, Some(false));
    assert!(model.maybe.is_empty() && model.never.is_empty());
    let reopened = FileStore::open(dir.path()).unwrap();
    model.check(&reopened, "no fault");
    assert_eq!(reopened.get(&id("m")).unwrap().seq(), 4);
    assert_eq!(reopened.get(&id("p")).unwrap().seq(), 3);
    for step in Step::ALL {
        assert!(io.count(step) > 0, "the scenario must exercise {step:?}");
    }
}

#[test]
fn every_fault_at_every_step_leaves_old_or_new_and_loses_nothing_acknowledged() {
    let counter = FaultyIo::counting();
    {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), counter.clone());
    }
    let mut exercised = 0;
    let mut poisoned_runs = 0;
    for step in Step::ALL {
        for nth in 0..counter.count(step) {
            for fault in Fault::ALL {
                let dir = tempfile::tempdir().unwrap();
                let io = FaultyIo::new(step, nth, fault);
                let (model, poisoned) = run(dir.path(), io.clone());
                assert!(io.injected(), "{step:?} #{nth} {fault:?} was never reached");
                exercised += 1;
                let context = format!("{fault:?} at {step:?} #{nth}");
                if poisoned == Some(true) {
                    poisoned_runs += 1;
                }
                let reopened = FileStore::open(dir.path())
                    .unwrap_or_else(|e| panic!("{context}: reopening failed: {e}"));
                model.check(&reopened, &context);
                // The reopened store works: every machine takes a new write.
                for m in ids() {
                    let seq = reopened.sequence(&m).unwrap();
                    let next = seq.unwrap_or(0) + 10;
                    reopened
                        .put(&m, seq, &snapshot(m.as_str(), next, LEN))
                        .unwrap_or_else(|e| panic!("{context}: write after reopen failed: {e}"));
                }
            }
        }
    }
    eprintln!("fault points exercised: {exercised} ({poisoned_runs} left the store poisoned)");
    assert!(exercised >= 150, "only {exercised} fault points");
}

#[test]
fn a_failed_fsync_poisons_the_store_until_it_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let m = id("m");
    let store = FileStore::builder(dir.path())
        .io(FaultyIo::new(Step::Sync, 1, Fault::FailOnce))
        .open()
        .unwrap();
    store.put(&m, None, &snapshot("m", 1, LEN)).unwrap();
    let err = store.put(&m, Some(1), &snapshot("m", 2, LEN)).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert!(store.is_poisoned());
    // The fault was one-off, but the store does not retry: every call now fails.
    for err in [
        store.put(&m, Some(1), &snapshot("m", 3, LEN)).unwrap_err(),
        store.get(&m).unwrap_err(),
        store.put_many(&[]).unwrap_err(),
    ] {
        assert!(err.is_poisoned(), "{err}");
        assert!(err.to_string().contains("reopen"), "{err}");
    }
    drop(store);
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(store.get(&m).unwrap(), snapshot("m", 1, LEN));
}

#[test]
fn a_failed_write_leaves_the_store_usable_and_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let m = id("m");
    let store = FileStore::builder(dir.path())
        .io(FaultyIo::new(Step::Write, 1, Fault::FailOnce))
        .open()
        .unwrap();
    store.put(&m, None, &snapshot("m", 1, LEN)).unwrap();
    let err = store.put(&m, Some(1), &snapshot("m", 2, LEN)).unwrap_err();
    assert!(
        matches!(err, StoreError::Io { .. }) && !err.is_outcome_unknown(),
        "{err}"
    );
    assert!(!store.is_poisoned());
    assert_eq!(store.get(&m).unwrap(), snapshot("m", 1, LEN));
    store.put(&m, Some(1), &snapshot("m", 2, LEN)).unwrap();
    assert_eq!(store.get(&m).unwrap(), snapshot("m", 2, LEN));
}

#[test]
fn a_failed_rename_or_directory_fsync_is_an_unknown_outcome() {
    for step in [Step::Rename, Step::SyncDir] {
        let dir = tempfile::tempdir().unwrap();
        let m = id("m");
        let store = FileStore::builder(dir.path())
            .io(FaultyIo::new(step, 0, Fault::FailOnce))
            .open()
            .unwrap();
        let err = store.put(&m, None, &snapshot("m", 1, LEN)).unwrap_err();
        assert!(err.is_outcome_unknown(), "{step:?}: {err}");
        assert!(store.is_poisoned(), "{step:?}");
    }
}

// Power loss: the same scenario through `PowerLossIo`, with the power failing before each of
// its operations in turn (and after the last), and for each cut several of the disk states a
// POSIX file system may leave, each reopened with plain I/O.

/// Outcomes tried per cut: seed 0 (everything unsynced lost), 1 (everything kept, as after a
/// SIGKILL) and random mixes.
const SEEDS: u64 = 10;

/// Runs the scenario with the power failing at operation `cut` (`None`: not during it).
fn power_run(dir: &Path, cut: Option<usize>, broken: bool) -> (Model, PowerLossIo) {
    let mut model = Model::default();
    setup(dir, &mut model);
    let mut io = PowerLossIo::new(dir).unwrap();
    if let Some(cut) = cut {
        io = io.cut_before(cut);
    }
    let mut builder = FileStore::builder(dir).io(io.clone());
    if broken {
        builder = builder.broken_put_without_dir_sync();
    }
    if let Ok(store) = builder.open() {
        scenario(&store, &mut model);
    }
    (model, io)
}

#[derive(Default)]
struct PowerMatrix {
    cuts: usize,
    images: usize,
    outcomes: HashSet<u64>,
    torn_bytes: usize,
    stray_temps: usize,
    /// Snapshot files a cut left short during a compaction, replaced from the log.
    torn_files: usize,
    failures: Vec<String>,
}

/// Every cut point of the scenario and `SEEDS` outcomes of each: reopens each image with plain
/// I/O, checks the model, and writes once more to every machine.
fn power_matrix(broken: bool) -> PowerMatrix {
    let ops = {
        let dir = tempfile::tempdir().unwrap();
        let (model, io) = power_run(dir.path(), None, broken);
        assert!(model.maybe.is_empty() && model.never.is_empty());
        io.ops()
    };
    assert!(
        ops > 20,
        "the scenario did too little I/O: {ops} operations"
    );
    let scratch = tempfile::tempdir().unwrap();
    let mut matrix = PowerMatrix::default();
    for cut in 0..=ops {
        let dir = tempfile::tempdir().unwrap();
        let (model, io) = power_run(dir.path(), Some(cut), broken);
        matrix.cuts += 1;
        let at = io.cut_at().map_or_else(
            || "after the last operation".to_owned(),
            |(n, s)| format!("before {s:?} #{n}"),
        );
        for seed in 0..SEEDS {
            let image = io.image(seed);
            let context = format!("power cut {at}, outcome seed {seed}");
            let target = scratch.path().join(format!("{cut}-{seed}"));
            image.write_to(&target).unwrap();
            matrix.images += 1;
            matrix.outcomes.insert(image.outcome.fingerprint);
            let reopened = match FileStore::open(&target) {
                Ok(store) => store,
                Err(e) => {
                    matrix
                        .failures
                        .push(format!("{context}: reopening failed: {e}"));
                    continue;
                }
            };
            matrix.torn_bytes += reopened.recovery().wal_torn_bytes;
            matrix.stray_temps += reopened.recovery().stray_temps_removed;
            matrix.torn_files += reopened.recovery().torn_files.len();
            if let Err(problem) = model.verify(&reopened, &context) {
                matrix.failures.push(problem);
                continue;
            }
            for m in ids() {
                let seq = reopened.sequence(&m).unwrap();
                let next = seq.unwrap_or(0) + 10;
                if let Err(e) = reopened.put(&m, seq, &snapshot(m.as_str(), next, LEN)) {
                    matrix
                        .failures
                        .push(format!("{context}: write after reopen failed: {e}"));
                }
            }
            drop(reopened);
            std::fs::remove_dir_all(&target).unwrap();
        }
    }
    matrix
}

#[test]
fn a_power_cut_before_any_operation_loses_nothing_acknowledged_whatever_the_disk_kept() {
    let matrix = power_matrix(false);
    println!(
        "power cuts: {} cuts x {SEEDS} outcomes = {} images, {} distinct on-disk outcomes; \
         recovery dropped {} torn log bytes and {} stray temp files and replaced {} snapshot files \
         a compaction left short; nothing lost, nothing corrupt accepted",
        matrix.cuts,
        matrix.images,
        matrix.outcomes.len(),
        matrix.torn_bytes,
        matrix.stray_temps,
        matrix.torn_files
    );
    assert!(
        matrix.failures.is_empty(),
        "{} of {} images failed, first: {}",
        matrix.failures.len(),
        matrix.images,
        matrix.failures[0]
    );
    // The model really varied the disk: most images differ, and recovery had unsynced debris
    // (torn log tails, temp files of interrupted puts, files a compaction wrote without an
    // fsync of their own and the cut left short) to clean up.
    assert!(
        matrix.outcomes.len() > matrix.cuts,
        "{} outcomes",
        matrix.outcomes.len()
    );
    assert!(matrix.torn_bytes > 0 && matrix.stray_temps > 0 && matrix.torn_files > 0);
}

/// The model has teeth: a write path without its directory fsync passes every crash of the
/// old fault layer (which keeps every unsynced write, as a SIGKILL does) and fails under the
/// power-loss model.
#[test]
fn a_missing_directory_fsync_is_caught_by_the_power_model_and_not_by_crash_faults() {
    let counter = FaultyIo::counting();
    {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::default();
        setup(dir.path(), &mut model);
        let store = FileStore::builder(dir.path())
            .io(counter.clone())
            .broken_put_without_dir_sync()
            .open()
            .unwrap();
        scenario(&store, &mut model);
    }
    let mut crashes = 0;
    for step in Step::ALL {
        for nth in 0..counter.count(step) {
            let dir = tempfile::tempdir().unwrap();
            let mut model = Model::default();
            setup(dir.path(), &mut model);
            let io = FaultyIo::new(step, nth, Fault::Crash);
            if let Ok(store) = FileStore::builder(dir.path())
                .io(io.clone())
                .broken_put_without_dir_sync()
                .open()
            {
                scenario(&store, &mut model);
            }
            let reopened = FileStore::open(dir.path()).unwrap();
            model.check(&reopened, &format!("Crash at {step:?} #{nth}"));
            crashes += 1;
        }
    }
    let matrix = power_matrix(true);
    println!(
        "without the directory fsync: {crashes} crash points all pass; {} of {} power-cut images \
         lose an acknowledged put, first: {}",
        matrix.failures.len(),
        matrix.images,
        matrix.failures.first().map_or("none", String::as_str)
    );
    assert!(crashes > 20);
    assert!(
        matrix
            .failures
            .iter()
            .any(|f| f.contains("lost acknowledged")),
        "the power-loss model did not catch the missing directory fsync"
    );
}
