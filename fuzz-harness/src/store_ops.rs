//! Arbitrary store operations against the file store, with one injected disk fault per
//! session, checked against an in-memory model of what may be stored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use arbitrary::Unstructured;
use fsm_core::store::{Format, MachineId, Put, Snapshot, SnapshotStore, StoreError};
use fsm_persist::fault::{Fault, FaultyIo, PowerLossIo, Step};
use fsm_persist::FileStore;

/// Machines the operations touch: few, so that operations meet on the same ones.
const MACHINES: u8 = 6;

/// Decodes operations (put, put-many, get, sequence, ids, checkpoint, reopen with a new fault
/// plan, reopen clean) and runs them on a `FileStore` in a temporary directory whose disk I/O
/// goes through `FaultyIo` (one planned fault per session: fail once, fail for ever, crash,
/// torn write, garbage write, at the n-th create/write/sync/rename/sync-dir/remove) or through
/// the power-loss model `PowerLossIo` (the power fails before the n-th operation, and the next
/// reopen finds one of the disk states a POSIX file system may leave, chosen by a seed the
/// input gives).
///
/// The model keeps, per machine, the set of sequences the store may hold: one after an
/// acknowledged write, more after a write whose outcome is unknown, collapsed again by what a
/// read shows. Must hold: an acknowledged write is read back (also after every reopen) until a
/// later write replaces it; a refused write changes nothing; a read returns only a sequence the
/// model allows, with exactly the bytes written for it; `Corrupt` never appears (torn and
/// garbage writes are unsynced data the store must discard on recovery); the compare-and-set
/// refuses exactly the stale writes; without an injected fault no operation fails; and a store
/// always reopens.
pub fn store_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let dir = scratch_dir();
    let mut model = Model::default();
    let (mut store, mut io) = open(dir.path(), Disk::Faulty(FaultyIo::counting()));
    while !u.is_empty() {
        let Ok(op) = u.choose_index(8) else { break };
        match op {
            0 => {
                let Ok(put) = model.draw_put(&mut u) else {
                    break;
                };
                let snapshot = snapshot(put.id, put.seq);
                let id = machine_id(put.id);
                let result = store.put(&id, put.expected, &snapshot);
                model.after_write(&[put], &result, io.injected());
            }
            1 => {
                let Ok(n) = u.int_in_range(1..=4) else { break };
                let mut puts: Vec<Draw> = Vec::new();
                for _ in 0..n {
                    let Ok(put) = model.draw_put(&mut u) else {
                        break;
                    };
                    if puts.iter().all(|p| p.id != put.id) {
                        puts.push(put);
                    }
                }
                let snapshots: Vec<(MachineId, Snapshot)> = puts
                    .iter()
                    .map(|p| (machine_id(p.id), snapshot(p.id, p.seq)))
                    .collect();
                let batch: Vec<Put<'_>> = puts
                    .iter()
                    .zip(&snapshots)
                    .map(|(p, (id, s))| Put::new(id, p.expected, s))
                    .collect();
                let result = store.put_many(&batch);
                model.after_write(&puts, &result, io.injected());
            }
            2 | 3 => {
                let Ok(id) = u.int_in_range(0..=MACHINES - 1) else {
                    break;
                };
                let read = if op == 2 {
                    store.get(&machine_id(id)).map(|s| {
                        assert_eq!(
                            s.as_bytes(),
                            snapshot(id, s.seq()).as_bytes(),
                            "machine {id} read back other bytes than were written for sequence {}",
                            s.seq()
                        );
                        Some(s.seq())
                    })
                } else {
                    store.sequence(&machine_id(id))
                };
                let read = match read {
                    Err(StoreError::NotFound { .. }) => Ok(None),
                    other => other,
                };
                model.after_read(id, read, io.injected());
            }
            4 => match store.ids() {
                Ok(ids) => model.after_ids(&ids),
                Err(e) => allowed(&e, io.injected(), "ids"),
            },
            5 => {
                if let Err(e) = store.checkpoint() {
                    allowed(&e, io.injected(), "checkpoint");
                }
            }
            6 => {
                let Ok(plan) = draw_fault(&mut u) else { break };
                drop(store);
                io.reboot(&mut u);
                (store, io) = open(dir.path(), plan.start(dir.path()));
            }
            _ => {
                drop(store);
                io.reboot(&mut u);
                (store, io) = open(dir.path(), Disk::Faulty(FaultyIo::counting()));
            }
        }
    }
    // Whatever happened, a clean reopen shows a state the model allows, for every machine.
    drop(store);
    io.reboot(&mut u);
    let (store, _) = open(dir.path(), Disk::Faulty(FaultyIo::counting()));
    for id in 0..MACHINES {
        let seq = match store.get(&machine_id(id)) {
            Ok(s) => Some(s.seq()),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => panic!("machine {id} unreadable after a clean reopen: {e}"),
        };
        model.after_read(id, Ok(seq), false);
    }
}

/// A temporary directory, on tmpfs where there is one: fsync there costs nothing, so the
/// fuzzer runs tens of times more inputs. The target checks the store's logic against the
/// model under injected faults; what a real disk keeps through a crash is the job of the
/// kill -9 tests, which run on the real file system.
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    dir.expect("a temporary directory")
}

static POWER_REBOOTS: AtomicUsize = AtomicUsize::new(0);

/// How many sessions of [`store_ops`] in this process ended in a power cut and a reboot (the
/// corpus test checks that its inputs reach the power-loss model).
pub fn store_ops_power_reboots() -> usize {
    POWER_REBOOTS.load(Ordering::Relaxed)
}

/// The disk of a session: real I/O with one planned fault, or the power-loss model.
enum Disk {
    Faulty(FaultyIo),
    /// The power fails before the planned operation; a session may also end with the power
    /// on, and then the reboot cuts it where the session stopped.
    Power(PowerLossIo),
}

impl Disk {
    /// Whether a failure is explained: the planned fault happened, or the power is off.
    fn injected(&self) -> bool {
        match self {
            Disk::Faulty(io) => io.injected(),
            Disk::Power(io) => io.is_off(),
        }
    }

    /// For the power-loss model, the end of the session: the power fails (if it has not) and
    /// the directory becomes one of the disk states the cut may leave, chosen by the input.
    fn reboot(&self, u: &mut Unstructured<'_>) {
        if let Disk::Power(io) = self {
            let seed = u.arbitrary::<u64>().unwrap_or(0);
            io.restart(seed).expect("writing the rebooted disk");
            POWER_REBOOTS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Opens the store; if the planned fault makes opening fail, reboots (for a power cut) and
/// opens it again without faults (recovery must succeed on a healthy disk). Returns the store
/// and the disk it runs on.
fn open(dir: &std::path::Path, io: Disk) -> (FileStore, Disk) {
    let opened = match &io {
        Disk::Faulty(faulty) => FileStore::builder(dir).io(faulty.clone()).open(),
        Disk::Power(power) => FileStore::builder(dir).io(power.clone()).open(),
    };
    match opened {
        Ok(store) => (store, io),
        Err(e) if io.injected() => {
            io.reboot(&mut Unstructured::new(&[]));
            let healthy = FaultyIo::counting();
            let store = FileStore::builder(dir)
                .io(healthy.clone())
                .open()
                .unwrap_or_else(|e2| {
                    panic!("reopen failed after {e}, then on a healthy disk: {e2}")
                });
            (store, Disk::Faulty(healthy))
        }
        Err(e) => panic!("open failed without an injected fault: {e}"),
    }
}

/// The next session's disk, drawn before the previous session ends.
enum Plan {
    Fault(Step, usize, Fault),
    PowerCut(usize),
}

impl Plan {
    /// The disk, from the directory as the previous session (and its reboot) left it.
    fn start(self, dir: &std::path::Path) -> Disk {
        match self {
            Plan::Fault(step, nth, fault) => Disk::Faulty(FaultyIo::new(step, nth, fault)),
            Plan::PowerCut(cut) => Disk::Power(
                PowerLossIo::new(dir)
                    .expect("the directory is readable")
                    .cut_before(cut),
            ),
        }
    }
}

fn draw_fault(u: &mut Unstructured<'_>) -> arbitrary::Result<Plan> {
    let nth = u.int_in_range(0..=5)?;
    // One plan in five is a power cut, at any of the first 48 operations.
    if u.ratio(1, 5)? {
        return Ok(Plan::PowerCut(nth * 8 + u.int_in_range(0..=7)?));
    }
    let step = Step::ALL[u.choose_index(Step::ALL.len())?];
    let fault = Fault::ALL[u.choose_index(Fault::ALL.len())?];
    Ok(Plan::Fault(step, nth, fault))
}

fn machine_id(id: u8) -> MachineId {
    MachineId::new(format!("m{id}")).expect("a valid id")
}

/// The inverse of [`machine_id`].
fn number_of(id: &MachineId) -> u8 {
    id.as_ref()[1..].parse().expect("an id this target made")
}

/// The snapshot written for machine `id` at `seq`: its bytes depend only on both, so a read
/// can be checked byte for byte. Sizes vary up to a few KiB to cross block boundaries.
fn snapshot(id: u8, seq: u64) -> Snapshot {
    let len = (usize::from(id) * 131 + seq as usize * 977) % 5000;
    let payload: Vec<u8> = (0..len)
        .map(|i| (i as u64 ^ seq ^ u64::from(id) << 3) as u8)
        .collect();
    Snapshot::new("Fuzz", 1, seq, Format::Postcard, &payload).expect("a valid envelope")
}

/// An error is acceptable only once a fault was injected, and never `Corrupt`.
fn allowed(e: &StoreError, fault: bool, op: &str) {
    assert!(
        !matches!(e, StoreError::Corrupt { .. }),
        "{op} reported corruption: {e}"
    );
    assert!(fault, "{op} failed without an injected fault: {e}");
}

struct Draw {
    id: u8,
    expected: Option<u64>,
    seq: u64,
}

/// Per machine, the sequences the store may hold (`None`: nothing); a machine not in the map
/// holds nothing for certain.
#[derive(Default)]
struct Model {
    may_hold: BTreeMap<u8, BTreeSet<Option<u64>>>,
}

impl Model {
    fn possible(&self, id: u8) -> BTreeSet<Option<u64>> {
        self.may_hold
            .get(&id)
            .cloned()
            .unwrap_or_else(|| BTreeSet::from([None]))
    }

    /// A write: usually over a sequence the store may hold, sometimes over a stale one.
    fn draw_put(&self, u: &mut Unstructured<'_>) -> arbitrary::Result<Draw> {
        let id = u.int_in_range(0..=MACHINES - 1)?;
        let possible: Vec<Option<u64>> = self.possible(id).into_iter().collect();
        let expected = if u.ratio(7, 8)? {
            possible[u.choose_index(possible.len())?]
        } else {
            u.arbitrary::<Option<u8>>()?.map(u64::from)
        };
        let seq = expected.unwrap_or(0) + u64::from(u.int_in_range(1u8..=3)?);
        Ok(Draw { id, expected, seq })
    }

    fn after_write(&mut self, puts: &[Draw], result: &Result<(), StoreError>, fault: bool) {
        match result {
            Ok(()) => {
                for p in puts {
                    assert!(
                        self.possible(p.id).contains(&p.expected),
                        "machine {} accepted a write over {:?}, but it can only hold {:?}",
                        p.id,
                        p.expected,
                        self.possible(p.id)
                    );
                    self.may_hold.insert(p.id, BTreeSet::from([Some(p.seq)]));
                }
            }
            Err(StoreError::Conflict { id, found, .. }) => {
                let id = number_of(id);
                let possible = self.possible(id);
                assert!(
                    possible.contains(found),
                    "machine {id}: conflict says the store holds {found:?}, the model allows {possible:?}"
                );
                let p = puts
                    .iter()
                    .find(|p| p.id == id)
                    .expect("the conflicting put");
                assert_ne!(
                    Some(&p.expected),
                    Some(found),
                    "a conflict on the expected sequence"
                );
                self.may_hold.insert(id, BTreeSet::from([*found]));
            }
            Err(e) if e.is_outcome_unknown() => {
                for p in puts {
                    self.may_hold
                        .entry(p.id)
                        .or_insert_with(|| BTreeSet::from([None]))
                        .insert(Some(p.seq));
                }
            }
            Err(e) => allowed(e, fault, "a write"),
        }
    }

    fn after_read(&mut self, id: u8, read: Result<Option<u64>, StoreError>, fault: bool) {
        match read {
            Ok(seq) => {
                let possible = self.possible(id);
                assert!(
                    possible.contains(&seq),
                    "machine {id} holds {seq:?}; acknowledged writes allow only {possible:?}"
                );
                self.may_hold.insert(id, BTreeSet::from([seq]));
            }
            Err(e) => allowed(&e, fault, "a read"),
        }
    }

    fn after_ids(&mut self, ids: &[MachineId]) {
        let listed: BTreeSet<u8> = ids.iter().map(number_of).collect();
        for id in 0..MACHINES {
            let possible = self.possible(id);
            if listed.contains(&id) {
                assert!(
                    possible.iter().any(Option::is_some),
                    "machine {id} listed, but nothing can be stored for it"
                );
                self.may_hold
                    .insert(id, possible.into_iter().filter(Option::is_some).collect());
            } else {
                assert!(
                    possible.contains(&None),
                    "machine {id} not listed, but it holds one of {possible:?}"
                );
                self.may_hold.insert(id, BTreeSet::from([None]));
            }
        }
    }
}
