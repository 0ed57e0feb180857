//! Queries by state over databases written by an earlier version of the stores: the state
//! columns are added on open, old rows read as unrecorded, and a row that an older node
//! rewrites (without the columns) reads as unrecorded, never as the state it had before.
#![allow(missing_docs)]

use fsm_core::store::{
    Format, ListQuery, MachineId, Sections, Snapshot, SnapshotStore, StateFilter,
};
use fsm_persist::conformance::list_all;
use fsm_persist::postgres::{PostgresStore, TestServer};
use fsm_persist::SqliteStore;

fn id(s: &str) -> MachineId {
    MachineId::new(s).unwrap()
}

fn in_state(seq: u64, state: &str) -> Snapshot {
    let sections = Sections {
        state: Some(state),
        ..Sections::default()
    };
    Snapshot::framed(
        "Test",
        1,
        seq,
        Format::Postcard,
        sections,
        &seq.to_le_bytes(),
    )
    .unwrap()
}

fn unstated(seq: u64) -> Snapshot {
    Snapshot::new("Test", 1, seq, Format::Postcard, &seq.to_le_bytes()).unwrap()
}

#[test]
fn a_sqlite_database_from_before_the_state_columns_gains_them_and_old_writes_read_unrecorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // The table as versions before the state columns created it, with a machine in it.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE fsm_snapshots (id TEXT PRIMARY KEY NOT NULL, seq INTEGER NOT NULL, snapshot BLOB NOT NULL);",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO fsm_snapshots (id, seq, snapshot) VALUES ('old', 1, ?1)",
            [unstated(1).as_bytes()],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.get(&id("old")).unwrap(), unstated(1));
    let counts = store.count_states().unwrap();
    assert_eq!(
        (counts.unrecorded, counts.states.len()),
        (1, 0),
        "{counts:?}"
    );
    store.put(&id("new"), None, &in_state(1, "Paid")).unwrap();
    store
        .put(&id("old"), Some(1), &in_state(2, "Paid"))
        .unwrap();
    assert_eq!(
        list_all(&store, StateFilter::In("Paid"), 10),
        vec![id("new"), id("old")]
    );
    drop(store);
    // An older build, still running against the same file, rewrites "new" its way: without
    // the state columns. The row must not keep claiming the state of the snapshot it replaced.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE fsm_snapshots SET seq = 2, snapshot = ?1 WHERE id = 'new' AND seq = 1",
            [unstated(2).as_bytes()],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        list_all(&store, StateFilter::In("Paid"), 10),
        vec![id("old")]
    );
    assert_eq!(
        list_all(&store, StateFilter::Unrecorded, 10),
        vec![id("new")]
    );
    let counts = store.count_states().unwrap();
    assert_eq!(
        (counts.get("Paid"), counts.unrecorded),
        (1, 1),
        "{counts:?}"
    );
}

#[test]
fn a_postgres_table_from_before_the_state_columns_gains_them_and_old_writes_read_unrecorded() {
    let Some(server) = TestServer::shared() else {
        return;
    };
    let open = || {
        PostgresStore::builder(server.config())
            .schema("query_upgrade")
            .open()
            .unwrap()
    };
    let mut sql = server.config().connect(postgres::NoTls).unwrap();
    {
        let store = open();
        store.put(&id("old"), None, &unstated(1)).unwrap();
    }
    // Back to the layout of versions before the state columns.
    sql.batch_execute(
        "DROP INDEX query_upgrade.fsm_snapshots_state;
         DROP INDEX query_upgrade.fsm_snapshots_ids;
         ALTER TABLE query_upgrade.fsm_snapshots DROP COLUMN state, DROP COLUMN state_seq;",
    )
    .unwrap();
    let store = open();
    assert_eq!(store.get(&id("old")).unwrap(), unstated(1));
    let counts = store.count_states().unwrap();
    assert_eq!(
        (counts.unrecorded, counts.states.len()),
        (1, 0),
        "{counts:?}"
    );
    store.put(&id("new"), None, &in_state(1, "Paid")).unwrap();
    store
        .put(&id("old"), Some(1), &in_state(2, "Paid"))
        .unwrap();
    assert_eq!(
        list_all(&store, StateFilter::In("Paid"), 1),
        vec![id("new"), id("old")]
    );
    // An older node rewrites "new" without the state columns.
    sql.execute(
        "UPDATE query_upgrade.fsm_snapshots SET seq = 2, snapshot = $1 WHERE id = 'new'",
        &[&unstated(2).as_bytes()],
    )
    .unwrap();
    assert_eq!(
        list_all(&store, StateFilter::In("Paid"), 10),
        vec![id("old")]
    );
    assert_eq!(
        list_all(&store, StateFilter::Unrecorded, 10),
        vec![id("new")]
    );
    let counts = store.count_states().unwrap();
    assert_eq!(
        (counts.get("Paid"), counts.unrecorded),
        (1, 1),
        "{counts:?}"
    );
}

#[test]
fn postgres_lists_ids_in_byte_order_whatever_the_database_collation() {
    let Some(server) = TestServer::shared() else {
        return;
    };
    let store = PostgresStore::builder(server.config())
        .schema("query_order")
        .open()
        .unwrap();
    // The ids in a natural-language collation (ICU's root locale), as a database created
    // with, say, en_US.UTF-8 orders them: upper case does not sort before lower case there,
    // as it does in bytes.
    let mut sql = server.config().connect(postgres::NoTls).unwrap();
    sql.batch_execute(
        "ALTER TABLE query_order.fsm_snapshots ALTER COLUMN id TYPE text COLLATE \"und-x-icu\"",
    )
    .unwrap();
    let names = ["b", "B", "a", "A", "a-1", "a_1", "Z9", "z"];
    for name in names {
        store.put(&id(name), None, &in_state(1, "S")).unwrap();
    }
    let mut bytes_order: Vec<MachineId> = names.iter().map(|n| id(n)).collect();
    bytes_order.sort();
    let collated: Vec<String> = sql
        .query("SELECT id FROM query_order.fsm_snapshots ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_ne!(
        collated,
        bytes_order
            .iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>(),
        "the column's collation must order differently from bytes for this test to mean anything"
    );
    assert_eq!(list_all(&store, StateFilter::Any, 3), bytes_order);
    assert_eq!(list_all(&store, StateFilter::In("S"), 2), bytes_order);
    let after_a = store.list(&ListQuery::all(100).after(&id("a"))).unwrap();
    assert_eq!(
        after_a.ids,
        bytes_order[bytes_order.iter().position(|m| m.as_str() == "a").unwrap() + 1..]
    );
}
