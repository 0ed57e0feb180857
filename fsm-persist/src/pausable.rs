//! A store whose writes can be frozen in the middle, as a process is paused (SIGSTOP, a long
//! garbage-collection pause, a VM migration) while it commits: for tests and demonstrations
//! of what a paused owner's late write meets when it wakes.

use crate::sync::Recover;
use std::sync::{Condvar, Mutex, MutexGuard};

use fsm_core::store::{
    Capabilities, ListQuery, MachineId, Page, Put, Snapshot, SnapshotStore, StateCounts, StoreError,
};

struct Gate {
    paused: bool,
    /// Writes waiting at the gate now.
    waiting: usize,
}

/// Wraps a store; while [paused](Pausable::pause), every `put` and `put_many` waits at the gate
/// (it has been decided and is about to be written) until [`Pausable::resume`]. Reads and
/// [`owner_epoch`](SnapshotStore::owner_epoch) pass through.
///
/// ```
/// use std::sync::Arc;
/// use fsm_core::store::{Format, MachineId, MemoryStore, Snapshot, SnapshotStore};
/// use fsm_persist::fault::Pausable;
///
/// let store = Arc::new(Pausable::new(MemoryStore::new()));
/// store.pause();
/// let writer = {
///     let store = store.clone();
///     std::thread::spawn(move || {
///         let id = MachineId::new("m").unwrap();
///         store.put(&id, None, &Snapshot::new("M", 1, 1, Format::Postcard, b"").unwrap())
///     })
/// };
/// store.wait_for_writer();
/// assert!(store.inner().ids().unwrap().is_empty(), "held at the gate");
/// store.resume();
/// writer.join().unwrap().unwrap();
/// ```
pub struct Pausable<S> {
    inner: S,
    gate: Mutex<Gate>,
    changed: Condvar,
}

impl<S: SnapshotStore> Pausable<S> {
    /// `inner`, running.
    pub fn new(inner: S) -> Self {
        Pausable {
            inner,
            gate: Mutex::new(Gate {
                paused: false,
                waiting: 0,
            }),
            changed: Condvar::new(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn lock(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().recover()
    }

    /// Holds every write from now on at the gate.
    pub fn pause(&self) {
        self.lock().paused = true;
    }

    /// Lets the held writes (and later ones) through.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    /// Blocks until at least one write waits at the gate.
    pub fn wait_for_writer(&self) {
        let mut gate = self.lock();
        while gate.waiting == 0 {
            gate = self.changed.wait(gate).recover();
        }
    }

    fn pass(&self) {
        let mut gate = self.lock();
        if !gate.paused {
            return;
        }
        gate.waiting += 1;
        self.changed.notify_all();
        while gate.paused {
            gate = self.changed.wait(gate).recover();
        }
        gate.waiting -= 1;
    }
}

impl<S: SnapshotStore> SnapshotStore for Pausable<S> {
    fn put(&self, id: &MachineId, expected: Option<u64>, s: &Snapshot) -> Result<(), StoreError> {
        self.pass();
        self.inner.put(id, expected, s)
    }
    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        self.pass();
        self.inner.put_many(batch)
    }
    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
        self.inner.get(id)
    }
    fn get_many(&self, ids: &[&MachineId]) -> Vec<Result<Snapshot, StoreError>> {
        self.inner.get_many(ids)
    }
    fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError> {
        self.inner.sequence(id)
    }
    fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
        self.inner.ids()
    }
    fn list(&self, query: &ListQuery<'_>) -> Result<Page, StoreError> {
        self.inner.list(query)
    }
    fn count_states(&self) -> Result<StateCounts, StoreError> {
        self.inner.count_states()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn owner_epoch(&self, id: &MachineId) -> Result<u64, StoreError> {
        self.inner.owner_epoch(id)
    }
}
