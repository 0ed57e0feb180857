//! Ownership of machines across nodes: partitions of the id space, leases, epochs.
//!
//! The id space is cut into a fixed number of partitions (a machine's partition is a stable
//! hash of its id, [`partition_of`]). A node owns a partition by holding the newest *epoch*
//! of its owner row: acquiring raises the epoch, so every acquisition has an epoch no earlier
//! owner had. Every write carries its partition's epoch and the database refuses one whose
//! epoch is not the owner row's (the fencing token), so safety never depends on clocks.
//! Leases decide only *when* another node may take a partition over: an owner renews its
//! lease by heartbeat; a partition whose lease ran out (in the database's clock) or was
//! released can be acquired by anyone.
//!
//! Each node also keeps its own view: the epoch it holds per partition and until when its
//! lease surely lasts (measured from before the renewal was sent, on its monotonic clock, so
//! it runs out no later than the database's). Past that moment the node stops applying
//! commands of the partition by itself, even before another node takes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fsm_core::store::{MachineId, StoreError};

use super::error::OpenError;

/// The partition machine `id` belongs to among `partitions`: FNV-1a (64-bit) of the id's
/// bytes, modulo `partitions`. Stable across versions, builds and platforms, so every node
/// (and any tool routing commands) agrees.
pub fn partition_of(id: &MachineId, partitions: u32) -> u32 {
    let hash = id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % u64::from(partitions.max(1))) as u32
}

/// Which partitions a node takes by itself when they are free (never owned, released, or
/// with a lease that ran out).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// Every free partition: a node that takes over whatever another node leaves (a standby,
    /// or every node of a small cluster, first come first served).
    Free,
    /// Only these partitions (a static assignment; they are taken over when free).
    Only(Vec<u32>),
    /// None: the node owns only what it acquires explicitly
    /// ([`PostgresStore::acquire`](super::PostgresStore::acquire)).
    Nothing,
}

/// The longest node name stored in the owner table.
pub const MAX_NODE_NAME: usize = 200;

/// Ownership settings of a fenced [`PostgresStore`](super::PostgresStore).
#[derive(Clone, Debug)]
pub struct Ownership {
    pub(crate) node: String,
    pub(crate) partitions: u32,
    pub(crate) lease: Duration,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) claim: Claim,
}

impl Ownership {
    /// Ownership for the node named `node` (a name for people and the owner table; safety
    /// comes from epochs, not names): 64 partitions, a 10 s lease renewed every 3 s by a
    /// heartbeat thread, claiming every free partition.
    pub fn new(node: impl Into<String>) -> Ownership {
        Ownership {
            node: node.into(),
            partitions: 64,
            lease: Duration::from_secs(10),
            heartbeat: Some(Duration::from_secs(3)),
            claim: Claim::Free,
        }
    }

    /// The number of partitions (default 64). Fixed when the table is created: every node
    /// must use the same number, and opening with another is refused.
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = n;
        self
    }

    /// How long a lease lasts without renewal (default 10 s): the longest time a vanished
    /// owner's partitions stay unserved.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often the heartbeat thread renews the leases and claims free partitions (default
    /// 3 s; must be under half the lease). `None`: no thread, the caller drives it with
    /// [`PostgresStore::heartbeat`](super::PostgresStore::heartbeat).
    pub fn heartbeat(mut self, every: Option<Duration>) -> Self {
        self.heartbeat = every;
        self
    }

    /// Which free partitions to take by itself (default [`Claim::Free`]).
    pub fn claim(mut self, claim: Claim) -> Self {
        self.claim = claim;
        self
    }

    pub(crate) fn check(&self) -> Result<(), OpenError> {
        let bad = |m: String| Err(OpenError::InvalidOwnership(m));
        if self.node.is_empty() || self.node.len() > MAX_NODE_NAME {
            return bad(format!(
                "the node name must be 1 to {MAX_NODE_NAME} bytes, not {}",
                self.node.len()
            ));
        }
        if self.partitions == 0 || self.partitions > 1 << 20 {
            return bad(format!("{} partitions; use 1 to 1048576", self.partitions));
        }
        if self.lease < Duration::from_millis(10) || self.lease > Duration::from_secs(24 * 3600) {
            return bad(format!("a lease of {:?}; use 10 ms to 24 h", self.lease));
        }
        if let Some(every) = self.heartbeat {
            if every.is_zero() || every * 2 > self.lease {
                return bad(format!(
                    "a heartbeat every {every:?} cannot keep a lease of {:?}; beat at most every half lease",
                    self.lease
                ));
            }
        }
        if let Claim::Only(parts) = &self.claim {
            if let Some(p) = parts.iter().find(|&&p| p >= self.partitions) {
                return bad(format!(
                    "claims partition {p}, but there are only {} (0 to {})",
                    self.partitions,
                    self.partitions - 1
                ));
            }
        }
        Ok(())
    }

    /// What the node tries to take now, given what it holds.
    pub(crate) fn wanted(&self, view: &View) -> Vec<i32> {
        let free = |p: &u32| view.held(*p).is_none();
        match &self.claim {
            Claim::Free => (0..self.partitions)
                .filter(free)
                .map(|p| p as i32)
                .collect(),
            Claim::Only(parts) => parts
                .iter()
                .filter(|p| free(p))
                .map(|&p| p as i32)
                .collect(),
            Claim::Nothing => Vec::new(),
        }
    }
}

/// One partition as this node sees it.
struct Slot {
    /// The epoch held (0: not held).
    epoch: AtomicU64,
    /// Until when the lease surely lasts, in nanoseconds since `View::base`.
    until: AtomicU64,
    /// The newest epoch this node saw in the owner row (for error messages).
    seen: AtomicU64,
}

/// This node's view of what it owns, read lock-free on every command.
pub(crate) struct View {
    base: Instant,
    slots: Box<[Slot]>,
}

impl View {
    pub(crate) fn new(partitions: u32) -> View {
        View {
            base: Instant::now(),
            slots: (0..partitions)
                .map(|_| Slot {
                    epoch: AtomicU64::new(0),
                    until: AtomicU64::new(0),
                    seen: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    pub(crate) fn partitions(&self) -> u32 {
        self.slots.len() as u32
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// The epoch held for partition `p`, whether or not its lease still runs.
    pub(crate) fn held(&self, p: u32) -> Option<u64> {
        let e = self.slots[p as usize].epoch.load(Ordering::Acquire);
        (e != 0).then_some(e)
    }

    /// Every partition held, with its epoch.
    pub(crate) fn all_held(&self) -> Vec<(u32, u64)> {
        (0..self.partitions())
            .filter_map(|p| self.held(p).map(|e| (p, e)))
            .collect()
    }

    /// Whether partition `p`'s lease surely still runs.
    pub(crate) fn lease_runs(&self, p: u32) -> bool {
        self.nanos(Instant::now()) < self.slots[p as usize].until.load(Ordering::Acquire)
    }

    /// The epoch under which machine `id` may be written now, or why not.
    pub(crate) fn writable(&self, id: &MachineId) -> Result<u64, StoreError> {
        let p = partition_of(id, self.partitions());
        match self.held(p) {
            Some(e) if self.lease_runs(p) => Ok(e),
            held => Err(self.fenced(id, held)),
        }
    }

    pub(crate) fn fenced(&self, id: &MachineId, held: Option<u64>) -> StoreError {
        let p = partition_of(id, self.partitions());
        let seen = self.slots[p as usize].seen.load(Ordering::Acquire);
        StoreError::Fenced {
            id: id.clone(),
            held,
            current: (seen != 0).then_some(seen),
        }
    }

    /// Partition `p` was acquired under `epoch`; the lease was asked for at `asked`.
    pub(crate) fn acquired(&self, p: u32, epoch: u64, asked: Instant, lease: Duration) {
        let slot = &self.slots[p as usize];
        slot.until
            .store(self.nanos(asked + lease), Ordering::Release);
        slot.seen.fetch_max(epoch, Ordering::AcqRel);
        slot.epoch.store(epoch, Ordering::Release);
    }

    /// Partition `p`'s lease (held under `epoch`) was renewed by a request sent at `asked`.
    pub(crate) fn renewed(&self, p: u32, epoch: u64, asked: Instant, lease: Duration) {
        let slot = &self.slots[p as usize];
        if slot.epoch.load(Ordering::Acquire) == epoch {
            slot.until
                .store(self.nanos(asked + lease), Ordering::Release);
        }
    }

    /// Partition `p` is no longer held under `epoch` (lost, released, or fenced by the
    /// database, which holds `current` if known).
    pub(crate) fn lost(&self, p: u32, epoch: u64, current: Option<u64>) {
        let slot = &self.slots[p as usize];
        if let Some(c) = current {
            slot.seen.fetch_max(c, Ordering::AcqRel);
        }
        let _ = slot
            .epoch
            .compare_exchange(epoch, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_a_stable_hash_of_the_id() {
        // Pinned: changing these would move machines between owners across an upgrade.
        // FNV-1a 64 of "a" is the published test vector 0xaf63dc4c8601ec8c.
        let id = |s: &str| MachineId::new(s).unwrap();
        assert_eq!(
            partition_of(&id("a"), 1000),
            (0xaf63_dc4c_8601_ec8c_u64 % 1000) as u32
        );
        assert_eq!(partition_of(&id("a"), 1000), 996);
        assert_eq!(partition_of(&id("order-1"), 64), 45);
        assert_eq!(partition_of(&id("order-2"), 64), 20);
        assert_eq!(partition_of(&id("a"), 1), 0);
        let spread: std::collections::HashSet<u32> = (0..1000)
            .map(|i| partition_of(&id(&format!("m-{i}")), 16))
            .collect();
        assert_eq!(
            spread.len(),
            16,
            "1000 ids reach every one of 16 partitions"
        );
    }

    #[test]
    fn a_lease_stops_allowing_writes_when_it_runs_out_locally() {
        let view = View::new(4);
        let id = MachineId::new("m").unwrap();
        let p = partition_of(&id, 4);
        assert!(matches!(
            view.writable(&id),
            Err(StoreError::Fenced { held: None, .. })
        ));
        view.acquired(p, 7, Instant::now(), Duration::from_secs(60));
        assert_eq!(view.writable(&id).unwrap(), 7);
        // A lease asked for long ago has run out: held, but not writable.
        view.acquired(
            p,
            8,
            Instant::now() - Duration::from_secs(61),
            Duration::from_secs(60),
        );
        assert!(matches!(
            view.writable(&id),
            Err(StoreError::Fenced { held: Some(8), .. })
        ));
        view.renewed(p, 8, Instant::now(), Duration::from_secs(60));
        assert_eq!(view.writable(&id).unwrap(), 8);
        // A renewal for an epoch no longer held changes nothing; losing it stops writes.
        view.lost(p, 8, Some(9));
        view.renewed(p, 8, Instant::now(), Duration::from_secs(60));
        assert!(matches!(
            view.writable(&id),
            Err(StoreError::Fenced {
                held: None,
                current: Some(9),
                ..
            })
        ));
    }

    #[test]
    fn unusable_ownership_settings_are_refused() {
        let bad = [
            Ownership::new(""),
            Ownership::new("n").partitions(0),
            Ownership::new("n").lease(Duration::from_millis(1)),
            Ownership::new("n")
                .lease(Duration::from_secs(4))
                .heartbeat(Some(Duration::from_secs(3))),
            Ownership::new("n")
                .partitions(8)
                .claim(Claim::Only(vec![3, 8])),
        ];
        for o in bad {
            assert!(
                matches!(o.check(), Err(OpenError::InvalidOwnership(_))),
                "{o:?}"
            );
        }
        Ownership::new("n")
            .lease(Duration::from_millis(300))
            .heartbeat(None)
            .check()
            .unwrap();
    }
}
