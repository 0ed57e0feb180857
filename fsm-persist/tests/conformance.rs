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
