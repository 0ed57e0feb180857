//! Durable effects against at-most-once effects, side by side in one run.
//!
//! `cargo bench -p fsm-benches --bench effects`
//!
//! Group `kernel_effects`, 100 commands per iteration (one to each of 100 machines, submitted
//! together), each emitting one effect that a worker answers at once without an event, in two
//! shapes:
//! - `.../pipelined`: an iteration waits for its commands' answers only, for 100 of 10,000
//!   machines in turn; the effects run meanwhile, and a durable effect's settling write rides
//!   the group commit of a later batch (the steady state of a service under load, a machine
//!   per customer: a machine hands its worker one effect per commit round trip, and here each
//!   machine gets a command every 100 iterations, so its outbox never fills);
//! - `.../lockstep`: an iteration also waits until every effect has run and, for durable
//!   effects, its settling write is stored: nothing else is in flight, so that write is a
//!   group commit of its own (the worst case: twice the fsyncs).
//!
//! - `.../pipelined/reply`: pipelined, the worker answering with an event (`Sent`, applied by
//!   the machine): at most once, that event is a write of its own too; durable, the removal
//!   rides it, so both variants write twice per command.
//!
//! Over `file` (the file store, real fdatasync, two shards) and `memory` (the memory store:
//! the CPU cost of owing, encoding the effect and the outbox section and deciding the answer,
//! without a disk), `at_most_once` and `durable` side by side.
//!
//! What an owed effect costs in memory is printed by
//! `cargo run --release -p fsm-benches --example effect_memory` (a counting allocator would
//! slow this bench's threads down, so it is not installed here).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fsm_benches::effects::{ids, with_effects, Ledger, Mailer, Post};
use fsm_core::kernel::{Kernel, Shutdown};
use fsm_core::store::{MachineId, MemoryStore};

const MACHINES: usize = 100;

/// One command to each machine, submitted together; waits for every answer.
fn submit(kernel: &Kernel<Ledger>, ids: &[MachineId]) {
    let tickets = kernel.submit_batch(ids.iter().map(|id| (id.clone(), Post::Entry.into())));
    for t in tickets {
        t.unwrap().wait().unwrap();
    }
}

/// [`submit`], then waits until every effect has run and its answer is decided.
fn round(kernel: &Kernel<Ledger>, ids: &[MachineId]) {
    submit(kernel, ids);
    kernel.wait_idle();
}

fn bench_effects(c: &mut Criterion) {
    let mut group = c.benchmark_group("kernel_effects");
    group.sample_size(30);
    group.throughput(Throughput::Elements(MACHINES as u64));
    let many = ids(100 * MACHINES);
    let ids = &many[..MACHINES];
    let shapes = [
        // (lockstep, the worker answers with an event)
        (false, false),
        (true, false),
        (false, true),
    ];
    for store in ["file", "memory"] {
        for (lockstep, reply) in shapes {
            for durable in [false, true] {
                let ok = Mailer {
                    crash: false,
                    reply,
                };
                let dir = tempfile::tempdir().unwrap();
                let initial = |_: &MachineId| Ledger::Ledger { n: 0, sent: 0 };
                let builder = match store {
                    "file" => fsm_persist::file_kernel(dir.path(), initial),
                    _ => Kernel::builder(MemoryStore::new(), initial),
                };
                let kernel = with_effects(builder.shards(2), durable, ok);
                for chunk in many.chunks(MACHINES) {
                    round(&kernel, chunk);
                }
                let mut turn = many.chunks(MACHINES).cycle();
                let name = format!(
                    "{store}/{}/{}{}",
                    if durable { "durable" } else { "at_most_once" },
                    if lockstep { "lockstep" } else { "pipelined" },
                    if reply { "/reply" } else { "" }
                );
                group.bench_function(name, |b| {
                    if lockstep {
                        b.iter(|| round(&kernel, ids))
                    } else {
                        b.iter(|| submit(&kernel, turn.next().unwrap()))
                    }
                });
                kernel.wait_idle();
                assert_eq!(kernel.metrics().total.counts.owed, 0);
                kernel.shutdown(Shutdown::Drain);
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench_effects);
criterion_main!(benches);
