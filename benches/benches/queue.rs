//! The queue: one machine fed from other threads, against a crossbeam bounded channel feeding
//! the hand-written match (the baseline a careful engineer would write without this crate).
//!
//! `cargo bench -p fsm-benches --bench queue`
//!
//! Both sides move the same pre-built W1 events (1,000,000 commands: `Submit`, then
//! `Pay, Reject, Retry` cycles) from producer threads to the consumer, which applies each
//! one and drops its effects. The fsm queue runs with latency metrics on (three histograms,
//! two clock reads per command) and back-pressure (blocking submit).

use std::hint::black_box;
use std::thread;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fsm_core::queue::{self, Overload};
use fsm_core::{Effects, StateMachine};
use fsm_examples::registrar::{Order, OrderCmd};
use fsm_examples::registrar_by_hand::HandOrder;
use fsm_examples::workload::w1_cycle;

const LEN: usize = 1_000_000;
const CAPACITY: usize = 1024;

/// One producer thread sends every event through a crossbeam bounded channel; this thread
/// applies them to the hand-written machine.
fn crossbeam_hand_match(events: Vec<OrderCmd>) -> usize {
    let (tx, rx) = crossbeam_channel::bounded::<OrderCmd>(CAPACITY);
    let producer = thread::spawn(move || {
        for event in events {
            tx.send(event).expect("the consumer outlives the producer");
        }
    });
    let mut machine = HandOrder::Draft;
    let mut effects = Effects::new();
    let mut applied = 0;
    for event in rx {
        if machine.apply_into(event, &mut effects).is_ok() {
            applied += 1;
        }
        effects.drain();
    }
    producer.join().expect("producer");
    black_box(machine);
    applied
}

/// `producers` threads submit their share of the events (in order within each share); this
/// thread runs the derived machine's consumer until every producer is done.
fn fsm_queue(streams: Vec<Vec<OrderCmd>>) -> u64 {
    fsm_queue_with(streams, true)
}
fn fsm_queue_with(streams: Vec<Vec<OrderCmd>>, lat: bool) -> u64 {
    let (tx, mut rx) = queue::bounded::<Order>(CAPACITY)
        .latency(lat)
        .overload(Overload::Backpressure)
        .build()
        .expect("valid configuration");
    let producers: Vec<_> = streams
        .into_iter()
        .map(|events| {
            let tx = tx.clone();
            thread::spawn(move || {
                for event in events {
                    tx.submit(event).expect("back-pressure never drops");
                }
            })
        })
        .collect();
    drop(tx);
    let mut machine = Order::Draft;
    let leftovers = rx.run(&mut machine, |effects| drop(effects));
    for p in producers {
        p.join().expect("producer");
    }
    assert!(leftovers.is_empty());
    black_box(machine);
    rx.metrics().counts.applied
}

/// W1 cut into `n` interleaved shares; with several producers the machine sees an
/// interleaving, so some commands are rejected: the work per command stays comparable.
fn shares(events: &[OrderCmd], n: usize) -> Vec<Vec<OrderCmd>> {
    let mut out = vec![Vec::with_capacity(events.len() / n + 1); n];
    for (i, e) in events.iter().enumerate() {
        out[i % n].push(e.clone());
    }
    out
}

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
