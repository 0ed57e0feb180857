//! Runs one dispatch workload once, for instruction counting under callgrind, which is
//! repeatable where wall-clock time on a shared 2-core machine is not:
//!
//! `valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/dispatch_icount derived w1`
//!
//! Modes: `hand` (hand-written match), `derived`, `setup` (only builds and drops the stream, to
//! subtract). Workloads: `w1`, `w2`. 200,000 events.

use std::hint::black_box;

use fsm_benches::dispatch::drive;
use fsm_examples::registrar::Order;
use fsm_examples::registrar_by_hand::HandOrder;
use fsm_examples::workload::{w1_cycle, w2_half_invalid};

const LEN: usize = 200_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(workload)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: dispatch_icount <hand|derived|setup> <w1|w2>");
        std::process::exit(2);
    };
    let events = match workload.as_str() {
        "w1" => w1_cycle(LEN),
        "w2" => w2_half_invalid(LEN, 0x05ee_d0f0_4de7),
        other => {
            eprintln!("unknown workload {other:?}: use w1 or w2");
            std::process::exit(2);
        }
    };
    let accepted = match mode.as_str() {
        "hand" => drive(HandOrder::Draft, events),
        "derived" => drive(Order::Draft, events),
        "setup" => {
            drop(black_box(events));
            0
        }
        other => {
            eprintln!("unknown mode {other:?}: use hand, derived or setup");
            std::process::exit(2);
        }
    };
    println!("{accepted}");
}
