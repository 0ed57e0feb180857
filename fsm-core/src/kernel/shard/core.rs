//! A shard's decision core: the machines in memory and what each command does to them,
//! without any I/O.
//!
//! The shell around it ([`super::Shard`]) feeds it one command at a time with the result of
//! loading the command's machine, asks it for the snapshots to write, tells it which writes
//! did not hold, and gets back every answer, trace entry and effect to hand out (as raft-rs
//! splits `Raft::step` from `RawNode::ready`). Every command the core is given ends as exactly
//! one [`Pending`] record, and every outcome is counted in [`Core::settle`] through one
//! exhaustive `match`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::effects::Effects;
use crate::machine::{settle, Event, Stop, Transition};
use crate::queue::{DelegateCause, DumpCause, Overflow, Reply, Route, Stamps};
use crate::rejection::{Reason, Refusal, Rejection};
use crate::store::{Codec, MachineId, Sections, Snapshot};
use crate::timer::Timers;

use crate::kernel::codecs::{EffectCodec, EventCodec, OnceFilter};
use crate::kernel::due::TimerIndex;
use crate::kernel::inbox::{Cmd, Fire, Settles};
use crate::kernel::journal::{Entry, Journal};
use crate::kernel::outbox::{self, EffectId, Outbox, OutboxError, Owed, RetryPolicy};
use crate::kernel::outcome::{Answer, CommandError, Committed};
use crate::kernel::request::{IdempotencyKey, Request};
use crate::kernel::stats::KernelCounts;
use crate::kernel::time_base::TimeBase;
use crate::kernel::trace::{TraceEntry, TraceOutcome, TraceSource};
use crate::kernel::Durable;

use super::fire;

/// What the core decides by: the table's routes, the kernel's limits, its time line, how it
/// stores timer events, and where a state's `delegate(..)` sends events. Built once per shard.
pub(crate) struct Rules<M: Durable> {
    routes: Box<[Route]>,
    events: usize,
    /// The index in `M::TABLE.transitions()` of the transition for each (state, event), as
    /// `routes` is laid out; `u32::MAX` where there is none.
    edges: Box<[u32]>,
    pub(super) window: usize,
    pub(super) defer_limit: usize,
    pub(super) max_timers: usize,
    pub(super) time: TimeBase,
    pub(super) timer_events: Option<EventCodec<M::Event>>,
    overflow: Option<Arc<dyn Overflow<(MachineId, M::Event)>>>,
    /// Latency stamps, when latencies are measured.
    stamps: Option<Stamps>,
    /// How effects are kept owed, if the kernel keeps them (durable effects).
    pub(super) effects: Option<EffectRules<M::Effect>>,
}

/// What makes a kernel's effects durable: how they are stored, which are at most once, how
/// many a machine may owe, how failures are retried.
pub(crate) struct EffectRules<F> {
    pub(crate) codec: EffectCodec<F>,
    pub(crate) at_most_once: Option<OnceFilter<F>>,
    pub(crate) limit: usize,
    pub(crate) retry: RetryPolicy,
}

impl<F> Clone for EffectRules<F> {
    fn clone(&self) -> Self {
        EffectRules {
            codec: self.codec,
            at_most_once: self.at_most_once.clone(),
            limit: self.limit,
            retry: self.retry,
        }
    }
}

impl<M: Durable> Rules<M> {
    #[allow(clippy::too_many_arguments)] // one per setting, named at the only caller
    pub(crate) fn new(
        window: usize,
        defer_limit: usize,
        max_timers: usize,
        time: TimeBase,
        timer_events: Option<EventCodec<M::Event>>,
        overflow: Option<Arc<dyn Overflow<(MachineId, M::Event)>>>,
        stamps: Option<Stamps>,
        effects: Option<EffectRules<M::Effect>>,
    ) -> Self {
        Rules {
            routes: crate::queue::routes(M::TABLE),
            events: M::TABLE.events().len(),
            edges: edge_index(M::TABLE),
            window,
            defer_limit,
            max_timers,
            time,
            timer_events,
            overflow,
            stamps,
            effects,
        }
    }

    pub(super) fn stamp(&self) -> u64 {
        self.stamps.as_ref().map_or(0, Stamps::stamp)
    }

    /// The index of `t` in the table's transitions.
    fn edge(&self, t: &Transition) -> Option<u32> {
        let i = *self
            .edges
            .get(t.from().index() * self.events + t.event().index())?;
        let declared = M::TABLE.transitions();
        match declared.get(i as usize) {
            Some(d) if d.to == t.to() => Some(i),
            // Two transitions on one (state, event) (not declared by the derive today): the
            // one that was taken.
            _ => declared
                .iter()
                .position(|d| d.from == t.from() && d.event == t.event() && d.to == t.to())
                .map(|i| i as u32),
        }
    }

    pub(super) fn nanos(&self, from: u64, to: u64) -> u64 {
        self.stamps.as_ref().map_or(0, |s| s.nanos(from, to))
    }
}

/// For each (state, event), in `routes`' layout, the index of the first transition declared
/// for it, or `u32::MAX`.
fn edge_index(table: &crate::Table) -> Box<[u32]> {
    let events = table.events().len();
    let mut edges = vec![u32::MAX; table.states().len() * events];
    for (i, t) in table.transitions().iter().enumerate().rev() {
        if let Some(e) = edges.get_mut(t.from.index() * events + t.event.index()) {
            *e = i as u32;
        }
    }
    edges.into_boxed_slice()
}

/// One machine in memory.
pub(super) struct Slot<M: Durable> {
    pub(super) machine: M,
    pub(super) journal: Journal,
    /// The sequence of the newest durable snapshot (`None`: never stored).
    pub(super) seq: Option<u64>,
    /// The store's ownership epoch when the machine was loaded: under another epoch, another
    /// owner may have moved it on, so it is loaded again.
    pub(super) epoch: u64,
    /// Changed in this batch and not yet stored.
    pub(super) dirty: bool,
    /// Commands postponed by `defer(..)`, oldest first.
    pub(super) deferred: VecDeque<Cmd<M>>,
    pub(super) last_used: Instant,
    /// Armed timers, if any (most machines have none: one pointer).
    pub(super) timers: Option<Box<SlotTimers>>,
    /// Effects owed, oldest first, if any (most machines owe none: one pointer).
    pub(super) outbox: Option<Box<Outbox<M::Effect>>>,
    /// Effects emitted under a sequence not yet stored: the sequence and how many, so each
    /// gets the next index.
    emitted: (u64, u32),
}

impl<M: Durable> Slot<M> {
    pub(super) fn new(
        machine: M,
        journal: Journal,
        seq: Option<u64>,
        epoch: u64,
        now: Instant,
        timers: Option<Box<SlotTimers>>,
    ) -> Self {
        Slot {
            machine,
            journal,
            seq,
            epoch,
            dirty: false,
            deferred: VecDeque::new(),
            last_used: now,
            timers,
            outbox: None,
            emitted: (0, 0),
        }
    }

    /// The same, owing `outbox` (a machine loaded from a snapshot that has one).
    pub(super) fn owing(mut self, outbox: Outbox<M::Effect>) -> Self {
        self.outbox = (!outbox.is_empty()).then(|| Box::new(outbox));
        self
    }

    fn next_seq(&self) -> u64 {
        self.seq.map_or(1, |s| s + 1)
    }

    /// Effects owed now.
    pub(super) fn owed(&self) -> usize {
        self.outbox.as_ref().map_or(0, |o| o.len())
    }

    /// The first owed effect, if it waits for a retry deadline rather than its worker.
    fn retry_at(&self) -> Option<u64> {
        let head = self.outbox.as_ref()?.front()?;
        (!head.dispatched && head.not_before > 0).then_some(head.not_before)
    }

    /// When the index must look at this machine next: its first timer or its first owed
    /// effect's retry, whichever comes first.
    pub(super) fn first_due(&self) -> Option<u64> {
        let timer = self.timers.as_ref().and_then(|t| t.earliest_waiting());
        match (timer, self.retry_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A resident machine's armed timers (as stored: events encoded) and which of them have a
/// firing on its way (queued or postponed), so they are not fired twice meanwhile.
#[derive(Clone, Debug, Default)]
pub(super) struct SlotTimers {
    pub(super) armed: Timers<Box<[u8]>>,
    pub(super) firing: Vec<u64>,
    /// The deadline of this machine's entry in the shard's index, if it has one not yet
    /// taken: a deadline moved later needs no new entry (the earlier one comes up first and
    /// the machine is indexed again then), so re-arming never grows the index.
    pub(super) indexed: Option<u64>,
}

impl SlotTimers {
    /// Makes sure the index holds an entry no later than this machine's first deadline.
    pub(super) fn reindex(&mut self, id: &MachineId, due: &mut TimerIndex) {
        if let Some(first) = self.earliest_waiting() {
            if self.indexed.is_none_or(|at| first < at) {
                due.schedule(id, first);
                self.indexed = Some(first);
            }
        }
    }

    /// The earliest deadline of a timer without a firing on its way.
    pub(super) fn earliest_waiting(&self) -> Option<u64> {
        self.armed
            .armed
            .iter()
            .filter(|a| !self.firing.contains(&a.instance))
            .map(|a| a.deadline)
            .min()
    }
}

/// What the machine decided for one command, before the group commit says whether it holds.
pub(super) enum Decision<F> {
    Applied {
        transition: Transition,
        seq: u64,
        /// The effects that are not owed (at most once), with their index.
        effects: Vec<(u32, F)>,
    },
    Duplicate {
        transition: Transition,
        seq: u64,
    },
    Rejected(Rejection),
    /// Postponed by `defer(..)`: the command waits in its machine, answered when replayed.
    Deferred,
    Failed(CommandError),
    /// A timer firing that no longer applies (cancelled or re-armed since it came due, or its
    /// machine cannot be loaded here): no answer, no trace, only the end of its work.
    Void,
}

/// A decided command waiting for the batch's commit.
pub(super) struct Pending<M: Durable> {
    pub(super) id: MachineId,
    pub(super) reply: Option<Reply<Answer>>,
    fed_back: bool,
    pub(super) decision: Decision<M::Effect>,
    /// Decided against a state not yet stored: void if the machine's commit fails.
    after_change: bool,
    /// A timer's firing (counted apart from submitted and fed-back commands).
    timer: bool,
    from: &'static str,
    event: &'static str,
    enqueued: u64,
    taken: u64,
    apply_ns: u64,
    /// Its transitions (its own and its raised events'), as a range of `Core::staged_edges`.
    edges: (u32, u32),
    /// Effects its transition emitted.
    effects: u32,
    /// The superstate whose transition took the command, if not the state's own.
    handled_by: Option<&'static str>,
}

impl<M: Durable> Pending<M> {
    /// A command that was answered before it was decided (a machine dropped from memory
    /// with its postponed commands, a shard closing, a postponed command expiring).
    pub(super) fn failed(cmd: Cmd<M>, from: &'static str, error: CommandError) -> Self {
        Pending {
            id: cmd.id,
            fed_back: cmd.reply.is_none(),
            reply: cmd.reply,
            decision: Decision::Failed(error),
            after_change: false,
            timer: cmd.fire.is_some(),
            from,
            event: cmd.request.event.name(),
            enqueued: cmd.enqueued,
            taken: 0,
            apply_ns: 0,
            edges: (0, 0),
            effects: 0,
            handled_by: None,
        }
    }
}

/// A command split into its event and everything else.
struct Parts {
    id: MachineId,
    key: Option<IdempotencyKey>,
    deadline: Option<Instant>,
    enqueued: u64,
    reply: Option<Reply<Answer>>,
    fire: Option<Box<Fire>>,
    settles: Option<Settles>,
}

impl Parts {
    fn split<M: Durable>(cmd: Cmd<M>) -> (M::Event, Parts) {
        let Cmd {
            id,
            request,
            enqueued,
            reply,
            fire,
            settles,
        } = cmd;
        let Request {
            event,
            key,
            deadline,
        } = request;
        (
            event,
            Parts {
                id,
                key,
                deadline,
                enqueued,
                reply,
                fire,
                settles,
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
            settles: self.settles,
        }
    }
}

/// How a decision left the command: decided here, postponed in its machine, or going back to
/// the caller for the machine's owner.
enum Verdict<M: Durable> {
    Decided(Decision<M::Effect>),
    Defer(M::Event),
    ToOwner(M::Event, CommandError),
}

/// The snapshots a batch asks to store: per changed machine, the sequence it expects the
/// store to hold and the snapshot, or why the machine could not be encoded.
pub(super) type Writes = Vec<(MachineId, Option<u64>, Result<Snapshot, CommandError>)>;

/// What the shell hands out after a batch: answers, trace entries, effects.
pub(super) struct Settled<M: Durable> {
    pub(super) replies: Vec<(Reply<Answer>, Answer)>,
    pub(super) trace: Vec<TraceEntry>,
    /// Effects not owed (at most once), to hand to the workers now.
    pub(super) effects: Vec<(EffectId, M::Effect)>,
    /// Per answered command: queue wait, apply and end-to-end nanoseconds.
    pub(super) latencies: Vec<(u64, u64, u64)>,
    /// Commands whose work ended (the shell counts them done).
    pub(super) ended: usize,
}

/// The decision core of one shard.
pub(crate) struct Core<M: Durable> {
    pub(super) rules: Rules<M>,
    pub(super) slots: HashMap<MachineId, Slot<M>>,
    /// Commands to decide in this batch, in order (postponed ones replayed at the front).
    pub(super) work: VecDeque<Cmd<M>>,
    pending: Vec<Pending<M>>,
    /// Machines changed in this batch, in the order they first changed.
    changed: Vec<MachineId>,
    effects: Effects<M::Effect>,
    /// Commands postponed now, over all machines (a level, not a count).
    pub(super) deferred: u64,
    /// Postponed commands that went back into the work (the shell counts them in flight).
    pub(super) replayed: usize,
    /// Commands not applied here because another node owns their machine, for the caller.
    pub(super) to_owner: Vec<(MachineId, Request<M::Event>)>,
    /// Counts since the last publication.
    pub(super) counts: KernelCounts,
    /// When this shard's machines' timers are due.
    pub(super) due: TimerIndex,
    /// The timer rules' working buffer, kept between commands.
    pub(super) timer_steps: Vec<crate::timer::Step<Box<[u8]>>>,
    /// The transitions of the command being decided (its own, then its raised events'), each
    /// with the number of timer requests held when it ended.
    chain: Vec<(Transition, usize)>,
    /// Machines whose first owed effect may be ready for its worker (see
    /// [`Core::ready`]); looked at once the batch is committed.
    pub(super) kicked: Vec<MachineId>,
    /// Effects owed by the machines in memory (every machine that owes one stays in memory).
    pub(super) owed: u64,
    /// Committed transitions since the last publication, per declared transition.
    pub(super) edges: Vec<u64>,
    /// Whether `edges` holds anything to publish.
    pub(super) edges_counted: bool,
    /// The declared transitions of this batch's decisions, by index; each `Pending` holds its
    /// range. Counted in `edges` once their commit holds.
    staged_edges: Vec<u32>,
}

impl<M: Durable> Core<M> {
    pub(crate) fn new(rules: Rules<M>) -> Self {
        Core {
            rules,
            slots: HashMap::new(),
            work: VecDeque::new(),
            pending: Vec::new(),
            changed: Vec::new(),
            effects: Effects::new(),
            deferred: 0,
            replayed: 0,
            to_owner: Vec::new(),
            counts: KernelCounts::default(),
            due: TimerIndex::default(),
            timer_steps: Vec::new(),
            chain: Vec::new(),
            kicked: Vec::new(),
            owed: 0,
            edges: vec![0; M::TABLE.transitions().len()],
            edges_counted: false,
            staged_edges: Vec::new(),
        }
    }

    /// Whether anything of this batch waits to be committed and answered.
    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether a machine changed in this batch (an answer settled an effect of it).
    pub(super) fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }

    /// Adds a machine the shell loaded, indexing its timers.
    pub(super) fn insert(&mut self, id: &MachineId, mut slot: Slot<M>) {
        if let Some(t) = slot.timers.as_mut() {
            t.reindex(id, &mut self.due);
        }
        if slot.owed() > 0 {
            // Owed by a durable snapshot: handed to the worker again once the batch is done.
            self.owed += slot.owed() as u64;
            self.kicked.push(id.clone());
        }
        self.slots.insert(id.clone(), slot);
    }

    /// Records a command answered without a decision (see [`Pending::failed`]).
    pub(super) fn fail(&mut self, cmd: Cmd<M>, from: &'static str, error: CommandError) {
        self.pending.push(Pending::failed(cmd, from, error));
    }

    /// Decides one command against its machine. `loaded` is what loading the machine gave
    /// (the shell loads it, from the store or anew, before asking): on an error the command
    /// fails with it. Exactly one [`Pending`] record is made.
    pub(super) fn decide(
        &mut self,
        cmd: Cmd<M>,
        now: Instant,
        taken: u64,
        loaded: Result<(), CommandError>,
    ) {
        let (event, mut parts) = Parts::split(cmd);
        let mut pending = Pending {
            id: parts.id.clone(),
            reply: None,
            fed_back: parts.reply.is_none(),
            decision: Decision::Void,
            after_change: false,
            timer: parts.fire.is_some(),
            from: "-",
            event: event.name(),
            enqueued: parts.enqueued,
            taken,
            apply_ns: 0,
            edges: (0, 0),
            effects: 0,
            handled_by: None,
        };
        let verdict = self.verdict(event, &mut parts, &mut pending, now, loaded);
        match verdict {
            Verdict::Decided(decision) => {
                pending.reply = parts.reply.take();
                pending.decision = decision;
            }
            Verdict::Defer(event) => match self.slots.get_mut(&parts.id) {
                Some(slot) if slot.deferred.len() < self.rules.defer_limit => {
                    slot.deferred.push_back(parts.join(event));
                    self.deferred += 1;
                    // Traced now, and no longer work in flight once the batch is answered;
                    // answered when a state change replays it.
                    pending.decision = Decision::Deferred;
                }
                _ => {
                    pending.reply = parts.reply.take();
                    pending.decision =
                        Decision::Failed(CommandError::Dumped(DumpCause::DeferLimit));
                }
            },
            Verdict::ToOwner(event, error) => {
                pending.reply = parts.reply.take();
                pending.decision = Decision::Failed(error);
                if parts.fire.is_none() {
                    let cmd: Cmd<M> = parts.join(event);
                    self.to_owner.push((cmd.id, cmd.request));
                }
            }
        }
        self.pending.push(pending);
    }

    fn verdict(
        &mut self,
        event: M::Event,
        parts: &mut Parts,
        pending: &mut Pending<M>,
        now: Instant,
        loaded: Result<(), CommandError>,
    ) -> Verdict<M> {
        if parts.deadline.is_some_and(|d| now >= d) {
            return Verdict::Decided(Decision::Failed(CommandError::Expired));
        }
        if let Err(e) = loaded {
            if parts.fire.is_some() {
                // Not fired here: the timer stays armed in the store, for the machine's next
                // load (here once it is loadable, or at its owner).
                return Verdict::Decided(Decision::Void);
            }
            if e.is_fenced() {
                // Not applied: the request goes back to the caller, for the owner.
                return Verdict::ToOwner(event, e);
            }
            return Verdict::Decided(Decision::Failed(e));
        }
        let Some(slot) = self.slots.get_mut(&parts.id) else {
            // The shell loads before asking; answered all the same rather than lost.
            return Verdict::Decided(Decision::Failed(CommandError::Closed));
        };
        slot.last_used = now;
        let state = slot.machine.state();
        pending.from = M::TABLE.state_name(state);
        pending.after_change = slot.dirty;
        let firing = parts.fire.is_some();
        if let Some(fire) = parts.fire.as_deref() {
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
                return Verdict::Decided(Decision::Void);
            }
        }
        if let Some(entry) = parts
            .key
            .as_ref()
            .filter(|_| !firing)
            .and_then(|k| slot.journal.find(k))
        {
            return Verdict::Decided(Decision::Duplicate {
                transition: entry.transition,
                seq: entry.seq,
            });
        }
        let route = self.rules.routes[state.index() * self.rules.events + event.id().index()];
        if route == Route::Defer {
            return Verdict::Defer(event);
        }
        // From here on the event meets its state: a firing is spent whatever happens to it,
        // and so is the owed effect an answer settles (in the write that decides its event).
        if let Some(fire) = parts.fire.take() {
            consume_fire(slot, &fire, &parts.id, &mut self.changed, &mut self.due);
        }
        if let Some(settles) = parts.settles.take() {
            if settle_owed(slot, settles, &parts.id, &mut self.changed).is_none() {
                // Settled already, by the answer of an earlier run of the same effect (it ran
                // twice, after a restart or a reload): its event was decided then.
                return Verdict::Decided(Decision::Void);
            }
            self.owed -= 1;
            self.kicked.push(parts.id.clone());
        }
        let state_name = pending.from;
        match route {
            Route::Defer => unreachable!("returned above"),
            Route::Dump => {
                return Verdict::Decided(Decision::Failed(CommandError::Dumped(
                    DumpCause::StatePolicy { state: state_name },
                )))
            }
            Route::Delegate => {
                let cause = DelegateCause::StatePolicy { state: state_name };
                let refused = match &self.rules.overflow {
                    Some(sink) => sink.delegate((parts.id.clone(), event), &cause).is_err(),
                    None => true,
                };
                return Verdict::Decided(Decision::Failed(if refused {
                    CommandError::Dumped(DumpCause::OverflowRefused)
                } else {
                    CommandError::Delegated(cause)
                }));
            }
            Route::Apply => {}
        }
        if slot.seq.is_none() && !slot.dirty {
            // A machine exists from its first accepted command: it enters its initial state
            // now, so that state's timeout counts from here (a read, or a rejected command,
            // arms nothing).
            slot.timers = fire::initial::<M>(&self.rules, now);
        }
        // Empty here: every decision drains or clears it.
        debug_assert!(self.effects.is_empty());
        let started = self.rules.stamp();
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
        pending.apply_ns = self.rules.nanos(started, self.rules.stamp());
        let (next, transition) = match result {
            Ok(Ok(done)) => done,
            Ok(Err(Stop::Rejected(rejection))) => {
                self.effects.clear();
                return Verdict::Decided(Decision::Rejected(rejection));
            }
            Ok(Err(Stop::Step(never))) => match never {},
            Err(payload) => {
                self.effects.clear();
                self.counts.panicked += 1;
                let message = crate::rejection::panic_message(&*payload);
                return Verdict::Decided(Decision::Rejected(Rejection::new(
                    M::TABLE,
                    state,
                    event_id,
                    Reason::Panicked(Refusal::new(message)),
                )));
            }
        };
        // The effects are owed in the write that commits the transition, or it is refused.
        let seq = slot.next_seq();
        let emitted = self.effects.len();
        let staged = match stage(&self.rules, slot, seq, &mut self.effects, now) {
            Ok(staged) => staged,
            Err(e) => {
                self.effects.clear();
                return Verdict::Decided(Decision::Failed(CommandError::Outbox(e)));
            }
        };
        let timers = if self.chain.len() == 1 {
            fire::after_transition::<M>(
                &self.rules,
                &mut self.timer_steps,
                &mut slot.timers,
                &transition,
                self.effects.drain_timers(),
                now,
            )
        } else {
            self.counts.raised += self.chain.len() as u64 - 1;
            fire::after_chain::<M>(
                &self.rules,
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
            return Verdict::Decided(Decision::Failed(CommandError::Timer(e)));
        }
        // A chain that went through another state changed it, even if it came back.
        let changed = self.chain.iter().any(|(t, _)| !t.is_self_transition());
        slot.machine = next;
        if let Some(t) = slot.timers.as_mut() {
            t.reindex(&parts.id, &mut self.due);
        }
        slot.emitted = staged.emitted;
        if !staged.owed.is_empty() {
            self.owed += staged.owed.len() as u64;
            if slot.owed() == 0 {
                // A new first owed effect: ready for its worker once this batch is stored.
                self.kicked.push(parts.id.clone());
            }
            slot.outbox
                .get_or_insert_with(Box::default)
                .extend(staged.owed);
        }
        if let Some(key) = parts.key.take().filter(|_| !firing) {
            slot.journal.record(
                Entry {
                    key,
                    seq,
                    transition,
                },
                self.rules.window,
            );
        }
        if !slot.dirty {
            slot.dirty = true;
            self.changed.push(parts.id.clone());
        }
        pending.after_change = true;
        if changed && !slot.deferred.is_empty() {
            // Replay postponed commands, oldest first, before anything newer.
            let n = slot.deferred.len();
            for cmd in slot.deferred.drain(..).rev() {
                self.work.push_front(cmd);
            }
            self.deferred -= n as u64;
            self.replayed += n;
        }
        let first = self.staged_edges.len();
        for (t, _) in &self.chain {
            if let Some(i) = self.rules.edge(t) {
                self.staged_edges.push(i);
            }
        }
        pending.effects = u32::try_from(emitted).unwrap_or(u32::MAX);
        pending.edges = (first as u32, (self.staged_edges.len() - first) as u32);
        pending.handled_by = self
            .staged_edges
            .get(first)
            .and_then(|&i| M::TABLE.transitions().get(i as usize))
            .and_then(|t| match t.declared_on() {
                crate::table::DeclaredOn::State => None,
                crate::table::DeclaredOn::Superstate(s) => {
                    M::TABLE.superstates().get(s).map(|s| s.name())
                }
                crate::table::DeclaredOn::AnyState => Some("any state"),
            });
        Verdict::Decided(Decision::Applied {
            transition,
            seq,
            effects: staged.loose,
        })
    }

    /// A worker's answer without an event for an owed effect of machine `id` (in memory): the
    /// effect is done or given up, and leaves the outbox; or an attempt failed, and the next
    /// waits for the retry policy's delay (stored with the effect). Either way the machine is
    /// written. An answer for an effect no longer owed (it ran twice) changes nothing.
    pub(super) fn answered(&mut self, id: &MachineId, settles: Settles, retry: bool, now: Instant) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if retry {
            let policy = self
                .rules
                .effects
                .as_ref()
                .map_or_else(RetryPolicy::default, |e| e.retry);
            let Some(owed) = slot
                .outbox
                .as_mut()
                .and_then(|o| o.iter_mut().find(|o| (o.seq, o.index) == settles))
                .filter(|o| o.dispatched)
            else {
                return;
            };
            owed.attempts = owed.attempts.saturating_add(1);
            let delay = crate::timer::millis_ceil(policy.delay(owed.attempts));
            owed.not_before = self.rules.time.ceil(now).saturating_add(delay).max(1);
            owed.dispatched = false;
            mark_changed(slot, id, &mut self.changed);
        } else {
            if settle_owed(slot, settles, id, &mut self.changed).is_none() {
                return;
            }
            self.owed -= 1;
        }
        self.kicked.push(id.clone());
    }

    /// The first owed effect of each machine kicked in this batch that is ready for its worker
    /// (stored, not running, its retry delay passed), marked running; a machine whose first
    /// effect waits for a retry delay is indexed at it instead. Called once the batch is
    /// stored, so no effect runs before the write that owes it.
    pub(super) fn ready(&mut self, now_ms: u64) -> Vec<(EffectId, M::Effect, u32)> {
        let mut out = Vec::new();
        if self.kicked.is_empty() {
            return out;
        }
        let Some(rules) = self.rules.effects.as_ref() else {
            // This kernel stores no effects: what a snapshot owes is kept, not run.
            self.kicked.clear();
            return out;
        };
        for id in std::mem::take(&mut self.kicked) {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if slot.dirty {
                continue;
            }
            let Some(head) = slot.outbox.as_mut().and_then(|o| o.front_mut()) else {
                continue;
            };
            if head.dispatched {
                continue;
            }
            if head.not_before > now_ms {
                self.due.schedule(&id, head.not_before);
                continue;
            }
            let value = match head.value.take() {
                Some(v) => v,
                // Its value went to the worker on an earlier attempt: decoded again (the
                // bytes were checked when they were encoded or loaded).
                None => match (rules.codec.decode)(&head.bytes) {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            head.dispatched = true;
            out.push((
                EffectId::new(id, head.seq, head.index),
                value,
                head.attempts.saturating_add(1),
            ));
        }
        out
    }

    /// Drops machine `id` from memory: it goes back to its last durable state (reloaded on next
    /// use). Its postponed commands are answered `error` with the batch (and go back to the
    /// caller if `error` says another node owns the machine). Returns how many there were:
    /// they are work in flight again until answered.
    pub(super) fn evict(&mut self, id: &MachineId, error: &CommandError, now_ms: u64) -> usize {
        let Some(mut slot) = self.slots.remove(id) else {
            return 0;
        };
        self.owed -= slot.owed() as u64;
        let from = M::TABLE.state_name(slot.machine.state());
        if !error.is_fenced() {
            // What is durable may hold timers this copy did not (or no longer) show: the
            // machine is looked at again soon, which reloads it and indexes them.
            self.due.schedule(id, now_ms);
        }
        let n = slot.deferred.len();
        for mut cmd in slot.deferred.drain(..) {
            self.deferred -= 1;
            let reply = cmd.reply.take();
            let timer = cmd.fire.is_some();
            self.pending.push(Pending {
                id: id.clone(),
                fed_back: reply.is_none(),
                reply,
                decision: Decision::Failed(error.clone()),
                after_change: false,
                timer,
                from,
                event: cmd.request.event.name(),
                enqueued: cmd.enqueued,
                taken: 0,
                apply_ns: 0,
                edges: (0, 0),
                effects: 0,
                handled_by: None,
            });
            if error.is_fenced() && !timer {
                // Answered `Fenced` with the batch; the request goes to the caller.
                self.to_owner.push((cmd.id, cmd.request));
            }
        }
        n
    }

    /// The snapshots to write for every machine this batch changed, in the order they first
    /// changed.
    pub(super) fn writes(&mut self, codec: &Codec<M>) -> Writes {
        let mut writes = Vec::with_capacity(self.changed.len());
        for id in self.changed.drain(..) {
            let Some(slot) = self.slots.get(&id) else {
                continue;
            };
            let timers = slot
                .timers
                .as_ref()
                .filter(|t| !t.armed.is_empty())
                .map(|t| crate::timer::encode_section(&t.armed));
            let outbox = slot.outbox.as_ref().map(|o| outbox::encode_section(o));
            let journal = slot.journal.encode();
            let sections = Sections {
                journal: Some(&journal),
                timers: timers.as_deref(),
                outbox: outbox.as_deref(),
                state: None,
                sealed: None,
            };
            let encoded = codec
                .encode_framed(&slot.machine, slot.next_seq(), sections)
                .map_err(|e| CommandError::Unencodable {
                    id: id.clone(),
                    message: e.to_string(),
                });
            writes.push((id, slot.seq, encoded));
        }
        writes
    }

    /// The store now holds `snapshot` for machine `id`.
    pub(super) fn stored(&mut self, id: &MachineId, snapshot: &Snapshot) {
        if let Some(slot) = self.slots.get_mut(id) {
            slot.seq = Some(snapshot.seq());
            slot.dirty = false;
        }
    }

    /// Settles every decided command of the batch: those whose machine's write did not hold
    /// (`failed`) get its error, the rest their decision. Counts each outcome once.
    pub(super) fn settle(
        &mut self,
        failed: &HashMap<MachineId, CommandError>,
        persist_ns: u64,
        at: Duration,
        answered_at: u64,
        tracing_on: bool,
    ) -> Settled<M> {
        let mut out = Settled {
            replies: Vec::with_capacity(self.pending.len()),
            trace: Vec::new(),
            effects: Vec::new(),
            latencies: Vec::with_capacity(self.pending.len()),
            ended: 0,
        };
        let mut pending = std::mem::take(&mut self.pending);
        for mut p in pending.drain(..) {
            out.ended += 1;
            let voided = if p.after_change {
                failed.get(&p.id)
            } else {
                None
            };
            let decision = std::mem::replace(&mut p.decision, Decision::Void);
            let (outcome, to, persisted) = match (voided, decision) {
                (_, Decision::Void) => continue,
                (_, Decision::Deferred) => {
                    if tracing_on {
                        out.trace
                            .push(entry(&p, at, None, TraceOutcome::Deferred, 0, 0, 0));
                    }
                    continue;
                }
                (Some(e), _) => (Err(e.clone()), None, persist_ns),
                (
                    None,
                    Decision::Applied {
                        transition,
                        seq,
                        effects,
                    },
                ) => {
                    for (index, effect) in effects {
                        out.effects
                            .push((EffectId::new(p.id.clone(), seq, index), effect));
                    }
                    let (first, n) = (p.edges.0 as usize, p.edges.1 as usize);
                    if let Some(taken) = self.staged_edges.get(first..first + n) {
                        for &i in taken {
                            self.edges[i as usize] += 1;
                        }
                        self.edges_counted |= n > 0;
                    }
                    let to = Some(transition.to_name());
                    let committed = Committed {
                        transition,
                        seq,
                        duplicate: false,
                    };
                    (Ok(committed), to, persist_ns)
                }
                (None, Decision::Duplicate { transition, seq }) => {
                    let persisted = if p.after_change { persist_ns } else { 0 };
                    let committed = Committed {
                        transition,
                        seq,
                        duplicate: true,
                    };
                    (Ok(committed), Some(transition.to_name()), persisted)
                }
                (None, Decision::Rejected(r)) => (Err(CommandError::Rejected(r)), None, 0),
                (None, Decision::Failed(e)) => (Err(e), None, 0),
            };
            let kind = count(&mut self.counts, &outcome, p.fed_back, p.timer);
            let end = self.rules.nanos(p.enqueued, answered_at);
            let wait = self.rules.nanos(p.enqueued, p.taken);
            out.latencies.push((wait, p.apply_ns, end));
            if tracing_on {
                out.trace
                    .push(entry(&p, at, to, kind, wait, persisted, end));
            }
            if let Some(reply) = p.reply.take() {
                out.replies.push((reply, outcome));
            }
        }
        self.pending = pending;
        self.staged_edges.clear();
        out
    }
}

/// Counts one outcome, once, and says how the trace names it. Exhaustive: a new error is a
/// compile error here until it is given a count.
pub(super) fn count(
    c: &mut KernelCounts,
    outcome: &Answer,
    fed_back: bool,
    timer: bool,
) -> TraceOutcome {
    if timer {
        c.timers_fired += 1;
    } else if fed_back {
        c.fed_back += 1;
    }
    let error = match outcome {
        Ok(committed) if committed.duplicate => {
            c.duplicates += 1;
            return TraceOutcome::Duplicate;
        }
        Ok(_) => {
            c.committed += 1;
            return TraceOutcome::Committed;
        }
        Err(e) => e,
    };
    match error {
        CommandError::Rejected(_) | CommandError::Timer(_) | CommandError::Outbox(_) => {
            c.rejected += 1;
            TraceOutcome::Rejected
        }
        CommandError::Expired => {
            c.expired += 1;
            TraceOutcome::Expired
        }
        CommandError::Dumped(_) => {
            c.dumped += 1;
            TraceOutcome::Dumped
        }
        CommandError::Delegated(_) => {
            c.delegated += 1;
            TraceOutcome::Delegated
        }
        CommandError::NotStored { .. } => {
            c.not_stored += 1;
            TraceOutcome::NotStored
        }
        CommandError::OutcomeUnknown { .. } => {
            c.outcome_unknown += 1;
            TraceOutcome::OutcomeUnknown
        }
        CommandError::Fenced { .. } => {
            c.fenced += 1;
            TraceOutcome::Fenced
        }
        CommandError::Closed => {
            c.closed += 1;
            TraceOutcome::Unavailable
        }
        CommandError::Quarantined(_)
        | CommandError::Unavailable { .. }
        | CommandError::Unencodable { .. }
        | CommandError::InvalidInitial { .. } => {
            c.unavailable += 1;
            TraceOutcome::Unavailable
        }
    }
}

/// Spends a firing whose event met its state: the timer is disarmed, and the machine stored,
/// so that it does not fire again after a restart.
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
    mark_changed(slot, id, changed);
}

/// The machine changed in this batch: it is written with it.
fn mark_changed<M: Durable>(slot: &mut Slot<M>, id: &MachineId, changed: &mut Vec<MachineId>) {
    if !slot.dirty {
        slot.dirty = true;
        changed.push(id.clone());
    }
}

/// Removes owed effect `settles` from the machine's outbox (it is written with the batch), or
/// `None` if it is not owed (any more).
fn settle_owed<M: Durable>(
    slot: &mut Slot<M>,
    settles: Settles,
    id: &MachineId,
    changed: &mut Vec<MachineId>,
) -> Option<Owed<M::Effect>> {
    let outbox = slot.outbox.as_mut()?;
    let at = outbox.iter().position(|o| (o.seq, o.index) == settles)?;
    let owed = outbox.remove(at);
    if outbox.is_empty() {
        slot.outbox = None;
    }
    mark_changed(slot, id, changed);
    owed
}

/// A transition's effects, split: those owed (encoded, to join the machine's outbox in the
/// same write) and those run at most once; each with its index under the sequence `seq`.
struct Staged<F> {
    owed: Vec<Owed<F>>,
    loose: Vec<(u32, F)>,
    emitted: (u64, u32),
}

fn stage<M: Durable>(
    rules: &Rules<M>,
    slot: &Slot<M>,
    seq: u64,
    effects: &mut Effects<M::Effect>,
    now: Instant,
) -> Result<Staged<M::Effect>, OutboxError> {
    let mut index = if slot.emitted.0 == seq {
        slot.emitted.1
    } else {
        0
    };
    let mut staged = Staged {
        owed: Vec::new(),
        loose: Vec::new(),
        emitted: (seq, index),
    };
    if effects.is_empty() {
        return Ok(staged);
    }
    let since = rules.time.floor(now);
    for (i, effect) in effects.drain().enumerate() {
        let this = index;
        index = index.saturating_add(1);
        match &rules.effects {
            Some(r) if !r.at_most_once.as_ref().is_some_and(|once| once(&effect)) => {
                let bytes = (r.codec.encode)(&effect)
                    .map_err(|message| OutboxError::Unencodable { index: i, message })?;
                staged.owed.push(Owed {
                    seq,
                    index: this,
                    bytes: bytes.into_boxed_slice(),
                    attempts: 0,
                    not_before: 0,
                    since,
                    value: Some(effect),
                    dispatched: false,
                });
            }
            _ => staged.loose.push((this, effect)),
        }
    }
    if let Some(r) = &rules.effects {
        let owed = slot.owed() + staged.owed.len();
        if owed > r.limit {
            return Err(OutboxError::Full {
                owed,
                limit: r.limit,
            });
        }
    }
    staged.emitted = (seq, index);
    Ok(staged)
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
        source: if p.timer {
            TraceSource::Timer
        } else if p.fed_back {
            TraceSource::Effect
        } else {
            TraceSource::Command
        },
        effects: if outcome == TraceOutcome::Committed {
            p.effects
        } else {
            0
        },
        handled_by: p.handled_by,
        wait: Duration::from_nanos(wait),
        apply: Duration::from_nanos(p.apply_ns),
        persist: Duration::from_nanos(persist),
        end_to_end: Duration::from_nanos(end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{ManualClock, Ticket};
    use crate::store::{Codec, StoreError};
    use crate::timer::TimerKind;
    use crate::{Effects, Event, Handler, StateMachine};
    use serde::{Deserialize, Serialize};

    #[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[fsm(event = Cmd, effect = Fx)]
    enum Job {
        #[fsm(initial, on(Start => Running), defer(Finish))]
        Queued,
        #[fsm(on(Finish => Done), on(Tick => Running))]
        Running { ticks: u32 },
        #[fsm(terminal)]
        Done,
    }

    #[derive(Event, Debug, Clone, PartialEq)]
    enum Cmd {
        Start,
        Finish,
        Tick { panic: bool },
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Fx {
        Started,
    }

    impl Handler<cmd::Start, job::Running> for job::Queued {
        fn handle(
            _: job::Queued,
            _: cmd::Start,
            fx: &mut Effects<Fx>,
        ) -> Result<job::Running, Refusal> {
            fx.push(Fx::Started);
            Ok(job::Running { ticks: 0 })
        }
    }
    impl Handler<cmd::Finish, job::Done> for job::Running {
        fn handle(
            _: job::RunningRef<'_>,
            _: cmd::Finish,
            _: &mut Effects<Fx>,
        ) -> Result<job::Done, Refusal> {
            Ok(job::Done)
        }
    }
    impl Handler<cmd::Tick, job::Running> for job::Running {
        fn handle(
            s: job::RunningRef<'_>,
            ev: cmd::Tick,
            _: &mut Effects<Fx>,
        ) -> Result<job::Running, Refusal> {
            assert!(!ev.panic, "tick handler exploded");
            Ok(job::Running { ticks: s.ticks + 1 })
        }
    }

    struct Harness {
        core: Core<Job>,
        now: Instant,
        tickets: Vec<Ticket<Answer>>,
    }

    fn harness() -> Harness {
        let clock = ManualClock::new().clock();
        let rules = Rules::new(8, 4, 16, TimeBase::new(&clock), None, None, None, None);
        Harness {
            core: Core::new(rules),
            now: clock.now(),
            tickets: Vec::new(),
        }
    }

    fn id(s: &str) -> MachineId {
        MachineId::new(s).unwrap()
    }

    impl Harness {
        fn load(&mut self, m: &MachineId, job: Job, seq: Option<u64>) {
            let slot = Slot::new(job, Journal::default(), seq, 0, self.now, None);
            self.core.insert(m, slot);
        }

        fn cmd(&mut self, m: &MachineId, request: Request<Cmd>) -> Cmd_<Job> {
            let (ticket, reply) = Ticket::new(|| Err(CommandError::Closed));
            self.tickets.push(ticket);
            Cmd_ {
                id: m.clone(),
                request,
                enqueued: 0,
                reply: Some(reply),
                fire: None,
                settles: None,
            }
        }

        /// Decides `event` for `m` (loaded), as the shell does: work first, then replays.
        fn submit(&mut self, m: &MachineId, request: impl Into<Request<Cmd>>) {
            let cmd = self.cmd(m, request.into());
            self.core.work.push_back(cmd);
            while let Some(cmd) = self.core.work.pop_front() {
                self.core.decide(cmd, self.now, 0, Ok(()));
            }
        }

        /// Commits what the core asks to write (the writes listed in `fail` do not hold) and
        /// settles the batch.
        fn commit(&mut self, fail: &[&MachineId]) -> (Writes, Settled<Job>) {
            let writes = self.core.writes(&Codec::new(1));
            let mut failed = HashMap::new();
            for (m, _, snapshot) in &writes {
                if fail.contains(&m) {
                    let error = CommandError::NotStored {
                        id: m.clone(),
                        error: Arc::new(StoreError::NotFound { id: m.clone() }),
                    };
                    failed.insert(m.clone(), error);
                } else {
                    self.core.stored(m, snapshot.as_ref().unwrap());
                }
            }
            let settled = self.core.settle(&failed, 1, Duration::ZERO, 0, true);
            (writes, settled)
        }
    }

    use crate::kernel::inbox::Cmd as Cmd_;

    fn outcomes(settled: &Settled<Job>) -> Vec<Result<u64, String>> {
        settled
            .replies
            .iter()
            .map(|(_, o)| match o {
                Ok(c) => Ok(c.seq),
                Err(e) => Err(format!("{e:?}")
                    .split([' ', '(', '{'])
                    .next()
                    .unwrap()
                    .to_owned()),
            })
            .collect()
    }

    #[test]
    fn an_applied_command_is_written_once_and_answered_after_the_commit() {
        let mut h = harness();
        let m = id("job-1");
        h.load(&m, Job::Queued, None);
        h.submit(&m, Cmd::Start);
        h.submit(&m, Cmd::Tick { panic: false });
        let (writes, settled) = h.commit(&[]);
        // Two decisions on one machine: one write, of the state after both, over nothing.
        assert_eq!(writes.len(), 1);
        assert_eq!(
            (writes[0].1, writes[0].2.as_ref().unwrap().seq()),
            (None, 1)
        );
        // Both decided against the same durable base: each gets the sequence of the write.
        assert_eq!(outcomes(&settled), vec![Ok(1), Ok(1)]);
        assert_eq!(
            settled.effects,
            vec![(EffectId::new(m.clone(), 1, 0), Fx::Started)]
        );
        assert_eq!((settled.ended, h.core.counts.committed), (2, 2));
        assert_eq!(h.core.slots[&m].seq, Some(1));
        assert!(!h.core.slots[&m].dirty);
    }

    #[test]
    fn a_write_that_did_not_hold_voids_every_decision_made_on_that_change() {
        let mut h = harness();
        let (a, b) = (id("a"), id("b"));
        h.load(&a, Job::Queued, None);
        h.load(&b, Job::Queued, None);
        h.submit(&a, Cmd::Start);
        h.submit(&b, Cmd::Start);
        h.submit(&a, Cmd::Tick { panic: false });
        let (_, settled) = h.commit(&[&a]);
        assert_eq!(
            outcomes(&settled),
            vec![Err("NotStored".into()), Ok(1), Err("NotStored".into())]
        );
        // No effect of a change that did not hold is handed out.
        assert_eq!(
            settled.effects,
            vec![(EffectId::new(b.clone(), 1, 0), Fx::Started)]
        );
        assert_eq!((h.core.counts.not_stored, h.core.counts.committed), (2, 1));
    }

    #[test]
    fn a_machine_that_did_not_load_fails_its_command_and_a_fenced_one_goes_to_the_owner() {
        let mut h = harness();
        let m = id("elsewhere");
        let unavailable = CommandError::Unavailable {
            id: m.clone(),
            error: Arc::new(StoreError::NotFound { id: m.clone() }),
        };
        let cmd = h.cmd(&m, Request::new(Cmd::Start));
        h.core.decide(cmd, h.now, 0, Err(unavailable));
        let fenced = CommandError::Fenced {
            id: m.clone(),
            error: Arc::new(StoreError::Fenced {
                id: m.clone(),
                held: None,
                current: Some(2),
            }),
        };
        let key = IdempotencyKey::new("k").unwrap();
        let cmd = h.cmd(&m, Request::new(Cmd::Finish).with_key(key.clone()));
        h.core.decide(cmd, h.now, 0, Err(fenced));
        let (writes, settled) = h.commit(&[]);
        assert!(writes.is_empty());
        assert_eq!(
            outcomes(&settled),
            vec![Err("Unavailable".into()), Err("Fenced".into())]
        );
        // The fenced request, key and all, is kept for the caller to send to the owner.
        assert_eq!(h.core.to_owner.len(), 1);
        assert_eq!(h.core.to_owner[0].1.event, Cmd::Finish);
        assert_eq!(h.core.to_owner[0].1.key, Some(key));
    }

    #[test]
    fn a_postponed_command_is_answered_once_when_a_state_change_replays_it() {
        let mut h = harness();
        let m = id("job");
        h.load(&m, Job::Queued, None);
        h.submit(&m, Cmd::Finish);
        let (_, settled) = h.commit(&[]);
        // Postponed: no answer yet, its work ended for now, traced as deferred.
        assert!(settled.replies.is_empty());
        assert_eq!(settled.ended, 1);
        assert_eq!(settled.trace[0].outcome, TraceOutcome::Deferred);
        assert_eq!(h.core.deferred, 1);
        h.submit(&m, Cmd::Start);
        assert_eq!(h.core.replayed, 1, "the state change replayed it");
        let (_, settled) = h.commit(&[]);
        assert_eq!(outcomes(&settled), vec![Ok(1), Ok(1)]);
        assert_eq!(h.core.slots[&m].machine, Job::Done);
        assert_eq!(h.core.deferred, 0);
    }

    #[test]
    fn every_command_given_ends_exactly_once_and_is_counted_once() {
        let mut h = harness();
        let m = id("job");
        h.load(&m, Job::Queued, None);
        let key = IdempotencyKey::new("once").unwrap();
        h.submit(&m, Request::new(Cmd::Start).with_key(key.clone()));
        h.submit(&m, Request::new(Cmd::Start).with_key(key)); // a retry: duplicate
        h.submit(&m, Cmd::Start); // rejected: no transition from Running
        h.submit(&m, Cmd::Tick { panic: true }); // the handler panics: rejected
        h.submit(
            &m,
            Request::new(Cmd::Tick { panic: false }).with_deadline(h.now), // expired
        );
        // A firing whose timer is not armed (cancelled meanwhile): void.
        h.core.decide(
            Cmd_ {
                id: m.clone(),
                request: Request::new(Cmd::Finish),
                enqueued: 0,
                reply: None,
                fire: Some(Box::new(Fire {
                    kind: TimerKind::State,
                    instance: 7,
                })),
                settles: None,
            },
            h.now,
            0,
            Ok(()),
        );
        let (_, settled) = h.commit(&[]);
        assert_eq!(settled.ended, 6, "six commands given, six ended");
        assert_eq!(
            settled.replies.len(),
            5,
            "the void firing has no one to answer"
        );
        assert_eq!(
            outcomes(&settled),
            vec![
                Ok(1),
                Ok(1),
                Err("Rejected".into()),
                Err("Rejected".into()),
                Err("Expired".into())
            ]
        );
        assert!(settled.replies[1].1.as_ref().unwrap().duplicate);
        let c = &h.core.counts;
        assert_eq!(
            (
                c.committed,
                c.duplicates,
                c.rejected,
                c.panicked,
                c.expired,
                c.timers_fired
            ),
            (1, 1, 2, 1, 1, 0)
        );
        // The trace holds one entry per answered command.
        assert_eq!(settled.trace.len(), 5);
    }
}
