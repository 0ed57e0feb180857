//! The kernel over a file store that fails: at every I/O operation of a scenario, one fault
//! (a failed create, write, fdatasync, ...). Whatever the fault, a command the kernel
//! acknowledged is stored, a command it answered with an error changed nothing (or, for an
//! unknown outcome, may have), no effect runs for a command that was not acknowledged, and
//! the kernel recovers (reopening the store when it stopped) so later commands commit.
#![allow(missing_docs)]

mod kernel_machine;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fsm_core::kernel::{CommandError, EffectError, EffectWorker, Kernel};
use fsm_core::store::{Codec, MachineId, SnapshotStore, SnapshotStoreExt};
use fsm_persist::fault::{Fault, FaultyIo, Step};
use fsm_persist::FileStore;
use kernel_machine::{Added, Tally, TallyCmd};

const COMMANDS: u32 = 12;

struct Recorder(Arc<Mutex<Vec<u64>>>);

impl EffectWorker<Tally> for Recorder {
    fn run(&mut self, _: &MachineId, effect: &Added) -> Result<Option<TallyCmd>, EffectError> {
        self.0.lock().unwrap().push(effect.0);
        Ok(None)
    }
}

fn machine(i: u32) -> MachineId {
    MachineId::new(if i % 2 == 0 { "even" } else { "odd" }).unwrap()
}

struct Run {
    acked: BTreeSet<u64>,
    not_stored: BTreeSet<u64>,
    unknown: BTreeSet<u64>,
    effects: Vec<u64>,
    reopens: u64,
}

/// Adds 2^i to machine `i % 2` for each command i, one at a time, over a file store whose
/// first opening does its I/O through `io`; later openings (after the store stopped) are
/// plain, as after a restart. Then one probe command per machine, which must commit.
fn scenario(io: FaultyIo, label: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let opened = Arc::new(AtomicUsize::new(0));
    let opener = {
        let (path, opened) = (path.clone(), opened.clone());
        move || {
            let store = if opened.fetch_add(1, Ordering::SeqCst) == 0 {
                FileStore::builder(&path).io(io.clone()).open()?
            } else {
                FileStore::open(&path)?
            };
            Ok(Arc::new(store) as Arc<dyn SnapshotStore>)
        }
    };
    let effects = Arc::new(Mutex::new(Vec::new()));
    let recorder = effects.clone();
    let kernel = Kernel::builder_reopening(opener, |_| Tally::Open { total: 0 })
        .shards(1)
        .effects(1, move |_| Recorder(recorder.clone()))
        .start()
        .unwrap_or_else(|e| panic!("{label}: start: {e}"));
    let mut run = Run {
        acked: BTreeSet::new(),
        not_stored: BTreeSet::new(),
        unknown: BTreeSet::new(),
        effects: Vec::new(),
        reopens: 0,
    };
    for i in 0..COMMANDS {
        let amount = 1u64 << i;
        let outcome = kernel
            .submit(&machine(i), TallyCmd::Add { amount })
            .unwrap()
            .wait();
        match outcome {
            Ok(_) => run.acked.insert(amount),
            Err(CommandError::NotStored { .. }) => run.not_stored.insert(amount),
            Err(e) if e.is_outcome_unknown() => run.unknown.insert(amount),
            Err(e) => panic!("{label}: command {i}: unexpected {e}"),
        };
    }
    for i in 0..2 {
        // The fault may land on the probe itself; a retry must then commit.
        let probe = (0..2)
            .map(|_| {
                kernel
                    .submit(&machine(i), TallyCmd::Add { amount: 0 })
                    .unwrap()
                    .wait()
            })
            .find(Result::is_ok);
        assert!(probe.is_some(), "{label}: the kernel did not recover");
    }
    kernel.wait_idle();
    run.reopens = kernel.metrics().store_reopens;
    drop(kernel);
    run.effects = effects
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|&a| a > 0)
        .collect();
    run.effects.sort_unstable();

    // What survived, read by a fresh store (recovery included).
    let store = FileStore::open(&path).unwrap();
    let mut applied = BTreeSet::new();
    for i in 0..2 {
        let (tally, _) = store
            .load(&machine(i), &Codec::<Tally>::new(1))
            .unwrap()
            .unwrap_or((Tally::Open { total: 0 }, 0));
        let total = tally.total();
        (0..COMMANDS)
            .map(|b| 1u64 << b)
            .filter(|bit| total & bit != 0)
            .for_each(|bit| {
                applied.insert(bit);
            });
    }
    assert!(
        run.acked.is_subset(&applied),
        "{label}: acknowledged {:?} but stored {:?}",
        run.acked,
        applied
    );
    assert!(
        applied.is_disjoint(&run.not_stored),
        "{label}: `not stored` commands {:?} were stored: {:?}",
        run.not_stored,
        applied
    );
    let possible: BTreeSet<u64> = run.acked.union(&run.unknown).copied().collect();
    assert!(
        applied.is_subset(&possible),
        "{label}: stored {applied:?}, possible {possible:?}"
    );
    assert_eq!(
        run.effects,
        run.acked.iter().copied().collect::<Vec<_>>(),
        "{label}: effects must run exactly for the acknowledged commands"
    );
    run
}

#[test]
fn a_failing_file_store_never_loses_an_acknowledged_command_nor_runs_an_unacknowledged_effect() {
    let counting = FaultyIo::counting();
    let clean = scenario(counting.clone(), "no fault");
    assert_eq!(clean.acked.len(), COMMANDS as usize);
    let mut points = 0;
    let (mut refused, mut unknown, mut reopened) = (0, 0, 0);
    for step in Step::ALL {
        for nth in 0..counting.count(step) {
            for fault in [Fault::FailOnce, Fault::FailForever] {
                if fault == Fault::FailForever && step != Step::Sync {
                    // A store that fails every write forever without stopping cannot be
                    // recovered from by the kernel: only a failed fsync stops it (and then
                    // the kernel reopens it).
                    continue;
                }
                let io = FaultyIo::new(step, nth, fault);
                let run = scenario(io.clone(), &format!("{fault:?} at {step:?} #{nth}"));
                assert!(io.injected());
                points += 1;
                refused += run.not_stored.len();
                unknown += run.unknown.len();
                reopened += usize::from(run.reopens > 0);
            }
        }
    }
    println!(
        "kernel faults: {points} fault points; {refused} commands answered `not stored`, \
         {unknown} `outcome unknown`, {reopened} runs reopened the store"
    );
    assert!(
        points >= COMMANDS as usize,
        "the scenario did too little I/O: {points}"
    );
    assert!(refused > 0 && unknown > 0 && reopened > 0);
}
