//! A cluster node (feature `cluster`): a kernel over a fenced [`PostgresStore`], fed by the
//! cluster's [`Inbox`] for the partitions it owns.
//!
//! The node's pump thread is woken by the inbox's notifications (and polls, so a lost one
//! only delays), reads the pending commands of the partitions the store holds (one per
//! machine at a time, oldest first), hands them to the kernel in one batch, and records each
//! decision in its row under the epoch it was applied under. When the store takes a
//! partition over, the node first loads its machines, so their timers fire here and the
//! effects they owe are run again under the same effect ids.
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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

use super::inbox::{Inbox, InboxBuilder, InboxCommand, InboxError, InboxTicket, Status};
use super::PostgresStore;

/// Options for a [`Node`]; from [`NodeBuilder::new`].
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    batch: usize,
    per_machine: usize,
    round_wait: Duration,
    poll: Duration,
    retention: Duration,
    cleanup_every: Duration,
    limit: u64,
}

impl NodeBuilder {
    /// At most this many commands in flight from the inbox at once (default 1024): one
    /// batch read, decided and recorded together.
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

    /// How long the pump waits for a batch's answers before it goes on with others (default
    /// 100 ms). A command a state defers stays in flight, its machine's later commands wait
    /// (see [`NodeBuilder::per_machine`]).
    pub fn round_wait(mut self, wait: Duration) -> Self {
        self.round_wait = wait;
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

    /// How often expired decisions are deleted (default every 10 s, 1,000 rows at a time).
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
    /// them, from the machine's journal).
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
            round_wait: Duration::from_millis(100),
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

/// The pump's own connection and statements.
struct PumpConn {
    client: Client,
    fetch: Statement,
    record: Statement,
    cleanup: Statement,
    machines: Statement,
}

struct Pump<M: Durable> {
    kernel: Arc<Kernel<M>>,
    store: Arc<PostgresStore>,
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    options: NodeBuilder,
    node: String,
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
    fn connect(&self) -> Option<PumpConn> {
        let mut client = (self.store.connector())().ok()?;
        let sql = self.inbox.statements();
        let fetch = client.prepare(&sql.fetch).ok()?;
        let record = client.prepare(&sql.record).ok()?;
        let cleanup = client.prepare(&sql.cleanup).ok()?;
        let machines = client.prepare(&sql.machines).ok()?;
        Some(PumpConn {
            client,
            fetch,
            record,
            cleanup,
            machines,
        })
    }

    fn listen(&self) -> Option<Client> {
        let mut c = (self.store.connector())().ok()?;
        c.batch_execute(&format!("LISTEN \"{}\"", self.inbox.names().wake))
            .ok()?;
        Some(c)
    }

    fn run(self) {
        let mut conn: Option<PumpConn> = None;
        let mut listener: Option<Client> = None;
        let mut in_flight: HashMap<i64, Flight> = HashMap::new();
        let mut known: HashSet<u32> = HashSet::new();
        let mut last_cleanup = Instant::now();
        let mut polling = true;
        let pause = self.options.poll.min(Duration::from_millis(50));
        while !self.stop.load(Ordering::Acquire) {
            if conn.is_none() {
                conn = self.connect();
                if conn.is_none() {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(pause);
                    continue;
                }
            }
            if listener.is_none() {
                listener = self.listen();
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
            let (work, decided, retry) = match self.round(c, &held, &mut in_flight) {
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
            if !decided.is_empty() && self.record(c, decided).is_err() {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
                continue;
            }
            if last_cleanup.elapsed() >= self.options.cleanup_every {
                last_cleanup = Instant::now();
                let parts: Vec<i32> = held.keys().map(|&p| p as i32).collect();
                let keep = self.options.retention.as_millis().min(i64::MAX as u128) as i64;
                match c.client.execute(&c.cleanup, &[&parts, &keep, &1000_i64]) {
                    Ok(n) => {
                        self.counters.deleted.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(_) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if retry {
                std::thread::sleep(pause);
            }
            polling = false;
            if work == 0 && in_flight.is_empty() {
                // Idle: sleep until a submit notifies, or the poll interval.
                polling = !self.wait_for_work(&mut listener);
            }
        }
    }

    /// Waits for a notification (true) or the poll interval (false), in slices so a stop is
    /// seen promptly.
    fn wait_for_work(&self, listener: &mut Option<Client>) -> bool {
        let start = Instant::now();
        let slice = self.options.poll.min(Duration::from_millis(100));
        while start.elapsed() < self.options.poll && !self.stop.load(Ordering::Acquire) {
            let Some(l) = listener.as_mut() else {
                std::thread::sleep(slice);
                continue;
            };
            match super::inbox::notified(l, slice) {
                Ok(true) => return true,
                Ok(false) => {}
                Err(_) => *listener = None,
            }
        }
        false
    }

    /// Loads every stored machine of partitions `new` into the kernel.
    fn load(&self, c: &mut PumpConn, new: &[u32]) -> Result<(), postgres::Error> {
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

    /// Reads pending commands, hands them to the kernel, and collects the answers that came
    /// within the round's wait: (commands read, decisions, whether some must be retried).
    fn round(
        &self,
        c: &mut PumpConn,
        held: &HashMap<u32, u64>,
        in_flight: &mut HashMap<i64, Flight>,
    ) -> Result<(usize, Vec<Decided>, bool), postgres::Error> {
        let mut decided = Vec::new();
        let mut retry = false;
        let room = self.options.batch.saturating_sub(in_flight.len());
        let mut fresh: Vec<i64> = Vec::new();
        let mut work = 0;
        if room > 0 && !held.is_empty() {
            let parts: Vec<i32> = held.keys().map(|&p| p as i32).collect();
            let busy: Vec<i64> = in_flight.keys().copied().collect();
            let rows = c.client.query(
                &c.fetch,
                &[
                    &parts,
                    &busy,
                    &(self.options.per_machine as i64),
                    &(room as i64),
                ],
            )?;
            self.counters.rounds.fetch_add(1, Ordering::Relaxed);
            work = rows.len();
            let mut lag = 0.0_f64;
            let mut commands = Vec::with_capacity(rows.len());
            let mut meta = Vec::with_capacity(rows.len());
            for r in &rows {
                let row: i64 = r.get(0);
                let machine: String = r.get(1);
                let key: String = r.get(2);
                let event: String = r.get(3);
                let expired: bool = r.get(4);
                let waited: f64 = r.get(5);
                let partition: i32 = r.get(6);
                lag = lag.max(waited);
                let epoch = held.get(&(partition as u32)).copied().unwrap_or(0) as i64;
                let refuse = |status, detail: String| {
                    Decided::refused(row, partition, epoch, status, detail)
                };
                if expired {
                    decided.push(refuse(
                        Status::Expired,
                        "its time to live ran out before the owner took it".into(),
                    ));
                    continue;
                }
                let (id, key) = match (MachineId::new(machine), IdempotencyKey::new(key)) {
                    (Ok(id), Ok(key)) => (id, key),
                    (Err(e), _) => {
                        decided.push(refuse(Status::Refused, format!("invalid machine id: {e}")));
                        continue;
                    }
                    (_, Err(e)) => {
                        decided.push(refuse(Status::Refused, format!("invalid key: {e}")));
                        continue;
                    }
                };
                match serde_json::from_str::<M::Event>(&event) {
                    Ok(ev) => {
                        commands.push((id, Request::new(ev).with_key(key)));
                        meta.push((row, partition, epoch));
                    }
                    Err(e) => decided.push(refuse(
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
                match result {
                    Ok(ticket) => {
                        fresh.push(row);
                        in_flight.insert(
                            row,
                            Flight {
                                partition,
                                epoch,
                                ticket,
                            },
                        );
                    }
                    Err(e) => {
                        let (status, detail) = match &e {
                            SubmitError::Dumped(_) => (Status::Dumped, e.to_string()),
                            SubmitError::Delegated => (Status::Delegated, e.to_string()),
                            _ => {
                                retry = true;
                                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        };
                        decided.push(Decided::refused(row, partition, epoch, status, detail));
                    }
                }
            }
        }
        // This round's answers, up to the round's wait; earlier ones only if already known.
        let until = Instant::now() + self.options.round_wait;
        for row in &fresh {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = in_flight[row].ticket.wait_timeout(left);
        }
        let done: Vec<(i64, Answer)> = in_flight
            .iter()
            .filter_map(|(&row, f)| f.ticket.try_outcome().map(|o| (row, o)))
            .collect();
        for (row, outcome) in done {
            let flight = in_flight.remove(&row).expect("listed above");
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
                    retry = true;
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok((work, decided, retry))
    }

    /// Records decisions in one statement, fenced by the epochs they were applied under.
    fn record(&self, c: &mut PumpConn, decided: Vec<Decided>) -> Result<(), postgres::Error> {
        let n = decided.len() as u64;
        let rows: Vec<i64> = decided.iter().map(|d| d.row).collect();
        let parts: Vec<i32> = decided.iter().map(|d| d.partition).collect();
        let epochs: Vec<i64> = decided.iter().map(|d| d.epoch).collect();
        let statuses: Vec<&str> = decided.iter().map(|d| d.status.as_str()).collect();
        let seqs: Vec<Option<i64>> = decided.iter().map(|d| d.seq).collect();
        let transitions: Vec<Option<&str>> =
            decided.iter().map(|d| d.transition.as_deref()).collect();
        let details: Vec<Option<&str>> = decided.iter().map(|d| d.detail.as_deref()).collect();
        let row = c.client.query_one(
            &c.record,
            &[
                &rows,
                &parts,
                &epochs,
                &statuses,
                &seqs,
                &transitions,
                &details,
                &self.node,
                &self.inbox.names().decided,
            ],
        )?;
        let recorded: i64 = row.get(0);
        let recorded = recorded as u64;
        let applied_recorded: i64 = row.get(1);
        let applied_recorded = applied_recorded as u64;
        self.counters
            .applied
            .fetch_add(applied_recorded, Ordering::Relaxed);
        self.counters
            .refused
            .fetch_add(recorded - applied_recorded, Ordering::Relaxed);
        self.counters
            .fenced
            .fetch_add(n - recorded, Ordering::Relaxed);
        Ok(())
    }
}
