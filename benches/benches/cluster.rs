//! The cluster's inbox against the direct path and the raw database limit, side by side, on
//! a real PostgreSQL server this bench starts (fsync on). Without PostgreSQL's server binaries
//! it says so and measures nothing.
//!
//! `cargo bench -p fsm-benches --bench cluster`
//!
//! Each iteration is one command for each of 256 accounts:
//! - `raw_inbox_limit/256`: the least the database must do for them, on a bare connection:
//!   one transaction that inserts the 256 commands (one `INSERT .. FROM unnest`) and writes
//!   the 256 snapshots (one `UPDATE .. FROM unnest`).
//! - `direct/256`: today's path: the commands submitted to the owner's kernel
//!   (`submit_batch`) with idempotency keys, one group commit over a fenced store, every
//!   answer waited for.
//! - `inbox/256`: submitted by a client that owns nothing (`Inbox::submit_many`, one
//!   statement), read by the owner node's pump, applied by its kernel, each decision recorded
//!   in the inbox, and every ticket's answer waited for.
//! - `inbox/256_behind_a_backlog`: the same as `inbox/256` while 65,536 commands wait in the
//!   inbox for a partition nobody owns (as when its node is down): a backlog in one
//!   partition should cost the others' commands nothing.
//!
//! - `direct/1024`, `direct/4x256` and `inbox/4x256`: the same for 1,024 accounts: in one
//!   batch to the owner; from 4 threads at once (256 accounts each) to the owner; through the
//!   inbox from 4 clients at once, which the owner node reads, applies and records in a
//!   pipeline. `inbox/4x256` against `direct/4x256` is the like-for-like throughput ratio.
//!
//! After the measurements it prints the machine's CPU time per command (from /proc/stat), and
//! how much of it was this process's (the kernel, the node and the clients; the rest is the
//! server's), for the raw limit, `direct/4x256` and `inbox/4x256`; the inbox's throughput as
//! a share of the direct path's from 200 pairs of their rounds run back to back (the goal's
//! ratio, with the spread of the pairs); and
//! the inbox's submit-to-answer latency, p50 and p99, for batches of 256 and for single
//! commands.
//!
//! As in the `postgres` bench, each function runs its operation alternately with the raw
//! baseline's, timing only its own, so both sides of every ratio meet the same disk moments.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Bencher, Criterion, Throughput};
use fsm_core::kernel::{IdempotencyKey, Kernel, Request};
use fsm_core::store::{Codec, MachineId};
use fsm_examples::cluster::{Account, Ledger};
use fsm_persist::postgres::{
    Claim, Inbox, InboxCommand, Node, NodeBuilder, Ownership, PostgresStore, TestServer,
};
use hdrhistogram::Histogram;

const N: usize = 256;
/// Concurrent submitters in the `*/4x256` functions.
const CLIENTS: usize = 4;
const WAIT: Duration = Duration::from_secs(120);
/// Alternated pairs of `direct/4x256` and `inbox/4x256` rounds for the printed ratio.
const PAIRS: usize = 200;

fn ids() -> Vec<MachineId> {
    (0..N * CLIENTS)
        .map(|i| MachineId::new(format!("acct-{i}")).unwrap())
        .collect()
}

fn store(server: &TestServer, schema: &str, node: &str) -> Arc<PostgresStore> {
    Arc::new(
        PostgresStore::builder(server.config())
            .schema(schema)
            .ownership(Ownership::new(node).partitions(16).claim(Claim::Free))
            .open()
            .unwrap(),
    )
}

fn kernel(store: Arc<PostgresStore>) -> Kernel<Account> {
    Kernel::builder_shared(store, |_| Account::Open { total: 0 })
        .codec(Codec::new(1))
        // One inbox command in flight per machine: a few keys per machine suffice.
        .idempotency_window(4)
        .shards(1)
        .start()
        .unwrap()
}

/// The raw limit: a bare connection, an inbox-like table and a snapshot table.
struct Raw {
    client: postgres::Client,
    insert: postgres::Statement,
    update: postgres::Statement,
    ids: Vec<String>,
    n: u64,
}

impl Raw {
    fn new(server: &TestServer) -> Raw {
        let mut client = server.config().connect(postgres::NoTls).unwrap();
        client
            .batch_execute(
                "CREATE SCHEMA IF NOT EXISTS bench_raw;
                 CREATE TABLE IF NOT EXISTS bench_raw.inbox (id bigserial PRIMARY KEY, machine text NOT NULL,
                     partition int NOT NULL, key text NOT NULL, event text NOT NULL,
                     submitted_at timestamptz NOT NULL DEFAULT clock_timestamp(), status text,
                     UNIQUE (machine, key));
                 CREATE TABLE IF NOT EXISTS bench_raw.snapshots (id text PRIMARY KEY, seq bigint NOT NULL, snapshot bytea NOT NULL);",
            )
            .unwrap();
        let ids: Vec<String> = (0..N).map(|i| format!("acct-{i}")).collect();
        client
            .execute(
                "INSERT INTO bench_raw.snapshots SELECT unnest($1::text[]), 1, '\\x00' ON CONFLICT DO NOTHING",
                &[&ids],
            )
            .unwrap();
        let insert = client
            .prepare(
                "INSERT INTO bench_raw.inbox (machine, partition, key, event)
                 SELECT * FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[])",
            )
            .unwrap();
        let update = client
            .prepare(
                "UPDATE bench_raw.snapshots s SET seq = s.seq + 1, snapshot = u.snap
                 FROM unnest($1::text[], $2::bytea[]) AS u(id, snap) WHERE s.id = u.id",
            )
            .unwrap();
        Raw {
            client,
            insert,
            update,
            ids,
            n: 0,
        }
    }

    fn batch(&mut self) {
        self.n += 1;
        let parts: Vec<i32> = (0..N as i32).map(|i| i % 16).collect();
        let keys: Vec<String> = (0..N).map(|i| format!("r{}-{i}", self.n)).collect();
        let events: Vec<String> = (0..N)
            .map(|_| r#"{"Add":{"amount":1}}"#.to_owned())
            .collect();
        let snaps: Vec<Vec<u8>> = (0..N).map(|_| vec![0_u8; 48]).collect();
        let mut tx = self.client.transaction().unwrap();
        tx.execute(&self.insert, &[&self.ids, &parts, &keys, &events])
            .unwrap();
        tx.execute(&self.update, &[&self.ids, &snaps]).unwrap();
        tx.commit().unwrap();
    }
}

/// Times `timed` only, running `other` before each of its iterations.
fn alternating(b: &mut Bencher<'_>, timed: &mut dyn FnMut(), other: &mut dyn FnMut()) {
    b.iter_custom(|iters| fsm_benches::alternate(iters, timed, other));
}

struct Inboxed {
    client: Inbox,
    _owner: Node<Account>,
    ids: Vec<MachineId>,
    n: u64,
}

impl Inboxed {
    fn new(server: &TestServer) -> Inboxed {
        let s = store(server, "bench_inbox", "owner");
        let owner = NodeBuilder::new().start(kernel(s.clone()), s).unwrap();
        let client = Inbox::builder(server.config())
            .schema("bench_inbox")
            .open()
            .unwrap();
        Inboxed {
            client,
            _owner: owner,
            ids: ids(),
            n: 0,
        }
    }

    fn batch(&mut self, size: usize) {
        self.n += 1;
        submit_and_wait(&self.client, &self.ids[..size], &format!("i{}", self.n));
    }

    /// `CLIENTS` submitters at once, each with `N` accounts of its own.
    fn concurrent(&mut self) {
        self.n += 1;
        let n = self.n;
        let client = &self.client;
        std::thread::scope(|s| {
            for (c, ids) in self.ids.chunks(N).enumerate() {
                s.spawn(move || submit_and_wait(client, ids, &format!("c{n}-{c}")));
            }
        });
    }
}

/// The inbox with a backlog: 65,536 commands wait for machines of a partition nobody owns
/// (its node is down), while commands for the other partitions are submitted and applied as
/// in `inbox/256`. What waits in one partition should cost the others nothing.
struct Backlogged {
    client: Inbox,
    _owner: Node<Account>,
    ids: Vec<MachineId>,
    n: u64,
}

/// The commands waiting in `Backlogged`, and the partition they wait in.
const BACKLOG: usize = 65_536;
const STUCK: u32 = 15;

impl Backlogged {
    fn new(server: &TestServer) -> Backlogged {
        let schema = "bench_backlog";
        let s = Arc::new(
            PostgresStore::builder(server.config())
                .schema(schema)
                .ownership(
                    Ownership::new("owner")
                        .partitions(16)
                        .claim(Claim::Only((0..16).filter(|&p| p != STUCK).collect())),
                )
                .open()
                .unwrap(),
        );
        let owner = NodeBuilder::new().start(kernel(s.clone()), s).unwrap();
        let client = Inbox::builder(server.config())
            .schema(schema)
            .limit(BACKLOG as u64)
            .open()
            .unwrap();
        let partition = |m: &MachineId| fsm_persist::postgres::partition_of(m, 16);
        let stuck: Vec<MachineId> = (0..)
            .map(|i| MachineId::new(format!("stuck-{i}")).unwrap())
            .filter(|m| partition(m) == STUCK)
            .take(256)
            .collect();
        let backlog = (0..BACKLOG)
            .map(|i| {
                InboxCommand::new(
                    stuck[i % stuck.len()].clone(),
                    IdempotencyKey::new(format!("b{i}")).unwrap(),
                    &Ledger::Add { amount: 1 },
                )
                .unwrap()
            })
            .collect();
        for r in client.submit_many(backlog) {
            // Never decided while the bench runs: the ticket is not waited for.
            drop(r.unwrap());
        }
        let ids = ids()
            .into_iter()
            .filter(|m| partition(m) != STUCK)
            .take(N)
            .collect();
        Backlogged {
            client,
            _owner: owner,
            ids,
            n: 0,
        }
    }

    fn batch(&mut self) {
        self.n += 1;
        submit_and_wait(&self.client, &self.ids, &format!("i{}", self.n));
    }
}

fn submit_and_wait(client: &Inbox, ids: &[MachineId], tag: &str) {
    let commands = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            InboxCommand::new(
                id.clone(),
                IdempotencyKey::new(format!("{tag}-{i}")).unwrap(),
                &Ledger::Add { amount: 1 },
            )
            .unwrap()
        })
        .collect();
    let tickets: Vec<_> = client
        .submit_many(commands)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for t in tickets {
        assert!(t.wait(WAIT).unwrap().is_applied());
    }
}

/// Today's path: one `submit_batch` to the owner's kernel, every answer waited for. With keys,
/// as a careful client submits to the owner (to retry after `Fenced`).
fn direct_submit(direct: &Kernel<Account>, ids: &[MachineId], tag: &str) {
    let tickets = direct.submit_batch(ids.iter().enumerate().map(|(i, id)| {
        let key = IdempotencyKey::new(format!("{tag}-{i}")).unwrap();
        (
            id.clone(),
            Request::new(Ledger::Add { amount: 1 }).with_key(key),
        )
    }));
    for t in tickets {
        t.unwrap().wait().unwrap();
    }
}

/// `CLIENTS` threads at once, each submitting `N` of `ids` to the owner directly.
fn direct_concurrent(direct: &Kernel<Account>, ids: &[MachineId], tag: &str) {
    std::thread::scope(|s| {
        for (c, ids) in ids.chunks(N).enumerate() {
            s.spawn(move || direct_submit(direct, ids, &format!("{tag}-{c}")));
        }
    });
}

fn bench(c: &mut Criterion) {
    let Some(server) = TestServer::start_or_skip("the cluster bench") else {
        return;
    };
    let mut raw = Raw::new(&server);
    let direct_store = store(&server, "bench_direct", "direct");
    let direct = kernel(direct_store);
    let direct_ids = ids();
    let mut inboxed = Inboxed::new(&server);
    let mut backlogged = Backlogged::new(&server);
    let mut round = 0_u64;
    let mut direct_round = 0_u64;
    let mut direct_batch = |size: usize| {
        round += 1;
        direct_submit(&direct, &direct_ids[..size], &format!("d{round}"));
    };

    let mut group = c.benchmark_group("cluster");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(20);
    group.bench_function("raw_inbox_limit/256", |b| {
        let mut other = || inboxed.batch(N);
        alternating(b, &mut || raw.batch(), &mut other)
    });
    group.bench_function("direct/256", |b| {
        alternating(b, &mut || direct_batch(N), &mut || raw.batch())
    });
    group.bench_function("inbox/256", |b| {
        let mut timed = || inboxed.batch(N);
        alternating(b, &mut timed, &mut || raw.batch())
    });
    group.bench_function("inbox/256_behind_a_backlog", |b| {
        let mut timed = || backlogged.batch();
        alternating(b, &mut timed, &mut || raw.batch())
    });
    group.throughput(Throughput::Elements((N * CLIENTS) as u64));
    group.bench_function("direct/1024", |b| {
        alternating(b, &mut || direct_batch(N * CLIENTS), &mut || raw.batch())
    });
    group.bench_function("direct/4x256", |b| {
        let mut timed = || {
            direct_round += 1;
            direct_concurrent(&direct, &direct_ids, &format!("dc{direct_round}"));
        };
        alternating(b, &mut timed, &mut || raw.batch())
    });
    group.bench_function("inbox/4x256", |b| {
        let mut timed = || inboxed.concurrent();
        alternating(b, &mut timed, &mut || raw.batch())
    });
    group.finish();

    // The machine's CPU time per command on each path (this process and the server
    // together, read from /proc/stat): with PostgreSQL on the same cores every path spends
    // the same two cores, so this says what each command costs them, and it varies less
    // between runs than the throughput itself on a shared machine.
    let cpu_row = |name: &str, per_round: usize, round: &mut dyn FnMut()| {
        let Some(before) = fsm_benches::cpu::machine_busy_seconds() else {
            return;
        };
        let ours_before = fsm_benches::cpu::process_seconds();
        let start = Instant::now();
        let mut rounds = 0;
        while start.elapsed() < Duration::from_secs(3) {
            round();
            rounds += 1;
        }
        if let Some(after) = fsm_benches::cpu::machine_busy_seconds() {
            let ours = fsm_benches::cpu::process_seconds() - ours_before;
            let all = after - before;
            let per = |s: f64| s * 1e6 / (rounds * per_round) as f64;
            println!(
                "cluster: {name}: {:.1} µs of CPU per command: this process {:.1}, the server and the rest of the machine {:.1} ({} commands)",
                per(all),
                per(ours),
                per(all - ours),
                rounds * per_round
            );
        }
    };
    cpu_row("raw_inbox_limit/256", N, &mut || raw.batch());
    cpu_row("direct/4x256", N * CLIENTS, &mut || {
        direct_round += 1;
        direct_concurrent(&direct, &direct_ids, &format!("dcpu{direct_round}"));
    });
    cpu_row("inbox/4x256", N * CLIENTS, &mut || inboxed.concurrent());

    // The goal's ratio, measured in pairs: a round of `direct/4x256` and a round of
    // `inbox/4x256` back to back (which goes first alternates), so both sides of each pair
    // meet the same moment of the disk and the machine. Criterion measures the two one after
    // the other, minutes apart, and on a shared machine the direct path's own interval can
    // span a third of its value; the spread of the pairs' ratios says how far the ratio
    // itself can be trusted.
    let mut ratios = Vec::new();
    let (mut direct_total, mut inbox_total) = (Duration::ZERO, Duration::ZERO);
    for pair in 0..PAIRS {
        let mut time_direct = || {
            direct_round += 1;
            let start = Instant::now();
            direct_concurrent(&direct, &direct_ids, &format!("dp{direct_round}"));
            start.elapsed()
        };
        let (d, i) = if pair % 2 == 0 {
            let d = time_direct();
            let start = Instant::now();
            inboxed.concurrent();
            (d, start.elapsed())
        } else {
            let start = Instant::now();
            inboxed.concurrent();
            let i = start.elapsed();
            (time_direct(), i)
        };
        direct_total += d;
        inbox_total += i;
        ratios.push(d.as_secs_f64() / i.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    println!(
        "cluster: inbox/4x256 over direct/4x256 in {PAIRS} alternated pairs of rounds: {:.2} of its throughput over all pairs (inbox {:.1}k/s, direct {:.1}k/s); per pair: median {:.2}, p10 {:.2}, p90 {:.2}",
        direct_total.as_secs_f64() / inbox_total.as_secs_f64(),
        (PAIRS * N * CLIENTS) as f64 / inbox_total.as_secs_f64() / 1000.0,
        (PAIRS * N * CLIENTS) as f64 / direct_total.as_secs_f64() / 1000.0,
        at(0.5),
        at(0.1),
        at(0.9)
    );

    // Submit-to-answer latency through the inbox.
    for size in [N, 1] {
        let mut h = Histogram::<u64>::new(3).unwrap();
        let rounds = if size == 1 { 300 } else { 60 };
        for _ in 0..rounds {
            let start = Instant::now();
            inboxed.batch(size);
            h.record(start.elapsed().as_micros() as u64).unwrap();
        }
        println!(
            "cluster: inbox submit-to-answer, batches of {size}: p50 {:.1} ms, p99 {:.1} ms ({rounds} batches)",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0
        );
    }
}

criterion::criterion_group!(benches, bench);
criterion::criterion_main!(benches);
