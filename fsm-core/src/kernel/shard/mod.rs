//! A shard: one thread owning a set of machines (those whose id hashes to it), their registry,
//! and the loop apply -> group commit -> acknowledge -> effects.
//!
//! Two parts. The decision core ([`core`]) holds the machines in memory and decides what each
//! command does to them, with no I/O. This module is the shell around it: it takes batches
//! from the shard's inbox, loads each command's machine from the store before the core decides
//! it, stores what the core asks to write with one `put_many`, tells the core which writes did
//! not hold, and hands out what the core settled: answers, trace entries, effects and stats.

use crate::sync::Recover;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{MachineId, Put, Snapshot, SnapshotStore, StoreError};

use super::inbox::{Closing, Cmd, Job};
use super::journal::Journal;
use super::outbox::{self, Outbox};
use super::outcome::{CommandError, QuarantineCause, Quarantined};
use super::supervisor::{Run, WorkerMsg};
use super::{Durable, EffectId, Inner, OwedEffect, RecoveryReport};
use crate::queue::Wakes;

mod core;
mod fire;

pub(crate) use self::core::EffectRules;
use self::core::{Core, Rules, Slot};

pub(crate) struct Shard<M: Durable> {
    index: usize,
    inner: Arc<Inner<M>>,
    core: Core<M>,
    quarantined: HashMap<MachineId, Arc<Quarantined>>,
    jobs: VecDeque<Job<M>>,
    last_sweep: Instant,
    /// This shard's handle on the kernel's store (refreshed when it is reopened).
    store: (u64, Arc<dyn SnapshotStore>),
    /// Snapshots read ahead for the batch being decided, with the ownership epoch asked
    /// before each was read; emptied when the batch has been decided.
    prefetched: HashMap<MachineId, (u64, Result<Snapshot, StoreError>)>,
}

/// How many machines recovery reads with one `get_many`.
const RECOVERY_CHUNK: usize = 256;

/// What a shard hands back when it stops.
pub(crate) type HandedBack<E> = Vec<(MachineId, super::request::Request<E>)>;

impl<M: Durable> Shard<M> {
    pub(crate) fn new(index: usize, inner: Arc<Inner<M>>) -> Self {
        let now = inner.config.clock.now();
        let store = inner.store.current();
        let config = &inner.config;
        let rules = Rules::new(
            config.window,
            config.defer_limit,
            config.max_timers,
            inner.time,
            inner.timer_events,
            inner.overflow.clone(),
            config.latency.then(|| config.stamps.clone()),
            inner.effect_rules.clone(),
        );
        Shard {
            index,
            core: Core::new(rules),
            quarantined: HashMap::new(),
            prefetched: HashMap::new(),
            jobs: VecDeque::new(),
            last_sweep: now,
            store,
            inner,
        }
    }

    /// The kernel's store as of now, with its generation; no lock taken unless it was
    /// reopened since this shard last looked.
    fn store(&mut self) -> (u64, Arc<dyn SnapshotStore>) {
        self.inner.store.refresh(&mut self.store);
        self.store.clone()
    }

    /// Loads every machine in `ids` (recovery on start).
    pub(crate) fn recover(&mut self, ids: Vec<MachineId>) -> RecoveryReport {
        let mut report = RecoveryReport::default();
        let now = self.inner.config.clock.now();
        let (_, store) = self.store();
        // Read a chunk at a time with one `get_many` each: one read transaction or round trip
        // per chunk, not per machine.
        for chunk in ids.chunks(RECOVERY_CHUNK) {
            self.read_ahead(chunk.to_vec(), &*store);
            for id in chunk {
                match self.ensure_loaded(id, now, &*store) {
                    Ok(()) => report.recovered += 1,
                    Err(CommandError::Fenced { .. }) => report.not_owned += 1,
                    Err(CommandError::Quarantined(q)) => report.quarantined.push(q),
                    Err(e) => report.unavailable.push((id.clone(), e.to_string())),
                }
            }
            self.prefetched.clear();
        }
        // What the machines owe goes to the workers again: after a crash it may not have run.
        self.drive(now);
        self.publish_gauges(true);
        report
    }

    /// The shard's loop: until asked to close, take a batch, decide it, commit it, answer it.
    pub(crate) fn run(mut self) -> HandedBack<M::Event> {
        let mut handed_back = Vec::new();
        loop {
            let bound = self.wait_bound();
            let inbox = &self.inner.inboxes[self.index];
            let closing = inbox.take(bound, &mut self.jobs);
            if closing == Some(Closing::HandBack) {
                self.hand_back(&mut handed_back);
                break;
            }
            let now = self.inner.config.clock.now();
            self.batch(now);
            if closing == Some(Closing::Drain)
                && self.inner.inboxes[self.index].lock().jobs.is_empty()
            {
                break;
            }
            if now.saturating_duration_since(self.last_sweep) >= self.sweep_every() {
                self.sweep(now);
            }
        }
        // Postponed commands the machines never took go back to the caller.
        for slot in self.core.slots.values_mut() {
            for cmd in slot.deferred.drain(..) {
                close(&mut self.core.counts, cmd, &mut handed_back);
            }
        }
        self.core.deferred = 0;
        self.publish(&[], 0);
        handed_back
    }

    fn sweep_every(&self) -> Duration {
        (self.inner.config.idle_after / 4).max(Duration::from_millis(10))
    }

    /// How long to sleep when idle: until the next timer is due, and with machines resident
    /// until the next sweep (in real time; a manual clock is swept and its timers fired on
    /// demand, through `KernelHandle::sweep` and `KernelHandle::fire_due_timers`).
    fn wait_bound(&self) -> Option<Duration> {
        let sweep = (!self.core.slots.is_empty()).then(|| self.sweep_every());
        let timer = match self.inner.config.clock {
            crate::queue::Clock::System => self
                .core
                .due
                .next()
                .map(|at| self.core.rules.time.until(Instant::now(), at)),
            _ => None,
        };
        match (sweep, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Answers every command still in the inbox `Closed` and hands it back.
    fn hand_back(&mut self, out: &mut HandedBack<M::Event>) {
        let mut n = 0;
        for job in self.jobs.drain(..) {
            if let Job::Command(cmd) = job {
                n += 1;
                close(&mut self.core.counts, cmd, out);
            }
        }
        self.inner.quiet.done(self.index, n);
    }

    fn batch(&mut self, now: Instant) {
        let taken = self.core.rules.stamp();
        // One look at the store per batch: ownership is asked of it for every command.
        let (_, store) = self.store();
        // Timers due now fire first, ahead of the commands taken with them.
        let fired = self.fire_due(now, &*store);
        let mut commands = fired as u64;
        // Workers' answers without an event, each work in flight until this batch is stored.
        let mut answers = 0;
        let mut fire_replies = Vec::new();
        while let Some(job) = self.jobs.pop_front() {
            match job {
                Job::Command(cmd) => {
                    commands += 1;
                    self.core.work.push_back(cmd);
                }
                Job::Sweep(reply) => {
                    self.sweep(now);
                    reply.send(self.core.slots.len());
                }
                Job::Inspect(id, reader) => match self.ensure_loaded(&id, now, &*store) {
                    Err(e) => reader(Err(e)),
                    Ok(()) => match self.core.slots.get(&id) {
                        Some(slot) => reader(Ok((&slot.machine, slot.seq))),
                        None => reader(Err(CommandError::Closed)),
                    },
                },
                Job::Release(id, reply) => {
                    let was = self.quarantined.remove(&id).is_some();
                    self.publish_quarantine();
                    reply.send(was);
                }
                // Answered once this batch's work is in flight (the effects whose retry came
                // due included), so a caller's `wait_idle` then waits for all of it.
                Job::FireTimers(reply) => fire_replies.push(reply),
                Job::Answer(a) => {
                    answers += 1;
                    // A machine that cannot be loaded now keeps the effect owed in the store:
                    // it is run again when the machine loads.
                    if self.ensure_loaded(&a.id, now, &*store).is_ok() {
                        self.core.answered(&a.id, a.settles, a.retry, now);
                    }
                }
                Job::Owed(id, reply) => reply.send(self.owed_by(&id, now, &*store)),
                Job::Details(id, reply) => reply.send(self.details_of(&id, now, &*store)),
            }
        }
        if commands == 0 && !self.core.has_pending() && !self.core.has_changes() {
            // The next effects count as work in flight before the answers count as done, so
            // `Kernel::wait_idle` never sees a gap between the two.
            self.drive(now);
            self.inner.quiet.done(self.index, answers);
            for reply in fire_replies {
                reply.send(fired);
            }
            self.publish_gauges(false);
            return;
        }
        self.prefetch(now, &*store);
        while let Some(cmd) = self.core.work.pop_front() {
            // Loading is the shell's: the core decides against what is in memory. A command
            // past its deadline is answered `Expired` before its machine is looked at: no read.
            let expired = cmd.request.deadline.is_some_and(|d| now >= d);
            let loaded = if expired {
                Ok(())
            } else {
                self.ensure_loaded(&cmd.id, now, &*store)
            };
            self.core.decide(cmd, now, taken, loaded);
            // Postponed commands a state change replayed are work in flight again.
            let replayed = std::mem::take(&mut self.core.replayed);
            self.inner.quiet.more(self.index, replayed);
        }
        self.prefetched.clear();
        let (failed, persist_ns) = self.commit();
        let ended = self.answer(&failed, persist_ns);
        // The next effects count as work in flight before this batch's work counts as done.
        self.drive(now);
        for reply in fire_replies {
            reply.send(fired);
        }
        self.inner.quiet.done(self.index, ended + answers);
        self.core.compact_index();
    }

    /// Hands each machine's first owed effect that is ready to its worker (see
    /// [`Core::ready`]): only stored effects, one at a time per machine.
    fn drive(&mut self, now: Instant) {
        if self.inner.effect_tx.is_empty() {
            self.core.kicked.clear();
            return;
        }
        let now_ms = self.core.rules.time.floor(now);
        for (id, effect, attempt) in self.core.ready(now_ms) {
            let worker = self.inner.worker_of(id.machine()).unwrap_or(0);
            self.inner.quiet.more(self.index, 1);
            let msg = WorkerMsg::Effect(Run {
                id,
                effect,
                attempt,
                durable: true,
            });
            if self.inner.effect_tx[worker].send(msg).is_err() {
                // The worker thread is gone (shutdown): the effect stays owed in the store.
                self.inner.quiet.done(self.index, 1);
            }
        }
    }

    /// What machine `id` owes now, loading it if needed.
    fn owed_by(
        &mut self,
        id: &MachineId,
        now: Instant,
        store: &dyn SnapshotStore,
    ) -> Result<Vec<OwedEffect>, CommandError> {
        self.ensure_loaded(id, now, store)?;
        let Some(slot) = self.core.slots.get(id) else {
            return Err(CommandError::Closed);
        };
        Ok(slot
            .outbox
            .iter()
            .flat_map(|o| o.iter())
            .map(|o| o.listed(id))
            .collect())
    }

    /// Machine `id`'s armed timers (soonest first, with their events' names) and the keys
    /// of its journal.
    fn details_of(
        &mut self,
        id: &MachineId,
        now: Instant,
        store: &dyn SnapshotStore,
    ) -> Result<super::inbox::Details, CommandError> {
        self.ensure_loaded(id, now, store)?;
        let Some(slot) = self.core.slots.get(id) else {
            return Err(CommandError::Closed);
        };
        let rules = &self.core.rules;
        let mut timers: Vec<crate::kernel::ArmedTimer> = slot
            .timers
            .iter()
            .flat_map(|t| t.armed.armed.iter())
            .map(|a| {
                let event = match &a.event {
                    // A state timeout fires the event the table declares for the state.
                    None => M::TABLE
                        .state(slot.machine.state())
                        .and_then(|s| s.state_timeout())
                        .map(|t| M::TABLE.event_name(t.event)),
                    Some(bytes) => rules
                        .timer_events
                        .as_ref()
                        .and_then(|c| (c.decode)(bytes).ok())
                        .map(|e| M::TABLE.event_name(crate::machine::Event::id(&e))),
                };
                crate::kernel::ArmedTimer {
                    kind: a.kind.clone(),
                    deadline_ms: a.deadline,
                    after_ms: a.after,
                    event,
                }
            })
            .collect();
        timers.sort_by_key(|t| t.deadline_ms);
        let keys = slot
            .journal
            .iter()
            .map(|e| crate::kernel::AppliedKey {
                key: e.key.as_str().to_owned(),
                seq: e.seq,
                transition: Some(e.transition),
            })
            .collect();
        Ok((timers, keys))
    }

    /// Reads, in one [`SnapshotStore::get_many`], the machines the batch's commands need that
    /// are not in memory, so that a store can serve them together (one read transaction, one
    /// round trip) instead of one read per machine in the middle of deciding.
    fn prefetch(&mut self, now: Instant, store: &dyn SnapshotStore) {
        // Most batches are of machines in memory: nothing is cloned or hashed for them.
        let (slots, quarantined) = (&self.core.slots, &self.quarantined);
        let mut seen: HashSet<&MachineId> = HashSet::new();
        let wanted: Vec<MachineId> = self
            .core
            .work
            .iter()
            .filter(|cmd| cmd.request.deadline.is_none_or(|d| now < d))
            .filter(|cmd| !slots.contains_key(&cmd.id) && !quarantined.contains_key(&cmd.id))
            .filter(|cmd| seen.insert(&cmd.id))
            .map(|cmd| cmd.id.clone())
            .collect();
        if wanted.len() >= 2 {
            self.read_ahead(wanted, store);
        }
    }

    /// Reads ahead, with one `get_many`, those of `ids` (distinct) that are not in memory and
    /// not quarantined. Each machine's ownership epoch is asked first, as
    /// [`Shard::ensure_loaded`] asks it before a read; a read-ahead is used only if the epoch
    /// is the same when the machine is loaded.
    fn read_ahead(&mut self, ids: Vec<MachineId>, store: &dyn SnapshotStore) {
        let mut wanted: Vec<(MachineId, u64)> = Vec::new();
        for id in ids {
            if self.core.slots.contains_key(&id) || self.quarantined.contains_key(&id) {
                continue;
            }
            // A machine the store says this node does not own is not read: loading answers it.
            if let Ok(epoch) = store.owner_epoch(&id) {
                wanted.push((id, epoch));
            }
        }
        // One machine gains nothing from reading ahead.
        if wanted.len() < 2 {
            return;
        }
        let ids: Vec<&MachineId> = wanted.iter().map(|(id, _)| id).collect();
        let read = store.get_many(&ids);
        if read.len() != ids.len() {
            // A store that broke `get_many`'s contract: read one by one, as without it.
            return;
        }
        for ((id, epoch), result) in wanted.into_iter().zip(read) {
            self.prefetched.insert(id, (epoch, result));
        }
    }

    /// Makes sure machine `id` is in memory and this node still owns it, loading it from the
    /// store (or creating it) on first use and again when its ownership epoch changed.
    ///
    /// A machine the store says another node owns is dropped (its postponed commands handed
    /// back) unless it changed in this batch: then the commit decides, and the store's
    /// fencing refuses it if it is stale.
    fn ensure_loaded(
        &mut self,
        id: &MachineId,
        now: Instant,
        store: &dyn SnapshotStore,
    ) -> Result<(), CommandError> {
        // Most shards quarantine nothing: no hashing of the id for an empty set.
        if let Some(q) = (!self.quarantined.is_empty())
            .then(|| self.quarantined.get(id))
            .flatten()
        {
            return Err(CommandError::Quarantined(q.clone()));
        }
        let epoch = match store.owner_epoch(id) {
            Ok(epoch) => epoch,
            Err(e) => {
                let fenced = e.is_fenced();
                let error = if fenced {
                    CommandError::Fenced {
                        id: id.clone(),
                        error: Arc::new(e),
                    }
                } else {
                    CommandError::Unavailable {
                        id: id.clone(),
                        error: Arc::new(e),
                    }
                };
                if fenced && self.core.slots.get(id).is_some_and(|s| !s.dirty) {
                    self.evict(id, &error);
                }
                return Err(error);
            }
        };
        match self.core.slots.get(id) {
            Some(slot) if slot.epoch == epoch || slot.dirty => return Ok(()),
            Some(slot) => {
                // Owned again, under a newer epoch: the machine may have moved on elsewhere
                // in between, and what was postponed here belongs to the ended tenure.
                let error = CommandError::Fenced {
                    id: id.clone(),
                    error: Arc::new(StoreError::Fenced {
                        id: id.clone(),
                        held: Some(slot.epoch),
                        current: Some(epoch),
                    }),
                };
                self.evict(id, &error);
            }
            None => {}
        }
        let slot = self.load(id, now, epoch)?;
        self.core.insert(id, slot);
        Ok(())
    }

    /// Drops machine `id` from memory (see [`Core::evict`]); its postponed commands are work in
    /// flight again until the batch answers them.
    fn evict(&mut self, id: &MachineId, error: &CommandError) {
        let now_ms = self.core.rules.time.floor(self.inner.config.clock.now());
        let n = self.core.evict(id, error, now_ms);
        self.inner.quiet.more(self.index, n);
    }

    /// Reads machine `id` from the store: its newest snapshot, decoded and validated, with
    /// its journal; or the initial state if the store holds none.
    fn load(&mut self, id: &MachineId, now: Instant, epoch: u64) -> Result<Slot<M>, CommandError> {
        let mut reopened = false;
        // A read-ahead under the same epoch stands for the read; one that failed otherwise
        // than "not found" is read again, so its error is handled as a read's is.
        let mut ahead = match self.prefetched.remove(id) {
            Some((at, result)) if at == epoch => match result {
                Ok(s) => Some(Ok(s)),
                Err(e @ StoreError::NotFound { .. }) => Some(Err(e)),
                Err(_) => None,
            },
            _ => None,
        };
        let snapshot = loop {
            let (generation, store) = self.store();
            let read = match ahead.take() {
                Some(read) => read,
                None => store.get(id),
            };
            match read {
                Ok(s) => break Some(s),
                Err(StoreError::NotFound { .. }) => break None,
                Err(e @ StoreError::Corrupt { .. }) => {
                    return Err(self.quarantine(id, QuarantineCause::Corrupt(e)))
                }
                Err(e) if !reopened && e.is_poisoned() && self.inner.store.reopen(generation) => {
                    reopened = true;
                }
                Err(e) => {
                    return Err(CommandError::Unavailable {
                        id: id.clone(),
                        error: Arc::new(e),
                    })
                }
            }
        };
        let rules = &self.core.rules;
        let Some(snapshot) = snapshot else {
            let machine = (self.inner.initial)(id);
            if machine.state() != M::TABLE.initial() {
                return Err(CommandError::InvalidInitial {
                    id: id.clone(),
                    problem: format!(
                        "the kernel's initial function gave state `{}`, the table's initial state is `{}`",
                        machine.state_name(),
                        M::TABLE.state_name(M::TABLE.initial())
                    ),
                });
            }
            if let Err(invalid) = machine.validate() {
                return Err(CommandError::InvalidInitial {
                    id: id.clone(),
                    problem: invalid.to_string(),
                });
            }
            // Nothing armed yet: the first command the machine accepts enters its initial
            // state (`Core::decide` arms that state's timeout then).
            return Ok(Slot::new(
                machine,
                Journal::default(),
                None,
                epoch,
                now,
                None,
            ));
        };
        let machine = match self.inner.codec.decode(&snapshot) {
            Ok(m) => m,
            Err(e) => return Err(self.quarantine(id, QuarantineCause::Decode(e))),
        };
        let journal = match snapshot.journal() {
            None => Journal::default(),
            Some(bytes) => match Journal::decode(bytes, M::TABLE) {
                Ok(j) => j,
                Err(e) => return Err(self.quarantine(id, QuarantineCause::Section(e))),
            },
        };
        let timers = match fire::restore::<M>(rules, &snapshot, &machine, now) {
            Ok(timers) => timers,
            Err(e) => return Err(self.quarantine(id, QuarantineCause::Section(e))),
        };
        let outbox = match snapshot.outbox() {
            None => Outbox::new(),
            Some(bytes) => {
                let decode = rules.effects.as_ref().map(|e| e.codec.decode);
                match outbox::decode_section(bytes, decode) {
                    Ok(outbox) => outbox,
                    Err(e) => return Err(self.quarantine(id, QuarantineCause::Section(e))),
                }
            }
        };
        Ok(Slot::new(machine, journal, Some(snapshot.seq()), epoch, now, timers).owing(outbox))
    }

    fn quarantine(&mut self, id: &MachineId, cause: QuarantineCause) -> CommandError {
        let q = Arc::new(Quarantined {
            id: id.clone(),
            cause,
        });
        #[cfg(feature = "tracing")]
        tracing::error!(machine = %id, cause = %q.cause, "fsm.quarantined");
        self.quarantined.insert(id.clone(), q.clone());
        self.publish_quarantine();
        CommandError::Quarantined(q)
    }

    fn publish_quarantine(&self) {
        let mut stats = self.inner.stats[self.index].lock().recover();
        stats.quarantine = self.quarantined.values().cloned().collect();
        stats.quarantined = self.quarantined.len();
    }

    /// Stores every machine the core changed in this batch with one `put_many`. Returns the
    /// machines whose change did not hold, with the error their commands get, and the time
    /// it took.
    fn commit(&mut self) -> (HashMap<MachineId, CommandError>, u64) {
        let mut failed = HashMap::new();
        let writes = self.core.writes(&self.inner.codec);
        if writes.is_empty() {
            return (failed, 0);
        }
        let mut snapshots: Vec<(MachineId, Option<u64>, Snapshot)> =
            Vec::with_capacity(writes.len());
        for (id, expected, encoded) in writes {
            match encoded {
                Ok(snapshot) => snapshots.push((id, expected, snapshot)),
                Err(error) => {
                    failed.insert(id, error);
                }
            }
        }
        let started = self.core.rules.stamp();
        let (generation, store) = self.store();
        let mut result = put_all(&*store, &snapshots);
        if matches!(result, Err(ref e) if e.is_fenced()) {
            // The store refused the batch because another node owns some of its machines:
            // those stop being served here, the rest is stored on its own.
            let error = Arc::new(result.unwrap_err());
            let (mut lost, mut kept): (Vec<_>, Vec<_>) =
                snapshots.into_iter().partition(|(id, _, _)| {
                    let loaded = self.core.slots.get(id).map(|s| s.epoch);
                    store.owner_epoch(id).ok() != loaded
                });
            if lost.is_empty() {
                // The store cannot tell which: none of the batch holds.
                std::mem::swap(&mut lost, &mut kept);
            }
            for (id, _, _) in lost {
                let e = CommandError::Fenced {
                    id: id.clone(),
                    error: error.clone(),
                };
                failed.insert(id, e);
            }
            snapshots = kept;
            result = put_all(&*store, &snapshots);
        }
        let persist_ns = self.core.rules.nanos(started, self.core.rules.stamp());
        match result {
            Ok(()) => {
                let mut stats = self.inner.stats[self.index].lock().recover();
                stats.commits += 1;
                stats.snapshots += snapshots.len() as u64;
                drop(stats);
                for (id, _, snapshot) in &snapshots {
                    self.core.stored(id, snapshot);
                }
            }
            Err(e) => {
                let unknown = e.is_outcome_unknown() || e.is_poisoned();
                #[cfg(feature = "tracing")]
                tracing::error!(error = %e, machines = snapshots.len(), outcome_unknown = unknown, "fsm.commit_failed");
                let probe = snapshots.first().map(|(id, _, _)| id.clone());
                let error = Arc::new(e);
                for (id, _, _) in snapshots {
                    let e = if unknown {
                        CommandError::OutcomeUnknown {
                            id: id.clone(),
                            error: error.clone(),
                        }
                    } else {
                        CommandError::NotStored {
                            id: id.clone(),
                            error: error.clone(),
                        }
                    };
                    failed.insert(id, e);
                }
                // A store that stopped (poisoned) is reopened before the machines reload.
                if let Some(probe) = probe {
                    let stopped = error.is_poisoned()
                        || matches!(store.sequence(&probe), Err(ref p) if p.is_poisoned());
                    if stopped {
                        self.inner.store.reopen(generation);
                    }
                }
            }
        }
        // Machines whose change did not hold go back to their last durable state: they are
        // dropped and reloaded from the store on next use (which, after an unknown outcome,
        // is the recovery). Their postponed commands get the same answer.
        for (id, error) in &failed {
            self.evict(id, error);
        }
        (failed, persist_ns)
    }

    /// Hands out what the core settled: commands for other nodes to the caller, answers,
    /// trace, counts; then the committed effects that are not owed to the workers. Returns
    /// how many commands' work ended: the caller counts them done once the owed effects
    /// they made ready are handed out too ([`Shard::drive`]).
    fn answer(&mut self, failed: &HashMap<MachineId, CommandError>, persist_ns: u64) -> usize {
        if !self.core.to_owner.is_empty() {
            self.inner
                .handed_back
                .lock()
                .recover()
                .append(&mut self.core.to_owner);
        }
        let answered_at = self.core.rules.stamp();
        let at = self
            .inner
            .config
            .clock
            .now()
            .saturating_duration_since(self.inner.started);
        let tracing_on = self.inner.trace.enabled();
        let settled = self
            .core
            .settle(failed, persist_ns, at, answered_at, tracing_on);
        // The effects about to be handed out count as work in flight before the answers
        // count as done, so `Kernel::wait_idle` never sees a gap between the two.
        if !self.inner.effect_tx.is_empty() {
            self.inner.quiet.more(self.index, settled.effects.len());
        }
        if tracing_on {
            self.inner.trace.extend(self.index, settled.trace);
        }
        // Counts first, so a submitter that reads the metrics after its answer sees it.
        self.publish(&settled.latencies, persist_ns);
        // Every answer set before anyone is woken (see `Reply::send_later`).
        let mut wakes = Wakes::default();
        for (reply, outcome) in settled.replies {
            reply.send_later(outcome, &mut wakes);
        }
        wakes.wake();
        // Effects after every answer: the transitions they come from are durable.
        if !settled.effects.is_empty() {
            self.dispatch(settled.effects);
        }
        settled.ended
    }

    /// Hands effects that are not owed (at most once) to their workers.
    fn dispatch(&mut self, effects: Vec<(EffectId, M::Effect)>) {
        let workers = &self.inner.effect_tx;
        if workers.is_empty() {
            return;
        }
        for (id, effect) in effects {
            let worker = self.inner.worker_of(id.machine()).unwrap_or(0);
            let msg = WorkerMsg::Effect(Run {
                id,
                effect,
                attempt: 1,
                durable: false,
            });
            if workers[worker].send(msg).is_err() {
                // The worker thread is gone (shutdown): the effect is abandoned.
                self.inner.quiet.done(self.index, 1);
            }
        }
    }

    /// Evicts machines idle for `idle_after` that hold nothing (no postponed commands);
    /// expires postponed commands whose deadline passed.
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        let idle_after = self.inner.config.idle_after;
        let mut expired = Vec::new();
        for slot in self.core.slots.values_mut() {
            if slot
                .deferred
                .iter()
                .any(|c| c.request.deadline.is_some_and(|d| now >= d))
            {
                let from = M::TABLE.state_name(slot.machine.state());
                let (keep, gone): (VecDeque<_>, VecDeque<_>) = slot
                    .deferred
                    .drain(..)
                    .partition(|c| c.request.deadline.is_none_or(|d| now < d));
                slot.deferred = keep;
                expired.extend(gone.into_iter().map(|cmd| (cmd, from)));
            }
        }
        if !expired.is_empty() {
            // In flight again until answered, with the rest of the batch's answers.
            self.core.deferred -= expired.len() as u64;
            self.inner.quiet.more(self.index, expired.len());
            for (cmd, from) in expired {
                self.core.fail(cmd, from, CommandError::Expired);
            }
            let ended = self.answer(&HashMap::new(), 0);
            self.inner.quiet.done(self.index, ended);
        }
        // Evicted machines keep their timers: their entries stay in the shard's index.
        // Machines that owe effects stay: their worker's answer is decided against them.
        self.core.slots.retain(|_, s| {
            s.dirty
                || !s.deferred.is_empty()
                || s.outbox.is_some()
                || s.timers.as_ref().is_some_and(|t| !t.firing.is_empty())
                || now.saturating_duration_since(s.last_used) < idle_after
        });
        self.publish_gauges(true);
    }

    /// Publishes the shard's levels; with `scan`, also how old its oldest owed effect is (a
    /// pass over the machines in memory: on start and on the sweep's schedule).
    fn publish_gauges(&mut self, scan: bool) {
        let oldest = self.oldest_owed(scan);
        let mut stats = self.inner.stats[self.index].lock().recover();
        if let Some(oldest) = oldest {
            stats.oldest_owed_since = oldest;
        }
        stats.resident = self.core.slots.len();
        stats.quarantined = self.quarantined.len();
        stats.timer_entries = self.core.due.len();
        stats.counts.deferred = self.core.deferred;
        stats.counts.owed = self.core.owed;
    }

    /// When the oldest owed effect was first owed: `Some(None)` when nothing is owed, `None`
    /// when that is not looked at now (without `scan`).
    fn oldest_owed(&self, scan: bool) -> Option<Option<u64>> {
        if self.core.owed == 0 {
            return Some(None);
        }
        if !scan {
            return None;
        }
        Some(
            self.core
                .slots
                .values()
                .filter_map(|s| s.outbox.as_ref()?.front().map(|o| o.since))
                .min(),
        )
    }

    /// Adds this batch's counts and latencies to the shard's published stats.
    fn publish(&mut self, latencies: &[(u64, u64, u64)], persist_ns: u64) {
        let mut stats = self.inner.stats[self.index].lock().recover();
        let c = std::mem::take(&mut self.core.counts);
        stats.counts.add(&c);
        if self.core.edges_counted {
            self.core.edges_counted = false;
            let edges = &mut self.core.edges;
            if stats.transitions.len() < edges.len() {
                stats.transitions.resize(edges.len(), 0);
            }
            for (total, n) in stats.transitions.iter_mut().zip(edges.iter_mut()) {
                *total += std::mem::take(n);
            }
        }
        // `deferred` and `owed` are levels, kept by the shard, not counts.
        stats.counts.deferred = self.core.deferred;
        stats.counts.owed = self.core.owed;
        if self.core.owed == 0 {
            stats.oldest_owed_since = None;
        } else if stats.oldest_owed_since.is_none() {
            // Owed since the last scan at the earliest: the sweep's scan makes it exact.
            stats.oldest_owed_since =
                Some(self.core.rules.time.floor(self.inner.config.clock.now()));
        }
        if self.inner.config.latency {
            for &(wait, apply, end) in latencies {
                stats.hist.wait.saturating_record(wait.max(1));
                stats.hist.apply.saturating_record(apply.max(1));
                stats.hist.end_to_end.saturating_record(end.max(1));
            }
            if persist_ns > 0 {
                stats.hist.persist.saturating_record(persist_ns);
            }
        }
        if !latencies.is_empty() {
            stats.hist.batch.saturating_record(latencies.len() as u64);
        }
        stats.resident = self.core.slots.len();
        stats.quarantined = self.quarantined.len();
        stats.timer_entries = self.core.due.len();
    }
}

/// Answers a command the closing shard will not decide `Closed`, counts it, and hands its
/// request back to the caller (unless a worker fed it back).
fn close<M: Durable>(
    counts: &mut crate::kernel::stats::KernelCounts,
    cmd: Cmd<M>,
    out: &mut HandedBack<M::Event>,
) {
    let outcome = Err(CommandError::Closed);
    let fed_back = cmd.reply.is_none();
    core::count(counts, &outcome, fed_back, cmd.fire.is_some());
    let id = cmd.id.clone();
    let request = cmd.answer(outcome);
    if !fed_back {
        out.push((id, request));
    }
}

/// Stores a batch's snapshots with one `put_many` (nothing to do for none).
fn put_all(
    store: &dyn SnapshotStore,
    snapshots: &[(MachineId, Option<u64>, Snapshot)],
) -> Result<(), StoreError> {
    if snapshots.is_empty() {
        return Ok(());
    }
    let puts: Vec<Put<'_>> = snapshots
        .iter()
        .map(|(id, expected, s)| Put::new(id, *expected, s))
        .collect();
    store.put_many(&puts)
}
