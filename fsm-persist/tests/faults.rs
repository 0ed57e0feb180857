//! Fault injection into the file store at every step: each write, fsync, rename, directory
//! fsync, file creation and removal, failing once, failing forever, crashing before it, and
//! (for writes) tearing it or leaving garbage in its last block before crashing.
//!
//! For each (step, occurrence, fault) the scenario below runs against a store doing real I/O
//! through `FaultyIo`; then the store is reopened with plain I/O and every machine must hold
//! a verified snapshot that is either the last acknowledged one or a newer one whose write did
//! not return a definite "not applied". Nothing acknowledged is lost; nothing corrupt is read.

use std::collections::HashMap;
use std::path::Path;

use fsm_core::store::{MachineId, Put, SnapshotStore, StoreError};
use fsm_persist::conformance::{id, snapshot};
use fsm_persist::fault::{Fault, FaultyIo, Step};
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
        assert!(
            store.recovery().corrupt.is_empty(),
            "{context}: recovery found corrupt files: {:?}",
            store.recovery()
        );
        for (m, &acked) in &self.acked {
            let got = store.get(m).unwrap_or_else(|e| {
                panic!("{context}: {m} acknowledged at {acked} but get failed: {e}")
            });
            let seq = got.seq();
            assert_eq!(
                got,
                snapshot(m.as_str(), seq, LEN),
                "{context}: {m} holds foreign bytes"
            );
            assert!(
                seq >= acked,
                "{context}: {m} lost acknowledged sequence {acked}, has {seq}"
            );
            let maybe = self.maybe.get(m).is_some_and(|v| v.contains(&seq));
            assert!(
                seq == acked || maybe,
                "{context}: {m} holds {seq}, neither acknowledged ({acked}) nor possibly written"
            );
            assert!(
                !self.never.get(m).is_some_and(|v| v.contains(&seq)),
                "{context}: {m} holds {seq}, whose write reported nothing was changed"
            );
        }
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
