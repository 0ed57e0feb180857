//! The conformance suite against every backend.

use fsm_core::store::{MemoryStore, SnapshotStore};
use fsm_persist::{conformance, FileStore, MirroredStore, SqliteStore};

#[test]
fn memory_store_conforms() {
    conformance::run(&MemoryStore::new());
}

#[test]
fn file_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run(&FileStore::open(dir.path()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    conformance::run_reopen(&|| Box::new(FileStore::open(dir.path()).unwrap()));
}

#[test]
fn file_store_conforms_while_compacting_every_batch() {
    // A tiny checkpoint threshold: every batch goes to the log and straight into the files.
    let open = |dir: &std::path::Path| FileStore::builder(dir).checkpoint_bytes(1).open().unwrap();
    let dir = tempfile::tempdir().unwrap();
    conformance::run(&open(dir.path()));
    let dir = tempfile::tempdir().unwrap();
    conformance::run_reopen(&|| Box::new(open(dir.path())));
}

#[test]
fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run(&SqliteStore::open(dir.path().join("s.db")).unwrap());
    let dir = tempfile::tempdir().unwrap();
    conformance::run_reopen(&|| Box::new(SqliteStore::open(dir.path().join("s.db")).unwrap()));
}

#[test]
fn sqlite_store_without_the_state_index_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        SqliteStore::builder(dir.path().join("s.db"))
            .state_index(false)
            .open()
            .unwrap()
    };
    conformance::run(&open());
    conformance::run_reopen(&|| Box::new(open()));
}

#[test]
fn mirrored_store_conforms() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mirror = MirroredStore::new(
        FileStore::open(a.path()).unwrap(),
        FileStore::open(b.path()).unwrap(),
    );
    conformance::run(&mirror);
    // A file store mirrored by SQLite, reopened.
    let (c, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    conformance::run_reopen(&|| -> Box<dyn SnapshotStore> {
        Box::new(MirroredStore::new(
            FileStore::open(c.path()).unwrap(),
            SqliteStore::open(d.path().join("m.db")).unwrap(),
        ))
    });
    conformance::run(&MirroredStore::new(MemoryStore::new(), MemoryStore::new()));
}

/// A store over the shared PostgreSQL test server, in a schema of its own; `None` (said
/// loudly) where PostgreSQL is not installed outside CI.
fn postgres_store(
    schema: &str,
    ownership: Option<fsm_persist::postgres::Ownership>,
) -> Option<fsm_persist::postgres::PostgresStore> {
    let server = fsm_persist::postgres::TestServer::shared()?;
    let mut builder = fsm_persist::postgres::PostgresStore::builder(server.config()).schema(schema);
    if let Some(o) = ownership {
        builder = builder.ownership(o);
    }
    Some(builder.open().unwrap())
}

#[test]
fn postgres_store_conforms() {
    let Some(store) = postgres_store("conformance_plain", None) else {
        return;
    };
    conformance::run(&store);
    conformance::run_reopen(&|| {
        Box::new(postgres_store("conformance_plain_reopen", None).unwrap())
    });
}

#[test]
fn postgres_store_with_ownership_conforms() {
    use fsm_persist::postgres::Ownership;
    let node = || Some(Ownership::new("only-node").partitions(16));
    let Some(store) = postgres_store("conformance_fenced", node()) else {
        return;
    };
    assert_eq!(store.held().len(), 16, "a lone node claims every partition");
    conformance::run(&store);
    // Reopening drops the old store first, which releases its partitions for the new one.
    conformance::run_reopen(&|| {
        Box::new(postgres_store("conformance_fenced_reopen", node()).unwrap())
    });
}
