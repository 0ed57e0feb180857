//! Two registrar nodes over one PostgreSQL database: node A owns every order, node B stands
//! by. A pauses (its heartbeat stops) in the middle of a commit; once A's lease runs out B
//! takes the orders over from their last acknowledged state; A wakes up and its late write is
//! refused by the database (fenced); its commands are sent on to B with their idempotency
//! keys, so each applies once. The report shows the timeline and who committed what.
//!
//! Run with `cargo run --example failover`: it starts a throwaway PostgreSQL from the
//! machine's server binaries (Debian: `apt-get install postgresql`). Or pass a connection
//! string for a server of your own (the demo works in a schema of its own and drops it):
//! `cargo run --example failover -- "host=/run/postgresql user=me dbname=orders"`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fsm_core::kernel::{CommandError, IdempotencyKey, Kernel, Request, Shutdown};
use fsm_core::store::{MachineId, SnapshotStore};
use fsm_examples::registrar::{Order, OrderCmd};
use fsm_persist::fault::Pausable;
use fsm_persist::postgres::{Ownership, PostgresStore, TestServer};

const ORDERS: usize = 40;
const LEASE: Duration = Duration::from_secs(1);

fn order(i: usize) -> MachineId {
    MachineId::new(format!("order-{i:03}")).expect("a valid id")
}

fn keyed(cmd: OrderCmd, key: &str) -> Request<OrderCmd> {
    Request::new(cmd).with_key(IdempotencyKey::new(key).expect("a valid key"))
}

fn kernel(store: Arc<dyn SnapshotStore>) -> Kernel<Order> {
    Kernel::builder_shared(store, |_| Order::Draft)
        .shards(2)
        .start()
        .expect("the kernel starts")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server;
    let (config, schema) = match std::env::args().nth(1) {
        Some(url) => (url.parse()?, format!("fsm_failover_{}", std::process::id())),
        None => {
            server = TestServer::start()?;
            (server.config(), "failover".to_owned())
        }
    };
    let node = |name: &str, heartbeat| {
        PostgresStore::builder(config.clone())
            .schema(schema.clone())
            .ownership(
                Ownership::new(name)
                    .partitions(16)
                    .lease(LEASE)
                    .heartbeat(heartbeat),
            )
            .open()
            .map(Arc::new)
    };
    // A's heartbeat is driven below, so that it can pause; B beats on its own thread.
    let store_a = node("node-a", None)?;
    let store_b = node("node-b", Some(LEASE / 5))?;
    println!(
        "node A holds {} partitions, node B {} (lease {LEASE:?})",
        store_a.held().len(),
        store_b.held().len()
    );
    // A's writes go through a gate: closing it is A pausing in the middle of a commit.
    let gate = Arc::new(Pausable::new(store_a.clone()));
    let (a, b) = (kernel(gate.clone()), kernel(store_b.clone()));

    // Customers submit and pay through a router that asks B too; B owns nothing, so it hands
    // every command back (answered Fenced) and A commits them.
    let mut handed_back_by_b = 0;
    for i in 0..ORDERS {
        store_a.heartbeat()?;
        let submit = OrderCmd::Submit {
            domain: format!("shop{i}.example"),
        };
        let pay = OrderCmd::Pay {
            cents: 1_500,
            card_token: format!("tok-{i}"),
        };
        for (cmd, key) in [(submit, format!("submit-{i}")), (pay, format!("pay-{i}"))] {
            if let Err(e) = b.submit(&order(i), keyed(cmd.clone(), &key))?.wait() {
                assert!(e.is_fenced(), "B refuses what it does not own: {e}");
                handed_back_by_b += b.take_handed_back().len();
            }
            a.submit(&order(i), keyed(cmd, &key))?.wait()?;
        }
    }
    println!(
        "{ORDERS} orders submitted and paid: node A committed {}, node B handed back {handed_back_by_b}",
        a.metrics().total.counts.committed
    );

    // A pauses in the middle of committing the registrar's confirmations.
    gate.pause();
    let late: Vec<_> = (0..ORDERS)
        .map(|i| a.submit(&order(i), keyed(OrderCmd::Confirm, &format!("confirm-{i}"))))
        .collect::<Result<_, _>>()?;
    let paused = Instant::now();
    println!("node A paused mid-commit (its heartbeat stops)");
    while store_b.held().len() < 16 {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "node B took every partition over {:.2?} after A paused, under epoch {}",
        paused.elapsed(),
        store_b.held().iter().map(|&(_, e)| e).max().unwrap_or(0)
    );
    // A wakes up: its held commit reaches the database, which refuses the stale epoch.
    gate.resume();
    let mut fenced = 0;
    for ticket in late {
        match ticket.wait() {
            Err(CommandError::Fenced { error, .. }) => {
                fenced += 1;
                if fenced == 1 {
                    println!("node A's late write: {error}");
                }
            }
            other => panic!("A's late commit must be fenced, got {other:?}"),
        }
    }
    // The router sends what A did not commit to B, with the same keys.
    for i in 0..ORDERS {
        let done = b
            .submit(&order(i), keyed(OrderCmd::Confirm, &format!("confirm-{i}")))?
            .wait()?;
        assert_eq!(done.transition.to_name(), "Registered");
    }
    let registered = (0..ORDERS)
        .filter(|&i| matches!(b.state(&order(i)), Ok((Order::Registered { .. }, Some(3)))))
        .count();
    println!(
        "node A: {fenced} late commands fenced, {} fenced in all; node B: committed {}, \
         {registered} of {ORDERS} orders registered at sequence 3 (A's two, then B's)",
        a.metrics().total.counts.fenced,
        b.metrics().total.counts.committed
    );
    a.shutdown(Shutdown::HandBack);
    b.shutdown(Shutdown::Drain);
    if std::env::args().nth(1).is_some() {
        let mut client = config.connect(postgres::NoTls)?;
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))?;
    }
    Ok(())
}
