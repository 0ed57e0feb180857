//! The registrar as a service: a kernel over a file store that drives domain orders with a
//! flaky registrar worker, shared by the `domain_order` example and its kill -9 test.
//!
//! The registration is a durable effect: it is owed by the order in the write that makes it
//! `Paid`, run by the worker once that write is stored (under a stable idempotency key, the
//! registrar's `Idempotency-Key`), retried when the registrar times out, and settled in the
//! write that applies the registrar's answer. So a process killed at any moment leaves no
//! order `Paid` for ever: the next start runs what is owed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsm_core::kernel::{
    BuildError, EffectCtx, EffectError, EffectWorker, Failure, IdempotencyKey, Kernel,
    KernelHandle, Request, RetryPolicy,
};
use fsm_core::store::MachineId;
use fsm_core::StateMachine;

use crate::registrar::{Order, OrderCmd, OrderEffect};

/// The registrar's API, as unreliable as the real thing: it sometimes times out (an error,
/// retried) and sometimes the connection dies under it (a panic in the worker, a crash).
pub struct FlakyRegistrar {
    rng: fastrand::Rng,
    counters: Counters,
}

/// What the registrar did, counted across its workers.
#[derive(Clone, Default)]
pub struct Counters {
    /// Customers told their domain is registered.
    pub notified: Arc<AtomicU64>,
    /// Refunds paid.
    pub refunded: Arc<AtomicU64>,
    /// Registration attempts (retries and repeats after a restart included).
    pub attempts: Arc<AtomicU64>,
}

impl EffectWorker<Order> for FlakyRegistrar {
    fn run(
        &mut self,
        _: &EffectCtx,
        effect: &OrderEffect,
    ) -> Result<Option<OrderCmd>, EffectError> {
        match effect {
            OrderEffect::Register { domain, .. } => {
                self.counters.attempts.fetch_add(1, Ordering::Relaxed);
                let roll = self.rng.u32(0..100);
                if roll < 3 {
                    panic!("registrar connection reset while registering {domain}");
                }
                if roll < 15 {
                    return Err("registry timeout".into());
                }
                if domain.starts_with("taken") {
                    return Ok(Some(OrderCmd::Reject {
                        reason: "domain already registered".into(),
                    }));
                }
                Ok(Some(OrderCmd::Confirm))
            }
            OrderEffect::NotifyRegistered { .. } => {
                self.counters.notified.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            OrderEffect::Refund { .. } => {
                self.counters.refunded.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// A registration whose attempts are spent is reported to the order as a rejection
    /// (`Paid --Reject--> Failed`, which refunds); the table decides whether the order takes
    /// it.
    fn failure_event(
        &self,
        _: &EffectCtx,
        effect: &OrderEffect,
        failure: &Failure,
    ) -> Option<OrderCmd> {
        matches!(effect, OrderEffect::Register { .. }).then(|| OrderCmd::Reject {
            reason: format!("registrar failed ({failure})"),
        })
    }
}

/// Starts the registrar's kernel over the file store in `dir`, with two flaky workers.
/// Recovery runs again whatever the orders stored there still owe.
pub fn start(dir: &Path, counters: &Counters) -> Result<Kernel<Order>, BuildError> {
    let counters = counters.clone();
    fsm_persist::file_kernel(dir, |_| Order::Draft)
        .shards(2)
        .effects(2, move |worker| FlakyRegistrar {
            rng: fastrand::Rng::with_seed(worker as u64 * 7919 + fastrand::u64(..)),
            counters: counters.clone(),
        })
        .restart_intensity(100, Duration::from_secs(10))
        // A timed-out registration is tried again 10 ms later, then 20, 40, 80: five attempts
        // under one idempotency key before the order is told it failed.
        .retry(
            RetryPolicy::new(Duration::from_millis(10), 2, Duration::from_millis(100), 5)
                .expect("a sensible policy"),
        )
        .start()
}

/// Order `i` of run `run`.
pub fn order_id(run: u64, i: usize) -> MachineId {
    MachineId::new(format!("order-{run}-{i}")).expect("valid id")
}

fn key(k: String) -> IdempotencyKey {
    IdempotencyKey::new(k).expect("keys built here are valid")
}

/// One customer's order: submit, pay (sometimes too little first), and sometimes retry the
/// payment as a client whose answer timed out would, with the same idempotency key.
pub fn place(kernel: &KernelHandle<Order>, run: u64, i: usize, rng: &mut fastrand::Rng) {
    let id = order_id(run, i);
    let domain = match rng.u32(0..100) {
        0..5 => format!("not a domain {i}"), // refused by Submitted's invariant
        5..15 => format!("taken{i}.example"),
        _ => format!("shop{i}-{run}.example"),
    };
    let submit =
        Request::new(OrderCmd::Submit { domain }).with_key(key(format!("submit-{run}-{i}")));
    let submitted = kernel.submit(&id, submit).map(|t| t.wait());
    if !matches!(submitted, Ok(Ok(_))) {
        // The draft was never submitted: the customer gives up.
        let _ = kernel.submit(&id, OrderCmd::Cancel).map(|t| t.wait());
        return;
    }
    if rng.u32(0..100) < 10 {
        // Below the minimum price: the handler's guard refuses it.
        let low = OrderCmd::Pay {
            cents: 500,
            card_token: format!("tok_{i}_secret"),
        };
        let _ = kernel.submit(&id, low).map(|t| t.wait());
    }
    let pay = || {
        Request::new(OrderCmd::Pay {
            cents: 1_500,
            card_token: format!("tok_{i}_secret"),
        })
        .with_key(key(format!("pay-{run}-{i}")))
    };
    let _ = kernel.submit(&id, pay()).map(|t| t.wait());
    if rng.u32(0..100) < 20 {
        // The client did not hear back in time and sends the same payment again.
        let _ = kernel.submit(&id, pay()).map(|t| t.wait());
    }
}

/// Waits until none of `ids` owes an effect (liveness, bounded by `limit`); returns how long
/// it took, or the ids still owing at the limit.
pub fn settle(
    kernel: &Kernel<Order>,
    ids: &[MachineId],
    limit: Duration,
) -> Result<Duration, Vec<MachineId>> {
    let started = Instant::now();
    loop {
        let owing: Vec<MachineId> = ids
            .iter()
            .filter(|id| kernel.owed(id).is_ok_and(|o| !o.is_empty()))
            .cloned()
            .collect();
        if owing.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            return Err(owing);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Where the orders `ids` are, by state name.
pub fn census(kernel: &Kernel<Order>, ids: &[MachineId]) -> BTreeMap<&'static str, usize> {
    let mut states = BTreeMap::new();
    for id in ids {
        let name = match kernel.state(id) {
            Ok((order, _)) => order.state_name(),
            Err(_) => "unavailable",
        };
        *states.entry(name).or_default() += 1;
    }
    states
}
