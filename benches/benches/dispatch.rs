//! Dispatch: the derived machine against a hand-written nested `match` with the same
//! semantics (atomic transitions, guards, invariant, effects), on the domain-order machine.
//!
//! `cargo bench -p fsm-benches --bench dispatch`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fsm_benches::dispatch::drive;
use fsm_examples::registrar::{order, order_cmd, Order, OrderCmd};
use fsm_examples::registrar_by_hand::HandOrder;
use fsm_examples::workload::{w1_cycle, w2_half_invalid};

const LEN: usize = 1_000_000;
const SEED: u64 = 0x05ee_d0f0_4de7;

/// The W1 cycle as typed payloads, for the typestate route.
struct TypedW1 {
    submit: order_cmd::Submit,
    cycles: Vec<(order_cmd::Pay, order_cmd::Reject, order_cmd::Retry)>,
}

fn typed_w1(events: &[OrderCmd]) -> TypedW1 {
    let mut it = events.iter().cloned();
    let submit = order_cmd::Submit::try_from(it.next().expect("W1 starts with Submit"))
        .expect("W1 starts with Submit");
    let rest: Vec<OrderCmd> = it.collect();
    let cycles = rest
        .chunks_exact(3)
        .map(|c| {
            (
                order_cmd::Pay::try_from(c[0].clone()).expect("pay"),
                order_cmd::Reject::try_from(c[1].clone()).expect("reject"),
                order_cmd::Retry::try_from(c[2].clone()).expect("retry"),
            )
        })
        .collect();
    TypedW1 { submit, cycles }
}

fn drive_typed(w: TypedW1) -> usize {
    let Ok(next) = order::Draft.submit(w.submit) else {
        return 0;
    };
    let mut submitted = next.state;
    let mut accepted = 1;
    for (pay, reject, retry) in w.cycles {
        let Ok(paid) = submitted.pay(pay) else {
            return accepted;
        };
        let Ok(failed) = paid.state.reject(reject) else {
            return accepted;
        };
        let Ok(again) = failed.state.retry(retry) else {
            return accepted;
        };
        submitted = again.state;
        accepted += 3;
    }
    black_box(&submitted);
    accepted
}

fn dispatch(c: &mut Criterion) {
    let w1 = w1_cycle(LEN);
    let w2 = w2_half_invalid(LEN, SEED);
    let mut group = c.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(LEN as u64));
    group.sample_size(20);

    group.bench_function("hand_match/W1_cycle", |b| {
        b.iter_batched(
            || w1.clone(),
            |e| drive(HandOrder::Draft, e),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("derived/W1_cycle", |b| {
        b.iter_batched(
            || w1.clone(),
            |e| drive(Order::Draft, e),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("typestate/W1_cycle", |b| {
        b.iter_batched(|| typed_w1(&w1), drive_typed, BatchSize::PerIteration)
    });
    group.bench_function("hand_match/W2_half_invalid", |b| {
        b.iter_batched(
            || w2.clone(),
            |e| drive(HandOrder::Draft, e),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("derived/W2_half_invalid", |b| {
        b.iter_batched(
            || w2.clone(),
            |e| drive(Order::Draft, e),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
