//! Timers under kill -9: a child process runs a kernel over a file store whose machines arm,
//! re-arm and cancel named timers, and move in and out of a superstate with a deadline, as
//! the parent tells them (commands with idempotency keys on stdin, acknowledgements on
//! stdout). The parent SIGKILLs it at random moments, starts it again (time has moved on:
//! timers came due while nothing ran) and resubmits what was not acknowledged. Every machine
//! logs, in its own state, each arming, cancel, move, entry into the superstate and firing in
//! the order they were applied, so at the end the log is checked against the commands:
//!
//! - every command applied exactly once, in order (the log's commands are the commands'
//!   sequence);
//! - every firing belongs to the arming that was current for its timer when it fired: none of
//!   a cancelled or replaced arming, none twice;
//! - the superstate's deadline fires only while the machine is inside it, once per entry:
//!   moves between the states inside keep it, leaving cancels it, entering (again) arms it;
//! - nothing is lost: once the last child has run long enough, every arming that was not
//!   cancelled or replaced has fired, and every machine's last entry into the superstate has
//!   met its deadline (so a timer due while the process was down fired after recovery), each
//!   exactly once.
//!
//! `FSM_TIMER_KILL_CYCLES` sets the cycles (default 200); `FSM_KILL_SEED` replays a run. The
//! same binary is the child when `FSM_TIMER_CHILD` is set.
#![allow(missing_docs)]

mod child;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fsm_core::kernel::{Answer, IdempotencyKey, Request, Shutdown};
use fsm_core::store::{Codec, MachineId, SnapshotStoreExt};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use fsm_persist::FileStore;
use serde::{Deserialize, Serialize};

const MACHINES: u64 = 4;
const TIMERS: u32 = 3;

/// How long a machine may stay in the superstate `Open`, whatever it does inside.
const OPEN_MS: u64 = 30;

/// One entry of a machine's log (stored as a plain tuple, see `Entry::pack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Arm {
        timer: u32,
        tag: u64,
    },
    Cancel {
        timer: u32,
    },
    Ring {
        timer: u32,
        tag: u64,
    },
    /// A move between the states inside `Open` (or a no-op in `Closed`).
    Step,
    /// The machine came into `Open` (from `Closed`, or leaving it and entering it again).
    Enter,
    /// `Open`'s deadline fired.
    Close,
    /// The machine left `Open` before its deadline (or a no-op in `Closed`).
    Park,
}

impl Entry {
    /// As `(kind, timer, tag)`: plain data, so the machine's field has the test strategies
    /// every field needs when fsm-core's `proptest` and `arbitrary` features are on.
    fn pack(self) -> (u8, u32, u64) {
        match self {
            Entry::Arm { timer, tag } => (0, timer, tag),
            Entry::Cancel { timer } => (1, timer, 0),
            Entry::Ring { timer, tag } => (2, timer, tag),
            Entry::Step => (3, 0, 0),
            Entry::Enter => (4, 0, 0),
            Entry::Close => (5, 0, 0),
            Entry::Park => (6, 0, 0),
        }
    }

    fn unpack((kind, timer, tag): (u8, u32, u64)) -> Entry {
        match kind {
            0 => Entry::Arm { timer, tag },
            1 => Entry::Cancel { timer },
            2 => Entry::Ring { timer, tag },
            3 => Entry::Step,
            4 => Entry::Enter,
            5 => Entry::Close,
            _ => Entry::Park,
        }
    }
}

type Log = Vec<(u8, u32, u64)>;

/// `Board` and `Aside` are inside `Open`, which must be left within `OPEN_MS` of coming into
/// it: `Step` moves between them (the deadline holds), `Reopen` leaves `Open` and enters it
/// again (the deadline starts over), `Park` leaves it (the deadline is cancelled), `Close`
/// (the deadline) takes the machine to `Closed`, whence `Reopen` comes back. `Closed` takes
/// `Close` too, so that a deadline firing twice or after the machine left would show in the
/// log.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(
    event = Op,
    superstate(
        Open,
        initial = Board,
        state_timeout(ms = OPEN_MS => Close),
        on(Close => Closed),
        on(Park => Closed),
        on(Reopen => Open)
    )
)]
pub enum Board {
    #[fsm(initial, parent = Open, on(Arm => Board), on(Cancel => Board), on(Ring => Board), on(Step => Aside))]
    Board { log: Log },
    #[fsm(parent = Open, on(Arm => Aside), on(Cancel => Aside), on(Ring => Aside), on(Step => Board))]
    Aside { log: Log },
    #[fsm(
        on(Arm => Closed),
        on(Cancel => Closed),
        on(Ring => Closed),
        on(Step => Closed),
        on(Close => Closed),
        on(Park => Closed),
        on(Reopen => Open)
    )]
    Closed { log: Log },
}

impl Board {
    fn entries(&self) -> Vec<Entry> {
        let (Board::Board { log } | Board::Aside { log } | Board::Closed { log }) = self;
        log.iter().copied().map(Entry::unpack).collect()
    }
}

#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Arm timer `timer` (replacing its running arming) to fire after `ms`.
    Arm {
        timer: u32,
        tag: u64,
        ms: u64,
    },
    Cancel {
        timer: u32,
    },
    /// What the timers fire.
    Ring {
        timer: u32,
        tag: u64,
    },
    Step,
    Reopen,
    Park,
    /// What `Open`'s deadline fires.
    Close,
}

fn timer_name(timer: u32) -> String {
    format!("t{timer}")
}

fn logged(log: &Log, entry: Entry) -> Log {
    let mut log = log.clone();
    log.push(entry.pack());
    log
}

/// The handlers: each logs its entry; `Arm` and `Cancel` also ask for their timer.
macro_rules! handlers {
    ($($from:ident($view:ident) { $($event:ident => $to:ident),* })*) => {$($(
        impl Handler<op::$event, board::$to> for board::$from {
            fn handle(
                s: board::$view<'_>,
                e: op::$event,
                fx: &mut Effects<()>,
            ) -> Result<board::$to, Refusal> {
                Ok(board::$to {
                    log: logged(s.log, e.record(fx)),
                })
            }
        }
    )*)*};
}

handlers! {
    Board(BoardRef) { Arm => Board, Cancel => Board, Ring => Board, Step => Aside, Close => Closed, Park => Closed, Reopen => Board }
    Aside(AsideRef) { Arm => Aside, Cancel => Aside, Ring => Aside, Step => Board, Close => Closed, Park => Closed, Reopen => Board }
    Closed(ClosedRef) { Arm => Closed, Cancel => Closed, Ring => Closed, Step => Closed, Close => Closed, Park => Closed, Reopen => Board }
}

/// What an event does to the timers, and the entry it logs.
trait Record {
    fn record(self, fx: &mut Effects<()>) -> Entry;
}

impl Record for op::Arm {
    fn record(self, fx: &mut Effects<()>) -> Entry {
        let ring = Op::Ring {
            timer: self.timer,
            tag: self.tag,
        };
        fx.start_timer(timer_name(self.timer), Duration::from_millis(self.ms), ring);
        Entry::Arm {
            timer: self.timer,
            tag: self.tag,
        }
    }
}

impl Record for op::Cancel {
    fn record(self, fx: &mut Effects<()>) -> Entry {
        fx.cancel_timer(timer_name(self.timer));
        Entry::Cancel { timer: self.timer }
    }
}

impl Record for op::Ring {
    fn record(self, _: &mut Effects<()>) -> Entry {
        Entry::Ring {
            timer: self.timer,
            tag: self.tag,
        }
    }
}

impl Record for op::Step {
    fn record(self, _: &mut Effects<()>) -> Entry {
        Entry::Step
    }
}

impl Record for op::Reopen {
    fn record(self, _: &mut Effects<()>) -> Entry {
        Entry::Enter
    }
}

impl Record for op::Park {
    fn record(self, _: &mut Effects<()>) -> Entry {
        Entry::Park
    }
}

impl Record for op::Close {
    fn record(self, _: &mut Effects<()>) -> Entry {
        Entry::Close
    }
}

fn machine(i: u64) -> MachineId {
    MachineId::new(format!("board-{i}")).unwrap()
}

fn initial(_: &MachineId) -> Board {
    Board::Board { log: Vec::new() }
}

/// Whether a log leaves the machine inside `Open`.
fn open(log: &[Entry]) -> bool {
    log.iter().fold(true, |open, e| match e {
        Entry::Enter => true,
        Entry::Close | Entry::Park => false,
        _ => open,
    })
}

/// The armings a log leaves running, per timer.
fn running(log: &[Entry]) -> HashMap<u32, u64> {
    let mut armed = HashMap::new();
    for e in log {
        match *e {
            Entry::Arm { timer, tag } => {
                armed.insert(timer, tag);
            }
            Entry::Cancel { timer } => {
                armed.remove(&timer);
            }
            Entry::Ring { timer, tag } => {
                if armed.get(&timer) == Some(&tag) {
                    armed.remove(&timer);
                }
            }
            Entry::Step | Entry::Enter | Entry::Close | Entry::Park => {}
        }
    }
    armed
}

/// The child: reads `<machine> <key> arm <timer> <tag> <ms>`, `<machine> <key> cancel
/// <timer>`, `<machine> <key> step|reopen|park`, answers `ack <key> <seq>
/// <duplicate>` or `err <key> <why>`. With `FSM_TIMER_FINAL` set it stays, after stdin
/// closes, until every machine's timers have fired and every machine has left `Open`, then
/// drains.
fn child(dir: &Path) {
    let kernel = fsm_persist::file_kernel(dir, initial)
        .shards(2)
        .idempotency_window(1024)
        .timer_events()
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
        let parts: Vec<&str> = line.split(' ').collect();
        let op = match parts[2..] {
            ["arm", timer, tag, ms] => Op::Arm {
                timer: timer.parse().unwrap(),
                tag: tag.parse().unwrap(),
                ms: ms.parse().unwrap(),
            },
            ["cancel", timer] => Op::Cancel {
                timer: timer.parse().unwrap(),
            },
            ["step"] => Op::Step,
            ["reopen"] => Op::Reopen,
            ["park"] => Op::Park,
            _ => panic!("bad line {line:?}"),
        };
        let request = Request::new(op).with_key(IdempotencyKey::new(parts[1]).unwrap());
        let ticket = kernel
            .submit(&MachineId::new(parts[0]).unwrap(), request)
            .unwrap_or_else(|e| panic!("submit refused: {e}"));
        tx.send((parts[1].to_owned(), ticket)).unwrap();
    }
    drop(tx);
    acker.join().unwrap();
    if std::env::var_os("FSM_TIMER_FINAL").is_some() {
        // Liveness, not a margin: this returns as soon as everything armed has fired.
        let start = Instant::now();
        for i in 0..MACHINES {
            loop {
                let log = kernel.state(&machine(i)).unwrap().0.entries();
                let open = !log.is_empty() && open(&log);
                if running(&log).is_empty() && !open {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "machine {i}: timers armed long past their deadlines never fired: {:?}{}",
                    running(&log),
                    if open {
                        ", and Open's deadline never came"
                    } else {
                        ""
                    }
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    kernel.shutdown(Shutdown::Drain);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Arm { timer: u32, tag: u64, ms: u64 },
    Cancel { timer: u32 },
    Step,
    Reopen,
    Park,
}

fn spawn(dir: &Path, last: bool) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut vars = vec![("FSM_TIMER_CHILD", dir.as_os_str())];
    if last {
        vars.push(("FSM_TIMER_FINAL", "1".as_ref()));
    }
    child::spawn(&vars)
}

fn send(child: &mut std::process::Child, commands: &BTreeMap<String, (u64, Cmd)>) -> usize {
    let mut text = String::new();
    for (key, (m, cmd)) in commands {
        match cmd {
            Cmd::Arm { timer, tag, ms } => {
                text.push_str(&format!("{} {key} arm {timer} {tag} {ms}\n", machine(*m)))
            }
            Cmd::Cancel { timer } => {
                text.push_str(&format!("{} {key} cancel {timer}\n", machine(*m)))
            }
            Cmd::Step => text.push_str(&format!("{} {key} step\n", machine(*m))),
            Cmd::Reopen => text.push_str(&format!("{} {key} reopen\n", machine(*m))),
            Cmd::Park => text.push_str(&format!("{} {key} park\n", machine(*m))),
        }
    }
    child::write(child, &text);
    commands.len()
}

/// What the parent counts of the answers.
#[derive(Default)]
struct Tally {
    acks: u64,
    duplicates: u64,
    errors: u64,
}

fn record(line: &str, pending: &mut BTreeMap<String, (u64, Cmd)>, tally: &mut Tally) {
    let mut parts = line.splitn(4, ' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("ack"), Some(key), Some(_seq), Some(dup)) => {
            tally.acks += 1;
            if dup == "true" {
                // Applied before a kill, its answer lost: answered from the journal now.
                tally.duplicates += 1;
            }
            pending.remove(key);
        }
        (Some("err"), Some(_), _, _) => tally.errors += 1,
        _ => panic!("unexpected line {line:?}"),
    }
}

fn main() {
    if let Some(dir) = std::env::var_os("FSM_TIMER_CHILD") {
        child(&PathBuf::from(dir));
        return;
    }
    let cycles: usize = std::env::var("FSM_TIMER_KILL_CYCLES")
        .map_or(200, |v| v.parse().expect("a number of cycles"));
    let seed: u64 = std::env::var("FSM_KILL_SEED").map_or_else(
        |_| fastrand::u64(..),
        |v| v.parse().expect("FSM_KILL_SEED is a number"),
    );
    println!("timer_kill9: {cycles} cycles, FSM_KILL_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("boards");
    let started = Instant::now();
    // Keys in order (zero-padded): per machine, the kernel applies them in this order.
    let mut sent: BTreeMap<String, (u64, Cmd)> = BTreeMap::new();
    let mut pending: BTreeMap<String, (u64, Cmd)> = BTreeMap::new();
    let mut tally = Tally::default();
    let mut next = 0u64;
    for cycle in 0..=cycles {
        let last = cycle == cycles;
        if !last {
            for _ in 0..rng.usize(1..12) {
                next += 1;
                let m = rng.u64(0..MACHINES);
                let timer = rng.u32(0..TIMERS);
                // Short timers come due during a cycle or while the child is dead; a few
                // cancels and many re-armings replace running ones; moves inside `Open` and
                // entries into it race its deadline.
                let cmd = match rng.u8(0..13) {
                    0..=2 => Cmd::Cancel { timer },
                    3 | 4 => Cmd::Step,
                    5 | 6 => Cmd::Reopen,
                    7 => Cmd::Park,
                    _ => Cmd::Arm {
                        timer,
                        tag: next,
                        ms: rng.u64(1..80),
                    },
                };
                let key = format!("k{next:08}");
                sent.insert(key.clone(), (m, cmd));
                pending.insert(key, (m, cmd));
            }
        }
        let (mut child, lines) = spawn(&dir, last);
        let batch = pending.clone();
        let n = send(&mut child, &batch);
        if last {
            drop(child.stdin.take());
            for line in lines {
                record(&line, &mut pending, &mut tally);
            }
            assert!(child.wait().unwrap().success(), "the last child failed");
            assert!(pending.is_empty(), "never acknowledged: {pending:?}");
            break;
        }
        for _ in 0..rng.usize(0..=n) {
            match lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => record(&line, &mut pending, &mut tally),
                Err(e) => panic!("cycle {cycle}: no answer from the child: {e}"),
            }
        }
        // A random extra moment: the kill lands in a commit, a firing, recovery, an answer.
        let spin = Duration::from_micros(rng.u64(0..30_000));
        let t = Instant::now();
        while t.elapsed() < spin {
            std::hint::spin_loop();
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for line in lines {
            record(&line, &mut pending, &mut tally);
        }
    }

    // The logs against the commands.
    let store = FileStore::open(&dir).unwrap();
    let codec = Codec::<Board>::new(1);
    let (mut rings, mut replaced, mut closes) = (0usize, 0usize, 0usize);
    for i in 0..MACHINES {
        let log = match store.load(&machine(i), &codec).unwrap() {
            Some((board, _)) => board.entries(),
            None => Vec::new(),
        };
        let commands: Vec<Entry> = sent
            .values()
            .filter(|(m, _)| *m == i)
            .map(|(_, c)| match *c {
                Cmd::Arm { timer, tag, .. } => Entry::Arm { timer, tag },
                Cmd::Cancel { timer } => Entry::Cancel { timer },
                Cmd::Step => Entry::Step,
                Cmd::Reopen => Entry::Enter,
                Cmd::Park => Entry::Park,
            })
            .collect();
        let applied: Vec<Entry> = log
            .iter()
            .copied()
            .filter(|e| !matches!(e, Entry::Ring { .. } | Entry::Close))
            .collect();
        assert_eq!(
            applied, commands,
            "machine {i}: the armings and cancels applied are not the commands, once each, in order (seed {seed})"
        );
        let mut current: HashMap<u32, u64> = HashMap::new();
        let mut rang: HashMap<u64, usize> = HashMap::new();
        // A machine starts inside `Open`: its first command armed the deadline.
        let mut inside = true;
        for (at, e) in log.iter().enumerate() {
            match *e {
                Entry::Step => {}
                Entry::Enter => inside = true,
                Entry::Park => inside = false,
                Entry::Close => {
                    assert!(
                        inside,
                        "machine {i}, entry {at}: Open's deadline fired after the machine left Open, or twice for one entry (seed {seed})"
                    );
                    inside = false;
                    closes += 1;
                }
                Entry::Arm { timer, tag } => {
                    if current.insert(timer, tag).is_some() {
                        replaced += 1;
                    }
                }
                Entry::Cancel { timer } => {
                    current.remove(&timer);
                }
                Entry::Ring { timer, tag } => {
                    assert_eq!(
                        current.get(&timer),
                        Some(&tag),
                        "machine {i}, entry {at}: timer {timer} fired arming {tag}, which was not its current arming (cancelled, replaced or fired already) (seed {seed})"
                    );
                    current.remove(&timer);
                    *rang.entry(tag).or_default() += 1;
                    rings += 1;
                }
            }
        }
        assert!(
            current.is_empty(),
            "machine {i}: armings never fired: {current:?} (seed {seed})"
        );
        assert!(
            log.is_empty() || !inside,
            "machine {i}: its last entry into Open never met its deadline (seed {seed})"
        );
        assert!(
            rang.values().all(|&n| n == 1),
            "a firing repeated (seed {seed})"
        );
    }
    println!(
        "timer_kill9: {cycles} SIGKILL cycles, {} commands each applied exactly once ({} acknowledgements, {} of them duplicates answered from the journal, {} errors retried), {rings} timers fired exactly once each, {replaced} armings replaced before they fired, none fired after being cancelled or replaced, {closes} superstate deadlines fired once each and only inside, {:.1?}",
        sent.len(),
        tally.acks,
        tally.duplicates,
        tally.errors,
        started.elapsed()
    );
}
