//! The in-memory store: the contract without durability, for tests and examples.

use crate::sync::Recover;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::{
    check_batch, check_put, Capabilities, ListQuery, MachineId, Page, Put, Smallest, Snapshot,
    SnapshotStore, StateCounts, StoreError,
};

/// Parts of the id space with a lock each, so that writers of different machines (the
/// kernel's shards) rarely wait for each other.
const PARTITIONS: usize = 64;

/// A [`SnapshotStore`] in memory: atomic, versioned and verified like every store, not durable
/// (it is gone with the process).
///
/// The id space is cut into partitions ([`MachineId::partition`]), each with its own map and
/// lock; a batch locks the partitions it touches, in ascending order, so that its
/// compare-and-set holds for the whole batch and two batches cannot deadlock.
#[derive(Debug)]
pub struct MemoryStore {
    partitions: Box<[Partition]>,
}

/// One partition, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Partition {
    snapshots: Mutex<HashMap<MachineId, Snapshot>>,
}

type Map = HashMap<MachineId, Snapshot>;

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            partitions: (0..PARTITIONS).map(|_| Partition::default()).collect(),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self, partition: usize) -> MutexGuard<'_, Map> {
        // Every critical section below leaves its map consistent, so a panic elsewhere while
        // holding the lock cannot have left it half-written.
        self.partitions[partition].snapshots.lock().recover()
    }

    fn of(&self, id: &MachineId) -> MutexGuard<'_, Map> {
        self.lock(id.partition(PARTITIONS))
    }
}

impl SnapshotStore for MemoryStore {
    fn put(
        &self,
        id: &MachineId,
        expected: Option<u64>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        let mut map = self.of(id);
        check_put(id, expected, snapshot, map.get(id).map(Snapshot::seq))?;
        map.insert(id.clone(), snapshot.clone());
        Ok(())
    }

    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        check_batch(batch)?;
        let mut parts: Vec<usize> = batch.iter().map(|p| p.id.partition(PARTITIONS)).collect();
        let placed = parts.clone();
        parts.sort_unstable();
        parts.dedup();
        // Ascending order: two batches that share partitions cannot each hold what the other
        // waits for.
        let mut guards: Vec<MutexGuard<'_, Map>> = parts.iter().map(|&p| self.lock(p)).collect();
        let slot = |p: usize| parts.binary_search(&p).expect("locked above");
        for (put, &p) in batch.iter().zip(&placed) {
            put.check(guards[slot(p)].get(put.id).map(Snapshot::seq))?;
        }
        for (put, &p) in batch.iter().zip(&placed) {
            guards[slot(p)].insert(put.id.clone(), put.snapshot.clone());
        }
        Ok(())
    }

    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
        self.of(id)
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound { id: id.clone() })
    }

    fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError> {
        Ok(self.of(id).get(id).map(Snapshot::seq))
    }

    fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
        Ok((0..self.partitions.len())
            .flat_map(|p| self.lock(p).keys().cloned().collect::<Vec<_>>())
            .collect())
    }

    fn list(&self, query: &ListQuery<'_>) -> Result<Page, StoreError> {
        let mut page = Smallest::new(query.page_size());
        for p in 0..self.partitions.len() {
            for (id, snapshot) in self.lock(p).iter() {
                if query.is_after(id) && query.state.matches(snapshot.state()) {
                    page.offer(id);
                }
            }
        }
        Ok(page.into_page())
    }

    fn count_states(&self) -> Result<StateCounts, StoreError> {
        let mut counts = StateCounts::default();
        for p in 0..self.partitions.len() {
            for snapshot in self.lock(p).values() {
                counts.add(snapshot.state());
            }
        }
        Ok(counts)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new("memory", false)
    }
}
