//! The kill -9 loop: a child process writes snapshots with rising sequences and reports each
//! acknowledged one over a pipe; the parent SIGKILLs it at a random moment, reopens the store
//! and checks that every machine holds at least its last acknowledged sequence, verified and
//! with exactly the bytes written for it. Then the next child continues from there.
//!
//! Backends: the file store, SQLite, and PostgreSQL (on a server the test starts; the child is
//! the client that dies, the server keeps what it acknowledged).
//!
//! `FSM_KILL_CYCLES` sets the cycles per backend (default 200; CI runs the default, 10000 for
//! a long soak). `FSM_KILL_SEED` replays a run. The same binary is the child when
//! `FSM_KILL_CHILD` is set.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fsm_core::store::{MachineId, Put, Snapshot, SnapshotStore};
use fsm_persist::conformance::snapshot;
use fsm_persist::postgres::{PostgresStore, TestServer};
use fsm_persist::{FileStore, SqliteStore};

const MACHINES: usize = 8;
const LEN: usize = 1024;

fn machine(i: usize) -> MachineId {
    MachineId::new(format!("k{i}")).unwrap()
}

fn open(backend: &str, dir: &Path) -> Box<dyn SnapshotStore> {
    match backend {
        "file" => Box::new(FileStore::open(dir).unwrap()),
        "sqlite" => Box::new(SqliteStore::open(dir.join("store.db")).unwrap()),
        // `dir` is the server's socket directory.
        "postgres" => {
            let mut config = postgres::Config::new();
            config
                .host_path(dir)
                .port(5432)
                .user(fsm_persist::postgres::TEST_USER)
                .dbname("postgres");
            Box::new(
                PostgresStore::builder(config)
                    .schema("kill9_store")
                    .open()
                    .unwrap(),
            )
        }
        other => panic!("unknown backend {other}"),
    }
}

/// The child: continues every machine from what the store holds, forever, alternating single
/// puts and batches over all machines, printing `<machine> <seq>` after each acknowledgement.
fn child(backend: &str, dir: &Path) -> ! {
    let store = open(backend, dir);
    let ids: Vec<MachineId> = (0..MACHINES).map(machine).collect();
    let mut seqs: Vec<Option<u64>> = ids.iter().map(|m| store.sequence(m).unwrap()).collect();
    let mut out = std::io::stdout().lock();
    let mut round = 0usize;
    loop {
        round += 1;
        if round % 2 == 0 {
            let i = round / 2 % MACHINES;
            let next = seqs[i].unwrap_or(0) + 1;
            store
                .put(&ids[i], seqs[i], &snapshot(ids[i].as_str(), next, LEN))
                .unwrap();
            seqs[i] = Some(next);
            writeln!(out, "{i} {next}").unwrap();
        } else {
            let snaps: Vec<Snapshot> = ids
                .iter()
                .zip(&seqs)
                .map(|(m, s)| snapshot(m.as_str(), s.unwrap_or(0) + 1, LEN))
                .collect();
            let batch: Vec<Put<'_>> = ids
                .iter()
                .zip(&seqs)
                .zip(&snaps)
                .map(|((m, s), snap)| Put::new(m, *s, snap))
                .collect();
            store.put_many(&batch).unwrap();
            for (i, s) in seqs.iter_mut().enumerate() {
                *s = Some(s.unwrap_or(0) + 1);
                writeln!(out, "{i} {}", s.unwrap()).unwrap();
            }
        }
        out.flush().unwrap();
    }
}

/// One backend's loop over the store in `dir`; returns (cycles, acknowledgements seen).
fn parent(backend: &str, dir: &Path, cycles: usize, rng: &mut fastrand::Rng) -> (usize, u64) {
    let mut acked: HashMap<usize, u64> = HashMap::new();
    let mut total_acks = 0u64;
    for cycle in 0..cycles {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("FSM_KILL_CHILD", backend)
            .env("FSM_KILL_DIR", dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill after a random number of acknowledgements (0 kills it while it opens the
        // store), then after a random extra delay, so the kill lands anywhere in a write.
        let wait_for = rng.usize(0..24);
        let mut seen = 0;
        while seen < wait_for {
            match lines.next() {
                Some(line) => {
                    record(&mut acked, &line.unwrap());
                    seen += 1;
                }
                None => panic!("cycle {cycle}: the child died on its own"),
            }
        }
        let spin = Duration::from_micros(rng.u64(0..3000));
        let start = Instant::now();
        while start.elapsed() < spin {
            std::hint::spin_loop();
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acknowledgements already in the pipe were given before the kill: they count.
        for line in lines {
            record(&mut acked, &line.unwrap());
            seen += 1;
        }
        total_acks += seen as u64;
        let store = open(backend, dir);
        for i in 0..MACHINES {
            let m = machine(i);
            let Some(&want) = acked.get(&i) else { continue };
            let got = store.get(&m).unwrap_or_else(|e| {
                panic!("{backend} cycle {cycle}: {m} acknowledged at {want}, get failed: {e}")
            });
            assert!(
                got.seq() >= want,
                "{backend} cycle {cycle}: {m} lost acknowledged {want}, holds {}",
                got.seq()
            );
            assert_eq!(
                got,
                snapshot(m.as_str(), got.seq(), LEN),
                "{backend} cycle {cycle}: {m} bytes"
            );
            // What the next child will continue from.
            acked.insert(i, got.seq());
        }
    }
    (cycles, total_acks)
}

fn record(acked: &mut HashMap<usize, u64>, line: &str) {
    let (i, seq) = line.split_once(' ').expect("`<machine> <seq>`");
    let (i, seq): (usize, u64) = (i.parse().unwrap(), seq.parse().unwrap());
    let entry = acked.entry(i).or_insert(0);
    *entry = (*entry).max(seq);
}

fn main() {
    if let Ok(backend) = std::env::var("FSM_KILL_CHILD") {
        let dir = std::env::var("FSM_KILL_DIR").expect("FSM_KILL_DIR");
        child(&backend, Path::new(&dir));
    }
    let cycles: usize = std::env::var("FSM_KILL_CYCLES")
        .map_or(200, |v| v.parse().expect("FSM_KILL_CYCLES is a number"));
    let seed: u64 = std::env::var("FSM_KILL_SEED").map_or_else(
        |_| fastrand::u64(..),
        |v| v.parse().expect("FSM_KILL_SEED is a number"),
    );
    println!("kill9: {cycles} cycles per backend, FSM_KILL_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let server = TestServer::start_or_skip("kill9 over PostgreSQL");
    for backend in ["file", "sqlite", "postgres"] {
        let dir = tempfile::tempdir().unwrap();
        let dir = match (backend, &server) {
            ("postgres", Some(server)) => server.socket_dir(),
            ("postgres", None) => continue,
            _ => dir.path(),
        };
        let start = Instant::now();
        let (cycles, acks) = parent(backend, dir, cycles, &mut rng);
        println!(
            "kill9 {backend}: {cycles} SIGKILL cycles, {acks} acknowledged writes checked, {:.1?}",
            start.elapsed()
        );
    }
}
