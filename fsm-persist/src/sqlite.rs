//! The SQLite store (feature `sqlite`): bundled SQLite, WAL mode, `synchronous=FULL`.

use crate::sync::Recover;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::group::{copy_error, Gather, GroupCommit};
use fsm_core::store::{
    check_batch, Capabilities, Corruption, Limits, ListQuery, MachineId, Page, Put, Snapshot,
    SnapshotStore, StateCounts, StateFilter, StoreError,
};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

const BACKEND: &str = "sqlite";

/// How hard SQLite syncs a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// `synchronous=FULL` (the default): every commit is synced to disk before it returns, so
    /// an acknowledged write survives a power loss.
    #[default]
    Full,
    /// `synchronous=NORMAL`: in WAL mode a commit is not synced until a checkpoint. Acknowledged
    /// writes survive a process crash but **not a power loss or an OS crash**: the latest
    /// commits can be lost. Only for state you can afford to lose.
    NormalNotDurableAcrossPowerLoss,
}

/// Options for [`SqliteStore`]; from [`SqliteStore::builder`].
#[derive(Debug, Clone)]
pub struct SqliteStoreBuilder {
    path: PathBuf,
    synchronous: Synchronous,
    limits: Limits,
    state_index: bool,
}

impl SqliteStoreBuilder {
    /// The sync mode (default [`Synchronous::Full`]).
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Bounds what a read accepts.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether to keep the `(state, id)` index that answers queries by state from an index
    /// read (default: yes). Keeping it costs writes: measured on a batch of 100 snapshots of
    /// 1 KiB whose every machine changes state, about 20% more time per batch than the table
    /// without the state columns, of which about 8% is the columns and 12% the index
    /// (`cargo bench -p fsm-benches --bench store -- store_state`). Without it, queries by
    /// state scan the table; they still answer the same. Opening with `false` drops an index
    /// an earlier open created.
    pub fn state_index(mut self, keep: bool) -> Self {
        self.state_index = keep;
        self
    }

    /// Opens (creating if needed) the database and its table.
    pub fn open(self) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(&self.path).map_err(known)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(known)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend {
                backend: BACKEND,
                message: format!(
                    "could not switch {} to WAL mode (it is in {mode} mode)",
                    self.path.display()
                ),
                outcome_unknown: false,
            });
        }
        let sync = match self.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::NormalNotDurableAcrossPowerLoss => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(known)?;
        // The savepoint of each batch in a group commit keeps the pages it changes in a
        // sub-journal: in memory, not a temporary file (it is gone after the commit anyway).
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(known)?;
        // A rowid table: with kilobyte-sized rows it writes about half the pages a
        // WITHOUT ROWID table does (measured: twice the batch throughput).
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS fsm_snapshots (
                 id TEXT PRIMARY KEY NOT NULL,
                 seq INTEGER NOT NULL,
                 snapshot BLOB NOT NULL,
                 state TEXT,
                 state_seq INTEGER
             );",
        )
        .map_err(known)?;
        add_state_columns(&conn)?;
        conn.execute_batch(if self.state_index {
            "CREATE INDEX IF NOT EXISTS fsm_snapshots_state ON fsm_snapshots (state, id);"
        } else {
            "DROP INDEX IF EXISTS fsm_snapshots_state;"
        })
        .map_err(known)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            group: GroupCommit::gathering(GATHER),
            path: self.path,
            synchronous: self.synchronous,
            limits: self.limits,
        })
    }
}

/// A [`SnapshotStore`] in a SQLite database (bundled SQLite).
///
/// One table, `fsm_snapshots(id, seq, snapshot, state, state_seq)`, indexed by
/// `(state, id)` for queries by state: `state` is the state name the snapshot records
/// ([`Snapshot::state`]) and `state_seq` the sequence it was recorded for, so a row written
/// by an older version of this store (which sets neither) reads as unrecorded, never as a
/// stale state. A database created by an older version gains the two columns on open. The database runs in WAL mode with
/// `synchronous=FULL` unless [`Synchronous::NormalNotDurableAcrossPowerLoss`] is chosen
/// explicitly. A put is one versioned statement (`INSERT .. ON CONFLICT DO NOTHING` for a new
/// machine, `UPDATE .. WHERE seq = expected` after), so the compare-and-set happens inside
/// SQLite. Reads verify the envelope and that its sequence matches the row.
///
/// `put_many` is group-committed: batches that arrive while another is being written wait,
/// and the next writer stores all of them in one `IMMEDIATE` transaction, each batch in a
/// savepoint of its own (a batch whose compare-and-set fails is rolled back alone and answered
/// its own error), with one commit, one sync, for the group. So several threads (a kernel's
/// shards) writing at once make bigger transactions, not more of them: SQLite has one writer.
///
/// Reads (`get`, `sequence`, `ids`) use the writing connection when it is free, and while a
/// transaction holds it, connections of their own from a small pool: in WAL mode a reader sees
/// the last committed state and never waits for the writer, so loading a machine does not wait
/// for another thread's commit to sync.
pub struct SqliteStore {
    /// The one writing connection.
    conn: Mutex<Connection>,
    /// Idle reading connections (opened on demand, kept for reuse).
    readers: Mutex<Vec<Connection>>,
    /// Batches waiting for the next group transaction.
    group: GroupCommit<OwnedBatch, Result<(), StoreError>>,
    path: PathBuf,
    synchronous: Synchronous,
    limits: Limits,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("synchronous", &self.synchronous)
            .finish_non_exhaustive()
    }
}

/// The versioned writes. A first snapshot is inserted only if the id is absent; a later one
/// replaces the row only if it holds the expected sequence. Zero rows changed means the
/// compare-and-set failed.
const INSERT: &str =
    "INSERT INTO fsm_snapshots (id, seq, snapshot, state, state_seq) VALUES (?1, ?2, ?3, ?4, ?2)
     ON CONFLICT (id) DO NOTHING";
const REPLACE: &str = "UPDATE fsm_snapshots SET seq = ?2, snapshot = ?3, state = ?5, state_seq = ?2
     WHERE id = ?1 AND seq = ?4";

/// The state a row records: only if it was recorded for the row's snapshot.
const ROW_STATE: &str = "CASE WHEN state_seq = seq THEN state END";

/// Adds the state columns to a table created before them (a no-op on a current one).
fn add_state_columns(conn: &Connection) -> Result<(), StoreError> {
    let present = conn
        .prepare("SELECT name FROM pragma_table_info('fsm_snapshots')")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(known)?;
    for (column, kind) in [("state", "TEXT"), ("state_seq", "INTEGER")] {
        if present.iter().any(|c| c == column) {
            continue;
        }
        match conn.execute_batch(&format!(
            "ALTER TABLE fsm_snapshots ADD COLUMN {column} {kind}"
        )) {
            Ok(()) => {}
            // Another process opening the same database added it first.
            Err(e) if e.to_string().contains("duplicate column") => {}
            Err(e) => return Err(known(e)),
        }
    }
    Ok(())
}

/// How long the writer of a group waits for the previous group's other threads (the kernel's
/// shards) to queue their next batch: SQLite has one writer, so batches that miss a group wait
/// a whole transaction for the next one.
const GATHER: Gather = Gather {
    divisor: 2,
    most: Duration::from_millis(5),
};

/// One batch's writes, owned, so that whichever thread writes the group can store them.
type OwnedBatch = Vec<(MachineId, Option<u64>, Snapshot)>;

impl SqliteStore {
    /// Opens the database at `path` with the default (durable) options.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        SqliteStore::builder(path).open()
    }

    /// Options for a database at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.as_ref().to_path_buf(),
            synchronous: Synchronous::Full,
            limits: Limits::DEFAULT,
            state_index: true,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // rusqlite rolls back an open transaction when it is dropped during a panic.
        self.conn.lock().recover()
    }

    /// Runs `read` on the writing connection if no transaction holds it (its page cache is
    /// the warm one: a WAL reader drops its cache whenever another connection commits), else
    /// on a reading connection (an idle one, or a new one), kept for the next read.
    fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self.conn.try_lock() {
            Ok(conn) => return read(&conn),
            Err(std::sync::TryLockError::Poisoned(p)) => return read(&p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        let idle = self.readers.lock().recover().pop();
        let conn = match idle {
            Some(conn) => conn,
            None => Connection::open_with_flags(
                &self.path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(known)?,
        };
        let result = read(&conn);
        let mut readers = self.readers.lock().recover();
        // A few are enough: one per thread reading at once.
        if readers.len() < 16 {
            readers.push(conn);
        }
        result
    }
}

impl SqliteStore {
    /// Stores a group of batches in one transaction and returns each batch's result by ticket.
    ///
    /// First every batch is written straight into the transaction: a batch fails only when a
    /// machine was written behind its shard's back (a conflict) or the disk fails, both rare.
    /// If one does, that transaction is rolled back and the group is written again with each
    /// batch in a savepoint of its own, so the failing batch alone is refused. (A savepoint's
    /// sub-journal copies every page the batch changes; measured, paying that on every group
    /// made a kernel with more shards slower than one with a single shard.)
    fn write_group(&self, batches: &[(u64, OwnedBatch)]) -> Vec<(u64, Result<(), StoreError>)> {
        let mut conn = self.conn();
        fn begin(conn: &mut Connection) -> Result<rusqlite::Transaction<'_>, StoreError> {
            conn.transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(known)
        }
        let tx = match begin(&mut conn) {
            Ok(tx) => tx,
            Err(e) => return each(batches, &e),
        };
        let written = batches.iter().try_for_each(|(_, batch)| {
            batch.iter().try_for_each(|(id, expected, snapshot)| {
                upsert(&tx, &Put::new(id, *expected, snapshot))
            })
        });
        match written {
            Ok(()) => {
                return match tx.commit() {
                    Ok(()) => batches.iter().map(|(t, _)| (*t, Ok(()))).collect(),
                    // Nothing of the group holds (or, after an I/O error, it is not known what
                    // does).
                    Err(e) => each(batches, &writing(e)),
                };
            }
            Err(e) if batches.len() == 1 => {
                // Alone in its group: the batch's error is the group's; dropping the
                // transaction rolls it back.
                return vec![(batches[0].0, Err(e))];
            }
            Err(_) => {
                if let Err(e) = tx.rollback() {
                    return each(batches, &writing(e));
                }
            }
        }
        let mut tx = match begin(&mut conn) {
            Ok(tx) => tx,
            Err(e) => return each(batches, &e),
        };
        let mut results = Vec::with_capacity(batches.len());
        for (ticket, batch) in batches {
            let result = tx.savepoint().map_err(known).and_then(|savepoint| {
                for (id, expected, snapshot) in batch {
                    // On error the savepoint is dropped, which rolls this batch back alone.
                    upsert(&savepoint, &Put::new(id, *expected, snapshot))?;
                }
                savepoint.commit().map_err(writing)
            });
            results.push((*ticket, result));
        }
        if let Err(e) = tx.commit() {
            // Nothing of the group holds (or, after an I/O error, it is not known what does).
            let e = writing(e);
            for (_, result) in &mut results {
                if result.is_ok() {
                    *result = Err(copy_error(&e, BACKEND));
                }
            }
        }
        results
    }
}

/// The same error for every batch of a group.
fn each(batches: &[(u64, OwnedBatch)], e: &StoreError) -> Vec<(u64, Result<(), StoreError>)> {
    batches
        .iter()
        .map(|(t, _)| (*t, Err(copy_error(e, BACKEND))))
        .collect()
}

/// A failure before SQLite could have written anything.
fn known(e: rusqlite::Error) -> StoreError {
    StoreError::Backend {
        backend: BACKEND,
        message: e.to_string(),
        outcome_unknown: false,
    }
}

/// A failure of a write or commit: I/O errors leave the outcome unknown.
fn writing(e: rusqlite::Error) -> StoreError {
    let unknown = matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::SystemIoFailure | ErrorCode::DatabaseCorrupt | ErrorCode::DiskFull)
    );
    StoreError::Backend {
        backend: BACKEND,
        message: e.to_string(),
        outcome_unknown: unknown,
    }
}

fn current(conn: &Connection, id: &MachineId) -> Result<Option<u64>, StoreError> {
    conn.prepare_cached("SELECT seq FROM fsm_snapshots WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([id.as_str()], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map(|seq| seq.map(|s| s as u64))
        .map_err(known)
}

/// Runs the upsert for one put; a refused compare-and-set becomes `Conflict`.
fn upsert(conn: &Connection, put: &Put<'_>) -> Result<(), StoreError> {
    let seq = i64::try_from(put.snapshot.seq()).map_err(|_| StoreError::InvalidSequence {
        id: put.id.clone(),
        expected: put.expected,
        new: put.snapshot.seq(),
    })?;
    let (id, bytes) = (put.id.as_str(), put.snapshot.as_bytes());
    let state = put.snapshot.state();
    let changed = match put.expected {
        None => conn
            .prepare_cached(INSERT)
            .and_then(|mut s| s.execute(params![id, seq, bytes, state])),
        Some(expected) => conn
            .prepare_cached(REPLACE)
            .and_then(|mut s| s.execute(params![id, seq, bytes, expected as i64, state])),
    }
    .map_err(writing)?;
    if changed == 1 {
        return Ok(());
    }
    Err(StoreError::Conflict {
        id: put.id.clone(),
        expected: put.expected,
        found: current(conn, put.id)?,
    })
}

impl SnapshotStore for SqliteStore {
    fn put(
        &self,
        id: &MachineId,
        expected: Option<u64>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        let put = Put::new(id, expected, snapshot);
        put.check_rising()?;
        upsert(&self.conn(), &put)
    }

    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        check_batch(batch)?;
        if batch.is_empty() {
            return Ok(());
        }
        let owned: OwnedBatch = batch
            .iter()
            .map(|p| (p.id.clone(), p.expected, p.snapshot.clone()))
            .collect();
        self.group
            .commit(owned, |batches| self.write_group(&batches))
    }

    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
        self.read(|conn| self.get_on(conn, id))
    }

    /// Every read in one read transaction: one consistent view, and the pages a read brings
    /// in stay cached for the next (a reading connection's cache is dropped whenever another
    /// connection has committed since its last transaction, so reads one by one beside a busy
    /// writer each start cold).
    fn get_many(&self, ids: &[&MachineId]) -> Vec<Result<Snapshot, StoreError>> {
        if ids.len() < 2 {
            return ids.iter().map(|id| self.get(id)).collect();
        }
        let read = self.read(|conn| {
            let tx = conn.unchecked_transaction().map_err(known)?;
            let out: Vec<_> = ids.iter().map(|id| self.get_on(&tx, id)).collect();
            // A read transaction: ending it cannot lose anything, and the reads stand.
            let _ = tx.commit();
            Ok(out)
        });
        match read {
            Ok(out) => out,
            Err(e) => ids.iter().map(|_| Err(copy_error(&e, BACKEND))).collect(),
        }
    }

    fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError> {
        self.read(|conn| current(conn, id))
    }

    fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
        self.read(ids_on)
    }

    /// One indexed range read: by `(state, id)` in a state, by `id` otherwise.
    fn list(&self, query: &ListQuery<'_>) -> Result<Page, StoreError> {
        self.read(|conn| list_on(conn, query))
    }

    fn count_states(&self) -> Result<StateCounts, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {ROW_STATE} AS s, count(*) FROM fsm_snapshots GROUP BY s"
                ))
                .map_err(known)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(known)?;
            let mut counts = StateCounts::default();
            for row in rows {
                match row.map_err(known)? {
                    (Some(state), n) => {
                        counts.states.insert(state, n as u64);
                    }
                    (None, n) => counts.unrecorded += n as u64,
                }
            }
            Ok(counts)
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(BACKEND, true)
    }
}

impl SqliteStore {
    fn get_on(&self, conn: &Connection, id: &MachineId) -> Result<Snapshot, StoreError> {
        let row = conn
            .prepare_cached(
                "SELECT seq, length(snapshot), CASE WHEN length(snapshot) <= ?2 THEN snapshot END
                 FROM fsm_snapshots WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![id.as_str(), self.limits.max_envelope() as i64],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Option<Vec<u8>>>(2)?,
                        ))
                    },
                )
                .optional()
            })
            .map_err(known)?;
        let Some((seq, len, bytes)) = row else {
            return Err(StoreError::NotFound { id: id.clone() });
        };
        crate::verify::row(id, seq as u64, len as u64, bytes, &self.limits)
    }
}

fn list_on(conn: &Connection, query: &ListQuery<'_>) -> Result<Page, StoreError> {
    let limit = query.page_size();
    // Ids are never empty, so "after the empty string" is "from the first".
    let after = query.after.map_or("", MachineId::as_str);
    let fetch = limit as i64 + 1;
    let (sql, state) = match query.state {
        StateFilter::Any => (
            "SELECT id FROM fsm_snapshots WHERE id > ?1 ORDER BY id LIMIT ?2".to_owned(),
            None,
        ),
        StateFilter::In(state) => (
            "SELECT id FROM fsm_snapshots WHERE state = ?3 AND state_seq = seq AND id > ?1
             ORDER BY id LIMIT ?2"
                .to_owned(),
            Some(state),
        ),
        StateFilter::Unrecorded => (
            format!(
                "SELECT id FROM fsm_snapshots WHERE {ROW_STATE} IS NULL AND id > ?1
                 ORDER BY id LIMIT ?2"
            ),
            None,
        ),
    };
    let mut stmt = conn.prepare_cached(&sql).map_err(known)?;
    let text = |r: &rusqlite::Row<'_>| r.get::<_, String>(0);
    let rows = match state {
        Some(state) => stmt.query_map(params![after, fetch, state], text),
        None => stmt.query_map(params![after, fetch], text),
    }
    .map_err(known)?;
    let mut ids = Vec::with_capacity(limit.min(1024) + 1);
    for row in rows {
        ids.push(stored_id(row.map_err(known)?)?);
    }
    let more = ids.len() > limit;
    ids.truncate(limit);
    Ok(Page { ids, more })
}

fn stored_id(text: String) -> Result<MachineId, StoreError> {
    MachineId::new(text)
        .map_err(|e| StoreError::corrupt("fsm_snapshots.id", Corruption::Other(e.to_string())))
}

fn ids_on(conn: &Connection) -> Result<Vec<MachineId>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT id FROM fsm_snapshots")
        .map_err(known)?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(known)?;
    let mut ids = Vec::new();
    for row in rows {
        ids.push(stored_id(row.map_err(known)?)?);
    }
    Ok(ids)
}
