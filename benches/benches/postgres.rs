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
//!   ownership (the fence, inserts and compare-and-set updates in one statement, all or
//!   nothing, one round trip); `kernel_group_commit/100machines` sends one command to each of
//!   100 machines (1 KiB of state each) through a one-shard kernel over that fenced store
//!   (`submit_batch`) and waits for every answer: the whole runtime on top (ownership check,
//!   apply, encode with the journal, the group commit, the answers).
//!
//! An fsync on this machine's virtual disk costs what the disk's mood of the minute says, and
//! criterion measures one function after the other, so each function here runs its
//! operation alternately with the baseline's (raw) or, for the baseline, with the fenced
//! store's, timing only its own: both sides of every ratio meet the same moments.

use std::time::Duration;

use criterion::{Bencher, Criterion, Throughput};
use fsm_benches::kernel::{round, Blob};
use fsm_benches::raw::envelope;
use fsm_core::kernel::{Kernel, Shutdown};
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

/// Times `timed` only, running `other` before each of its iterations.
fn alternating(b: &mut Bencher<'_>, timed: &mut dyn FnMut(), other: &mut dyn FnMut()) {
    b.iter_custom(|iters| fsm_benches::alternate(iters, timed, other));
}

/// Writes the next snapshot of each of `ids` per call: the bare statement on a raw connection
/// (`raw`), or through a store.
struct Writer {
    ids: Vec<MachineId>,
    seq: u64,
    raw: Option<(postgres::Client, postgres::Statement)>,
    store: Option<Box<dyn SnapshotStore>>,
}

impl Writer {
    fn ids(n: usize) -> Vec<MachineId> {
        (0..n)
            .map(|i| MachineId::new(format!("m{i}")).unwrap())
            .collect()
    }

    /// A raw connection to a table of the store's layout (made by a store in `schema`),
    /// holding `n` rows at sequence 1, and the bare statement for `n` rows at a time.
    fn raw(server: &TestServer, schema: &str, n: usize) -> Writer {
        let ids = Writer::ids(n);
        let s = store(server, schema, false);
        let first = envelope(1);
        let puts: Vec<Put<'_>> = ids.iter().map(|m| Put::new(m, None, &first)).collect();
        s.put_many(&puts).unwrap();
        drop(s);
        let mut client = server.config().connect(postgres::NoTls).unwrap();
        let sql = if n == 1 {
            format!(
                "UPDATE {schema}.fsm_snapshots SET seq = $2::int8, snapshot = $3::bytea
                 WHERE id = $1::text AND seq = $4::int8"
            )
        } else {
            format!(
                "UPDATE {schema}.fsm_snapshots t SET seq = b.seq, snapshot = b.snapshot
                 FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::int8[])
                     AS b(id, seq, snapshot, expected)
                 WHERE t.id = b.id AND t.seq = b.expected"
            )
        };
        let statement = client.prepare(&sql).unwrap();
        Writer {
            ids,
            seq: 1,
            raw: Some((client, statement)),
            store: None,
        }
    }

    fn store(store: PostgresStore, n: usize) -> Writer {
        Writer {
            ids: Writer::ids(n),
            seq: 0,
            raw: None,
            store: Some(Box::new(store)),
        }
    }

    fn write(&mut self) {
        let expected = (self.seq > 0).then_some(self.seq);
        self.seq += 1;
        let snaps: Vec<Snapshot> = self.ids.iter().map(|_| envelope(self.seq)).collect();
        if let Some((client, statement)) = &mut self.raw {
            let (seq, prev) = (self.seq as i64, self.seq as i64 - 1);
            let n = if let [id] = &self.ids[..] {
                let bytes = snaps[0].as_bytes();
                client.execute(statement, &[&id.as_str(), &seq, &bytes, &prev])
            } else {
                let names: Vec<&str> = self.ids.iter().map(MachineId::as_str).collect();
                let bytes: Vec<&[u8]> = snaps.iter().map(Snapshot::as_bytes).collect();
                let seqs = vec![seq; self.ids.len()];
                let prevs = vec![prev; self.ids.len()];
                client.execute(statement, &[&names, &seqs, &bytes, &prevs])
            };
            assert_eq!(n.unwrap(), self.ids.len() as u64);
            return;
        }
        let store = self.store.as_ref().expect("a writer is raw or a store");
        if let [id] = &self.ids[..] {
            store.put(id, expected, &snaps[0]).unwrap();
        } else {
            let batch: Vec<Put<'_>> = self
                .ids
                .iter()
                .zip(&snaps)
                .map(|(m, s)| Put::new(m, expected, s))
                .collect();
            store.put_many(&batch).unwrap();
        }
    }
}

/// Benchmarks `raw`, then `fenced`, then each of `others`, each alternating with the raw
/// baseline (the baseline with `fenced`).
fn pairs(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    (raw_name, raw): (&str, &mut Writer),
    (fenced_name, fenced): (&str, &mut Writer),
    others: Vec<(&str, &mut dyn FnMut())>,
) {
    group.bench_function(raw_name, |b| {
        alternating(b, &mut || raw.write(), &mut || fenced.write())
    });
    group.bench_function(fenced_name, |b| {
        alternating(b, &mut || fenced.write(), &mut || raw.write())
    });
    for (name, run) in others {
        group.bench_function(name, |b| alternating(b, run, &mut || raw.write()));
    }
}

fn bench_put(c: &mut Criterion, server: &TestServer) {
    let mut group = c.benchmark_group("postgres_put");
    group.sample_size(30);
    // A commit is ~0.2 ms and the disk's noise is ±15% over seconds: 20 s per side.
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(1));
    let mut raw = Writer::raw(server, "bench_raw_put", 1);
    let mut fenced = Writer::store(store(server, "bench_store_put", true), 1);
    let mut plain = Writer::store(store(server, "bench_plain_put", false), 1);
    pairs(
        &mut group,
        ("raw_versioned_upsert/1KiB", &mut raw),
        ("postgres_store/1KiB", &mut fenced),
        vec![("postgres_store_unfenced/1KiB", &mut || plain.write())],
    );
    group.finish();
}

fn bench_batch(c: &mut Criterion, server: &TestServer) {
    let mut group = c.benchmark_group("postgres_batch");
    group.sample_size(30);
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut raw = Writer::raw(server, "bench_raw_batch", BATCH);
    let mut fenced = Writer::store(store(server, "bench_store_batch", true), BATCH);
    let mut plain = Writer::store(store(server, "bench_plain_batch", false), BATCH);
    let kernel = Kernel::builder(store(server, "bench_kernel", true), |_| Blob::New)
        .shards(1)
        .trace_capacity(0)
        .start()
        .unwrap();
    let machines = Writer::ids(BATCH);
    round(&kernel, &machines);
    pairs(
        &mut group,
        ("raw_unnest_batch/100x1KiB", &mut raw),
        ("postgres_store_put_many/100x1KiB", &mut fenced),
        vec![
            ("postgres_store_unfenced_put_many/100x1KiB", &mut || {
                plain.write()
            }),
            ("kernel_group_commit/100machines", &mut || {
                round(&kernel, &machines)
            }),
        ],
    );
    group.finish();
    kernel.shutdown(Shutdown::Drain);
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
