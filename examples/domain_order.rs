//! The durable registrar: a kernel with the file store drives a few hundred domain orders
//! through their lifecycle concurrently, with invalid commands, retried (idempotent) ones and
//! a flaky registrar worker, then reports outcomes, latencies, restarts and the machine's
//! diagram. Run it twice: the second run resumes from the stored state.
//!
//! Run with `cargo run --example domain_order [DATA_DIR]` (default
//! `target/domain-order-data`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fsm_core::kernel::{
    CommandError, EffectCtx, EffectError, EffectWorker, Failure, IdempotencyKey, Request,
    RetryPolicy, Shutdown, TraceFilter,
};
use fsm_core::store::{MachineId, SnapshotStore};
use fsm_core::StateMachine;
use fsm_examples::registrar::{Order, OrderCmd, OrderEffect};

/// Orders started by each run.
const ORDERS: usize = 300;
/// Client threads submitting concurrently.
const CLIENTS: usize = 8;

/// The registrar's API, as unreliable as the real thing: it sometimes times out (an error)
/// and sometimes the connection dies under it (a panic in the worker).
struct FlakyRegistrar {
    rng: fastrand::Rng,
    notified: Arc<AtomicU64>,
    refunded: Arc<AtomicU64>,
}

impl EffectWorker<Order> for FlakyRegistrar {
    fn run(
        &mut self,
        _: &EffectCtx,
        effect: &OrderEffect,
    ) -> Result<Option<OrderCmd>, EffectError> {
        match effect {
            OrderEffect::Register { domain, .. } => {
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
                self.notified.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            OrderEffect::Refund { .. } => {
                self.refunded.fetch_add(1, Ordering::Relaxed);
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

fn key(k: String) -> IdempotencyKey {
    IdempotencyKey::new(k).expect("keys built here are valid")
}

/// One customer's order: submit, pay (sometimes too little first), and sometimes retry the
/// payment as a client whose answer timed out would, with the same idempotency key.
fn drive(kernel: &fsm_core::kernel::Submitter<Order>, run: u64, i: usize, rng: &mut fastrand::Rng) {
    let id = MachineId::new(format!("order-{run}-{i}")).expect("valid id");
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/domain-order-data".to_owned());
    // The flaky registrar panics on purpose; the kernel catches and counts it. Keep the
    // output to the report.
    std::panic::set_hook(Box::new(|_| {}));

    let notified = Arc::new(AtomicU64::new(0));
    let refunded = Arc::new(AtomicU64::new(0));
    let (n, r) = (notified.clone(), refunded.clone());
    let kernel = fsm_persist::file_kernel(&dir, |_| Order::Draft)
        .shards(2)
        .effects(2, move |worker| FlakyRegistrar {
            rng: fastrand::Rng::with_seed(worker as u64 * 7919 + fastrand::u64(..)),
            notified: n.clone(),
            refunded: r.clone(),
        })
        .restart_intensity(100, Duration::from_secs(10))
        // A timed-out registration is tried again 10 ms later, then 20, 40, 80: five attempts
        // under one idempotency key before the order is told it failed.
        .retry(RetryPolicy::new(
            Duration::from_millis(10),
            2,
            Duration::from_millis(100),
            5,
        )?)
        .start()?;
    let recovered = kernel.recovery();
    let run = recovered.recovered as u64 / ORDERS as u64 + 1;
    println!("Data directory: {dir}");
    if recovered.recovered > 0 || !recovered.quarantined.is_empty() {
        println!("Recovered from the previous runs: {recovered}");
    } else {
        println!("Fresh start: no stored orders.");
    }
    println!("Run {run}: {ORDERS} new orders from {CLIENTS} concurrent clients.\n");

    // Phase 1: customers submit and pay; the registrar works the paid orders.
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let submitter = kernel.submitter();
            s.spawn(move || {
                let mut rng = fastrand::Rng::new();
                for i in (c..ORDERS).step_by(CLIENTS) {
                    drive(&submitter, run, i, &mut rng);
                }
            });
        }
    });
    kernel.wait_idle();

    // Phase 2: customers whose registration failed retry once (a fresh payment).
    let mut retried = 0;
    for i in 0..ORDERS {
        let id = MachineId::new(format!("order-{run}-{i}"))?;
        if let (Order::Failed { .. }, _) = kernel.state(&id)? {
            retried += 1;
            kernel.submit(&id, OrderCmd::Retry)?.wait()?;
            let pay = Request::new(OrderCmd::Pay {
                cents: 1_500,
                card_token: format!("tok_{i}_secret"),
            })
            .with_key(key(format!("pay-again-{run}-{i}")));
            if let Err(e) = kernel.submit(&id, pay)?.wait() {
                println!("  retry of {id} refused: {e}");
            }
        }
    }
    kernel.wait_idle();

    // Where every order of this run ended.
    let mut states: BTreeMap<&'static str, usize> = BTreeMap::new();
    for i in 0..ORDERS {
        let id = MachineId::new(format!("order-{run}-{i}"))?;
        match kernel.state(&id) {
            Ok((order, _)) => *states.entry(order.state_name()).or_default() += 1,
            Err(CommandError::Quarantined(q)) => println!("  {q}"),
            Err(e) => println!("  {id}: {e}"),
        }
    }
    let metrics = kernel.metrics();
    let c = metrics.total.counts;
    println!("Orders of this run by final state: {states:?} ({retried} retried after a failed registration)");
    println!(
        "Commands by outcome: committed {}, duplicates answered from the journal {}, rejected {}, not stored {}, outcome unknown {}, unavailable {} ({} submitted by clients, {} fed back by the registrar)",
        c.committed, c.duplicates, c.rejected, c.not_stored, c.outcome_unknown, c.unavailable, c.submitted, c.fed_back
    );
    let e2e = metrics.total.end_to_end;
    println!(
        "Latency, submit to durable answer: p50 {:?}, p95 {:?}, p99 {:?}, max {:?}",
        e2e.p50, e2e.p95, e2e.p99, e2e.max
    );
    println!(
        "Group commits: {} fsyncs for {} snapshots (batch p50 {}, max {})",
        metrics.total.commits,
        metrics.total.snapshots,
        metrics.total.batch.p50.as_nanos(),
        metrics.total.batch.max.as_nanos()
    );
    for (i, w) in metrics.workers.iter().enumerate() {
        println!(
            "Registrar worker {i}: {} effects, {} errors, {} panics, {} restarts{}",
            w.effects,
            w.errors,
            w.panics,
            w.restarts,
            if w.escalated { ", ESCALATED" } else { "" }
        );
    }
    for e in kernel.escalations() {
        println!("  escalation: {e}");
    }
    println!(
        "Customers notified: {}, refunds: {}",
        notified.load(Ordering::Relaxed),
        refunded.load(Ordering::Relaxed)
    );
    println!("\nThe last transitions into or out of `Failed` (live trace):");
    for entry in kernel.trace(&TraceFilter::new().state("Failed").last(3)) {
        println!("  {entry}");
    }
    let report = kernel.shutdown(Shutdown::Drain);
    let stored = fsm_persist::FileStore::open(&dir)?.ids()?.len();
    println!(
        "\nShut down: {} commands handed back; {stored} orders stored in {dir} (run again to resume from them).",
        report.handed_back.len(),
    );
    println!("\nThe order machine, drawn from its own table (Mermaid):\n");
    println!("{}", Order::TABLE.to_mermaid());
    Ok(())
}
