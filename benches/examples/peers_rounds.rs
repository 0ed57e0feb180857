//! The peers bench's implementations timed in interleaved rounds, for a wall-clock ranking
//! that a drifting machine does not decide: each round runs every implementation once over
//! the same stream, in an order rotated from round to round, and each implementation's time is
//! divided by the hand-written match's time in that same round. Prints, per stream, the median
//! ns/event and the median of those per-round ratios: for the flat machine of every peer, then
//! for the plain machine against the same with a trivial handler per transition; for the
//! machine with superstates (`peers/hierarchy.rs`: the derive flat and nested, statig nested).
//!
//! ```text
//! cargo run --release -p fsm-benches --example peers_rounds [-- ROUNDS]
//! ```
//!
//! 1,000,000 events per stream, the peers bench's seed, 41 rounds unless told; every
//! implementation is checked against the hand-written one first.

#[path = "../peers/machines.rs"]
mod machines;

use std::hint::black_box;
use std::time::Instant;

use machines::{finny_impl, hierarchy, sm_impl, statig_impl, Prepared, NAMES};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let rounds: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 41,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: peers_rounds [ROUNDS > 0]");
            std::process::exit(2);
        }
    };
    const LEN: usize = 1_000_000;
    let streams = machines::streams(LEN, 0x5eed);
    if let Err(e) = machines::check_all(&streams) {
        eprintln!("an implementation disagrees with the hand-written one: {e}");
        std::process::exit(1);
    }
    println!(
        "median over {rounds} interleaved rounds: ns/event (median per-round ratio to hand_match)"
    );
    print!("| stream |");
    for n in NAMES {
        print!(" {n} |");
    }
    println!();
    println!("|{}", " --- |".repeat(NAMES.len() + 1));
    for (name, events) in &streams {
        let p = Prepared::new(events);
        let timed: [&dyn Fn() -> u64; 9] = [
            &|| machines::run_hand(black_box(&p.hand)),
            &|| machines::run_derived(black_box(&p.derived)),
            &|| machines::sorted::run_hand(black_box(&p.sorted)),
            &|| machines::sorted::run_derived(black_box(&p.sorted)),
            &|| statig_impl::run(black_box(&p.hand)),
            &|| machines::run_rustfsm(black_box(&p.rustfsm)),
            &|| machines::run_smlang(black_box(&p.smlang)),
            &|| sm_impl::run(black_box(&p.hand)),
            &|| finny_impl::run(black_box(&p.finny)),
        ];
        row(name, &timed, rounds, LEN);
    }

    println!();
    println!("the README's form (plain transitions) against the same machine with a trivial handler per transition:");
    println!("| stream | hand_match | fsm (derive, plain) | fsm (derive, handlers) |");
    println!("| --- | --- | --- | --- |");
    for (name, events) in &streams {
        let p = Prepared::new(events);
        let timed: [&dyn Fn() -> u64; 3] = [
            &|| machines::run_hand(black_box(&p.hand)),
            &|| machines::run_derived(black_box(&p.derived)),
            &|| machines::handlers::run(black_box(&p.derived)),
        ];
        row(name, &timed, rounds, LEN);
    }

    let streams = hierarchy::streams(LEN, 0x5eed);
    if let Err(e) = hierarchy::check_all(&streams) {
        eprintln!("an implementation of the hierarchical machine disagrees with the hand-written one: {e}");
        std::process::exit(1);
    }
    println!();
    println!("the machine with superstates (three levels, Reset inherited from the root):");
    print!("| stream |");
    for n in hierarchy::NAMES {
        print!(" {n} |");
    }
    println!();
    println!("|{}", " --- |".repeat(hierarchy::NAMES.len() + 1));
    for (name, events) in &streams {
        let p = hierarchy::Prepared::new(events);
        let timed: [&dyn Fn() -> u64; 4] = [
            &|| hierarchy::run_hand(black_box(&p.hand)),
            &|| hierarchy::flat::run(black_box(&p.derived)),
            &|| hierarchy::nested::run(black_box(&p.derived)),
            &|| hierarchy::statig_nested::run(black_box(&p.hand)),
        ];
        row(name, &timed, rounds, LEN);
    }
}

/// Times `timed` in `rounds` interleaved rounds over a stream of `len` events and prints the
/// stream's row: median ns/event and median per-round ratio to the first implementation.
fn row(name: &str, timed: &[&dyn Fn() -> u64], rounds: usize, len: usize) {
    // One warm-up pass of each, untimed.
    for f in timed {
        black_box(f());
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); timed.len()];
    let mut ratio: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); timed.len()];
    let mut this = vec![0.0; timed.len()];
    for round in 0..rounds {
        for k in 0..timed.len() {
            let i = (k + round) % timed.len();
            let started = Instant::now();
            black_box(timed[i]());
            this[i] = started.elapsed().as_nanos() as f64 / len as f64;
        }
        for i in 0..timed.len() {
            ns[i].push(this[i]);
            ratio[i].push(this[i] / this[0]);
        }
    }
    print!("| {name} |");
    for i in 0..timed.len() {
        print!(
            " {:.2} ({:.2}) |",
            median(&mut ns[i]),
            median(&mut ratio[i])
        );
    }
    println!();
}
