//! Durable effects under kill -9: a child process runs a kernel over a file store whose
//! machines, on each `Bill`, owe a `Charge` (durable) and a `Note` (at most once). Two effect
//! workers call a receiver, a file each record of which is written and fdatasynced before the
//! worker answers (a payment API that keeps what it received); a charge's answer, `Charged`,
//! is fed back to the machine. Some attempts fail after the receiver got them (the response
//! was lost), so they are retried under the same key. The parent SIGKILLs the child at random
//! moments (in a commit, between a commit and its effect, between an effect and its answer,
//! in recovery) and starts it again, resubmitting what was not acknowledged. At the end:
//!
//! - every `Bill` committed had its charge reach the receiver at least once, under one key,
//!   and no charge reached it for a bill that was never committed: deduplicated by key, each
//!   charge exactly once;
//! - every committed bill's answer was applied exactly once (the machine's `charged` list is
//!   its `bills` list, as a set, without repeats), and no machine owes anything: nothing is
//!   left waiting on an effect nobody runs;
//! - no note (at most once) reached the receiver twice.
//!
//! `FSM_EFFECT_KILL_CYCLES` sets the cycles (default 300); `FSM_KILL_SEED` replays a run. The
//! same binary is the child when `FSM_EFFECT_CHILD` is set.
#![allow(missing_docs)]

mod child;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fsm_core::kernel::{
    Answer, EffectCtx, EffectError, EffectWorker, IdempotencyKey, Request, RetryPolicy, Shutdown,
};
use fsm_core::store::{Codec, MachineId, SnapshotStoreExt};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use fsm_persist::FileStore;
use serde::{Deserialize, Serialize};

const MACHINES: u64 = 5;

#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = Op, effect = Fx)]
pub enum Payer {
    #[fsm(initial, on(Bill => Payer), on(Charged => Payer))]
    Payer { bills: Vec<u32>, charged: Vec<u32> },
}

#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Bill { n: u32 },
    Charged { n: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fx {
    Charge { n: u32 },
    Note { n: u32 },
}

impl Handler<op::Bill, payer::Payer> for payer::Payer {
    fn handle(
        s: payer::PayerRef<'_>,
        e: op::Bill,
        fx: &mut Effects<Fx>,
    ) -> Result<payer::Payer, Refusal> {
        fx.push(Fx::Charge { n: e.n });
        fx.push(Fx::Note { n: e.n });
        let mut bills = s.bills.clone();
        bills.push(e.n);
        Ok(payer::Payer {
            bills,
            charged: s.charged.clone(),
        })
    }
}

impl Handler<op::Charged, payer::Payer> for payer::Payer {
    fn handle(
        s: payer::PayerRef<'_>,
        e: op::Charged,
        _: &mut Effects<Fx>,
    ) -> Result<payer::Payer, Refusal> {
        let mut charged = s.charged.clone();
        charged.push(e.n);
        Ok(payer::Payer {
            bills: s.bills.clone(),
            charged,
        })
    }
}

fn machine(i: u64) -> MachineId {
    MachineId::new(format!("payer-{i}")).unwrap()
}

fn initial(_: &MachineId) -> Payer {
    Payer::Payer {
        bills: Vec::new(),
        charged: Vec::new(),
    }
}

/// The receiver: appends `<kind> <key> <n>` and syncs it before the worker goes on; one file
/// per worker, so two workers never interleave inside a line.
struct Receiver {
    file: File,
    rng: fastrand::Rng,
}

impl EffectWorker<Payer> for Receiver {
    fn run(&mut self, ctx: &EffectCtx, effect: &Fx) -> Result<Option<Op>, EffectError> {
        let (kind, n) = match effect {
            Fx::Charge { n } => ("charge", *n),
            Fx::Note { n } => ("note", *n),
        };
        self.file
            .write_all(format!("{kind} {} {n}\n", ctx.key()).as_bytes())?;
        self.file.sync_data()?;
        // A little time between the effect and its answer, for a kill to land in.
        std::thread::sleep(Duration::from_micros(self.rng.u64(0..300)));
        match effect {
            // The call went through but its response was lost: retried, same key.
            Fx::Charge { .. } if self.rng.u8(0..5) == 0 => Err("response lost".into()),
            Fx::Charge { n } => Ok(Some(Op::Charged { n: *n })),
            Fx::Note { .. } => Ok(None),
        }
    }
}

fn receiver_file(dir: &Path, worker: usize) -> PathBuf {
    dir.join(format!("received-{worker}.log"))
}

/// The receiver's own recovery, as any log's: a kill inside a record's write (a write that
/// crosses a page boundary can be cut by SIGKILL between pages) leaves a partial last line,
/// never synced nor answered, so never received. It is cut off before the receiver appends
/// again; a partial line anywhere else is then a failure of the test's reading.
fn recover_receiver(path: &Path) {
    let Ok(text) = std::fs::read(path) else {
        return;
    };
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if keep < text.len() {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(keep as u64).unwrap();
        f.sync_all().unwrap();
    }
}

/// The child: reads `<machine> <key> <n>` lines, submits `Bill { n }` under the key, answers
/// `ack <key>` or `err <key> <why>`. With `FSM_EFFECT_FINAL` set it stays, after stdin
/// closes, until no machine owes anything, then drains.
fn child(dir: &Path) {
    let receivers = dir.to_owned();
    for worker in 0..2 {
        recover_receiver(&receiver_file(dir, worker));
    }
    let kernel = fsm_persist::file_kernel(dir.join("store"), initial)
        .shards(2)
        .idempotency_window(4096)
        .effects(2, move |worker| Receiver {
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .open(receiver_file(&receivers, worker))
                .expect("the receiver's file opens"),
            rng: fastrand::Rng::new(),
        })
        .at_most_once(|fx| matches!(fx, Fx::Note { .. }))
        .retry(
            RetryPolicy::new(Duration::from_millis(1), 2, Duration::from_millis(8), 1000).unwrap(),
        )
        .start()
        .expect("the kernel starts");
    let (tx, rx) = mpsc::channel::<(String, fsm_core::queue::Ticket<Answer>)>();
    let acker = std::thread::spawn(move || {
        let mut out = std::io::stdout().lock();
        for (key, ticket) in rx {
            match ticket.wait() {
                Ok(_) => writeln!(out, "ack {key}"),
                Err(e) => writeln!(out, "err {key} {e}"),
            }
            .unwrap();
            out.flush().unwrap();
        }
    });
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let parts: Vec<&str> = line.split(' ').collect();
        let [m, key, n] = parts[..] else {
            panic!("bad line {line:?}")
        };
        let request = Request::new(Op::Bill {
            n: n.parse().unwrap(),
        })
        .with_key(IdempotencyKey::new(key).unwrap());
        let ticket = kernel
            .submit(&MachineId::new(m).unwrap(), request)
            .unwrap_or_else(|e| panic!("submit refused: {e}"));
        tx.send((key.to_owned(), ticket)).unwrap();
    }
    drop(tx);
    acker.join().unwrap();
    if std::env::var_os("FSM_EFFECT_FINAL").is_some() {
        // Liveness, not a margin: this returns as soon as nothing is owed.
        let start = Instant::now();
        for i in 0..MACHINES {
            loop {
                let owed = kernel.owed(&machine(i)).unwrap();
                if owed.is_empty() {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "machine {i} still owes {owed:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    kernel.shutdown(Shutdown::Drain);
}

fn spawn(dir: &Path, last: bool) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut vars = vec![("FSM_EFFECT_CHILD", dir.as_os_str())];
    if last {
        vars.push(("FSM_EFFECT_FINAL", "1".as_ref()));
    }
    child::spawn(&vars)
}

/// What the receivers got: per kind, `(key, n)` for every complete line (a kill between a
/// write and its sync may leave a torn last line: not received).
/// Records of one kind: `(key, n)`.
type Records = Vec<(String, u32)>;

fn received(dir: &Path) -> (Records, Records) {
    let (mut charges, mut notes) = (Vec::new(), Vec::new());
    for worker in 0..2 {
        let mut text = String::new();
        if let Ok(mut f) = File::open(receiver_file(dir, worker)) {
            f.read_to_string(&mut text).unwrap();
        }
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let parts: Vec<&str> = line.trim_end().split(' ').collect();
            let [kind, key, n] = parts[..] else {
                panic!("a torn line inside a receiver's file: {line:?}")
            };
            let entry = (key.to_owned(), n.parse().unwrap());
            match kind {
                "charge" => charges.push(entry),
                "note" => notes.push(entry),
                _ => panic!("bad record {line:?}"),
            }
        }
    }
    (charges, notes)
}

fn main() {
    if let Some(dir) = std::env::var_os("FSM_EFFECT_CHILD") {
        child(&PathBuf::from(dir));
        return;
    }
    let cycles: usize = std::env::var("FSM_EFFECT_KILL_CYCLES")
        .map_or(300, |v| v.parse().expect("a number of cycles"));
    let seed: u64 = std::env::var("FSM_KILL_SEED").map_or_else(
        |_| fastrand::u64(..),
        |v| v.parse().expect("FSM_KILL_SEED is a number"),
    );
    println!("effect_kill9: {cycles} cycles, FSM_KILL_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let started = Instant::now();
    let mut pending: BTreeMap<String, (u64, u32)> = BTreeMap::new();
    let mut sent = 0u32;
    let (mut acks, mut errors) = (0u64, 0u64);
    for cycle in 0..=cycles {
        let last = cycle == cycles;
        if !last {
            for _ in 0..rng.usize(1..8) {
                sent += 1;
                pending.insert(format!("bill{sent:07}"), (rng.u64(0..MACHINES), sent));
            }
        }
        let (mut child, lines) = spawn(&dir, last);
        let mut text = String::new();
        for (key, (m, n)) in &pending {
            text.push_str(&format!("{} {key} {n}\n", machine(*m)));
        }
        child::write(&mut child, &text);
        let mut record = |line: String, pending: &mut BTreeMap<String, (u64, u32)>| {
            let parts: Vec<&str> = line.splitn(3, ' ').collect();
            match parts[..] {
                ["ack", key] => {
                    acks += 1;
                    pending.remove(key);
                }
                ["err", _, _] => errors += 1,
                _ => panic!("unexpected line {line:?}"),
            }
        };
        if last {
            drop(child.stdin.take());
            for line in lines {
                record(line, &mut pending);
            }
            assert!(child.wait().unwrap().success(), "the last child failed");
            assert!(pending.is_empty(), "never acknowledged: {pending:?}");
            break;
        }
        for _ in 0..rng.usize(0..=pending.len()) {
            match lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => record(line, &mut pending),
                Err(e) => panic!("cycle {cycle}: no answer from the child: {e}"),
            }
        }
        // A random extra moment: the kill lands in a commit, an effect, an answer, recovery.
        let spin = Duration::from_micros(rng.u64(0..20_000));
        let t = Instant::now();
        while t.elapsed() < spin {
            std::hint::spin_loop();
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for line in lines {
            record(line, &mut pending);
        }
    }

    // What the store committed against what the receiver got.
    let store = FileStore::open(dir.join("store")).unwrap();
    let codec = Codec::<Payer>::new(1);
    let mut billed: BTreeSet<u32> = BTreeSet::new();
    for i in 0..MACHINES {
        let Some((Payer::Payer { bills, charged }, _)) = store.load(&machine(i), &codec).unwrap()
        else {
            continue;
        };
        let once: BTreeSet<u32> = bills.iter().copied().collect();
        assert_eq!(
            once.len(),
            bills.len(),
            "machine {i}: a bill applied twice (seed {seed})"
        );
        let answered: BTreeSet<u32> = charged.iter().copied().collect();
        assert_eq!(
            answered.len(),
            charged.len(),
            "machine {i}: a charge's answer applied twice (seed {seed})"
        );
        assert_eq!(
            answered, once,
            "machine {i}: bills whose charge was never answered, or answers without a bill (seed {seed})"
        );
        billed.extend(once);
    }
    assert_eq!(
        billed.len(),
        sent as usize,
        "every bill sent was committed (seed {seed})"
    );
    let (charges, notes) = received(&dir);
    let mut key_of: HashMap<u32, String> = HashMap::new();
    for (key, n) in &charges {
        assert!(
            billed.contains(n),
            "a charge for bill {n}, which was never committed, reached the receiver (seed {seed})"
        );
        let first = key_of.entry(*n).or_insert_with(|| key.clone());
        assert_eq!(
            first, key,
            "bill {n}'s charge came under two keys (seed {seed})"
        );
    }
    let keys: BTreeSet<&String> = key_of.values().collect();
    assert_eq!(
        keys.len(),
        key_of.len(),
        "two charges shared a key (seed {seed})"
    );
    let charged: BTreeSet<u32> = key_of.keys().copied().collect();
    assert_eq!(
        charged, billed,
        "committed bills whose charge never reached the receiver (seed {seed})"
    );
    let note_keys: BTreeSet<&String> = notes.iter().map(|(k, _)| k).collect();
    assert_eq!(
        note_keys.len(),
        notes.len(),
        "an at-most-once note reached the receiver twice (seed {seed})"
    );
    println!(
        "effect_kill9: {cycles} SIGKILL cycles, {sent} bills committed once each, {} charges received ({} repeats under the same key, so {} exactly once after deduplication), every answer applied exactly once, {} of {sent} at-most-once notes received ({acks} acknowledgements, {errors} answers that were errors, resent), {:.1?}",
        charges.len(),
        charges.len() - charged.len(),
        charged.len(),
        notes.len(),
        started.elapsed()
    );
}
