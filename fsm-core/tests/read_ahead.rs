//! A shard reads the machines a batch needs in one `SnapshotStore::get_many` before deciding:
//! what it read is what deciding uses, a machine whose ownership epoch changed in between is
//! read again, and a read-ahead that failed is read again the ordinary way.
#![allow(missing_docs)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fsm_core::kernel::Kernel;
use fsm_core::queue::ManualClock;
use fsm_core::store::{Capabilities, MachineId, Put, Snapshot, SnapshotStore, StoreError};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

mod support;
use support::Gated;

#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = Cmd)]
pub enum Counter {
    #[fsm(initial, on(Bump => Counting))]
    Zero,
    #[fsm(on(Bump => Counting))]
    Counting { n: u64 },
}

#[derive(Event, Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Bump,
}

impl Handler<cmd::Bump, counter::Counting> for counter::Zero {
    fn handle(
        _: counter::Zero,
        _: cmd::Bump,
        _: &mut Effects<()>,
    ) -> Result<counter::Counting, Refusal> {
        Ok(counter::Counting { n: 1 })
    }
}

impl Handler<cmd::Bump, counter::Counting> for counter::Counting {
    fn handle(
        s: counter::CountingRef<'_>,
        _: cmd::Bump,
        _: &mut Effects<()>,
    ) -> Result<counter::Counting, Refusal> {
        Ok(counter::Counting { n: s.n + 1 })
    }
}

fn id(s: &str) -> MachineId {
    MachineId::new(s).unwrap()
}

/// What the kernel asked of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Get(String),
    GetMany(BTreeSet<String>),
}

/// A gated memory store that logs reads, can fail every read-ahead, and can move machines
/// to a new ownership epoch each time their epoch is asked.
#[derive(Default)]
struct Watched {
    gated: Gated,
    calls: Mutex<Vec<Call>>,
    fail_read_ahead: Mutex<bool>,
    /// Machines whose epoch rises with every `owner_epoch` call, and their epoch now.
    moving: Mutex<HashMap<MachineId, u64>>,
}

impl Watched {
    fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl SnapshotStore for Watched {
    fn put(&self, id: &MachineId, expected: Option<u64>, s: &Snapshot) -> Result<(), StoreError> {
        self.gated.put(id, expected, s)
    }
    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        self.gated.put_many(batch)
    }
    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Get(id.as_str().to_owned()));
        self.gated.get(id)
    }
    fn get_many(&self, ids: &[&MachineId]) -> Vec<Result<Snapshot, StoreError>> {
        self.calls.lock().unwrap().push(Call::GetMany(
            ids.iter().map(|m| m.as_str().to_owned()).collect(),
        ));
        if *self.fail_read_ahead.lock().unwrap() {
            return ids
                .iter()
                .map(|_| {
                    Err(StoreError::Backend {
                        backend: "test",
                        message: "the read-ahead connection was lost".into(),
                        outcome_unknown: false,
                    })
                })
                .collect();
        }
        ids.iter().map(|m| self.gated.get(m)).collect()
    }
    fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError> {
        self.gated.sequence(id)
    }
    fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
        self.gated.ids()
    }
    fn capabilities(&self) -> Capabilities {
        self.gated.capabilities()
    }
    fn owner_epoch(&self, id: &MachineId) -> Result<u64, StoreError> {
        let mut moving = self.moving.lock().unwrap();
        Ok(match moving.get_mut(id) {
            Some(epoch) => {
                *epoch += 1;
                *epoch
            }
            None => 0,
        })
    }
}

/// A one-shard kernel on a manual clock whose machines are evicted after a minute idle.
fn kernel(store: &Arc<Watched>, clock: &ManualClock) -> Kernel<Counter> {
    Kernel::builder_shared(store.clone(), |_| Counter::Zero)
        .shards(1)
        .clock(clock.clock())
        .idle_after(Duration::from_secs(60))
        .start()
        .unwrap()
}

/// Evicts every machine in memory, so that the next commands read them from the store.
fn evict_all(kernel: &Kernel<Counter>, clock: &ManualClock) {
    clock.advance(Duration::from_secs(61));
    kernel.sweep();
    assert_eq!(kernel.metrics().total.resident, 0);
}

/// Bumps each machine once in one batch: the first commit (of machine `busy`) is held until
/// the others are queued behind it. Returns each machine's answer's new sequence.
fn bump_in_one_batch(
    store: &Arc<Watched>,
    kernel: &Kernel<Counter>,
    ids: &[MachineId],
) -> Vec<u64> {
    let before = *store.gated.entered.lock().unwrap();
    store.gated.hold();
    let busy = kernel.submit(&id("busy"), Cmd::Bump).unwrap();
    store.gated.wait_entered(before + 1);
    store.take_calls();
    let tickets: Vec<_> = ids
        .iter()
        .map(|m| kernel.submit(m, Cmd::Bump).unwrap())
        .collect();
    // Queued behind the held commit: the shard takes them as one batch once it returns.
    assert_eq!(kernel.metrics().total.counts.queued, ids.len() as u64);
    store.gated.open();
    busy.wait().unwrap();
    tickets.into_iter().map(|t| t.wait().unwrap().seq).collect()
}

fn names(ids: &[MachineId]) -> BTreeSet<String> {
    ids.iter().map(|m| m.as_str().to_owned()).collect()
}

#[test]
fn the_machines_a_batch_needs_are_read_in_one_get_many_and_decided_from_what_it_read() {
    let store = Arc::new(Watched::default());
    let old: Vec<MachineId> = (0..3).map(|i| id(&format!("old-{i}"))).collect();
    let new: Vec<MachineId> = (0..3).map(|i| id(&format!("new-{i}"))).collect();
    let clock = ManualClock::new();
    let k = kernel(&store, &clock);
    // Three machines stored at sequence 2, then out of memory.
    for m in &old {
        k.submit(m, Cmd::Bump).unwrap().wait().unwrap();
        k.submit(m, Cmd::Bump).unwrap().wait().unwrap();
    }
    evict_all(&k, &clock);
    let all: Vec<MachineId> = old.iter().chain(&new).cloned().collect();
    let seqs = bump_in_one_batch(&store, &k, &all);
    // The stored ones moved on from what the read-ahead found; the new ones started.
    assert_eq!(seqs, vec![3, 3, 3, 1, 1, 1]);
    let calls = store.take_calls();
    assert_eq!(
        calls,
        vec![Call::GetMany(names(&all))],
        "one read for the batch, none one by one"
    );
    for m in &old {
        assert_eq!(k.state(m).unwrap(), (Counter::Counting { n: 3 }, Some(3)));
    }
    // Resident now: the next batch reads nothing.
    let again = bump_in_one_batch(&store, &k, &all);
    assert_eq!(again, vec![4, 4, 4, 2, 2, 2]);
    assert_eq!(store.take_calls(), Vec::new());
}

#[test]
fn a_machine_whose_epoch_changed_after_its_read_ahead_is_read_again() {
    let store = Arc::new(Watched::default());
    let (steady, moving) = (id("steady"), id("moving"));
    let clock = ManualClock::new();
    let k = kernel(&store, &clock);
    k.submit(&steady, Cmd::Bump).unwrap().wait().unwrap();
    k.submit(&moving, Cmd::Bump).unwrap().wait().unwrap();
    evict_all(&k, &clock);
    // From now on `moving` is owned under a new epoch each time it is asked: its read-ahead
    // was made under an epoch that no longer holds when it is loaded.
    store.moving.lock().unwrap().insert(moving.clone(), 0);
    let seqs = bump_in_one_batch(&store, &k, &[steady.clone(), moving.clone()]);
    assert_eq!(seqs, vec![2, 2]);
    assert_eq!(
        store.take_calls(),
        vec![
            Call::GetMany(names(&[steady.clone(), moving.clone()])),
            Call::Get("moving".into()),
        ]
    );
}

#[test]
fn a_read_ahead_that_failed_is_read_again_one_by_one_and_nothing_is_lost() {
    let store = Arc::new(Watched::default());
    let ids: Vec<MachineId> = (0..4).map(|i| id(&format!("m-{i}"))).collect();
    let clock = ManualClock::new();
    let k = kernel(&store, &clock);
    for m in &ids[..2] {
        k.submit(m, Cmd::Bump).unwrap().wait().unwrap();
    }
    evict_all(&k, &clock);
    *store.fail_read_ahead.lock().unwrap() = true;
    let seqs = bump_in_one_batch(&store, &k, &ids);
    assert_eq!(seqs, vec![2, 2, 1, 1]);
    let calls = store.take_calls();
    let mut expected = vec![Call::GetMany(names(&ids))];
    expected.extend(ids.iter().map(|m| Call::Get(m.as_str().to_owned())));
    assert_eq!(calls, expected);
    assert_eq!(k.metrics().total.counts.unavailable, 0);
}

#[test]
fn recovery_reads_the_stored_machines_a_chunk_at_a_time() {
    let store = Arc::new(Watched::default());
    let clock = ManualClock::new();
    let ids: Vec<MachineId> = (0..300).map(|i| id(&format!("r-{i:03}"))).collect();
    let first = kernel(&store, &clock);
    for m in &ids {
        first.submit(m, Cmd::Bump).unwrap().wait().unwrap();
    }
    drop(first);
    store.take_calls();

    let k = kernel(&store, &clock);
    assert_eq!(k.metrics().total.resident, 300);
    let calls = store.take_calls();
    // 256 and 44, in the order the store listed them; nothing read one by one.
    let mut read: BTreeSet<String> = BTreeSet::new();
    let mut sizes = Vec::new();
    for call in calls {
        match call {
            Call::GetMany(names) => {
                sizes.push(names.len());
                read.extend(names);
            }
            Call::Get(m) => panic!("{m} was read alone"),
        }
    }
    sizes.sort_unstable();
    assert_eq!(sizes, vec![44, 256]);
    assert_eq!(read, names(&ids));
    for m in &ids[..3] {
        assert_eq!(k.state(m).unwrap(), (Counter::Counting { n: 1 }, Some(1)));
    }
}
