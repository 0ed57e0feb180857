//! The conformance suite: what every [`SnapshotStore`] must do, as functions over
//! `&dyn SnapshotStore`.
//!
//! A backend's tests call [`run`] on a fresh, empty store and, if the backend is durable,
//! [`run_reopen`] with a function that opens the same store again. A new backend is done when
//! both pass. Each check panics with a message naming the property it broke; each uses its own
//! machine ids, so they can share one store.
//!
//! ```
//! use fsm_core::store::MemoryStore;
//! fsm_persist::conformance::run(&MemoryStore::new());
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Barrier;

use fsm_core::store::{
    Format, ListQuery, MachineId, Page, Put, Sections, Snapshot, SnapshotStore, StateFilter,
    StoreError,
};

/// A machine id for a check.
pub fn id(name: &str) -> MachineId {
    MachineId::new(name).expect("conformance ids are valid")
}

/// A snapshot of sequence `seq` whose payload (of `len` bytes) is derived from `tag` and `seq`,
/// so a mix-up between machines or generations shows.
pub fn snapshot(tag: &str, seq: u64, len: usize) -> Snapshot {
    let mut payload = Vec::with_capacity(len);
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ tag.len() as u64;
    for (i, b) in tag.bytes().cycle().take(len).enumerate() {
        x = x.rotate_left(7) ^ (b as u64 + i as u64);
        payload.push(x as u8);
    }
    Snapshot::new("Conformance", 1, seq, Format::Postcard, &payload).expect("small snapshot")
}

/// Like [`snapshot`], recording `state` as the state its payload holds (as a
/// [`Codec`](fsm_core::store::Codec) does).
pub fn stated(tag: &str, seq: u64, state: &str) -> Snapshot {
    let plain = snapshot(tag, seq, 24);
    let sections = Sections {
        state: Some(state),
        ..Sections::default()
    };
    Snapshot::framed(
        "Conformance",
        1,
        seq,
        Format::Postcard,
        sections,
        plain.payload(),
    )
    .expect("small snapshot")
}

/// Every page of `query`, followed to the end; checks that each page is ascending, within
/// its limit, and continues after the one before.
pub fn list_all(store: &dyn SnapshotStore, state: StateFilter<'_>, limit: usize) -> Vec<MachineId> {
    let mut all: Vec<MachineId> = Vec::new();
    let mut after: Option<MachineId> = None;
    loop {
        let query = ListQuery {
            state,
            after: after.as_ref(),
            limit,
        };
        let Page { ids, more } = store.list(&query).unwrap();
        assert!(
            ids.len() <= limit,
            "a page of {} ids over a limit of {limit}",
            ids.len()
        );
        assert!(
            ids.windows(2).all(|w| w[0].as_str() < w[1].as_str()),
            "a page must be in ascending id order: {ids:?}"
        );
        if let (Some(after), Some(first)) = (&after, ids.first()) {
            assert!(
                first.as_str() > after.as_str(),
                "a page must start after its cursor"
            );
        }
        all.extend(ids);
        if !more {
            return all;
        }
        after = Some(all.last().cloned().expect("a page with more holds ids"));
    }
}

/// Every check that needs one store: run it on a fresh, empty store.
pub fn run(store: &dyn SnapshotStore) {
    missing_machine_is_not_found(store);
    put_then_get_returns_the_same_snapshot(store);
    stale_writer_gets_a_conflict_and_changes_nothing(store);
    creating_over_an_existing_machine_is_a_conflict(store);
    sequence_must_rise(store);
    put_many_commits_every_snapshot(store);
    put_many_is_all_or_nothing(store);
    put_many_refuses_a_machine_named_twice(store);
    empty_batch_is_accepted(store);
    single_and_batched_writes_interleave(store);
    large_snapshot_round_trips(store);
    many_machines_round_trip(store);
    get_many_answers_each_id_as_get_does(store);
    get_many_beside_a_writer_reads_whole_snapshots_that_never_go_back(store);
    concurrent_writers_exactly_one_wins(store);
    ids_lists_every_machine(store);
    queries_by_state_follow_the_newest_snapshot(store);
    listing_pages_through_every_machine_in_order(store);
    paging_is_stable_under_concurrent_writes(store);
}

/// Every check that needs a reopen: `open` opens the same store again (the previous handle is
/// dropped first). Run it only for backends whose capabilities say `durable`.
pub fn run_reopen(open: &dyn Fn() -> Box<dyn SnapshotStore>) {
    acknowledged_writes_survive_reopen(open);
    states_survive_reopen(open);
}

/// `get` of an id never written is `NotFound`; its sequence is `None`.
pub fn missing_machine_is_not_found(store: &dyn SnapshotStore) {
    let m = id("missing");
    assert!(
        matches!(store.get(&m), Err(StoreError::NotFound { ref id }) if *id == m),
        "get of a missing machine must be NotFound"
    );
    assert_eq!(
        store.sequence(&m).unwrap(),
        None,
        "sequence of a missing machine must be None"
    );
}

/// A put is read back byte for byte, with its sequence.
pub fn put_then_get_returns_the_same_snapshot(store: &dyn SnapshotStore) {
    let m = id("roundtrip");
    let s1 = snapshot("roundtrip", 1, 64);
    store.put(&m, None, &s1).unwrap();
    assert_eq!(
        store.get(&m).unwrap(),
        s1,
        "get must return what put stored"
    );
    assert_eq!(store.sequence(&m).unwrap(), Some(1));
    let s2 = snapshot("roundtrip", 2, 80);
    store.put(&m, Some(1), &s2).unwrap();
    assert_eq!(
        store.get(&m).unwrap(),
        s2,
        "get must return the newest snapshot"
    );
    assert_eq!(store.sequence(&m).unwrap(), Some(2));
}

/// A writer expecting an old sequence is refused with `Conflict { expected, found }`.
pub fn stale_writer_gets_a_conflict_and_changes_nothing(store: &dyn SnapshotStore) {
    let m = id("stale");
    store.put(&m, None, &snapshot("stale", 1, 16)).unwrap();
    store.put(&m, Some(1), &snapshot("stale", 2, 16)).unwrap();
    let err = store
        .put(&m, Some(1), &snapshot("stale-writer", 3, 16))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: Some(1),
                found: Some(2),
                ..
            }
        ),
        "a stale writer must get Conflict{{expected 1, found 2}}, got {err}"
    );
    assert_eq!(
        store.get(&m).unwrap(),
        snapshot("stale", 2, 16),
        "a conflict must change nothing"
    );
    // Expecting a sequence that was never written is a conflict too.
    let err = store
        .put(&m, Some(7), &snapshot("stale", 8, 16))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { found: Some(2), .. }),
        "{err}"
    );
}

/// `expected = None` means "nothing stored": over an existing machine it is a conflict.
pub fn creating_over_an_existing_machine_is_a_conflict(store: &dyn SnapshotStore) {
    let m = id("create-twice");
    store
        .put(&m, None, &snapshot("create-twice", 1, 16))
        .unwrap();
    let err = store
        .put(&m, None, &snapshot("create-twice", 5, 16))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: None,
                found: Some(1),
                ..
            }
        ),
        "creating an existing machine must be a Conflict, got {err}"
    );
    let err = store
        .put(&id("never"), Some(3), &snapshot("never", 4, 16))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: Some(3),
                found: None,
                ..
            }
        ),
        "expecting a sequence of a missing machine must be a Conflict, got {err}"
    );
}

/// A snapshot whose sequence does not rise above the expected one is refused.
pub fn sequence_must_rise(store: &dyn SnapshotStore) {
    let m = id("rising");
    store.put(&m, None, &snapshot("rising", 1, 16)).unwrap();
    for bad in [0, 1] {
        let err = store
            .put(&m, Some(1), &snapshot("rising", bad, 16))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidSequence { new, .. } if new == bad),
            "sequence {bad} over 1 must be InvalidSequence, got {err}"
        );
    }
    let err = store
        .put(&id("rising-0"), None, &snapshot("rising-0", 0, 16))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidSequence { .. }),
        "sequence 0 must be refused: {err}"
    );
    // Gaps are allowed: a sequence only has to rise.
    store.put(&m, Some(1), &snapshot("rising", 10, 16)).unwrap();
    assert_eq!(store.sequence(&m).unwrap(), Some(10));
}

/// A batch stores every snapshot in it.
pub fn put_many_commits_every_snapshot(store: &dyn SnapshotStore) {
    let ids: Vec<MachineId> = (0..20).map(|i| id(&format!("batch-{i}"))).collect();
    let first: Vec<Snapshot> = ids.iter().map(|m| snapshot(m.as_str(), 1, 100)).collect();
    let batch: Vec<Put<'_>> = ids
        .iter()
        .zip(&first)
        .map(|(m, s)| Put::new(m, None, s))
        .collect();
    store.put_many(&batch).unwrap();
    let second: Vec<Snapshot> = ids.iter().map(|m| snapshot(m.as_str(), 2, 120)).collect();
    let batch: Vec<Put<'_>> = ids
        .iter()
        .zip(&second)
        .map(|(m, s)| Put::new(m, Some(1), s))
        .collect();
    store.put_many(&batch).unwrap();
    for (m, s) in ids.iter().zip(&second) {
        assert_eq!(
            &store.get(m).unwrap(),
            s,
            "{m} must hold the batch's snapshot"
        );
    }
}

/// If one compare-and-set in a batch fails, no snapshot of the batch is stored.
pub fn put_many_is_all_or_nothing(store: &dyn SnapshotStore) {
    let a = id("atomic-a");
    let b = id("atomic-b");
    let c = id("atomic-c");
    store.put(&b, None, &snapshot("atomic-b", 1, 16)).unwrap();
    let (sa, sb, sc) = (
        snapshot("atomic-a", 1, 16),
        snapshot("atomic-b", 2, 16),
        snapshot("atomic-c", 1, 16),
    );
    // b is expected absent but exists: the whole batch must be refused.
    let batch = [
        Put::new(&a, None, &sa),
        Put::new(&b, None, &sb),
        Put::new(&c, None, &sc),
    ];
    let err = store.put_many(&batch).unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { ref id, .. } if *id == b),
        "{err}"
    );
    assert!(
        matches!(store.get(&a), Err(StoreError::NotFound { .. })),
        "a must not be written"
    );
    assert!(
        matches!(store.get(&c), Err(StoreError::NotFound { .. })),
        "c must not be written"
    );
    assert_eq!(
        store.get(&b).unwrap(),
        snapshot("atomic-b", 1, 16),
        "b must be unchanged"
    );
}

/// A batch naming a machine twice is refused whole.
pub fn put_many_refuses_a_machine_named_twice(store: &dyn SnapshotStore) {
    let a = id("twice");
    let (s1, s2) = (snapshot("twice", 1, 16), snapshot("twice", 2, 16));
    let err = store
        .put_many(&[Put::new(&a, None, &s1), Put::new(&a, Some(1), &s2)])
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidBatch { .. }), "{err}");
    assert!(matches!(store.get(&a), Err(StoreError::NotFound { .. })));
}

/// An empty batch is a no-op.
pub fn empty_batch_is_accepted(store: &dyn SnapshotStore) {
    store.put_many(&[]).unwrap();
}

/// Single puts and batches on the same machines see each other's sequences.
pub fn single_and_batched_writes_interleave(store: &dyn SnapshotStore) {
    let ids: Vec<MachineId> = (0..5).map(|i| id(&format!("mixed-{i}"))).collect();
    let mut seq = 0;
    for round in 0..6u64 {
        let expected = (seq > 0).then_some(seq);
        seq += 1;
        if round % 2 == 0 {
            let snaps: Vec<Snapshot> = ids.iter().map(|m| snapshot(m.as_str(), seq, 50)).collect();
            let batch: Vec<Put<'_>> = ids
                .iter()
                .zip(&snaps)
                .map(|(m, s)| Put::new(m, expected, s))
                .collect();
            store.put_many(&batch).unwrap();
        } else {
            for m in &ids {
                store
                    .put(m, expected, &snapshot(m.as_str(), seq, 50))
                    .unwrap();
            }
        }
        for m in &ids {
            assert_eq!(
                store.get(m).unwrap(),
                snapshot(m.as_str(), seq, 50),
                "round {round}"
            );
        }
    }
}

/// A 1 MiB snapshot round-trips.
pub fn large_snapshot_round_trips(store: &dyn SnapshotStore) {
    let m = id("large");
    let big = snapshot("large", 1, 1 << 20);
    store.put(&m, None, &big).unwrap();
    assert_eq!(store.get(&m).unwrap(), big);
}

/// 500 machines, written in batches and singly, all read back.
pub fn many_machines_round_trip(store: &dyn SnapshotStore) {
    let ids: Vec<MachineId> = (0..500).map(|i| id(&format!("many-{i:03}"))).collect();
    let snaps: Vec<Snapshot> = ids.iter().map(|m| snapshot(m.as_str(), 3, 200)).collect();
    for (chunk_ids, chunk_snaps) in ids.chunks(100).zip(snaps.chunks(100)) {
        let batch: Vec<Put<'_>> = chunk_ids
            .iter()
            .zip(chunk_snaps)
            .map(|(m, s)| Put::new(m, None, s))
            .collect();
        store.put_many(&batch).unwrap();
    }
    for (m, s) in ids.iter().zip(&snaps) {
        assert_eq!(&store.get(m).unwrap(), s);
    }
}

/// `get_many` answers one result per id, in the order asked, each what `get` answers:
/// stored snapshots, `NotFound` for the rest, an id asked twice answered twice.
pub fn get_many_answers_each_id_as_get_does(store: &dyn SnapshotStore) {
    let stored: Vec<MachineId> = (0..40).map(|i| id(&format!("gm-{i:02}"))).collect();
    let snaps: Vec<Snapshot> = stored.iter().map(|m| snapshot(m.as_str(), 2, 90)).collect();
    let batch: Vec<Put<'_>> = stored
        .iter()
        .zip(&snaps)
        .map(|(m, s)| Put::new(m, None, s))
        .collect();
    store.put_many(&batch).unwrap();
    let missing = id("gm-missing");
    let mut asked: Vec<&MachineId> = stored.iter().rev().collect();
    asked.insert(7, &missing);
    asked.push(&stored[3]);
    let answers = store.get_many(&asked);
    assert_eq!(answers.len(), asked.len(), "one answer per id asked");
    for (m, answer) in asked.iter().zip(answers) {
        match (answer, store.get(m)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "get_many and get disagree on {m}"),
            (Err(StoreError::NotFound { id }), Err(StoreError::NotFound { .. })) => {
                assert_eq!(&id, *m)
            }
            (a, b) => panic!("get_many answered {a:?} and get {b:?} for {m}"),
        }
    }
    assert!(store.get_many(&[]).is_empty());
}

/// While another thread rewrites a set of machines in batches, `get_many` of all of them
/// returns whole snapshots (each exactly what was written for its sequence), and no machine's
/// sequence goes back from one read to the next.
pub fn get_many_beside_a_writer_reads_whole_snapshots_that_never_go_back(
    store: &dyn SnapshotStore,
) {
    let ids: Vec<MachineId> = (0..24).map(|i| id(&format!("gmw-{i:02}"))).collect();
    let refs: Vec<&MachineId> = ids.iter().collect();
    let rounds = 60_u64;
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for seq in 1..=rounds {
                let snaps: Vec<Snapshot> =
                    ids.iter().map(|m| snapshot(m.as_str(), seq, 120)).collect();
                let batch: Vec<Put<'_>> = ids
                    .iter()
                    .zip(&snaps)
                    .map(|(m, s)| Put::new(m, (seq > 1).then(|| seq - 1), s))
                    .collect();
                store.put_many(&batch).unwrap();
            }
        });
        let mut last = vec![0_u64; ids.len()];
        while last.iter().any(|&s| s < rounds) {
            for (i, answer) in store.get_many(&refs).into_iter().enumerate() {
                match answer {
                    Ok(s) => {
                        assert_eq!(s, snapshot(ids[i].as_str(), s.seq(), 120));
                        assert!(s.seq() >= last[i], "{} went back", ids[i]);
                        last[i] = s.seq();
                    }
                    Err(StoreError::NotFound { .. }) => assert_eq!(last[i], 0),
                    Err(e) => panic!("get_many failed beside a writer: {e}"),
                }
            }
            if writer.is_finished() && last.iter().any(|&s| s < rounds) {
                // The writer is done: one more read sees every last write.
                let all = store.get_many(&refs);
                assert!(all
                    .iter()
                    .all(|a| a.as_ref().is_ok_and(|s| s.seq() == rounds)));
                break;
            }
        }
        writer.join().unwrap();
    });
}

/// Eight threads race to replace the same sequence: exactly one wins, the rest get `Conflict`.
pub fn concurrent_writers_exactly_one_wins(store: &dyn SnapshotStore) {
    let m = id("race");
    store.put(&m, None, &snapshot("race", 1, 32)).unwrap();
    let wins = AtomicUsize::new(0);
    let conflicts = AtomicUsize::new(0);
    let barrier = Barrier::new(8);
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let (m, wins, conflicts, barrier) = (&m, &wins, &conflicts, &barrier);
            scope.spawn(move || {
                let mine = snapshot(&format!("race-{t}"), 2, 32);
                barrier.wait();
                match store.put(m, Some(1), &mine) {
                    Ok(()) => wins.fetch_add(1, Ordering::SeqCst),
                    Err(StoreError::Conflict { .. }) => conflicts.fetch_add(1, Ordering::SeqCst),
                    Err(e) => panic!("a racing writer must win or conflict, got {e}"),
                };
            });
        }
    });
    assert_eq!(
        wins.load(Ordering::SeqCst),
        1,
        "exactly one racing writer must win"
    );
    assert_eq!(conflicts.load(Ordering::SeqCst), 7);
    let winner = store.get(&m).unwrap();
    assert!(
        (0..8).any(|t| winner == snapshot(&format!("race-{t}"), 2, 32)),
        "the stored snapshot must be one writer's whole snapshot"
    );
}

/// `ids` lists every machine written by the checks above, once.
pub fn ids_lists_every_machine(store: &dyn SnapshotStore) {
    let mut ids: Vec<String> = store
        .ids()
        .unwrap()
        .into_iter()
        .map(|m| m.to_string())
        .collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "ids must list each machine once");
    for expected in [
        "roundtrip",
        "stale",
        "batch-0",
        "batch-19",
        "mixed-4",
        "many-499",
        "race",
    ] {
        assert!(
            ids.iter().any(|i| i == expected),
            "ids must list {expected}"
        );
    }
    assert!(
        !ids.iter().any(|i| i == "atomic-a" || i == "twice"),
        "refused writes must not create machines"
    );
}

/// Everything acknowledged, singly or in a batch, is there after reopening.
pub fn acknowledged_writes_survive_reopen(open: &dyn Fn() -> Box<dyn SnapshotStore>) {
    let ids: Vec<MachineId> = (0..50).map(|i| id(&format!("durable-{i}"))).collect();
    {
        let store = open();
        let snaps: Vec<Snapshot> = ids.iter().map(|m| snapshot(m.as_str(), 1, 300)).collect();
        let batch: Vec<Put<'_>> = ids
            .iter()
            .zip(&snaps)
            .map(|(m, s)| Put::new(m, None, s))
            .collect();
        store.put_many(&batch).unwrap();
        for m in &ids[..10] {
            store
                .put(m, Some(1), &snapshot(m.as_str(), 2, 300))
                .unwrap();
        }
    }
    let store = open();
    for (i, m) in ids.iter().enumerate() {
        let seq = if i < 10 { 2 } else { 1 };
        assert_eq!(
            store.get(m).unwrap(),
            snapshot(m.as_str(), seq, 300),
            "{m} after reopen"
        );
    }
    {
        // And a batch on top of single puts, reopened again.
        let snaps: Vec<Snapshot> = ids
            .iter()
            .enumerate()
            .map(|(i, m)| snapshot(m.as_str(), if i < 10 { 3 } else { 2 }, 300))
            .collect();
        let batch: Vec<Put<'_>> = ids
            .iter()
            .zip(&snaps)
            .enumerate()
            .map(|(i, (m, s))| Put::new(m, Some(if i < 10 { 2 } else { 1 }), s))
            .collect();
        store.put_many(&batch).unwrap();
    }
    drop(store);
    let store = open();
    for (i, m) in ids.iter().enumerate() {
        let seq = if i < 10 { 3 } else { 2 };
        assert_eq!(
            store.get(m).unwrap(),
            snapshot(m.as_str(), seq, 300),
            "{m} after the second reopen"
        );
    }
}

/// Counts and listings by state follow each machine's newest snapshot, through single puts
/// and batches; a snapshot without a state name is unrecorded until a write records one.
pub fn queries_by_state_follow_the_newest_snapshot(store: &dyn SnapshotStore) {
    let states = ["QueryAlpha", "QueryBeta", "QueryGamma"];
    let ids: Vec<MachineId> = (0..30).map(|i| id(&format!("q-{i:02}"))).collect();
    let first: Vec<Snapshot> = ids
        .iter()
        .enumerate()
        .map(|(i, m)| stated(m.as_str(), 1, states[i % 3]))
        .collect();
    let batch: Vec<Put<'_>> = ids[..20]
        .iter()
        .zip(&first)
        .map(|(m, s)| Put::new(m, None, s))
        .collect();
    store.put_many(&batch).unwrap();
    for (m, s) in ids[20..].iter().zip(&first[20..]) {
        store.put(m, None, s).unwrap();
    }
    // Every Alpha among the first 15 moves to Beta: some singly, some in a batch.
    let moved: Vec<usize> = (0..15).filter(|i| i % 3 == 0).collect();
    let again: Vec<Snapshot> = moved
        .iter()
        .map(|&i| stated(ids[i].as_str(), 2, "QueryBeta"))
        .collect();
    store.put(&ids[moved[0]], Some(1), &again[0]).unwrap();
    let batch: Vec<Put<'_>> = moved[1..]
        .iter()
        .zip(&again[1..])
        .map(|(&i, s)| Put::new(&ids[i], Some(1), s))
        .collect();
    store.put_many(&batch).unwrap();
    // A refused write changes no state.
    let refused = [
        Put::new(&ids[1], Some(1), &again[0]),
        Put::new(&ids[2], Some(9), &again[1]),
    ];
    assert!(store.put_many(&refused).is_err());

    let mut expected: BTreeMap<&str, BTreeSet<MachineId>> = BTreeMap::new();
    for (i, m) in ids.iter().enumerate() {
        let state = if moved.contains(&i) {
            "QueryBeta"
        } else {
            states[i % 3]
        };
        expected.entry(state).or_default().insert(m.clone());
    }
    let counts = store.count_states().unwrap();
    for state in states {
        assert_eq!(
            counts.get(state),
            expected[state].len() as u64,
            "count of {state}: {counts:?}"
        );
        for limit in [1, 4, 100] {
            let listed = list_all(store, StateFilter::In(state), limit);
            assert_eq!(
                listed,
                expected[state].iter().cloned().collect::<Vec<_>>(),
                "the machines in {state}, by pages of {limit}"
            );
        }
    }
    let none = store
        .list(&ListQuery::in_state("QueryNoSuchState", 10))
        .unwrap();
    assert_eq!(
        none,
        Page::default(),
        "a state no machine is in lists nothing"
    );

    // A snapshot that records no state is unrecorded, until a write records one.
    let legacy = id("q-legacy");
    store
        .put(&legacy, None, &snapshot("q-legacy", 1, 16))
        .unwrap();
    let unrecorded = list_all(store, StateFilter::Unrecorded, 1000);
    assert!(
        unrecorded.contains(&legacy),
        "a snapshot without a state name is unrecorded"
    );
    assert!(
        !unrecorded.iter().any(|m| ids.contains(m)),
        "a snapshot with a state name is not unrecorded"
    );
    let before = store.count_states().unwrap();
    store
        .put(&legacy, Some(1), &stated("q-legacy", 2, "QueryGamma"))
        .unwrap();
    let after = store.count_states().unwrap();
    assert_eq!(
        after.unrecorded + 1,
        before.unrecorded,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.get("QueryGamma"), before.get("QueryGamma") + 1);
    assert!(list_all(store, StateFilter::In("QueryGamma"), 3).contains(&legacy));
    assert!(!list_all(store, StateFilter::Unrecorded, 1000).contains(&legacy));
}

/// Listing every machine, by pages of any size, returns exactly the ids `ids` returns, in
/// ascending order, each once; the counts add up to the same number.
pub fn listing_pages_through_every_machine_in_order(store: &dyn SnapshotStore) {
    let mut all: Vec<MachineId> = store.ids().unwrap();
    all.sort();
    for limit in [1, 7, 10_000] {
        assert_eq!(
            list_all(store, StateFilter::Any, limit),
            all,
            "every machine, by pages of {limit}"
        );
    }
    assert_eq!(
        store.count_states().unwrap().total(),
        all.len() as u64,
        "the counts by state add up to every machine"
    );
    // A page continues strictly after its cursor, also from an id that is not stored.
    let cursor = id("q-05x");
    let page = store.list(&ListQuery::all(3).after(&cursor)).unwrap();
    let want: Vec<MachineId> = all
        .iter()
        .filter(|m| m.as_str() > "q-05x")
        .take(3)
        .cloned()
        .collect();
    assert_eq!(page.ids, want, "the page after an id that is not stored");
}

/// A listing that runs while other threads write returns each id at most once, in order, and
/// every id that was stored (in the asked state) throughout.
pub fn paging_is_stable_under_concurrent_writes(store: &dyn SnapshotStore) {
    let steady: Vec<MachineId> = (0..60).map(|i| id(&format!("p-steady-{i:02}"))).collect();
    let flip: Vec<MachineId> = (0..60).map(|i| id(&format!("p-flip-{i:02}"))).collect();
    for m in steady.iter().chain(&flip) {
        let state = if m.as_str().starts_with("p-steady") {
            "PageSteady"
        } else {
            "PageFlipA"
        };
        store.put(m, None, &stated(m.as_str(), 1, state)).unwrap();
    }
    let present: BTreeSet<MachineId> = store.ids().unwrap().into_iter().collect();
    let started = Barrier::new(2);
    let writing = AtomicBool::new(true);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            started.wait();
            // Writes interleave with the pages below: new machines land before, inside and
            // after the pages already read, and the flipping machines change state. Bounded,
            // so that the listings end.
            for n in 0..WRITER_ROUNDS {
                // The flipping machines' sequence before this round's write.
                let seq = n as u64 + 1;
                let fresh = id(&format!(
                    "p-{}-{n:04}",
                    ["a", "flip-05x", "steady-30x", "z"][n % 4]
                ));
                store
                    .put(&fresh, None, &stated(fresh.as_str(), 1, "PageSteady"))
                    .unwrap();
                let state = if seq % 2 == 1 {
                    "PageFlipB"
                } else {
                    "PageFlipA"
                };
                let batch: Vec<Snapshot> = flip
                    .iter()
                    .map(|m| stated(m.as_str(), seq + 1, state))
                    .collect();
                let puts: Vec<Put<'_>> = flip
                    .iter()
                    .zip(&batch)
                    .map(|(m, s)| Put::new(m, Some(seq), s))
                    .collect();
                store.put_many(&puts).unwrap();
            }
            writing.store(false, Ordering::Relaxed);
        });
        started.wait();
        // While the writer runs, then once more after it stopped.
        let mut after_writer = false;
        while !after_writer {
            after_writer = !writing.load(Ordering::Relaxed);
            let everything = list_all(store, StateFilter::Any, 5);
            let unique: BTreeSet<&MachineId> = everything.iter().collect();
            assert_eq!(unique.len(), everything.len(), "an id listed twice");
            for m in &present {
                assert!(
                    unique.contains(m),
                    "{m} was stored throughout but not listed"
                );
            }
            let in_steady = list_all(store, StateFilter::In("PageSteady"), 4);
            for m in &steady {
                assert_eq!(
                    in_steady.iter().filter(|x| *x == m).count(),
                    1,
                    "{m} stayed in its state throughout and is listed once"
                );
            }
            assert!(
                in_steady.iter().all(|m| !flip.contains(m)),
                "a machine never in the state is never listed in it"
            );
        }
    });
}

/// How many rounds of writes run beside the listings of
/// [`paging_is_stable_under_concurrent_writes`].
const WRITER_ROUNDS: usize = 40;

/// The state each machine's newest snapshot records is known again after reopening.
pub fn states_survive_reopen(open: &dyn Fn() -> Box<dyn SnapshotStore>) {
    let ids: Vec<MachineId> = (0..40)
        .map(|i| id(&format!("reopen-state-{i:02}")))
        .collect();
    {
        let store = open();
        let snaps: Vec<Snapshot> = ids
            .iter()
            .map(|m| stated(m.as_str(), 1, "ReopenOld"))
            .collect();
        let batch: Vec<Put<'_>> = ids
            .iter()
            .zip(&snaps)
            .map(|(m, s)| Put::new(m, None, s))
            .collect();
        store.put_many(&batch).unwrap();
        for m in &ids[..15] {
            store
                .put(m, Some(1), &stated(m.as_str(), 2, "ReopenNew"))
                .unwrap();
        }
    }
    let store = open();
    let counts = store.count_states().unwrap();
    assert_eq!(counts.get("ReopenNew"), 15, "{counts:?}");
    assert_eq!(counts.get("ReopenOld"), 25, "{counts:?}");
    assert_eq!(
        list_all(&*store, StateFilter::In("ReopenNew"), 6),
        ids[..15].to_vec(),
        "the machines in a state after reopening"
    );
}
