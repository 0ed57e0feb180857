//! Dispatch against the crates users would pick instead: one plain machine (six unit states,
//! seven events, eleven transitions; see `peers/machines.rs`) written with this crate's
//! derive, by hand (both also with the enums declared in name order, smlang's numbering), and with statig, rust-fsm, smlang, sm and finny, over three streams of
//! 1,000,000 events built before timing with a fixed seed. Every implementation is checked
//! against the hand-written one on every (state, event) pair and on each stream first. At the
//! end: a table of ns/event and the ratio to the hand-written match, and the sizes of the
//! machine values and of this crate's `Rejection` and `Transition`.
//!
//! Then the machine with superstates (`peers/hierarchy.rs`, three levels, `Reset` inherited
//! from the root): by hand, the derive flat and with superstates, statig with superstates
//! (group `peers_hierarchy/{stream}`).
//!
//! `cargo bench -p fsm-benches --bench peers`

#[path = "../peers/machines.rs"]
mod machines;

use std::hint::black_box;
use std::sync::Mutex;
use std::time::Instant;

use criterion::{criterion_group, Criterion, Throughput};
use machines::{finny_impl, sm_impl, statig_impl, Prepared, NAMES};

const LEN: usize = 1_000_000;
const SEED: u64 = 0x5eed;

/// ns/event per (stream, implementation), measured again after criterion's runs (the mean of
/// five timed passes) for the summary table.
static TABLE: Mutex<Vec<(String, [f64; 9])>> = Mutex::new(Vec::new());

fn bench_peers(c: &mut Criterion) {
    let streams = machines::streams(LEN, SEED);
    machines::check_all(&streams).expect("every implementation agrees with the hand-written one");
    for (name, events) in &streams {
        let p = Prepared::new(events);
        let mut group = c.benchmark_group(format!("peers/{name}"));
        group.throughput(Throughput::Elements(LEN as u64));
        group.sample_size(20);
        group.bench_function("hand_match", |b| {
            b.iter(|| machines::run_hand(black_box(&p.hand)))
        });
        group.bench_function("fsm_derive", |b| {
            b.iter(|| machines::run_derived(black_box(&p.derived)))
        });
        group.bench_function("hand_match_sorted", |b| {
            b.iter(|| machines::sorted::run_hand(black_box(&p.sorted)))
        });
        group.bench_function("fsm_derive_sorted", |b| {
            b.iter(|| machines::sorted::run_derived(black_box(&p.sorted)))
        });
        group.bench_function("statig", |b| {
            b.iter(|| statig_impl::run(black_box(&p.hand)))
        });
        group.bench_function("rust_fsm", |b| {
            b.iter(|| machines::run_rustfsm(black_box(&p.rustfsm)))
        });
        group.bench_function("smlang", |b| {
            b.iter(|| machines::run_smlang(black_box(&p.smlang)))
        });
        group.bench_function("sm", |b| b.iter(|| sm_impl::run(black_box(&p.hand))));
        group.bench_function("finny", |b| b.iter(|| finny_impl::run(black_box(&p.finny))));
        group.finish();
        let mut row = [0.0; 9];
        for _ in 0..5 {
            let timed: [Box<dyn Fn() -> u64>; 9] = [
                Box::new(|| machines::run_hand(&p.hand)),
                Box::new(|| machines::run_derived(&p.derived)),
                Box::new(|| machines::sorted::run_hand(&p.sorted)),
                Box::new(|| machines::sorted::run_derived(&p.sorted)),
                Box::new(|| statig_impl::run(&p.hand)),
                Box::new(|| machines::run_rustfsm(&p.rustfsm)),
                Box::new(|| machines::run_smlang(&p.smlang)),
                Box::new(|| sm_impl::run(&p.hand)),
                Box::new(|| finny_impl::run(&p.finny)),
            ];
            for (i, f) in timed.iter().enumerate() {
                let t = Instant::now();
                black_box(f());
                row[i] += t.elapsed().as_nanos() as f64 / LEN as f64 / 5.0;
            }
        }
        TABLE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(((*name).to_owned(), row));
    }
}

fn summary() {
    let table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    if table.is_empty() {
        return;
    }
    println!("\nns/event (ratio to hand_match), mean of 5 passes after criterion's runs:");
    print!("| stream |");
    for n in NAMES {
        print!(" {n} |");
    }
    println!();
    println!("|{}", " --- |".repeat(NAMES.len() + 1));
    for (stream, row) in table.iter() {
        print!("| {stream} |");
        for v in row {
            print!(" {v:.2} ({:.2}) |", v / row[0]);
        }
        println!();
    }
    println!("\nsizes (bytes):");
    println!(
        "  fsm (derive) machine {}, Result<Transition, Rejection> {}, Rejection {}, Transition {}, Reason {}",
        std::mem::size_of::<machines::derived::Phase>(),
        std::mem::size_of::<Result<fsm_core::Transition, fsm_core::Rejection>>(),
        std::mem::size_of::<fsm_core::Rejection>(),
        std::mem::size_of::<fsm_core::Transition>(),
        std::mem::size_of::<fsm_core::Reason>(),
    );
    println!(
        "  statig machine {}, rust-fsm machine {}, smlang machine {}, sm Variant {}, finny machine {}, hand state {}",
        std::mem::size_of::<statig::prelude::StateMachine<statig_impl::Phase>>(),
        std::mem::size_of::<machines::rustfsm::phase::StateMachine>(),
        std::mem::size_of::<machines::smlang_impl::StateMachine<machines::smlang_impl::Context>>(),
        sm_impl::variant_size(),
        finny_impl::machine_size(),
        std::mem::size_of::<machines::St>(),
    );
}

fn bench_hierarchy(c: &mut Criterion) {
    use machines::hierarchy;
    let streams = hierarchy::streams(LEN, SEED);
    hierarchy::check_all(&streams).expect(
        "every implementation of the hierarchical machine agrees with the hand-written one",
    );
    for (name, events) in &streams {
        let p = hierarchy::Prepared::new(events);
        let mut group = c.benchmark_group(format!("peers_hierarchy/{name}"));
        group.throughput(Throughput::Elements(LEN as u64));
        group.sample_size(20);
        group.bench_function("hand_match", |b| {
            b.iter(|| hierarchy::run_hand(black_box(&p.hand)))
        });
        group.bench_function("fsm_derive_flat", |b| {
            b.iter(|| hierarchy::flat::run(black_box(&p.derived)))
        });
        group.bench_function("fsm_derive_superstates", |b| {
            b.iter(|| hierarchy::nested::run(black_box(&p.derived)))
        });
        group.bench_function("statig_superstates", |b| {
            b.iter(|| hierarchy::statig_nested::run(black_box(&p.hand)))
        });
        group.finish();
    }
}

criterion_group!(benches, bench_peers, bench_hierarchy);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
