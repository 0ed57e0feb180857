//! The consumer's side: takes commands in batches and applies them to the machine, following
//! each state's policy for events it has no transition for.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use crate::effects::Effects;
use crate::machine::{Event, StateMachine};
use crate::rejection::{Reason, Refusal, Rejection};
use crate::table::{Policy, StateId, Table};

use super::command::{Command, Outcome};
use super::metrics::{Latencies, Metrics};
use super::overload::{DelegateCause, DumpCause, Overload};
use super::shared::{wait_on, Shared, State};

/// What the consumer does with an event in a state, precomputed from the table so the hot path
/// is one array read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// A transition exists, or the state rejects the event: let the machine answer.
    Apply,
    Defer,
    Dump,
    Delegate,
}

pub(crate) fn routes(table: &Table) -> Box<[Route]> {
    let events = table.events().len();
    let mut routes = Vec::with_capacity(table.states().len() * events);
    for s in 0..table.states().len() {
        for e in 0..events {
            let (state, event) = (StateId::new(s as u16), crate::table::EventId::new(e as u16));
            routes.push(match table.policy(state, event) {
                Some(Policy::Defer) => Route::Defer,
                Some(Policy::Dump) => Route::Dump,
                Some(Policy::Delegate) => Route::Delegate,
                _ => Route::Apply,
            });
        }
    }
    routes.into_boxed_slice()
}

/// Final outcomes decided since the consumer last published to the shared counts.
#[derive(Default)]
struct Tally {
    applied: u64,
    rejected: u64,
    dumped: u64,
    delegated: u64,
    expired: u64,
    closed: u64,
    replayed: u64,
}

/// How a shutdown treats the commands already accepted: of a queue
/// ([`Consumer::shutdown`]) or of a kernel
/// ([`Kernel::shutdown`](crate::kernel::Kernel::shutdown), where it is also
/// `kernel::Shutdown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Shutdown {
    /// Stop intake and apply every queued command; hand back only the postponed ones the
    /// final state still does not take. A kernel also persists what it applies and runs every
    /// pending effect and the events they feed back.
    Drain,
    /// Stop intake and apply nothing more; hand back every queued and postponed command. A
    /// kernel answers them `CommandError::Closed` and abandons effects not yet started.
    HandBack,
}

/// How many commands the consumer decides between two releases of the latency lock, so a
/// metrics reader never waits long even on an unbounded queue.
const LATENCY_LOCK_SPAN: usize = 1024;

/// The machine's side of a queue: takes the queued commands in batches and applies them.
///
/// The consumer does not own the machine: each call borrows it, so the owner (a thread, the
/// kernel) decides what happens between batches. Effects of applied commands are appended to
/// the buffer the caller passes.
///
/// Per command, in arrival order:
/// - a command whose deadline passed is answered [`Outcome::Expired`];
/// - an event the state has a transition for, or rejects, goes to the machine
///   ([`Outcome::Applied`] or [`Outcome::Rejected`]);
/// - an event the state `defer(..)`s is postponed; after the next transition that changes the
///   state (not a self-transition, not a rejection), every postponed command is retried, in its
///   original order, before any newer command (as `gen_statem` does with postponed events);
/// - an event the state `dump(..)`s or `delegate(..)`s goes to the dump or overflow sink.
///
/// A handler that panics does not cost its command an answer: the machine is unchanged (it
/// only ever saw a view of the old state), the command is answered
/// [`Outcome::Rejected`] with [`Reason::Panicked`], its effects are discarded, the counts stay
/// exact, and then the panic continues out of `drain`/`run` to whoever supervises the
/// consumer. Calling `drain` again carries on with the rest of the batch, in order.
///
/// Dropping the consumer closes the queue and answers every command still held
/// [`Outcome::Closed`]; call [`Consumer::shutdown`] to get them back instead.
pub struct Consumer<M: StateMachine> {
    shared: Arc<Shared<M::Event>>,
    batch: VecDeque<Command<M::Event>>,
    replay: VecDeque<Command<M::Event>>,
    deferred: VecDeque<Command<M::Event>>,
    defer_limit: usize,
    /// The earliest deadline among postponed commands, to expire them on time.
    deferred_deadline: Option<Instant>,
    routes: Box<[Route]>,
    events: usize,
    tally: Tally,
    wakers: Vec<Waker>,
    /// A handler's panic, caught to answer its command, to be resumed right after.
    panic: Option<Box<dyn Any + Send>>,
    machine: PhantomData<fn(&mut M)>,
}

impl<M: StateMachine> Consumer<M> {
    pub(crate) fn new(
        shared: Arc<Shared<M::Event>>,
        defer_limit: usize,
        routes: Box<[Route]>,
    ) -> Self {
        Consumer {
            shared,
            batch: VecDeque::new(),
            replay: VecDeque::new(),
            deferred: VecDeque::new(),
            defer_limit,
            deferred_deadline: None,
            routes,
            events: M::TABLE.events().len(),
            tally: Tally::default(),
            wakers: Vec::new(),
            panic: None,
            machine: PhantomData,
        }
    }

    /// Applies every command queued now (and those that arrive while it works), then returns
    /// how many commands it decided. Never blocks waiting for commands.
    pub fn drain(&mut self, machine: &mut M, effects: &mut Effects<M::Effect>) -> usize {
        let mut decided = 0;
        while self.refill() {
            decided += self.process(machine, effects);
        }
        decided
    }

    /// Runs until intake is closed (by [`Sender::close`](super::Sender::close), by
    /// [`Consumer::close`], or by dropping every sender) and every queued command is decided.
    /// After each batch, `on_effects` receives the effects of the commands applied in it.
    /// The queue keeps no time: timer requests handlers make are dropped after each batch
    /// (a [`Kernel`](crate::kernel::Kernel) runs them; [`Consumer::drain`] leaves them in the
    /// buffer for a caller that does).
    ///
    /// Returns the postponed commands that the final state never took, handed back (their
    /// tickets answered [`Outcome::Closed`]).
    pub fn run(
        &mut self,
        machine: &mut M,
        mut on_effects: impl FnMut(std::vec::Drain<'_, M::Effect>),
    ) -> Vec<Command<M::Event>> {
        let mut effects = Effects::new();
        loop {
            self.drain(machine, &mut effects);
            if !effects.is_empty() {
                on_effects(effects.drain());
            }
            if !effects.timers().is_empty() {
                drop(effects.drain_timers());
            }
            if !self.wait() {
                break;
            }
        }
        self.hand_back(false)
    }

    /// Blocks until there are commands to take (`true`), or intake is over and nothing is left
    /// (`false`). Also returns `true` when a postponed command's deadline passes, so that
    /// [`Consumer::drain`] can answer it.
    ///
    /// Spins briefly, then yields, before it sleeps: under load the next batch is usually a
    /// few hundred nanoseconds away, and a producer never pays for a wake-up unless the
    /// consumer really sleeps.
    pub fn wait(&mut self) -> bool {
        let shared = &*self.shared;
        for round in 0..64 {
            if shared.pending.load(Ordering::Relaxed) > 0 {
                return true;
            }
            if round < 32 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let mut state = shared.lock();
        loop {
            if !state.queue.is_empty() {
                return true;
            }
            if shared.intake_over(&state) {
                return false;
            }
            if let Some(deadline) = self.deferred_deadline {
                if shared.config.clock.now() >= deadline {
                    return true;
                }
            }
            state.consumer_parked = true;
            state = wait_on(
                &shared.work,
                state,
                shared.config.clock.sleep_bound(self.deferred_deadline),
            );
            state.consumer_parked = false;
        }
    }

    /// Stops intake (like [`Sender::close`](super::Sender::close)).
    pub fn close(&self) {
        self.shared.close();
    }

    /// Closes the queue and settles every accepted command: with [`Shutdown::Drain`] the
    /// queued ones are applied first; what is left is handed back (tickets answered
    /// [`Outcome::Closed`], counted as closed). Nothing accepted is dropped silently.
    pub fn shutdown(
        &mut self,
        how: Shutdown,
        machine: &mut M,
        effects: &mut Effects<M::Effect>,
    ) -> Vec<Command<M::Event>> {
        self.shared.close();
        match how {
            Shutdown::Drain => {
                self.drain(machine, effects);
                self.hand_back(false)
            }
            Shutdown::HandBack => self.hand_back(true),
        }
    }

    /// Commands postponed by `defer(..)` now.
    pub fn deferred(&self) -> usize {
        self.deferred.len()
    }

    /// A snapshot of the queue's metrics.
    pub fn metrics(&self) -> Metrics {
        self.shared.metrics()
    }

    /// A copy of the full latency histograms.
    pub fn latencies(&self) -> Latencies {
        self.shared.lock_latencies().clone()
    }

    /// Publishes the tally and takes the next batch. `false` when there is nothing to do.
    fn refill(&mut self) -> bool {
        // Deadlines of postponed commands are due even when no new command arrives.
        if let Some(deadline) = self.deferred_deadline {
            let now = self.shared.config.clock.now();
            if now >= deadline {
                self.expire_deferred(now);
            }
        }
        let mut state = self.shared.lock();
        publish(&mut self.tally, &mut state);
        state.deferred = self.deferred.len() as u64;
        // Commands left over by a handler's panic are taken first, in order.
        let leftover = !self.batch.is_empty() || !self.replay.is_empty();
        let has_work = leftover || !state.queue.is_empty();
        if has_work && !leftover {
            std::mem::swap(&mut state.queue, &mut self.batch);
            self.shared.pending.store(0, Ordering::Relaxed);
            if state.blocked > 0 {
                self.shared.room.notify_all();
            }
            std::mem::swap(&mut state.wakers, &mut self.wakers);
        }
        state.in_progress = (self.batch.len() + self.replay.len()) as u64;
        #[cfg(feature = "metrics")]
        let exported = (state.cut(), state.queue.len(), state.high_water);
        drop(state);
        self.wakers.drain(..).for_each(Waker::wake);
        #[cfg(feature = "metrics")]
        super::export::publish(
            self.shared.config.machine,
            &exported.0,
            exported.1,
            exported.2,
        );
        has_work
    }

    #[inline]
    fn route(&self, state: StateId, event: &M::Event) -> Route {
        self.routes
            .get(state.index() * self.events + event.id().index())
            .copied()
            .unwrap_or(Route::Apply)
    }

    /// Decides the batch (and any postponed commands it releases).
    fn process(&mut self, machine: &mut M, effects: &mut Effects<M::Effect>) -> usize {
        let shared = self.shared.clone();
        let timing = shared.config.timing;
        let (clock, stamps) = (&shared.config.clock, &shared.config.stamps);
        let mut latencies = timing.then(|| shared.lock_latencies());
        let mut now = if timing { stamps.stamp() } else { 0 };
        let mut n = 0;
        loop {
            let Some(cmd) = self.replay.pop_front().or_else(|| self.batch.pop_front()) else {
                break;
            };
            n += 1;
            if n % LATENCY_LOCK_SPAN == 0 && latencies.is_some() {
                drop(latencies.take());
                latencies = Some(shared.lock_latencies());
            }
            let start = now;
            let outcome = if cmd.deadline.is_some() && cmd.expired_at(clock.now()) {
                self.tally.expired += 1;
                trace("expired", &cmd);
                Some((shell(cmd), Outcome::Expired))
            } else {
                let state = machine.state();
                let route = self.route(state, &cmd.event);
                if route != Route::Apply {
                    // Sinks may run here, and may read this queue's metrics: release the
                    // histograms while they run.
                    drop(latencies.take());
                }
                match route {
                    Route::Apply => Some(self.apply(machine, cmd, effects)),
                    Route::Defer => self.defer(cmd),
                    Route::Dump => Some(self.dump(
                        cmd,
                        DumpCause::StatePolicy {
                            state: M::TABLE.state_name(state),
                        },
                    )),
                    Route::Delegate => self.delegate(
                        cmd,
                        DelegateCause::StatePolicy {
                            state: M::TABLE.state_name(state),
                        },
                    ),
                }
            };
            if timing {
                now = stamps.stamp();
            }
            if timing && latencies.is_none() {
                latencies = Some(shared.lock_latencies());
            }
            if let Some((cmd, outcome)) = outcome {
                if let (Some(latencies), Some(enqueued)) = (&mut latencies, cmd.enqueued_at) {
                    latencies.record(
                        stamps.nanos(enqueued, start),
                        stamps.nanos(start, now),
                        stamps.nanos(enqueued, now),
                    );
                }
                cmd.answer(outcome);
            }
            if let Some(payload) = self.panic.take() {
                drop(latencies);
                panic::resume_unwind(payload);
            }
        }
        n
    }

    /// Hands the command to the machine. Returns the command (its event spent when applied)
    /// with its outcome; the event is consumed by the machine, so what is returned is only the
    /// shell carrying the reply.
    #[inline]
    fn apply(
        &mut self,
        machine: &mut M,
        cmd: Command<M::Event>,
        effects: &mut Effects<M::Effect>,
    ) -> (Command<()>, Outcome) {
        let (event, shell) = cmd.split();
        let (state, event_id, mark) = (machine.state(), event.id(), effects.mark());
        // The machine is unchanged when a handler panics (it only ever sees a view of the old
        // state), so the panic can be caught to answer the command and keep the counts exact;
        // `process` then lets it continue.
        let applied = panic::catch_unwind(AssertUnwindSafe(|| machine.apply_into(event, effects)));
        let outcome = match applied {
            Ok(Ok(transition)) => {
                self.tally.applied += 1;
                if transition.from() != transition.to() && !self.deferred.is_empty() {
                    self.release_deferred();
                }
                Outcome::Applied(transition)
            }
            Ok(Err(rejection)) => {
                self.tally.rejected += 1;
                Outcome::Rejected(rejection)
            }
            Err(payload) => {
                effects.rewind(mark);
                self.tally.rejected += 1;
                let message = crate::rejection::panic_message(&*payload);
                self.panic = Some(payload);
                Outcome::Rejected(Rejection::new(
                    M::TABLE,
                    state,
                    event_id,
                    Reason::Panicked(Refusal::new(message)),
                ))
            }
        };
        #[cfg(feature = "tracing")]
        tracing::debug!(machine = M::TABLE.machine(), outcome = %outcome, "queue: decided");
        (shell, outcome)
    }

    /// Puts every postponed command back in front, in original order.
    fn release_deferred(&mut self) {
        #[cfg(feature = "tracing")]
        tracing::debug!(
            machine = M::TABLE.machine(),
            count = self.deferred.len(),
            "queue: state changed, replaying postponed commands"
        );
        self.tally.replayed += self.deferred.len() as u64;
        while let Some(cmd) = self.deferred.pop_back() {
            self.replay.push_front(cmd);
        }
        self.deferred_deadline = None;
    }

    fn defer(&mut self, cmd: Command<M::Event>) -> Option<(Command<()>, Outcome)> {
        if self.deferred.len() < self.defer_limit {
            trace("deferred", &cmd);
            if let Some(d) = cmd.deadline {
                self.deferred_deadline = Some(self.deferred_deadline.map_or(d, |e| e.min(d)));
            }
            self.deferred.push_back(cmd);
            return None;
        }
        match self.shared.config.overload {
            Overload::DropOldest => {
                let oldest = self.deferred.pop_front();
                self.deferred.push_back(cmd);
                let oldest = oldest?;
                Some(self.dump(oldest, DumpCause::DeferLimit))
            }
            Overload::Delegate => self.delegate(cmd, DelegateCause::DeferLimit),
            _ => Some(self.dump(cmd, DumpCause::DeferLimit)),
        }
    }

    fn dump(&mut self, cmd: Command<M::Event>, cause: DumpCause) -> (Command<()>, Outcome) {
        self.tally.dumped += 1;
        trace("dumped", &cmd);
        if let Some(sink) = &self.shared.config.dump {
            sink.dumped(&cmd.event, &cause);
        }
        (shell(cmd), Outcome::Dumped(cause))
    }

    fn delegate(
        &mut self,
        cmd: Command<M::Event>,
        cause: DelegateCause,
    ) -> Option<(Command<()>, Outcome)> {
        let (event, shell) = cmd.split();
        let refused = match &self.shared.config.overflow {
            Some(sink) => sink.delegate(event, &cause).err(),
            None => Some(event),
        };
        match refused {
            None => {
                self.tally.delegated += 1;
                Some((shell, Outcome::Delegated(cause)))
            }
            Some(event) => Some(self.dump(shell.carrying(event), DumpCause::OverflowRefused)),
        }
    }

    /// Answers every postponed command whose deadline passed.
    fn expire_deferred(&mut self, now: Instant) {
        let mut kept = VecDeque::with_capacity(self.deferred.len());
        let mut earliest: Option<Instant> = None;
        for cmd in self.deferred.drain(..) {
            if cmd.expired_at(now) {
                self.tally.expired += 1;
                trace("expired", &cmd);
                cmd.answer(Outcome::Expired);
            } else {
                if let Some(d) = cmd.deadline {
                    earliest = Some(earliest.map_or(d, |e| e.min(d)));
                }
                kept.push_back(cmd);
            }
        }
        self.deferred = kept;
        self.deferred_deadline = earliest;
    }

    /// Takes every command still held (with `all`, also the queued ones), answers their tickets
    /// `Closed`, counts them and hands them back.
    fn hand_back(&mut self, all: bool) -> Vec<Command<M::Event>> {
        let mut out = Vec::new();
        {
            let mut state = self.shared.lock();
            if all {
                out.extend(self.replay.drain(..));
                out.extend(self.batch.drain(..));
                out.extend(state.queue.drain(..));
                self.shared.pending.store(0, Ordering::Relaxed);
            }
            out.extend(self.deferred.drain(..));
            self.deferred_deadline = None;
            self.tally.closed += out.len() as u64;
            publish(&mut self.tally, &mut state);
            state.in_progress = (self.batch.len() + self.replay.len()) as u64;
            state.deferred = 0;
        }
        for cmd in &mut out {
            if let Some(reply) = cmd.reply.take() {
                reply.send(Outcome::Closed);
            }
            cmd.enqueued_at = None;
        }
        out
    }
}

/// Adds the consumer's tally to the shared counts (under the queue's lock).
fn publish<E>(tally: &mut Tally, state: &mut State<E>) {
    let t = std::mem::take(tally);
    let c = &mut state.counts;
    c.applied += t.applied;
    c.rejected += t.rejected;
    c.dumped += t.dumped;
    c.delegated += t.delegated;
    c.expired += t.expired;
    c.closed += t.closed;
    state.replayed += t.replayed;
}

/// The command without its event, for answering after the event was used or dropped.
fn shell<E>(cmd: Command<E>) -> Command<()> {
    cmd.split().1
}

#[inline]
fn trace<E: Event>(what: &'static str, cmd: &Command<E>) {
    #[cfg(feature = "tracing")]
    tracing::debug!(event = cmd.event.name(), "queue: {what}");
    #[cfg(not(feature = "tracing"))]
    let _ = (what, cmd);
}

impl<M: StateMachine> Drop for Consumer<M> {
    fn drop(&mut self) {
        self.shared.close();
        drop(self.hand_back(true));
    }
}

impl<M: StateMachine> fmt::Debug for Consumer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("machine", &M::TABLE.machine())
            .field("deferred", &self.deferred.len())
            .finish_non_exhaustive()
    }
}
