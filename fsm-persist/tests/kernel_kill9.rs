//! End to end under kill -9: a child process runs a kernel over a store and answers the
//! commands it reads on stdin (each with an idempotency key) with acknowledgements on
//! stdout. The parent SIGKILLs it at random moments, starts it again, resubmits every command
//! not yet acknowledged with the same key, and at the end checks against a model: every
//! machine's total is exactly the sum of its commands' amounts (each applied exactly once,
//! none lost, none twice), and a key acknowledged twice was acknowledged with the same
//! sequence both times.
//!
//! It runs three times: over a file store; over a file store on the power-loss model, where
//! every kill is a power cut; and over a `PostgresStore` with ownership on a real server,
//! where every child is a new node taking the machines over from the one just killed: by
//! stealing its partitions (an operator who knows it is dead) or by waiting for its lease to
//! run out, in turns.
//!
//! The power-loss run: the child's file store does its I/O through `PowerLossIo` with a
//! journal, so nothing the child writes reaches the store's directory except through the
//! model. After the SIGKILL the parent replays the journal and writes one of the disk states
//! the cut may leave (seeded: unsynced bytes dropped, kept, in part; unsynced renames and
//! creations kept or undone), and the next child recovers from that. This is a power cut for
//! the whole process, not only for the store's calls, without a FUSE file system (none that
//! models unsynced data is packaged for Debian, and /dev/fuse needs privileges CI may lack).
//!
//! `FSM_KERNEL_KILL_CYCLES` sets the file store's cycles (default 300),
//! `FSM_POWER_KILL_CYCLES` the power-loss run's (default 150), `FSM_PG_KILL_CYCLES`
//! PostgreSQL's (default 60); `FSM_KILL_SEED` replays a run. The same binary is the child when
//! `FSM_KERNEL_CHILD` is set.
#![allow(missing_docs)]

mod child;
mod kernel_machine;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fsm_core::kernel::{Answer, IdempotencyKey, Kernel, KernelBuilder, Request, Shutdown};
use fsm_core::store::{Codec, MachineId, SnapshotStore, SnapshotStoreExt};
use fsm_persist::fault::PowerLossIo;
use fsm_persist::postgres::{Claim, Ownership, PostgresStore, TestServer};
use fsm_persist::FileStore;
use kernel_machine::{Tally, TallyCmd};

const MACHINES: u64 = 6;

fn machine(i: u64) -> MachineId {
    MachineId::new(format!("tally-{i}")).unwrap()
}

const PARTITIONS: u32 = 4;
const LEASE: Duration = Duration::from_millis(300);

/// Where the child keeps its machines.
#[derive(Clone, Debug)]
enum Backend {
    File(std::path::PathBuf),
    /// The store's directory, on the power-loss model with its journal beside it; the power
    /// may fail at a planned operation (the child then runs on until killed, its disk dead).
    PowerLoss {
        dir: std::path::PathBuf,
        cut: Option<usize>,
    },
    /// The server's socket directory and the node name; `steal` takes the partitions at once.
    Postgres {
        socket: std::path::PathBuf,
        node: String,
        steal: bool,
    },
}

impl Backend {
    fn to_env(&self) -> String {
        match self {
            Backend::File(dir) => format!("file {}", dir.display()),
            Backend::PowerLoss { dir, cut } => match cut {
                Some(cut) => format!("power {cut} {}", dir.display()),
                None => format!("power - {}", dir.display()),
            },
            Backend::Postgres {
                socket,
                node,
                steal,
            } => format!("postgres {node} {steal} {}", socket.display()),
        }
    }

    fn from_env(text: &str) -> Backend {
        let mut parts = text.splitn(4, ' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("file"), Some(dir), None, None) => Backend::File(dir.into()),
            (Some("power"), Some(cut), Some(dir), None) => Backend::PowerLoss {
                dir: dir.into(),
                cut: cut.parse().ok(),
            },
            (Some("postgres"), Some(node), Some(steal), Some(socket)) => Backend::Postgres {
                socket: socket.into(),
                node: node.to_owned(),
                steal: steal == "true",
            },
            _ => panic!("bad FSM_KERNEL_CHILD {text:?}"),
        }
    }
}

/// The PostgreSQL store of the kill test, on the server whose socket is in `socket`.
fn postgres_store(socket: &Path, ownership: Ownership) -> PostgresStore {
    let mut config = postgres::Config::new();
    config
        .host_path(socket)
        .port(5432)
        .user(fsm_persist::postgres::TEST_USER)
        .dbname("postgres");
    PostgresStore::builder(config)
        .schema("kill9")
        .ownership(ownership.partitions(PARTITIONS).lease(LEASE))
        .open()
        .expect("the PostgreSQL store opens")
}

fn kernel_builder(backend: &Backend) -> KernelBuilder<Tally> {
    let initial = |_: &MachineId| Tally::Open { total: 0 };
    match backend {
        Backend::File(dir) => fsm_persist::file_kernel(dir, initial),
        Backend::PowerLoss { dir, cut } => {
            let planned = cut.is_some();
            let mut io = PowerLossIo::new(dir)
                .and_then(|io| io.journal(journal_of(dir)))
                .expect("the power-loss model starts");
            if let Some(cut) = cut {
                io = io.cut_before(*cut);
            }
            match FileStore::builder(dir).io(io.clone()).open() {
                Ok(store) => Kernel::builder(store, initial),
                // The machine lost its power while the store recovered: nothing to serve.
                Err(_) if planned && io.is_off() => std::process::exit(POWER_FAILED_AT_START),
                Err(e) => panic!("the file store does not open on the model: {e}"),
            }
        }
        Backend::Postgres {
            socket,
            node,
            steal,
        } => {
            let store = postgres_store(
                socket,
                Ownership::new(node.clone()).heartbeat(Some(LEASE / 4)),
            );
            if *steal {
                let all: Vec<u32> = (0..PARTITIONS).collect();
                store.steal(&all).expect("stealing the partitions");
            }
            // Serve only once every machine is ours: the killed node's leases run out.
            let start = Instant::now();
            while store.held().len() < PARTITIONS as usize {
                assert!(start.elapsed() < Duration::from_secs(30), "never took over");
                std::thread::sleep(Duration::from_millis(10));
            }
            Kernel::builder(store, initial)
        }
    }
}

/// The exit status of a power-loss child whose power failed before its store opened.
const POWER_FAILED_AT_START: i32 = 3;

/// Where the power-loss child journals its I/O: beside the store's directory, not in it.
fn journal_of(dir: &Path) -> std::path::PathBuf {
    dir.with_extension("journal")
}

/// After a power-loss child is gone (killed or exited): the disk state its cut leaves,
/// chosen by `seed`, written over the store's directory, and the journal removed. Returns
/// what was not durable (nothing, if the child died before it started its journal).
fn power_cut(dir: &Path, seed: u64) -> fsm_persist::fault::Outcome {
    let journal = journal_of(dir);
    if !journal.exists() {
        return fsm_persist::fault::Outcome::default();
    }
    let io = PowerLossIo::replay(dir, &journal).expect("replaying the child's journal");
    let outcome = io.restart(seed).expect("writing the image");
    std::fs::remove_file(&journal).unwrap();
    outcome
}

/// The child: a kernel over `backend`; reads `<machine> <key> <amount>` lines, answers
/// `ack <key> <seq> <duplicate>` or `err <key> <why>` in the order it submitted.
fn child(backend: &Backend) {
    let kernel = kernel_builder(backend)
        .shards(2)
        .idempotency_window(512)
        .start()
        .expect("the kernel starts");
    let (tx, rx) = mpsc::channel::<(String, fsm_core::queue::Ticket<Answer>)>();
    let acker = std::thread::spawn(move || {
        let mut out = std::io::stdout().lock();
        for (key, ticket) in rx {
            match ticket.wait() {
                Ok(c) => writeln!(out, "ack {key} {} {}", c.seq, c.duplicate),
                Err(e) => writeln!(out, "err {key} {e}"),
            }
            .unwrap();
            out.flush().unwrap();
        }
    });
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let mut parts = line.split(' ');
        let (Some(m), Some(key), Some(amount)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("bad line {line:?}");
        };
        let request = Request::new(TallyCmd::Add {
            amount: amount.parse().unwrap(),
        })
        .with_key(IdempotencyKey::new(key).unwrap());
        let ticket = kernel
            .submit(&MachineId::new(m).unwrap(), request)
            .unwrap_or_else(|e| panic!("submit refused: {e}"));
        tx.send((key.to_owned(), ticket)).unwrap();
    }
    drop(tx);
    acker.join().unwrap();
    kernel.shutdown(Shutdown::Drain);
}

struct Model {
    /// Every command ever sent: key -> (machine, amount).
    sent: BTreeMap<String, (u64, u64)>,
    /// Keys not yet acknowledged.
    pending: BTreeMap<String, (u64, u64)>,
    /// Key -> the sequence it was acknowledged with.
    acked: HashMap<String, u64>,
    duplicates: u64,
    acks: u64,
    errors: u64,
}

impl Model {
    fn record(&mut self, line: &str, cycle: usize) {
        let mut parts = line.splitn(4, ' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ack"), Some(key), Some(seq), Some(dup)) => {
                let seq: u64 = seq.parse().unwrap();
                self.acks += 1;
                if dup == "true" {
                    self.duplicates += 1;
                }
                if let Some(first) = self.acked.insert(key.to_owned(), seq) {
                    assert_eq!(
                        first, seq,
                        "cycle {cycle}: key {key} acknowledged at seq {first}, later at {seq}"
                    );
                }
                self.pending.remove(key);
            }
            (Some("err"), Some(_key), _, _) => self.errors += 1,
            _ => panic!("cycle {cycle}: unexpected line {line:?}"),
        }
    }
}

fn spawn(backend: &Backend) -> (std::process::Child, mpsc::Receiver<String>) {
    child::spawn(&[("FSM_KERNEL_CHILD", backend.to_env().as_ref())])
}

fn send(child: &mut std::process::Child, commands: &BTreeMap<String, (u64, u64)>) -> usize {
    let mut text = String::new();
    for (key, (m, amount)) in commands {
        text.push_str(&format!("{} {key} {amount}\n", machine(*m)));
    }
    child::write(child, &text);
    commands.len()
}

fn main() {
    if let Ok(backend) = std::env::var("FSM_KERNEL_CHILD") {
        child(&Backend::from_env(&backend));
        return;
    }
    let cycles = |var: &str, default: usize| {
        std::env::var(var).map_or(default, |v| v.parse().expect("a number of cycles"))
    };
    let seed: u64 = std::env::var("FSM_KILL_SEED").map_or_else(
        |_| fastrand::u64(..),
        |v| v.parse().expect("FSM_KILL_SEED is a number"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    run(
        "file store",
        cycles("FSM_KERNEL_KILL_CYCLES", 300),
        seed,
        |_| Backend::File(path.clone()),
        || Box::new(FileStore::open(&path).unwrap()),
        |_| {},
    );
    let power_dir = dir.path().join("power");
    std::fs::create_dir(&power_dir).unwrap();
    let mut cut_rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    let unsynced = std::cell::Cell::new((0usize, 0u64, 0usize));
    let power_cycles = cycles("FSM_POWER_KILL_CYCLES", 150);
    run(
        "file store, every kill a power cut",
        power_cycles,
        seed,
        // Every other child's power fails at a planned operation, so that the kill finds
        // unsynced data and entries more often than a kill at a random moment does (a commit's
        // write-to-fsync window is short); the others, and the last ones (which answer
        // everything left), run with the power on.
        |cycle| Backend::PowerLoss {
            dir: power_dir.clone(),
            cut: (cycle % 2 == 1 && cycle < power_cycles)
                .then(|| fastrand::Rng::with_seed(seed ^ cycle as u64).usize(0..48)),
        },
        || Box::new(FileStore::open(&power_dir).unwrap()),
        |_| {
            let outcome = power_cut(&power_dir, cut_rng.u64(..));
            let (cuts, bytes, ops) = unsynced.get();
            unsynced.set((
                cuts + 1,
                bytes + outcome.dropped_bytes,
                ops + outcome.dir_ops - outcome.dir_ops_kept,
            ));
        },
    );
    let (cuts, bytes, ops) = unsynced.get();
    println!(
        "kernel_kill9 (power loss): {cuts} power cuts dropped {bytes} unsynced bytes and undid {ops} unsynced directory operations"
    );
    assert!(
        bytes > 0 || ops > 0,
        "the power cuts never dropped anything"
    );
    let Some(server) = TestServer::start_or_skip("kernel_kill9 over PostgreSQL") else {
        return;
    };
    let socket = server.socket_dir().to_owned();
    run(
        "PostgreSQL, a new node per child",
        cycles("FSM_PG_KILL_CYCLES", 60),
        seed,
        |cycle| Backend::Postgres {
            socket: socket.clone(),
            node: format!("child-{cycle}"),
            steal: cycle % 2 == 0,
        },
        || {
            Box::new(postgres_store(
                &socket,
                Ownership::new("checker")
                    .claim(Claim::Nothing)
                    .heartbeat(None),
            ))
        },
        |_| {},
    );
}

/// `cycles` children over the backend `backend(cycle)` gives, each killed at a random moment
/// (and `after_exit` called once each is gone); then a last one answers everything left; then
/// the store `open` gives must hold every command applied exactly once.
fn run(
    name: &str,
    cycles: usize,
    seed: u64,
    backend: impl Fn(usize) -> Backend,
    open: impl Fn() -> Box<dyn SnapshotStore>,
    mut after_exit: impl FnMut(usize),
) {
    println!("kernel_kill9 ({name}): {cycles} cycles, FSM_KILL_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let mut model = Model {
        sent: BTreeMap::new(),
        pending: BTreeMap::new(),
        acked: HashMap::new(),
        duplicates: 0,
        acks: 0,
        errors: 0,
    };
    let mut next_key = 0u64;
    for cycle in 0..cycles {
        for _ in 0..rng.usize(1..40) {
            let key = format!("c{next_key}");
            let command = (rng.u64(0..MACHINES), next_key + 1);
            model.sent.insert(key.clone(), command);
            model.pending.insert(key, command);
            next_key += 1;
        }
        let (mut child, lines) = spawn(&backend(cycle));
        let batch = model.pending.clone();
        let sent = send(&mut child, &batch);
        // Kill after a random number of answers (0: while it recovers), then a random
        // extra moment, so the kill lands anywhere: in recovery, a commit, an answer.
        let wait_for = rng.usize(0..=sent);
        for _ in 0..wait_for {
            match lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => model.record(&line, cycle),
                // It exited by itself (a power-loss child whose power failed while it
                // recovered): its exit status is checked below.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("cycle {cycle}: no answer from the child: {e}"),
            }
        }
        let spin = Duration::from_micros(rng.u64(0..2000));
        let t = Instant::now();
        while t.elapsed() < spin {
            std::hint::spin_loop();
        }
        // SIGKILL; a child that already exited is reaped below.
        let _ = child.kill();
        let status = child.wait().unwrap();
        assert!(
            status
                .code()
                .is_none_or(|code| code == POWER_FAILED_AT_START),
            "cycle {cycle}: the child failed: {status}"
        );
        after_exit(cycle);
        // Answers already in the pipe were given before the kill: they count.
        for line in lines {
            model.record(&line, cycle);
        }
    }
    // A last child is not killed: it answers everything still unacknowledged.
    let mut rounds = 0;
    while !model.pending.is_empty() {
        rounds += 1;
        assert!(
            rounds < 10,
            "commands never acknowledged: {:?}",
            model.pending
        );
        let (mut child, lines) = spawn(&backend(cycles + rounds));
        let batch = model.pending.clone();
        send(&mut child, &batch);
        drop(child.stdin.take());
        for line in lines {
            model.record(&line, cycles);
        }
        assert!(child.wait().unwrap().success(), "the last child failed");
        after_exit(cycles + rounds);
    }

    // The model: every key applied exactly once.
    let store = open();
    let codec = Codec::<Tally>::new(1);
    for i in 0..MACHINES {
        let want: u64 = model
            .sent
            .values()
            .filter(|(m, _)| *m == i)
            .map(|(_, amount)| amount)
            .sum();
        let got = store
            .load(&machine(i), &codec)
            .unwrap()
            .map_or(0, |(t, _)| t.total());
        assert_eq!(
            got, want,
            "{name}, machine {i}: stored total {got}, the commands sum to {want} (seed {seed})"
        );
    }
    println!(
        "kernel_kill9 ({name}): {cycles} SIGKILL cycles, {} commands each applied exactly once, {} acknowledgements ({} duplicates answered from the journal, {} errors retried), {:.1?}",
        model.sent.len(),
        model.acks,
        model.duplicates,
        model.errors,
        started.elapsed()
    );
}
