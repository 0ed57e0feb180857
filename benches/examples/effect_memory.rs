//! What one owed effect costs in memory while it waits: 10,000 machines each owing one effect
//! (their worker crashed and escalated, so the effects wait for its restart), against the same
//! machines after the same command with an at-most-once effect, heap bytes counted by a
//! counting allocator.
//!
//! `cargo run --release -p fsm-benches --example effect_memory`

use std::time::Duration;

use fsm_benches::effects::{ids, with_effects, Ledger, Mailer, Post};
use fsm_core::kernel::{Kernel, Shutdown};
use fsm_core::store::MemoryStore;

#[global_allocator]
static ALLOC: fsm_benches::alloc::Counting = fsm_benches::alloc::Counting;

const MACHINES: usize = 10_000;

/// Heap bytes of the kernel and its resident machines after one command each.
fn resident_bytes(durable: bool) -> (isize, u64) {
    let ids = ids(MACHINES);
    let before = fsm_benches::alloc::live();
    let b = Kernel::builder(MemoryStore::new(), |_| Ledger::Ledger { n: 0, sent: 0 })
        .shards(1)
        .restart_intensity(0, Duration::from_secs(3600));
    let kernel = with_effects(
        b,
        durable,
        Mailer {
            crash: true,
            reply: false,
        },
    );
    for chunk in ids.chunks(1000) {
        let tickets = kernel.submit_batch(chunk.iter().map(|id| (id.clone(), Post::Entry.into())));
        for t in tickets {
            t.unwrap().wait().unwrap();
        }
        kernel.wait_idle();
    }
    let owed = kernel.metrics().total.counts.owed;
    let bytes = fsm_benches::alloc::live() - before;
    kernel.shutdown(Shutdown::HandBack);
    (bytes, owed)
}

fn main() {
    // The mailer's crashes are on purpose.
    std::panic::set_hook(Box::new(|_| {}));
    let (owing, owed) = resident_bytes(true);
    let (not, none) = resident_bytes(false);
    drop(std::panic::take_hook());
    assert_eq!((owed, none), (MACHINES as u64, 0));
    println!(
        "effect_memory: one owed effect costs {} heap bytes while it waits ({owing} bytes for {MACHINES} machines owing one each, {not} with at-most-once effects; the store's copy not counted)",
        (owing - not) / MACHINES as isize,
    );
}
