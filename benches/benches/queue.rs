//! The queue: one machine fed from other threads, against a crossbeam bounded channel feeding
//! the hand-written match (the baseline a careful engineer would write without this crate).
//!
//! `cargo bench -p fsm-benches --bench queue`
//!
//! Both sides move the same pre-built W1 events (1,000,000 commands: `Submit`, then
//! `Pay, Reject, Retry` cycles) from producer threads to the consumer, which applies each
//! one and drops its effects. The fsm queue runs with latency metrics on (three histograms,
//! two clock reads per command) and back-pressure (blocking submit).

use std::thread;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fsm_benches::queue::{crossbeam_hand_match, fsm_queue, fsm_queue_with, shares, CAPACITY, LEN};
use fsm_core::queue;
use fsm_examples::registrar::Order;
use fsm_examples::workload::w1_cycle;

fn bench_queue(c: &mut Criterion) {
    let w1 = w1_cycle(LEN);
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(LEN as u64));
    group.sample_size(20);

    group.bench_function("crossbeam_hand_match/spsc_1M", |b| {
        b.iter_batched(|| w1.clone(), crossbeam_hand_match, BatchSize::PerIteration)
    });
    group.bench_function("fsm_queue/spsc_1M", |b| {
        b.iter_batched(|| vec![w1.clone()], fsm_queue, BatchSize::PerIteration)
    });
    group.bench_function("fsm_queue_no_latency/spsc_1M", |b| {
        b.iter_batched(
            || vec![w1.clone()],
            |s| fsm_queue_with(s, false),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("fsm_queue/mpsc4_1M", |b| {
        b.iter_batched(|| shares(&w1, 4), fsm_queue, BatchSize::PerIteration)
    });
    group.finish();

    // The latency at that load, for the record (not a criterion measurement).
    let (tx, mut rx) = queue::bounded::<Order>(CAPACITY).build().expect("valid");
    let events = w1.clone();
    let producer = thread::spawn(move || {
        for event in events {
            tx.submit(event).expect("back-pressure never drops");
        }
    });
    let mut machine = Order::Draft;
    rx.run(&mut machine, |effects| drop(effects));
    producer.join().expect("producer");
    eprintln!("fsm_queue/spsc_1M, one run:\n{}", rx.metrics());
}

criterion_group!(benches, bench_queue);
criterion_main!(benches);
