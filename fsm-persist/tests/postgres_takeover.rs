//! Two nodes over one PostgreSQL database, each a kernel with a connection pool of its own,
//! contending for the same machines: at every moment at most one of them commits a machine's
//! commands; when the owner stops, or pauses past its lease in the middle of a commit, the
//! other takes over from the last acknowledged state; the old owner's late writes are refused
//! with `Fenced`; and nothing it acknowledged is lost.
#![allow(missing_docs)]

mod kernel_machine;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsm_core::kernel::{Answer, CommandError, IdempotencyKey, Kernel, Request, Shutdown};
use fsm_core::queue::Ticket;
use fsm_core::store::{Codec, MachineId, SnapshotStore, SnapshotStoreExt, StoreError};
use fsm_persist::fault::Pausable;
use fsm_persist::postgres::{Ownership, PostgresStore, TestServer};
use kernel_machine::{Tally, TallyCmd};

const MACHINES: usize = 12;
const PARTITIONS: u32 = 8;

fn machine(i: usize) -> MachineId {
    MachineId::new(format!("tally-{i}")).unwrap()
}

fn open(schema: &str, ownership: Ownership) -> Arc<PostgresStore> {
    let server = TestServer::shared().expect("checked by the caller");
    Arc::new(
        PostgresStore::builder(server.config())
            .schema(schema)
            .pool_size(4)
            .ownership(ownership.partitions(PARTITIONS))
            .open()
            .unwrap(),
    )
}

fn kernel(store: Arc<dyn SnapshotStore>) -> Kernel<Tally> {
    Kernel::builder_shared(store, |_| Tally::Open { total: 0 })
        .shards(2)
        .start()
        .unwrap()
}

/// Repeats `f` until it is true, for at most `limit` (a lease running out takes real time).
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "condition not reached in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every command sent, and every acknowledgement by node.
#[derive(Default)]
struct Ledger {
    /// key -> (machine, amount)
    sent: BTreeMap<String, (usize, u64)>,
    /// (node, machine) -> sequences acknowledged, in order
    acked: BTreeMap<(char, usize), Vec<u64>>,
    fenced: usize,
    /// Fenced answers to writes the database itself refused (it reported the owner's epoch),
    /// not only this node's own view.
    refused_by_database: usize,
    next: u64,
}

impl Ledger {
    fn command(&mut self, m: usize) -> (String, Request<TallyCmd>) {
        self.next += 1;
        let key = format!("k{}", self.next);
        self.sent.insert(key.clone(), (m, self.next));
        let request = Request::new(TallyCmd::Add { amount: self.next })
            .with_key(IdempotencyKey::new(key.clone()).unwrap());
        (key, request)
    }

    fn request(&self, key: &str) -> Request<TallyCmd> {
        let (_, amount) = self.sent[key];
        Request::new(TallyCmd::Add { amount }).with_key(IdempotencyKey::new(key).unwrap())
    }

    /// Waits for `ticket` and records its answer; returns whether it was fenced.
    fn settle(&mut self, node: char, key: &str, ticket: Ticket<Answer>) -> bool {
        let m = self.sent[key].0;
        match ticket.wait() {
            Ok(c) if !c.duplicate => {
                self.acked.entry((node, m)).or_default().push(c.seq);
                false
            }
            Ok(_) => false,
            Err(CommandError::Fenced { error, .. }) => {
                self.fenced += 1;
                if matches!(
                    *error,
                    StoreError::Fenced {
                        held: Some(1),
                        current: Some(2),
                        ..
                    }
                ) {
                    self.refused_by_database += 1;
                }
                true
            }
            Err(e) => panic!("node {node}, {key}: {e}"),
        }
    }

    /// The committed history of every machine is one chain: every sequence the owner
    /// acknowledged comes before every sequence the new owner did (never interleaved, never
    /// one sequence from both), together they are 1 to the stored sequence with no gap
    /// (commands committed together share their snapshot's sequence); and the stored total is
    /// exactly the sum of every command sent (each applied once).
    fn check(&self, store: &dyn SnapshotStore, first: char, second: char) {
        let codec = Codec::<Tally>::new(1);
        for m in 0..MACHINES {
            let a = self.acked.get(&(first, m)).cloned().unwrap_or_default();
            let b = self.acked.get(&(second, m)).cloned().unwrap_or_default();
            if let (Some(last), Some(next)) = (a.iter().max(), b.iter().min()) {
                assert!(
                    last < next,
                    "machine {m}: node {first} acknowledged {a:?}, node {second} {b:?}"
                );
            }
            let mut chain: Vec<u64> = a.iter().chain(&b).copied().collect();
            chain.sort_unstable();
            chain.dedup();
            let want: u64 = self
                .sent
                .values()
                .filter(|(mm, _)| *mm == m)
                .map(|(_, amount)| amount)
                .sum();
            let (tally, seq) = store.load(&machine(m), &codec).unwrap().unwrap();
            assert_eq!(
                chain,
                (1..=seq).collect::<Vec<u64>>(),
                "machine {m}: every commit acknowledged, no gap ({first} {a:?}, {second} {b:?})"
            );
            assert_eq!(
                tally.total(),
                want,
                "machine {m}: every command applied once"
            );
        }
    }
}

#[test]
fn the_standby_takes_over_from_the_last_acknowledged_state_when_the_owner_stops() {
    if TestServer::shared().is_none() {
        return;
    }
    // The lease only bounds the takeover asserted below (a released partition is taken at
    // B's next beat, 100 ms): long, so that a loaded machine cannot stretch a beat past it.
    let lease = Duration::from_secs(20);
    let beat = Some(Duration::from_millis(100));
    let store_a = open(
        "takeover_stop",
        Ownership::new("a").lease(lease).heartbeat(beat),
    );
    let store_b = open(
        "takeover_stop",
        Ownership::new("b").lease(lease).heartbeat(beat),
    );
    assert_eq!(store_a.held().len(), PARTITIONS as usize);
    assert!(store_b.held().is_empty());
    let (ka, kb) = (kernel(store_a.clone()), kernel(store_b.clone()));
    let mut ledger = Ledger::default();

    // Both nodes get every command at once, A's copy and B's with the same key.
    for round in 0..5 {
        let mut tickets = Vec::new();
        for m in 0..MACHINES {
            let (key, request) = ledger.command(m);
            let copy = ledger.request(&key);
            let tb = kb.submit(&machine(m), copy).unwrap();
            let ta = ka.submit(&machine(m), request).unwrap();
            tickets.push((key, ta, tb));
        }
        for (key, ta, tb) in tickets {
            assert!(
                ledger.settle('b', &key, tb),
                "round {round}: B owns nothing"
            );
            assert!(
                !ledger.settle('a', &key, ta),
                "round {round}: A owns everything"
            );
        }
    }
    assert_eq!(kb.take_handed_back().len(), 5 * MACHINES);
    assert_eq!(kb.metrics().total.counts.committed, 0);

    // A stops: its kernel drains, its store is dropped and releases every partition.
    let report = ka.shutdown(Shutdown::Drain);
    assert!(report.handed_back.is_empty());
    drop(store_a);
    let stopped = Instant::now();
    eventually(Duration::from_secs(10), || {
        store_b.held().len() == PARTITIONS as usize
    });
    assert!(
        stopped.elapsed() < lease,
        "a released partition is taken at the next heartbeat, not after the lease"
    );

    // B serves every machine from A's last acknowledged state.
    for _ in 0..3 {
        let mut tickets = Vec::new();
        for m in 0..MACHINES {
            let (key, request) = ledger.command(m);
            tickets.push((key, kb.submit(&machine(m), request).unwrap()));
        }
        for (key, t) in tickets {
            assert!(!ledger.settle('b', &key, t));
        }
    }
    ledger.check(&*store_b, 'a', 'b');
    assert_eq!(kb.metrics().total.counts.not_stored, 0);
}

#[test]
fn an_owner_paused_past_its_lease_mid_commit_is_fenced_and_loses_nothing_it_acknowledged() {
    if TestServer::shared().is_none() {
        return;
    }
    // A's heartbeat is driven here (once per round), so stopping it is A pausing; the lease
    // is long against a round (six commands), so a loaded machine does not lapse it early,
    // and B waits it out once after A pauses.
    let lease = Duration::from_secs(5);
    let store_a = open(
        "takeover_pause",
        Ownership::new("a").lease(lease).heartbeat(None),
    );
    let store_b = open(
        "takeover_pause",
        Ownership::new("b")
            .lease(lease)
            .heartbeat(Some(Duration::from_millis(50))),
    );
    // A's writes go through a gate: closing it is A pausing in the middle of a commit.
    let paused = Arc::new(Pausable::new(store_a.clone()));
    let (ka, kb) = (kernel(paused.clone()), kernel(store_b.clone()));
    let mut ledger = Ledger::default();
    for _ in 0..4 {
        store_a.heartbeat().unwrap();
        let mut tickets = Vec::new();
        for m in 0..MACHINES {
            let (key, request) = ledger.command(m);
            tickets.push((key, ka.submit(&machine(m), request).unwrap()));
        }
        for (key, t) in tickets {
            assert!(!ledger.settle('a', &key, t));
        }
    }
    assert!(
        store_b.held().is_empty(),
        "A's lease is live while it beats"
    );

    // A pauses in the middle of a commit and stops beating.
    paused.pause();
    let mut late = Vec::new();
    for m in 0..MACHINES {
        let (key, request) = ledger.command(m);
        late.push((key, ka.submit(&machine(m), request).unwrap()));
    }
    paused.wait_for_writer();
    // B takes every partition once A's lease ran out, and moves the machines on.
    eventually(lease * 10, || store_b.held().len() == PARTITIONS as usize);
    let mut tickets = Vec::new();
    for m in 0..MACHINES {
        let (key, request) = ledger.command(m);
        tickets.push((key, kb.submit(&machine(m), request).unwrap()));
    }
    for (key, t) in tickets {
        assert!(
            !ledger.settle('b', &key, t),
            "{key}: B owns the machines now"
        );
    }

    // A resumes: its held commit reaches the database, which refuses it (stale epoch).
    paused.resume();
    let mut resubmit = Vec::new();
    for (key, t) in late {
        assert!(
            ledger.settle('a', &key, t),
            "{key}: A's late write must be fenced"
        );
        resubmit.push(key);
    }
    assert!(
        ledger.refused_by_database > 0,
        "the held commit reached the database under epoch 1 and was refused there"
    );
    // A no longer applies anything: new commands are handed back unapplied.
    let (key, request) = ledger.command(0);
    let t = ka.submit(&machine(0), request).unwrap();
    assert!(ledger.settle('a', &key, t));
    // Handed back: the new command, and the late ones A had not applied yet when it learnt
    // (those it applied in memory were voided and answered Fenced, not handed back).
    resubmit.push(key.clone());
    let back: Vec<String> = ka
        .take_handed_back()
        .into_iter()
        .map(|(_, r)| r.key().unwrap().as_str().to_owned())
        .collect();
    assert_eq!(back.last(), Some(&key));
    assert!(back.iter().all(|k| resubmit.contains(k)), "{back:?}");
    // The client sends everything A did not apply to B, with the same keys.
    let mut tickets = Vec::new();
    for key in resubmit {
        let m = ledger.sent[&key].0;
        tickets.push((
            key.clone(),
            kb.submit(&machine(m), ledger.request(&key)).unwrap(),
        ));
    }
    for (key, t) in tickets {
        assert!(!ledger.settle('b', &key, t));
    }
    ledger.check(&*store_b, 'a', 'b');
    let counts = ka.metrics().total.counts;
    assert_eq!(counts.fenced, MACHINES as u64 + 1);
    assert_eq!(counts.committed, 4 * MACHINES as u64);
    // Every row was last written under B's epoch (2: A held 1), as the database says.
    let mut sql = TestServer::shared()
        .unwrap()
        .config()
        .connect(postgres::NoTls)
        .unwrap();
    let epochs: Vec<i64> = sql
        .query(
            "SELECT DISTINCT epoch FROM takeover_pause.fsm_snapshots",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(epochs, vec![2]);
}
