//! The registrar service under kill -9: a child process places orders (each paid order owes
//! its registration, a durable effect run by a flaky worker) and is SIGKILLed at a random
//! moment, cycle after cycle, on one data directory. Then one more start settles what the dead
//! processes owed: no order is left `Paid` (a registration nobody runs), and every order that
//! was paid ended `Registered` or `Failed` (told by the registrar, or given up after its
//! attempts).
//!
//! `FSM_REGISTRAR_CYCLES` sets the cycles (default 8); `FSM_KILL_SEED` replays a run.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fsm_core::store::MachineId;
use fsm_examples::registrar_service::{self, census, order_id, place, settle, Counters};

const ORDERS: usize = 60;

fn child(dir: &str, run: u64) {
    std::panic::set_hook(Box::new(|_| {}));
    let kernel = registrar_service::start(dir.as_ref(), &Counters::default()).unwrap();
    let submitter = kernel.handle();
    let mut rng = fastrand::Rng::new();
    std::thread::scope(|s| {
        for c in 0..4 {
            let submitter = submitter.clone();
            let mut rng = fastrand::Rng::with_seed(rng.u64(..));
            s.spawn(move || {
                for i in (c..ORDERS).step_by(4) {
                    place(&submitter, run, i, &mut rng);
                    println!("placed {i}");
                }
            });
        }
    });
    println!("done");
    loop {
        std::thread::park();
    }
}

fn main() {
    if let (Ok(dir), Ok(run)) = (
        std::env::var("FSM_REGISTRAR_CHILD"),
        std::env::var("FSM_REGISTRAR_RUN"),
    ) {
        child(&dir, run.parse().unwrap());
        return;
    }
    let cycles: u64 = std::env::var("FSM_REGISTRAR_CYCLES").map_or(8, |v| v.parse().unwrap());
    let seed: u64 =
        std::env::var("FSM_KILL_SEED").map_or_else(|_| fastrand::u64(..), |v| v.parse().unwrap());
    println!("registrar_kill9: {cycles} cycles, FSM_KILL_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("orders");
    let started = Instant::now();
    let mut placed_total = 0;
    for run in 1..=cycles {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("FSM_REGISTRAR_CHILD", &dir)
            .env("FSM_REGISTRAR_RUN", run.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Killed after a random number of orders: registrations owed, running, retrying.
        let kill_after = rng.usize(1..ORDERS);
        let mut placed = 0;
        for line in lines {
            if line.unwrap().starts_with("placed") {
                placed += 1;
                if placed == kill_after {
                    break;
                }
            }
        }
        // A random extra moment, so the kill also lands inside a commit or an answer.
        std::thread::sleep(Duration::from_micros(rng.u64(0..3_000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        placed_total += placed;
    }
    std::panic::set_hook(Box::new(|_| {}));
    let kernel = registrar_service::start(&dir, &Counters::default()).unwrap();
    let ids: Vec<MachineId> = (1..=cycles)
        .flat_map(|run| (0..ORDERS).map(move |i| order_id(run, i)))
        .collect();
    let settled = settle(&kernel, &ids, Duration::from_secs(120));
    kernel.wait_idle();
    // The worker's panics were on purpose; the checks' are not.
    drop(std::panic::take_hook());
    if let Err(owing) = settled {
        panic!("still owing after the restart (seed {seed}): {owing:?}");
    }
    let states = census(&kernel, &ids);
    assert_eq!(
        states.get("Paid"),
        None,
        "orders stuck in Paid after the kills (seed {seed}): {states:?}"
    );
    assert!(
        states.get("Registered").copied().unwrap_or(0) > 0,
        "nothing registered (seed {seed}): {states:?}"
    );
    println!(
        "registrar_kill9: {cycles} SIGKILLs after {placed_total} orders placed, none left Paid: {states:?}, {:.1?}",
        started.elapsed()
    );
}
