//! The kernel's store, and how it is reopened when it stops (a file store poisoned by a
//! failed fsync): one reopen, whichever shard asks first.

use crate::sync::Recover;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::store::{SnapshotStore, StoreError};

pub(super) type Opener = Box<dyn Fn() -> Result<Arc<dyn SnapshotStore>, StoreError> + Send + Sync>;

/// The store, and how to reopen it when it stops.
///
/// Shards keep their own handle ([`StoreCell::refresh`]) and only compare `generation`, an
/// atomic that changes once per reopen, so a batch takes no lock shared with other shards.
pub(super) struct StoreCell {
    pub(super) current: RwLock<(u64, Arc<dyn SnapshotStore>)>,
    /// The generation in `current`, readable without its lock.
    pub(super) generation: AtomicU64,
    pub(super) reopen: Option<Opener>,
    pub(super) reopening: Mutex<()>,
    pub(super) reopens: AtomicU64,
}

impl StoreCell {
    pub(super) fn current(&self) -> (u64, Arc<dyn SnapshotStore>) {
        let guard = self.current.read().recover();
        (guard.0, guard.1.clone())
    }

    /// Brings a shard's own handle up to date if the store was reopened since it was taken.
    pub(super) fn refresh(&self, mine: &mut (u64, Arc<dyn SnapshotStore>)) {
        if self.generation.load(Ordering::Acquire) != mine.0 {
            *mine = self.current();
        }
    }

    /// The store of `generation` stopped (it answers `Poisoned`): reopens it, once, whichever
    /// shard asks first. Returns whether a newer store is in place.
    pub(super) fn reopen(&self, generation: u64) -> bool {
        let _one_at_a_time = self.reopening.lock().recover();
        if self.current().0 != generation {
            return true;
        }
        let Some(reopen) = &self.reopen else {
            return false;
        };
        match reopen() {
            Ok(store) => {
                let mut guard = self.current.write().recover();
                *guard = (generation + 1, store);
                self.generation.store(generation + 1, Ordering::Release);
                self.reopens.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "tracing")]
                tracing::warn!(generation = generation + 1, "fsm.store_reopened");
                true
            }
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::error!(error = %_e, "fsm.store_reopen_failed");
                false
            }
        }
    }
}
