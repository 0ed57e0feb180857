//! The cluster's inbox (feature `cluster`): commands submitted on any node, or by a process
//! that owns nothing, kept in a table beside the snapshots until the machine's owner decides
//! them.
//!
//! # How a command travels
//! 1. [`Inbox::submit_many`] writes the commands of one call as one *batch* row (the machines,
//!    keys and events as arrays, in submission order) and a *key* row per command, keyed by
//!    machine and [`IdempotencyKey`]. Once that commits the command is **accepted**: it will
//!    be applied exactly once, or answered with why not, whatever happens to the node that
//!    accepted it. A resubmission with the same key and the same event is the same command
//!    (the same ticket); the same key with another event is refused
//!    ([`InboxError::KeyReused`]). The submit notifies the owners (`NOTIFY`); they also poll,
//!    so a lost notification only delays. A command's *row* is its batch's id times 65,536
//!    plus its place in the batch: it orders commands as they were submitted.
//! 2. The owner of the machine's partition (a [`Node`](super::Node)) reads the open batches
//!    holding its partitions' commands and takes each machine's oldest pending command, then
//!    submits each to its kernel under the command's key. The kernel writes the transition and
//!    the key in one write of the machine's snapshot, fenced by the partition's epoch.
//! 3. The owner records the decisions of a round in one statement, as one *outcome* row per
//!    batch (the slots and their decisions as arrays), fenced by the same epoch, closes the
//!    batches whose every command is decided, and notifies the waiting submitters; an
//!    [`InboxTicket`] resolves when its command's decision is recorded, on whichever node it
//!    waits.
//!
//! Per command, the database writes one key row; everything else is written once per batch.
//! The view `T_inbox` shows one row per command (its decision, if any) for operators and
//! checkers.

//! # Exactly once without two-phase commit
//! Applying a command and marking it done are one write: the mark is the key, stored in the
//! machine's idempotency journal inside the snapshot the transition writes. The decision in
//! the inbox is a copy of it. If the owner dies (or is fenced) between the two, the next
//! owner finds the command still pending, submits it again under the same key, and the
//! journal answers it without applying it again (`Committed { duplicate: true }`); that answer
//! is what the inbox then records. Two nodes recording one command in the same moment (a
//! late applied decision of an old owner and the new owner's) both record `applied`; the
//! first recorded is the answer. A machine has one inbox command in flight at a time, so the journal
//! (64 keys per machine by default) always still holds the key, and a command refused is
//! refused again in the same state: per-machine order holds across crashes.
//!
//! A batch and its decisions are kept for the retention window (the cluster's idempotency
//! window, default one day) after its last command was decided, then deleted, key rows
//! included, by whichever node's pump gets to it, off the commit path.

use crate::sync::Recover;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fsm_core::kernel::IdempotencyKey;
use fsm_core::store::{MachineId, StoreError};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Statement};
use serde::Serialize;

use super::error::{classify, Phase};
use super::ownership::partition_of;
use super::pool::Connector;
use super::sql::check_name;
use super::PostgresStore;

/// The default bound of pending commands per partition.
pub const DEFAULT_INBOX_LIMIT: u64 = 10_000;
/// The default retention of decided commands (the cluster's idempotency window).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The longest event, as JSON, that the inbox accepts.
pub const MAX_EVENT_JSON: usize = 64 * 1024;

/// Why the inbox did not take a command, or could not say what became of it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// The partition already holds its limit of pending commands: nothing was stored. Retry
    /// later, or raise [`InboxBuilder::limit`] if the owners keep up on average.
    #[error("the inbox of partition {partition} is full ({pending} pending, limit {limit}); nothing stored, retry later")]
    Full {
        /// The machine's partition.
        partition: u32,
        /// Commands pending there when this one was refused.
        pending: u64,
        /// The bound.
        limit: u64,
    },
    /// The key was used before for machine `machine` with another event: a key names one
    /// command. Nothing stored.
    #[error("idempotency key `{key}` was already used for machine `{machine}` with another event; use a new key for a new command")]
    KeyReused {
        /// The machine.
        machine: MachineId,
        /// The key.
        key: IdempotencyKey,
    },
    /// The event could not be written as JSON, or is larger than [`MAX_EVENT_JSON`]: nothing
    /// stored.
    #[error("the event cannot be stored: {0}")]
    InvalidEvent(String),
    /// The database could not be reached, or refused the statement: nothing stored (for a
    /// submit, retry with the same key; it is safe).
    #[error("{0}")]
    Store(Arc<StoreError>),
    /// TLS is required and the server offers none, or its certificate is not trusted:
    /// nothing was sent.
    #[error("TLS refused: {0}")]
    Tls(String),
    /// The table is not set up for a cluster (no fencing), or its layout differs.
    #[error("the inbox of `{table}` cannot be used: {problem}")]
    Layout {
        /// The snapshot table, as `schema.table`.
        table: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The decision was not known within the time waited; the command stays accepted (wait
    /// again, or look it up with [`Inbox::decision`]).
    #[error("no decision yet after {0:?}; the command is accepted and will still be decided")]
    Timeout(Duration),
    /// The command is gone: it was decided and then deleted after the retention window.
    #[error("the command was decided and its decision deleted after the retention window")]
    Forgotten,
}

impl From<StoreError> for InboxError {
    fn from(e: StoreError) -> Self {
        InboxError::Store(Arc::new(e))
    }
}

/// How a command was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Applied: the transition is durable.
    Applied,
    /// Refused by the machine in its state (the detail says why).
    Rejected,
    /// Its deadline passed before the owner took it.
    Expired,
    /// Dropped by the state's `dump` policy, or the kernel's overload policy.
    Dumped,
    /// Handed to the state's `delegate` sink.
    Delegated,
    /// The owner could not decode the event (a node running another build of the event type).
    Undecodable,
    /// Refused by the kernel for another reason: a timer or outbox limit, a quarantined
    /// machine, a machine that cannot be encoded or started (the detail says which).
    Refused,
}

impl Status {
    /// The name stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "applied",
            Status::Rejected => "rejected",
            Status::Expired => "expired",
            Status::Dumped => "dumped",
            Status::Delegated => "delegated",
            Status::Undecodable => "undecodable",
            Status::Refused => "refused",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "applied" => Status::Applied,
            "rejected" => Status::Rejected,
            "expired" => Status::Expired,
            "dumped" => Status::Dumped,
            "delegated" => Status::Delegated,
            "undecodable" => Status::Undecodable,
            "refused" => Status::Refused,
            _ => return None,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command's decision, as the inbox records it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// The command's row: its batch's id times 65,536 plus its place in the batch (the
    /// inbox's submission order).
    pub row: i64,
    /// How it was decided.
    pub status: Status,
    /// For an applied command, the sequence of the snapshot that holds it.
    pub seq: Option<u64>,
    /// For an applied command, the transition, as `From --Event--> To`.
    pub transition: Option<String>,
    /// Why, for a command not applied; for an applied one answered from the journal after a
    /// takeover, says so.
    pub detail: Option<String>,
    /// The node that recorded it.
    pub node: Option<String>,
}

impl Decision {
    /// Whether the command was applied.
    pub fn is_applied(&self) -> bool {
        self.status == Status::Applied
    }
}

/// Options for an [`Inbox`]; from [`Inbox::builder`] or [`InboxBuilder::of`].
#[derive(Clone)]
pub struct InboxBuilder {
    connect: Connector,
    schema: String,
    table: String,
    limit: u64,
    poll: Duration,
}

impl fmt::Debug for InboxBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxBuilder")
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("limit", &self.limit)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl InboxBuilder {
    /// The inbox of `store`'s table, on `store`'s connections' settings.
    pub fn of(store: &PostgresStore) -> InboxBuilder {
        let (schema, table) = store.names();
        InboxBuilder {
            connect: store.connector(),
            schema: schema.to_owned(),
            table: table.to_owned(),
            limit: DEFAULT_INBOX_LIMIT,
            poll: Duration::from_secs(1),
        }
    }

    /// The schema of the snapshot table (default `public`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The snapshot table (default `fsm_snapshots`); the inbox is its name plus `_ibatch`,
    /// `_ikeys` and `_idone`, and the view of one row per command its name plus `_inbox`.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// At most this many pending commands per partition (default [`DEFAULT_INBOX_LIMIT`]);
    /// a submit past it is refused [`InboxError::Full`]. Checked per statement: concurrent
    /// submitters may overshoot it by the size of their batches.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    /// How often a waiting ticket's decision is looked up without a notification (default
    /// 1 s): the longest a lost notification delays an answer.
    pub fn poll(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// Connects, creates the inbox table if missing, and reads the table's partition count.
    /// The snapshot table must exist and be fenced (opened once by a node with ownership).
    pub fn open(self) -> Result<Inbox, InboxError> {
        check_name("schema", &self.schema, 63).map_err(|e| self.layout(e.to_string()))?;
        check_name("table", &self.table, 56).map_err(|e| self.layout(e.to_string()))?;
        if self.limit == 0 {
            return Err(
                self.layout("an inbox limit of 0 refuses everything; use at least 1".into())
            );
        }
        let names = Names::new(&self.schema, &self.table);
        let mut client = (self.connect)().map_err(|e| {
            if super::error::is_tls_failure(&e) {
                InboxError::Tls(super::tls_detail(&e))
            } else {
                unavailable(&e)
            }
        })?;
        let partitions = setup(&mut client, &names).map_err(|e| match e {
            Setup::Db(e) => InboxError::from(classify(&e, Phase::NothingWritten).error),
            Setup::Layout(problem) => self.layout(problem),
        })?;
        let shared = Arc::new(Shared {
            connect: self.connect,
            sql: Statements::text(&names, &self.schema, &self.table),
            names,
            partitions,
            limit: self.limit,
            idle: Mutex::new(vec![]),
            waiters: Waiters::default(),
            notified: AtomicU64::new(0),
            polled: AtomicU64::new(0),
            full: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            poll: self.poll,
            decided_up_to: AtomicI64::new(0),
        });
        Ok(Inbox {
            shared,
            listener: Mutex::new(None),
        })
    }

    fn layout(&self, problem: String) -> InboxError {
        InboxError::Layout {
            table: format!("{}.{}", self.schema, self.table),
            problem,
        }
    }
}

fn unavailable(e: &postgres::Error) -> InboxError {
    InboxError::from(classify(e, Phase::NothingWritten).error)
}

/// The quoted names of the inbox's objects.
#[derive(Debug)]
pub(crate) struct Names {
    /// The view with one row per command, for operators and checkers.
    pub(crate) inbox: String,
    /// One row per submit statement: its commands as arrays.
    batches: String,
    /// One row per command: what idempotency needs.
    keys: String,
    /// One row per batch per recording statement: decisions as arrays.
    outcomes: String,
    pub(crate) owners: String,
    meta: String,
    open_index: String,
    closed_index: String,
    outcomes_index: String,
    lock_key: String,
    /// The channel owners listen on for new commands.
    pub(crate) wake: String,
    /// The channel submitters listen on for decisions.
    pub(crate) decided: String,
    pub(crate) table: String,
}

impl Names {
    fn new(schema: &str, table: &str) -> Names {
        // Channel names are identifiers too (at most 63 bytes): a hash of the table keeps
        // them short and distinct per table.
        let hash = format!("{:016x}", fnv(format!("{schema}.{table}").as_bytes()));
        Names {
            inbox: format!("\"{schema}\".\"{table}_inbox\""),
            batches: format!("\"{schema}\".\"{table}_ibatch\""),
            keys: format!("\"{schema}\".\"{table}_ikeys\""),
            outcomes: format!("\"{schema}\".\"{table}_idone\""),
            owners: format!("\"{schema}\".\"{table}_owners\""),
            meta: format!("\"{schema}\".\"{table}_meta\""),
            open_index: format!("\"{table}_ibo\""),
            closed_index: format!("\"{table}_ibc\""),
            outcomes_index: format!("\"{table}_ido\""),
            lock_key: format!("fsm-persist:{schema}.{table}"),
            wake: format!("fsm_in_{hash}"),
            decided: format!("fsm_out_{hash}"),
            table: format!("{schema}.{table}"),
        }
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

enum Setup {
    Db(postgres::Error),
    Layout(String),
}

impl From<postgres::Error> for Setup {
    fn from(e: postgres::Error) -> Self {
        Setup::Db(e)
    }
}

/// Creates the inbox (under the table's advisory lock) and reads the partition count.
fn setup(client: &mut Client, names: &Names) -> Result<u32, Setup> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))",
        &[&names.lock_key],
    )?;
    let exists: Option<String> = tx
        .query_one("SELECT to_regclass($1::text)::text", &[&names.meta])?
        .get(0);
    if exists.is_none() {
        return Err(Setup::Layout(
            "its snapshot table does not exist yet; open a PostgresStore with ownership on it first".into(),
        ));
    }
    let fencing: Option<String> = tx
        .query_opt(
            &format!("SELECT value FROM {} WHERE key = 'fencing'", names.meta),
            &[],
        )?
        .map(|r| r.get(0));
    let partitions = fencing
        .as_deref()
        .and_then(|f| f.strip_prefix("partitions="))
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| {
            Setup::Layout(format!(
                "it is not fenced (fencing `{}`); a cluster needs a table opened with ownership",
                fencing.as_deref().unwrap_or("missing")
            ))
        })?;
    // The view is created last: where it exists, so does the rest. The tables are scanned
    // without parallel workers: the planner, which cannot see how few open batches there are
    // (the arrays' lengths are estimates), planned the submit's room count with two workers,
    // whose start cost 10 ms of CPU per submit while the scan itself read nothing.
    let kind: Option<i8> = tx
        .query_opt(
            "SELECT relkind::\"char\" FROM pg_class WHERE oid = to_regclass($1::text)",
            &[&names.inbox],
        )?
        .map(|r| r.get(0));
    // The per-partition counts came after the tables: an inbox created before them gets the
    // columns (empty: its rows are counted from their arrays, see the room count).
    let counts_columns = format!(
        "ALTER TABLE {batches} ADD COLUMN IF NOT EXISTS parts integer[],
                               ADD COLUMN IF NOT EXISTS counts integer[];
         ALTER TABLE {outcomes} ADD COLUMN IF NOT EXISTS parts integer[],
                                ADD COLUMN IF NOT EXISTS counts integer[];",
        batches = names.batches,
        outcomes = names.outcomes,
    );
    match kind.map(|k| k as u8) {
        Some(b'v') => {
            // A client that only submits may have no right to create or alter anything
            // here: only an inbox that lacks the counts' columns is altered.
            let present: i64 = tx
                .query_one(
                    "SELECT count(*) FROM pg_attribute
                     WHERE attrelid IN (to_regclass($1::text), to_regclass($2::text))
                       AND attname IN ('parts', 'counts') AND NOT attisdropped",
                    &[&names.batches, &names.outcomes],
                )?
                .get(0);
            if present < 4 {
                if let Err(e) = tx.batch_execute(&counts_columns) {
                    let Some(denied) = e
                        .as_db_error()
                        .filter(|d| *d.code() == postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
                    else {
                        return Err(Setup::Db(e));
                    };
                    return Err(Setup::Layout(format!(
                        "it was created by an earlier build and lacks the per-partition count \
                         columns, which this role cannot add ({}); open it once as the role \
                         that owns it (a node's)",
                        denied.message()
                    )));
                }
            }
            tx.commit()?;
            return Ok(partitions);
        }
        Some(_) => {
            return Err(Setup::Layout(format!(
                "{} is a table of the earlier inbox layout (a row per command); let the owners \
                 decide every pending command (`fsm inbox` shows none pending), drop it, and open \
                 again",
                names.inbox
            )))
        }
        None => {}
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {batches} (
             id bigserial PRIMARY KEY,
             submitted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
             n integer NOT NULL,
             partitions integer[] NOT NULL,
             machines text[] NOT NULL,
             keys text[] NOT NULL,
             events text[] NOT NULL,
             deadlines timestamptz[],
             open boolean NOT NULL DEFAULT true,
             closed_at timestamptz,
             parts integer[],
             counts integer[]
         ) WITH (parallel_workers = 0);
         CREATE INDEX IF NOT EXISTS {open} ON {batches} (id) WHERE open;
         CREATE INDEX IF NOT EXISTS {closed} ON {batches} (closed_at) WHERE NOT open;
         CREATE TABLE IF NOT EXISTS {keys} (
             machine text NOT NULL,
             key text NOT NULL,
             batch bigint NOT NULL,
             slot integer NOT NULL,
             PRIMARY KEY (machine, key)
         ) WITH (parallel_workers = 0);
         CREATE TABLE IF NOT EXISTS {outcomes} (
             id bigserial PRIMARY KEY,
             batch bigint NOT NULL,
             slots integer[] NOT NULL,
             statuses text[] NOT NULL,
             seqs bigint[] NOT NULL,
             transitions text[] NOT NULL,
             details text[] NOT NULL,
             epochs bigint[] NOT NULL,
             decided_by text NOT NULL,
             decided_at timestamptz NOT NULL DEFAULT clock_timestamp(),
             parts integer[],
             counts integer[]
         ) WITH (parallel_workers = 0);
         CREATE INDEX IF NOT EXISTS {outcomes_index} ON {outcomes} (batch);
         {counts_columns}
         CREATE VIEW {inbox} AS
         SELECT b.id * {SLOTS} + s.slot - 1 AS id, s.machine, s.partition, s.key, s.event,
                b.submitted_at, s.deadline, d.status, d.seq, d.transition,
                d.detail, d.decided_at, d.decided_by, d.epoch
         FROM {batches} b
         CROSS JOIN LATERAL unnest(b.machines, b.partitions, b.keys, b.events, b.deadlines)
             WITH ORDINALITY AS s(machine, partition, key, event, deadline, slot)
         LEFT JOIN (
             SELECT DISTINCT ON (o.batch, x.slot) o.batch, x.slot, x.status, x.seq,
                    x.transition, x.detail, o.decided_at, o.decided_by, x.epoch
             FROM {outcomes} o,
                  unnest(o.slots, o.statuses, o.seqs, o.transitions, o.details, o.epochs)
                      AS x(slot, status, seq, transition, detail, epoch)
             ORDER BY o.batch, x.slot, o.id
         ) d ON d.batch = b.id AND d.slot = s.slot;",
        inbox = names.inbox,
        batches = names.batches,
        keys = names.keys,
        outcomes = names.outcomes,
        open = names.open_index,
        closed = names.closed_index,
        outcomes_index = names.outcomes_index,
    ))?;
    tx.commit()?;
    Ok(partitions)
}

/// How many of `parts` each partition has: the partitions in order, and their counts (a batch
/// row's or an outcome row's `parts`/`counts`).
pub(crate) fn per_partition(mut parts: Vec<i32>) -> (Vec<i32>, Vec<i32>) {
    parts.sort_unstable();
    let (mut distinct, mut counts) = (Vec::new(), Vec::<i32>::new());
    for p in parts {
        match counts.last_mut() {
            Some(n) if distinct.last() == Some(&p) => *n += 1,
            _ => {
                distinct.push(p);
                counts.push(1);
            }
        }
    }
    (distinct, counts)
}

/// Commands one submit statement takes at most: a command's row in the inbox is its batch's id
/// times this, plus its slot.
pub(crate) const SLOTS: i64 = 1 << 16;

/// The row of slot `slot` (from 1) of batch `batch`.
pub(crate) fn row_of(batch: i64, slot: i32) -> i64 {
    batch * SLOTS + i64::from(slot) - 1
}

/// Sets an inbox connection's planner up for the inbox's statements, which it prepares once
/// and runs for as long as the connection lives.
///
/// - **No sequential scans** of the inbox's tables. A statement prepared when the tables were
///   small (a node starting on a new or quiet inbox) got a generic plan that scanned the batch
///   and outcome tables whole, and PostgreSQL kept that plan as the tables grew to a retention
///   window's worth of batches: nothing plans it again until the table is analyzed. Every
///   submit, read, record and look-up then read every batch kept. Measured (`auto_explain`,
///   four clients of 256 after a minute of load, 6,100 batches kept): the submit read 2,700
///   buffers per call, a `Seq Scan` that removed 6,124 rows to find 2 open batches, and the
///   inbox's throughput fell from 40k to 17k commands/s within that minute. Every table the
///   statements read has the index they need (the open batches, the batch ids, the
///   outcomes by batch, the keys), so with sequential scans off each is planned on its
///   index whatever the table held when it was prepared. The test
///   `statements_reach_the_inbox_tables_by_index` checks every statement's plan.
/// - **No bitmap scans** either: a bitmap scan of the open batches' index visits the entries
///   of every batch closed since the last vacuum (1,398 for 2 open batches in the same
///   measurement, 350 buffers), because only a plain index scan marks the entries of dead
///   rows so that later scans skip them. With both off, the submit's reads fell from 2,700
///   to 1,050 buffers a call (most of them now its own key rows), the pump's from 990 to 13,
///   the record's from 1,700 to 21 and the submitters' look-up from 1,400 to 10, and the
///   throughput held at 36k-45k commands/s for the whole minute.
/// - **No JIT compilation.** The planner cannot see how few batches are open or how long
///   their arrays are; as the tables grew its cost estimate for a submit passed
///   `jit_above_cost`, and every 256-command submit then spent 60-70 ms compiling
///   (`EXPLAIN ANALYZE` in the bench: JIT 68 ms of a 127 ms statement that reads a handful
///   of rows). These statements are short; compiling never pays.
pub(crate) fn plan_settings(c: &mut Client) -> Result<(), postgres::Error> {
    c.batch_execute(PLAN_SETTINGS)
}

/// What [`plan_settings`] sets.
const PLAN_SETTINGS: &str = "SET jit = off; SET enable_seqscan = off; SET enable_bitmapscan = off";

/// The statements' text.
#[derive(Debug)]
pub(crate) struct Statements {
    submit: String,
    submit_some: String,
    existing: String,
    decisions: String,
    decision: String,
    depth: String,
    pub(crate) fetch: String,
    pub(crate) record: String,
    pub(crate) record_applied: String,
    pub(crate) sweep: String,
    pub(crate) cleanup: String,
    pub(crate) machines: String,
}

impl Statements {
    fn text(n: &Names, schema: &str, table: &str) -> Statements {
        let Names {
            batches,
            keys,
            outcomes,
            owners,
            ..
        } = n;
        Statements {
            // The common case: every partition concerned has room, and every command of the
            // call goes into one batch row (the submitter counts the commands per partition)
            // with a key row each, slot `i` holding the call's command `i`; the statement
            // returns the batch's id. If any partition concerned is full it writes nothing and
            // returns null, and the call is made again by `submit_some`, which stores the
            // commands that fit. The open batches are read once for the room count. Half the
            // cost of `submit_some` for 256 commands on a quiet server (2.0 ms against 3.8 ms:
            // no aggregating, numbering or joining of the commands, no row per command back).
            // The room count is the same as `submit_some`'s; see there.
            submit: format!(
                "WITH open AS MATERIALIZED (
                     SELECT id, parts, counts, CASE WHEN parts IS NULL THEN partitions END AS partitions
                     FROM {batches} WHERE open
                 ),
                 room AS (
                     SELECT c.partition, sum(c.n) AS n FROM (
                         SELECT x.partition, x.n::int8 AS n
                         FROM open b CROSS JOIN LATERAL unnest(b.parts, b.counts) AS x(partition, n)
                         WHERE b.parts IS NOT NULL
                         UNION ALL
                         SELECT p.partition, 1
                         FROM open b CROSS JOIN LATERAL unnest(b.partitions) AS p(partition)
                         WHERE b.parts IS NULL
                         UNION ALL
                         SELECT x.partition, -x.n::int8
                         FROM {outcomes} o CROSS JOIN LATERAL unnest(o.parts, o.counts) AS x(partition, n)
                         WHERE o.batch = ANY(ARRAY(SELECT id FROM open))
                     ) c
                     WHERE c.partition = ANY($7::int4[])
                     GROUP BY c.partition
                 ),
                 batch AS (
                     INSERT INTO {batches} (n, partitions, machines, keys, events, deadlines, parts, counts)
                     SELECT cardinality($1::text[]), $2::int4[], $1::text[], $3::text[], $4::text[],
                            CASE WHEN $5::int8[] IS NULL THEN NULL
                                 ELSE (SELECT array_agg(clock_timestamp() + t * interval '1 millisecond'
                                                        ORDER BY i)
                                       FROM unnest($5::int8[]) WITH ORDINALITY AS x(t, i)) END,
                            $7::int4[], $8::int4[]
                     WHERE NOT EXISTS (SELECT 1 FROM room WHERE n >= $6::int8)
                     RETURNING id
                 ),
                 k AS (
                     INSERT INTO {keys} (machine, key, batch, slot)
                     SELECT u.machine, u.key, b.id, u.slot::int4
                     FROM batch b
                     CROSS JOIN unnest($1::text[], $3::text[]) WITH ORDINALITY AS u(machine, key, slot)
                 )
                 SELECT (SELECT id FROM batch)"
            ),
            // One batch row for the commands of the statement that fit (each partition's
            // room counted once per statement), and a key row per command. The keys' primary
            // key refuses a key already there: the statement then fails whole, having
            // written nothing, and `submit_many` looks the known keys up and submits the rest.
            // Arrays are read whole (`unnest`), never element by element: a batch's arrays
            // are stored compressed, and each subscript (`partitions[slot]`) decompresses the
            // whole array again, a cost that grows with the square of the batch's size (the
            // room count over four open batches of 256 took 1.6 ms that way, 0.35 ms unnested).
            // When every command fits, the batch row takes the parameters' arrays as they
            // came, without aggregating them again. The room is counted from each open
            // batch's commands per partition (`parts`/`counts`, a few elements) less its
            // outcome rows' decisions per partition, so the count does not grow with what
            // waits in the inbox: with 65,536 commands waiting, a 256-command submit took
            // 4.1-5.3 ms, against 47 ms unnesting every waiting command's partition (and
            // 4.8 s by subscript). A row written without counts (by hand, or by an earlier build)
            // is counted from its array; an outcome row without them subtracts nothing (the
            // room is underestimated until its batch closes). Like concurrent submits, two
            // nodes recording one command at once during a takeover make the limit
            // approximate by those commands until the batch closes.
            submit_some: format!(
                "WITH input AS (
                     SELECT * FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::int8[])
                         WITH ORDINALITY AS u(machine, partition, key, event, ttl_ms, ord)
                 ),
                 room AS (
                     SELECT c.partition, sum(c.n) AS n FROM (
                         SELECT x.partition, x.n::int8 AS n
                         FROM {batches} b CROSS JOIN LATERAL unnest(b.parts, b.counts) AS x(partition, n)
                         WHERE b.open
                         UNION ALL
                         SELECT p.partition, 1
                         FROM {batches} b CROSS JOIN LATERAL unnest(b.partitions) AS p(partition)
                         WHERE b.open AND b.parts IS NULL
                         UNION ALL
                         SELECT x.partition, -x.n::int8
                         FROM {outcomes} o CROSS JOIN LATERAL unnest(o.parts, o.counts) AS x(partition, n)
                         WHERE o.batch = ANY(ARRAY(SELECT id FROM {batches} WHERE open))
                     ) c
                     WHERE c.partition IN (SELECT partition FROM input)
                     GROUP BY c.partition
                 ),
                 ok AS (
                     SELECT u.* FROM input u LEFT JOIN room r ON r.partition = u.partition
                     WHERE coalesce(r.n, 0) < $6::int8
                 ),
                 fits AS (
                     SELECT count(*)::int4 AS n, count(ttl_ms) AS ttls FROM ok
                 ),
                 counted AS (
                     SELECT array_agg(partition) AS parts, array_agg(n) AS counts
                     FROM (SELECT partition, count(*)::int4 AS n FROM ok GROUP BY partition) c
                 ),
                 batch AS (
                     INSERT INTO {batches} (n, partitions, machines, keys, events, deadlines, parts, counts)
                     SELECT f.n,
                            CASE WHEN f.n = cardinality($1) THEN $2
                                 ELSE (SELECT array_agg(partition ORDER BY ord) FROM ok) END,
                            CASE WHEN f.n = cardinality($1) THEN $1
                                 ELSE (SELECT array_agg(machine ORDER BY ord) FROM ok) END,
                            CASE WHEN f.n = cardinality($1) THEN $3
                                 ELSE (SELECT array_agg(key ORDER BY ord) FROM ok) END,
                            CASE WHEN f.n = cardinality($1) THEN $4
                                 ELSE (SELECT array_agg(event ORDER BY ord) FROM ok) END,
                            CASE WHEN f.ttls = 0 THEN NULL
                                 ELSE (SELECT array_agg(clock_timestamp() + ttl_ms * interval '1 millisecond'
                                                        ORDER BY ord) FROM ok) END,
                            c.parts, c.counts
                     FROM fits f CROSS JOIN counted c WHERE f.n > 0
                     RETURNING id
                 ),
                 k AS (
                     INSERT INTO {keys} (machine, key, batch, slot)
                     SELECT o.machine, o.key, b.id, (row_number() OVER (ORDER BY o.ord))::int4
                     FROM ok o CROSS JOIN batch b
                     RETURNING machine, key, batch, slot
                 )
                 SELECT u.ord, k.batch * {SLOTS} + k.slot - 1, coalesce(r.n, 0)::int8
                 FROM input u
                 LEFT JOIN k ON k.machine = u.machine AND k.key = u.key
                 LEFT JOIN room r ON r.partition = u.partition
                 ORDER BY u.ord"
            ),
            // The stored keys among `$1`/`$2`, with their events. Each batch concerned is
            // unnested once: a subscript per key (`events[slot]`) would decompress the whole
            // array for each, a cost that grows with the square of the batch's size.
            existing: format!(
                "WITH found AS MATERIALIZED (
                     SELECT k.machine, k.key, k.batch, k.slot
                     FROM {keys} k
                     JOIN unnest($1::text[], $2::text[]) AS u(machine, key)
                       ON k.machine = u.machine AND k.key = u.key
                 ),
                 events AS MATERIALIZED (
                     SELECT b.id, e.event, e.slot
                     FROM {batches} b
                     CROSS JOIN LATERAL unnest(b.events) WITH ORDINALITY AS e(event, slot)
                     WHERE b.id IN (SELECT batch FROM found)
                 )
                 SELECT f.machine, f.key, f.batch * {SLOTS} + f.slot - 1, e.event
                 FROM found f JOIN events e ON e.id = f.batch AND e.slot = f.slot"
            ),
            // Every decision of batches `$1`, in the order recorded; a batch kept with none
            // yet gives one row of nulls.
            decisions: format!(
                "SELECT b.id, o.slots, o.statuses, o.seqs, o.transitions, o.details, o.decided_by
                 FROM {batches} b LEFT JOIN {outcomes} o ON o.batch = b.id
                 WHERE b.id = ANY($1::int8[])
                 ORDER BY o.id"
            ),
            decision: format!(
                "SELECT k.batch * {SLOTS} + k.slot - 1 FROM {keys} k
                 WHERE k.machine = $1::text AND k.key = $2::text"
            ),
            depth: format!(
                "SELECT q.partition, count(*)::int8,
                        extract(epoch FROM clock_timestamp() - min(q.submitted_at))::float8
                 FROM (
                     SELECT p.partition, b.submitted_at
                     FROM {batches} b
                     CROSS JOIN LATERAL unnest(b.partitions) WITH ORDINALITY AS p(partition, slot)
                     WHERE b.open AND NOT EXISTS (
                         SELECT 1 FROM {outcomes} o CROSS JOIN LATERAL unnest(o.slots) AS x(slot)
                         WHERE o.batch = ANY(ARRAY(SELECT id FROM {batches} WHERE open))
                           AND o.batch = b.id AND x.slot = p.slot)
                 ) q
                 GROUP BY q.partition ORDER BY q.partition"
            ),
            // The open batches holding commands of partitions `$1`, whole, with their slots
            // already decided: the pump picks each machine's oldest pending commands.
            // A batch's commands never change once written: those of the batches `$2`,
            // which the pump already holds, are not sent again (a batch stays open over
            // several reads, and a large one was sent whole at every read until it closed).
            fetch: format!(
                "SELECT b.id, k.known,
                        CASE WHEN k.known THEN NULL ELSE b.partitions END,
                        CASE WHEN k.known THEN NULL ELSE b.machines END,
                        CASE WHEN k.known THEN NULL ELSE b.keys END,
                        CASE WHEN k.known THEN NULL ELSE b.events END,
                        (SELECT array_agg(coalesce(x.d <= clock_timestamp(), false) ORDER BY x.i)
                         FROM unnest(b.deadlines) WITH ORDINALITY AS x(d, i)) AS expired,
                        extract(epoch FROM clock_timestamp() - b.submitted_at)::float8 AS waited,
                        (SELECT array_agg(x.slot) FROM {outcomes} o
                         CROSS JOIN LATERAL unnest(o.slots) AS x(slot) WHERE o.batch = b.id) AS decided
                 FROM {batches} b CROSS JOIN LATERAL (SELECT b.id = ANY($2::int8[]) AS known) k
                 WHERE b.open AND (k.known OR coalesce(b.parts, b.partitions) && $1::int4[])
                 ORDER BY b.id"
            ),
            // The common case of `record`: every decision is `applied` (which needs no fence,
            // see there) and none of their slots is decided yet. The recorder sorts the
            // decisions by row and sends them flat with each batch's bounds in the flat
            // arrays (`lo`/`hi`, and `plo`/`phi` for its per-partition counts, which it counts
            // itself): one outcome row per batch is a slice of each array, with nothing to
            // sort or aggregate here. Where a slot is already decided this writes nothing and
            // says so (`false`), and the recorder records with `record`, which skips it. A
            // batch may already hold decisions of other slots: its answers reached the
            // recorder over two wake-ups (one in seven records of `inbox/4x256`, each of
            // which paid this statement and then `record`'s 3.4 ms under load); it closes
            // when its distinct decided slots, earlier and new, cover it. On a quiet server,
            // 1,024 decisions of four batches took 1.39 ms this way against 5.51 ms with
            // `record` (256 of one batch: 0.33 against 1.53 ms).
            record_applied: format!(
                "WITH per AS (
                     SELECT * FROM unnest($1::int8[], $2::int4[], $3::int4[], $4::int4[], $5::int4[])
                         AS p(batch, lo, hi, plo, phi)
                 ),
                 before AS MATERIALIZED (
                     SELECT o.batch, x.slot FROM {outcomes} o CROSS JOIN LATERAL unnest(o.slots) AS x(slot)
                     WHERE o.batch = ANY($1::int8[])
                 ),
                 clear AS (
                     SELECT NOT EXISTS (
                         SELECT 1 FROM before d JOIN per p ON p.batch = d.batch
                         WHERE d.slot = ANY(($6::int4[])[p.lo:p.hi])
                     ) AS ok
                 ),
                 ins AS (
                     INSERT INTO {outcomes} (batch, slots, statuses, seqs, transitions, details, epochs,
                                             decided_by, parts, counts)
                     SELECT p.batch, ($6::int4[])[p.lo:p.hi],
                            array_fill('{applied}'::text, ARRAY[p.hi - p.lo + 1]),
                            ($7::int8[])[p.lo:p.hi], ($8::text[])[p.lo:p.hi], ($9::text[])[p.lo:p.hi],
                            ($10::int8[])[p.lo:p.hi], $11::text,
                            ($12::int4[])[p.plo:p.phi], ($13::int4[])[p.plo:p.phi]
                     FROM per p CROSS JOIN clear c
                     WHERE c.ok
                     RETURNING batch, cardinality(slots) AS n
                 ),
                 closing AS (
                     UPDATE {batches} b SET open = false, closed_at = clock_timestamp()
                     FROM ins i
                     WHERE b.id = ANY(ARRAY(SELECT batch FROM ins)) AND b.id = i.batch AND b.open
                       AND b.n <= i.n + (SELECT count(DISTINCT d.slot) FROM before d WHERE d.batch = i.batch)
                     RETURNING b.id
                 )
                 SELECT (SELECT ok FROM clear), (SELECT coalesce(sum(n), 0) FROM ins)::int8,
                        (SELECT count(*) FROM closing)::int8",
                applied = Status::Applied.as_str(),
            ),
            // An `applied` decision is a fact whoever records it: the kernel's snapshot
            // write that applied the command was itself fenced, and a later owner finds the
            // key in the machine's journal and answers the same. Any other decision was
            // made from the machine as this node holds it, so it is recorded only under the
            // epoch it was made under: the owner rows of those partitions (`$9`) are locked
            // so no takeover commits in between. Applied-only batches lock nothing, and
            // never queue behind the snapshot writes' locks. A slot already decided is
            // skipped; a batch whose every slot is decided is closed. Outcomes are reached
            // through their batches' index (`= ANY(ARRAY(..))`, here and in the submit's room
            // count): written as a join, the planner, which cannot know how few batches are
            // concerned, hashed the whole outcomes table, a cost that grew with the table.
            // An outcome row's arrays are aggregated in one pass over the same rows, so they
            // line up slot by slot; their order is not sorted, and nothing needs it to be.
            record: format!(
                "WITH fence AS MATERIALIZED (
                     SELECT partition, epoch FROM {owners} WHERE partition = ANY($9::int4[]) FOR SHARE
                 ),
                 u AS (
                     SELECT u.*, u.rid / {SLOTS} AS batch, (u.rid % {SLOTS} + 1)::int4 AS slot
                     FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::text[], $5::int8[], $6::text[], $7::text[])
                         AS u(rid, partition, epoch, status, seq, transition, detail)
                 ),
                 before AS (
                     SELECT o.batch, x.slot FROM {outcomes} o CROSS JOIN LATERAL unnest(o.slots) AS x(slot)
                     WHERE o.batch = ANY(ARRAY(SELECT DISTINCT u.batch FROM u))
                 ),
                 fresh AS (
                     SELECT u.* FROM u LEFT JOIN fence f ON f.partition = u.partition AND f.epoch = u.epoch
                     WHERE (u.status = 'applied' OR f.epoch IS NOT NULL)
                       AND NOT EXISTS (SELECT 1 FROM before d WHERE d.batch = u.batch AND d.slot = u.slot)
                 ),
                 per AS (
                     SELECT batch, array_agg(partition) AS parts, array_agg(n) AS counts
                     FROM (SELECT batch, partition, count(*)::int4 AS n FROM fresh GROUP BY batch, partition) c
                     GROUP BY batch
                 ),
                 ins AS (
                     INSERT INTO {outcomes} (batch, slots, statuses, seqs, transitions, details, epochs,
                                             decided_by, parts, counts)
                     SELECT f.batch, f.slots, f.statuses, f.seqs, f.transitions, f.details, f.epochs,
                            $8::text, p.parts, p.counts
                     FROM (SELECT batch, array_agg(slot) AS slots, array_agg(status) AS statuses,
                                  array_agg(seq) AS seqs, array_agg(transition) AS transitions,
                                  array_agg(detail) AS details, array_agg(epoch) AS epochs
                           FROM fresh GROUP BY batch) f
                     JOIN per p ON p.batch = f.batch
                     RETURNING batch, slots, statuses
                 ),
                 closing AS (
                     UPDATE {batches} b SET open = false, closed_at = clock_timestamp()
                     FROM ins i
                     WHERE b.id = ANY(ARRAY(SELECT batch FROM ins)) AND b.id = i.batch AND b.open
                       AND b.n <= cardinality(i.slots) + (
                           SELECT count(DISTINCT x.slot) FROM {outcomes} o
                           CROSS JOIN LATERAL unnest(o.slots) AS x(slot) WHERE o.batch = i.batch)
                     RETURNING b.id
                 )
                 SELECT (SELECT coalesce(sum(cardinality(slots)), 0) FROM ins)::int8,
                        (SELECT count(*) FROM ins CROSS JOIN LATERAL unnest(statuses) AS s(status)
                         WHERE s.status = 'applied')::int8,
                        (SELECT count(*) FROM closing)::int8"
            ),
            // Two nodes recording the last slots of one batch at once each see only their
            // own: neither closes it. This closes such batches (their decisions are all in).
            sweep: format!(
                "UPDATE {batches} b SET open = false, closed_at = clock_timestamp()
                 WHERE b.open AND b.n <= (
                     SELECT count(DISTINCT x.slot) FROM {outcomes} o
                     CROSS JOIN LATERAL unnest(o.slots) AS x(slot) WHERE o.batch = b.id)"
            ),
            // `now()` (not `clock_timestamp()`, which is volatile) lets the closed-at index
            // bound the scan: with nothing expired the statement reads no rows at all. Batches
            // another node is deleting are skipped. One call deletes the oldest expired
            // batches, at most `$2` of them and at most `$3` commands (the first batch
            // whatever its size), and says whether more may be waiting: the pump then calls
            // again on its next turn instead of after `cleanup_every`, so the deletes keep up
            // with any rate (one page per pass deleted at most 100 batches a second per node:
            // an inbox of single-command submits above that rate grew without end).
            cleanup: format!(
                "WITH locked AS (
                     SELECT id, n, machines, keys, closed_at FROM {batches}
                     WHERE NOT open AND closed_at < now() - $1::int8 * interval '1 millisecond'
                     ORDER BY closed_at
                     LIMIT $2::int8
                     FOR UPDATE SKIP LOCKED
                 ),
                 doomed AS (
                     SELECT id, n, machines, keys FROM (
                         SELECT l.*, sum(l.n) OVER (ORDER BY l.closed_at, l.id) AS upto FROM locked l
                     ) w
                     WHERE w.upto <= $3::int8 OR w.upto = w.n
                 ),
                 gone_keys AS (
                     DELETE FROM {keys} k
                     USING (SELECT unnest(d.machines) AS machine, unnest(d.keys) AS key FROM doomed d) x
                     WHERE k.machine = x.machine AND k.key = x.key
                 ),
                 gone_outcomes AS (
                     DELETE FROM {outcomes} o USING doomed d WHERE o.batch = d.id
                 ),
                 gone AS (
                     DELETE FROM {batches} b USING doomed d WHERE b.id = d.id RETURNING d.n
                 )
                 SELECT count(*)::int8, coalesce(sum(n), 0)::int8,
                        count(*) < (SELECT count(*) FROM locked) OR (SELECT count(*) FROM locked) >= $2::int8
                 FROM gone"
            ),
            machines: format!(
                "SELECT id FROM \"{}\".\"{}\" WHERE id > $1::text ORDER BY id LIMIT $2::int8",
                schema, table
            ),
        }
    }
}

/// One connection with its prepared statements.
struct Conn {
    client: Client,
    submit: Statement,
    submit_some: Statement,
    existing: Statement,
    decisions: Statement,
}

/// The waiting tickets, by row.
#[derive(Default)]
struct Waiters {
    map: Mutex<HashMap<i64, Arc<Answer>>>,
}

/// Where a ticket's decision lands.
#[derive(Default)]
struct Answer {
    value: Mutex<Option<Result<Decision, InboxError>>>,
    ready: Condvar,
}

impl Answer {
    fn set(&self, v: Result<Decision, InboxError>) {
        *self.value.lock().recover() = Some(v);
        self.ready.notify_all();
    }
}

struct Shared {
    connect: Connector,
    names: Names,
    sql: Statements,
    partitions: u32,
    limit: u64,
    idle: Mutex<Vec<Conn>>,
    waiters: Waiters,
    notified: AtomicU64,
    polled: AtomicU64,
    full: AtomicU64,
    stop: AtomicBool,
    poll: Duration,
    /// The highest row a decision notification named so far (`i64::MAX` after one that named
    /// no range). A ticket made after the notification of its own decision arrived would
    /// otherwise wait for the next poll: the answers thread raises this before it reads the
    /// waiting tickets, a submitter reads it after adding its tickets, so one of the two
    /// always looks the decision up.
    decided_up_to: AtomicI64,
}

impl Shared {
    fn conn(&self) -> Result<Conn, InboxError> {
        if let Some(c) = self.idle.lock().recover().pop() {
            return Ok(c);
        }
        let mut client = (self.connect)().map_err(|e| unavailable(&e))?;
        plan_settings(&mut client).map_err(|e| unavailable(&e))?;
        let prepare = |c: &mut Client, s: &str| c.prepare(s).map_err(|e| unavailable(&e));
        Ok(Conn {
            submit: prepare(&mut client, &self.sql.submit)?,
            submit_some: prepare(&mut client, &self.sql.submit_some)?,
            existing: prepare(&mut client, &self.sql.existing)?,
            decisions: prepare(&mut client, &self.sql.decisions)?,
            client,
        })
    }

    /// Runs `f` on a pooled connection; a connection that failed is dropped.
    fn with<T>(
        &self,
        phase: Phase,
        f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, InboxError> {
        let mut conn = self.conn()?;
        match f(&mut conn) {
            Ok(v) => {
                self.idle.lock().recover().push(conn);
                Ok(v)
            }
            Err(e) => {
                let failure = classify(&e, phase);
                if !failure.broken {
                    self.idle.lock().recover().push(conn);
                }
                Err(InboxError::from(failure.error))
            }
        }
    }

    /// The decisions of these rows, by row: decided, or [`InboxError::Forgotten`] (its batch
    /// deleted after the retention window); a row still pending is left out. One statement
    /// reads every decision of the rows' batches.
    #[allow(clippy::type_complexity)]
    fn lookup(
        &self,
        rows: &[i64],
    ) -> Result<HashMap<i64, Result<Decision, InboxError>>, InboxError> {
        let mut batches: Vec<i64> = rows.iter().map(|r| r / SLOTS).collect();
        batches.sort_unstable();
        batches.dedup();
        let found = self.with(Phase::NothingWritten, |c| {
            c.client.query(&c.decisions, &[&batches])
        })?;
        let wanted: HashSet<i64> = rows.iter().copied().collect();
        let mut out = HashMap::new();
        let mut kept = HashSet::new();
        // Rows come in the order their decisions were recorded: where two nodes recorded
        // one command at once during a takeover, the first recorded is the answer.
        for r in &found {
            let batch: i64 = r.get(0);
            kept.insert(batch);
            let slots: Option<Vec<Option<i32>>> = r.get(1);
            let Some(slots) = slots else { continue };
            let statuses: Vec<Option<String>> = r.get(2);
            let seqs: Vec<Option<i64>> = r.get(3);
            let transitions: Vec<Option<String>> = r.get(4);
            let details: Vec<Option<String>> = r.get(5);
            let node: Option<String> = r.get(6);
            for (i, slot) in slots.iter().enumerate() {
                let Some(slot) = *slot else { continue };
                let row = row_of(batch, slot);
                if !wanted.contains(&row) || out.contains_key(&row) {
                    continue;
                }
                let status = statuses.get(i).cloned().flatten();
                let Some(status) = status.and_then(|s| Status::parse(&s)) else {
                    continue;
                };
                out.insert(
                    row,
                    Ok(Decision {
                        row,
                        status,
                        seq: seqs.get(i).copied().flatten().map(|s| s as u64),
                        transition: transitions.get(i).cloned().flatten(),
                        detail: details.get(i).cloned().flatten(),
                        node: node.clone(),
                    }),
                );
            }
        }
        for &row in rows {
            if !kept.contains(&(row / SLOTS)) {
                out.insert(row, Err(InboxError::Forgotten));
            }
        }
        Ok(out)
    }

    /// Looks up the decisions of these rows and hands them to their tickets, counting them
    /// in `via` first (so a ticket's waiter that reads the stats sees its own answer counted).
    fn answer(&self, rows: &[i64], via: Option<&AtomicU64>) -> Result<(), InboxError> {
        if rows.is_empty() {
            return Ok(());
        }
        let decided = self.lookup(rows)?;
        if let Some(via) = via {
            via.fetch_add(decided.len() as u64, Ordering::Relaxed);
        }
        let mut map = self.waiters.map.lock().recover();
        for (row, d) in decided {
            if let Some(answer) = map.remove(&row) {
                answer.set(d);
            }
        }
        Ok(())
    }
}

/// A command for the inbox: the machine, the key, the event as JSON, and an optional time
/// to live.
#[derive(Clone, Debug)]
pub struct InboxCommand {
    machine: MachineId,
    key: IdempotencyKey,
    event: String,
    ttl: Option<Duration>,
}

impl InboxCommand {
    /// A command for `machine` under `key`, with `event` written as JSON (the owner decodes
    /// it into its machine's event type).
    pub fn new(
        machine: MachineId,
        key: IdempotencyKey,
        event: &impl Serialize,
    ) -> Result<InboxCommand, InboxError> {
        let json =
            serde_json::to_string(event).map_err(|e| InboxError::InvalidEvent(e.to_string()))?;
        // What serde_json wrote is JSON: only its length is checked, not parsed again.
        InboxCommand::checked(machine, key, json, false)
    }

    /// A command whose event is already JSON (from a client without the event type: the
    /// `fsm` CLI, another language).
    pub fn json(
        machine: MachineId,
        key: IdempotencyKey,
        event: impl Into<String>,
    ) -> Result<InboxCommand, InboxError> {
        InboxCommand::checked(machine, key, event.into(), true)
    }

    /// A command whose event is no longer than [`MAX_EVENT_JSON`] and, if `parse`, parses as
    /// JSON.
    fn checked(
        machine: MachineId,
        key: IdempotencyKey,
        event: String,
        parse: bool,
    ) -> Result<InboxCommand, InboxError> {
        if event.len() > MAX_EVENT_JSON {
            return Err(InboxError::InvalidEvent(format!(
                "{} bytes of JSON; the inbox takes at most {MAX_EVENT_JSON}",
                event.len()
            )));
        }
        if parse {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&event) {
                return Err(InboxError::InvalidEvent(format!("not JSON: {e}")));
            }
        }
        Ok(InboxCommand {
            machine,
            key,
            event,
            ttl: None,
        })
    }

    /// Expires the command (decided [`Status::Expired`], not applied) if its owner has not
    /// taken it within `ttl`, measured by the database's clock.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The machine.
    pub fn machine(&self) -> &MachineId {
        &self.machine
    }

    /// The key.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }
}

/// The cluster's inbox, from any process that reaches the database; see the
/// [module documentation](self).
pub struct Inbox {
    shared: Arc<Shared>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("table", &self.shared.names.table)
            .field("partitions", &self.shared.partitions)
            .field("limit", &self.shared.limit)
            .finish_non_exhaustive()
    }
}

/// Pending commands of one partition.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Depth {
    /// The partition.
    pub partition: u32,
    /// Commands accepted and not yet decided.
    pub pending: u64,
    /// How long the oldest of them has waited.
    pub oldest: Duration,
}

/// What a submitter's inbox saw: how its tickets' answers arrived, and what it refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxStats {
    /// Answers found after a notification.
    pub notified: u64,
    /// Answers found by polling, with no notification: notifications missed.
    pub polled: u64,
    /// Commands this inbox refused [`InboxError::Full`].
    pub refused_full: u64,
}

impl Inbox {
    /// Options for the inbox of table `fsm_snapshots` in schema `public` of the database
    /// `config` connects to, without TLS; see [`Inbox::builder_with`].
    pub fn builder(config: postgres::Config) -> InboxBuilder {
        Inbox::builder_with(move || config.connect(postgres::NoTls))
    }

    /// Options for an inbox over `config` with TLS required, verified as `tls` says (feature
    /// `tls`).
    #[cfg(feature = "tls")]
    pub fn builder_tls(config: postgres::Config, tls: &super::Tls) -> InboxBuilder {
        Inbox::builder_with(tls.connect_fn(config))
    }

    /// Options for an inbox whose connections `connect` opens (to bring TLS).
    pub fn builder_with(
        connect: impl Fn() -> Result<Client, postgres::Error> + Send + Sync + 'static,
    ) -> InboxBuilder {
        InboxBuilder {
            connect: Arc::new(connect),
            schema: "public".into(),
            table: "fsm_snapshots".into(),
            limit: DEFAULT_INBOX_LIMIT,
            poll: Duration::from_secs(1),
        }
    }

    /// The number of partitions of the table.
    pub fn partitions(&self) -> u32 {
        self.shared.partitions
    }

    /// The partition machine `id` belongs to.
    pub fn partition_of(&self, id: &MachineId) -> u32 {
        partition_of(id, self.shared.partitions)
    }

    pub(crate) fn names(&self) -> &Names {
        &self.shared.names
    }

    pub(crate) fn statements(&self) -> &Statements {
        &self.shared.sql
    }

    /// Submits one command; see [`Inbox::submit_many`].
    pub fn submit(&self, command: InboxCommand) -> Result<InboxTicket, InboxError> {
        self.submit_many(vec![command])
            .pop()
            .unwrap_or_else(|| Err(InboxError::InvalidEvent("no command".into())))
    }

    /// Submits commands in one statement (one round trip, one commit) per 65,536 commands:
    /// each accepted gets a ticket, in order. A command whose key was already submitted for its
    /// machine with the same event gets the first submission's ticket; with another event,
    /// [`InboxError::KeyReused`]. Commands of one call for one machine keep their order.
    pub fn submit_many(&self, commands: Vec<InboxCommand>) -> Vec<Result<InboxTicket, InboxError>> {
        commands
            .chunks(SLOTS as usize)
            .flat_map(|chunk| self.submit_chunk(chunk))
            .collect()
    }

    fn submit_chunk(&self, commands: &[InboxCommand]) -> Vec<Result<InboxTicket, InboxError>> {
        let mut out: Vec<Option<Result<InboxTicket, InboxError>>> =
            commands.iter().map(|_| None).collect();
        // Whether a command's ticket is for a row this call wrote.
        let mut fresh = vec![false; commands.len()];
        // A key met earlier in the same call names the same command: answered from the first.
        let mut first: HashMap<(&str, &str), usize> = HashMap::new();
        let mut repeats = vec![];
        let mut todo = vec![];
        for (i, c) in commands.iter().enumerate() {
            match first.entry((c.machine.as_str(), c.key.as_str())) {
                std::collections::hash_map::Entry::Occupied(e) => repeats.push((i, *e.get())),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(i);
                    todo.push(i);
                }
            }
        }
        // Most calls carry only new keys and take one statement. One that meets a key already
        // stored fails whole, having written nothing; the stored keys are looked up (a
        // resubmission, or a key reused) and the rest submitted again. A key that made the
        // statement fail was committed by then, so every round answers at least one command.
        let mut stuck = 0;
        while !todo.is_empty() {
            match self.insert(commands, &todo) {
                Err(e) => {
                    for &i in &todo {
                        out[i] = Some(Err(e.clone()));
                    }
                    todo.clear();
                }
                Ok(Some(rows)) => {
                    for (i, row, pending) in rows {
                        fresh[i] = row.is_some();
                        out[i] = Some(match row {
                            Some(row) => Ok(self.ticket(row)),
                            None => {
                                self.shared.full.fetch_add(1, Ordering::Relaxed);
                                Err(InboxError::Full {
                                    partition: partition_of(
                                        &commands[i].machine,
                                        self.shared.partitions,
                                    ),
                                    pending: pending.max(0) as u64,
                                    limit: self.shared.limit,
                                })
                            }
                        });
                    }
                    todo.clear();
                }
                Ok(None) => {
                    let m: Vec<&str> = todo.iter().map(|&i| commands[i].machine.as_str()).collect();
                    let k: Vec<&str> = todo.iter().map(|&i| commands[i].key.as_str()).collect();
                    let found = self.shared.with(Phase::NothingWritten, |c| {
                        c.client.query(&c.existing, &[&m, &k])
                    });
                    let found: HashMap<(String, String), (i64, String)> = match found {
                        Ok(rows) => rows
                            .iter()
                            .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
                            .collect(),
                        Err(e) => {
                            for &i in &todo {
                                out[i] = Some(Err(e.clone()));
                            }
                            todo.clear();
                            continue;
                        }
                    };
                    let before = todo.len();
                    todo.retain(|&i| {
                        let c = &commands[i];
                        let key = (c.machine.as_str().to_owned(), c.key.as_str().to_owned());
                        let Some((row, event)) = found.get(&key) else {
                            return true;
                        };
                        out[i] = Some(if *event == c.event {
                            Ok(self.ticket(*row))
                        } else {
                            Err(InboxError::KeyReused {
                                machine: c.machine.clone(),
                                key: c.key.clone(),
                            })
                        });
                        false
                    });
                    if todo.len() < before {
                        stuck = 0;
                    } else {
                        // Refused on a key no longer there (deleted after its retention in
                        // between): the next try goes in. Refused again and again, the table
                        // has a unique index this inbox did not make.
                        stuck += 1;
                        if stuck >= 3 {
                            let e = InboxError::Layout {
                                table: self.shared.names.table.clone(),
                                problem: "a unique index other than the keys' refused the \
                                          commands; nothing stored"
                                    .into(),
                            };
                            for &i in &todo {
                                out[i] = Some(Err(e.clone()));
                            }
                            todo.clear();
                        }
                    }
                }
            }
        }
        for (i, j) in repeats {
            let (c, f) = (&commands[i], &commands[j]);
            out[i] = Some(if c.event != f.event {
                Err(InboxError::KeyReused {
                    machine: c.machine.clone(),
                    key: c.key.clone(),
                })
            } else {
                match &out[j] {
                    Some(Ok(t)) => Ok(self.ticket(t.row)),
                    Some(Err(e)) => Err(e.clone()),
                    None => Err(InboxError::InvalidEvent("no answer".into())),
                }
            });
        }
        // A resubmission's decision may be long recorded, and a new command's may have been
        // notified before its ticket was made: look those up now rather than at the next
        // poll. An error leaves them to the answers thread.
        let up_to = self.shared.decided_up_to.load(Ordering::SeqCst);
        let check: Vec<i64> = out
            .iter()
            .zip(&fresh)
            .filter_map(|(o, &fresh)| match o {
                Some(Ok(t)) if !fresh || t.row <= up_to => Some(t.row),
                _ => None,
            })
            .collect();
        let _ = self.shared.answer(&check, Some(&self.shared.notified));
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(InboxError::InvalidEvent("no answer".into()))))
            .collect()
    }

    /// Inserts the commands `todo` of `commands`: `None` if a key was already stored (nothing
    /// written); else for each, its row, or none and its partition's pending count where the
    /// partition was full. One statement where every partition has room (`submit`), else a
    /// second that stores those that fit (`submit_some`).
    #[allow(clippy::type_complexity)]
    fn insert(
        &self,
        commands: &[InboxCommand],
        todo: &[usize],
    ) -> Result<Option<Vec<(usize, Option<i64>, i64)>>, InboxError> {
        let machines: Vec<&str> = todo.iter().map(|&i| commands[i].machine.as_str()).collect();
        let parts: Vec<i32> = todo
            .iter()
            .map(|&i| partition_of(&commands[i].machine, self.shared.partitions) as i32)
            .collect();
        let keys: Vec<&str> = todo.iter().map(|&i| commands[i].key.as_str()).collect();
        let events: Vec<&str> = todo.iter().map(|&i| commands[i].event.as_str()).collect();
        let ttls: Vec<Option<i64>> = todo
            .iter()
            .map(|&i| {
                commands[i]
                    .ttl
                    .map(|t| t.as_millis().min(i64::MAX as u128) as i64)
            })
            .collect();
        let any_ttl = ttls.iter().any(Option::is_some);
        // The commands per partition, for the batch row's counts.
        let (count_parts, counts) = per_partition(parts.clone());
        let limit = self.shared.limit.min(i64::MAX as u64) as i64;
        let channel = self.shared.names.wake.as_str();
        // An insert whose commit is lost may have happened: resubmitting with the same key
        // is safe, so the error says so rather than "unknown".
        let rows = self.shared.with(Phase::NothingWritten, |c| {
            let unique = |e: postgres::Error| match e.code() {
                Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => Ok(None),
                _ => Err(e),
            };
            // Every partition with room: one batch of them all, slot `j + 1` for `todo[j]`.
            let ttl_param: Option<&Vec<Option<i64>>> = any_ttl.then_some(&ttls);
            let params: [&(dyn postgres::types::ToSql + Sync); 8] = [
                &machines,
                &parts,
                &keys,
                &events,
                &ttl_param,
                &limit,
                &count_parts,
                &counts,
            ];
            let whole = match c.client.query_one(&c.submit, &params) {
                Ok(row) => row.get::<_, Option<i64>>(0),
                Err(e) => return unique(e),
            };
            let rows: Vec<(i64, Option<i64>, i64)> = match whole {
                Some(batch) => (1..=todo.len() as i32)
                    .map(|slot| (i64::from(slot), Some(row_of(batch, slot)), 0))
                    .collect(),
                None => {
                    // A partition is full: store those that fit.
                    let params: [&(dyn postgres::types::ToSql + Sync); 6] =
                        [&machines, &parts, &keys, &events, &ttls, &limit];
                    let rows = match c.client.query(&c.submit_some, &params) {
                        Ok(rows) => rows,
                        Err(e) => return unique(e),
                    };
                    rows.iter()
                        .map(|r| (r.get(0), r.get(1), r.get(2)))
                        .collect()
                }
            };
            if rows.iter().any(|r| r.1.is_some()) {
                // Accepted already: a notification that does not go out only delays.
                let _ = notify(&mut c.client, channel, "");
            }
            Ok(Some(rows))
        })?;
        Ok(rows.map(|rows| {
            rows.into_iter()
                .map(|(ord, row, pending)| (todo[(ord - 1) as usize], row, pending))
                .collect()
        }))
    }

    fn ticket(&self, row: i64) -> InboxTicket {
        self.ensure_listener();
        let answer = {
            let mut map = self.shared.waiters.map.lock().recover();
            map.entry(row).or_default().clone()
        };
        InboxTicket {
            row,
            answer,
            shared: self.shared.clone(),
        }
    }

    /// The decision of the command submitted for `machine` under `key`: `Ok(None)` while it
    /// is pending, [`InboxError::Forgotten`] if no such command is kept.
    pub fn decision(
        &self,
        machine: &MachineId,
        key: &IdempotencyKey,
    ) -> Result<Option<Decision>, InboxError> {
        let text = &self.shared.sql.decision;
        let rows = self.shared.with(Phase::NothingWritten, |c| {
            c.client
                .query(text.as_str(), &[&machine.as_str(), &key.as_str()])
        })?;
        let Some(row) = rows.first().map(|r| r.get::<_, i64>(0)) else {
            return Err(InboxError::Forgotten);
        };
        self.shared.lookup(&[row])?.remove(&row).transpose()
    }

    /// Pending commands per partition (those with any), with the age of the oldest: the
    /// inbox's depth and apply lag, for dashboards and alerts.
    pub fn depth(&self) -> Result<Vec<Depth>, InboxError> {
        let text = &self.shared.sql.depth;
        let rows = self.shared.with(Phase::NothingWritten, |c| {
            c.client.query(text.as_str(), &[])
        })?;
        Ok(rows
            .iter()
            .map(|r| {
                let p: i32 = r.get(0);
                let n: i64 = r.get(1);
                let age: f64 = r.get(2);
                Depth {
                    partition: p as u32,
                    pending: n as u64,
                    oldest: Duration::from_secs_f64(age.max(0.0)),
                }
            })
            .collect())
    }

    /// How this inbox's tickets were answered.
    pub fn stats(&self) -> InboxStats {
        InboxStats {
            notified: self.shared.notified.load(Ordering::Relaxed),
            polled: self.shared.polled.load(Ordering::Relaxed),
            refused_full: self.shared.full.load(Ordering::Relaxed),
        }
    }

    /// Starts the thread that listens for decisions, once.
    fn ensure_listener(&self) {
        let mut slot = self.listener.lock().recover();
        if slot.is_some() {
            return;
        }
        let shared = self.shared.clone();
        *slot = std::thread::Builder::new()
            .name("fsm-inbox-answers".into())
            .spawn(move || listen(&shared))
            .ok();
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(h) = self.listener.lock().recover().take() {
            let _ = h.join();
        }
    }
}

/// The answers thread: waits for a decision notification, or the poll interval, and looks
/// up every waiting ticket's row in one query.
fn listen(shared: &Shared) {
    let mut listening: Option<Client> = None;
    // Short slices, so a dropped inbox stops promptly.
    let slice = shared.poll.min(Duration::from_millis(200));
    let mut last_poll = Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        if listening.is_none() {
            listening = (shared.connect)().ok().and_then(|mut c| {
                c.batch_execute(&format!("LISTEN \"{}\"", shared.names.decided))
                    .ok()
                    .map(|()| c)
            });
            if listening.is_none() {
                std::thread::sleep(slice);
            }
        }
        let mut woken = None;
        if let Some(c) = &mut listening {
            match decided_ranges(c, slice) {
                Ok(w) => woken = w,
                Err(_) => listening = None,
            }
        }
        let due = last_poll.elapsed() >= shared.poll;
        if woken.is_none() && !due {
            continue;
        }
        if due {
            // A poll looks up every waiting ticket: a lost notification only delays.
            last_poll = Instant::now();
            woken = None;
        }
        match &woken {
            Some(Some(ranges)) => {
                let hi = ranges.iter().map(|&(_, hi)| hi).max().unwrap_or(0);
                shared.decided_up_to.fetch_max(hi, Ordering::SeqCst);
            }
            Some(None) => shared.decided_up_to.store(i64::MAX, Ordering::SeqCst),
            None => {}
        }
        let rows: Vec<i64> = {
            let map = shared.waiters.map.lock().recover();
            match &woken {
                Some(Some(ranges)) => map
                    .keys()
                    .copied()
                    .filter(|row| ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(row)))
                    .collect(),
                _ => map.keys().copied().collect(),
            }
        };
        let via = if woken.is_some() {
            &shared.notified
        } else {
            &shared.polled
        };
        // An error leaves the tickets waiting: the next notification or poll tries again.
        let _ = shared.answer(&rows, Some(via));
    }
}

/// Sends a notification in a transaction of its own that does not wait for the disk. Inside
/// a writing transaction a `NOTIFY` holds the server's notification lock until that
/// transaction's commit is flushed, so every submit and record would commit one at a time. A
/// notification lost in a crash only delays: owners and submitters poll.
pub(crate) fn notify(c: &mut Client, channel: &str, payload: &str) -> Result<(), postgres::Error> {
    // Both are ours: a channel name of `[a-z0-9_]` and a payload of digits and `-`.
    debug_assert!(channel
        .bytes()
        .chain(payload.bytes())
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    c.batch_execute(&format!(
        "BEGIN; SET LOCAL synchronous_commit = off; SELECT pg_notify('{channel}', '{payload}'); COMMIT"
    ))
}

/// Waits up to `slice` for decision notifications on `c`, draining those that came with
/// the first: `None` if none came; else the ranges of rows decided, or `Some(None)` if a
/// payload was not a range (look up every waiting ticket).
#[allow(clippy::type_complexity)]
fn decided_ranges(
    c: &mut Client,
    slice: Duration,
) -> Result<Option<Option<Vec<(i64, i64)>>>, postgres::Error> {
    let Some(first) = c.notifications().timeout_iter(slice).next()? else {
        return Ok(None);
    };
    let mut ranges = Some(Vec::new());
    let mut note = |payload: &str| {
        let range = payload
            .split_once('-')
            .and_then(|(lo, hi)| Some((lo.parse::<i64>().ok()?, hi.parse::<i64>().ok()?)));
        match (range, ranges.as_mut()) {
            (Some(r), Some(all)) => all.push(r),
            _ => ranges = None,
        }
    };
    note(first.payload());
    let mut n = c.notifications();
    let mut it = n.iter();
    while let Some(more) = it.next()? {
        note(more.payload());
    }
    Ok(Some(ranges))
}

/// Waits up to `slice` for a notification on `c`; drains any others that arrived with it.
pub(crate) fn notified(c: &mut Client, slice: Duration) -> Result<bool, postgres::Error> {
    let got = c.notifications().timeout_iter(slice).next()?.is_some();
    if got {
        let mut n = c.notifications();
        let mut it = n.iter();
        while it.next()?.is_some() {}
    }
    Ok(got)
}

/// A submitted command's claim on its decision; see [`InboxTicket::wait`].
#[must_use = "a ticket does nothing unless its decision is read"]
pub struct InboxTicket {
    row: i64,
    answer: Arc<Answer>,
    shared: Arc<Shared>,
}

impl fmt::Debug for InboxTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxTicket")
            .field("row", &self.row)
            .finish()
    }
}

impl InboxTicket {
    /// The command's row in the inbox (its place in submission order): see
    /// [`Decision::row`].
    pub fn row(&self) -> i64 {
        self.row
    }

    /// Waits at most `timeout` for the decision. [`InboxError::Timeout`] leaves the command
    /// accepted: wait again. The decision arrives on a notification, or by polling if that
    /// was lost, also when the machine's owner changed in between. The [`Inbox`] that gave
    /// the ticket listens for it; once that inbox is dropped, the ticket looks its decision
    /// up itself, once per poll interval.
    pub fn wait(&self, timeout: Duration) -> Result<Decision, InboxError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = {
                let value = self.answer.value.lock().recover();
                if let Some(v) = &*value {
                    return v.clone();
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(InboxError::Timeout(timeout));
                }
                if !self.shared.stop.load(Ordering::Acquire) {
                    // The inbox's answers thread sets the value; it is looked at again at
                    // least once per poll, in case the inbox is dropped meanwhile.
                    drop(
                        self.answer
                            .ready
                            .wait_timeout(value, left.min(self.shared.poll)),
                    );
                    continue;
                }
                left
            };
            // Nobody listens for it any more: look it up (a failed look-up is tried again
            // at the next poll, as the answers thread would).
            if let Ok(Some(d)) = self.check() {
                return Ok(d);
            }
            std::thread::sleep(left.min(self.shared.poll));
        }
    }

    /// The decision if it is known now (looked up in the database).
    pub fn check(&self) -> Result<Option<Decision>, InboxError> {
        if let Some(v) = &*self.answer.value.lock().recover() {
            return v.clone().map(Some);
        }
        self.shared.answer(&[self.row], None)?;
        self.answer.value.lock().recover().clone().transpose()
    }
}

#[cfg(all(test, feature = "postgres-server"))]
mod tests {
    use super::*;
    use crate::postgres::{Claim, Ownership, TestServer};

    impl Statements {
        fn all(&self) -> [(&'static str, &str); 12] {
            [
                ("submit", &self.submit),
                ("submit_some", &self.submit_some),
                ("existing", &self.existing),
                ("decisions", &self.decisions),
                ("decision", &self.decision),
                ("depth", &self.depth),
                ("fetch", &self.fetch),
                ("record", &self.record),
                ("record_applied", &self.record_applied),
                ("sweep", &self.sweep),
                ("cleanup", &self.cleanup),
                ("machines", &self.machines),
            ]
        }
    }

    /// The shared test server and a new, empty inbox in `schema` (its snapshot table set up
    /// for a cluster of 4 partitions); `None` where PostgreSQL is not installed (said loudly).
    fn new_inbox(schema: &str) -> Option<(&'static TestServer, Inbox)> {
        let server = TestServer::shared()?;
        let store = PostgresStore::builder(server.config())
            .schema(schema)
            .ownership(Ownership::new("a").partitions(4).claim(Claim::Free))
            .open()
            .unwrap();
        Some((server, InboxBuilder::of(&store).open().unwrap()))
    }

    /// The generic plan of `text`, as `EXPLAIN` prints it, on `c`'s settings.
    fn generic_plan(c: &mut Client, name: &str, text: &str) -> String {
        let params = (1..100)
            .take_while(|n| text.contains(&format!("${n}")))
            .count();
        c.batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE s_{name} AS {text}"
        ))
        .unwrap_or_else(|e| panic!("preparing {name}: {e:?}"));
        let args = match params {
            0 => String::new(),
            n => format!("({})", vec!["NULL"; n].join(", ")),
        };
        let plan = c
            .simple_query(&format!("EXPLAIN EXECUTE s_{name}{args}"))
            .unwrap_or_else(|e| panic!("explaining {name}: {e:?}"))
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        c.batch_execute(&format!("DEALLOCATE s_{name}")).unwrap();
        plan
    }

    /// The lines of `plan` that read a whole inbox table, or reach it through a bitmap (which
    /// cannot mark the index entries of closed batches dead, so they pile up until vacuum).
    fn whole_table_reads(plan: &str) -> Vec<String> {
        plan.lines()
            .filter(|l| {
                ["_ibatch", "_ikeys", "_idone"]
                    .iter()
                    .any(|t| l.contains(t))
                    && (l.contains("Seq Scan") || l.contains("Bitmap Heap Scan"))
            })
            .map(|l| l.trim().to_owned())
            .collect()
    }

    /// Records `slots` (from 1) of `batch` as applied with `record_applied`, as the node's
    /// recorder does: whether it wrote (`clear`), and the batches it closed.
    fn record_applied(
        c: &mut Client,
        sql: &Statements,
        batch: i64,
        slots: &[i32],
        partitions: &[i32],
    ) -> (bool, i64, i64) {
        let parts: Vec<i32> = slots.iter().map(|s| partitions[*s as usize - 1]).collect();
        let (parts, counts) = per_partition(parts);
        let n = slots.len();
        let seqs: Vec<i64> = slots.iter().map(|s| i64::from(*s) + 100).collect();
        let transitions: Vec<&str> = vec!["A --E--> B"; n];
        let details: Vec<Option<&str>> = vec![None; n];
        let epochs: Vec<i64> = vec![1; n];
        let row = c
            .query_one(
                sql.record_applied.as_str(),
                &[
                    &vec![batch],
                    &vec![1_i32],
                    &vec![n as i32],
                    &vec![1_i32],
                    &vec![parts.len() as i32],
                    &slots.to_vec(),
                    &seqs,
                    &transitions,
                    &details,
                    &epochs,
                    &"a",
                    &parts,
                    &counts,
                ],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    /// A batch whose applied decisions are recorded in two parts (its answers reached the
    /// recorder over two wake-ups) stays on the lean statement: the second part is
    /// recorded and closes the batch; a part that repeats a decided slot writes nothing,
    /// so no slot is ever decided twice.
    #[test]
    fn a_batch_recorded_in_parts_is_recorded_once_per_slot_and_closes_when_all_are_decided() {
        let Some((server, inbox)) = new_inbox("parts") else {
            return;
        };
        let ids: Vec<MachineId> = (0..4)
            .map(|i| MachineId::new(format!("m-{i}")).unwrap())
            .collect();
        let commands = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let key = IdempotencyKey::new(format!("k-{i}")).unwrap();
                InboxCommand::json(id.clone(), key, format!("{{\"E\":{i}}}")).unwrap()
            })
            .collect();
        let tickets: Vec<InboxTicket> = inbox
            .submit_many(commands)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let batch = tickets[0].row() / SLOTS;
        let partitions: Vec<i32> = ids.iter().map(|id| inbox.partition_of(id) as i32).collect();
        let sql = &inbox.shared.sql;
        let names = &inbox.shared.names;
        let mut c = server.config().connect(postgres::NoTls).unwrap();
        plan_settings(&mut c).unwrap();
        let open = |c: &mut Client| -> bool {
            c.query_one(
                &format!("SELECT open FROM {} WHERE id = $1", names.batches),
                &[&batch],
            )
            .unwrap()
            .get(0)
        };

        assert_eq!(
            record_applied(&mut c, sql, batch, &[1, 2], &partitions),
            (true, 2, 0)
        );
        assert!(open(&mut c), "half the batch is decided: it stays open");
        assert_eq!(
            record_applied(&mut c, sql, batch, &[2, 3], &partitions),
            (false, 0, 0),
            "slot 2 is decided: nothing is written and the general statement takes over"
        );
        assert_eq!(
            record_applied(&mut c, sql, batch, &[3, 4], &partitions),
            (true, 2, 1)
        );
        assert!(!open(&mut c), "every slot is decided: the batch is closed");

        let decided: Vec<(i32, i64)> = c
            .query(
                &format!(
                    "SELECT x.slot, count(*) FROM {} o CROSS JOIN LATERAL unnest(o.slots) AS x(slot)
                     WHERE o.batch = $1 GROUP BY x.slot ORDER BY x.slot",
                    names.outcomes
                ),
                &[&batch],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(decided, vec![(1, 1), (2, 1), (3, 1), (4, 1)]);
        for (i, t) in tickets.iter().enumerate() {
            let d = t.check().unwrap().expect("decided");
            assert_eq!((d.status, d.seq), (Status::Applied, Some(i as u64 + 101)));
        }
    }

    /// The cleanup deletes a page at a time, oldest first, each batch whole with its keys and
    /// decisions, and says whether more may be waiting until it has deleted everything
    /// expired; what is not expired stays.
    #[test]
    fn cleanup_deletes_a_page_at_a_time_and_says_when_more_is_waiting() {
        let Some((server, inbox)) = new_inbox("pages") else {
            return;
        };
        let names = &inbox.shared.names;
        let mut c = server.config().connect(postgres::NoTls).unwrap();
        plan_settings(&mut c).unwrap();
        // Batches of `n` commands each, closed `ago` ago, with their key and outcome rows.
        let closed = |c: &mut Client, batches: i32, n: i32, ago: &str| {
            c.execute(
                &format!(
                    "WITH b AS (
                         INSERT INTO {batches} (n, partitions, machines, keys, events, open, closed_at)
                         SELECT $2::int4, array_fill(0, ARRAY[$2::int4]),
                                ARRAY(SELECT 'm-' || $3::text || g || '-' || s FROM generate_series(1, $2::int4) s),
                                ARRAY(SELECT 'k-' || $3::text || g || '-' || s FROM generate_series(1, $2::int4) s),
                                array_fill('{{}}'::text, ARRAY[$2::int4]), false, now() - $3::text::interval
                         FROM generate_series(1, $1::int4) g
                         RETURNING id, n, machines, keys
                     ),
                     k AS (
                         INSERT INTO {keys} (machine, key, batch, slot)
                         SELECT x.machine, x.key, b.id, x.slot::int4 FROM b
                         CROSS JOIN LATERAL unnest(b.machines, b.keys) WITH ORDINALITY AS x(machine, key, slot)
                     )
                     INSERT INTO {outcomes} (batch, slots, statuses, seqs, transitions, details, epochs, decided_by)
                     SELECT id, ARRAY(SELECT generate_series(1, n)), array_fill('applied'::text, ARRAY[n]),
                            array_fill(1::int8, ARRAY[n]), array_fill('t'::text, ARRAY[n]),
                            array_fill(NULL::text, ARRAY[n]), array_fill(1::int8, ARRAY[n]), 'x'
                     FROM b",
                    batches = names.batches,
                    keys = names.keys,
                    outcomes = names.outcomes
                ),
                &[&batches, &n, &ago],
            )
            .unwrap();
        };
        closed(&mut c, 3, 6, "3 hours");
        closed(&mut c, 2_500, 1, "2 hours");
        closed(&mut c, 7, 1, "1 minute");
        let half_an_hour = 30 * 60 * 1000_i64;
        let cleanup = |c: &mut Client, batches: i64, commands: i64| -> (i64, i64, bool) {
            let row = c
                .query_one(
                    inbox.shared.sql.cleanup.as_str(),
                    &[&half_an_hour, &batches, &commands],
                )
                .unwrap();
            (row.get(0), row.get(1), row.get(2))
        };
        // Half an hour's retention: the three batches of six commands, then the 2,500 of
        // one, are expired; the seven closed a minute ago are not. A page of at most 8
        // commands takes one batch of six, oldest first; a batch larger than the page is
        // taken alone, whole.
        assert_eq!(cleanup(&mut c, 1000, 8), (1, 6, true));
        assert_eq!(cleanup(&mut c, 1000, 4), (1, 6, true));
        // Pages of 1,000 batches: more may wait while a page is full.
        assert_eq!(cleanup(&mut c, 1000, 10_000), (1000, 1005, true));
        assert_eq!(cleanup(&mut c, 1000, 10_000), (1000, 1000, true));
        assert_eq!(cleanup(&mut c, 1000, 10_000), (501, 501, false));
        assert_eq!(cleanup(&mut c, 1000, 10_000), (0, 0, false));
        for (table, left) in [
            (&names.batches, 7_i64),
            (&names.keys, 7),
            (&names.outcomes, 7),
        ] {
            let n: i64 = c
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .unwrap()
                .get(0);
            assert_eq!(
                n, left,
                "{table}: only the unexpired batches' rows are left"
            );
        }
    }

    /// Every statement the inbox and the node prepare reaches the inbox's tables by index,
    /// also when planned while the tables are empty (a node starting on a new inbox keeps
    /// the plans it prepares then for as long as its connections live). Without
    /// [`plan_settings`] the same statements scan the tables whole: checked first, so this
    /// test cannot pass on plans that never had the choice.
    #[test]
    fn statements_reach_the_inbox_tables_by_index() {
        let Some((server, inbox)) = new_inbox("plans") else {
            return;
        };
        let sql = &inbox.shared.sql;

        let mut plain = server.config().connect(postgres::NoTls).unwrap();
        let scanned: Vec<String> = sql
            .all()
            .iter()
            .flat_map(|(name, text)| whole_table_reads(&generic_plan(&mut plain, name, text)))
            .collect();
        assert!(
            !scanned.is_empty(),
            "on an empty inbox the default planner should scan its tables whole (the reason for plan_settings); it did not, so this test proves nothing"
        );

        let mut set = server.config().connect(postgres::NoTls).unwrap();
        plan_settings(&mut set).unwrap();
        for (name, text) in sql.all() {
            let plan = generic_plan(&mut set, name, text);
            let whole = whole_table_reads(&plan);
            assert!(
                whole.is_empty(),
                "statement `{name}` reads an inbox table whole: {whole:?}\n{plan}"
            );
        }
    }
}
