//! The kernel against the raw storage limit it is built on, side by side.
//!
//! `cargo bench -p fsm-benches --bench kernel`
//!
//! Group `kernel`, 100 commands per iteration, each durable before it is answered:
//! - `raw_append_fdatasync/100x1KiB`: the raw batched-append limit (100 records of 1 KiB
//!   appended to a file, one fdatasync), as in the storage bench;
//! - `file_store_group_commit/100machines`: one command to each of 100 machines (1 KiB of
//!   state each) through the kernel over the file store, submitted together
//!   ([`Kernel::submit_batch`]), answered after the group commit;
//! - `memory_store/100machines`: the same through a kernel over the memory store: the
//!   runtime's own cost (dispatch, encoding, journal, answers), without a disk.
//!
//! The file-store kernel runs one shard: the file store serializes writers with one lock, so
//! a second shard would only add a second fdatasync per iteration.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fsm_benches::kernel::{round, Blob};
use fsm_benches::raw::AppendLog;
use fsm_core::kernel::{Kernel, Shutdown};
use fsm_core::store::{MachineId, MemoryStore};

const MACHINES: usize = 100;

fn bench_kernel(c: &mut Criterion) {
    let mut group = c.benchmark_group("kernel");
    group.sample_size(30);
    group.throughput(Throughput::Elements(MACHINES as u64));
    let ids: Vec<MachineId> = (0..MACHINES)
        .map(|i| MachineId::new(format!("blob-{i}")).unwrap())
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let mut log = AppendLog::create(dir.path());
    group.bench_function("raw_append_fdatasync/100x1KiB", |b| {
        b.iter(|| log.append(MACHINES))
    });

    let dir = tempfile::tempdir().unwrap();
    let kernel = fsm_persist::file_kernel(dir.path(), |_| Blob::New)
        .shards(1)
        .trace_capacity(0)
        .start()
        .unwrap();
    round(&kernel, &ids);
    group.bench_function("file_store_group_commit/100machines", |b| {
        b.iter(|| round(&kernel, &ids))
    });
    kernel.shutdown(Shutdown::Drain);

    let kernel = Kernel::builder(MemoryStore::new(), |_| Blob::New)
        .shards(1)
        .trace_capacity(0)
        .start()
        .unwrap();
    round(&kernel, &ids);
    group.bench_function("memory_store/100machines", |b| {
        b.iter(|| round(&kernel, &ids))
    });
    kernel.shutdown(Shutdown::Drain);
    group.finish();
}

criterion_group!(benches, bench_kernel);
criterion_main!(benches);
