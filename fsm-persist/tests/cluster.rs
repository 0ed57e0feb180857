//! The cluster's inbox against a real PostgreSQL server started by the tests: commands
//! submitted on a node that does not own their machine, resubmissions under one key, order
//! per machine across nodes, a lost notification, a full inbox, an owner that died between
//! applying and recording, retention, and bad input (an event the owner cannot decode, a
//! time to live that ran out, a key reused for another event).
//!
//! Each test uses a schema of its own on one shared server.
#![allow(missing_docs)]

mod kernel_machine;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fsm_core::kernel::{IdempotencyKey, Kernel, Request};
use fsm_core::store::{MachineId, SnapshotStore};
use fsm_persist::postgres::{
    Claim, Inbox, InboxCommand, InboxError, InboxTicket, Node, NodeBuilder, Ownership,
    PostgresStore, Status, TestServer,
};
use kernel_machine::{Tally, TallyCmd};

const PARTITIONS: u32 = 8;
/// Long enough for any answer on a loaded machine; every wait ends as soon as the answer is
/// there.
const WAIT: Duration = Duration::from_secs(60);
/// Every partition moves here because its owner released it (a store released on drop), never
/// because a lease ran out: a lease far longer than any stall of a loaded machine, so no
/// heartbeat missed under load moves a partition behind a test's back. The heartbeat takes a
/// released partition within a beat.
const LEASE: Duration = Duration::from_secs(30);

fn id(s: &str) -> MachineId {
    MachineId::new(s).unwrap()
}

fn key(s: &str) -> IdempotencyKey {
    IdempotencyKey::new(s).unwrap()
}

/// Repeats `f` until it gives `Some`, for at most [`WAIT`]: for what happens on another
/// thread or in the database. Ends as soon as the condition holds; the bound is only there to
/// fail rather than hang.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(start.elapsed() < WAIT, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`eventually`] for a condition.
fn until(what: &str, mut f: impl FnMut() -> bool) {
    eventually(what, || f().then_some(()));
}

fn server() -> Option<&'static TestServer> {
    TestServer::shared()
}

/// A store for node `name` claiming `claim`, with a heartbeat.
fn store(schema: &str, name: &str, claim: Claim) -> Arc<PostgresStore> {
    Arc::new(
        PostgresStore::builder(server().unwrap().config())
            .schema(schema)
            .pool_size(4)
            .ownership(
                Ownership::new(name)
                    .partitions(PARTITIONS)
                    .lease(LEASE)
                    .heartbeat(Some(Duration::from_millis(200)))
                    .claim(claim),
            )
            .open()
            .unwrap(),
    )
}

fn kernel(store: Arc<PostgresStore>) -> Kernel<Tally> {
    Kernel::builder_shared(store, |_| Tally::Open { total: 0 })
        .shards(2)
        .start()
        .unwrap()
}

fn options() -> NodeBuilder {
    NodeBuilder::new().poll(Duration::from_millis(200))
}

fn node(schema: &str, name: &str, claim: Claim) -> Node<Tally> {
    let s = store(schema, name, claim);
    options().start(kernel(s.clone()), s).unwrap()
}

fn add(machine: &MachineId, k: &str, amount: u64) -> InboxCommand {
    InboxCommand::new(machine.clone(), key(k), &TallyCmd::Add { amount }).unwrap()
}

/// A machine id in partition `p`.
fn machine_in(p: u32, tag: &str) -> MachineId {
    (0..)
        .map(|i| id(&format!("{tag}-{i}")))
        .find(|m| fsm_persist::postgres::partition_of(m, PARTITIONS) == p)
        .unwrap()
}

/// Starts node `a`, owning every partition of `schema`, and checks that each ticket's
/// command is applied.
fn served_by_a_new_owner<'t>(
    schema: &str,
    tickets: impl IntoIterator<Item = &'t InboxTicket>,
) -> Node<Tally> {
    let a = node(schema, "a", Claim::Free);
    for t in tickets {
        let d = t.wait(WAIT).unwrap();
        assert_eq!(d.status, Status::Applied, "{d:?}");
    }
    a
}

fn total(node: &Node<Tally>, m: &MachineId) -> u64 {
    node.kernel().state(m).unwrap().0.total()
}

#[test]
fn a_command_submitted_on_a_node_that_does_not_own_its_machine_is_applied_by_the_owner() {
    if server().is_none() {
        return;
    }
    let a = node("cl_route", "a", Claim::Only(vec![0, 1, 2, 3]));
    let b = node("cl_route", "b", Claim::Only(vec![4, 5, 6, 7]));
    let m = machine_in(5, "acct");
    let ticket = a.submit(add(&m, "k1", 7)).unwrap();
    let d = ticket.wait(WAIT).unwrap();
    assert_eq!(d.status, Status::Applied, "{d:?}");
    assert_eq!(d.node.as_deref(), Some("b"), "the owner decides: {d:?}");
    assert_eq!(d.seq, Some(1));
    assert!(d.transition.as_deref().unwrap().contains("Add"), "{d:?}");
    assert_eq!(total(&b, &m), 7);
    // The owner's kernel holds it; the other node's kernel is fenced off the machine.
    assert!(a.kernel().state(&m).is_err());
    // A client that owns nothing reads the same decision.
    let client = Inbox::builder(server().unwrap().config())
        .schema("cl_route")
        .open()
        .unwrap();
    assert_eq!(client.decision(&m, &key("k1")).unwrap().unwrap(), d);
    // The pump counts a decision after writing it: the ticket may be answered first.
    until("the owner never counted its decision", || {
        b.stats().applied >= 1
    });
    assert_eq!(a.stats().applied, 0);
    assert_eq!(b.stats().applied, 1);
}

#[test]
fn a_resubmission_with_the_same_key_is_the_same_command_and_another_event_under_it_is_refused() {
    if server().is_none() {
        return;
    }
    let a = node("cl_same_key", "a", Claim::Free);
    let m = id("acct-1");
    let first = a.submit(add(&m, "pay-1", 5)).unwrap();
    let again = a.submit(add(&m, "pay-1", 5)).unwrap();
    assert_eq!(first.row(), again.row(), "one row for one key");
    let d1 = first.wait(WAIT).unwrap();
    let d2 = again.wait(WAIT).unwrap();
    assert_eq!(d1, d2);
    // After the decision too: the same answer, nothing applied twice.
    let late = a.submit(add(&m, "pay-1", 5)).unwrap().wait(WAIT).unwrap();
    assert_eq!(late, d1);
    assert_eq!(total(&a, &m), 5);
    match a.submit(add(&m, "pay-1", 6)) {
        Err(InboxError::KeyReused { machine, key: k }) => {
            assert_eq!(machine, m);
            assert_eq!(k.as_str(), "pay-1");
        }
        other => panic!("expected KeyReused, got {other:?}"),
    }
    assert_eq!(total(&a, &m), 5);
}

#[test]
fn a_resubmission_of_a_decided_command_is_answered_at_once_not_at_the_next_poll() {
    let Some(server) = server() else {
        return;
    };
    let a = node("cl_resubmit_now", "a", Claim::Free);
    let m = id("acct-1");
    let d = a.submit(add(&m, "k1", 5)).unwrap().wait(WAIT).unwrap();
    // A client that polls once an hour, and whose answers thread was not listening when the
    // decision was notified: the resubmission's ticket is looked up when it is made.
    let client = Inbox::builder(server.config())
        .schema("cl_resubmit_now")
        .poll(Duration::from_secs(3600))
        .open()
        .unwrap();
    let again = client.submit(add(&m, "k1", 5)).unwrap();
    assert_eq!(again.row(), d.row);
    assert_eq!(again.wait(WAIT).unwrap(), d);
    assert_eq!(client.stats().polled, 0, "{:?}", client.stats());
    assert_eq!(total(&a, &m), 5);
}

/// A batch is first inserted as if every key were new; one that meets a known key runs again
/// with the arbiter. Each command of such a batch still gets its own answer.
#[test]
fn a_batch_that_mixes_new_keys_with_known_ones_answers_each_and_applies_the_new_ones_once() {
    if server().is_none() {
        return;
    }
    let a = node("cl_mixed_keys", "a", Claim::Free);
    let (m, n) = (id("acct-1"), id("acct-2"));
    let first = a.submit(add(&m, "k1", 5)).unwrap();
    let answers = a.submit_many(vec![
        add(&n, "k1", 1), // new: the same key on another machine is another command
        add(&m, "k1", 5), // known, same event: the same command
        add(&m, "k2", 7), // new
        add(&m, "k1", 9), // known, another event: refused
        add(&n, "k3", 2), // new, and again in the same batch
        add(&n, "k3", 2), // the same command as the one before it
        add(&n, "k3", 4), // the same key again in the batch, another event: refused
    ]);
    assert_eq!(answers.len(), 7);
    let mut answers = answers.into_iter();
    let n1 = answers.next().unwrap().unwrap();
    let again = answers.next().unwrap().unwrap();
    assert_eq!(again.row(), first.row(), "one row for one key");
    let m2 = answers.next().unwrap().unwrap();
    match answers.next().unwrap() {
        Err(InboxError::KeyReused { machine, key: k }) => {
            assert_eq!((machine, k.as_str()), (m.clone(), "k1"));
        }
        other => panic!("expected KeyReused, got {other:?}"),
    }
    let n3 = answers.next().unwrap().unwrap();
    let n3_again = answers.next().unwrap().unwrap();
    assert_eq!(
        n3.row(),
        n3_again.row(),
        "one row for one key within a batch"
    );
    assert!(
        matches!(answers.next().unwrap(), Err(InboxError::KeyReused { .. })),
        "a key given twice in one call with two events"
    );
    for t in [&first, &again, &n1, &m2, &n3, &n3_again] {
        assert_eq!(t.wait(WAIT).unwrap().status, Status::Applied);
    }
    assert_eq!(total(&a, &m), 12);
    assert_eq!(total(&a, &n), 3);
    // A batch of new keys only still goes in whole.
    let fresh: Vec<_> = a
        .submit_many((0..5).map(|i| add(&m, &format!("f{i}"), 1)).collect())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for t in &fresh {
        assert_eq!(t.wait(WAIT).unwrap().status, Status::Applied);
    }
    assert_eq!(total(&a, &m), 17);
}
#[test]
fn commands_for_one_machine_are_applied_in_submission_order_whichever_node_took_them() {
    if server().is_none() {
        return;
    }
    let a = node("cl_order", "a", Claim::Only(vec![0, 1, 2, 3]));
    let b = node("cl_order", "b", Claim::Only(vec![4, 5, 6, 7]));
    let m = machine_in(2, "ordered");
    let mut tickets = vec![];
    for i in 1..=40_u64 {
        let via = if i % 2 == 0 { &a } else { &b };
        tickets.push(via.submit(add(&m, &format!("o{i}"), i)).unwrap());
    }
    let seqs: Vec<u64> = tickets
        .iter()
        .map(|t| {
            let d = t.wait(WAIT).unwrap();
            assert_eq!(d.status, Status::Applied, "{d:?}");
            d.seq.unwrap()
        })
        .collect();
    assert_eq!(
        seqs,
        (1..=40).collect::<Vec<_>>(),
        "one snapshot per command, in order"
    );
    assert_eq!(total(&a, &m), (1..=40).sum::<u64>());
}

#[test]
fn batches_read_over_many_rounds_apply_each_command_once_in_submission_order() {
    if server().is_none() {
        return;
    }
    // A node that takes four commands at a time reads each 30-command batch over several
    // rounds; after the first, a batch's commands come from what the pump kept of it, and
    // only its decided slots are read again.
    let s = store("cl_rounds", "a", Claim::Free);
    let a = options().batch(4).start(kernel(s.clone()), s).unwrap();
    let machines: Vec<MachineId> = (0..3).map(|i| id(&format!("rounds-{i}"))).collect();
    let mut submitted = vec![];
    for b in 0..2_u64 {
        let commands = (0..30_u64)
            .map(|i| {
                let m = &machines[(i % 3) as usize];
                add(m, &format!("r{b}-{i}"), 100 * b + i + 1)
            })
            .collect();
        for (i, t) in a.submit_many(commands).into_iter().enumerate() {
            submitted.push((i % 3, t.unwrap()));
        }
    }
    let mut seqs: Vec<Vec<u64>> = vec![vec![]; 3];
    for (m, t) in &submitted {
        let d = t.wait(WAIT).unwrap();
        assert_eq!(d.status, Status::Applied, "{d:?}");
        seqs[*m].push(d.seq.unwrap());
    }
    for (m, seqs) in seqs.iter().enumerate() {
        assert_eq!(
            *seqs,
            (1..=20).collect::<Vec<u64>>(),
            "machine {m}: one snapshot per command, in submission order"
        );
        let expected: u64 = (0..2_u64)
            .flat_map(|b| {
                (0..30_u64)
                    .filter(move |i| i % 3 == m as u64)
                    .map(move |i| 100 * b + i + 1)
            })
            .sum();
        assert_eq!(total(&a, &machines[m]), expected, "machine {m}");
    }
    assert!(
        a.stats().rounds >= 15,
        "60 commands four at a time: {:?}",
        a.stats()
    );
}

/// Writes a command into the inbox by hand, as a submit does but without its notification:
/// a batch of one and its key.
fn write_by_hand(
    raw: &mut postgres::Client,
    schema: &str,
    machine: &str,
    partition: i32,
    key: &str,
    event: &str,
) {
    raw.execute(
        &format!(
            "WITH b AS (
                 INSERT INTO {schema}.fsm_snapshots_ibatch (n, partitions, machines, keys, events)
                 VALUES (1, ARRAY[$2::int4], ARRAY[$1::text], ARRAY[$3::text], ARRAY[$4::text])
                 RETURNING id
             )
             INSERT INTO {schema}.fsm_snapshots_ikeys (machine, key, batch, slot)
             SELECT $1::text, $3::text, id, 1 FROM b"
        ),
        &[&machine, &partition, &key, &event],
    )
    .unwrap();
}

#[test]
fn a_lost_notification_only_delays_the_command() {
    if server().is_none() {
        return;
    }
    let a = node("cl_lost", "a", Claim::Free);
    let m = id("quiet-1");
    // A command written without its NOTIFY, as if the notification were lost.
    let mut raw = server().unwrap().config().connect(postgres::NoTls).unwrap();
    write_by_hand(
        &mut raw,
        "cl_lost",
        m.as_str(),
        a.inbox().partition_of(&m) as i32,
        "silent-1",
        &serde_json::to_string(&TallyCmd::Add { amount: 3 }).unwrap(),
    );
    let d = eventually("never applied", || {
        a.inbox().decision(&m, &key("silent-1")).unwrap()
    });
    assert_eq!(d.status, Status::Applied);
    assert!(
        a.stats().missed_notifications >= 1,
        "found by polling: {:?}",
        a.stats()
    );
    assert_eq!(total(&a, &m), 3);
}

#[test]
fn a_full_inbox_refuses_with_full_and_stores_nothing() {
    if server().is_none() {
        return;
    }
    // The table exists, nobody serves it: commands wait in the inbox.
    let owner = store("cl_full", "idle", Claim::Nothing);
    let inbox = Inbox::builder(server().unwrap().config())
        .schema("cl_full")
        .limit(3)
        .open()
        .unwrap();
    let m = id("busy-1");
    let part = inbox.partition_of(&m);
    let mut tickets = vec![];
    for i in 0..3 {
        tickets.push(inbox.submit(add(&m, &format!("f{i}"), 1)).unwrap());
    }
    match inbox.submit(add(&m, "f3", 1)) {
        Err(InboxError::Full {
            partition,
            pending,
            limit,
        }) => {
            assert_eq!((partition, pending, limit), (part, 3, 3));
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(inbox.stats().refused_full, 1);
    let depth = inbox.depth().unwrap();
    assert_eq!(depth.len(), 1);
    assert_eq!((depth[0].partition, depth[0].pending), (part, 3));
    assert!(matches!(
        inbox.decision(&m, &key("f3")),
        Err(InboxError::Forgotten)
    ));
    // A machine of another partition still has room, also in a call where a command for the
    // full partition is refused: the batch stored holds the others, in order, with their
    // times to live.
    let other = machine_in((part + 1) % PARTITIONS, "other");
    let mut mixed = inbox.submit_many(vec![
        add(&other, "g0", 1).ttl(Duration::from_secs(3600)),
        add(&m, "f4", 1),
        add(&other, "g1", 2),
    ]);
    let g1 = mixed.pop().unwrap().expect("the other partition has room");
    let f4 = mixed.pop().unwrap();
    assert!(matches!(f4, Err(InboxError::Full { .. })), "{f4:?}");
    let g0 = mixed.pop().unwrap().expect("the other partition has room");
    assert_eq!(g1.row(), g0.row() + 1, "one batch, two slots");
    let others = [g0, g1];
    // Served at last: the accepted commands are applied.
    drop(owner);
    let a = served_by_a_new_owner("cl_full", tickets.iter().chain(&others));
    assert_eq!(total(&a, &m), 3);
    assert_eq!(total(&a, &other), 3);
}

#[test]
fn a_call_over_several_partitions_counts_each_and_keeps_each_time_to_live_with_its_command() {
    if server().is_none() {
        return;
    }
    let schema = "cl_calls";
    let owner = store(schema, "idle", Claim::Nothing);
    let inbox = Inbox::builder(server().unwrap().config())
        .schema(schema)
        .limit(3)
        .open()
        .unwrap();
    let a = machine_in(0, "calls-a");
    let b = machine_in(1, "calls-b");
    // One call, two partitions, times to live on the first and last commands only.
    let first: Vec<InboxTicket> = inbox
        .submit_many(vec![
            add(&a, "t0", 1).ttl(Duration::from_millis(1)),
            add(&b, "t1", 1),
            add(&a, "t2", 1).ttl(Duration::from_secs(3600)),
        ])
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        first[1].row(),
        first[0].row() + 1,
        "one batch, slot by slot"
    );
    assert_eq!(
        first[2].row(),
        first[0].row() + 2,
        "one batch, slot by slot"
    );
    // Partition 0 holds two, partition 1 one: each counted on its own.
    let t3 = inbox.submit(add(&a, "t3", 1)).unwrap();
    match inbox.submit(add(&a, "t4", 1)) {
        Err(InboxError::Full {
            partition, pending, ..
        }) => assert_eq!((partition, pending), (0, 3)),
        other => panic!("expected Full, got {other:?}"),
    }
    let more: Vec<InboxTicket> = inbox
        .submit_many(vec![add(&b, "t5", 1), add(&b, "t6", 1)])
        .into_iter()
        .map(Result::unwrap)
        .collect();
    match inbox.submit(add(&b, "t7", 1)) {
        Err(InboxError::Full {
            partition, pending, ..
        }) => assert_eq!((partition, pending), (1, 3)),
        other => panic!("expected Full, got {other:?}"),
    }
    // Each time to live is its own command's, by the database's clock.
    let mut raw = server().unwrap().config().connect(postgres::NoTls).unwrap();
    let deadline = |raw: &mut postgres::Client, k: &str| -> Option<bool> {
        raw.query_one(
            &format!(
                "SELECT deadline > clock_timestamp() + interval '30 minutes'
                 FROM {schema}.fsm_snapshots_inbox WHERE key = $1"
            ),
            &[&k],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(
        deadline(&mut raw, "t1"),
        None,
        "no time to live, no deadline"
    );
    assert_eq!(deadline(&mut raw, "t2"), Some(true));
    assert_eq!(deadline(&mut raw, "t3"), None);
    until("the time to live never passed", || {
        raw.query_one(
            &format!(
                "SELECT deadline < clock_timestamp() FROM {schema}.fsm_snapshots_inbox WHERE key = 't0'"
            ),
            &[],
        )
        .unwrap()
        .get(0)
    });
    drop(owner);
    let n = node(schema, "a", Claim::Free);
    assert_eq!(first[0].wait(WAIT).unwrap().status, Status::Expired);
    for t in first[1..].iter().chain([&t3]).chain(&more) {
        let d = t.wait(WAIT).unwrap();
        assert_eq!(d.status, Status::Applied, "{d:?}");
    }
    assert_eq!((total(&n, &a), total(&n, &b)), (2, 3));
}

#[test]
fn an_inbox_created_before_the_per_partition_counts_gets_them_and_counts_its_earlier_rows() {
    if server().is_none() {
        return;
    }
    let schema = "cl_counts";
    let owner = store(schema, "idle", Claim::Nothing);
    let open = || {
        Inbox::builder(server().unwrap().config())
            .schema(schema)
            .limit(3)
            .open()
            .unwrap()
    };
    let m = id("counted-1");
    let mut tickets = vec![];
    {
        let inbox = open();
        tickets.push(inbox.submit(add(&m, "c0", 1)).unwrap());
        tickets.push(inbox.submit(add(&m, "c1", 1)).unwrap());
    }
    // As an earlier build left it: no count columns, rows counted by nobody.
    let mut raw = server().unwrap().config().connect(postgres::NoTls).unwrap();
    raw.batch_execute(&format!(
        "ALTER TABLE {schema}.fsm_snapshots_ibatch DROP COLUMN parts, DROP COLUMN counts;
         ALTER TABLE {schema}.fsm_snapshots_idone DROP COLUMN parts, DROP COLUMN counts;"
    ))
    .unwrap();
    let inbox = open();
    let columns: i64 = raw
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_attribute
                 WHERE attrelid IN ('{schema}.fsm_snapshots_ibatch'::regclass,
                                    '{schema}.fsm_snapshots_idone'::regclass)
                   AND attname IN ('parts', 'counts') AND NOT attisdropped"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(columns, 4, "the columns are added back on open");
    // The two earlier commands count from their arrays, the new one from its counts.
    tickets.push(inbox.submit(add(&m, "c2", 1)).unwrap());
    match inbox.submit(add(&m, "c3", 1)) {
        Err(InboxError::Full { pending, limit, .. }) => assert_eq!((pending, limit), (3, 3)),
        other => panic!("expected Full, got {other:?}"),
    }
    drop(owner);
    let a = served_by_a_new_owner(schema, &tickets);
    assert_eq!(total(&a, &m), 3);
}

#[test]
fn a_ticket_that_outlives_its_inbox_still_gets_its_decision() {
    if server().is_none() {
        return;
    }
    let schema = "cl_orphan";
    let table = store(schema, "setup", Claim::Nothing);
    let m = id("orphan-1");
    let ticket = {
        let inbox = Inbox::builder(server().unwrap().config())
            .schema(schema)
            .open()
            .unwrap();
        inbox.submit(add(&m, "o1", 5)).unwrap()
        // The inbox, and its answers thread, end here: nobody listens for the ticket.
    };
    drop(table);
    let a = node(schema, "a", Claim::Free);
    let d = ticket.wait(WAIT).unwrap();
    assert_eq!(d.status, Status::Applied, "{d:?}");
    assert_eq!(total(&a, &m), 5);
}

#[test]
fn an_owner_that_died_between_applying_and_recording_is_followed_by_one_that_applies_nothing_twice()
{
    if server().is_none() {
        return;
    }
    let schema = "cl_died";
    let inbox = {
        let _table = store(schema, "setup", Claim::Nothing);
        Inbox::builder(server().unwrap().config())
            .schema(schema)
            .open()
            .unwrap()
    };
    let m = id("half-1");
    let ticket = inbox.submit(add(&m, "half-k", 9)).unwrap();
    {
        // The first owner's kernel applies the row's command under the row's key (what its
        // pump does), and the owner dies before recording the decision.
        let s = store(schema, "first", Claim::Free);
        let k = kernel(s.clone());
        let c = k
            .submit(
                &m,
                Request::new(TallyCmd::Add { amount: 9 }).with_key(key("half-k")),
            )
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(c.seq, 1);
        k.shutdown(fsm_core::kernel::Shutdown::Drain);
        // Dropping the store releases its partitions (a dead one's lease would run out).
    }
    assert!(
        inbox.decision(&m, &key("half-k")).unwrap().is_none(),
        "still pending"
    );
    let b = node(schema, "second", Claim::Free);
    let d = ticket.wait(WAIT).unwrap();
    assert_eq!(d.status, Status::Applied, "{d:?}");
    assert_eq!(d.seq, Some(1), "the first owner's write, not a second one");
    assert!(
        d.detail.as_deref().unwrap().contains("journal"),
        "answered from the machine's journal: {d:?}"
    );
    assert_eq!(d.node.as_deref(), Some("second"));
    assert_eq!(total(&b, &m), 9, "applied once");
    assert_eq!(b.store().sequence(&m).unwrap(), Some(1));
}

/// A node that starts on more expired batches than one cleanup statement deletes (a node
/// back after a while, or single-command submits faster than a page per `cleanup_every`)
/// deletes them all at once, page after page, not one page per `cleanup_every`: here a day.
#[test]
fn a_backlog_of_expired_batches_larger_than_a_page_is_deleted_without_waiting_for_the_next_pass() {
    let Some(server) = server() else {
        return;
    };
    let s = store("cl_backlog", "a", Claim::Free);
    // Creates the inbox's tables.
    drop(
        Inbox::builder(server.config())
            .schema("cl_backlog")
            .open()
            .unwrap(),
    );
    let mut raw = server.config().connect(postgres::NoTls).unwrap();
    raw.batch_execute(
        "WITH b AS (
             INSERT INTO cl_backlog.fsm_snapshots_ibatch (n, partitions, machines, keys, events, open, closed_at)
             SELECT 1, ARRAY[0], ARRAY['gone-' || g], ARRAY['k-' || g], ARRAY['{}'], false,
                    now() - interval '2 hours'
             FROM generate_series(1, 2500) g
             RETURNING id, machines, keys
         )
         INSERT INTO cl_backlog.fsm_snapshots_ikeys (machine, key, batch, slot)
         SELECT machines[1], keys[1], id, 1 FROM b",
    )
    .unwrap();
    let a = options()
        .retention(Duration::from_secs(3600))
        .cleanup_every(Duration::from_secs(24 * 3600))
        .start(kernel(s.clone()), s)
        .unwrap();
    let left = |raw: &mut postgres::Client, table: &str| -> i64 {
        raw.query_one(&format!("SELECT count(*) FROM cl_backlog.{table}"), &[])
            .unwrap()
            .get(0)
    };
    until("the backlog was not deleted", || {
        left(&mut raw, "fsm_snapshots_ibatch") == 0
    });
    assert_eq!(
        left(&mut raw, "fsm_snapshots_ikeys"),
        0,
        "the keys went with their batches"
    );
    until("the deletions were not counted", || {
        a.stats().deleted == 2500
    });
    // Within the retention window nothing goes: a command decided now stays.
    let m = id("kept-1");
    let d = a.submit(add(&m, "r1", 1)).unwrap().wait(WAIT).unwrap();
    assert_eq!(a.inbox().decision(&m, &key("r1")).unwrap(), Some(d));
}

#[test]
fn decisions_are_deleted_after_the_retention_window_and_the_journal_still_answers_a_late_retry() {
    if server().is_none() {
        return;
    }
    let s = store("cl_retain", "a", Claim::Free);
    let a = NodeBuilder::new()
        .poll(Duration::from_millis(200))
        .retention(Duration::ZERO)
        .cleanup_every(Duration::from_millis(50))
        .start(kernel(s.clone()), s)
        .unwrap();
    let m = id("old-1");
    let d = a.submit(add(&m, "r1", 4)).unwrap().wait(WAIT).unwrap();
    assert_eq!(d.status, Status::Applied);
    until("never cleaned up", || {
        matches!(
            a.inbox().decision(&m, &key("r1")),
            Err(InboxError::Forgotten)
        )
    });
    // Counted once the delete returns, which may be after the row is gone.
    until("the deletion was never counted", || a.stats().deleted >= 1);
    // Past the window the key is a new command for the inbox, but the machine's journal
    // still holds it: nothing is applied twice.
    let late = a.submit(add(&m, "r1", 4)).unwrap();
    assert_ne!(late.row(), d.row);
    let again = late.wait(WAIT).unwrap();
    assert_eq!(again.status, Status::Applied);
    assert_eq!(again.seq, Some(1));
    assert!(again.detail.unwrap().contains("journal"));
    assert_eq!(total(&a, &m), 4);
    // The cleanup's scan is bounded by an index on when batches were closed; without it
    // every pass reads every closed batch.
    let mut raw = server().unwrap().config().connect(postgres::NoTls).unwrap();
    let index: Option<String> = raw
        .query_opt(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'cl_retain' AND indexname = 'fsm_snapshots_ibc'",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0));
    let index = index.expect("the inbox has no index on closed_at");
    assert!(
        index.contains("(closed_at)") && index.contains("WHERE (NOT open)"),
        "{index}"
    );
    // Every row of the deleted batch went with it: its key, its decisions.
    for table in [
        "fsm_snapshots_ibatch",
        "fsm_snapshots_ikeys",
        "fsm_snapshots_idone",
    ] {
        let left: i64 = raw
            .query_one(
                &format!(
                    "SELECT count(*) FROM cl_retain.{table} WHERE {} = $1::int8",
                    if table.ends_with("ibatch") {
                        "id"
                    } else {
                        "batch"
                    }
                ),
                &[&(d.row / 65536)],
            )
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "{table} still holds rows of the deleted batch");
    }
}

#[test]
fn bad_input_is_decided_with_why_never_lost_and_never_a_panic() {
    if server().is_none() {
        return;
    }
    let schema = "cl_bad";
    let owner = store(schema, "idle", Claim::Nothing);
    let inbox = Inbox::builder(server().unwrap().config())
        .schema(schema)
        .open()
        .unwrap();
    let m = id("bad-1");
    // An event from a newer build: the owner cannot decode it.
    let unknown = inbox
        .submit(InboxCommand::json(m.clone(), key("b1"), r#"{"Refund":{"amount":1}}"#).unwrap())
        .unwrap();
    // A command whose time to live runs out before any owner serves the partition.
    let late = inbox
        .submit(add(&m, "b2", 1).ttl(Duration::from_millis(1)))
        .unwrap();
    // A well-formed one after them, for the same machine: not blocked by them.
    let good = inbox.submit(add(&m, "b3", 2)).unwrap();
    // Not JSON, or too large: refused before anything is stored.
    assert!(matches!(
        InboxCommand::json(m.clone(), key("b4"), "{not json"),
        Err(InboxError::InvalidEvent(_))
    ));
    assert!(matches!(
        InboxCommand::json(m.clone(), key("b5"), format!("\"{}\"", "x".repeat(70_000))),
        Err(InboxError::InvalidEvent(_))
    ));
    // The same bound for an event serialized here.
    assert!(matches!(
        InboxCommand::new(m.clone(), key("b6"), &"x".repeat(70_000)),
        Err(InboxError::InvalidEvent(_))
    ));
    // Wait until the time to live has surely passed by the database's clock.
    let mut raw = server().unwrap().config().connect(postgres::NoTls).unwrap();
    until("the time to live never passed", || {
        raw.query_one(
            "SELECT deadline < clock_timestamp() FROM cl_bad.fsm_snapshots_inbox WHERE key = 'b2'",
            &[],
        )
        .unwrap()
        .get(0)
    });
    drop(owner);
    let a = node(schema, "a", Claim::Free);
    let d = unknown.wait(WAIT).unwrap();
    assert_eq!(d.status, Status::Undecodable, "{d:?}");
    assert!(d.detail.unwrap().contains("node `a` cannot decode"));
    assert_eq!(late.wait(WAIT).unwrap().status, Status::Expired);
    assert_eq!(good.wait(WAIT).unwrap().status, Status::Applied);
    assert_eq!(total(&a, &m), 2);
    // A rejected command is recorded with the machine's reason.
    a.submit(InboxCommand::new(m.clone(), key("b6"), &TallyCmd::Close).unwrap())
        .unwrap()
        .wait(WAIT)
        .unwrap();
    let r = a.submit(add(&m, "b7", 1)).unwrap().wait(WAIT).unwrap();
    assert_eq!(r.status, Status::Rejected, "{r:?}");
    assert!(r.detail.is_some());
}

#[test]
fn an_inbox_on_a_table_without_fencing_is_refused_with_what_to_do() {
    let Some(server) = server() else {
        return;
    };
    let _plain = PostgresStore::builder(server.config())
        .schema("cl_plain")
        .open()
        .unwrap();
    let err = Inbox::builder(server.config())
        .schema("cl_plain")
        .open()
        .unwrap_err();
    assert!(matches!(err, InboxError::Layout { .. }), "{err:?}");
    assert!(err.to_string().contains("ownership"), "{err}");
    let missing = Inbox::builder(server.config())
        .schema("cl_nothing_here")
        .open()
        .unwrap_err();
    assert!(missing.to_string().contains("does not exist"), "{missing}");
}

/// A watch: armed by a command, it lapses when its state timeout (a minute) runs out.
mod watch {
    use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
    use serde::{Deserialize, Serialize};

    #[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[fsm(event = WatchCmd, effect = Notify)]
    pub(crate) enum Watch {
        #[fsm(initial, on(Arm => Armed))]
        Idle,
        #[fsm(on(Lapse => Lapsed), state_timeout(ms = 60000 => Lapse))]
        Armed,
        #[fsm(terminal)]
        Lapsed,
    }

    #[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub(crate) enum WatchCmd {
        Arm,
        Lapse,
    }

    /// Tell someone the watch is armed: a durable effect.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub(crate) struct Notify;

    impl Handler<watch_cmd::Arm, watch::Armed> for watch::Idle {
        fn handle(
            _: watch::Idle,
            _: watch_cmd::Arm,
            fx: &mut Effects<Notify>,
        ) -> Result<watch::Armed, Refusal> {
            fx.push(Notify);
            Ok(watch::Armed)
        }
    }

    impl Handler<watch_cmd::Lapse, watch::Lapsed> for watch::Armed {
        fn handle(
            _: watch::Armed,
            _: watch_cmd::Lapse,
            _: &mut Effects<Notify>,
        ) -> Result<watch::Lapsed, Refusal> {
            Ok(watch::Lapsed)
        }
    }
}

/// Every run of an effect: (node, effect key, attempt).
type Runs = Arc<std::sync::Mutex<Vec<(&'static str, String, u32)>>>;

/// Runs `Notify` effects: fails every attempt on a node that `fails`, and logs every run as
/// (node, effect key, attempt).
struct Notifier {
    node: &'static str,
    fails: bool,
    log: Runs,
}

impl fsm_core::kernel::EffectWorker<watch::Watch> for Notifier {
    fn run(
        &mut self,
        ctx: &fsm_core::kernel::EffectCtx,
        _: &watch::Notify,
    ) -> Result<Option<watch::WatchCmd>, fsm_core::kernel::EffectError> {
        self.log
            .lock()
            .unwrap()
            .push((self.node, ctx.key(), ctx.attempt()));
        if self.fails {
            return Err("the notification service is down".into());
        }
        Ok(None)
    }
}

#[test]
fn an_inbox_of_the_earlier_layout_is_refused_with_what_to_do_and_left_as_it_was() {
    let Some(server) = server() else {
        return;
    };
    let _owner = store("cl_old_layout", "a", Claim::Nothing);
    let mut raw = server.config().connect(postgres::NoTls).unwrap();
    // The earlier layout kept a row per command in a table of this name.
    raw.batch_execute(
        "CREATE TABLE cl_old_layout.fsm_snapshots_inbox (id bigserial PRIMARY KEY, machine text, key text, status text);
         INSERT INTO cl_old_layout.fsm_snapshots_inbox (machine, key) VALUES ('acct-1', 'k1');",
    )
    .unwrap();
    let err = Inbox::builder(server.config())
        .schema("cl_old_layout")
        .open()
        .unwrap_err();
    assert!(matches!(err, InboxError::Layout { .. }), "{err:?}");
    assert!(
        err.to_string().contains("earlier inbox layout") && err.to_string().contains("drop it"),
        "{err}"
    );
    // Nothing was created beside it, and its pending command is still there to drain.
    let pending: i64 = raw
        .query_one(
            "SELECT count(*) FROM cl_old_layout.fsm_snapshots_inbox WHERE status IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(pending, 1);
    let made: Option<String> = raw
        .query_one(
            "SELECT to_regclass('cl_old_layout.fsm_snapshots_ibatch')::text",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(made, None);
}

#[test]
fn a_batch_whose_last_commands_two_nodes_decided_at_once_is_closed_by_the_sweep_and_read_no_more() {
    if server().is_none() {
        return;
    }
    let schema = "cl_sweep";
    let s = store(schema, "a", Claim::Free);
    let a = options()
        .cleanup_every(Duration::from_millis(50))
        .start(kernel(s.clone()), s)
        .unwrap();
    let m = id("acct-s");
    // Two commands in one batch, each decided by a different node in the same moment: each
    // recorder saw only its own decision, so neither closed the batch.
    let mut raw = server().unwrap().config().connect(postgres::NoTls).unwrap();
    let batch: i64 = raw
        .query_one(
            &format!(
                "WITH b AS (
                     INSERT INTO {schema}.fsm_snapshots_ibatch (n, partitions, machines, keys, events)
                     VALUES (2, ARRAY[$2::int4, $2::int4], ARRAY[$1::text, $1::text], '{{s1,s2}}',
                             ARRAY['{{\"Add\":{{\"amount\":1}}}}', '{{\"Add\":{{\"amount\":2}}}}'])
                     RETURNING id
                 ),
                 k AS (
                     INSERT INTO {schema}.fsm_snapshots_ikeys (machine, key, batch, slot)
                     SELECT $1::text, 's' || g, b.id, g FROM b, generate_series(1, 2) g
                 ),
                 o AS (
                     INSERT INTO {schema}.fsm_snapshots_idone
                         (batch, slots, statuses, seqs, transitions, details, epochs, decided_by)
                     SELECT b.id, ARRAY[g], '{{rejected}}', '{{NULL}}', '{{NULL}}', '{{by hand}}', '{{1}}', 'n' || g
                     FROM b, generate_series(1, 2) g
                 )
                 SELECT id FROM b"
            ),
            &[&m.as_str(), &(a.inbox().partition_of(&m) as i32)],
        )
        .unwrap()
        .get(0);
    until("the sweep never closed the batch", || {
        let open: bool = raw
            .query_one(
                &format!("SELECT open FROM {schema}.fsm_snapshots_ibatch WHERE id = $1"),
                &[&batch],
            )
            .unwrap()
            .get(0);
        !open
    });
    // Both decisions stand, and neither command was applied by the node.
    for k in ["s1", "s2"] {
        let d = a.inbox().decision(&m, &key(k)).unwrap().unwrap();
        assert_eq!(d.status, Status::Rejected);
        assert_eq!(d.row / 65536, batch);
    }
    assert_eq!(
        a.kernel().state(&m).ok().map(|s| s.0.total()).unwrap_or(0),
        0
    );
    assert_eq!(a.inbox().depth().unwrap(), vec![]);
}

#[test]
fn a_timer_armed_and_an_effect_owed_on_one_node_fire_and_run_on_the_node_that_took_over() {
    use fsm_core::kernel::RetryPolicy;
    use fsm_core::queue::ManualClock;
    use watch::{Watch, WatchCmd};
    if server().is_none() {
        return;
    }
    let schema = "cl_timer";
    let log: Runs = Arc::default();
    let start_node = |name: &'static str, clock: &ManualClock, fails: bool| {
        let s = store(schema, name, Claim::Free);
        let log = log.clone();
        let k = Kernel::builder_shared(s.clone(), |_| Watch::Idle)
            .clock(clock.clock())
            .timer_events()
            .effects(1, move |_| Notifier {
                node: name,
                fails,
                log: log.clone(),
            })
            // A failed attempt is retried 30 s later (on the clock of whoever owns it then).
            .retry(
                RetryPolicy::new(Duration::from_secs(30), 1, Duration::from_secs(30), 5).unwrap(),
            )
            .shards(1)
            .start()
            .unwrap();
        options().start(k, s).unwrap()
    };
    let m = id("watch-1");
    let first_clock = ManualClock::at_wall_ms(1_000_000);
    let first = start_node("first", &first_clock, true);
    // The second node runs from the start, a minute ahead, owning nothing (the first holds
    // every partition): what it learns of the watch, it learns by taking over.
    let later = ManualClock::at_wall_ms(1_000_000 + 61_000);
    let second = start_node("second", &later, false);
    assert!(second.store().held().is_empty());
    let d = first
        .submit(InboxCommand::new(m.clone(), key("arm"), &WatchCmd::Arm).unwrap())
        .unwrap()
        .wait(WAIT)
        .unwrap();
    assert_eq!(d.status, Status::Applied, "{d:?}");
    assert_eq!(d.node.as_deref(), Some("first"));
    // The first node's attempt at the notification fails; it stays owed, due again in 30 s.
    until("the first node never ran the effect", || {
        !log.lock().unwrap().is_empty()
    });
    // The first node goes away (its partitions are released at once); the second's heartbeat
    // takes them over and its pump loads their machines, so the armed timer and the owed
    // effect are in its kernel without any command.
    drop(first);
    until("the takeover loaded nothing", || second.stats().loaded > 0);
    // Due on this node's clock: it fires here (by itself once loaded, or when asked). Read
    // from the store, not through the kernel, which would load the machine by itself.
    let codec = fsm_core::store::Codec::<Watch>::new(1);
    until("the timer never fired", || {
        second.kernel().fire_due_timers();
        let stored = fsm_core::store::SnapshotStoreExt::load(second.store(), &m, &codec).unwrap();
        stored.is_some_and(|(w, _)| w == Watch::Lapsed)
    });
    // The effect ran again on the new owner, under the same key, its attempts counted on.
    until("the second node never ran the owed effect", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|(node, ..)| *node == "second")
    });
    let runs = log.lock().unwrap().clone();
    let (_, first_key, first_attempt) = runs.iter().find(|r| r.0 == "first").unwrap().clone();
    let (_, second_key, second_attempt) = runs.iter().find(|r| r.0 == "second").unwrap().clone();
    assert_eq!(first_key, second_key, "{runs:?}");
    assert_eq!((first_attempt, second_attempt), (1, 2), "{runs:?}");
    second.kernel().wait_idle();
    assert!(
        second.kernel().owed(&m).unwrap().is_empty(),
        "done, nothing owed"
    );
}

#[test]
fn a_node_runs_as_a_role_that_owns_its_schema_and_nothing_else() {
    let Some(server) = server() else {
        return;
    };
    // What an operator runs once, as an administrator: a role that may log in and owns
    // the cluster's schema; no superuser, no right to create schemas or databases.
    let mut admin = server.config().connect(postgres::NoTls).unwrap();
    admin
        .batch_execute(
            "CREATE ROLE fsm_node LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
             CREATE SCHEMA cl_role AUTHORIZATION fsm_node;",
        )
        .unwrap();
    let mut config = server.config();
    config.user("fsm_node");
    let mut as_node = config.connect(postgres::NoTls).unwrap();
    let superuser: bool = as_node
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!superuser);
    let s = Arc::new(
        PostgresStore::builder(config.clone())
            .schema("cl_role")
            .ownership(
                Ownership::new("least")
                    .partitions(PARTITIONS)
                    .heartbeat(Some(Duration::from_millis(200)))
                    .lease(LEASE),
            )
            .open()
            .unwrap(),
    );
    let node = options().start(kernel(s.clone()), s).unwrap();
    let m = id("acct-role");
    let d = node
        .submit(add(&m, "role-1", 3))
        .unwrap()
        .wait(WAIT)
        .unwrap();
    assert_eq!(d.status, Status::Applied, "{d:?}");
    assert_eq!(total(&node, &m), 3);
    // A client that only submits: the inbox's batches, keys and their sequence to write, its
    // decisions and the layout to read.
    admin
        .batch_execute(
            "CREATE ROLE fsm_client LOGIN NOSUPERUSER;
             GRANT USAGE ON SCHEMA cl_role TO fsm_client;
             GRANT SELECT ON cl_role.fsm_snapshots_meta TO fsm_client;
             GRANT SELECT, INSERT ON cl_role.fsm_snapshots_ibatch, cl_role.fsm_snapshots_ikeys TO fsm_client;
             GRANT SELECT ON cl_role.fsm_snapshots_idone TO fsm_client;
             GRANT USAGE ON SEQUENCE cl_role.fsm_snapshots_ibatch_id_seq TO fsm_client;",
        )
        .unwrap();
    let mut client_config = server.config();
    client_config.user("fsm_client");
    let client = Inbox::builder(client_config.clone())
        .schema("cl_role")
        .open()
        .unwrap();
    let d = client
        .submit(add(&m, "role-2", 4))
        .unwrap()
        .wait(WAIT)
        .unwrap();
    assert_eq!(d.status, Status::Applied, "{d:?}");
    assert_eq!(total(&node, &m), 7);
    // It reads the inbox, and cannot touch the snapshots.
    let mut raw_client = client_config.connect(postgres::NoTls).unwrap();
    let denied = raw_client
        .execute("DELETE FROM cl_role.fsm_snapshots", &[])
        .unwrap_err();
    assert_eq!(
        denied.as_db_error().map(|e| e.code().clone()),
        Some(postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{denied:?}"
    );
    // An inbox an earlier build made, without the per-partition counts: the client cannot
    // add them and says who can; opened once as the node's role, it has them.
    as_node
        .batch_execute(
            "ALTER TABLE cl_role.fsm_snapshots_ibatch DROP COLUMN parts, DROP COLUMN counts;
             ALTER TABLE cl_role.fsm_snapshots_idone DROP COLUMN parts, DROP COLUMN counts;",
        )
        .unwrap();
    let open_as_client = || {
        Inbox::builder(client_config.clone())
            .schema("cl_role")
            .open()
    };
    match open_as_client() {
        Err(InboxError::Layout { problem, .. }) => {
            assert!(problem.contains("earlier build"), "{problem}");
            assert!(problem.contains("as the role that owns it"), "{problem}");
            assert!(problem.contains("must be owner"), "{problem}");
        }
        other => panic!("expected a layout error, got {other:?}"),
    }
    drop(
        Inbox::builder(config.clone())
            .schema("cl_role")
            .open()
            .unwrap(),
    );
    let client = open_as_client().unwrap();
    let d = client
        .submit(add(&m, "role-3", 1))
        .unwrap()
        .wait(WAIT)
        .unwrap();
    assert_eq!(d.status, Status::Applied, "{d:?}");
    // The node's role cannot make a schema of its own: it has what a node needs, no more.
    let err = PostgresStore::builder(config)
        .schema("cl_role_elsewhere")
        .open()
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

/// A gate: while shut it defers `Enter` until it opens, and dumps `Knock`.
mod gate {
    use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
    use serde::{Deserialize, Serialize};

    #[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[fsm(event = GateCmd)]
    pub(crate) enum Gate {
        #[fsm(initial, on(Open => Opened), defer(Enter), dump(Knock))]
        Shut,
        #[fsm(on(Enter => Opened), on(Knock => Opened))]
        Opened { entered: u32 },
    }

    #[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub(crate) enum GateCmd {
        Open,
        Enter,
        Knock,
    }

    impl Handler<gate_cmd::Open, gate::Opened> for gate::Shut {
        fn handle(
            _: gate::Shut,
            _: gate_cmd::Open,
            _: &mut Effects<()>,
        ) -> Result<gate::Opened, Refusal> {
            Ok(gate::Opened { entered: 0 })
        }
    }

    impl Handler<gate_cmd::Enter, gate::Opened> for gate::Opened {
        fn handle(
            s: gate::OpenedRef<'_>,
            _: gate_cmd::Enter,
            _: &mut Effects<()>,
        ) -> Result<gate::Opened, Refusal> {
            Ok(gate::Opened {
                entered: s.entered + 1,
            })
        }
    }

    impl Handler<gate_cmd::Knock, gate::Opened> for gate::Opened {
        fn handle(
            s: gate::OpenedRef<'_>,
            _: gate_cmd::Knock,
            _: &mut Effects<()>,
        ) -> Result<gate::Opened, Refusal> {
            Ok(gate::Opened {
                entered: *s.entered,
            })
        }
    }
}

#[test]
fn a_state_that_defers_or_dumps_keeps_its_meaning_through_the_inbox() {
    use gate::{Gate, GateCmd};
    if server().is_none() {
        return;
    }
    let s = store("cl_gate", "a", Claim::Free);
    let k = Kernel::builder_shared(s.clone(), |_| Gate::Shut)
        .shards(1)
        .start()
        .unwrap();
    // Deferring needs the command that ends the wait to be read while the deferred one is
    // in flight.
    let a = options().per_machine(2).start(k, s).unwrap();
    let m = id("gate-1");
    let cmd = |k: &str, c: GateCmd| InboxCommand::new(m.clone(), key(k), &c).unwrap();
    let knock = a.submit(cmd("g1", GateCmd::Knock)).unwrap();
    let enter = a.submit(cmd("g2", GateCmd::Enter)).unwrap();
    let open = a.submit(cmd("g3", GateCmd::Open)).unwrap();
    let knocked = knock.wait(WAIT).unwrap();
    assert_eq!(knocked.status, Status::Dumped, "{knocked:?}");
    let opened = open.wait(WAIT).unwrap();
    let entered = enter.wait(WAIT).unwrap();
    assert_eq!(
        (opened.status, entered.status),
        (Status::Applied, Status::Applied)
    );
    // Applied once the gate opened (in the same write, or a later one).
    assert!(opened.seq <= entered.seq, "{opened:?} {entered:?}");
    assert_eq!(
        entered.transition.as_deref(),
        Some("Opened --Enter--> Opened"),
        "{entered:?}"
    );
    assert_eq!(a.kernel().state(&m).unwrap().0, Gate::Opened { entered: 1 });
}

/// The node reads, applies and records in a pipeline: a command its machine defers stays in
/// flight without holding up anyone else, and each decision reaches its ticket through the
/// notification naming its rows (both sides poll only once an hour here, so an answer that
/// needed a poll would never come within the test).
#[test]
fn a_deferred_command_holds_up_no_other_machine_and_answers_come_by_notification() {
    use gate::{Gate, GateCmd};
    if server().is_none() {
        return;
    }
    let hour = Duration::from_secs(3600);
    let s = store("cl_pipe", "a", Claim::Free);
    let k = Kernel::builder_shared(s.clone(), |_| Gate::Shut)
        .shards(2)
        .start()
        .unwrap();
    let a = NodeBuilder::new().poll(hour).start(k, s).unwrap();
    let client = Inbox::builder(server().unwrap().config())
        .schema("cl_pipe")
        .poll(hour)
        .open()
        .unwrap();
    let cmd =
        |m: &MachineId, k: &str, c: GateCmd| InboxCommand::new(m.clone(), key(k), &c).unwrap();
    // The pump's first read (at start, not woken by anything) is behind it.
    until("the node never read the inbox", || a.stats().rounds >= 1);
    let held = id("gate-held");
    let waiting = client.submit(cmd(&held, "h1", GateCmd::Enter)).unwrap();
    // Forty other gates, in four submits, across every partition.
    let mut tickets = vec![];
    for round in 0..4 {
        let batch: Vec<InboxCommand> = (0..10)
            .map(|i| cmd(&id(&format!("gate-{round}-{i}")), "o1", GateCmd::Open))
            .collect();
        tickets.extend(client.submit_many(batch).into_iter().map(Result::unwrap));
    }
    for t in &tickets {
        let d = t.wait(WAIT).unwrap();
        assert_eq!(d.status, Status::Applied, "{d:?}");
    }
    // The deferred command is still in flight, undecided, and its machine where it was.
    assert_eq!(waiting.check().unwrap(), None);
    assert_eq!(a.kernel().state(&held).unwrap().0, Gate::Shut);
    let stats = client.stats();
    assert_eq!(stats.polled, 0, "{stats:?}");
    assert!(stats.notified >= 40, "{stats:?}");
    assert_eq!(a.stats().missed_notifications, 0, "{:?}", a.stats());
}

#[test]
fn a_node_publishes_its_counters_and_the_inbox_depth_as_metrics() {
    use metrics_exporter_prometheus::PrometheusBuilder;
    if server().is_none() {
        return;
    }
    let a = node("cl_metrics", "a", Claim::Free);
    let m = id("acct-metrics");
    for i in 0..3 {
        a.submit(add(&m, &format!("mk{i}"), 1))
            .unwrap()
            .wait(WAIT)
            .unwrap();
    }
    // A ticket can be answered before the pump has counted its decision.
    until("the node never counted its decisions", || {
        a.stats().applied >= 3
    });
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || a.publish_metrics()).unwrap();
    let text = handle.render();
    assert!(
        text.contains("fsm_cluster_applied_total{node=\"a\"} 3"),
        "{text}"
    );
    for name in [
        "fsm_cluster_refused_total",
        "fsm_cluster_fenced_total",
        "fsm_cluster_missed_notifications_total",
        "fsm_cluster_apply_lag_seconds",
        "fsm_cluster_partitions_held",
        "fsm_cluster_inbox_pending",
        "fsm_cluster_inbox_oldest_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    assert!(
        text.contains("fsm_cluster_inbox_pending{partition=\"0\"} 0"),
        "{text}"
    );
    assert!(!text.contains("acct-metrics"), "no machine id in a label");
}

#[test]
fn a_database_that_refuses_is_a_typed_error_and_a_row_nobody_could_have_sent_is_decided() {
    // A server of its own: this test stops it.
    let Some(server) = TestServer::start_or_skip("cluster: a database that refuses") else {
        return;
    };
    let config = server.config();
    let s = Arc::new(
        PostgresStore::builder(config.clone())
            .schema("cl_refuse")
            .ownership(
                Ownership::new("a")
                    .partitions(PARTITIONS)
                    .lease(LEASE)
                    .heartbeat(Some(Duration::from_millis(200))),
            )
            .open()
            .unwrap(),
    );
    let a = options().start(kernel(s.clone()), s).unwrap();
    let m = id("acct-r");
    assert!(a
        .submit(add(&m, "r1", 1))
        .unwrap()
        .wait(WAIT)
        .unwrap()
        .is_applied());
    // A machine id no client can make (the API checks ids), written by hand: decided
    // Refused with why, not stuck, not a panic.
    let mut raw = config.connect(postgres::NoTls).unwrap();
    write_by_hand(&mut raw, "cl_refuse", "", 0, "hand-1", "\"Close\"");
    let (status, detail) = eventually("the bad row was never decided", || {
        let row = raw
            .query_one(
                "SELECT status, detail FROM cl_refuse.fsm_snapshots_inbox WHERE key = 'hand-1'",
                &[],
            )
            .unwrap();
        let status: Option<String> = row.get(0);
        status.map(|s| (s, row.get::<_, Option<String>>(1)))
    });
    assert_eq!(status, "refused");
    assert!(detail.unwrap().contains("invalid machine id"));
    drop(raw);
    // The server goes away: a submit is a typed error saying nothing was stored.
    server.pause().unwrap();
    match a.submit(add(&m, "r2", 1)) {
        Err(InboxError::Store(e)) => {
            assert!(
                matches!(*e, fsm_core::store::StoreError::Unavailable { .. }),
                "{e:?}"
            )
        }
        other => panic!("expected a store error, got {other:?}"),
    }
    // It comes back: the same key goes through, and the node serves it.
    server.resume().unwrap();
    let ticket = eventually("never accepted again", || a.submit(add(&m, "r2", 1)).ok());
    assert!(ticket.wait(WAIT).unwrap().is_applied());
    assert_eq!(total(&a, &m), 2);
}
