//! A cluster node (feature `cluster`): a kernel over a fenced [`PostgresStore`], fed by the
//! cluster's [`Inbox`] for the partitions it owns.
//!
//! The node's pump is a pipeline of three threads. A listener turns the inbox's
//! notifications into wake-ups (the reader also polls, so a lost one only delays). The reader
//! reads the pending commands of the partitions the store holds (one per machine at a time,
//! oldest first) and hands them to the kernel in one batch. A recorder collects the kernel's
//! answers as they come and records each decision in its row, several in one statement;
//! a decision other than `applied` only under the epoch it was made under. Reading the next
//! batch overlaps applying and recording the last, and a command its state defers holds up
//! only its own machine. When the store takes a partition over, the node first loads its
//! machines, so their timers fire here and the effects they owe are run again under the same
//! effect ids.
//!
//! ```no_run
//! use std::sync::Arc;
//! use fsm_core::kernel::{IdempotencyKey, Kernel};
//! use fsm_core::store::MachineId;
//! use fsm_persist::postgres::{InboxCommand, NodeBuilder, Ownership, PostgresStore};
//! # use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
//! # #[fsm(event = Cmd)]
//! # enum Lamp { #[fsm(initial, on(Toggle => Lamp))] Lamp { on: bool } }
//! # #[derive(Event, Debug, Clone, Serialize, Deserialize)]
//! # enum Cmd { Toggle }
//! # impl Handler<cmd::Toggle, lamp::Lamp> for lamp::Lamp {
//! #     fn handle(s: lamp::LampRef<'_>, _: cmd::Toggle, _: &mut Effects<()>) -> Result<lamp::Lamp, Refusal> {
//! #         Ok(lamp::Lamp { on: !*s.on })
//! #     }
//! # }
//!
//! let store = Arc::new(
//!     PostgresStore::builder("host=/run/postgresql user=fsm dbname=fsm".parse()?)
//!         .ownership(Ownership::new("node-a"))
//!         .open()?,
//! );
//! let kernel = Kernel::builder_shared(store.clone(), |_| Lamp::Lamp { on: false })
//!     .idempotency_window(8)
//!     .start()?;
//! let node = NodeBuilder::new().start(kernel, store)?;
//! let id = MachineId::new("lamp-1")?;
//! let ticket = node.submit(InboxCommand::new(id, IdempotencyKey::new("req-1")?, &Cmd::Toggle)?)?;
//! let decision = ticket.wait(std::time::Duration::from_secs(5))?;
//! println!("{} as {:?} by {:?}", decision.status, decision.transition, decision.node);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Wake as Wake2, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fsm_core::kernel::{
    Answer, CommandError, Durable, IdempotencyKey, Kernel, Request, Shutdown, ShutdownReport,
    SubmitError,
};
use fsm_core::queue::Ticket;
use fsm_core::store::MachineId;
use postgres::{Client, Statement};
use serde::de::DeserializeOwned;

use super::inbox::{
    per_partition, plan_settings, row_of, Inbox, InboxBuilder, InboxCommand, InboxError,
    InboxTicket, Status, SLOTS,
};
use super::PostgresStore;
use crate::sync::Recover;

/// How long the recorder waits for a next answer while the kernel still holds commands it
/// sent: the gap between two answers of one write is microseconds, so this ends a burst.
const BURST: Duration = Duration::from_micros(200);
/// The longest the recorder gathers answers before recording what it has.
const BURST_MAX: Duration = Duration::from_millis(2);

/// Expired batches one cleanup statement deletes at most, and commands (the first batch
/// whatever its size): a page short enough not to hold up the pump's reads for long.
const CLEANUP_BATCHES: i64 = 1000;
const CLEANUP_COMMANDS: i64 = 10_000;

/// Options for a [`Node`]; from [`NodeBuilder::new`].
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    batch: usize,
    per_machine: usize,
    poll: Duration,
    retention: Duration,
    cleanup_every: Duration,
    limit: u64,
}

impl NodeBuilder {
    /// At most this many commands in flight from the inbox at once (default 1024): read and
    /// not yet recorded. One read takes at most the room left.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// How many of one machine's inbox commands may be in flight at once (default 1). With 1,
    /// a command a state defers waits for an event that only a later command brings, which
    /// is never read: give machines whose states `defer` at least 2. Above 1 a command is
    /// still applied at most once (the journal must hold this many keys:
    /// `idempotency_window` at least `n`), but after a crash a command the machine refused
    /// may be decided again in a later state, so a refusal is no longer final across a crash.
    pub fn per_machine(mut self, n: usize) -> Self {
        self.per_machine = n.max(1);
        self
    }

    /// How often the pump and the node's tickets look for work and answers without a
    /// notification (default 1 s): the longest a lost notification delays.
    pub fn poll(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// How long decisions are kept (default one day): the cluster's idempotency window. A
    /// key resubmitted after it is a new command (the machine's own journal still answers
    /// it if it holds the key).
    pub fn retention(mut self, keep: Duration) -> Self {
        self.retention = keep;
        self
    }

    /// How often expired decisions are deleted (default every 10 s; a pass that finds more
    /// than a page of 1,000 batches or 10,000 commands goes on at the pump's next turn until
    /// it has deleted them all).
    pub fn cleanup_every(mut self, every: Duration) -> Self {
        self.cleanup_every = every;
        self
    }

    /// The inbox's bound per partition, for this node's submits (default
    /// [`DEFAULT_INBOX_LIMIT`](super::DEFAULT_INBOX_LIMIT)).
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    /// Opens the inbox on `store`'s table and starts the pump. `store` must have ownership
    /// (the partitions it holds are the ones this node serves) and be the store `kernel`
    /// writes to.
    pub fn start<M>(
        self,
        kernel: Kernel<M>,
        store: Arc<PostgresStore>,
    ) -> Result<Node<M>, InboxError>
    where
        M: Durable,
        M::Event: DeserializeOwned,
    {
        let Some(node) = store.node().map(str::to_owned) else {
            return Err(InboxError::Layout {
                table: store.table().to_owned(),
                problem: "the store has no ownership; a node needs PostgresStore::builder(..).ownership(..)".into(),
            });
        };
        let inbox = Arc::new(
            InboxBuilder::of(&store)
                .limit(self.limit)
                .poll(self.poll)
                .open()?,
        );
        let kernel = Arc::new(kernel);
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let pump = Pump {
            kernel: kernel.clone(),
            store: store.clone(),
            inbox: inbox.clone(),
            stop: stop.clone(),
            counters: counters.clone(),
            options: self,
            node,
            busy: Mutex::new(HashSet::new()),
        };
        let handle = std::thread::Builder::new()
            .name("fsm-cluster-pump".into())
            .spawn(move || pump.run())
            .map_err(|e| {
                InboxError::from(fsm_core::store::StoreError::Unavailable {
                    backend: "postgres",
                    message: format!("cannot spawn the pump thread: {e}"),
                })
            })?;
        Ok(Node {
            kernel,
            store,
            inbox,
            stop,
            pump: Some(handle),
            counters,
        })
    }
}

#[derive(Default)]
struct Counters {
    rounds: AtomicU64,
    applied: AtomicU64,
    refused: AtomicU64,
    fenced: AtomicU64,
    retried: AtomicU64,
    missed: AtomicU64,
    loaded: AtomicU64,
    deleted: AtomicU64,
    lag_ms: AtomicU64,
    errors: AtomicU64,
}

/// What a node's pump did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Rounds that read the inbox.
    pub rounds: u64,
    /// Commands applied and recorded.
    pub applied: u64,
    /// Commands decided otherwise (rejected, expired, dumped, undecodable ..) and recorded.
    pub refused: u64,
    /// Decisions not recorded because the partition had moved on (another node records
    /// them, from the machine's journal), or because the command's decision was already
    /// recorded.
    pub fenced: u64,
    /// Commands handed back to the inbox to try again (store unavailable, kernel full).
    pub retried: u64,
    /// Polls that found work no notification announced.
    pub missed_notifications: u64,
    /// Machines loaded after taking their partitions over.
    pub loaded: u64,
    /// Decisions deleted after the retention window.
    pub deleted: u64,
    /// How long the oldest command of the last round had waited in the inbox, in ms.
    pub lag_ms: u64,
    /// Database errors the pump met (it retries).
    pub errors: u64,
}

/// A node of the cluster; see the [module documentation](self).
pub struct Node<M: Durable> {
    kernel: Arc<Kernel<M>>,
    store: Arc<PostgresStore>,
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
    pump: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl<M: Durable> fmt::Debug for Node<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("store", &self.store)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Default for NodeBuilder {
    fn default() -> Self {
        NodeBuilder::new()
    }
}

impl NodeBuilder {
    /// Options for a node, with the defaults below; the machine type comes with the kernel
    /// at [`start`](NodeBuilder::start).
    pub fn new() -> NodeBuilder {
        NodeBuilder {
            batch: 1024,
            per_machine: 1,
            poll: Duration::from_secs(1),
            retention: Duration::from_secs(24 * 3600),
            cleanup_every: Duration::from_secs(10),
            limit: super::inbox::DEFAULT_INBOX_LIMIT,
        }
    }
}

impl<M: Durable> Node<M> {
    /// Submits a command through the inbox: accepted once this returns `Ok`, decided by the
    /// machine's owner, on this node or another.
    pub fn submit(&self, command: InboxCommand) -> Result<InboxTicket, InboxError> {
        self.inbox.submit(command)
    }

    /// Submits commands in one statement; see [`Inbox::submit_many`].
    pub fn submit_many(&self, commands: Vec<InboxCommand>) -> Vec<Result<InboxTicket, InboxError>> {
        self.inbox.submit_many(commands)
    }

    /// The inbox (for depth, decisions, and stats).
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// The kernel (for state, metrics, trace).
    pub fn kernel(&self) -> &Kernel<M> {
        &self.kernel
    }

    /// The store.
    pub fn store(&self) -> &PostgresStore {
        &self.store
    }

    /// What the pump did so far.
    pub fn stats(&self) -> NodeStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NodeStats {
            rounds: l(&c.rounds),
            applied: l(&c.applied),
            refused: l(&c.refused),
            fenced: l(&c.fenced),
            retried: l(&c.retried),
            missed_notifications: l(&c.missed),
            loaded: l(&c.loaded),
            deleted: l(&c.deleted),
            lag_ms: l(&c.lag_ms),
            errors: l(&c.errors),
        }
    }

    /// Publishes the node's counters and the inbox's depth through the `metrics` facade
    /// (feature `metrics`), for whatever exporter the process installed; call it on each
    /// scrape or every few seconds (it runs one query for the depth). No label carries a
    /// machine id.
    ///
    /// | name | kind | labels |
    /// | --- | --- | --- |
    /// | `fsm_cluster_applied_total`, `fsm_cluster_refused_total`, `fsm_cluster_fenced_total`, `fsm_cluster_retried_total`, `fsm_cluster_missed_notifications_total`, `fsm_cluster_loaded_total`, `fsm_cluster_deleted_total`, `fsm_cluster_errors_total`, `fsm_cluster_rounds_total` | counter | node |
    /// | `fsm_cluster_apply_lag_seconds` (the oldest command of the last round, when read) | gauge | node |
    /// | `fsm_cluster_partitions_held` | gauge | node |
    /// | `fsm_cluster_inbox_pending`, `fsm_cluster_inbox_oldest_seconds` | gauge | partition |
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) -> Result<(), InboxError> {
        use metrics::{counter, gauge};
        let s = self.stats();
        let node = self.store.node().unwrap_or_default().to_owned();
        let labels = [("node", node)];
        counter!("fsm_cluster_applied_total", &labels).absolute(s.applied);
        counter!("fsm_cluster_refused_total", &labels).absolute(s.refused);
        counter!("fsm_cluster_fenced_total", &labels).absolute(s.fenced);
        counter!("fsm_cluster_retried_total", &labels).absolute(s.retried);
        counter!("fsm_cluster_missed_notifications_total", &labels)
            .absolute(s.missed_notifications);
        counter!("fsm_cluster_loaded_total", &labels).absolute(s.loaded);
        counter!("fsm_cluster_deleted_total", &labels).absolute(s.deleted);
        counter!("fsm_cluster_errors_total", &labels).absolute(s.errors);
        counter!("fsm_cluster_rounds_total", &labels).absolute(s.rounds);
        gauge!("fsm_cluster_apply_lag_seconds", &labels).set(s.lag_ms as f64 / 1000.0);
        gauge!("fsm_cluster_partitions_held", &labels).set(self.store.held().len() as f64);
        // Every partition, so one that drained reads 0 rather than its last depth.
        let depth: HashMap<u32, super::Depth> = self
            .inbox
            .depth()?
            .into_iter()
            .map(|d| (d.partition, d))
            .collect();
        for p in 0..self.inbox.partitions() {
            let partition = [("partition", p.to_string())];
            let (pending, oldest) = depth
                .get(&p)
                .map_or((0.0, 0.0), |d| (d.pending as f64, d.oldest.as_secs_f64()));
            gauge!("fsm_cluster_inbox_pending", &partition).set(pending);
            gauge!("fsm_cluster_inbox_oldest_seconds", &partition).set(oldest);
        }
        Ok(())
    }

    /// Stops the pump (commands it has not read stay in the inbox for the next owner), then
    /// the kernel, draining what it had taken.
    pub fn shutdown(mut self) -> Option<ShutdownReport<M::Event>> {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.pump.take() {
            let _ = h.join();
        }
        let kernel = self.kernel.clone();
        drop(self);
        Arc::try_unwrap(kernel)
            .ok()
            .map(|k| k.shutdown(Shutdown::Drain))
    }
}

impl<M: Durable> Drop for Node<M> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.pump.take() {
            let _ = h.join();
        }
    }
}

/// A command handed to the kernel, waiting for its answer.
struct Flight {
    partition: i32,
    epoch: i64,
    ticket: Ticket<Answer>,
}

/// A decision to record.
struct Decided {
    row: i64,
    partition: i32,
    epoch: i64,
    status: Status,
    seq: Option<i64>,
    transition: Option<String>,
    detail: Option<String>,
}

impl Decided {
    /// A decision without a transition: why, in `detail`.
    fn refused(row: i64, partition: i32, epoch: i64, status: Status, detail: String) -> Self {
        Decided {
            row,
            partition,
            epoch,
            status,
            seq: None,
            transition: None,
            detail: Some(detail),
        }
    }
}

/// The reader's connection and statements.
struct ReadConn {
    client: Client,
    fetch: Statement,
    sweep: Statement,
    cleanup: Statement,
    machines: Statement,
}

/// What the reader hands the recorder, and what the kernel's answers tell it.
enum Note {
    /// A command in the kernel.
    Flight(i64, Flight),
    /// A command decided without the kernel (expired, undecodable, refused at submit).
    Decided(Decided),
    /// A command to read again later (the kernel was full): released after a pause.
    Retry(i64),
    /// The kernel answered this row (sent by its ticket's waker).
    Answered(i64),
}

/// Why the reader woke.
enum Wake {
    /// A submitter's notification.
    Notified,
    /// The recorder released rows: their machines' next commands may be read.
    Freed,
}

/// Wakes the recorder when a ticket is answered.
struct Answered {
    row: i64,
    to: mpsc::Sender<Note>,
}

impl Wake2 for Answered {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.to.send(Note::Answered(self.row));
    }
}

/// The commands of an open batch, as the pump reads them once: they never change, so a
/// later read sends only what does (decided slots, deadlines passed). Every column is read
/// leniently: a row written by hand with a missing element gives an empty string there,
/// which the pump refuses as an invalid id, key or event.
struct Commands {
    partitions: Vec<Option<i32>>,
    machines: Vec<Option<String>>,
    keys: Vec<Option<String>>,
    events: Vec<Option<String>>,
}

/// An open batch of the inbox, as one read sees it.
struct OpenBatch {
    id: i64,
    commands: Arc<Commands>,
    expired: Vec<Option<bool>>,
    waited: f64,
    decided: HashSet<i32>,
}

impl OpenBatch {
    /// The batch of row `r`, its commands taken from `known` where the read did not send
    /// them; `None` if it did not and they are not there (read it whole next time).
    fn from_row(
        r: &postgres::Row,
        known: &HashMap<i64, Arc<Commands>>,
    ) -> Result<Option<OpenBatch>, postgres::Error> {
        let list = |i: usize| -> Result<Vec<Option<String>>, postgres::Error> {
            Ok(r.try_get::<_, Option<Vec<Option<String>>>>(i)?
                .unwrap_or_default())
        };
        let id: i64 = r.try_get(0)?;
        let commands = if r.try_get::<_, Option<bool>>(1)?.unwrap_or(false) {
            match known.get(&id) {
                Some(c) => c.clone(),
                None => return Ok(None),
            }
        } else {
            Arc::new(Commands {
                partitions: r
                    .try_get::<_, Option<Vec<Option<i32>>>>(2)?
                    .unwrap_or_default(),
                machines: list(3)?,
                keys: list(4)?,
                events: list(5)?,
            })
        };
        Ok(Some(OpenBatch {
            id,
            commands,
            expired: r
                .try_get::<_, Option<Vec<Option<bool>>>>(6)?
                .unwrap_or_default(),
            waited: r.try_get::<_, Option<f64>>(7)?.unwrap_or(0.0),
            decided: r
                .try_get::<_, Option<Vec<Option<i32>>>>(8)?
                .unwrap_or_default()
                .into_iter()
                .flatten()
                .collect(),
        }))
    }
}

/// Element `i` of a column, or an empty string where there is none.
fn element(column: &[Option<String>], i: usize) -> &str {
    column.get(i).and_then(|v| v.as_deref()).unwrap_or("")
}

struct Pump<M: Durable> {
    kernel: Arc<Kernel<M>>,
    store: Arc<PostgresStore>,
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    options: NodeBuilder,
    node: String,
    /// Rows read and not yet recorded (in the kernel, answered, or being recorded): never
    /// read again meanwhile, and with `per_machine` 1 their machines' next commands wait.
    busy: Mutex<HashSet<i64>>,
}

/// What a kernel's answer means for the inbox row: a decision, or try again later.
/// A decision's columns: status, sequence, transition, detail.
type Verdict = (Status, Option<i64>, Option<String>, Option<String>);

fn decide(outcome: &Answer) -> Option<Verdict> {
    Some(match outcome {
        Ok(c) => (
            Status::Applied,
            Some(c.seq as i64),
            Some(c.transition.to_string()),
            c.duplicate
                .then(|| "applied before, answered from the machine's journal".to_owned()),
        ),
        Err(e) => match e {
            CommandError::Rejected(r) => (Status::Rejected, None, None, Some(r.to_string())),
            CommandError::Expired => (Status::Expired, None, None, Some(e.to_string())),
            CommandError::Dumped(c) => (Status::Dumped, None, None, Some(c.to_string())),
            CommandError::Delegated(c) => (Status::Delegated, None, None, Some(c.to_string())),
            // Nothing decided: the machine is where it was, or will be read back; the row
            // stays pending and is read again.
            CommandError::NotStored { .. }
            | CommandError::OutcomeUnknown { .. }
            | CommandError::Unavailable { .. }
            | CommandError::Fenced { .. }
            | CommandError::Closed => return None,
            other => (Status::Refused, None, None, Some(other.to_string())),
        },
    })
}

impl<M> Pump<M>
where
    M: Durable,
    M::Event: DeserializeOwned,
{
    /// How long a thread sleeps after a database error, and the longest it blocks before
    /// it looks at the stop flag.
    fn pause(&self) -> Duration {
        self.options.poll.min(Duration::from_millis(50))
    }

    fn connect_reader(&self) -> Option<ReadConn> {
        let mut client = (self.store.connector())().ok()?;
        plan_settings(&mut client).ok()?;
        let sql = self.inbox.statements();
        let fetch = client.prepare(&sql.fetch).ok()?;
        let sweep = client.prepare(&sql.sweep).ok()?;
        let cleanup = client.prepare(&sql.cleanup).ok()?;
        let machines = client.prepare(&sql.machines).ok()?;
        Some(ReadConn {
            client,
            fetch,
            sweep,
            cleanup,
            machines,
        })
    }

    /// Runs the node's three threads until the stop flag: this one reads the inbox and
    /// hands commands to the kernel, a recorder records the kernel's answers, a listener
    /// turns submitters' notifications into wake-ups. Reading the next batch overlaps
    /// applying and recording the last ones.
    fn run(self) {
        let (wake, woken) = mpsc::channel::<Wake>();
        let (note, notes) = mpsc::channel::<Note>();
        std::thread::scope(|s| {
            let recorder_wake = wake.clone();
            let recorder_note = note.clone();
            let recorder = std::thread::Builder::new()
                .name("fsm-cluster-recorder".into())
                .spawn_scoped(s, || self.record_loop(notes, recorder_note, recorder_wake));
            let listener = std::thread::Builder::new()
                .name("fsm-cluster-listener".into())
                .spawn_scoped(s, || self.listen_loop(wake));
            if recorder.is_err() || listener.is_err() {
                // Without its helpers the node cannot decide anything: stop at once (the
                // commands stay in the inbox for another owner).
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.stop.store(true, Ordering::Release);
                return;
            }
            self.read_loop(woken, note);
        });
    }

    /// The reader: notes partitions taken over, reads pending commands, submits them.
    fn read_loop(&self, woken: mpsc::Receiver<Wake>, to_recorder: mpsc::Sender<Note>) {
        let mut conn: Option<ReadConn> = None;
        let mut known: HashSet<u32> = HashSet::new();
        // The commands of the open batches read before (they never change).
        let mut known_batches: HashMap<i64, Arc<Commands>> = HashMap::new();
        let mut last_cleanup = Instant::now();
        // Whether expired batches may be waiting beyond what the last cleanup deleted: at
        // start (a node back after a while may find a backlog), and after a full page.
        let mut behind = true;
        let mut polling = true;
        let pause = self.pause();
        while !self.stop.load(Ordering::Acquire) {
            if conn.is_none() {
                conn = self.connect_reader();
                if conn.is_none() {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(pause);
                    continue;
                }
            }
            let c = conn.as_mut().expect("connected above");
            let held: HashMap<u32, u64> = self.store.held().into_iter().collect();
            // Partitions taken over: their machines' timers and owed effects live here now.
            let new: Vec<u32> = held
                .keys()
                .filter(|p| !known.contains(p))
                .copied()
                .collect();
            if !new.is_empty() {
                if self.load(c, &new).is_err() {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                    continue;
                }
                known.extend(new);
            }
            known.retain(|p| held.contains_key(p));
            let (work, full) = match self.read(c, &held, &mut known_batches, &to_recorder) {
                Ok(r) => r,
                Err(_) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                    std::thread::sleep(pause);
                    continue;
                }
            };
            if work > 0 && polling {
                self.counters.missed.fetch_add(1, Ordering::Relaxed);
            }
            if behind || last_cleanup.elapsed() >= self.options.cleanup_every {
                last_cleanup = Instant::now();
                let keep = self.options.retention.as_millis().min(i64::MAX as u128) as i64;
                let swept = c.client.execute(&c.sweep, &[]);
                let (batches, commands) = (CLEANUP_BATCHES, CLEANUP_COMMANDS);
                let cleaned = swept.and_then(|_| {
                    c.client
                        .query_one(&c.cleanup, &[&keep, &batches, &commands])
                });
                match cleaned {
                    Ok(row) => {
                        let n: i64 = row.get(1);
                        behind = row.get(2);
                        self.counters
                            .deleted
                            .fetch_add(n.max(0) as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        // Tried again after `cleanup_every`, not at once.
                        behind = false;
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            polling = false;
            if full {
                // A whole batch was read: more may be waiting, read again at once (or when
                // the recorder frees room).
                if self.room() > 0 {
                    continue;
                }
            }
            if behind {
                // More expired batches wait: the next page at once, after a read.
                continue;
            }
            // Sleep until a submit notifies, the recorder frees rows, or the poll interval
            // (in slices, so a stop is seen promptly).
            let start = Instant::now();
            loop {
                let left = self.options.poll.saturating_sub(start.elapsed());
                if left.is_zero() {
                    polling = true;
                    break;
                }
                match woken.recv_timeout(left.min(pause)) {
                    Ok(_) => {
                        // Every wake-up that came meanwhile is served by one read.
                        while woken.try_recv().is_ok() {}
                        break;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if self.stop.load(Ordering::Acquire) {
                            return;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    /// Room for more commands in flight.
    fn room(&self) -> usize {
        self.options
            .batch
            .saturating_sub(self.busy.lock().recover().len())
    }

    /// The listener: a notification from a submitter wakes the reader. A lost one only
    /// delays (the reader polls).
    fn listen_loop(&self, wake: mpsc::Sender<Wake>) {
        let mut listener: Option<Client> = None;
        let slice = self.options.poll.min(Duration::from_millis(100));
        while !self.stop.load(Ordering::Acquire) {
            let Some(l) = listener.as_mut() else {
                listener = (self.store.connector())().ok().and_then(|mut c| {
                    c.batch_execute(&format!("LISTEN \"{}\"", self.inbox.names().wake))
                        .ok()
                        .map(|()| c)
                });
                if listener.is_none() {
                    std::thread::sleep(slice);
                }
                continue;
            };
            match super::inbox::notified(l, slice) {
                Ok(true) => {
                    if wake.send(Wake::Notified).is_err() {
                        return;
                    }
                }
                Ok(false) => {}
                Err(_) => listener = None,
            }
        }
    }

    /// Loads every stored machine of partitions `new` into the kernel.
    fn load(&self, c: &mut ReadConn, new: &[u32]) -> Result<(), postgres::Error> {
        let new: HashSet<u32> = new.iter().copied().collect();
        let mut after = String::new();
        loop {
            let rows = c.client.query(&c.machines, &[&after, &1000_i64])?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            after = last.get(0);
            for r in &rows {
                let id: String = r.get(0);
                let Ok(id) = MachineId::new(id) else { continue };
                if self
                    .store
                    .partition_of(&id)
                    .is_some_and(|p| new.contains(&p))
                    && self.kernel.load(&id).is_ok()
                {
                    self.counters.loaded.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Reads pending commands not yet in flight and hands them to the kernel, each with a
    /// note to the recorder: (commands read, whether the read filled the room).
    fn read(
        &self,
        c: &mut ReadConn,
        held: &HashMap<u32, u64>,
        known: &mut HashMap<i64, Arc<Commands>>,
        to_recorder: &mpsc::Sender<Note>,
    ) -> Result<(usize, bool), postgres::Error> {
        // The rows in flight are read before the batches: a row the recorder frees after
        // this was decided before, so the read finds it decided. Read after, a row decided
        // and freed in between would look pending and be applied again (answered from the
        // journal, but work done twice).
        let in_flight: HashSet<i64> = self.busy.lock().recover().clone();
        let room = self.options.batch.saturating_sub(in_flight.len());
        if room == 0 || held.is_empty() {
            return Ok((0, false));
        }
        let parts: Vec<i32> = held.keys().map(|&p| p as i32).collect();
        let batches = loop {
            let ids: Vec<i64> = known.keys().copied().collect();
            let read: Option<Vec<OpenBatch>> = c
                .client
                .query(&c.fetch, &[&parts, &ids])?
                .iter()
                .map(|r| OpenBatch::from_row(r, known))
                .collect::<Result<_, _>>()?;
            self.counters.rounds.fetch_add(1, Ordering::Relaxed);
            match read {
                Some(batches) => break batches,
                // A batch not sent because it was thought known: read everything whole
                // rather than skip it (its commands come before later batches' ones).
                None => known.clear(),
            }
        };
        // The batches still open are all the pump keeps.
        *known = batches.iter().map(|b| (b.id, b.commands.clone())).collect();
        // Each machine's first `per_machine` pending commands, in submission order, less
        // those already in flight here: with one in flight per machine, a machine with a
        // command in flight gives none.
        let mut taken = Vec::new();
        {
            let mut busy = self.busy.lock().recover();
            let mut seen: HashMap<&str, usize> = HashMap::new();
            'batches: for b in &batches {
                for (i, partition) in b.commands.partitions.iter().enumerate() {
                    let slot = i as i32 + 1;
                    let Some(partition) = *partition else {
                        continue;
                    };
                    if !held.contains_key(&(partition as u32)) || b.decided.contains(&slot) {
                        continue;
                    }
                    let row = row_of(b.id, slot);
                    let n = seen.entry(element(&b.commands.machines, i)).or_default();
                    *n += 1;
                    if *n > self.options.per_machine || in_flight.contains(&row) {
                        continue;
                    }
                    if taken.len() >= room {
                        break 'batches;
                    }
                    busy.insert(row);
                    taken.push((b, i, row, partition));
                }
            }
        }
        let work = taken.len();
        let mut lag = 0.0_f64;
        let mut commands = Vec::with_capacity(work);
        let mut meta = Vec::with_capacity(work);
        let mut notes = Vec::with_capacity(work);
        for (b, i, row, partition) in taken {
            lag = lag.max(b.waited);
            let epoch = held.get(&(partition as u32)).copied().unwrap_or(0) as i64;
            let refuse = |status, detail: String| {
                Note::Decided(Decided::refused(row, partition, epoch, status, detail))
            };
            if b.expired.get(i).copied().flatten().unwrap_or(false) {
                notes.push(refuse(
                    Status::Expired,
                    "its time to live ran out before the owner took it".into(),
                ));
                continue;
            }
            let (machine, key, event) = (
                element(&b.commands.machines, i),
                element(&b.commands.keys, i),
                element(&b.commands.events, i),
            );
            let (id, key) = match (MachineId::new(machine), IdempotencyKey::new(key)) {
                (Ok(id), Ok(key)) => (id, key),
                (Err(e), _) => {
                    notes.push(refuse(Status::Refused, format!("invalid machine id: {e}")));
                    continue;
                }
                (_, Err(e)) => {
                    notes.push(refuse(Status::Refused, format!("invalid key: {e}")));
                    continue;
                }
            };
            match serde_json::from_str::<M::Event>(event) {
                Ok(ev) => {
                    commands.push((id, Request::new(ev).with_key(key)));
                    meta.push((row, partition, epoch));
                }
                Err(e) => notes.push(refuse(
                    Status::Undecodable,
                    format!(
                        "node `{}` cannot decode the event as its machine's event type: {e}",
                        self.node
                    ),
                )),
            }
        }
        self.counters
            .lag_ms
            .store((lag * 1000.0) as u64, Ordering::Relaxed);
        for ((row, partition, epoch), result) in
            meta.into_iter().zip(self.kernel.submit_batch(commands))
        {
            notes.push(match result {
                Ok(ticket) => Note::Flight(
                    row,
                    Flight {
                        partition,
                        epoch,
                        ticket,
                    },
                ),
                Err(e) => match &e {
                    SubmitError::Dumped(_) => Note::Decided(Decided::refused(
                        row,
                        partition,
                        epoch,
                        Status::Dumped,
                        e.to_string(),
                    )),
                    SubmitError::Delegated => Note::Decided(Decided::refused(
                        row,
                        partition,
                        epoch,
                        Status::Delegated,
                        e.to_string(),
                    )),
                    _ => {
                        self.counters.retried.fetch_add(1, Ordering::Relaxed);
                        Note::Retry(row)
                    }
                },
            });
        }
        for n in notes {
            // The recorder stops only after this thread: a send cannot fail while it runs.
            let _ = to_recorder.send(n);
        }
        Ok((work, work >= room))
    }

    /// The recorder: collects the kernel's answers as they come, records them in one
    /// statement per wake-up (those that came while the last statement ran come together),
    /// and releases the rows.
    fn record_loop(
        &self,
        notes: mpsc::Receiver<Note>,
        answers: mpsc::Sender<Note>,
        wake: mpsc::Sender<Wake>,
    ) {
        let mut client: Option<(Client, Recording)> = None;
        let mut flights: HashMap<i64, Flight> = HashMap::new();
        let mut decided: Vec<Decided> = Vec::new();
        // Rows to read again, and when.
        let mut later: Vec<(Instant, i64)> = Vec::new();
        let pause = self.pause();
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            let first = if stopping {
                notes.try_recv().ok()
            } else {
                match notes.recv_timeout(pause) {
                    Ok(n) => Some(n),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut next = first;
            let began = Instant::now();
            while let Some(n) = next {
                match n {
                    Note::Flight(row, flight) => {
                        flights.insert(row, flight);
                        self.poll_answer(row, &mut flights, &answers, &mut decided, &mut later);
                    }
                    Note::Answered(row) => {
                        self.poll_answer(row, &mut flights, &answers, &mut decided, &mut later)
                    }
                    Note::Decided(d) => decided.push(d),
                    Note::Retry(row) => later.push((Instant::now() + pause, row)),
                }
                next = notes.try_recv().ok();
                if next.is_none() && !flights.is_empty() && !stopping && began.elapsed() < BURST_MAX
                {
                    // The kernel answers a write's commands one after another: while it is
                    // still answering, wait for the rest of the burst, so that one statement
                    // records the whole write rather than its first answers, then the others.
                    // Bounded, so a steady stream of answers is still recorded as it comes.
                    next = notes.recv_timeout(BURST).ok();
                }
            }
            let mut freed: Vec<i64> = Vec::new();
            if !decided.is_empty() {
                if client.is_none() {
                    client = (self.store.connector())().ok().and_then(|mut c| {
                        plan_settings(&mut c).ok()?;
                        let sql = self.inbox.statements();
                        let st = Recording {
                            any: c.prepare(&sql.record).ok()?,
                            applied: c.prepare(&sql.record_applied).ok()?,
                        };
                        Some((c, st))
                    });
                }
                let batch = std::mem::take(&mut decided);
                freed.extend(batch.iter().map(|d| d.row));
                let recorded = match client.as_mut() {
                    Some((c, st)) => self.record(c, st, batch).is_ok(),
                    None => false,
                };
                if !recorded {
                    // Not recorded: the rows stay pending and are read again; the kernel
                    // answers them from the machines' journals.
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    client = None;
                    std::thread::sleep(pause);
                }
            }
            let now = Instant::now();
            later.retain(|&(at, row)| {
                let due = at <= now;
                if due {
                    freed.push(row);
                }
                !due
            });
            if !freed.is_empty() {
                let mut busy = self.busy.lock().recover();
                for row in &freed {
                    busy.remove(row);
                }
                drop(busy);
                let _ = wake.send(Wake::Freed);
            }
            if stopping {
                // What was answered is recorded; what the kernel still holds stays pending
                // in the inbox for the next owner.
                return;
            }
        }
    }

    /// Looks at a flight's ticket: an answer becomes a decision (or a retry); no answer yet
    /// leaves the ticket's waker to send `Note::Answered`.
    fn poll_answer(
        &self,
        row: i64,
        flights: &mut HashMap<i64, Flight>,
        answers: &mpsc::Sender<Note>,
        decided: &mut Vec<Decided>,
        later: &mut Vec<(Instant, i64)>,
    ) {
        let Some(mut flight) = flights.remove(&row) else {
            return;
        };
        let waker = Waker::from(Arc::new(Answered {
            row,
            to: answers.clone(),
        }));
        let mut cx = Context::from_waker(&waker);
        let outcome = match Pin::new(&mut flight.ticket).poll(&mut cx) {
            Poll::Ready(o) => o,
            Poll::Pending => {
                flights.insert(row, flight);
                return;
            }
        };
        match decide(&outcome) {
            Some((status, seq, transition, detail)) => decided.push(Decided {
                row,
                partition: flight.partition,
                epoch: flight.epoch,
                status,
                seq,
                transition,
                detail,
            }),
            None => {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                later.push((Instant::now() + self.pause(), row));
            }
        }
    }

    /// Records decisions in one statement and notifies the submitters: `applied` ones of
    /// slots with none recorded yet by `record_applied`, any others by `record_any`, fenced
    /// by the epochs they were decided under.
    fn record(
        &self,
        c: &mut Client,
        statements: &Recording,
        mut decided: Vec<Decided>,
    ) -> Result<(), postgres::Error> {
        let n = decided.len() as u64;
        // The range of rows decided: a submitter looks up only its tickets in it.
        let lo = decided.iter().map(|d| d.row).min().unwrap_or(0);
        let hi = decided.iter().map(|d| d.row).max().unwrap_or(0);
        let range = format!("{lo}-{hi}");
        let (recorded, applied_recorded) = match self.record_applied(c, statements, &mut decided)? {
            Some(recorded) => (recorded, recorded),
            None => self.record_any(c, &statements.any, decided)?,
        };
        if recorded > 0 {
            let _ = super::inbox::notify(c, &self.inbox.names().decided, &range);
        }
        self.counters
            .applied
            .fetch_add(applied_recorded, Ordering::Relaxed);
        self.counters
            .refused
            .fetch_add(recorded - applied_recorded, Ordering::Relaxed);
        self.counters
            .fenced
            .fetch_add(n.saturating_sub(recorded), Ordering::Relaxed);
        Ok(())
    }

    /// Records decisions that are all `applied` for slots with none recorded yet, one outcome
    /// row per batch: the decisions recorded, or `None` where that is not the case (nothing
    /// written; `record_any` records them).
    fn record_applied(
        &self,
        c: &mut Client,
        statements: &Recording,
        decided: &mut [Decided],
    ) -> Result<Option<u64>, postgres::Error> {
        if decided.iter().any(|d| d.status != Status::Applied) {
            return Ok(None);
        }
        decided.sort_unstable_by_key(|d| d.row);
        if decided.windows(2).any(|w| w[0].row == w[1].row) {
            // Decided twice (never expected): the general statement records the first.
            return Ok(None);
        }
        // Each batch's bounds in the flat arrays (from 1, inclusive), and in the flat
        // per-partition counts.
        let (mut batches, mut lo, mut hi, mut plo, mut phi) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut parts, mut counts): (Vec<i32>, Vec<i32>) = (vec![], vec![]);
        let mut start = 0;
        while start < decided.len() {
            let batch = decided[start].row / SLOTS;
            let end = start
                + decided[start..]
                    .iter()
                    .take_while(|d| d.row / SLOTS == batch)
                    .count();
            let (these, their) =
                per_partition(decided[start..end].iter().map(|d| d.partition).collect());
            plo.push(parts.len() as i32 + 1);
            parts.extend(these);
            counts.extend(their);
            phi.push(parts.len() as i32);
            batches.push(batch);
            lo.push(start as i32 + 1);
            hi.push(end as i32);
            start = end;
        }
        let slots: Vec<i32> = decided.iter().map(|d| (d.row % SLOTS + 1) as i32).collect();
        let seqs: Vec<Option<i64>> = decided.iter().map(|d| d.seq).collect();
        let transitions: Vec<Option<&str>> =
            decided.iter().map(|d| d.transition.as_deref()).collect();
        let details: Vec<Option<&str>> = decided.iter().map(|d| d.detail.as_deref()).collect();
        let epochs: Vec<i64> = decided.iter().map(|d| d.epoch).collect();
        let row = c.query_one(
            &statements.applied,
            &[
                &batches,
                &lo,
                &hi,
                &plo,
                &phi,
                &slots,
                &seqs,
                &transitions,
                &details,
                &epochs,
                &self.node,
                &parts,
                &counts,
            ],
        )?;
        let clear: bool = row.get(0);
        if !clear {
            return Ok(None);
        }
        let recorded: i64 = row.get(1);
        Ok(Some(recorded.max(0) as u64))
    }

    /// Records any decisions, skipping those already recorded: (recorded, of which applied).
    fn record_any(
        &self,
        c: &mut Client,
        statement: &Statement,
        decided: Vec<Decided>,
    ) -> Result<(u64, u64), postgres::Error> {
        let rows: Vec<i64> = decided.iter().map(|d| d.row).collect();
        let parts: Vec<i32> = decided.iter().map(|d| d.partition).collect();
        let epochs: Vec<i64> = decided.iter().map(|d| d.epoch).collect();
        let statuses: Vec<&str> = decided.iter().map(|d| d.status.as_str()).collect();
        let seqs: Vec<Option<i64>> = decided.iter().map(|d| d.seq).collect();
        let transitions: Vec<Option<&str>> =
            decided.iter().map(|d| d.transition.as_deref()).collect();
        let details: Vec<Option<&str>> = decided.iter().map(|d| d.detail.as_deref()).collect();
        let mut fenced: Vec<i32> = decided
            .iter()
            .filter(|d| d.status != Status::Applied)
            .map(|d| d.partition)
            .collect();
        fenced.sort_unstable();
        fenced.dedup();
        let row = c.query_one(
            statement,
            &[
                &rows,
                &parts,
                &epochs,
                &statuses,
                &seqs,
                &transitions,
                &details,
                &self.node,
                &fenced,
            ],
        )?;
        let recorded: i64 = row.get(0);
        let applied_recorded: i64 = row.get(1);
        Ok((recorded.max(0) as u64, applied_recorded.max(0) as u64))
    }
}

/// The recorder's statements: any decisions, and the common case of `applied` ones only.
struct Recording {
    any: Statement,
    applied: Statement,
}
