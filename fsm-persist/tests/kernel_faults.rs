//! The kernel over a file store that fails: at every I/O operation of a scenario, one fault
//! (a failed create, write, fdatasync, ...). Whatever the fault, a command the kernel
//! acknowledged is stored, a command it answered with an error changed nothing (or, for an
//! unknown outcome, may have), no effect runs for a command that was not stored, every effect
//! of a stored command runs at least once (the writes that owe effects and those that settle
//! them go through the same faults), and the kernel recovers (reopening the store when it
//! stopped) so later commands commit.
#![allow(missing_docs)]

mod kernel_machine;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fsm_core::kernel::{CommandError, EffectCtx, EffectError, EffectWorker, Kernel};
use fsm_core::store::{Codec, MachineId, SnapshotStore, SnapshotStoreExt};
use fsm_persist::fault::{Fault, FaultyIo, PowerLossIo, Step};
use fsm_persist::FileStore;
use kernel_machine::{Added, Tally, TallyCmd};

const COMMANDS: u32 = 12;

struct Recorder(Arc<Mutex<Vec<u64>>>);

impl EffectWorker<Tally> for Recorder {
    fn run(&mut self, _: &EffectCtx, effect: &Added) -> Result<Option<TallyCmd>, EffectError> {
        self.0.lock().unwrap().push(effect.0);
        Ok(None)
    }
}

/// The effects a kernel started on the store in `path` runs for what the store still owes
/// (recovery re-drives them), checking that nothing is owed once they ran.
fn owed_after_restart(path: &std::path::Path, label: &str) -> BTreeSet<u64> {
    let effects = Arc::new(Mutex::new(Vec::new()));
    let recorder = effects.clone();
    let store = FileStore::open(path).unwrap_or_else(|e| panic!("{label}: reopen: {e}"));
    let kernel = Kernel::builder(store, |_| Tally::Open { total: 0 })
        .shards(1)
        .effects(1, move |_| Recorder(recorder.clone()))
        .start()
        .unwrap_or_else(|e| panic!("{label}: restart: {e}"));
    kernel.wait_idle();
    for i in 0..2 {
        let owed = kernel.owed(&machine(i)).unwrap();
        assert!(
            owed.is_empty(),
            "{label}: still owed after a restart: {owed:?}"
        );
    }
    drop(kernel);
    let ran = effects.lock().unwrap().iter().copied().collect();
    ran
}

/// Effects of the amounts in `applied` (stored) all ran (`ran`, before or after a restart),
/// and none of a command that was not stored did.
fn check_effects(label: &str, applied: &BTreeSet<u64>, ran: &BTreeSet<u64>) {
    let ran: BTreeSet<u64> = ran.iter().copied().filter(|&a| a > 0).collect();
    assert!(
        applied.is_subset(&ran),
        "{label}: stored {applied:?} but effects ran only for {ran:?}"
    );
    assert!(
        ran.is_subset(applied),
        "{label}: effects ran for {ran:?}, of which some were never stored ({applied:?})"
    );
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

/// Opens the file store in `path`: the first time with its I/O through `io`, later (after the
/// store stopped) plainly, as after a restart.
fn faulty_then_plain(
    path: &std::path::Path,
    io: FaultyIo,
) -> impl Fn() -> Result<Arc<dyn SnapshotStore>, fsm_core::store::StoreError> + Send + Sync + 'static
{
    let path = path.to_owned();
    let opened = AtomicUsize::new(0);
    move || {
        let store = if opened.fetch_add(1, Ordering::SeqCst) == 0 {
            FileStore::builder(&path).io(io.clone()).open()?
        } else {
            FileStore::open(&path)?
        };
        Ok(Arc::new(store) as Arc<dyn SnapshotStore>)
    }
}

/// Adds 2^i to machine `i % 2` for each command i, one at a time, over a file store whose
/// first opening does its I/O through `io`; later openings (after the store stopped) are
/// plain, as after a restart. Then one probe command per machine, which must commit.
fn scenario(io: FaultyIo, label: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let opener = faulty_then_plain(&path, io);
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
        // The effect's answer is stored before the next command: the same operations in
        // the same order on every run, so each fault point is reached.
        kernel.wait_idle();
    }
    for i in 0..2 {
        // The fault may land on the probe itself; a retry must then commit.
        let probe = (0..2)
            .map(|_| {
                let outcome = kernel
                    .submit(&machine(i), TallyCmd::Add { amount: 0 })
                    .unwrap()
                    .wait();
                kernel.wait_idle();
                outcome
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
    let mut ran: BTreeSet<u64> = run.effects.iter().copied().collect();
    assert!(
        run.acked.is_subset(&ran),
        "{label}: acknowledged {:?} but effects ran for {ran:?} before the restart",
        run.acked
    );
    ran.extend(owed_after_restart(&path, label));
    check_effects(label, &applied, &ran);
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
                assert!(
                    io.injected(),
                    "{fault:?} at {step:?} #{nth} was never reached"
                );
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

/// A machine whose commands arm timers: `Arm` starts timer `t<amount>` firing `Fire`, which
/// records the amount. A commit that carries a timer change (an arming, or a firing that
/// disarms) goes through the same faulty store as any other.
#[allow(unreachable_pub)] // the derives need the enums as visible as their generated modules
mod ticker {
    use std::time::Duration;

    use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
    use serde::{Deserialize, Serialize};

    #[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[fsm(event = TickerCmd)]
    pub enum Ticker {
        #[fsm(initial, on(Arm => Counting), on(Fire => Counting))]
        Counting { fired: Vec<u64> },
    }

    #[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum TickerCmd {
        Arm { amount: u64 },
        Fire { amount: u64 },
    }

    impl Handler<ticker_cmd::Arm, ticker::Counting> for ticker::Counting {
        fn handle(
            s: ticker::CountingRef<'_>,
            e: ticker_cmd::Arm,
            fx: &mut Effects<()>,
        ) -> Result<ticker::Counting, Refusal> {
            let fire = TickerCmd::Fire { amount: e.amount };
            fx.start_timer(format!("t{}", e.amount), Duration::from_millis(1), fire);
            Ok(ticker::Counting {
                fired: s.fired.clone(),
            })
        }
    }

    impl Handler<ticker_cmd::Fire, ticker::Counting> for ticker::Counting {
        fn handle(
            s: ticker::CountingRef<'_>,
            e: ticker_cmd::Fire,
            _: &mut Effects<()>,
        ) -> Result<ticker::Counting, Refusal> {
            let mut fired = s.fired.clone();
            fired.push(e.amount);
            Ok(ticker::Counting { fired })
        }
    }
}

/// Arms a timer per command over a store whose first opening faults at `io`, fires what is
/// due, then lets a clean kernel over the same directory, later, fire the rest. Returns the
/// amounts acknowledged, answered unknown, and fired (as stored at the end).
fn timer_scenario(io: FaultyIo, label: &str) -> (BTreeSet<u64>, BTreeSet<u64>, Vec<u64>) {
    use fsm_core::queue::ManualClock;
    use std::time::Duration;
    use ticker::{Ticker, TickerCmd};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let opener = faulty_then_plain(&path, io);
    let initial = |_: &MachineId| Ticker::Counting { fired: Vec::new() };
    let clock = ManualClock::at_wall_ms(1_000_000);
    let kernel = Kernel::builder_reopening(opener, initial)
        .shards(1)
        .clock(clock.clock())
        .timer_events()
        .start()
        .unwrap_or_else(|e| panic!("{label}: start: {e}"));
    let m = MachineId::new("ticker").unwrap();
    let (mut acked, mut unknown) = (BTreeSet::new(), BTreeSet::new());
    for i in 0..6u32 {
        let amount = 1u64 << i;
        match kernel.submit(&m, TickerCmd::Arm { amount }).unwrap().wait() {
            Ok(_) => acked.insert(amount),
            Err(CommandError::NotStored { .. }) => false,
            Err(e) if e.is_outcome_unknown() => unknown.insert(amount),
            Err(e) => panic!("{label}: arm {i}: unexpected {e}"),
        };
        if i % 2 == 1 {
            // Firings in the middle: their commits meet the fault too.
            clock.advance(Duration::from_millis(2));
            kernel.fire_due_timers();
            kernel.wait_idle();
        }
    }
    drop(kernel);
    // Later, in a clean process: whatever is still armed fires now, once.
    let later = ManualClock::at_wall_ms(2_000_000);
    let kernel = fsm_persist::file_kernel(&path, initial)
        .shards(1)
        .clock(later.clock())
        .timer_events()
        .start()
        .unwrap();
    for _ in 0..3 {
        kernel.fire_due_timers();
        kernel.wait_idle();
    }
    let (Ticker::Counting { fired }, _) = kernel.state(&m).unwrap();
    drop(kernel);
    (acked, unknown, fired)
}

#[test]
fn a_commit_that_carries_a_timer_change_fails_safe_at_every_fault_point() {
    let counting = FaultyIo::counting();
    let (acked, _, fired) = timer_scenario(counting.clone(), "no fault");
    assert_eq!(acked.len(), 6);
    assert_eq!(fired.iter().copied().collect::<BTreeSet<_>>(), acked);
    let mut points = 0;
    for step in Step::ALL {
        for nth in 0..counting.count(step) {
            let io = FaultyIo::new(step, nth, Fault::FailOnce);
            let label = format!("FailOnce at {step:?} #{nth}");
            let (acked, unknown, fired) = timer_scenario(io.clone(), &label);
            assert!(io.injected(), "{label}");
            points += 1;
            let set: BTreeSet<u64> = fired.iter().copied().collect();
            assert_eq!(
                set.len(),
                fired.len(),
                "{label}: a timer fired twice: {fired:?}"
            );
            assert!(
                acked.is_subset(&set),
                "{label}: acknowledged armings {acked:?}, fired {fired:?}"
            );
            let possible: BTreeSet<u64> = acked.union(&unknown).copied().collect();
            assert!(
                set.is_subset(&possible),
                "{label}: fired {fired:?}, possible {possible:?}"
            );
        }
    }
    println!("kernel faults with timers: {points} fault points, every acknowledged timer fired exactly once");
    assert!(points >= 6, "the scenario did too little I/O: {points}");
}

/// The kernel over a file store whose disk loses power before operation `cut` of the scenario
/// (`None`: after it): commands as in [`scenario`], then, for `seeds` outcomes of the cut, the
/// disk a reboot finds is opened plainly and must hold every acknowledged command and none
/// answered `not stored` or `unavailable`; effects ran exactly for the acknowledged ones.
/// Returns the I/O (for its operation count) and the distinct outcomes.
fn power_scenario(cut: Option<usize>, seeds: u64, outcomes: &mut BTreeSet<u64>) -> PowerLossIo {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let mut io = PowerLossIo::new(&path).unwrap();
    if let Some(cut) = cut {
        io = io.cut_before(cut);
    }
    let label = io.cut_at().map_or_else(
        || format!("power cut at {cut:?}"),
        |(n, s)| format!("power cut before {s:?} #{n}"),
    );
    let opener = {
        let (path, io) = (path.clone(), io.clone());
        move || {
            let store = FileStore::builder(&path).io(io.clone()).open()?;
            Ok(Arc::new(store) as Arc<dyn SnapshotStore>)
        }
    };
    let effects = Arc::new(Mutex::new(Vec::new()));
    let recorder = effects.clone();
    let (mut acked, mut refused, mut unknown) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    match Kernel::builder_reopening(opener, |_| Tally::Open { total: 0 })
        .shards(1)
        .effects(1, move |_| Recorder(recorder.clone()))
        .start()
    {
        Ok(kernel) => {
            for i in 0..COMMANDS {
                let amount = 1u64 << i;
                let outcome = kernel
                    .submit(&machine(i), TallyCmd::Add { amount })
                    .unwrap()
                    .wait();
                match outcome {
                    Ok(_) => acked.insert(amount),
                    Err(CommandError::NotStored { .. } | CommandError::Unavailable { .. }) => {
                        refused.insert(amount)
                    }
                    Err(e) if e.is_outcome_unknown() => unknown.insert(amount),
                    Err(e) => panic!("{label}: command {i}: unexpected {e}"),
                };
                // The effect's answer is stored before the next command: the same operations
                // in the same order on every run.
                kernel.wait_idle();
            }
            drop(kernel);
        }
        // The power failed while the kernel opened its store: nothing was acknowledged.
        Err(_) => assert!(io.is_off(), "{label}: the kernel did not start"),
    }
    let ran: BTreeSet<u64> = effects.lock().unwrap().iter().copied().collect();
    assert!(
        acked.is_subset(&ran),
        "{label}: acknowledged {acked:?} but effects ran for {ran:?}"
    );
    let possible: BTreeSet<u64> = acked.union(&unknown).copied().collect();
    for seed in 0..seeds {
        let image = io.image(seed);
        outcomes.insert(image.outcome.fingerprint);
        let rebooted = tempfile::tempdir().unwrap();
        image.write_to(rebooted.path()).unwrap();
        let store = FileStore::open(rebooted.path())
            .unwrap_or_else(|e| panic!("{label}, seed {seed}: reopening failed: {e}"));
        let mut applied = BTreeSet::new();
        for i in 0..2 {
            let total = store
                .load(&machine(i), &Codec::<Tally>::new(1))
                .unwrap_or_else(|e| panic!("{label}, seed {seed}: {e}"))
                .map_or(0, |(t, _)| t.total());
            applied.extend(
                (0..COMMANDS)
                    .map(|b| 1u64 << b)
                    .filter(|bit| total & bit != 0),
            );
        }
        assert!(
            acked.is_subset(&applied),
            "{label}, seed {seed}: acknowledged {acked:?} but the rebooted disk holds {applied:?}"
        );
        assert!(
            applied.is_disjoint(&refused),
            "{label}, seed {seed}: refused commands {refused:?} were stored: {applied:?}"
        );
        assert!(
            applied.is_subset(&possible),
            "{label}, seed {seed}: stored {applied:?}, possible {possible:?}"
        );
        // What the rebooted disk owes runs once a kernel starts on it: with what ran before
        // the cut, every stored command's effect, and none of a command the disk lost.
        drop(store);
        let label = format!("{label}, seed {seed}");
        let mut all: BTreeSet<u64> = owed_after_restart(rebooted.path(), &label);
        all.extend(ran.iter().copied());
        check_effects(&label, &applied, &all);
    }
    io
}

#[test]
fn a_power_cut_at_every_operation_loses_no_acknowledged_command() {
    const SEEDS: u64 = 6;
    let mut outcomes = BTreeSet::new();
    let ops = power_scenario(None, SEEDS, &mut outcomes).ops();
    assert!(
        ops >= COMMANDS as usize,
        "the scenario did too little I/O: {ops}"
    );
    for cut in 0..ops {
        power_scenario(Some(cut), SEEDS, &mut outcomes);
    }
    println!(
        "kernel power cuts: {} cuts x {SEEDS} outcomes, {} distinct on-disk outcomes, every acknowledged command kept",
        ops + 1,
        outcomes.len()
    );
    assert!(
        outcomes.len() > ops,
        "the outcomes hardly varied: {}",
        outcomes.len()
    );
}
