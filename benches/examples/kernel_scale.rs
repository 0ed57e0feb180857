//! How the kernel's throughput and latency change with its shard count, beside the raw limit
//! of the disk measured in the same run.
//!
//! ```text
//! cargo run --release -p fsm-benches --example kernel_scale -- [--max-shards N] [--seconds S]
//!     [--shards 1,2,8] [--rounds R] [--stores memory,file,sqlite] [--machines M]
//!     [--window W] [--clients C] [--lanes L]
//! ```
//!
//! For 1, 2, 4, ... N shards (default: the machine's cores, and at least 8) it runs a counter
//! machine over M machine ids (default 100,000) through a kernel over each store, for S
//! seconds per point (default 3), and prints commands per second, the ratio to the 1-shard
//! figure, and the submit-to-answer latency p50/p99 seen by the clients, with the kernel's
//! commit (persist) p99 beside it. `--shards` names the shard counts instead (the first is the
//! one the others are compared with), for example to profile one point.
//!
//! **Rounds.** On a shared or virtual machine the same point can differ by a third from one
//! run to the next, for minutes at a time, which is more than the shard count changes. With
//! `--rounds R` every store's shard counts are run R times, interleaved (forward, then
//! backward, ...), and each row shows the round with the median throughput, its ratio to the
//! 1-shard median, and the range over the rounds: a drift of the machine then reaches every
//! shard count alike instead of deciding the ratio.
//!
//! **Load.** C client threads (default: the largest shard count, at least two), each keeping a
//! window of W commands in flight (default 64) through a [`KernelHandle`]: it submits until W
//! tickets are open, then waits for the oldest and submits the next. A closed loop with a
//! window is what a service in front of the kernel looks like (each request thread waits for
//! its answer). The same clients at every shard count, so every point is offered the same
//! `C x W` commands and only the shards change (with clients per shard, a closed loop's
//! throughput is in-flight / latency, and the load, not the kernel, would grow with the
//! shards); ids are drawn uniformly, so every shard gets its share.
//!
//! **Raw limit.** The same number of threads as shards, each appending batches of 64 records
//! of 64 bytes with one fdatasync per batch: to one file per thread, and to one file shared
//! under one lock. The first is what parallel log lanes can reach, the second what one log can.
//!
//! **The store column.** For the file store: the compactions that finished during the point,
//! the time spent compacting (a compaction still under way when the point ends included: with
//! 100,000 machines one takes longer than a point), and the commits that waited for it. A point
//! that overlapped a compaction shared the cores with it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fsm_core::kernel::{Kernel, KernelBuilder, KernelHandle, Shutdown};
use fsm_core::store::{Codec, MachineId, MemoryStore, Put, Snapshot, SnapshotStore};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use fsm_persist::{FileStore, SqliteStore};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The measured machine: a counter, as small as a real machine's kernel can be.
#[derive(StateMachine, Debug, Clone, Serialize, Deserialize)]
#[fsm(event = CountCmd)]
enum Counter {
    #[fsm(initial, on(Bump => Counting))]
    Zero,
    #[fsm(on(Bump => Counting))]
    Counting { n: u64 },
}

#[derive(Event, Debug, Clone)]
enum CountCmd {
    Bump,
}

impl Handler<count_cmd::Bump, counter::Counting> for counter::Zero {
    fn handle(
        _: counter::Zero,
        _: count_cmd::Bump,
        _: &mut Effects<()>,
    ) -> Result<counter::Counting, Refusal> {
        Ok(counter::Counting { n: 1 })
    }
}

impl Handler<count_cmd::Bump, counter::Counting> for counter::Counting {
    fn handle(
        s: counter::CountingRef<'_>,
        _: count_cmd::Bump,
        _: &mut Effects<()>,
    ) -> Result<counter::Counting, Refusal> {
        Ok(counter::Counting { n: s.n + 1 })
    }
}

struct Options {
    max_shards: usize,
    /// The shard counts to run, if named (`--shards`); otherwise 1, 2, 4, ... `max_shards`.
    shards: Option<Vec<usize>>,
    /// How many interleaved rounds of every point to run (the median is reported).
    rounds: usize,
    seconds: f64,
    stores: Vec<String>,
    machines: usize,
    window: usize,
    clients: usize,
    /// The file store's log lanes (`None`: its default, one per core).
    lanes: Option<usize>,
}

fn usage(problem: &str) -> ! {
    eprintln!("kernel_scale: {problem}");
    eprintln!(
        "usage: kernel_scale [--max-shards N | --shards 1,2,8] [--rounds R] [--seconds S] \
         [--stores memory,file,sqlite] [--machines M] [--window W] [--clients C] [--lanes L]"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut o = Options {
        max_shards: cores.max(8),
        shards: None,
        rounds: 1,
        seconds: 3.0,
        stores: vec!["memory".into(), "file".into(), "sqlite".into()],
        machines: 100_000,
        window: 64,
        clients: 0,
        lanes: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--max-shards" => o.max_shards = value().parse().unwrap_or(0),
            "--shards" => {
                let list: Vec<usize> = value()
                    .split(',')
                    .map(|n| n.trim().parse().unwrap_or(0))
                    .collect();
                if list.contains(&0) {
                    usage("--shards takes a comma-separated list of whole numbers above 0");
                }
                o.shards = Some(list);
            }
            "--rounds" => o.rounds = value().parse().unwrap_or(0),
            "--seconds" => o.seconds = value().parse().unwrap_or(0.0),
            "--machines" => o.machines = value().parse().unwrap_or(0),
            "--window" => o.window = value().parse().unwrap_or(0),
            "--clients" => o.clients = value().parse().unwrap_or(0),
            "--lanes" => o.lanes = Some(value().parse().unwrap_or(0)).filter(|&n| n > 0),
            "--stores" => o.stores = value().split(',').map(str::to_owned).collect(),
            other => usage(&format!("unknown argument `{other}`")),
        }
    }
    if o.max_shards == 0 || o.machines == 0 || o.window == 0 || o.rounds == 0 || o.seconds.is_nan()
    {
        usage("--max-shards, --rounds, --machines and --window take a whole number above 0");
    }
    if let Some(list) = &o.shards {
        o.max_shards = list.iter().copied().max().unwrap_or(1);
    }
    if o.clients == 0 {
        o.clients = o.max_shards.max(2);
    }
    if o.seconds <= 0.0 {
        usage("--seconds takes a number above 0");
    }
    for s in &o.stores {
        if !["memory", "file", "sqlite"].contains(&s.as_str()) {
            usage(&format!("unknown store `{s}` (memory, file or sqlite)"));
        }
    }
    o
}

/// One point: throughput and latency of a kernel with a given shard count.
struct Point {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    commit_p99: Duration,
    /// Processor time the whole process spent per command (user and system), in
    /// microseconds: where it grows with shards, the shards cost work, not waiting.
    cpu_us: f64,
    /// What the store did meanwhile, where it says (the file store's compactions and the time
    /// spent compacting).
    note: String,
}

fn kernel_for(
    store: &str,
    dir: &Path,
    lanes: Option<usize>,
    file: &mut Option<Arc<FileStore>>,
) -> KernelBuilder<Counter> {
    let initial = |_: &MachineId| Counter::Zero;
    match store {
        "memory" => Kernel::builder(MemoryStore::new(), initial),
        "file" => {
            let mut builder = FileStore::builder(dir.join("file"));
            if let Some(lanes) = lanes {
                builder = builder.lanes(lanes);
            }
            let opened = Arc::new(builder.open().expect("opening the file store"));
            *file = Some(opened.clone());
            Kernel::builder_shared(opened, initial)
        }
        "sqlite" => Kernel::builder(
            SqliteStore::open(dir.join("kernel.sqlite")).expect("opening SQLite"),
            initial,
        ),
        _ => unreachable!("checked in options()"),
    }
}

fn run_kernel(store: &str, shards: usize, ids: &Arc<Vec<MachineId>>, o: &Options) -> Point {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut file = None;
    let kernel = kernel_for(store, dir.path(), o.lanes, &mut file)
        .shards(shards)
        .trace_capacity(0)
        .capacity(o.window * o.clients)
        .start()
        .expect("starting the kernel");
    let clients = o.clients;
    let deadline = Instant::now() + Duration::from_secs_f64(o.seconds);
    let started = Instant::now();
    let cpu_before = fsm_benches::cpu::process_seconds();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let submitter = kernel.handle();
            let ids = ids.clone();
            let window = o.window;
            std::thread::spawn(move || client(&submitter, &ids, window, deadline, c as u64))
        })
        .collect();
    let mut latency = latency_histogram();
    let mut done = 0;
    for t in threads {
        let (n, h) = t.join().expect("a client thread");
        done += n;
        latency.add(h).expect("histograms of one shape");
    }
    let elapsed = started.elapsed();
    let cpu = fsm_benches::cpu::process_seconds() - cpu_before;
    let report = kernel.shutdown(Shutdown::Drain);
    Point {
        per_second: done as f64 / elapsed.as_secs_f64(),
        p50: Duration::from_nanos(latency.value_at_quantile(0.50)),
        p99: Duration::from_nanos(latency.value_at_quantile(0.99)),
        commit_p99: report.metrics.total.persist.p99,
        cpu_us: cpu * 1e6 / done.max(1) as f64,
        note: file.map_or_else(String::new, |f| {
            let s = f.stats();
            format!(
                "{} compactions ({:.1?} compacting), {} commits waited ({:.1?})",
                s.compactions, s.compacting, s.commit_waits, s.commit_wait
            )
        }),
    }
}

/// A client: keeps `window` commands in flight until `deadline`, then waits for the rest.
/// Returns the commands answered and their submit-to-answer latencies.
fn client(
    submitter: &KernelHandle<Counter>,
    ids: &[MachineId],
    window: usize,
    deadline: Instant,
    seed: u64,
) -> (u64, Histogram<u64>) {
    let mut rng = fastrand::Rng::with_seed(0x5ca1e ^ seed);
    let mut open = VecDeque::with_capacity(window);
    let mut latency = latency_histogram();
    let mut done = 0;
    let mut answer = |(at, ticket): (Instant, fsm_core::queue::Ticket<_>)| {
        let outcome: fsm_core::kernel::Answer = ticket.wait();
        outcome.expect("every bump commits");
        latency.saturating_record(at.elapsed().as_nanos() as u64);
        done += 1;
    };
    while Instant::now() < deadline {
        while open.len() < window {
            let id = &ids[rng.usize(..ids.len())];
            let ticket = submitter
                .submit(id, CountCmd::Bump)
                .expect("the kernel accepts under back-pressure");
            open.push_back((Instant::now(), ticket));
        }
        answer(open.pop_front().expect("the window is full"));
    }
    open.into_iter().for_each(&mut answer);
    (done, latency)
}

/// Records per second of `threads` threads appending batches of 64 x 64-byte records with
/// one fdatasync per batch, each to its own file (`shared` false) or all to one file under
/// one lock.
fn run_raw(threads: usize, shared: bool, seconds: f64) -> f64 {
    const BATCH: usize = 64;
    const RECORD: usize = 64;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let open = |name: String| {
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.path().join(name))
            .expect("a log file")
    };
    let one = Arc::new(Mutex::new(open("shared.log".into())));
    let files: Vec<Arc<Mutex<File>>> = (0..threads)
        .map(|t| {
            if shared {
                one.clone()
            } else {
                Arc::new(Mutex::new(open(format!("log-{t}.log"))))
            }
        })
        .collect();
    let records = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let workers: Vec<_> = files
        .into_iter()
        .map(|file| {
            let records = records.clone();
            std::thread::spawn(move || {
                let batch = vec![0x5a_u8; BATCH * RECORD];
                while Instant::now() < deadline {
                    let mut f = file.lock().expect("no panics while appending");
                    f.write_all(&batch).expect("appending");
                    f.sync_data().expect("fdatasync");
                    drop(f);
                    records.fetch_add(BATCH as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("an appending thread");
    }
    records.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Nanoseconds from 1 ns to a minute, three significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// Snapshots per second of `threads` threads each storing batches of 64 counter snapshots
/// with `put_many` on one file store, each thread its own machines: the store without the
/// kernel, between the kernel and the raw appends.
fn run_store(threads: usize, seconds: f64) -> f64 {
    const BATCH: usize = 64;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(FileStore::open(dir.path()).expect("opening the file store"));
    let stored = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (store, stored) = (store.clone(), stored.clone());
            let codec = Codec::<Counter>::new(1);
            std::thread::spawn(move || {
                let ids: Vec<MachineId> = (0..BATCH * 16)
                    .map(|i| MachineId::new(format!("s{t}-{i}")).expect("a valid id"))
                    .collect();
                let mut seqs = vec![0_u64; ids.len()];
                let mut round = 0;
                while Instant::now() < deadline {
                    let part = (round % 16) * BATCH..(round % 16 + 1) * BATCH;
                    let snapshots: Vec<Snapshot> = part
                        .clone()
                        .map(|i| {
                            let n = seqs[i] + 1;
                            codec
                                .encode(&Counter::Counting { n }, n)
                                .expect("a counter encodes")
                        })
                        .collect();
                    let puts: Vec<Put<'_>> = part
                        .clone()
                        .zip(&snapshots)
                        .map(|(i, s)| Put::new(&ids[i], (seqs[i] > 0).then_some(seqs[i]), s))
                        .collect();
                    store.put_many(&puts).expect("the store takes the batch");
                    for i in part {
                        seqs[i] += 1;
                    }
                    stored.fetch_add(BATCH as u64, Ordering::Relaxed);
                    round += 1;
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a storing thread");
    }
    stored.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn counts(max: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut n = 1;
    while n < max {
        out.push(n);
        n *= 2;
    }
    out.push(max);
    out
}

fn human(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2}M", per_second / 1e6)
    } else {
        format!("{:.1}k", per_second / 1e3)
    }
}

fn main() {
    let o = options();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ids: Arc<Vec<MachineId>> = Arc::new(
        (0..o.machines)
            .map(|i| MachineId::new(format!("c-{i}")).expect("a valid id"))
            .collect(),
    );
    let shard_counts = o.shards.clone().unwrap_or_else(|| counts(o.max_shards));
    println!(
        "kernel_scale: {cores} cores, {} machines, {} clients with {} commands each in flight, {} s per point, {} round(s)",
        o.machines, o.clients, o.window, o.seconds, o.rounds
    );
    for store in &o.stores {
        println!();
        println!("store: {store}");
        println!(
            "| shards | commands/s | x 1 shard | latency p50 | latency p99 | commit p99 | CPU/command | store |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        // Every round runs every shard count; odd rounds run them backwards.
        let mut runs: Vec<Vec<Point>> = shard_counts.iter().map(|_| Vec::new()).collect();
        for round in 0..o.rounds {
            let mut order: Vec<usize> = (0..shard_counts.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                runs[i].push(run_kernel(store, shard_counts[i], &ids, &o));
            }
        }
        let mut base = None;
        for (&shards, mut points) in shard_counts.iter().zip(runs) {
            points.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
            let range = (o.rounds > 1).then(|| {
                format!(
                    "{} rounds {}-{}",
                    o.rounds,
                    human(points[0].per_second),
                    human(points[points.len() - 1].per_second)
                )
            });
            let p = &points[points.len() / 2];
            let base = *base.get_or_insert(p.per_second);
            let note = [Some(p.note.clone()), range]
                .into_iter()
                .flatten()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            println!(
                "| {shards} | {} | {:.2} | {:.2?} | {:.2?} | {:.2?} | {:.2} µs | {note} |",
                human(p.per_second),
                p.per_second / base,
                p.p50,
                p.p99,
                p.commit_p99,
                p.cpu_us,
            );
        }
    }
    println!();
    println!("raw limit: 64 x 64-byte records per batch, one fdatasync per batch");
    println!("and the file store alone: threads each storing 64 snapshots per put_many");
    println!(
        "| threads | one file each (records/s) | one shared file (records/s) | file store put_many (snapshots/s) |"
    );
    println!("| --- | --- | --- | --- |");
    for &threads in &shard_counts {
        let each = run_raw(threads, false, o.seconds);
        let shared = run_raw(threads, true, o.seconds);
        let store = run_store(threads, o.seconds);
        println!(
            "| {threads} | {} | {} | {} |",
            human(each),
            human(shared),
            human(store)
        );
    }
}
