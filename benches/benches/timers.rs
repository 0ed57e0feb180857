//! Timers: what arming costs a command, what an armed timer costs in memory, and how fast and
//! how late timers fire through the kernel.
//!
//! `cargo bench -p fsm-benches --bench timers`
//!
//! Group `timers` (criterion), 100 machines per iteration, one command each, durable before
//! it is answered, side by side:
//! - `memory_store/bump` and `memory_store/arm`: the same counting command without and with
//!   (re-)arming a named timer, through a kernel over the memory store (the runtime's own
//!   cost: the timer rules, encoding the timer's event and the snapshot's timers section, the
//!   shard's index);
//! - `file_store/bump` and `file_store/arm`: the same over the file store.
//!
//! Then, measured and printed (not criterion: each is one run of a large population):
//! - memory per armed timer: 1,000,000 machines (10,000 under `--test`) through a kernel over
//!   the memory store with `Bump`, and again with `Arm` (a timer an hour away), counted by a
//!   global allocator, once with every machine resident and once after all were evicted (the
//!   shard then holds only its index); the snapshots' own growth (the timers section the
//!   memory store keeps) is subtracted and shown apart;
//! - firing: 100,000 machines (memory store) and 10,000 (file store) armed for one deadline
//!   (2,000 under `--test`), a burst: throughput from the deadline to the last firing's
//!   effect; then 10,000 deadlines spread evenly over 2 s (500 under `--test`), where each
//!   timer's lateness (its effect running, after the firing is durable, minus its deadline:
//!   the millisecond rounding, the shard's wake-up, the commit) is p50 / p99 / max.

use std::sync::atomic::Ordering;
use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use fsm_benches::alloc::{live, Counting};
use fsm_benches::timers::{micros, Beat, BeatCmd, Lateness};
use fsm_core::kernel::{Kernel, KernelBuilder, Request, Shutdown};
use fsm_core::store::{MachineId, MemoryStore, SnapshotStore};

#[global_allocator]
static ALLOC: Counting = Counting;

const MACHINES: usize = 100;

fn ids(prefix: &str, n: usize) -> Vec<MachineId> {
    (0..n)
        .map(|i| MachineId::new(format!("{prefix}-{i}")).unwrap())
        .collect()
}

/// One command to each machine, in submit batches that fit the inbox, waiting for every
/// answer.
fn round(kernel: &Kernel<Beat>, ids: &[MachineId], cmd: impl Fn() -> BeatCmd) {
    for chunk in ids.chunks(2048) {
        let tickets = kernel.submit_batch(chunk.iter().map(|id| (id.clone(), Request::new(cmd()))));
        for t in tickets {
            t.unwrap().wait().unwrap();
        }
    }
}

fn arm_far() -> BeatCmd {
    BeatCmd::Arm {
        due: 0,
        after_ms: 3_600_000,
    }
}

fn memory_kernel() -> KernelBuilder<Beat> {
    Kernel::builder(MemoryStore::new(), |_| Beat::New)
        .shards(1)
        .trace_capacity(0)
        .timer_events()
}

fn bench_arming(c: &mut Criterion) {
    let mut group = c.benchmark_group("timers");
    group.sample_size(30);
    group.throughput(Throughput::Elements(MACHINES as u64));
    let ids = ids("beat", MACHINES);

    let kernel = memory_kernel().start().unwrap();
    round(&kernel, &ids, || BeatCmd::Bump);
    round(&kernel, &ids, arm_far);
    group.bench_function("memory_store/bump", |b| {
        b.iter(|| round(&kernel, &ids, || BeatCmd::Bump))
    });
    group.bench_function("memory_store/arm", |b| {
        b.iter(|| round(&kernel, &ids, arm_far))
    });
    kernel.shutdown(Shutdown::Drain);

    let dir = tempfile::tempdir().unwrap();
    let kernel = fsm_persist::file_kernel(dir.path(), |_| Beat::New)
        .shards(1)
        .trace_capacity(0)
        .timer_events()
        .start()
        .unwrap();
    round(&kernel, &ids, || BeatCmd::Bump);
    round(&kernel, &ids, arm_far);
    group.bench_function("file_store/bump", |b| {
        b.iter(|| round(&kernel, &ids, || BeatCmd::Bump))
    });
    group.bench_function("file_store/arm", |b| {
        b.iter(|| round(&kernel, &ids, arm_far))
    });
    kernel.shutdown(Shutdown::Drain);
    group.finish();
}

/// Live bytes after `n` machines took `cmd` (and, if `evict`, after all were evicted), minus
/// before; and the bytes of the snapshots the memory store keeps.
fn population(n: usize, cmd: fn() -> BeatCmd, evict: bool) -> (isize, usize) {
    let store = std::sync::Arc::new(MemoryStore::new());
    let before = live();
    let kernel = Kernel::builder_shared(store.clone(), |_| Beat::New)
        .shards(1)
        .trace_capacity(0)
        .latency(false)
        .timer_events()
        // Resident: nothing idles out while the population is built.
        .idle_after(if evict {
            Duration::from_millis(1)
        } else {
            Duration::from_secs(3600)
        })
        .start()
        .unwrap();
    let ids = ids("m", n);
    round(&kernel, &ids, cmd);
    if evict {
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kernel.sweep(), 0);
    }
    let bytes = live() - before;
    let snapshots: usize = ids.iter().map(|id| store.get(id).unwrap().len()).sum();
    drop(ids);
    kernel.shutdown(Shutdown::HandBack);
    (bytes, snapshots)
}

fn memory_per_timer(n: usize) {
    for evict in [false, true] {
        let (plain, plain_snap) = population(n, || BeatCmd::Bump, evict);
        let (armed, armed_snap) = population(n, arm_far, evict);
        let per = (armed - plain) as f64 / n as f64;
        let snap = (armed_snap as f64 - plain_snap as f64) / n as f64;
        println!(
            "timers: memory per armed timer, {n} machines {}: {:.1} bytes in the kernel ({:.1} bytes more per machine in all, of which {:.1} the snapshot's timers section in the memory store)",
            if evict { "evicted (only the shard's index holds them)" } else { "resident" },
            per - snap,
            per,
            snap
        );
    }
}

/// `n` timers due over `spread_ms` (0: all at one moment), armed well before the first is
/// due; prints throughput and lateness.
fn firing(label: &str, n: usize, spread_ms: u64, builder: KernelBuilder<Beat>) {
    let lateness = Lateness::default();
    let worker = lateness.clone();
    // At most once: the effect only measures when the firing ran, as before.
    let kernel = builder
        .effects_at_most_once(1, move |_| worker.clone())
        .start()
        .unwrap();
    let ids = ids("f", n);
    let t0 = micros();
    round(&kernel, &ids, || BeatCmd::Bump);
    let arm_took = micros() - t0;
    let first = micros() + 2 * arm_took + 200_000;
    let step = spread_ms * 1000 / n as u64;
    for (i, chunk) in ids.chunks(2048).enumerate() {
        let tickets = kernel.submit_batch(chunk.iter().enumerate().map(|(j, id)| {
            let due = first + (i * 2048 + j) as u64 * step;
            (id.clone(), Request::new(BeatCmd::Arm { due, after_ms: 0 }))
        }));
        for t in tickets {
            t.unwrap().wait().unwrap();
        }
    }
    while lateness.seen.load(Ordering::Relaxed) < n as u64 {
        std::thread::sleep(Duration::from_millis(1));
    }
    kernel.wait_idle();
    let last = lateness.last.load(Ordering::Relaxed);
    let h = lateness.hist.lock().unwrap().clone();
    let span = Duration::from_micros(last.saturating_sub(first).max(1));
    let what = if spread_ms == 0 {
        format!("{n} timers due at one moment")
    } else {
        format!("{n} timers due over {spread_ms} ms")
    };
    let rate = if spread_ms == 0 {
        format!(" ({:.0} firings/s)", n as f64 / span.as_secs_f64())
    } else {
        String::new()
    };
    println!(
        "timers: firing, {label}: {what} fired in {span:.1?}{rate}, each durable before its effect; lateness p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
    );
    kernel.shutdown(Shutdown::Drain);
}

fn file_kernel(dir: &std::path::Path) -> KernelBuilder<Beat> {
    fsm_persist::file_kernel(dir, |_| Beat::New)
        .shards(1)
        .trace_capacity(0)
        .timer_events()
}

criterion_group!(benches, bench_arming);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let quick = std::env::args().any(|a| a == "--test");
    memory_per_timer(if quick { 10_000 } else { 1_000_000 });
    let (burst, file_burst) = if quick {
        (2_000, 2_000)
    } else {
        (100_000, 10_000)
    };
    firing("memory store", burst, 0, memory_kernel());
    firing(
        "memory store",
        if quick { 500 } else { 10_000 },
        2_000,
        memory_kernel(),
    );
    let dir = tempfile::tempdir().unwrap();
    firing("file store", file_burst, 0, file_kernel(dir.path()));
    let dir = tempfile::tempdir().unwrap();
    firing(
        "file store",
        if quick { 500 } else { 10_000 },
        2_000,
        file_kernel(dir.path()),
    );
}
