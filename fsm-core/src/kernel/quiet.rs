//! The count of work in flight (queued commands, effects, timer firings), so that a draining
//! shutdown and `KernelHandle::wait_idle` know when everything accepted has been decided.
//!
//! One count per shard: every command, effect and firing is counted on the shard of the
//! machine it belongs to (its submitter, worker and timer all use that shard's count), so
//! nothing every command writes is shared between shards. The kernel is idle when every
//! shard is; work never moves from one shard's count to another's.

use crate::sync::Recover;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Condvar, Mutex};

/// One shard's count, on a cache line of its own so that shards do not slow each other.
#[repr(align(128))]
struct Count {
    busy: AtomicI64,
    /// Taken only to wait for, or to announce, idleness (never per command).
    gate: Mutex<()>,
    idle: Condvar,
}

/// Counts the work in flight per shard.
pub(super) struct Quiet {
    shards: Box<[Count]>,
}

impl Quiet {
    pub(super) fn new(shards: usize) -> Self {
        Quiet {
            shards: (0..shards)
                .map(|_| Count {
                    busy: AtomicI64::new(0),
                    gate: Mutex::new(()),
                    idle: Condvar::new(),
                })
                .collect(),
        }
    }

    pub(super) fn more(&self, shard: usize, n: usize) {
        if n > 0 {
            self.shards[shard]
                .busy
                .fetch_add(n as i64, Ordering::AcqRel);
        }
    }

    pub(super) fn done(&self, shard: usize, n: usize) {
        if n == 0 {
            return;
        }
        let count = &self.shards[shard];
        if count.busy.fetch_sub(n as i64, Ordering::AcqRel) - n as i64 <= 0 {
            // Through the gate, so a waiter between its check and its wait cannot miss this.
            let _gate = count.gate.lock().recover();
            count.idle.notify_all();
        }
    }

    /// Blocks until every shard has nothing in flight at once.
    pub(super) fn wait_idle(&self) {
        loop {
            for count in self.shards.iter() {
                let mut gate = count.gate.lock().recover();
                while count.busy.load(Ordering::Acquire) > 0 {
                    gate = count.idle.wait(gate).recover();
                }
            }
            // A shard passed earlier may have taken new work meanwhile: done only when one
            // look finds them all idle.
            if self.is_idle() {
                return;
            }
        }
    }

    /// Whether no shard has anything in flight now.
    pub(super) fn is_idle(&self) -> bool {
        self.shards
            .iter()
            .all(|c| c.busy.load(Ordering::Acquire) <= 0)
    }
}

#[cfg(test)]
mod tests {
    use super::Quiet;
    use std::sync::Arc;

    #[test]
    fn idle_only_when_every_shard_is() {
        let quiet = Arc::new(Quiet::new(3));
        quiet.more(0, 2);
        quiet.more(2, 1);
        let waiter = {
            let quiet = quiet.clone();
            std::thread::spawn(move || quiet.wait_idle())
        };
        quiet.done(0, 2);
        assert!(!quiet.is_idle(), "shard 2 still has work");
        quiet.done(2, 1);
        assert!(quiet.is_idle());
        // The waiter returns once the last shard is done (it would hang the test otherwise).
        waiter.join().unwrap();
    }
}
