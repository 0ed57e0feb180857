//! What more than one test file uses: a store whose commits can be held or made to fail.
#![allow(dead_code)]

use std::sync::{Condvar, Mutex};

use fsm_core::store::{
    Capabilities, MachineId, MemoryStore, Put, Snapshot, SnapshotStore, StoreError,
};

/// A real `MemoryStore` behind a gate and a fault switch: `put_many` can be held (to queue
/// commands behind a commit in progress) or made to fail, and every batch size is recorded.
#[derive(Default)]
pub(crate) struct Gated {
    pub(crate) inner: MemoryStore,
    pub(crate) held: Mutex<bool>,
    pub(crate) opened: Condvar,
    pub(crate) entered: Mutex<usize>,
    pub(crate) entered_cv: Condvar,
    pub(crate) batches: Mutex<Vec<usize>>,
    pub(crate) fail: Mutex<Option<fn() -> StoreError>>,
}

impl Gated {
    pub(crate) fn hold(&self) {
        *self.held.lock().unwrap() = true;
    }
    pub(crate) fn open(&self) {
        *self.held.lock().unwrap() = false;
        self.opened.notify_all();
    }
    /// Waits until `n` calls of `put_many` have started.
    pub(crate) fn wait_entered(&self, n: usize) {
        let mut e = self.entered.lock().unwrap();
        while *e < n {
            e = self.entered_cv.wait(e).unwrap();
        }
    }
    pub(crate) fn fail_with(&self, f: Option<fn() -> StoreError>) {
        *self.fail.lock().unwrap() = f;
    }
}

impl SnapshotStore for Gated {
    fn put(&self, id: &MachineId, expected: Option<u64>, s: &Snapshot) -> Result<(), StoreError> {
        self.put_many(&[Put::new(id, expected, s)])
    }
    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        *self.entered.lock().unwrap() += 1;
        self.entered_cv.notify_all();
        let mut held = self.held.lock().unwrap();
        while *held {
            held = self.opened.wait(held).unwrap();
        }
        drop(held);
        self.batches.lock().unwrap().push(batch.len());
        if let Some(f) = *self.fail.lock().unwrap() {
            return Err(f());
        }
        self.inner.put_many(batch)
    }
    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
        self.inner.get(id)
    }
    fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError> {
        self.inner.sequence(id)
    }
    fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
        self.inner.ids()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
