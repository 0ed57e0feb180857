//! The durable registrar: a kernel with the file store drives a few hundred domain orders
//! through their lifecycle concurrently, with invalid commands, retried (idempotent) ones and
//! a flaky registrar worker, then reports outcomes, latencies, restarts and the machine's
//! diagram. Run it twice: the second run resumes from the stored state.
//!
//! Run with `cargo run --example domain_order [DATA_DIR]` (default
//! `target/domain-order-data`).
//!
//! `cargo run --example domain_order -- DATA_DIR --kill-mid-run` runs the orders in a child
//! process and SIGKILLs it while registrations are under way (some orders paid, their
//! registration owed, running or retrying), then starts again on the same directory: the
//! registrations the dead process owed run after the restart, and no order stays `Paid`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use fsm_core::kernel::{CommandError, Request, Shutdown, TraceFilter};
use fsm_core::store::{MachineId, SnapshotStore};
use fsm_core::StateMachine;
use fsm_examples::registrar::{Order, OrderCmd};
use fsm_examples::registrar_service::{self, census, order_id, place, settle, Counters};

/// Orders started by each run.
const ORDERS: usize = 300;
/// Client threads submitting concurrently.
const CLIENTS: usize = 8;

/// Places run `run`'s orders from `CLIENTS` threads, printing `placed <i>` as each is done.
fn place_all(kernel: &fsm_core::kernel::Kernel<Order>, run: u64, progress: bool) {
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let submitter = kernel.handle();
            s.spawn(move || {
                let mut rng = fastrand::Rng::new();
                for i in (c..ORDERS).step_by(CLIENTS) {
                    place(&submitter, run, i, &mut rng);
                    if progress {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "placed {i}").and_then(|()| out.flush());
                    }
                }
            });
        }
    });
}

/// The child of `--kill-mid-run`: places the orders of run 1 and waits to be killed.
fn child(dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    std::panic::set_hook(Box::new(|_| {}));
    let kernel = registrar_service::start(Path::new(dir), &Counters::default())?;
    place_all(&kernel, 1, true);
    println!("done");
    loop {
        std::thread::park();
    }
}

/// `--kill-mid-run`: the orders in a child, SIGKILLed mid-run, then a restart that settles
/// what it owed.
fn kill_mid_run(dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    let _ = std::fs::remove_dir_all(dir);
    let mut child = Command::new(std::env::current_exe()?)
        .args([dir, "--child"])
        .stdout(Stdio::piped())
        .spawn()?;
    let lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    // Killed once a third of the orders are placed: registrations of the paid ones are owed,
    // running, or waiting for a retry.
    let mut placed = 0;
    for line in lines {
        if line?.starts_with("placed") {
            placed += 1;
            if placed == ORDERS / 3 {
                break;
            }
        }
    }
    child.kill()?; // SIGKILL
    child.wait()?;
    println!("Killed the registrar (SIGKILL) after {placed} of {ORDERS} orders were placed.");

    // What the dead process left owed, read from the store before anything runs it.
    let ids: Vec<MachineId> = (0..ORDERS).map(|i| order_id(1, i)).collect();
    let store = fsm_persist::FileStore::open(dir)?;
    let owing = ids
        .iter()
        .filter(|id| store.get(id).is_ok_and(|s| s.outbox().is_some()))
        .count();
    drop(store);
    println!(
        "The store holds {owing} orders that owe effects (a registration, a notice, a refund)."
    );

    std::panic::set_hook(Box::new(|_| {}));
    let counters = Counters::default();
    let kernel = registrar_service::start(Path::new(dir), &counters)?;
    println!("Restarted: {}.", kernel.recovery());
    let took = settle(&kernel, &ids, Duration::from_secs(120))
        .map_err(|owing| format!("still owing after 120 s: {owing:?}"))?;
    kernel.wait_idle();
    let states = census(&kernel, &ids);
    println!(
        "Settled in {took:.1?} ({} registration attempts after the restart): orders by state {states:?}",
        counters.attempts.load(Ordering::Relaxed)
    );
    let paid = states.get("Paid").copied().unwrap_or(0);
    kernel.shutdown(Shutdown::Drain);
    if paid > 0 {
        return Err(format!("{paid} orders stuck in Paid").into());
    }
    println!(
        "No order is stuck in Paid: every registration owed at the kill ran after the restart."
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "target/domain-order-data".to_owned());
    if args.iter().any(|a| a == "--child") {
        return child(&dir);
    }
    if args.iter().any(|a| a == "--kill-mid-run") {
        return kill_mid_run(&dir);
    }
    // The flaky registrar panics on purpose; the kernel catches and counts it. Keep the
    // output to the report.
    std::panic::set_hook(Box::new(|_| {}));

    let counters = Counters::default();
    let kernel = registrar_service::start(Path::new(&dir), &counters)?;
    let recovered = kernel.recovery();
    let run = recovered.recovered as u64 / ORDERS as u64 + 1;
    println!("Data directory: {dir}");
    if recovered.recovered > 0 || !recovered.quarantined.is_empty() {
        println!("Recovered from the previous runs: {recovered}");
    } else {
        println!("Fresh start: no stored orders.");
    }
    println!("Run {run}: {ORDERS} new orders from {CLIENTS} concurrent clients.\n");

    // Phase 1: customers submit and pay; the registrar works the paid orders (until nothing
    // is owed: a registration waiting for its retry is not work in flight).
    place_all(&kernel, run, false);
    let ids: Vec<MachineId> = (0..ORDERS).map(|i| order_id(run, i)).collect();
    settle(&kernel, &ids, Duration::from_secs(120)).map_err(|o| format!("still owing: {o:?}"))?;
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
            .with_key(fsm_core::kernel::IdempotencyKey::new(format!(
                "pay-again-{run}-{i}"
            ))?);
            if let Err(e) = kernel.submit(&id, pay)?.wait() {
                println!("  retry of {id} refused: {e}");
            }
        }
    }
    kernel.wait_idle();

    settle(&kernel, &ids, Duration::from_secs(120)).map_err(|o| format!("still owing: {o:?}"))?;
    kernel.wait_idle();

    // Where every order of this run ended.
    let mut states: BTreeMap<&'static str, usize> = BTreeMap::new();
    for id in &ids {
        match kernel.state(id) {
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
            "Registrar worker {i}: {} effects, {} errors (retried {}, given up {}), {} panics, {} restarts{}",
            w.effects,
            w.errors,
            w.retries,
            w.given_up,
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
        counters.notified.load(Ordering::Relaxed),
        counters.refunded.load(Ordering::Relaxed)
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
