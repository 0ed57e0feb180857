//! Layer 4: the error kernel's storage contract.
//!
//! The error kernel is the minimal state from which a system can always recover: for a
//! machine, its current state. [`SnapshotStore`] is the contract every place that keeps it
//! fulfils; [`MemoryStore`] is the in-memory one for tests, and the durable backends (file,
//! mirrored, SQLite, PostgreSQL) live in the `fsm-persist` crate.
//!
//! A machine travels as a [`Snapshot`]: an envelope (magic, format version, machine type and
//! schema version, sequence, payload length, CRC32C) around its state encoded by serde.
//! [`Codec`] turns a machine into a snapshot and back, runs migrations for older schema
//! versions and the machine's invariants after decoding.
//!
//! ```
//! use fsm_core::store::{Codec, MachineId, MemoryStore, SnapshotStore, SnapshotStoreExt};
//! # use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
//! # #[fsm(event = Cmd)]
//! # enum Lamp { #[fsm(initial, on(Flip => On))] Off, #[fsm(on(Flip => Off))] On }
//! # #[derive(Event, Debug, Clone)]
//! # enum Cmd { Flip }
//! # impl Handler<cmd::Flip, lamp::On> for lamp::Off {
//! #     fn handle(_: lamp::Off, _: cmd::Flip, _: &mut Effects<()>) -> Result<lamp::On, Refusal> { Ok(lamp::On) }
//! # }
//! # impl Handler<cmd::Flip, lamp::Off> for lamp::On {
//! #     fn handle(_: lamp::On, _: cmd::Flip, _: &mut Effects<()>) -> Result<lamp::Off, Refusal> { Ok(lamp::Off) }
//! # }
//!
//! let store = MemoryStore::new();
//! let codec = Codec::<Lamp>::new(1);
//! let id = MachineId::new("hall").unwrap();
//!
//! let mut lamp = Lamp::Off;
//! lamp.apply(Cmd::Flip).unwrap();
//! store.put(&id, None, &codec.encode(&lamp, 1).unwrap()).unwrap();
//!
//! let (back, seq) = store.load(&id, &codec).unwrap().unwrap();
//! assert_eq!((back, seq), (Lamp::On, 1));
//! // A writer still holding "nothing stored" loses the compare-and-set.
//! assert!(store.put(&id, None, &codec.encode(&Lamp::Off, 1).unwrap()).is_err());
//! ```

mod codec;
mod envelope;
mod error;
mod id;
mod memory;
mod query;
mod seal;

pub use codec::{Codec, DecodeError, EncodeError, LoadError};
pub use envelope::{
    EnvelopeError, Format, Limits, Section, Sections, Snapshot, FORMAT_VERSION, MAGIC,
    MAX_MACHINE_NAME, MAX_STATE_NAME,
};
pub use error::{Corruption, StoreError};
pub use id::{InvalidId, MachineId, MAX_ID_LEN};
pub use memory::MemoryStore;
pub use query::{
    count_by_reading, list_by_reading, ListQuery, Page, Smallest, StateCounts, StateFilter,
    MAX_PAGE,
};
#[cfg(feature = "seal")]
pub use seal::Keyring;
pub use seal::{sealed_key, SealError, Sealer};

use std::collections::HashSet;

/// Where a machine's snapshots are kept.
///
/// # Contract
///
/// - **Atomic.** After [`put`](SnapshotStore::put) a reader sees the old snapshot or the new
///   one, never a mix, including after a crash at any point of the write.
/// - **Durable.** For a store whose [`Capabilities::durable`] is true, a `put` or `put_many`
///   that returned `Ok` survives a process crash (kill -9) and, with the default settings, a
///   power loss: reopening the store returns it or a newer snapshot.
/// - **Versioned.** Each machine id has a sequence, the [`Snapshot::seq`] of its newest
///   snapshot. A write names the sequence it expects to replace (`None`: nothing stored yet)
///   and is refused with [`StoreError::Conflict`] if the store holds another: compare-and-set,
///   so a stale writer cannot overwrite a newer state. The new snapshot's sequence must rise
///   above the expected one ([`StoreError::InvalidSequence`] otherwise).
/// - **Verified reads.** [`get`](SnapshotStore::get) returns only bytes whose envelope
///   verified and whose sequence is the one the store recorded; anything else is
///   [`StoreError::Corrupt`], never data.
/// - **Batches.** [`put_many`](SnapshotStore::put_many) commits snapshots of many machines with
///   one fsync or one transaction. Each snapshot in it stays atomic, and the batch is all or
///   nothing: if any compare-and-set fails, none is written.
/// - **Errors mean what they say.** An error other than [`StoreError::OutcomeUnknown`] (or a
///   backend error flagged as unknown) means the store is unchanged. After an unknown outcome a
///   file-backed store is poisoned: it refuses every call until it is reopened.
/// - **Ownership.** A store shared by several nodes may fence writers: each node writes a
///   machine under an *epoch* that rises every time ownership of the machine changes hands, and
///   a write under an older epoch is refused with [`StoreError::Fenced`], so a paused or
///   partitioned old owner never overwrites what a new owner moved on from.
///   [`owner_epoch`](SnapshotStore::owner_epoch) tells a caller, without writing, whether this
///   store may write a machine now. Stores that do not fence own every machine (epoch 0).
///
/// Implementations are shared between threads; each call is atomic with respect to the others.
/// The conformance suite in `fsm-persist` checks all of this for any implementation.
pub trait SnapshotStore: Send + Sync {
    /// Stores `snapshot` as machine `id`'s newest, if the store holds sequence `expected`.
    fn put(
        &self,
        id: &MachineId,
        expected: Option<u64>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError>;

    /// Stores a batch of snapshots for distinct machines, with one sync, all or nothing.
    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError>;

    /// The newest snapshot of machine `id`, verified.
    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError>;

    /// The newest snapshots of several machines, one result per id, in the order asked: what
    /// [`get`](SnapshotStore::get) would answer for each (`NotFound` for a machine with none).
    /// A kernel's shard reads the machines a batch needs with one call, so a backend can read
    /// them together: in one read transaction (SQLite), one round trip (PostgreSQL). The
    /// default calls `get` for each.
    fn get_many(&self, ids: &[&MachineId]) -> Vec<Result<Snapshot, StoreError>> {
        ids.iter().map(|id| self.get(id)).collect()
    }

    /// The sequence of machine `id`'s newest snapshot (`None`: nothing stored), without
    /// reading it.
    fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError>;

    /// Every machine id with a stored snapshot, in no particular order.
    fn ids(&self) -> Result<Vec<MachineId>, StoreError>;

    /// One page of the stored machines' ids, in id order (by their bytes), selected by the
    /// state their newest snapshot records ([`Snapshot::state`]); continue with
    /// [`Page::next`]. Paging is by key, so a listing that runs while the store is written
    /// returns each id at most once and every id that was stored, and in the asked state,
    /// throughout. Backends answer from what they keep beside each machine; the default reads
    /// every snapshot's envelope ([`list_by_reading`]).
    fn list(&self, query: &ListQuery<'_>) -> Result<Page, StoreError> {
        list_by_reading(self, query)
    }

    /// How many stored machines are in each state, by the state their newest snapshot
    /// records. The default reads every snapshot's envelope ([`count_by_reading`]).
    fn count_states(&self) -> Result<StateCounts, StoreError> {
        count_by_reading(self)
    }

    /// What this backend promises, for callers and the conformance suite.
    fn capabilities(&self) -> Capabilities;

    /// The epoch under which this store writes machine `id` now, or [`StoreError::Fenced`] if
    /// it knows that another node owns `id` (or that its own ownership lapsed). Answered from
    /// what the store knows locally, without a round trip; the database still refuses a stale
    /// write that slips past it. A kernel asks before it applies a command, and reloads a
    /// machine when the epoch changed. The default, for stores that do not fence: `Ok(0)`.
    fn owner_epoch(&self, id: &MachineId) -> Result<u64, StoreError> {
        let _ = id;
        Ok(0)
    }
}

/// One write in a [`SnapshotStore::put_many`] batch.
#[derive(Debug, Clone, Copy)]
pub struct Put<'a> {
    /// The machine.
    pub id: &'a MachineId,
    /// The sequence the writer expects the store to hold (`None`: nothing).
    pub expected: Option<u64>,
    /// The new snapshot.
    pub snapshot: &'a Snapshot,
}

impl<'a> Put<'a> {
    /// A write of `snapshot` over sequence `expected` of machine `id`.
    pub fn new(id: &'a MachineId, expected: Option<u64>, snapshot: &'a Snapshot) -> Self {
        Put {
            id,
            expected,
            snapshot,
        }
    }

    /// Checks this write against the sequence the store holds (`current`): the
    /// compare-and-set and the rising sequence. Backends call it before writing.
    pub fn check(&self, current: Option<u64>) -> Result<(), StoreError> {
        check_put(self.id, self.expected, self.snapshot, current)
    }

    /// Checks only that the new sequence rises above the expected one, for backends that do
    /// the compare-and-set themselves (in a database statement).
    pub fn check_rising(&self) -> Result<(), StoreError> {
        if self.snapshot.seq() <= self.expected.unwrap_or(0) {
            return Err(StoreError::InvalidSequence {
                id: self.id.clone(),
                expected: self.expected,
                new: self.snapshot.seq(),
            });
        }
        Ok(())
    }
}

/// The compare-and-set every backend applies: the store must hold `expected`, and the new
/// snapshot's sequence must rise above it.
pub fn check_put(
    id: &MachineId,
    expected: Option<u64>,
    snapshot: &Snapshot,
    current: Option<u64>,
) -> Result<(), StoreError> {
    Put::new(id, expected, snapshot).check_rising()?;
    if current != expected {
        return Err(StoreError::Conflict {
            id: id.clone(),
            expected,
            found: current,
        });
    }
    Ok(())
}

/// Refuses a batch that names a machine twice or offers a sequence that does not rise.
/// Backends call it before checking the batch against what they hold.
pub fn check_batch(batch: &[Put<'_>]) -> Result<(), StoreError> {
    let mut seen = HashSet::with_capacity(batch.len());
    for put in batch {
        if !seen.insert(put.id) {
            return Err(StoreError::InvalidBatch { id: put.id.clone() });
        }
        put.check_rising()?;
    }
    Ok(())
}

/// What a backend promises beyond the contract's common part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The backend's name, for errors and reports.
    pub backend: &'static str,
    /// Whether acknowledged writes survive a crash (and reopening sees them).
    pub durable: bool,
}

impl Capabilities {
    /// Capabilities of a backend named `backend`.
    pub const fn new(backend: &'static str, durable: bool) -> Self {
        Capabilities { backend, durable }
    }
}

/// Conveniences on every store: typed loads and saves through a [`Codec`].
pub trait SnapshotStoreExt: SnapshotStore {
    /// The newest snapshot of `id`, or `None` if nothing is stored.
    fn try_get(&self, id: &MachineId) -> Result<Option<Snapshot>, StoreError> {
        match self.get(id) {
            Ok(s) => Ok(Some(s)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Loads and decodes machine `id`: the machine and its sequence, or `None` if nothing is
    /// stored. The snapshot is migrated if older and its invariants are checked.
    fn load<M>(&self, id: &MachineId, codec: &Codec<M>) -> Result<Option<(M, u64)>, LoadError>
    where
        M: crate::StateMachine + serde::Serialize + serde::de::DeserializeOwned,
    {
        let Some(snapshot) = self.try_get(id)? else {
            return Ok(None);
        };
        let machine = codec.decode(&snapshot)?;
        Ok(Some((machine, snapshot.seq())))
    }

    /// Encodes `machine` as sequence `expected + 1` and stores it over `expected`; returns
    /// the new sequence.
    fn save<M>(
        &self,
        id: &MachineId,
        expected: Option<u64>,
        machine: &M,
        codec: &Codec<M>,
    ) -> Result<u64, LoadError>
    where
        M: crate::StateMachine + serde::Serialize + serde::de::DeserializeOwned,
    {
        let seq = expected.unwrap_or(0) + 1;
        let snapshot = codec.encode(machine, seq)?;
        self.put(id, expected, &snapshot)?;
        Ok(seq)
    }
}

impl<S: SnapshotStore + ?Sized> SnapshotStoreExt for S {}

/// A shared or boxed store is a store: forwards every call.
macro_rules! forward_store {
    ($($ptr:ident)::+) => {
        impl<S: SnapshotStore + ?Sized> SnapshotStore for $($ptr)::+<S> {
            fn put(&self, id: &MachineId, expected: Option<u64>, snapshot: &Snapshot) -> Result<(), StoreError> {
                (**self).put(id, expected, snapshot)
            }
            fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
                (**self).put_many(batch)
            }
            fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
                (**self).get(id)
            }
            fn get_many(&self, ids: &[&MachineId]) -> Vec<Result<Snapshot, StoreError>> {
                (**self).get_many(ids)
            }
            fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError> {
                (**self).sequence(id)
            }
            fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
                (**self).ids()
            }
            fn list(&self, query: &ListQuery<'_>) -> Result<Page, StoreError> {
                (**self).list(query)
            }
            fn count_states(&self) -> Result<StateCounts, StoreError> {
                (**self).count_states()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            fn owner_epoch(&self, id: &MachineId) -> Result<u64, StoreError> {
                (**self).owner_epoch(id)
            }
        }
    };
}

forward_store!(std::sync::Arc);
forward_store!(Box);
