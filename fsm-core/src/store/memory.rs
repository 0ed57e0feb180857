//! The in-memory store: the contract without durability, for tests and examples.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{
    check_batch, check_put, Capabilities, MachineId, Put, Snapshot, SnapshotStore, StoreError,
};

/// A [`SnapshotStore`] in memory: atomic, versioned and verified like every store, not durable
/// (it is gone with the process).
#[derive(Debug, Default)]
pub struct MemoryStore {
    snapshots: Mutex<HashMap<MachineId, Snapshot>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<MachineId, Snapshot>> {
        // Every critical section below leaves the map consistent, so a panic elsewhere while
        // holding the lock cannot have left it half-written.
        self.snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl SnapshotStore for MemoryStore {
    fn put(
        &self,
        id: &MachineId,
        expected: Option<u64>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        let mut map = self.lock();
        check_put(id, expected, snapshot, map.get(id).map(Snapshot::seq))?;
        map.insert(id.clone(), snapshot.clone());
        Ok(())
    }

    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        check_batch(batch)?;
        let mut map = self.lock();
        for put in batch {
            put.check(map.get(put.id).map(Snapshot::seq))?;
        }
        for put in batch {
            map.insert(put.id.clone(), put.snapshot.clone());
        }
        Ok(())
    }

    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound { id: id.clone() })
    }

    fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError> {
        Ok(self.lock().get(id).map(Snapshot::seq))
    }

    fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
        Ok(self.lock().keys().cloned().collect())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new("memory", false)
    }
}
