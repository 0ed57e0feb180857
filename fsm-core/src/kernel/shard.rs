//! A shard: one thread owning a set of machines (those whose id hashes to it), their registry,
//! and the loop apply -> group commit -> acknowledge -> effects.

use std::collections::{HashMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use crate::effects::Effects;
use std::convert::Infallible;

use crate::machine::{settle, Event, Stop, Transition};
use crate::queue::{DelegateCause, DumpCause, Reply, Route};
use crate::rejection::{Reason, Refusal, Rejection};
use crate::store::{MachineId, Put, Snapshot, SnapshotStore, StoreError};

use super::inbox::{Closing, Cmd, Fire, Job};
use super::journal::{Entry, Journal};
use super::outcome::{CommandError, Committed, Outcome, QuarantineCause, Quarantined};
use super::request::{IdempotencyKey, Request};
use super::stats::KernelCounts;
use super::supervisor::WorkerMsg;
use super::timers::TimerIndex;
use super::trace::{TraceEntry, TraceOutcome};
use super::{Durable, Inner, RecoveryReport};
use crate::timer::Timers;

mod fire;

/// One machine in memory.
struct Slot<M: Durable> {
    machine: M,
    journal: Journal,
    /// The sequence of the newest durable snapshot (`None`: never stored).
    seq: Option<u64>,
    /// The store's ownership epoch when the machine was loaded: under another epoch, another
    /// owner may have moved it on, so it is loaded again.
    epoch: u64,
    /// Changed in this batch and not yet stored.
    dirty: bool,
    /// Commands postponed by `defer(..)`, oldest first.
    deferred: VecDeque<Cmd<M>>,
    last_used: Instant,
    /// Armed timers, if any (most machines have none: one pointer).
    timers: Option<Box<SlotTimers>>,
}

/// A resident machine's armed timers (as stored: events encoded) and which of them have a
/// firing on its way (queued or postponed), so they are not fired twice meanwhile.
#[derive(Clone, Debug, Default)]
struct SlotTimers {
    armed: Timers<Box<[u8]>>,
    firing: Vec<u64>,
    /// The deadline of this machine's entry in the shard's index, if it has one not yet
    /// taken: a deadline moved later needs no new entry (the earlier one comes up first and
    /// the machine is indexed again then), so re-arming never grows the index.
    indexed: Option<u64>,
}

impl SlotTimers {
    /// Makes sure the index holds an entry no later than this machine's first deadline.
    fn reindex(&mut self, id: &MachineId, due: &mut TimerIndex) {
        if let Some(first) = self.earliest_waiting() {
            if self.indexed.is_none_or(|at| first < at) {
                due.schedule(id, first);
                self.indexed = Some(first);
            }
        }
    }

    /// The earliest deadline of a timer without a firing on its way.
    fn earliest_waiting(&self) -> Option<u64> {
        self.armed
            .armed
            .iter()
            .filter(|a| !self.firing.contains(&a.instance))
            .map(|a| a.deadline)
            .min()
    }
}

impl<M: Durable> Slot<M> {
    fn next_seq(&self) -> u64 {
        self.seq.map_or(1, |s| s + 1)
    }
}

/// What the machine decided for one command, before the group commit says whether it holds.
enum Decision<F> {
    Applied {
        transition: Transition,
        seq: u64,
        effects: Vec<F>,
    },
    Duplicate {
        transition: Transition,
        seq: u64,
    },
    Rejected(Rejection),
    Deferred,
    Failed(CommandError),
}

/// A decided command waiting for the batch's commit.
struct Pending<M: Durable> {
    id: MachineId,
    reply: Option<Reply<Outcome>>,
    fed_back: bool,
    decision: Decision<M::Effect>,
    /// Decided against a state not yet stored: void if the machine's commit fails.
    after_change: bool,
    /// A timer's firing (counted apart from submitted and fed-back commands).
    timer: bool,
    from: &'static str,
    event: &'static str,
    enqueued: u64,
    taken: u64,
    apply_ns: u64,
}

/// A command split into its event and everything else.
struct Shell {
    id: MachineId,
    key: Option<IdempotencyKey>,
    deadline: Option<Instant>,
    enqueued: u64,
    reply: Option<Reply<Outcome>>,
    fire: Option<Box<Fire>>,
}

impl Shell {
    fn split<M: Durable>(cmd: Cmd<M>) -> (M::Event, Shell) {
        let Cmd {
            id,
            request,
            enqueued,
            reply,
            fire,
        } = cmd;
        let Request {
            event,
            key,
            deadline,
        } = request;
        (
            event,
            Shell {
                id,
                key,
                deadline,
                enqueued,
                reply,
                fire,
            },
        )
    }

    fn join<M: Durable>(self, event: M::Event) -> Cmd<M> {
        Cmd {
            id: self.id,
            request: Request {
                event,
                key: self.key,
                deadline: self.deadline,
            },
            enqueued: self.enqueued,
            reply: self.reply,
            fire: self.fire,
        }
    }
}

pub(crate) struct Shard<M: Durable> {
    index: usize,
    inner: Arc<Inner<M>>,
    slots: HashMap<MachineId, Slot<M>>,
    quarantined: HashMap<MachineId, Arc<Quarantined>>,
    jobs: VecDeque<Job<M>>,
    work: VecDeque<Cmd<M>>,
    pending: Vec<Pending<M>>,
    /// Machines changed in this batch, in the order they first changed.
    changed: Vec<MachineId>,
    effects: Effects<M::Effect>,
    /// What each state does with each event, precomputed from the table (as the queue does),
    /// and the number of events (the row length).
    routes: Box<[Route]>,
    events: usize,
    /// Counts since the last publication.
    counts: KernelCounts,
    /// Commands postponed now, over all machines (a level, not a count).
    deferred: u64,
    last_sweep: Instant,
    /// When this shard's machines' timers are due.
    due: TimerIndex,
    /// The timer rules' working buffer, kept between commands.
    timer_steps: Vec<crate::timer::Step<Box<[u8]>>>,
    /// This shard's handle on the kernel's store (refreshed when it is reopened).
    store: (u64, Arc<dyn SnapshotStore>),
    /// The transitions of the command being decided (its own, then its raised events'), each
    /// with the number of timer requests held when it ended.
    chain: Vec<(Transition, usize)>,
}

/// What a shard hands back when it stops.
pub(crate) type HandedBack<E> = Vec<(MachineId, Request<E>)>;

impl<M: Durable> Shard<M> {
    pub(crate) fn new(index: usize, inner: Arc<Inner<M>>) -> Self {
        let now = inner.config.clock.now();
        let store = inner.store.current();
        Shard {
            index,
            inner,
            slots: HashMap::new(),
            quarantined: HashMap::new(),
            jobs: VecDeque::new(),
            work: VecDeque::new(),
            pending: Vec::new(),
            changed: Vec::new(),
            effects: Effects::new(),
            routes: crate::queue::routes(M::TABLE),
            events: M::TABLE.events().len(),
            counts: KernelCounts::default(),
            deferred: 0,
            last_sweep: now,
            due: TimerIndex::default(),
            timer_steps: Vec::new(),
            store,
            chain: Vec::new(),
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
        for id in ids {
            match self.ensure_loaded(&id, now, &*store) {
                Ok(()) => report.recovered += 1,
                Err(CommandError::Fenced { .. }) => report.not_owned += 1,
                Err(CommandError::Quarantined(q)) => report.quarantined.push(q),
                Err(e) => report.unavailable.push((id, e.to_string())),
            }
        }
        self.publish_gauges();
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
        for slot in self.slots.values_mut() {
            for cmd in slot.deferred.drain(..) {
                self.counts.closed += 1;
                let id = cmd.id.clone();
                let fed_back = cmd.reply.is_none();
                let request = cmd.answer(Err(CommandError::Closed));
                if !fed_back {
                    handed_back.push((id, request));
                }
            }
        }
        self.deferred = 0;
        self.publish(&[], 0);
        handed_back
    }

    fn sweep_every(&self) -> Duration {
        (self.inner.config.idle_after / 4).max(Duration::from_millis(10))
    }

    /// How long to sleep when idle: until the next timer is due, and with machines resident
    /// until the next sweep (in real time; a manual clock is swept and its timers fired on
    /// demand, through `Kernel::sweep` and `Kernel::fire_due_timers`).
    fn wait_bound(&self) -> Option<Duration> {
        let sweep = (!self.slots.is_empty()).then(|| self.sweep_every());
        let timer = match self.inner.config.clock {
            crate::queue::Clock::System => self
                .due
                .next()
                .map(|at| self.inner.time.until(Instant::now(), at)),
            _ => None,
        };
        match (sweep, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn hand_back(&mut self, out: &mut HandedBack<M::Event>) {
        let mut n = 0;
        for job in self.jobs.drain(..) {
            if let Job::Command(cmd) = job {
                n += 1;
                self.counts.closed += 1;
                let id = cmd.id.clone();
                let fed_back = cmd.reply.is_none();
                let request = cmd.answer(Err(CommandError::Closed));
                if !fed_back {
                    out.push((id, request));
                }
            }
        }
        self.inner.quiet.done(self.index, n);
    }

    fn batch(&mut self, now: Instant) {
        let taken = self.inner.stamp();
        // One look at the store per batch: ownership is asked of it for every command.
        let (_, store) = self.store();
        // Timers due now fire first, ahead of the commands taken with them.
        let fired = self.fire_due(now, &*store);
        let mut commands = fired as u64;
        while let Some(job) = self.jobs.pop_front() {
            match job {
                Job::Command(cmd) => {
                    commands += 1;
                    self.work.push_back(cmd);
                }
                Job::Sweep(reply) => {
                    self.sweep(now);
                    reply.send(self.slots.len());
                }
                Job::Inspect(id, reader) => match self.ensure_loaded(&id, now, &*store) {
                    Err(e) => reader(Err(e)),
                    Ok(()) => match self.slots.get(&id) {
                        Some(slot) => reader(Ok((&slot.machine, slot.seq))),
                        None => reader(Err(CommandError::Closed)),
                    },
                },
                Job::Release(id, reply) => {
                    let was = self.quarantined.remove(&id).is_some();
                    self.publish_quarantine();
                    reply.send(was);
                }
                Job::FireTimers(reply) => reply.send(fired),
            }
        }
        if commands == 0 && self.pending.is_empty() {
            self.publish_gauges();
            return;
        }
        while let Some(cmd) = self.work.pop_front() {
            self.decide(cmd, now, taken, &*store);
        }
        let (failed, persist_ns) = self.commit();
        self.answer(&failed, persist_ns);
        self.compact_index();
    }

    /// Runs one command against its machine (loading it if needed) and records the decision.
    fn decide(&mut self, cmd: Cmd<M>, now: Instant, taken: u64, store: &dyn SnapshotStore) {
        let (event, mut shell) = Shell::split(cmd);
        let event_name = event.name();
        #[cfg(feature = "tracing")]
        let _span =
            tracing::debug_span!("fsm.command", machine = %shell.id, event = event_name).entered();
        let mut pending = Pending {
            id: shell.id.clone(),
            reply: None,
            fed_back: shell.reply.is_none(),
            decision: Decision::Deferred,
            after_change: false,
            timer: shell.fire.is_some(),
            from: "-",
            event: event_name,
            enqueued: shell.enqueued,
            taken,
            apply_ns: 0,
        };
        if shell.deadline.is_some_and(|d| now >= d) {
            pending.reply = shell.reply;
            pending.decision = Decision::Failed(CommandError::Expired);
            self.pending.push(pending);
            return;
        }
        if let Err(e) = self.ensure_loaded(&shell.id, now, store) {
            if shell.fire.is_some() {
                // Not fired here: the timer stays armed in the store, for the machine's next
                // load (here once it is loadable, or at its owner).
                self.inner.quiet.done(self.index, 1);
                return;
            }
            let mut cmd = shell.join(event);
            pending.reply = cmd.reply.take();
            if e.is_fenced() {
                // Not applied: the request goes back to the caller, for the owner.
                self.route_to_owner(cmd);
            }
            pending.decision = Decision::Failed(e);
            self.pending.push(pending);
            return;
        }
        let Some(slot) = self.slots.get_mut(&shell.id) else {
            // Loaded just above; nothing else removes it in between.
            return;
        };
        slot.last_used = now;
        let state = slot.machine.state();
        pending.from = M::TABLE.state_name(state);
        pending.after_change = slot.dirty;
        if let Some(fire) = shell.fire.as_deref() {
            // A firing applies only while its arming is armed: a timer cancelled or re-armed
            // since it came due does not fire (and one already fired is no longer armed).
            if !slot
                .timers
                .as_ref()
                .is_some_and(|t| t.armed.is_armed(&fire.kind, fire.instance))
            {
                if let Some(t) = slot.timers.as_mut() {
                    t.firing.retain(|&i| i != fire.instance);
                }
                self.inner.quiet.done(self.index, 1);
                return;
            }
        }
        if let Some(entry) = shell
            .key
            .as_ref()
            .filter(|_| shell.fire.is_none())
            .and_then(|k| slot.journal.find(k))
        {
            pending.reply = shell.reply;
            pending.decision = Decision::Duplicate {
                transition: entry.transition,
                seq: entry.seq,
            };
            self.pending.push(pending);
            return;
        }
        let state_name = pending.from;
        match self.routes[state.index() * self.events + event.id().index()] {
            Route::Defer => {
                if slot.deferred.len() < self.inner.config.defer_limit {
                    slot.deferred.push_back(shell.join(event));
                    self.deferred += 1;
                    // Traced now, and no longer work in flight once the batch is published;
                    // answered when a state change replays it.
                    self.pending.push(pending);
                } else {
                    pending.reply = shell.reply;
                    pending.decision =
                        Decision::Failed(CommandError::Dumped(DumpCause::DeferLimit));
                    self.pending.push(pending);
                }
                return;
            }
            Route::Dump => {
                if let Some(fire) = shell.fire.take() {
                    consume_fire(slot, &fire, &shell.id, &mut self.changed, &mut self.due);
                }
                pending.reply = shell.reply;
                pending.decision = Decision::Failed(CommandError::Dumped(DumpCause::StatePolicy {
                    state: state_name,
                }));
                self.pending.push(pending);
                return;
            }
            Route::Delegate => {
                if let Some(fire) = shell.fire.take() {
                    consume_fire(slot, &fire, &shell.id, &mut self.changed, &mut self.due);
                }
                let cause = DelegateCause::StatePolicy { state: state_name };
                let refused = match &self.inner.overflow {
                    Some(sink) => sink.delegate((shell.id.clone(), event), &cause).is_err(),
                    None => true,
                };
                pending.reply = shell.reply;
                pending.decision = Decision::Failed(if refused {
                    CommandError::Dumped(DumpCause::OverflowRefused)
                } else {
                    CommandError::Delegated(cause)
                });
                self.pending.push(pending);
                return;
            }
            Route::Apply => {}
        }
        // Empty here: every decision drains or clears it.
        debug_assert!(self.effects.is_empty());
        let started = self.inner.stamp();
        let event_id = event.id();
        let machine = &slot.machine;
        let effects = &mut self.effects;
        let chain = &mut self.chain;
        chain.clear();
        // The command's transition and those of the events it raises are one step; each
        // step's timer requests are applied after it in order, so where they end is noted.
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            settle(machine, event, effects, |t, fx| {
                chain.push((*t, fx.timers().len()));
                Ok::<(), Infallible>(())
            })
        }));
        pending.apply_ns = self.inner.nanos(started, self.inner.stamp());
        pending.reply = shell.reply;
        let fire = shell.fire.take();
        let result = result.map(|r| {
            r.map_err(|stop| match stop {
                Stop::Rejected(r) => r,
                Stop::Step(never) => match never {},
            })
        });
        match result {
            Ok(Ok((next, transition))) => {
                if let Some(fire) = &fire {
                    // The firing is spent whatever the transition's own timer requests meet.
                    consume_fire(slot, fire, &shell.id, &mut self.changed, &mut self.due);
                }
                let timers = if self.chain.len() == 1 {
                    fire::after_transition::<M>(
                        &self.inner,
                        &mut self.timer_steps,
                        &mut slot.timers,
                        &transition,
                        self.effects.drain_timers(),
                        now,
                    )
                } else {
                    self.counts.raised += self.chain.len() as u64 - 1;
                    fire::after_chain::<M>(
                        &self.inner,
                        &mut self.timer_steps,
                        &mut slot.timers,
                        &self.chain,
                        &mut self.effects,
                        now,
                    )
                };
                if let Err(e) = timers {
                    // Not applied: the machine and its timers stay as they were.
                    self.effects.clear();
                    pending.decision = Decision::Failed(CommandError::Timer(e));
                    self.pending.push(pending);
                    return;
                }
                // A chain that went through another state changed it, even if it came back.
                let changed = self.chain.iter().any(|(t, _)| !t.is_self_transition());
                slot.machine = next;
                if let Some(t) = slot.timers.as_mut() {
                    t.reindex(&shell.id, &mut self.due);
                }
                let seq = slot.next_seq();
                if let Some(key) = shell.key.filter(|_| fire.is_none()) {
                    slot.journal.record(
                        Entry {
                            key,
                            seq,
                            transition,
                        },
                        self.inner.config.window,
                    );
                }
                if !slot.dirty {
                    slot.dirty = true;
                    self.changed.push(shell.id.clone());
                }
                pending.after_change = true;
                pending.decision = Decision::Applied {
                    transition,
                    seq,
                    effects: self.effects.drain().collect(),
                };
                if changed && !slot.deferred.is_empty() {
                    // Replay postponed commands, oldest first, before anything newer.
                    let n = slot.deferred.len();
                    for cmd in slot.deferred.drain(..).rev() {
                        self.work.push_front(cmd);
                    }
                    self.deferred -= n as u64;
                    self.inner.quiet.more(self.index, n);
                }
            }
            Ok(Err(rejection)) => {
                self.effects.clear();
                if let Some(fire) = &fire {
                    // The timer fired, and its event was refused: it is spent all the same.
                    consume_fire(slot, fire, &shell.id, &mut self.changed, &mut self.due);
                }
                pending.decision = Decision::Rejected(rejection);
            }
            Err(payload) => {
                self.effects.clear();
                if let Some(fire) = &fire {
                    consume_fire(slot, fire, &shell.id, &mut self.changed, &mut self.due);
                }
                self.counts.panicked += 1;
                let message = crate::rejection::panic_message(&*payload);
                pending.decision = Decision::Rejected(Rejection::new(
                    M::TABLE,
                    state,
                    event_id,
                    Reason::Panicked(Refusal::new(message)),
                ));
            }
        }
        self.pending.push(pending);
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
        if let Some(q) = self.quarantined.get(id) {
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
                if fenced && self.slots.get(id).is_some_and(|s| !s.dirty) {
                    self.evict(id, &error);
                }
                return Err(error);
            }
        };
        match self.slots.get(id) {
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
        let mut slot = self.load(id, now, epoch)?;
        if let Some(t) = slot.timers.as_mut() {
            t.reindex(id, &mut self.due);
        }
        self.slots.insert(id.clone(), slot);
        Ok(())
    }

    /// Queues a command that was not applied for the caller to route to the machine's owner.
    fn route_to_owner(&mut self, cmd: Cmd<M>) {
        self.inner
            .handed_back
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((cmd.id, cmd.request));
    }

    /// Drops machine `id` from memory: it goes back to its last durable state (reloaded on next
    /// use). Its postponed commands are answered `error` with the batch (and handed back if
    /// `error` says another node owns the machine).
    fn evict(&mut self, id: &MachineId, error: &CommandError) {
        let Some(mut slot) = self.slots.remove(id) else {
            return;
        };
        let from = M::TABLE.state_name(slot.machine.state());
        if !error.is_fenced() {
            // What is durable may hold timers this copy did not (or no longer) show: the
            // machine is looked at again soon, which reloads it and indexes them.
            let now = self.inner.time.floor(self.inner.config.clock.now());
            self.due.schedule(id, now);
        }
        for mut cmd in slot.deferred.drain(..) {
            self.deferred -= 1;
            self.inner.quiet.more(self.index, 1);
            let reply = cmd.reply.take();
            let fed_back = reply.is_none();
            let timer = cmd.fire.is_some();
            let event = cmd.request.event.name();
            let enqueued = cmd.enqueued;
            if error.is_fenced() && !timer {
                self.route_to_owner(cmd);
            }
            self.pending.push(Pending {
                id: id.clone(),
                reply,
                fed_back,
                decision: Decision::Failed(error.clone()),
                after_change: false,
                timer,
                from,
                event,
                enqueued,
                taken: 0,
                apply_ns: 0,
            });
        }
    }

    /// Reads machine `id` from the store: its newest snapshot, decoded and validated, with
    /// its journal; or the initial state if the store holds none.
    fn load(&mut self, id: &MachineId, now: Instant, epoch: u64) -> Result<Slot<M>, CommandError> {
        let mut reopened = false;
        let snapshot = loop {
            let (generation, store) = self.store();
            match store.get(id) {
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
        let slot = |machine, journal, seq, timers| Slot {
            machine,
            journal,
            seq,
            epoch,
            dirty: false,
            deferred: VecDeque::new(),
            last_used: now,
            timers,
        };
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
            // A new machine starts as if it had just entered its initial state.
            let timers = fire::initial::<M>(&self.inner, now);
            return Ok(slot(machine, Journal::default(), None, timers));
        };
        let machine = match self.inner.codec.decode(&snapshot) {
            Ok(m) => m,
            Err(e) => return Err(self.quarantine(id, QuarantineCause::Decode(e))),
        };
        let journal = match snapshot.journal() {
            None => Journal::default(),
            Some(bytes) => match Journal::decode(bytes, M::TABLE) {
                Ok(j) => j,
                Err(message) => return Err(self.quarantine(id, QuarantineCause::Journal(message))),
            },
        };
        let timers = match fire::restore::<M>(&self.inner, &snapshot, &machine, now) {
            Ok(timers) => timers,
            Err(message) => return Err(self.quarantine(id, QuarantineCause::Timers(message))),
        };
        Ok(slot(machine, journal, Some(snapshot.seq()), timers))
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
        let mut stats = self.inner.stats[self.index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        stats.quarantine = self.quarantined.values().cloned().collect();
        stats.quarantined = self.quarantined.len();
    }

    /// Stores every machine changed in this batch with one `put_many`. Returns the machines
    /// whose change did not hold, with the error their commands get, and the time it took.
    fn commit(&mut self) -> (HashMap<MachineId, CommandError>, u64) {
        let mut failed = HashMap::new();
        if self.changed.is_empty() {
            return (failed, 0);
        }
        let mut snapshots: Vec<(MachineId, Option<u64>, Snapshot)> =
            Vec::with_capacity(self.changed.len());
        for id in self.changed.drain(..) {
            let Some(slot) = self.slots.get(&id) else {
                continue;
            };
            let timers = slot
                .timers
                .as_ref()
                .filter(|t| !t.armed.is_empty())
                .map(|t| crate::timer::encode_section(&t.armed));
            let encoded = self.inner.codec.encode_with_sections(
                &slot.machine,
                slot.next_seq(),
                &slot.journal.encode(),
                timers.as_deref(),
            );
            match encoded {
                Ok(snapshot) => snapshots.push((id, slot.seq, snapshot)),
                Err(e) => {
                    let error = CommandError::Unencodable {
                        id: id.clone(),
                        message: e.to_string(),
                    };
                    failed.insert(id, error);
                }
            }
        }
        let started = self.inner.stamp();
        let (generation, store) = self.store();
        let mut result = put_all(&*store, &snapshots);
        if matches!(result, Err(ref e) if e.is_fenced()) {
            // The store refused the batch because another node owns some of its machines:
            // those stop being served here, the rest is stored on its own.
            let error = Arc::new(result.unwrap_err());
            let (mut lost, mut kept): (Vec<_>, Vec<_>) =
                snapshots.into_iter().partition(|(id, _, _)| {
                    let loaded = self.slots.get(id).map(|s| s.epoch);
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
        let persist_ns = self.inner.nanos(started, self.inner.stamp());
        match result {
            Ok(()) => {
                let mut stats = self.inner.stats[self.index]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                stats.commits += 1;
                stats.snapshots += snapshots.len() as u64;
                drop(stats);
                for (id, _, snapshot) in &snapshots {
                    if let Some(slot) = self.slots.get_mut(id) {
                        slot.seq = Some(snapshot.seq());
                        slot.dirty = false;
                    }
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

    /// Answers every decided command of the batch, then hands the committed effects to the
    /// workers, records the trace and publishes the counts.
    fn answer(&mut self, failed: &HashMap<MachineId, CommandError>, persist_ns: u64) {
        let answered_at = self.inner.stamp();
        let at = self
            .inner
            .config
            .clock
            .now()
            .saturating_duration_since(self.inner.started);
        let tracing_on = self.inner.trace.enabled();
        let mut trace = Vec::new();
        let mut effects: Vec<(MachineId, Vec<M::Effect>)> = Vec::new();
        let mut latencies = Vec::with_capacity(self.pending.len());
        let mut replies = Vec::with_capacity(self.pending.len());
        let mut answered = 0;
        let mut pending = std::mem::take(&mut self.pending);
        for mut p in pending.drain(..) {
            let voided = if p.after_change {
                failed.get(&p.id)
            } else {
                None
            };
            let decision = std::mem::replace(&mut p.decision, Decision::Deferred);
            let (outcome, kind, to, persisted) = match (voided, decision) {
                (_, Decision::Deferred) => {
                    answered += 1;
                    if tracing_on {
                        trace.push(entry(&p, at, None, TraceOutcome::Deferred, 0, 0, 0));
                    }
                    continue;
                }
                (Some(e), _) => (Err(e.clone()), kind_of(e), None, persist_ns),
                (
                    None,
                    Decision::Applied {
                        transition,
                        seq,
                        effects: fx,
                    },
                ) => {
                    if !fx.is_empty() {
                        effects.push((p.id.clone(), fx));
                    }
                    (
                        Ok(Committed {
                            transition,
                            seq,
                            duplicate: false,
                        }),
                        TraceOutcome::Committed,
                        Some(transition.to_name()),
                        persist_ns,
                    )
                }
                (None, Decision::Duplicate { transition, seq }) => (
                    Ok(Committed {
                        transition,
                        seq,
                        duplicate: true,
                    }),
                    TraceOutcome::Duplicate,
                    Some(transition.to_name()),
                    if p.after_change { persist_ns } else { 0 },
                ),
                (None, Decision::Rejected(r)) => (
                    Err(CommandError::Rejected(r)),
                    TraceOutcome::Rejected,
                    None,
                    0,
                ),
                (None, Decision::Failed(e)) => {
                    let kind = kind_of(&e);
                    (Err(e), kind, None, 0)
                }
            };
            answered += 1;
            self.count(&outcome, p.fed_back, p.timer);
            let end = self.inner.nanos(p.enqueued, answered_at);
            let wait = self.inner.nanos(p.enqueued, p.taken);
            latencies.push((wait, p.apply_ns, end));
            if tracing_on {
                trace.push(entry(&p, at, to, kind, wait, persisted, end));
            }
            if let Some(reply) = p.reply.take() {
                replies.push((reply, outcome));
            }
        }
        self.pending = pending;
        // The effects about to be handed out count as work in flight before the answers
        // count as done, so `Kernel::wait_idle` never sees a gap between the two.
        if !self.inner.effect_tx.is_empty() {
            self.inner
                .quiet
                .more(self.index, effects.iter().map(|(_, fx)| fx.len()).sum());
        }
        if tracing_on {
            self.inner.trace.extend(self.index, trace);
        }
        // Counts first, so a submitter that reads the metrics after its answer sees it.
        self.publish(&latencies, persist_ns);
        for (reply, outcome) in replies {
            reply.send(outcome);
        }
        self.inner.quiet.done(self.index, answered);
        // Effects after every answer: the transitions they come from are durable.
        if !effects.is_empty() {
            self.dispatch(effects);
        }
    }

    fn count(&mut self, outcome: &Outcome, fed_back: bool, timer: bool) {
        let c = &mut self.counts;
        if timer {
            c.timers_fired += 1;
        } else if fed_back {
            c.fed_back += 1;
        }
        match outcome {
            Ok(committed) if committed.duplicate => c.duplicates += 1,
            Ok(_) => c.committed += 1,
            Err(CommandError::Rejected(_) | CommandError::Timer(_)) => c.rejected += 1,
            Err(CommandError::Expired) => c.expired += 1,
            Err(CommandError::Dumped(_)) => c.dumped += 1,
            Err(CommandError::Delegated(_)) => c.delegated += 1,
            Err(CommandError::NotStored { .. }) => c.not_stored += 1,
            Err(CommandError::OutcomeUnknown { .. }) => c.outcome_unknown += 1,
            Err(CommandError::Fenced { .. }) => c.fenced += 1,
            Err(CommandError::Closed) => c.closed += 1,
            Err(_) => c.unavailable += 1,
        }
    }

    fn dispatch(&mut self, effects: Vec<(MachineId, Vec<M::Effect>)>) {
        let workers = &self.inner.effect_tx;
        if workers.is_empty() {
            return;
        }
        for (id, fx) in effects {
            let worker = self.inner.worker_of(&id).unwrap_or(0);
            for effect in fx {
                let msg = WorkerMsg::Effect {
                    id: id.clone(),
                    effect,
                };
                if workers[worker].send(msg).is_err() {
                    // The worker thread is gone (shutdown): the effect is abandoned.
                    self.inner.quiet.done(self.index, 1);
                }
            }
        }
    }

    /// Evicts machines idle for `idle_after` that hold nothing (no postponed commands);
    /// expires postponed commands whose deadline passed.
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        let idle_after = self.inner.config.idle_after;
        let mut expired = Vec::new();
        for slot in self.slots.values_mut() {
            if slot
                .deferred
                .iter()
                .any(|c| c.request.deadline.is_some_and(|d| now >= d))
            {
                let (keep, gone): (VecDeque<_>, VecDeque<_>) = slot
                    .deferred
                    .drain(..)
                    .partition(|c| c.request.deadline.is_none_or(|d| now < d));
                slot.deferred = keep;
                expired.extend(gone);
            }
        }
        for cmd in expired {
            self.deferred -= 1;
            self.counts.expired += 1;
            cmd.answer(Err(CommandError::Expired));
        }
        // Evicted machines keep their timers: their entries stay in the shard's index.
        self.slots.retain(|_, s| {
            s.dirty
                || !s.deferred.is_empty()
                || s.timers.as_ref().is_some_and(|t| !t.firing.is_empty())
                || now.saturating_duration_since(s.last_used) < idle_after
        });
        self.publish_gauges();
    }

    fn publish_gauges(&mut self) {
        let mut stats = self.inner.stats[self.index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        stats.resident = self.slots.len();
        stats.quarantined = self.quarantined.len();
        stats.timer_entries = self.due.len();
        stats.counts.deferred = self.deferred;
    }

    /// Adds this batch's counts and latencies to the shard's published stats.
    fn publish(&mut self, latencies: &[(u64, u64, u64)], persist_ns: u64) {
        let mut stats = self.inner.stats[self.index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let c = std::mem::take(&mut self.counts);
        stats.counts.add(&c);
        // `deferred` is a level, kept by the shard, not a count.
        stats.counts.deferred = self.deferred;
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
        stats.resident = self.slots.len();
        stats.quarantined = self.quarantined.len();
        stats.timer_entries = self.due.len();
    }
}

/// Spends a firing whose event was not applied (dumped, delegated, rejected): the timer is
/// disarmed, and the machine stored, so that it does not fire again after a restart.
fn consume_fire<M: Durable>(
    slot: &mut Slot<M>,
    fire: &Fire,
    id: &MachineId,
    changed: &mut Vec<MachineId>,
    index: &mut TimerIndex,
) {
    let Some(t) = slot.timers.as_mut() else {
        return;
    };
    t.firing.retain(|&i| i != fire.instance);
    if t.armed.consume(&fire.kind, fire.instance).is_none() {
        return;
    }
    t.reindex(id, index);
    if t.armed.is_empty() && t.firing.is_empty() {
        slot.timers = None;
    }
    if !slot.dirty {
        slot.dirty = true;
        changed.push(id.clone());
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

fn kind_of(e: &CommandError) -> TraceOutcome {
    match e {
        CommandError::Rejected(_) | CommandError::Timer(_) => TraceOutcome::Rejected,
        CommandError::Expired => TraceOutcome::Expired,
        CommandError::Dumped(_) => TraceOutcome::Dumped,
        CommandError::Delegated(_) => TraceOutcome::Delegated,
        CommandError::NotStored { .. } => TraceOutcome::NotStored,
        CommandError::OutcomeUnknown { .. } => TraceOutcome::OutcomeUnknown,
        CommandError::Fenced { .. } => TraceOutcome::Fenced,
        _ => TraceOutcome::Unavailable,
    }
}

fn entry<M: Durable>(
    p: &Pending<M>,
    at: Duration,
    to: Option<&'static str>,
    outcome: TraceOutcome,
    wait: u64,
    persist: u64,
    end: u64,
) -> TraceEntry {
    TraceEntry {
        at,
        machine: p.id.clone(),
        from: p.from,
        event: p.event,
        to,
        outcome,
        wait: Duration::from_nanos(wait),
        apply: Duration::from_nanos(p.apply_ns),
        persist: Duration::from_nanos(persist),
        end_to_end: Duration::from_nanos(end),
    }
}
