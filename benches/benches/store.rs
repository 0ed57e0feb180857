//! Snapshot stores against the raw storage operation each is built on, side by side.
//!
//! `cargo bench -p fsm-benches --bench store`
//!
//! - `store_put`: one 1 KiB snapshot per iteration, durable on return. `raw_atomic_replace`
//!   is the bare protocol (create temp, write, fsync, rename, fsync directory) written here;
//!   `raw_sqlite_full` a bare rusqlite upsert in WAL mode with `synchronous=FULL`.
//! - `store_batch`: 100 snapshots of 1 KiB per iteration with one sync. `raw_append_fdatasync`
//!   appends 100 records to a file and fdatasyncs once.
//! - `store_recover`: opening a file store of 10,000 snapshots, verifying every one.
//! - `store_state`: what recording the state name costs a batch of 100 snapshots: every
//!   machine changes state on every write (`changing`, the index entry moves each time), keeps
//!   it (`same`), or records none (`none`, as before state names: the SQLite row still gets
//!   NULLs). `raw_sqlite_old_schema` is the same batch as one bare transaction on the table
//!   without the state columns and index, the layout before them;
//!   `raw_sqlite_state_schema_changing` the same bare transaction on the table with them,
//!   every row changing state.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fsm_benches::raw::{envelope, stated_envelope, AppendLog};
use fsm_core::store::{MachineId, Put, Snapshot, SnapshotStore};
use fsm_persist::{FileStore, MirroredStore, SqliteStore};

const BATCH: usize = 100;

/// The bare atomic replace protocol, as a careful engineer writes it by hand.
fn raw_atomic_replace(dir: &Path, bytes: &[u8]) {
    raw_synced_rename(dir, "m", bytes);
    File::open(dir).unwrap().sync_all().unwrap();
}

/// `<name>.snap` replaced by a synced temp file (the directory is the caller's to sync).
fn raw_synced_rename(dir: &Path, name: &str, bytes: &[u8]) {
    let temp = dir.join(format!(".tmp-{name}"));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
    drop(file);
    fs::rename(&temp, dir.join(format!("{name}.snap"))).unwrap();
}

/// A single store put that keeps rising sequences across iterations.
fn put_loop(store: &dyn SnapshotStore, id: &MachineId, seq: &mut u64) {
    let expected = (*seq > 0).then_some(*seq);
    *seq += 1;
    store.put(id, expected, &envelope(*seq)).unwrap();
}

fn bench_put(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_put");
    group.sample_size(30);
    group.throughput(Throughput::Elements(1));
    let id = MachineId::new("m").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut seq = 0;
    group.bench_function("raw_atomic_replace/1KiB", |b| {
        b.iter(|| {
            seq += 1;
            raw_atomic_replace(dir.path(), envelope(seq).as_bytes())
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let mut seq = 0;
    group.bench_function("file_store/1KiB", |b| {
        b.iter(|| put_loop(&store, &id, &mut seq))
    });

    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("raw.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, seq INTEGER NOT NULL, snapshot BLOB NOT NULL)",
    )
    .unwrap();
    let mut seq = 0i64;
    group.bench_function("raw_sqlite_full/1KiB", |b| {
        b.iter(|| {
            seq += 1;
            let bytes = envelope(seq as u64);
            conn.prepare_cached(
                "INSERT INTO t (id, seq, snapshot) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, snapshot = excluded.snapshot",
            )
            .unwrap()
            .execute(rusqlite::params!["m", seq, bytes.as_bytes()])
            .unwrap();
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    let mut seq = 0;
    group.bench_function("sqlite_store/1KiB", |b| {
        b.iter(|| put_loop(&store, &id, &mut seq))
    });

    let (a, m) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = MirroredStore::new(
        FileStore::open(a.path()).unwrap(),
        FileStore::open(m.path()).unwrap(),
    );
    let mut seq = 0;
    group.bench_function("mirrored_file/1KiB", |b| {
        b.iter(|| put_loop(&store, &id, &mut seq))
    });
    group.finish();
}

/// One batch of `BATCH` machines' next snapshots, with the sequences they replace.
struct Batches {
    ids: Vec<MachineId>,
    seq: u64,
}

impl Batches {
    fn new() -> Self {
        Batches {
            ids: (0..BATCH)
                .map(|i| MachineId::new(format!("m{i}")).unwrap())
                .collect(),
            seq: 0,
        }
    }

    fn put(&mut self, store: &dyn SnapshotStore) {
        let expected = (self.seq > 0).then_some(self.seq);
        self.seq += 1;
        let snaps: Vec<Snapshot> = (0..BATCH).map(|_| envelope(self.seq)).collect();
        let batch: Vec<Put<'_>> = self
            .ids
            .iter()
            .zip(&snaps)
            .map(|(m, s)| Put::new(m, expected, s))
            .collect();
        store.put_many(&batch).unwrap();
    }
}

fn bench_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_batch");
    group.sample_size(30);
    group.throughput(Throughput::Elements(BATCH as u64));

    let dir = tempfile::tempdir().unwrap();
    let mut log = AppendLog::create(dir.path());
    group.bench_function("raw_append_fdatasync/100x1KiB", |b| {
        b.iter(|| log.append(BATCH))
    });

    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let mut batches = Batches::new();
    group.bench_function("file_store_put_many/100x1KiB", |b| {
        b.iter(|| batches.put(&store))
    });

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    let mut batches = Batches::new();
    group.bench_function("sqlite_store_put_many/100x1KiB", |b| {
        b.iter(|| batches.put(&store))
    });
    group.finish();
}

fn bench_recover(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_recover");
    group.sample_size(10);
    group.throughput(Throughput::Elements(10_000));
    // The files are written directly (the store's layout: one envelope per `<id>.snap`), without
    // the 10,000 fsyncs a store would do, so the setup takes seconds, not minutes.
    let dir = tempfile::tempdir().unwrap();
    for i in 0..10_000u64 {
        fs::write(
            dir.path().join(format!("m{i}.snap")),
            envelope(i + 1).as_bytes(),
        )
        .unwrap();
    }
    group.bench_function("file_store/10k", |b| {
        b.iter_batched(
            || (),
            |()| {
                let store = FileStore::open(dir.path()).unwrap();
                assert_eq!(store.recovery().machines, 10_000);
                store
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Machines a compaction moves from the log into their files in `store_compact`.
const COMPACTED: usize = 5_000;

/// A store whose log holds `COMPACTED` machines (batches of `BATCH`), not yet compacted.
fn store_with_log(dir: &Path) -> FileStore {
    let store = FileStore::builder(dir)
        .checkpoint_bytes(u64::MAX / 8)
        .open()
        .unwrap();
    let ids: Vec<MachineId> = (0..COMPACTED)
        .map(|i| MachineId::new(format!("m{i}")).unwrap())
        .collect();
    let snap = envelope(1);
    for chunk in ids.chunks(BATCH) {
        let puts: Vec<Put<'_>> = chunk.iter().map(|id| Put::new(id, None, &snap)).collect();
        store.put_many(&puts).unwrap();
    }
    store
}

/// Compaction (every machine of the log into its own file) beside the protocol it would cost
/// with a synced atomic replace per machine (what the store did before it synced the file
/// system once per compaction).
fn bench_compact(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_compact");
    group.sample_size(10);
    group.throughput(Throughput::Elements(COMPACTED as u64));
    let bytes = envelope(1);
    group.bench_function("raw_atomic_replace_each/5k", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| {
                for i in 0..COMPACTED {
                    raw_synced_rename(dir.path(), &format!("m{i}"), bytes.as_bytes());
                }
                File::open(dir.path()).unwrap().sync_all().unwrap();
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("file_store_checkpoint/5k", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = store_with_log(dir.path());
                (dir, store)
            },
            |(dir, store)| {
                store.checkpoint().unwrap();
                assert_eq!(store.stats().compacted_snapshots, COMPACTED as u64);
                (dir, store)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// The state name a snapshot of sequence `seq` records (or none).
type StateOf = fn(u64) -> Option<&'static str>;

/// Batches of `BATCH` machines whose snapshots record `state(seq)` (or none).
fn state_batches(store: &dyn SnapshotStore, ids: &[MachineId], seq: &mut u64, state: StateOf) {
    let expected = (*seq > 0).then_some(*seq);
    *seq += 1;
    let snaps: Vec<Snapshot> = (0..BATCH)
        .map(|_| match state(*seq) {
            Some(name) => stated_envelope(*seq, name),
            None => envelope(*seq),
        })
        .collect();
    let batch: Vec<Put<'_>> = ids
        .iter()
        .zip(&snaps)
        .map(|(m, s)| Put::new(m, expected, s))
        .collect();
    store.put_many(&batch).unwrap();
}

fn bench_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_state");
    group.sample_size(30);
    group.throughput(Throughput::Elements(BATCH as u64));
    let ids: Vec<MachineId> = (0..BATCH)
        .map(|i| MachineId::new(format!("m{i}")).unwrap())
        .collect();
    let kinds: [(&str, StateOf); 3] = [
        ("changing", |seq| {
            Some(if seq % 2 == 0 { "PastDue" } else { "Active" })
        }),
        ("same", |_| Some("Active")),
        ("none", |_| None),
    ];

    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("raw.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE fsm_snapshots (id TEXT PRIMARY KEY NOT NULL, seq INTEGER NOT NULL, snapshot BLOB NOT NULL)",
    )
    .unwrap();
    let mut seq = 0i64;
    group.bench_function("raw_sqlite_old_schema/100x1KiB", |b| {
        b.iter(|| {
            seq += 1;
            let snaps: Vec<Snapshot> = (0..BATCH).map(|_| envelope(seq as u64)).collect();
            let tx = conn.unchecked_transaction().unwrap();
            for (id, snap) in ids.iter().zip(&snaps) {
                tx.prepare_cached(
                    "INSERT INTO fsm_snapshots (id, seq, snapshot) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, snapshot = excluded.snapshot",
                )
                .unwrap()
                .execute(rusqlite::params![id.as_str(), seq, snap.as_bytes()])
                .unwrap();
            }
            tx.commit().unwrap();
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("raw.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE fsm_snapshots (id TEXT PRIMARY KEY NOT NULL, seq INTEGER NOT NULL, snapshot BLOB NOT NULL, state TEXT, state_seq INTEGER);
         CREATE INDEX fsm_snapshots_state ON fsm_snapshots (state, id);",
    )
    .unwrap();
    let mut seq = 0i64;
    group.bench_function("raw_sqlite_state_schema_changing/100x1KiB", |b| {
        b.iter(|| {
            seq += 1;
            let state = if seq % 2 == 0 { "PastDue" } else { "Active" };
            let snaps: Vec<Snapshot> = (0..BATCH).map(|_| stated_envelope(seq as u64, state)).collect();
            let tx = conn.unchecked_transaction().unwrap();
            for (id, snap) in ids.iter().zip(&snaps) {
                tx.prepare_cached(
                    "INSERT INTO fsm_snapshots (id, seq, snapshot, state, state_seq) VALUES (?1, ?2, ?3, ?4, ?2)
                     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, snapshot = excluded.snapshot,
                         state = excluded.state, state_seq = excluded.state_seq",
                )
                .unwrap()
                .execute(rusqlite::params![id.as_str(), seq, snap.as_bytes(), state])
                .unwrap();
            }
            tx.commit().unwrap();
        })
    });
    for (name, state) in kinds {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
        let mut seq = 0;
        group.bench_function(format!("sqlite_store/{name}/100x1KiB"), |b| {
            b.iter(|| state_batches(&store, &ids, &mut seq, state))
        });
    }
    for (name, state) in kinds {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let mut seq = 0;
        group.bench_function(format!("file_store/{name}/100x1KiB"), |b| {
            b.iter(|| state_batches(&store, &ids, &mut seq, state))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_put,
    bench_batch,
    bench_recover,
    bench_compact,
    bench_state
);
criterion_main!(benches);
