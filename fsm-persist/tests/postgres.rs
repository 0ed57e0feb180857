//! The PostgreSQL store against a real server started by the tests: ownership and fencing
//! between two stores (nodes), leases running out and being renewed, the layout check, and
//! what each kind of failure is answered with (server gone, connection cut mid-write, pool
//! exhausted, corrupt rows).
//!
//! Each test uses a schema of its own on one shared server; the tests that stop or cut the
//! server start one of their own.
#![allow(missing_docs)]

use std::sync::mpsc;
use std::time::{Duration, Instant};

use fsm_core::store::{
    Corruption, EnvelopeError, Format, Limits, MachineId, Put, Snapshot, SnapshotStore, StoreError,
};
use fsm_persist::postgres::{
    Claim, OpenError, Ownership, PostgresStore, PostgresStoreBuilder, TestServer,
};

fn id(s: &str) -> MachineId {
    MachineId::new(s).unwrap()
}

fn snap(seq: u64) -> Snapshot {
    Snapshot::new("Test", 1, seq, Format::Postcard, &seq.to_le_bytes()).unwrap()
}

/// A builder on the shared server, schema `schema`; `None` (said loudly) without PostgreSQL
/// outside CI.
fn on_shared(schema: &str) -> Option<PostgresStoreBuilder> {
    let server = TestServer::shared()?;
    Some(PostgresStore::builder(server.config()).schema(schema))
}

/// A machine id that falls in partition `p` of `store`.
fn machine_in(store: &PostgresStore, p: u32) -> MachineId {
    (0..)
        .map(|i| id(&format!("m{i}")))
        .find(|m| store.partition_of(m) == Some(p))
        .expect("some id falls in every partition")
}

/// A node with manual heartbeats (the test drives time), 8 partitions.
fn node(name: &str, lease: Duration) -> Ownership {
    Ownership::new(name)
        .partitions(8)
        .lease(lease)
        .heartbeat(None)
}

/// Repeats `f` until it returns `Some`, for at most `limit`: for conditions that need real
/// time to pass (a lease running out in the database's clock).
fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            start.elapsed() < limit,
            "condition not reached in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn only_one_node_holds_a_partition_and_every_acquisition_raises_its_epoch() {
    let Some(builder) = on_shared("own_epochs") else {
        return;
    };
    let lease = Duration::from_secs(60);
    let a = builder.clone().ownership(node("a", lease)).open().unwrap();
    let b = builder.ownership(node("b", lease)).open().unwrap();
    assert_eq!(a.held(), (0..8).map(|p| (p, 1)).collect::<Vec<_>>());
    assert!(b.held().is_empty(), "a live lease is not taken");
    assert!(b.heartbeat().unwrap().acquired.is_empty());
    let owners = a.owners().unwrap();
    assert!(owners
        .iter()
        .all(|o| o.owner.as_deref() == Some("a") && o.live && o.epoch == 1));
    // A hands over; B takes everything under new epochs; A cannot take it back.
    assert_eq!(a.release().unwrap(), 8);
    assert!(a.held().is_empty());
    let beat = b.heartbeat().unwrap();
    assert_eq!(beat.acquired, (0..8).map(|p| (p, 2)).collect::<Vec<_>>());
    assert!(a.heartbeat().unwrap().acquired.is_empty());
    // Stealing (an operator's decision) takes a live lease and raises the epoch again.
    assert_eq!(a.steal(&[3]).unwrap(), vec![(3, 3)]);
    let beat = b.heartbeat().unwrap();
    assert_eq!((beat.renewed, beat.lost.clone()), (7, vec![3]));
    let m = machine_in(&a, 3);
    assert_eq!(a.owner_epoch(&m).unwrap(), 3);
    assert!(b.owner_epoch(&m).unwrap_err().is_fenced());
}

/// Node `a` owning every partition and node `b` claiming none by itself, long leases.
fn owner_and_bystander(builder: PostgresStoreBuilder) -> (PostgresStore, PostgresStore) {
    let lease = Duration::from_secs(60);
    let a = builder.clone().ownership(node("a", lease)).open().unwrap();
    let b = builder
        .ownership(node("b", lease).claim(Claim::Nothing))
        .open()
        .unwrap();
    (a, b)
}

#[test]
fn a_write_under_a_stale_epoch_is_refused_and_changes_nothing() {
    let Some(builder) = on_shared("own_stale") else {
        return;
    };
    let (a, b) = owner_and_bystander(builder);
    let m = id("order-7");
    let p = a.partition_of(&m).unwrap();
    let other = (0..)
        .map(|i| id(&format!("other-{i}")))
        .find(|o| a.partition_of(o) != Some(p))
        .unwrap();
    a.put(&m, None, &snap(1)).unwrap();
    a.put(&other, None, &snap(1)).unwrap();
    // B takes m's partition while A still believes it owns it (paused, partitioned).
    assert_eq!(b.steal(&[p]).unwrap(), vec![(p, 2)]);
    assert_eq!(a.owner_epoch(&m).unwrap(), 1, "A has not noticed yet");
    let err = a.put(&m, Some(1), &snap(2)).unwrap_err();
    assert!(
        matches!(err, StoreError::Fenced { ref id, held: Some(1), current: Some(2) } if *id == m),
        "{err}"
    );
    assert_eq!(a.get(&m).unwrap(), snap(1), "the late write left nothing");
    // A knows now: it stops writing the partition without asking the database.
    assert!(a.owner_epoch(&m).unwrap_err().is_fenced());
    assert!(a.held().iter().all(|&(q, _)| q != p));
    // A batch touching a lost partition is refused whole.
    let (s2, s3) = (snap(2), snap(3));
    let batch = [Put::new(&other, Some(1), &s2), Put::new(&m, Some(1), &s3)];
    assert!(a.put_many(&batch).unwrap_err().is_fenced());
    assert_eq!(a.get(&other).unwrap(), snap(1), "all or nothing");
    // The new owner continues from what A acknowledged.
    b.put(&m, Some(1), &snap(2)).unwrap();
    assert_eq!(b.get(&m).unwrap(), snap(2));
}

#[test]
fn a_batch_fenced_by_the_database_names_the_stale_partition_and_writes_nothing() {
    let Some(builder) = on_shared("own_batch") else {
        return;
    };
    let (a, b) = owner_and_bystander(builder);
    let ids: Vec<MachineId> = (0..20).map(|i| id(&format!("batch-{i}"))).collect();
    let first: Vec<Snapshot> = ids.iter().map(|_| snap(1)).collect();
    let puts: Vec<Put<'_>> = ids
        .iter()
        .zip(&first)
        .map(|(m, s)| Put::new(m, None, s))
        .collect();
    a.put_many(&puts).unwrap();
    let victim = a.partition_of(&ids[5]).unwrap();
    b.steal(&[victim]).unwrap();
    let second: Vec<Snapshot> = ids.iter().map(|_| snap(2)).collect();
    let puts: Vec<Put<'_>> = ids
        .iter()
        .zip(&second)
        .map(|(m, s)| Put::new(m, Some(1), s))
        .collect();
    let err = a.put_many(&puts).unwrap_err();
    let StoreError::Fenced {
        id: named,
        held,
        current,
    } = err
    else {
        panic!("expected Fenced, got {err}");
    };
    assert_eq!(a.partition_of(&named), Some(victim));
    assert_eq!((held, current), (Some(1), Some(2)));
    for m in &ids {
        assert_eq!(
            a.get(m).unwrap().seq(),
            1,
            "{m}: nothing of the batch was written"
        );
    }
    // Without the lost partition's machines the batch goes through.
    let kept: Vec<Put<'_>> = puts
        .into_iter()
        .filter(|p| a.owner_epoch(p.id).is_ok())
        .collect();
    assert!(!kept.is_empty() && kept.len() < ids.len());
    a.put_many(&kept).unwrap();
}

#[test]
fn when_a_lease_runs_out_another_node_takes_over_and_the_old_owner_stops() {
    let Some(builder) = on_shared("own_lapse") else {
        return;
    };
    let lease = Duration::from_millis(300);
    let a = builder.clone().ownership(node("a", lease)).open().unwrap();
    // B's lease is far longer than anything this test waits for, so that on a loaded machine
    // B still holds the partitions when A asks for them at the end (with equal leases, B's
    // could run out while the test is still asserting, and A take them back).
    let b = builder
        .ownership(node("b", Duration::from_secs(600)))
        .open()
        .unwrap();
    let m = id("order-1");
    a.put(&m, None, &snap(1)).unwrap();
    assert!(b.held().is_empty());
    // A stops beating (paused). B's claims succeed once A's lease ran out in the database.
    let acquired = eventually(Duration::from_secs(10), || {
        let beat = b.heartbeat().unwrap();
        (beat.acquired.len() == 8).then_some(beat.acquired)
    });
    assert!(acquired.iter().all(|&(_, e)| e == 2));
    // A stopped by itself when its lease ran out locally, before B could take over.
    assert!(a.owner_epoch(&m).unwrap_err().is_fenced());
    // A's late write is refused by the database too (its epoch is stale).
    assert!(a.put(&m, Some(1), &snap(2)).unwrap_err().is_fenced());
    let beat = a.heartbeat().unwrap();
    assert_eq!(beat.renewed, 0);
    assert!(beat.acquired.is_empty(), "B's lease is live");
    b.put(&m, Some(1), &snap(2)).unwrap();
}

#[test]
fn a_lapsed_lease_nobody_took_is_renewed_under_the_same_epoch() {
    let Some(builder) = on_shared("own_renew") else {
        return;
    };
    let a = builder
        .ownership(node("a", Duration::from_millis(200)))
        .open()
        .unwrap();
    let m = id("order-9");
    eventually(Duration::from_secs(5), || {
        a.owner_epoch(&m).is_err().then_some(())
    });
    let beat = a.heartbeat().unwrap();
    assert_eq!(beat.renewed, 8);
    assert_eq!(
        a.owner_epoch(&m).unwrap(),
        1,
        "same epoch: nobody else wrote"
    );
    a.put(&m, None, &snap(1)).unwrap();
}

#[test]
fn the_heartbeat_thread_keeps_the_leases_alive() {
    let Some(builder) = on_shared("own_thread") else {
        return;
    };
    // Thirty beats per lease: a loaded machine delays a beat, not thirty in a row.
    let lease = Duration::from_secs(3);
    let a = builder
        .clone()
        .ownership(node("a", lease).heartbeat(Some(Duration::from_millis(100))))
        .open()
        .unwrap();
    let b = builder.ownership(node("b", lease)).open().unwrap();
    let m = id("order-3");
    let start = Instant::now();
    // Longer than a lease, A keeps its partitions and B gets none.
    while start.elapsed() < lease * 3 / 2 {
        assert!(b.heartbeat().unwrap().acquired.is_empty());
        assert_eq!(a.owner_epoch(&m).unwrap(), 1);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Dropping A releases at once: B takes over without waiting for a lease.
    drop(a);
    assert_eq!(b.heartbeat().unwrap().acquired.len(), 8);
}

#[test]
fn every_node_must_open_the_table_with_the_same_ownership_settings() {
    let Some(builder) = on_shared("own_layout") else {
        return;
    };
    let _a = builder
        .clone()
        .ownership(node("a", Duration::from_secs(60)))
        .open()
        .unwrap();
    let unfenced = builder.clone().open().unwrap_err();
    assert!(matches!(unfenced, OpenError::Layout { .. }), "{unfenced}");
    assert!(unfenced.to_string().contains("partitions=8"), "{unfenced}");
    let other = builder
        .clone()
        .ownership(node("b", Duration::from_secs(60)).partitions(16))
        .open()
        .unwrap_err();
    assert!(matches!(other, OpenError::Layout { .. }), "{other}");
    // Owner rows deleted by hand are not made again (their epochs would start over).
    let mut sql = TestServer::shared()
        .unwrap()
        .config()
        .connect(postgres::NoTls)
        .unwrap();
    sql.execute(
        "DELETE FROM own_layout.fsm_snapshots_owners WHERE partition = 5",
        &[],
    )
    .unwrap();
    let err = builder
        .clone()
        .ownership(node("c", Duration::from_secs(60)))
        .open()
        .unwrap_err();
    assert!(matches!(err, OpenError::Layout { .. }), "{err}");
    assert!(err.to_string().contains("holds 7"), "{err}");
    // And a table created without fencing cannot be fenced later.
    let plain = builder.clone().table("plain").open().unwrap();
    drop(plain);
    let err = builder
        .table("plain")
        .ownership(node("a", Duration::from_secs(60)))
        .open()
        .unwrap_err();
    assert!(matches!(err, OpenError::Layout { .. }), "{err}");
}

#[test]
fn names_and_settings_are_checked_before_any_sql_runs() {
    let Some(builder) = on_shared("own_names") else {
        return;
    };
    let err = builder
        .clone()
        .table("snap\"; DROP TABLE x; --")
        .open()
        .unwrap_err();
    assert!(
        matches!(err, OpenError::InvalidName { what: "table", .. }),
        "{err}"
    );
    let err = builder.clone().schema("Public").open().unwrap_err();
    assert!(
        matches!(err, OpenError::InvalidName { what: "schema", .. }),
        "{err}"
    );
    let err = builder.clone().pool_size(0).open().unwrap_err();
    assert!(matches!(err, OpenError::InvalidPool(_)), "{err}");
    let err = builder
        .ownership(Ownership::new("n").partitions(0))
        .open()
        .unwrap_err();
    assert!(matches!(err, OpenError::InvalidOwnership(_)), "{err}");
}

#[test]
fn corrupt_or_oversized_rows_are_refused_never_returned() {
    let Some(builder) = on_shared("own_corrupt") else {
        return;
    };
    let store = builder.clone().open().unwrap();
    let server = TestServer::shared().unwrap();
    let mut sql = server.config().connect(postgres::NoTls).unwrap();
    let (flipped, stale, big) = (id("flipped"), id("stale"), id("big"));
    store.put(&flipped, None, &snap(1)).unwrap();
    store.put(&stale, None, &snap(1)).unwrap();
    sql.execute(
        "UPDATE own_corrupt.fsm_snapshots SET snapshot = set_byte(snapshot, 20, get_byte(snapshot, 20) # 1) WHERE id = 'flipped'",
        &[],
    )
    .unwrap();
    sql.execute(
        "UPDATE own_corrupt.fsm_snapshots SET seq = 5 WHERE id = 'stale'",
        &[],
    )
    .unwrap();
    assert!(matches!(
        store.get(&flipped),
        Err(StoreError::Corrupt {
            problem: Corruption::Envelope(_),
            ..
        })
    ));
    assert!(matches!(
        store.get(&stale),
        Err(StoreError::Corrupt {
            problem: Corruption::Generation {
                expected: 5,
                found: 1
            },
            ..
        })
    ));
    let large = Snapshot::new("Test", 1, 1, Format::Postcard, &vec![7u8; 4096]).unwrap();
    store.put(&big, None, &large).unwrap();
    let small = builder.limits(Limits { max_payload: 1024 }).open().unwrap();
    assert!(matches!(
        small.get(&big),
        Err(StoreError::Corrupt {
            problem: Corruption::Envelope(EnvelopeError::TooLarge { .. }),
            ..
        })
    ));
}

#[test]
fn a_server_that_goes_away_is_unavailable_and_the_store_reconnects_when_it_returns() {
    let Some(server) = TestServer::start_or_skip("server restart test") else {
        return;
    };
    let store = PostgresStore::builder(server.config())
        .validate_idle_after(Duration::ZERO)
        .pool_timeout(Duration::from_secs(2))
        .open()
        .unwrap();
    let m = id("order-1");
    store.put(&m, None, &snap(1)).unwrap();
    server.pause().unwrap();
    // Every idle connection is checked before use: the server's absence is seen before
    // anything is sent, so nothing can have been written.
    for result in [
        store.put(&m, Some(1), &snap(2)).map(|_| ()),
        store.get(&m).map(|_| ()),
        store.ids().map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable { .. }) && err.is_retryable(),
            "{err}"
        );
    }
    server.resume().unwrap();
    store.put(&m, Some(1), &snap(2)).unwrap();
    assert_eq!(store.get(&m).unwrap(), snap(2));
}

#[test]
fn a_write_on_a_connection_the_server_dropped_is_reported_as_outcome_unknown() {
    let Some(server) = TestServer::start_or_skip("dropped connection test") else {
        return;
    };
    // No validation of idle connections: the write goes out on the dead one.
    let store = PostgresStore::builder(server.config())
        .validate_idle_after(Duration::from_secs(3600))
        .open()
        .unwrap();
    let m = id("order-1");
    store.put(&m, None, &snap(1)).unwrap();
    server.pause().unwrap();
    server.resume().unwrap();
    let err = store.put(&m, Some(1), &snap(2)).unwrap_err();
    assert!(
        matches!(err, StoreError::ConnectionLost { .. }) && err.is_outcome_unknown(),
        "{err}"
    );
    // Reading back tells the truth; the retry is decided against it.
    assert_eq!(store.get(&m).unwrap(), snap(1));
    store.put(&m, Some(1), &snap(2)).unwrap();
}

/// Starts `store.put` on another thread while `m`'s row is locked by another session, and
/// returns once the put waits for that lock, with the put's result channel and its backend
/// pid.
fn blocked_put(
    server: &TestServer,
    store: &'static PostgresStore,
    m: &MachineId,
    locker: &mut postgres::Client,
) -> (mpsc::Receiver<Result<(), StoreError>>, i32) {
    locker.batch_execute("BEGIN").unwrap();
    locker
        .execute(
            "SELECT 1 FROM fsm_snapshots WHERE id = $1 FOR UPDATE",
            &[&m.as_str()],
        )
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let target = m.clone();
    std::thread::spawn(move || {
        let _ = tx.send(store.put(&target, Some(1), &snap(2)));
    });
    let mut watcher = server.config().connect(postgres::NoTls).unwrap();
    let pid = eventually(Duration::from_secs(10), || {
        watcher
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%UPDATE%fsm_snapshots%'",
                &[],
            )
            .unwrap()
            .map(|r| r.get::<_, i32>(0))
    });
    (rx, pid)
}

#[test]
fn a_connection_cut_while_a_write_waits_is_outcome_unknown_and_reading_back_resolves_it() {
    let Some(server) = TestServer::start_or_skip("cut connection test") else {
        return;
    };
    let store: &'static PostgresStore = Box::leak(Box::new(
        PostgresStore::builder(server.config()).open().unwrap(),
    ));
    let m = id("order-1");
    store.put(&m, None, &snap(1)).unwrap();
    let mut locker = server.config().connect(postgres::NoTls).unwrap();
    let (result, pid) = blocked_put(&server, store, &m, &mut locker);
    let mut admin = server.config().connect(postgres::NoTls).unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let err = result.recv().unwrap().unwrap_err();
    assert!(err.is_outcome_unknown(), "{err}");
    assert!(matches!(err, StoreError::ConnectionLost { .. }), "{err}");
    locker.batch_execute("ROLLBACK").unwrap();
    // The store did not stop: the next call gets a fresh connection and the truth.
    assert_eq!(store.get(&m).unwrap(), snap(1));
    store.put(&m, Some(1), &snap(2)).unwrap();
}

#[test]
fn a_pool_whose_connections_all_stay_busy_answers_unavailable_in_time() {
    let Some(server) = TestServer::start_or_skip("pool exhaustion test") else {
        return;
    };
    let store: &'static PostgresStore = Box::leak(Box::new(
        PostgresStore::builder(server.config())
            .pool_size(1)
            .pool_timeout(Duration::from_millis(200))
            .open()
            .unwrap(),
    ));
    let m = id("order-1");
    store.put(&m, None, &snap(1)).unwrap();
    let mut locker = server.config().connect(postgres::NoTls).unwrap();
    let (result, _) = blocked_put(&server, store, &m, &mut locker);
    // The only connection is busy waiting for the lock: another call times out, typed.
    let started = Instant::now();
    let err = store.get(&m).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(
        err.to_string().contains("all 1 pooled connections"),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        store.connections(),
        1,
        "the pool never opens more than its size"
    );
    locker.batch_execute("ROLLBACK").unwrap();
    result.recv().unwrap().unwrap();
    assert_eq!(store.get(&m).unwrap(), snap(2));
}

#[test]
fn a_custom_connector_opens_every_connection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let Some(server) = TestServer::shared() else {
        return;
    };
    let config = server.config();
    let opened = Arc::new(AtomicUsize::new(0));
    let counter = opened.clone();
    let store = PostgresStore::builder_with(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        config.connect(postgres::NoTls)
    })
    .schema("own_connector")
    .pool_size(2)
    .open()
    .unwrap();
    let m = id("order-1");
    store.put(&m, None, &snap(1)).unwrap();
    assert_eq!(store.get(&m).unwrap(), snap(1));
    // One for creating the schema, one pooled connection for the calls since.
    assert_eq!(opened.load(Ordering::SeqCst), 1 + store.connections());
    assert_eq!(store.connections(), 1);
}

#[test]
fn partitions_released_on_purpose_move_to_another_node_and_stop_writes_here() {
    let Some(builder) = on_shared("own_move") else {
        return;
    };
    let lease = Duration::from_secs(60);
    // A keeps what it was given; B takes whatever is free.
    let a = builder
        .clone()
        .ownership(node("a", lease).claim(Claim::Only((0..8).collect())))
        .open()
        .unwrap();
    let b = builder.ownership(node("b", lease)).open().unwrap();
    assert_eq!(a.held().len(), 8);
    assert_eq!(a.release_partitions(&[0, 1, 2, 3, 42]).unwrap(), 4);
    let moved = machine_in(&a, 2);
    assert!(
        a.owner_epoch(&moved).unwrap_err().is_fenced(),
        "writes stop at once"
    );
    let beat = b.heartbeat().unwrap();
    assert_eq!(beat.acquired, vec![(0, 2), (1, 2), (2, 2), (3, 2)]);
    assert_eq!(
        a.held().iter().map(|&(p, _)| p).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    b.put(&moved, None, &snap(1)).unwrap();
    assert!(a.put(&moved, Some(1), &snap(2)).unwrap_err().is_fenced());
}
