//! The PostgreSQL store against the bare statements it is built on, side by side, on a real
//! server this bench starts (initdb + pg_ctl on a temporary directory, Unix socket, fsync
//! on). Without PostgreSQL's server binaries it says so and measures nothing.
//!
//! `cargo bench -p fsm-benches --bench postgres`
//!
//! - `postgres_put`: one 1 KiB snapshot per iteration, durable on return (one commit).
//!   `raw_versioned_upsert/1KiB` is the bare compare-and-set statement (`UPDATE .. WHERE id =
//!   $1 AND seq = $4`, prepared, autocommit) on a table of the store's layout;
//!   `postgres_store/1KiB` is `PostgresStore::put` with ownership on (the write locks its
//!   partition's owner row and checks the epoch); `postgres_store_unfenced/1KiB` without.
//! - `postgres_batch`: 100 snapshots of 1 KiB per iteration, one commit.
//!   `raw_unnest_batch/100x1KiB` is one bare `UPDATE .. FROM unnest(..)` statement
//!   (autocommit); `postgres_store_put_many/100x1KiB` is `PostgresStore::put_many` with
//!   ownership (one transaction: the fence, inserts and compare-and-set updates in one
//!   statement, all or nothing).

use criterion::{Criterion, Throughput};
use fsm_benches::raw::envelope;
use fsm_core::store::{MachineId, Put, Snapshot, SnapshotStore};
use fsm_persist::postgres::{Ownership, PostgresStore, TestServer};

const BATCH: usize = 100;

fn store(server: &TestServer, schema: &str, fenced: bool) -> PostgresStore {
    let mut builder = PostgresStore::builder(server.config()).schema(schema);
    if fenced {
        builder = builder.ownership(Ownership::new("bench"));
    }
    builder.open().unwrap()
}

/// A raw connection to a table of the store's layout (created by a store in `schema`),
/// holding rows `ids` at sequence 1.
fn raw_table(server: &TestServer, schema: &str, ids: &[MachineId]) -> postgres::Client {
    let s = store(server, schema, false);
    let first = envelope(1);
    let puts: Vec<Put<'_>> = ids.iter().map(|m| Put::new(m, None, &first)).collect();
    s.put_many(&puts).unwrap();
    drop(s);
    server.config().connect(postgres::NoTls).unwrap()
}

fn bench_put(c: &mut Criterion, server: &TestServer) {
    let mut group = c.benchmark_group("postgres_put");
    group.sample_size(30);
    group.throughput(Throughput::Elements(1));
    let id = MachineId::new("m").unwrap();

    let mut raw = raw_table(server, "bench_raw_put", std::slice::from_ref(&id));
    let update = raw
        .prepare(
            "UPDATE bench_raw_put.fsm_snapshots SET seq = $2::int8, snapshot = $3::bytea
             WHERE id = $1::text AND seq = $4::int8",
        )
        .unwrap();
    let mut seq = 1i64;
    group.bench_function("raw_versioned_upsert/1KiB", |b| {
        b.iter(|| {
            seq += 1;
            let bytes = envelope(seq as u64);
            let n = raw
                .execute(
                    &update,
                    &[&id.as_str(), &seq, &bytes.as_bytes(), &(seq - 1)],
                )
                .unwrap();
            assert_eq!(n, 1);
        })
    });

    for (name, schema, fenced) in [
        ("postgres_store/1KiB", "bench_store_put", true),
        ("postgres_store_unfenced/1KiB", "bench_plain_put", false),
    ] {
        let s = store(server, schema, fenced);
        let mut seq = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                let expected = (seq > 0).then_some(seq);
                seq += 1;
                s.put(&id, expected, &envelope(seq)).unwrap();
            })
        });
    }
    group.finish();
}

fn bench_batch(c: &mut Criterion, server: &TestServer) {
    let mut group = c.benchmark_group("postgres_batch");
    group.sample_size(30);
    group.throughput(Throughput::Elements(BATCH as u64));
    let ids: Vec<MachineId> = (0..BATCH)
        .map(|i| MachineId::new(format!("m{i}")).unwrap())
        .collect();
    let names: Vec<&str> = ids.iter().map(MachineId::as_str).collect();

    let mut raw = raw_table(server, "bench_raw_batch", &ids);
    let update = raw
        .prepare(
            "UPDATE bench_raw_batch.fsm_snapshots t SET seq = b.seq, snapshot = b.snapshot
             FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::int8[]) AS b(id, seq, snapshot, expected)
             WHERE t.id = b.id AND t.seq = b.expected",
        )
        .unwrap();
    let mut seq = 1i64;
    group.bench_function("raw_unnest_batch/100x1KiB", |b| {
        b.iter(|| {
            seq += 1;
            let snaps: Vec<Snapshot> = (0..BATCH).map(|_| envelope(seq as u64)).collect();
            let bytes: Vec<&[u8]> = snaps.iter().map(Snapshot::as_bytes).collect();
            let seqs = vec![seq; BATCH];
            let expected = vec![seq - 1; BATCH];
            let n = raw
                .execute(&update, &[&names, &seqs, &bytes, &expected])
                .unwrap();
            assert_eq!(n, BATCH as u64);
        })
    });

    for (name, schema, fenced) in [
        (
            "postgres_store_put_many/100x1KiB",
            "bench_store_batch",
            true,
        ),
        (
            "postgres_store_unfenced_put_many/100x1KiB",
            "bench_plain_batch",
            false,
        ),
    ] {
        let s = store(server, schema, fenced);
        let mut seq = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                let expected = (seq > 0).then_some(seq);
                seq += 1;
                let snaps: Vec<Snapshot> = (0..BATCH).map(|_| envelope(seq)).collect();
                let batch: Vec<Put<'_>> = ids
                    .iter()
                    .zip(&snaps)
                    .map(|(m, s)| Put::new(m, expected, s))
                    .collect();
                s.put_many(&batch).unwrap();
            })
        });
    }
    group.finish();
}

fn main() {
    let Some(server) = TestServer::shared() else {
        eprintln!("postgres bench: no PostgreSQL server binaries here, nothing was measured");
        return;
    };
    let mut c = Criterion::default().configure_from_args();
    bench_put(&mut c, server);
    bench_batch(&mut c, server);
    c.final_summary();
}
