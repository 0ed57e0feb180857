//! Research tool for the cluster's inbox: what a layout with one row per submitted batch would
//! cost the database, beside the raw limit, at the SQL level (no kernel, no node).
//!
//! `cargo run --release -p fsm-benches --example inbox_layout -- [SECONDS]`
//!
//! The inbox today stores a row per command and records each decision by updating that row
//! (BENCHMARKS.md, "The cluster's inbox"). The layout measured here keeps per command only what
//! idempotency needs (a row keyed by machine and key) and puts everything else in one row per
//! partition per submitted statement: the commands as arrays, their outcomes as an array that
//! the owner fills in one update per batch. Each round: 4 clients submit 256 commands each at
//! once; the owner reads the open batches, writes the 1,024 snapshots, records the outcomes;
//! the clients read their batches' outcomes. Alternated with the raw limit (the 1,024 commands
//! inserted and the snapshots written, one transaction), and both reported as the machine's CPU
//! per command (PostgreSQL on the same cores).
use fsm_persist::postgres::TestServer;
use std::time::{Duration, Instant};

const N: usize = 256;
const C: usize = 4;
const P: i32 = 16;

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let Some(server) = TestServer::start_or_skip("inbox_layout") else {
        return;
    };
    let mut admin = server.config().connect(postgres::NoTls).unwrap();
    admin.batch_execute("
        CREATE TABLE snaps (id text PRIMARY KEY, seq bigint NOT NULL, snapshot bytea NOT NULL);
        INSERT INTO snaps SELECT 'acct-'||g, 1, '\\x00' FROM generate_series(0, 1023) g;
        CREATE TABLE keys (machine text, key text, batch int8 NOT NULL, slot int4 NOT NULL, event text NOT NULL, PRIMARY KEY (machine, key));
        CREATE TABLE batches (id bigserial PRIMARY KEY, partition int NOT NULL, submitted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            machines text[] NOT NULL, keys text[] NOT NULL, events text[] NOT NULL, outcomes text[] NOT NULL, open bool NOT NULL DEFAULT true, decided_at timestamptz);
        CREATE INDEX batches_open ON batches (partition, id) WHERE open;
        CREATE TABLE rawin (id bigserial PRIMARY KEY, machine text NOT NULL, partition int NOT NULL, key text NOT NULL, event text NOT NULL,
            submitted_at timestamptz NOT NULL DEFAULT clock_timestamp(), status text, UNIQUE (machine, key));
    ").unwrap();
    let submit = "WITH input AS (
            SELECT * FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[]) WITH ORDINALITY AS u(machine, partition, key, event, ord)),
        b AS (INSERT INTO batches (partition, machines, keys, events, outcomes)
            SELECT partition, array_agg(machine ORDER BY ord), array_agg(key ORDER BY ord), array_agg(event ORDER BY ord), array_fill(NULL::text, ARRAY[count(*)::int])
            FROM input GROUP BY partition RETURNING id, partition),
        k AS (INSERT INTO keys (machine, key, batch, slot, event)
            SELECT i.machine, i.key, b.id, (row_number() OVER (PARTITION BY i.partition ORDER BY i.ord))::int4, i.event FROM input i JOIN b USING (partition) RETURNING batch)
        SELECT id, partition FROM b";
    let fetch = "SELECT id, partition, machines, keys, events FROM batches WHERE open AND partition = ANY($1::int4[]) ORDER BY id";
    let apply = "UPDATE snaps s SET seq = s.seq + 1, snapshot = u.snap FROM unnest($1::text[], $2::bytea[]) AS u(id, snap) WHERE s.id = u.id";
    let record = "UPDATE batches b SET outcomes = u.outcomes, open = false, decided_at = clock_timestamp()
        FROM (SELECT b2, array_agg(o ORDER BY s) AS outcomes FROM unnest($1::int8[], $2::int4[], $3::text[]) AS x(b2, s, o) GROUP BY b2) u WHERE b.id = u.b2";
    let answers = "SELECT id, outcomes FROM batches WHERE id = ANY($1::int8[])";
    let raw_insert = "INSERT INTO rawin (machine, partition, key, event) SELECT * FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[])";

    let ids: Vec<String> = (0..N * C).map(|i| format!("acct-{i}")).collect();
    let parts: Vec<i32> = (0..(N * C) as i32).map(|i| i % P).collect();
    let event = "{\"Add\":{\"amount\":1}}".to_owned();
    let mut round = 0u64;
    let cfg = server.config();
    let mut clients: Vec<postgres::Client> = (0..C)
        .map(|_| cfg.connect(postgres::NoTls).unwrap())
        .collect();
    let mut owner = cfg.connect(postgres::NoTls).unwrap();
    let all_parts: Vec<i32> = (0..P).collect();
    let batch_round =
        |clients: &mut Vec<postgres::Client>, owner: &mut postgres::Client, round: u64| {
            let batches: Vec<Vec<i64>> = std::thread::scope(|s| {
                let hs: Vec<_> = clients
                    .iter_mut()
                    .enumerate()
                    .map(|(c, cl)| {
                        let ids = &ids[c * N..(c + 1) * N];
                        let parts = &parts[c * N..(c + 1) * N];
                        let event = &event;
                        s.spawn(move || {
                            let keys: Vec<String> =
                                (0..N).map(|i| format!("k{round}-{c}-{i}")).collect();
                            let events: Vec<&str> = (0..N).map(|_| event.as_str()).collect();
                            let rows = cl.query(submit, &[&ids, &parts, &keys, &events]).unwrap();
                            rows.iter()
                                .map(|r| r.get::<_, i64>(0))
                                .collect::<Vec<i64>>()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let rows = owner.query(fetch, &[&all_parts]).unwrap();
            let mut mids = vec![];
            let mut bs = vec![];
            let mut slots = vec![];
            let mut outs = vec![];
            for r in &rows {
                let id: i64 = r.get(0);
                let machines: Vec<String> = r.get(2);
                let _keys: Vec<String> = r.get(3);
                let _events: Vec<String> = r.get(4);
                for (i, m) in machines.into_iter().enumerate() {
                    mids.push(m);
                    bs.push(id);
                    slots.push(i as i32 + 1);
                    // A stand-in for an outcome: status, sequence, transition.
                    outs.push("a|12|Open --Add--> Open".to_owned());
                }
            }
            let snaps: Vec<Vec<u8>> = mids.iter().map(|_| vec![0u8; 48]).collect();
            let mut tx = owner.transaction().unwrap();
            tx.execute(apply, &[&mids, &snaps]).unwrap();
            tx.commit().unwrap();
            let mut tx = owner.transaction().unwrap();
            tx.execute(record, &[&bs, &slots, &outs]).unwrap();
            tx.commit().unwrap();
            std::thread::scope(|s| {
                for (cl, b) in clients.iter_mut().zip(&batches) {
                    s.spawn(move || {
                        let r = cl.query(answers, &[b]).unwrap();
                        assert!(!r.is_empty());
                    });
                }
            });
            mids.len()
        };
    let raw_round = |owner: &mut postgres::Client, round: u64| {
        let keys: Vec<String> = (0..N * C).map(|i| format!("r{round}-{i}")).collect();
        let events: Vec<&str> = (0..N * C).map(|_| event.as_str()).collect();
        let snaps: Vec<Vec<u8>> = ids.iter().map(|_| vec![0u8; 48]).collect();
        let mut tx = owner.transaction().unwrap();
        tx.execute(raw_insert, &[&ids, &parts, &keys, &events])
            .unwrap();
        tx.execute(apply, &[&ids, &snaps]).unwrap();
        tx.commit().unwrap();
        N * C
    };
    for rep in 0..3 {
        for which in ["batch rows", "raw"] {
            let m0 = fsm_benches::cpu::machine_busy_seconds().unwrap();
            let start = Instant::now();
            let mut cmds = 0;
            while start.elapsed() < Duration::from_secs(secs) {
                round += 1;
                cmds += if which == "batch rows" {
                    batch_round(&mut clients, &mut owner, round)
                } else {
                    raw_round(&mut owner, round)
                };
            }
            let el = start.elapsed().as_secs_f64();
            let m = fsm_benches::cpu::machine_busy_seconds().unwrap() - m0;
            println!(
                "round {}, {which}: {:.0} cmds/s, {:.1} us CPU/cmd",
                rep + 1,
                cmds as f64 / el,
                m * 1e6 / cmds as f64
            );
        }
    }
}
