//! Runs one implementation of the peers bench over one stream once, for instruction counting
//! under callgrind (repeatable where wall-clock time on a shared machine is not):
//!
//! ```text
//! cargo build --release -p fsm-benches --example peers_icount
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/peers_icount derive half_invalid
//! ```
//!
//! Implementations: `hand`, `derive`, `derive-handlers` (a trivial handler per transition instead of
//! `plain`), `hand-sorted`, `derive-sorted` (the same enums declared
//! in name order, the numbering smlang gives them), `statig`, `rust-fsm`, `smlang`, `sm`, `finny`, `setup`
//! (only builds the streams, to subtract). Streams: `lifecycle`, `random_walk`,
//! `half_invalid`. 1,000,000 events. The machine with superstates (`peers/hierarchy.rs`) runs
//! as `h-hand`, `h-flat`, `h-nested`, `h-statig`, and `h-setup` builds its streams.

#[path = "../peers/machines.rs"]
mod machines;

use machines::{finny_impl, sm_impl, statig_impl, Prepared};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(which), Some(stream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: peers_icount <hand|derive|hand-sorted|derive-sorted|statig|rust-fsm|smlang|sm|finny|setup> <lifecycle|random_walk|half_invalid>");
        std::process::exit(2);
    };
    if let Some(which) = which.strip_prefix("h-") {
        hierarchical(which, stream);
        return;
    }
    let streams = machines::streams(1_000_000, 0x5eed);
    let Some((_, events)) = streams.iter().find(|(n, _)| n == stream) else {
        eprintln!("unknown stream {stream:?}");
        std::process::exit(2);
    };
    let p = Prepared::new(events);
    let h = match which.as_str() {
        "hand" => machines::run_hand(&p.hand),
        "derive" => machines::run_derived(&p.derived),
        "derive-handlers" => machines::handlers::run(&p.derived),
        "hand-sorted" => machines::sorted::run_hand(&p.sorted),
        "derive-sorted" => machines::sorted::run_derived(&p.sorted),
        "statig" => statig_impl::run(&p.hand),
        "rust-fsm" => machines::run_rustfsm(&p.rustfsm),
        "smlang" => machines::run_smlang(&p.smlang),
        "sm" => sm_impl::run(&p.hand),
        "finny" => finny_impl::run(&p.finny),
        "setup" => 0,
        other => {
            eprintln!("unknown implementation {other:?}");
            std::process::exit(2);
        }
    };
    println!("{h}");
}

fn hierarchical(which: &str, stream: &str) {
    use machines::hierarchy;
    let streams = hierarchy::streams(1_000_000, 0x5eed);
    let Some((_, events)) = streams.iter().find(|(n, _)| *n == stream) else {
        eprintln!("unknown stream {stream:?}");
        std::process::exit(2);
    };
    let p = hierarchy::Prepared::new(events);
    let h = match which {
        "hand" => hierarchy::run_hand(&p.hand),
        "flat" => hierarchy::flat::run(&p.derived),
        "nested" => hierarchy::nested::run(&p.derived),
        "statig" => hierarchy::statig_nested::run(&p.hand),
        "setup" => 0,
        other => {
            eprintln!("unknown implementation h-{other:?}");
            std::process::exit(2);
        }
    };
    println!("{h}");
}
