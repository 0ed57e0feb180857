//! Runs rounds of one command to 100 machines through a kernel over the memory store, with
//! or without arming a timer, for profiling the arming cost of the `timers` bench under
//! callgrind (`callgrind_annotate` per function: the timer code's own lines are repeatable;
//! the totals move by a few percent with how the submitter and shard threads interleave):
//!
//! `valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/timer_icount arm`
//!
//! Modes: `bump` (no timer), `arm` (re-arms a named timer), `setup` (starts and stops the
//! kernel only, to subtract). 200 rounds.

use fsm_benches::timers::{Beat, BeatCmd};
use fsm_core::kernel::{Kernel, Request, Shutdown};
use fsm_core::store::{MachineId, MemoryStore};

const ROUNDS: usize = 200;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let cmd: fn() -> BeatCmd = match mode.as_str() {
        "bump" | "setup" => || BeatCmd::Bump,
        "arm" => || BeatCmd::Arm {
            due: 0,
            after_ms: 3_600_000,
        },
        other => {
            eprintln!("unknown mode {other:?}: use bump, arm or setup");
            std::process::exit(2);
        }
    };
    let kernel = Kernel::builder(MemoryStore::new(), |_| Beat::New)
        .shards(1)
        .trace_capacity(0)
        .latency(false)
        .timer_events()
        .start()
        .unwrap();
    let ids: Vec<MachineId> = (0..100)
        .map(|i| MachineId::new(format!("beat-{i}")).unwrap())
        .collect();
    let rounds = if mode == "setup" { 1 } else { ROUNDS };
    for _ in 0..rounds {
        let tickets = kernel.submit_batch(ids.iter().map(|id| (id.clone(), Request::new(cmd()))));
        for t in tickets {
            t.unwrap().wait().unwrap();
        }
    }
    kernel.shutdown(Shutdown::Drain);
}
