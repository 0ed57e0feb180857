//! A checkout that must finish within its deadline, whatever the customer does inside it: the
//! superstate `Checkout` declares the deadline once (`state_timeout`), and moves between its
//! states (the cart, the card, the invoice, a declined card) keep it running; only leaving the
//! checkout (paying, cancelling) cancels it. The deadline is durable: a process that stops in
//! the middle of a checkout and starts again over the same directory expires it on time.
//!
//! Run with `cargo run --example checkout` (the deadline is scaled down to 600 ms).

use std::time::{Duration, Instant};

use fsm_core::kernel::{Kernel, Shutdown};
use fsm_core::store::MachineId;
use fsm_core::{Event, StateMachine};
use serde::{Deserialize, Serialize};

/// The checkout's deadline (30 minutes in a shop; scaled down here).
const DEADLINE_MS: u64 = 600;

#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(
    event = Step,
    superstate(
        Checkout,
        initial = Cart,
        state_timeout(ms = DEADLINE_MS => Expire),
        on(Expire => Expired, plain),
        on(Cancel => Cancelled, plain)
    ),
    superstate(Paying, parent = Checkout, initial = Card, on(Decline => Card, plain))
)]
enum Order {
    #[fsm(initial, parent = Checkout, on(Pay => Paying, plain))]
    Cart,
    #[fsm(parent = Paying, on(Switch => Invoice, plain), on(Approve => Paid, plain))]
    Card,
    #[fsm(parent = Paying, on(Back => Cart, plain), on(Approve => Paid, plain))]
    Invoice,
    #[fsm(terminal)]
    Paid,
    #[fsm(terminal)]
    Expired,
    #[fsm(terminal)]
    Cancelled,
}

#[derive(Event, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Step {
    Pay,
    Switch,
    Back,
    Decline,
    Approve,
    Cancel,
    Expire,
}

fn start(dir: &std::path::Path) -> Result<Kernel<Order>, Box<dyn std::error::Error>> {
    Ok(fsm_persist::file_kernel(dir, |_| Order::Cart).start()?)
}

/// Waits (at most ten deadlines) for `id` to reach a terminal state; returns it.
fn settled(kernel: &Kernel<Order>, id: &MachineId) -> Order {
    let give_up = Instant::now() + Duration::from_millis(10 * DEADLINE_MS);
    loop {
        let (order, _) = kernel.state(id).expect("the order loads");
        if Order::TABLE.is_terminal(order.state()) || Instant::now() > give_up {
            return order;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("{}", Order::TABLE.to_mermaid());
    let tmp = tempfile::tempdir()?;
    let kernel = start(tmp.path())?;
    let step = |id: &MachineId, s: Step| -> Result<(), Box<dyn std::error::Error>> {
        kernel.submit(id, s)?.wait()?;
        Ok(())
    };
    let pause = || std::thread::sleep(Duration::from_millis(DEADLINE_MS / 6));

    // A customer who dithers inside the checkout: five moves, none leaves it.
    let dithers = MachineId::new("dithers")?;
    let began = Instant::now();
    for s in [
        Step::Pay,
        Step::Switch,
        Step::Back,
        Step::Pay,
        Step::Decline,
    ] {
        step(&dithers, s)?;
        pause();
    }
    let order = settled(&kernel, &dithers);
    let took = began.elapsed();
    println!(
        "dithers: {order:?} after {} ms and five moves inside the checkout (deadline {DEADLINE_MS} ms)",
        took.as_millis()
    );

    // A customer who pays in time: leaving the checkout cancels the deadline.
    let pays = MachineId::new("pays")?;
    for s in [Step::Pay, Step::Approve] {
        step(&pays, s)?;
    }
    std::thread::sleep(Duration::from_millis(2 * DEADLINE_MS));
    let paid = kernel.state(&pays)?.0;
    println!("pays: {paid:?}, and still so two deadlines later");

    // A process that stops in the middle of a checkout: the next one expires it on time.
    let restarts = MachineId::new("restarts")?;
    let began = Instant::now();
    step(&restarts, Step::Pay)?;
    kernel.shutdown(Shutdown::Drain);
    let kernel = start(tmp.path())?;
    let (order, _) = kernel.state(&restarts)?;
    println!("restarts: {order:?} after the restart");
    let order = settled(&kernel, &restarts);
    let took = began.elapsed();
    let on_time = order == Order::Expired && took >= Duration::from_millis(DEADLINE_MS);
    println!(
        "restarts: {order:?} {} ms after it began, across the restart: expired at its deadline: {on_time}",
        took.as_millis()
    );
    kernel.shutdown(Shutdown::Drain);
    if order != Order::Expired || paid != Order::Paid {
        return Err("the checkout's deadline did not hold".into());
    }
    Ok(())
}
