//! The PostgreSQL store (feature `postgres`), for deployments that outgrow one machine:
//! machines run on several nodes and their error kernels live in one PostgreSQL database.
//!
//! - **Versioned upserts.** A put is one statement whose compare-and-set runs in the database
//!   (`INSERT .. ON CONFLICT DO NOTHING` for a new machine, `UPDATE .. WHERE seq = expected`
//!   after); a stale writer gets [`StoreError::Conflict`].
//! - **Group commit.** [`put_many`](SnapshotStore::put_many) is one statement over arrays
//!   (`unnest`), all or nothing on its own (it aborts itself if any compare-and-set fails):
//!   one round trip, one commit (one WAL flush) for the batch.
//! - **Ownership with fencing tokens** ([`Ownership`], optional): the id space is cut into
//!   partitions; a node acquires partitions and gets a rising *epoch* for each, renews them by
//!   heartbeat, and every write carries its epoch. The database refuses a write whose epoch is
//!   not the partition's current one ([`StoreError::Fenced`]), so a paused or partitioned old
//!   owner cannot overwrite what a new owner moved on from; a partition whose owner vanished
//!   is taken over when its lease runs out. See [`ownership`](self#ownership).
//! - **Verified reads**, like every backend: the envelope's checksum and the row's sequence.
//! - **Failures sorted by what they mean.** An unreachable server or a pool timeout is
//!   [`StoreError::Unavailable`] (nothing written, retry); a connection lost while a write
//!   was committing is [`StoreError::ConnectionLost`] (outcome unknown: read it back); an
//!   error the server reports for a statement means it did not happen
//!   ([`StoreError::Backend`]). No state is cached, so there is nothing to poison: the next
//!   call uses a fresh connection and reads what the database holds.
//!
//! ```no_run
//! use std::time::Duration;
//! use fsm_core::store::{Format, MachineId, Snapshot, SnapshotStore};
//! use fsm_persist::postgres::{Ownership, PostgresStore};
//!
//! let config = "host=/run/postgresql user=fsm dbname=orders".parse()?;
//! let store = PostgresStore::builder(config)
//!     .schema("fsm")
//!     .table("order_snapshots")
//!     .ownership(Ownership::new("node-a").partitions(64).lease(Duration::from_secs(10)))
//!     .open()?;
//! let id = MachineId::new("order-1")?;
//! // Writable only while this node owns the machine's partition.
//! let epoch = store.owner_epoch(&id)?;
//! store.put(&id, None, &Snapshot::new("Order", 1, 1, Format::Postcard, b"\x00")?)?;
//! # let _ = epoch;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Ownership
//! Every node of a deployment opens the same table with the same number of partitions; the
//! table records it, and a node that disagrees (or opens a fenced table without ownership) is
//! refused with [`OpenError::Layout`]. A node's heartbeat thread renews its leases and, as
//! its [`Claim`] says, takes partitions that are free. On [`StoreError::Fenced`] the
//! [`Kernel`](fsm_core::kernel::Kernel) stops serving the machine and hands its queued
//! commands back. Dropping the store releases its partitions at once, so a planned stop
//! hands over without waiting for a lease to run out.

mod error;
#[cfg(feature = "cluster")]
pub mod inbox;
#[cfg(feature = "cluster")]
pub mod node;
mod ownership;
mod pool;
#[cfg(feature = "postgres-server")]
mod server;
mod sql;
#[cfg(feature = "tls")]
mod tls;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fsm_core::store::{
    check_batch, Capabilities, Corruption, Limits, ListQuery, MachineId, Page, Put, Snapshot,
    SnapshotStore, StateCounts, StateFilter, StoreError,
};
use postgres::types::ToSql;

pub use error::OpenError;
#[cfg(feature = "cluster")]
pub use inbox::{
    Decision, Depth, Inbox, InboxBuilder, InboxCommand, InboxError, InboxStats, InboxTicket,
    Status, DEFAULT_INBOX_LIMIT, DEFAULT_RETENTION, MAX_EVENT_JSON,
};
#[cfg(feature = "cluster")]
pub use node::{Node, NodeBuilder, NodeStats};
pub use ownership::{partition_of, Claim, Ownership, MAX_NODE_NAME};
/// The client crate (`postgres`), re-exported, for its `Client`, `Error` and `NoTls` in
/// [`PostgresStore::builder_with`] without a dependency of your own to keep in step.
pub use postgres as client;
/// The client crate's connection settings (host or socket directory, port, user, database,
/// timeouts), re-exported: build one or parse a connection string.
pub use postgres::Config;
#[cfg(feature = "postgres-server")]
pub use server::{find_binaries, required, Listen, ServerError, TestServer, TEST_USER};
#[cfg(feature = "tls")]
pub use tls::{Tls, TlsError};

use error::{classify, unexpected, Phase, BACKEND};
use ownership::View;
use pool::{Conn, Connector, Lent, Pool, PoolConfig};

use crate::group::copy_error;

/// How many machines one `get_many` statement reads: the answer is bounded by this many
/// snapshots of the largest size the limits allow.
const GET_MANY_CHUNK: usize = 128;
use sql::{Sql, LAYOUT, REFUSED};

/// Options for a [`PostgresStore`]; from [`PostgresStore::builder`].
#[derive(Clone)]
pub struct PostgresStoreBuilder {
    connect: Connector,
    schema: String,
    table: String,
    pool: PoolConfig,
    limits: Limits,
    ownership: Option<Ownership>,
}

impl fmt::Debug for PostgresStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection settings may hold a password: only where the store goes is shown.
        f.debug_struct("PostgresStoreBuilder")
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("pool", &self.pool)
            .field("ownership", &self.ownership)
            .finish_non_exhaustive()
    }
}

impl PostgresStoreBuilder {
    /// The schema holding the tables (default `public`), created if missing.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The snapshot table (default `fsm_snapshots`); the owner and meta tables take its name
    /// plus `_owners` and `_meta`. Up to 56 bytes of a-z, 0-9 and `_`.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// At most this many connections (default 8), opened on demand.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool.max = n;
        self
    }

    /// How long a call waits for a free connection before answering
    /// [`StoreError::Unavailable`] (default 5 s).
    pub fn pool_timeout(mut self, timeout: Duration) -> Self {
        self.pool.timeout = timeout;
        self
    }

    /// A connection idle longer than this is checked with an empty query before it is lent
    /// (default 1 s), so a server restart costs a reconnect, not a write of unknown outcome.
    pub fn validate_idle_after(mut self, idle: Duration) -> Self {
        self.pool.validate_after = idle;
        self
    }

    /// Bounds what a read accepts.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Turns on ownership and fencing, as this node.
    pub fn ownership(mut self, ownership: Ownership) -> Self {
        self.ownership = Some(ownership);
        self
    }

    /// Connects, creates the schema and tables if missing (serialized between nodes by an
    /// advisory lock), checks that the table's layout matches these settings, and with
    /// ownership, takes the partitions its [`Claim`] asks for and starts the heartbeat.
    pub fn open(self) -> Result<PostgresStore, OpenError> {
        if let Some(o) = &self.ownership {
            o.check()?;
        }
        if self.pool.max == 0 {
            return Err(OpenError::InvalidPool(
                "a pool of 0 connections; use at least 1".into(),
            ));
        }
        let sql = Sql::new(&self.schema, &self.table, self.ownership.is_some())?;
        let mut client = (self.connect)().map_err(|e| {
            if error::is_tls_failure(&e) {
                return OpenError::Tls(tls_detail(&e));
            }
            OpenError::Store(StoreError::Unavailable {
                backend: BACKEND,
                message: e.to_string(),
            })
        })?;
        create_schema(&mut client, &sql, self.ownership.as_ref())?;
        drop(client);
        let shared = Arc::new(Shared {
            pool: Pool::new(self.connect, self.pool),
            fence: self.ownership.map(|ownership| Fence {
                view: View::new(ownership.partitions),
                ownership,
            }),
            sql,
            limits: self.limits,
        });
        let mut store = PostgresStore {
            shared,
            heartbeat: None,
        };
        if let Some(fence) = &store.shared.fence {
            store.shared.beat()?;
            if let Some(every) = fence.ownership.heartbeat {
                store.heartbeat = Some(spawn_heartbeat(store.shared.clone(), every)?);
            }
        }
        Ok(store)
    }
}

/// Creates what is missing and checks what exists, in one transaction under an advisory lock
/// (two nodes starting together do not race on `CREATE .. IF NOT EXISTS`).
fn create_schema(
    client: &mut postgres::Client,
    sql: &Sql,
    ownership: Option<&Ownership>,
) -> Result<(), OpenError> {
    let fail = |e: postgres::Error| OpenError::Store(classify(&e, Phase::NothingWritten).error);
    let fencing = ownership.map_or_else(
        || "none".to_owned(),
        |o| format!("partitions={}", o.partitions),
    );
    let mut tx = client.transaction().map_err(fail)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))",
        &[&sql.lock_key],
    )
    .map_err(fail)?;
    tx.batch_execute(&sql.create).map_err(fail)?;
    let created = tx
        .execute(&sql.meta_insert, &[&LAYOUT, &fencing])
        .map_err(fail)?
        == 2;
    // Owner rows are made once, with the table: made again later (after someone deleted
    // them), their epochs would start over and two owners could share one.
    if let (true, Some(o)) = (created, ownership) {
        tx.execute(&sql.meta_owners, &[&(o.partitions as i32)])
            .map_err(fail)?;
    }
    let mut found: HashMap<String, String> = HashMap::new();
    for row in tx.query(&sql.meta_read, &[]).map_err(fail)? {
        let key: String = row.try_get(0).map_err(fail)?;
        let value: String = row.try_get(1).map_err(fail)?;
        found.insert(key, value);
    }
    let layout_error = |problem: String| OpenError::Layout {
        table: sql.table.clone(),
        problem,
    };
    let layout = found.get("layout").map_or("", String::as_str);
    if layout != LAYOUT {
        return Err(layout_error(format!(
            "its layout is version {layout:?}, this store reads version {LAYOUT}; upgrade fsm-persist on this node"
        )));
    }
    let stored = found.get("fencing").map_or("", String::as_str);
    if stored != fencing {
        return Err(layout_error(format!(
            "it was created with fencing `{stored}`, this node opens it with `{fencing}`; every node must use the same ownership setting and partition count"
        )));
    }
    if let Some(o) = ownership {
        let rows = found.get("partitions").map_or("", String::as_str);
        if rows != o.partitions.to_string() {
            return Err(layout_error(format!(
                "it should hold {} owner rows and holds {rows}; owner rows were deleted or added by hand: restore them with their last epochs",
                o.partitions
            )));
        }
    }
    tx.commit().map_err(fail)?;
    Ok(())
}

/// A TLS failure's message with its causes (the client's own message is only "error
/// performing TLS handshake").
pub(crate) fn tls_detail(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn spawn_heartbeat(
    shared: Arc<Shared>,
    every: Duration,
) -> Result<(mpsc::Sender<()>, JoinHandle<()>), OpenError> {
    let (stop, stopped) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("fsm-pg-heartbeat".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                // A failed beat changes nothing held; leases run out locally if it keeps
                // failing, and the next beat tries again.
                let _ = shared.beat();
            }
        })
        .map_err(|e| {
            OpenError::Store(StoreError::Unavailable {
                backend: BACKEND,
                message: format!("cannot spawn the heartbeat thread: {e}"),
            })
        })?;
    Ok((stop, handle))
}

/// What a store's ownership knows and how to write under it.
struct Fence {
    ownership: Ownership,
    view: View,
}

struct Shared {
    pool: Pool,
    sql: Sql,
    limits: Limits,
    fence: Option<Fence>,
}

/// A snapshot store in a PostgreSQL database, optionally fencing writers by ownership; see the
/// [module documentation](self).
pub struct PostgresStore {
    shared: Arc<Shared>,
    heartbeat: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.shared.sql.table)
            .field(
                "node",
                &self.shared.fence.as_ref().map(|f| &f.ownership.node),
            )
            .finish_non_exhaustive()
    }
}

/// What one heartbeat did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Heartbeat {
    /// Partitions whose lease was renewed.
    pub renewed: usize,
    /// Partitions found lost (another node took them, or they were stolen).
    pub lost: Vec<u32>,
    /// Partitions newly acquired, with their epochs.
    pub acquired: Vec<(u32, u64)>,
}

/// One partition's owner row, as the database holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OwnerRow {
    /// The partition.
    pub partition: u32,
    /// Its newest epoch (0: never owned).
    pub epoch: u64,
    /// The owning node's name (`None`: released or never owned).
    pub owner: Option<String>,
    /// Whether the owner's lease runs now, by the database's clock.
    pub live: bool,
}

impl PostgresStore {
    /// Options for a store over the database `config` connects to, without TLS (a Unix
    /// socket, or a network you trust; see [`PostgresStore::builder_with`] for TLS).
    pub fn builder(config: postgres::Config) -> PostgresStoreBuilder {
        PostgresStore::builder_with(move || config.connect(postgres::NoTls))
    }

    /// Options for a store over the database `config` connects to, with TLS required and the
    /// server's certificate verified as `tls` says (feature `tls`); see [`Tls`].
    #[cfg(feature = "tls")]
    pub fn builder_tls(config: postgres::Config, tls: &Tls) -> PostgresStoreBuilder {
        PostgresStore::builder_with(tls.connect_fn(config))
    }

    /// Options for a store whose connections `connect` opens: the way to bring TLS (a
    /// `postgres-openssl`, `postgres-native-tls` or rustls connector) or anything else the
    /// client crate can do. It is called for every new pooled connection.
    ///
    /// ```no_run
    /// use fsm_persist::postgres::{client::NoTls, Config, PostgresStore};
    ///
    /// let config: Config = "host=db.internal user=fsm dbname=orders".parse()?;
    /// // With a TLS crate: `move || config.connect(tls.clone())`.
    /// let store = PostgresStore::builder_with(move || config.connect(NoTls)).open()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder_with(
        connect: impl Fn() -> Result<postgres::Client, postgres::Error> + Send + Sync + 'static,
    ) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            connect: Arc::new(connect),
            schema: "public".into(),
            table: "fsm_snapshots".into(),
            pool: PoolConfig {
                max: 8,
                timeout: Duration::from_secs(5),
                validate_after: Duration::from_secs(1),
            },
            limits: Limits::DEFAULT,
            ownership: None,
        }
    }

    /// The snapshot table, as `schema.table`.
    pub fn table(&self) -> &str {
        &self.shared.sql.table
    }

    /// Connections open now, idle or in use.
    pub fn connections(&self) -> usize {
        self.shared.pool.open()
    }

    /// The partition machine `id` belongs to (`None` without ownership).
    pub fn partition_of(&self, id: &MachineId) -> Option<u32> {
        let fence = self.shared.fence.as_ref()?;
        Some(partition_of(id, fence.ownership.partitions))
    }

    /// The partitions this node holds, with their epochs (its own view; see
    /// [`PostgresStore::owners`] for the database's).
    pub fn held(&self) -> Vec<(u32, u64)> {
        self.shared
            .fence
            .as_ref()
            .map_or_else(Vec::new, |f| f.view.all_held())
    }

    /// Renews this node's leases and claims free partitions as its [`Claim`] says: what the
    /// heartbeat thread does, for a store opened with `heartbeat(None)` to drive itself.
    pub fn heartbeat(&self) -> Result<Heartbeat, StoreError> {
        self.shared.beat()
    }

    /// Acquires these partitions if they are free (never owned, released, or with a lease
    /// that ran out); returns those acquired, with their new epochs.
    pub fn acquire(&self, partitions: &[u32]) -> Result<Vec<(u32, u64)>, StoreError> {
        self.shared.take(partitions, false)
    }

    /// Takes these partitions whatever their leases say: an operator's decision that their
    /// owner is gone. The old owner's writes are refused from now on (its epoch is stale).
    pub fn steal(&self, partitions: &[u32]) -> Result<Vec<(u32, u64)>, StoreError> {
        self.shared.take(partitions, true)
    }

    /// Gives up every partition this node holds, so another node can take them at once.
    /// Writes stop here before the release is sent. Returns how many were released.
    pub fn release(&self) -> Result<usize, StoreError> {
        self.shared.release(None)
    }

    /// Gives up these partitions (those of them this node holds), for a planned move to
    /// another node or to even out the load. A node whose [`Claim`] covers them takes them
    /// back at its next heartbeat if nobody else did first, so move them from a node that
    /// claims only what it was given. Returns how many were released.
    pub fn release_partitions(&self, partitions: &[u32]) -> Result<usize, StoreError> {
        self.shared.release(Some(partitions))
    }

    /// This node's name (`None` without ownership).
    pub fn node(&self) -> Option<&str> {
        self.shared
            .fence
            .as_ref()
            .map(|f| f.ownership.node.as_str())
    }

    /// The number of partitions of the id space (`None` without ownership).
    pub fn partitions(&self) -> Option<u32> {
        self.shared.fence.as_ref().map(|f| f.ownership.partitions)
    }

    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn connector(&self) -> pool::Connector {
        self.shared.pool.connector()
    }

    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn names(&self) -> (&str, &str) {
        (&self.shared.sql.names.0, &self.shared.sql.names.1)
    }

    /// The owner table as the database holds it now.
    pub fn owners(&self) -> Result<Vec<OwnerRow>, StoreError> {
        let mut conn = self.shared.pool.get(&self.shared.sql)?;
        let rows = read(&mut conn, |c| c.client.query(&c.statements.owners, &[]))?;
        rows.iter()
            .map(|r| {
                let partition: i32 = r.try_get(0).map_err(|e| unexpected(e.to_string()))?;
                let epoch: i64 = r.try_get(1).map_err(|e| unexpected(e.to_string()))?;
                Ok(OwnerRow {
                    partition: partition as u32,
                    epoch: epoch as u64,
                    owner: r.try_get(2).map_err(|e| unexpected(e.to_string()))?,
                    live: r.try_get(3).map_err(|e| unexpected(e.to_string()))?,
                })
            })
            .collect()
    }
}

/// Runs `f` on a lent connection as a call that writes nothing; a broken connection is
/// discarded.
fn read<T>(
    conn: &mut Lent<'_>,
    f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>,
) -> Result<T, StoreError> {
    run(conn, Phase::NothingWritten, f)
}

fn run<T>(
    conn: &mut Lent<'_>,
    phase: Phase,
    f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>,
) -> Result<T, StoreError> {
    f(conn).map_err(|e| {
        let failure = classify(&e, phase);
        if failure.broken {
            conn.discard();
        }
        failure.error
    })
}

fn column<'a, T: postgres::types::FromSql<'a>>(
    row: &'a postgres::Row,
    i: usize,
) -> Result<T, StoreError> {
    row.try_get(i).map_err(|e| unexpected(e.to_string()))
}

fn seq_param(put: &Put<'_>) -> Result<(i64, Option<i64>), StoreError> {
    let invalid = || StoreError::InvalidSequence {
        id: put.id.clone(),
        expected: put.expected,
        new: put.snapshot.seq(),
    };
    let seq = i64::try_from(put.snapshot.seq()).map_err(|_| invalid())?;
    let expected = put
        .expected
        .map(i64::try_from)
        .transpose()
        .map_err(|_| invalid())?;
    Ok((seq, expected))
}

impl Shared {
    /// The partition and epoch a write of `id` carries (`(0, 0)` without ownership), or
    /// `Fenced` if this node holds no epoch for it. A held partition whose lease ran out
    /// locally is still tried: the database decides.
    fn epoch_for(&self, id: &MachineId) -> Result<(i32, i64), StoreError> {
        let Some(fence) = &self.fence else {
            return Ok((0, 0));
        };
        let p = partition_of(id, fence.ownership.partitions);
        match fence.view.held(p) {
            Some(epoch) => Ok((p as i32, epoch as i64)),
            None => Err(fence.view.fenced(id, None)),
        }
    }

    /// The write of `id` under epoch `epoch` found partition `p`'s owner row at `current`.
    fn fenced(&self, id: &MachineId, p: i32, epoch: i64, current: Option<i64>) -> StoreError {
        let current = current.map(|c| c as u64);
        if let Some(fence) = &self.fence {
            fence.view.lost(p as u32, epoch as u64, current);
        }
        StoreError::Fenced {
            id: id.clone(),
            held: Some(epoch as u64),
            current,
        }
    }

    fn put(&self, put: &Put<'_>) -> Result<(), StoreError> {
        put.check_rising()?;
        let (seq, expected) = seq_param(put)?;
        let (part, epoch) = self.epoch_for(put.id)?;
        let id = put.id.as_str();
        let bytes = put.snapshot.as_bytes();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&id, &seq, &bytes];
        if self.fence.is_some() {
            params.extend([&part as &(dyn ToSql + Sync), &epoch]);
        }
        if let Some(e) = &expected {
            params.push(e);
        }
        let state = put.snapshot.state();
        params.push(&state);
        let mut conn = self.pool.get(&self.sql)?;
        let row = run(&mut conn, Phase::Committing, |c| {
            let stmt = match expected {
                None => &c.statements.insert,
                Some(_) => &c.statements.replace,
            };
            c.client.query_one(stmt, &params)
        })?;
        let fence: Option<i64> = column(&row, 0)?;
        let written: i64 = column(&row, 1)?;
        if self.fence.is_some() {
            let Some(current) = fence else {
                return Err(unexpected(format!(
                    "{}: no owner row for partition {part}; owner rows were deleted by hand",
                    self.sql.table
                )));
            };
            if current != epoch {
                return Err(self.fenced(put.id, part, epoch, Some(current)));
            }
        }
        if written == 1 {
            return Ok(());
        }
        Err(StoreError::Conflict {
            id: put.id.clone(),
            expected: put.expected,
            found: self.sequence_on(&mut conn, put.id)?,
        })
    }

    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        check_batch(batch)?;
        match batch {
            [] => return Ok(()),
            // A lone snapshot takes the single put's shorter statement.
            [one] => return self.put(one),
            _ => {}
        }
        let n = batch.len();
        let mut ids = Vec::with_capacity(n);
        let mut expected = Vec::with_capacity(n);
        let mut seqs = Vec::with_capacity(n);
        let mut snapshots = Vec::with_capacity(n);
        let mut parts = Vec::with_capacity(n);
        let mut epochs = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        for put in batch {
            let (seq, exp) = seq_param(put)?;
            let (part, epoch) = self.epoch_for(put.id)?;
            ids.push(put.id.as_str());
            expected.push(exp);
            seqs.push(seq);
            snapshots.push(put.snapshot.as_bytes());
            parts.push(part);
            epochs.push(epoch);
            states.push(put.snapshot.state());
        }
        let mut conn = self.pool.get(&self.sql)?;
        let c: &mut Conn = &mut conn;
        let answer = c.client.query_one(
            &c.statements.batch,
            &[&ids, &expected, &seqs, &snapshots, &parts, &epochs, &states],
        );
        let row = match answer {
            Ok(row) => row,
            // The statement aborted itself: a compare-and-set failed, nothing was written.
            Err(e) if e.code().map(|c| c.code()) == Some(REFUSED) => {
                return Err(self.conflict_in(&mut conn, batch))
            }
            Err(e) => {
                let failure = classify(&e, Phase::Committing);
                if failure.broken {
                    conn.discard();
                }
                return Err(failure.error);
            }
        };
        drop(conn);
        let stale: Option<Vec<i32>> = column(&row, 1)?;
        match stale.filter(|s| !s.is_empty()) {
            Some(stale) => {
                let current: Option<Vec<Option<i64>>> = column(&row, 2)?;
                Err(self.fenced_batch(batch, &parts, &epochs, &stale, current))
            }
            None => Ok(()),
        }
    }

    /// The batch's stale partitions stop being held; the error names the first machine of
    /// the batch in one of them.
    fn fenced_batch(
        &self,
        batch: &[Put<'_>],
        parts: &[i32],
        epochs: &[i64],
        stale: &[i32],
        current: Option<Vec<Option<i64>>>,
    ) -> StoreError {
        let current = current.unwrap_or_default();
        let mut first = None;
        for (k, &p) in stale.iter().enumerate() {
            let Some(i) = parts.iter().position(|&q| q == p) else {
                continue;
            };
            let error = self.fenced(batch[i].id, p, epochs[i], current.get(k).copied().flatten());
            first.get_or_insert(error);
        }
        first.unwrap_or_else(|| unexpected("the batch was fenced without a stale partition"))
    }

    /// Which write of a refused batch lost its compare-and-set, as the database holds it now.
    fn conflict_in(&self, conn: &mut Lent<'_>, batch: &[Put<'_>]) -> StoreError {
        let ids: Vec<&str> = batch.iter().map(|p| p.id.as_str()).collect();
        let rows = match read(conn, |c| c.client.query(&c.statements.sequences, &[&ids])) {
            Ok(rows) => rows,
            Err(e) => return e,
        };
        let mut held: HashMap<String, u64> = HashMap::with_capacity(rows.len());
        for row in &rows {
            match (column::<String>(row, 0), column::<i64>(row, 1)) {
                (Ok(id), Ok(seq)) => {
                    held.insert(id, seq as u64);
                }
                (Err(e), _) | (_, Err(e)) => return e,
            }
        }
        let lost = batch
            .iter()
            .find(|p| held.get(p.id.as_str()).copied() != p.expected)
            .unwrap_or(&batch[0]);
        StoreError::Conflict {
            id: lost.id.clone(),
            expected: lost.expected,
            found: held.get(lost.id.as_str()).copied(),
        }
    }

    fn sequence_on(&self, conn: &mut Lent<'_>, id: &MachineId) -> Result<Option<u64>, StoreError> {
        let row = read(conn, |c| {
            c.client.query_opt(&c.statements.sequence, &[&id.as_str()])
        })?;
        row.map(|r| column::<i64>(&r, 0).map(|s| s as u64))
            .transpose()
    }

    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
        let limit = self.limits.max_envelope() as i64;
        let mut conn = self.pool.get(&self.sql)?;
        let row = read(&mut conn, |c| {
            c.client
                .query_opt(&c.statements.get, &[&id.as_str(), &limit])
        })?;
        drop(conn);
        let Some(row) = row else {
            return Err(StoreError::NotFound { id: id.clone() });
        };
        self.snapshot_of(id, &row, 0)
    }

    /// One statement per [`GET_MANY_CHUNK`] ids (`id = ANY($1)`): one round trip, not one
    /// per machine.
    fn get_many(&self, ids: &[&MachineId]) -> Vec<Result<Snapshot, StoreError>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(GET_MANY_CHUNK) {
            match self.get_chunk(chunk) {
                Ok(read) => out.extend(read),
                Err(e) => out.extend(chunk.iter().map(|_| Err(copy_error(&e, BACKEND)))),
            }
        }
        out
    }

    fn get_chunk(
        &self,
        chunk: &[&MachineId],
    ) -> Result<Vec<Result<Snapshot, StoreError>>, StoreError> {
        let limit = self.limits.max_envelope() as i64;
        let names: Vec<&str> = chunk.iter().map(|m| m.as_str()).collect();
        let mut conn = self.pool.get(&self.sql)?;
        let rows = read(&mut conn, |c| {
            c.client.query(&c.statements.get_many, &[&names, &limit])
        })?;
        drop(conn);
        let mut found: HashMap<String, &postgres::Row> = HashMap::with_capacity(rows.len());
        for row in &rows {
            found.insert(column::<String>(row, 0)?, row);
        }
        Ok(chunk
            .iter()
            .map(|id| match found.get(id.as_str()) {
                None => Err(StoreError::NotFound { id: (*id).clone() }),
                Some(row) => self.snapshot_of(id, row, 1),
            })
            .collect())
    }

    /// The snapshot in `row`, whose sequence, length and bytes start at column `at`.
    fn snapshot_of(
        &self,
        id: &MachineId,
        row: &postgres::Row,
        at: usize,
    ) -> Result<Snapshot, StoreError> {
        let seq: i64 = column(row, at)?;
        let len: i64 = column(row, at + 1)?;
        let bytes: Option<Vec<u8>> = column(row, at + 2)?;
        crate::verify::row(id, seq as u64, len as u64, bytes, &self.limits)
    }

    fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
        let mut conn = self.pool.get(&self.sql)?;
        let rows = read(&mut conn, |c| c.client.query(&c.statements.ids, &[]))?;
        drop(conn);
        rows.iter().map(|row| self.stored_id(row)).collect()
    }

    fn stored_id(&self, row: &postgres::Row) -> Result<MachineId, StoreError> {
        let text: String = column(row, 0)?;
        MachineId::new(text).map_err(|e| {
            StoreError::corrupt(
                format!("{}.id", self.sql.table),
                Corruption::Other(e.to_string()),
            )
        })
    }

    fn list(&self, query: &ListQuery<'_>) -> Result<Page, StoreError> {
        let limit = query.page_size();
        // Ids are never empty: after "" is from the first.
        let after = query.after.map_or("", MachineId::as_str);
        let fetch = limit as i64 + 1;
        let mut conn = self.pool.get(&self.sql)?;
        let rows = read(&mut conn, |c| match query.state {
            StateFilter::Any => c.client.query(&c.statements.list_any, &[&after, &fetch]),
            StateFilter::In(state) => c
                .client
                .query(&c.statements.list_in, &[&after, &fetch, &state]),
            StateFilter::Unrecorded => c
                .client
                .query(&c.statements.list_unrecorded, &[&after, &fetch]),
        })?;
        drop(conn);
        let mut ids = rows
            .iter()
            .map(|row| self.stored_id(row))
            .collect::<Result<Vec<_>, _>>()?;
        let more = ids.len() > limit;
        ids.truncate(limit);
        Ok(Page { ids, more })
    }

    fn count_states(&self) -> Result<StateCounts, StoreError> {
        let mut conn = self.pool.get(&self.sql)?;
        let rows = read(&mut conn, |c| {
            c.client.query(&c.statements.count_states, &[])
        })?;
        drop(conn);
        let mut counts = StateCounts::default();
        for row in &rows {
            let state: Option<String> = column(row, 0)?;
            let n: i64 = column(row, 1)?;
            match state {
                Some(state) => {
                    counts.states.insert(state, n as u64);
                }
                None => counts.unrecorded += n as u64,
            }
        }
        Ok(counts)
    }

    /// Renews the held leases, drops the lost ones, claims free partitions.
    fn beat(&self) -> Result<Heartbeat, StoreError> {
        let mut report = Heartbeat::default();
        let Some(fence) = &self.fence else {
            return Ok(report);
        };
        let held = fence.view.all_held();
        if !held.is_empty() {
            let parts: Vec<i32> = held.iter().map(|&(p, _)| p as i32).collect();
            let epochs: Vec<i64> = held.iter().map(|&(_, e)| e as i64).collect();
            let lease = lease_ms(&fence.ownership);
            let asked = Instant::now();
            let mut conn = self.pool.get(&self.sql)?;
            let rows = run(&mut conn, Phase::Committing, |c| {
                c.client
                    .query(&c.statements.renew, &[&parts, &epochs, &lease])
            })?;
            drop(conn);
            let mut renewed = HashSet::with_capacity(rows.len());
            for row in &rows {
                renewed.insert(column::<i32>(row, 0)? as u32);
            }
            for (p, e) in held {
                if renewed.contains(&p) {
                    fence.view.renewed(p, e, asked, fence.ownership.lease);
                    report.renewed += 1;
                } else {
                    fence.view.lost(p, e, None);
                    report.lost.push(p);
                }
            }
        }
        let wanted = fence.ownership.wanted(&fence.view);
        if !wanted.is_empty() {
            report.acquired = self.take_wanted(fence, &wanted, false)?;
        }
        Ok(report)
    }

    fn take(&self, partitions: &[u32], steal: bool) -> Result<Vec<(u32, u64)>, StoreError> {
        let Some(fence) = &self.fence else {
            return Err(StoreError::NotSupported {
                operation: "acquiring partitions (the store was opened without ownership)",
                backend: BACKEND,
            });
        };
        if let Some(p) = partitions
            .iter()
            .find(|&&p| p >= fence.ownership.partitions)
        {
            return Err(unexpected(format!(
                "partition {p} does not exist; there are {} (0 to {})",
                fence.ownership.partitions,
                fence.ownership.partitions - 1
            )));
        }
        let wanted: Vec<i32> = partitions.iter().map(|&p| p as i32).collect();
        self.take_wanted(fence, &wanted, steal)
    }

    fn take_wanted(
        &self,
        fence: &Fence,
        wanted: &[i32],
        steal: bool,
    ) -> Result<Vec<(u32, u64)>, StoreError> {
        let lease = lease_ms(&fence.ownership);
        let node = fence.ownership.node.as_str();
        let asked = Instant::now();
        let mut conn = self.pool.get(&self.sql)?;
        let rows = run(&mut conn, Phase::Committing, |c| {
            let stmt = if steal {
                &c.statements.steal
            } else {
                &c.statements.acquire
            };
            c.client.query(stmt, &[&wanted, &node, &lease])
        })?;
        drop(conn);
        let mut taken = Vec::with_capacity(rows.len());
        for row in &rows {
            let p = column::<i32>(row, 0)? as u32;
            let epoch = column::<i64>(row, 1)? as u64;
            fence.view.acquired(p, epoch, asked, fence.ownership.lease);
            taken.push((p, epoch));
        }
        taken.sort_unstable();
        Ok(taken)
    }

    fn release(&self, only: Option<&[u32]>) -> Result<usize, StoreError> {
        let Some(fence) = &self.fence else {
            return Ok(0);
        };
        let mut held = fence.view.all_held();
        if let Some(only) = only {
            held.retain(|(p, _)| only.contains(p));
        }
        if held.is_empty() {
            return Ok(0);
        }
        for &(p, e) in &held {
            fence.view.lost(p, e, None);
        }
        let parts: Vec<i32> = held.iter().map(|&(p, _)| p as i32).collect();
        let epochs: Vec<i64> = held.iter().map(|&(_, e)| e as i64).collect();
        let mut conn = self.pool.get(&self.sql)?;
        let released = run(&mut conn, Phase::Committing, |c| {
            c.client.execute(&c.statements.release, &[&parts, &epochs])
        })?;
        Ok(released as usize)
    }
}

fn lease_ms(o: &Ownership) -> i64 {
    o.lease.as_millis().min(i64::MAX as u128) as i64
}

impl SnapshotStore for PostgresStore {
    fn put(
        &self,
        id: &MachineId,
        expected: Option<u64>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        self.shared.put(&Put::new(id, expected, snapshot))
    }

    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        self.shared.put_many(batch)
    }

    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
        self.shared.get(id)
    }

    fn get_many(&self, ids: &[&MachineId]) -> Vec<Result<Snapshot, StoreError>> {
        self.shared.get_many(ids)
    }

    fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError> {
        let mut conn = self.shared.pool.get(&self.shared.sql)?;
        self.shared.sequence_on(&mut conn, id)
    }

    fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
        self.shared.ids()
    }

    /// One indexed range read: by `(state, id)` in a state, by `id` (byte order) otherwise.
    fn list(&self, query: &ListQuery<'_>) -> Result<Page, StoreError> {
        self.shared.list(query)
    }

    fn count_states(&self) -> Result<StateCounts, StoreError> {
        self.shared.count_states()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(BACKEND, true)
    }

    /// This node's epoch for `id`'s partition while it holds it and its lease surely runs;
    /// `Fenced` otherwise. Without ownership, 0.
    fn owner_epoch(&self, id: &MachineId) -> Result<u64, StoreError> {
        match &self.shared.fence {
            None => Ok(0),
            Some(fence) => fence.view.writable(id),
        }
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.heartbeat.take() {
            drop(stop);
            let _ = handle.join();
        }
        // A planned stop hands over at once; if this fails, the leases run out instead.
        let _ = self.shared.release(None);
    }
}
