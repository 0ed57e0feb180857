//! The state producers and the consumer share, and the producers' side of the queue.

use crate::sync::Recover;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::clock::{Clock, Stamps};
use super::command::{Command, Outcome, Ticket};
use super::error::SubmitError;
use super::metrics::{Counts, Latencies, Metrics};
use super::overload::{DelegateCause, DumpCause, DumpSink, Overflow, Overload};

/// What a queue was built with; fixed for its life.
pub(crate) struct Config<E> {
    pub(crate) machine: &'static str,
    /// `usize::MAX` for an unbounded queue.
    pub(crate) capacity: usize,
    pub(crate) bounded: bool,
    pub(crate) overload: Overload,
    pub(crate) dump: Option<Arc<dyn DumpSink<E>>>,
    pub(crate) overflow: Option<Arc<dyn Overflow<E>>>,
    pub(crate) clock: Clock,
    pub(crate) stamps: Stamps,
    /// Whether latencies are measured (one clock read per command on each side).
    pub(crate) timing: bool,
}

/// Everything behind the queue's lock. Counts live here so one lock gives a consistent cut.
pub(crate) struct State<E> {
    pub(crate) queue: VecDeque<Command<E>>,
    pub(crate) closed: bool,
    /// The consumer is blocked on `work` and must be notified.
    pub(crate) consumer_parked: bool,
    /// Producers blocked on `room`.
    pub(crate) blocked: usize,
    /// Async producers waiting for room.
    pub(crate) wakers: Vec<Waker>,
    /// Final outcomes (the `queued` and `deferred` fields are unused here, see below).
    pub(crate) counts: Counts,
    /// Commands the consumer took and has not yet decided (its batch and replay list), as of
    /// its last publication.
    pub(crate) in_progress: u64,
    /// Commands postponed by `defer(..)`, as of the consumer's last publication.
    pub(crate) deferred: u64,
    pub(crate) high_water: usize,
    /// Postponed commands retried after a state change (each retry counts).
    pub(crate) replayed: u64,
}

pub(crate) struct Shared<E> {
    pub(crate) state: Mutex<State<E>>,
    /// The consumer waits here for commands.
    pub(crate) work: Condvar,
    /// Blocked producers wait here for room.
    pub(crate) room: Condvar,
    /// A lock-free hint of `state.queue.len()`, for the consumer's short spin before it parks.
    pub(crate) pending: AtomicUsize,
    pub(crate) senders: AtomicUsize,
    pub(crate) latencies: Mutex<Latencies>,
    pub(crate) config: Config<E>,
    pub(crate) started: Instant,
}

/// How a submit may wait for room.
enum Wait<'a> {
    No,
    Block,
    Async(&'a Waker),
}

/// What a submit came to.
enum Push<E> {
    Done(Result<(), SubmitError<E>>),
    /// An async submit found no room and registered its waker; try again when woken.
    Pending(Command<E>),
}

impl<E> State<E> {
    /// The counts with the undecided buckets filled in: a cut that adds up.
    pub(crate) fn cut(&self) -> Counts {
        let mut counts = self.counts;
        counts.queued = self.queue.len() as u64 + self.in_progress;
        counts.deferred = self.deferred;
        counts
    }
}

impl<E> Shared<E> {
    pub(crate) fn new(config: Config<E>) -> Self {
        Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                consumer_parked: false,
                blocked: 0,
                wakers: Vec::new(),
                counts: Counts::default(),
                in_progress: 0,
                deferred: 0,
                high_water: 0,
                replayed: 0,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            pending: AtomicUsize::new(0),
            senders: AtomicUsize::new(1),
            latencies: Mutex::new(Latencies::new()),
            started: config.clock.now(),
            config,
        }
    }

    /// The lock. Nothing panics while holding it except on allocation failure, and every
    /// update under it is a plain field write, so a poisoned lock holds consistent data.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State<E>> {
        self.state.lock().recover()
    }

    pub(crate) fn lock_latencies(&self) -> MutexGuard<'_, Latencies> {
        self.latencies.lock().recover()
    }

    /// Whether producers can no longer add commands.
    pub(crate) fn intake_over(&self, state: &State<E>) -> bool {
        state.closed || self.senders.load(Ordering::Acquire) == 0
    }

    pub(crate) fn close(&self) {
        let wakers = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.wakers)
        };
        self.work.notify_all();
        self.room.notify_all();
        wakers.into_iter().for_each(Waker::wake);
    }

    pub(crate) fn metrics(&self) -> Metrics {
        let (counts, depth, high_water, replayed) = {
            let state = self.lock();
            (
                state.cut(),
                state.queue.len(),
                state.high_water,
                state.replayed,
            )
        };
        let [wait, apply, end_to_end] = Metrics::summarize(&self.lock_latencies());
        let uptime = self
            .config
            .clock
            .now()
            .saturating_duration_since(self.started);
        let secs = uptime.as_secs_f64();
        Metrics {
            machine: self.config.machine,
            counts,
            depth,
            high_water,
            capacity: self.config.bounded.then_some(self.config.capacity),
            replayed,
            uptime,
            throughput: if secs > 0.0 {
                counts.decided() as f64 / secs
            } else {
                0.0
            },
            wait,
            apply,
            end_to_end,
        }
    }

    fn dump(&self, event: &E, cause: &DumpCause) {
        if let Some(sink) = &self.config.dump {
            sink.dumped(event, cause);
        }
    }

    /// One attempt to queue `cmd`, waiting for room as `wait` allows.
    fn push(&self, mut cmd: Command<E>, wait: Wait<'_>) -> Push<E> {
        let timing = self.config.timing;
        let mut now = cmd.deadline.map(|_| self.config.clock.now());
        let mut stamp = timing.then(|| self.config.stamps.stamp());
        let mut state = self.lock();
        loop {
            if now.is_some_and(|now| cmd.expired_at(now)) {
                state.counts.submitted += 1;
                state.counts.expired += 1;
                return Push::Done(Err(SubmitError::Expired(cmd)));
            }
            if self.intake_over(&state) {
                state.counts.submitted += 1;
                state.counts.closed += 1;
                return Push::Done(Err(SubmitError::Closed(cmd)));
            }
            if state.queue.len() < self.config.capacity {
                cmd.enqueued_at = stamp;
                state.queue.push_back(cmd);
                state.counts.submitted += 1;
                let len = state.queue.len();
                state.high_water = state.high_water.max(len);
                self.pending.store(len, Ordering::Relaxed);
                let wake = std::mem::replace(&mut state.consumer_parked, false);
                drop(state);
                if wake {
                    self.work.notify_one();
                }
                return Push::Done(Ok(()));
            }
            match self.config.overload {
                Overload::Backpressure => match wait {
                    Wait::No => {
                        state.counts.submitted += 1;
                        state.counts.full += 1;
                        return Push::Done(Err(SubmitError::Full(cmd)));
                    }
                    Wait::Async(waker) => {
                        if !state.wakers.iter().any(|w| w.will_wake(waker)) {
                            state.wakers.push(waker.clone());
                        }
                        return Push::Pending(cmd);
                    }
                    Wait::Block => {
                        state.blocked += 1;
                        state = wait_on(
                            &self.room,
                            state,
                            self.config.clock.sleep_bound(cmd.deadline),
                        );
                        state.blocked -= 1;
                        now = cmd.deadline.map(|_| self.config.clock.now());
                        stamp = timing.then(|| self.config.stamps.stamp());
                    }
                },
                Overload::DropNewest => {
                    state.counts.submitted += 1;
                    state.counts.dumped += 1;
                    drop(state);
                    self.dump(&cmd.event, &DumpCause::QueueFull);
                    return Push::Done(Err(SubmitError::Dumped(cmd)));
                }
                Overload::DropOldest => {
                    let oldest = state.queue.pop_front();
                    cmd.enqueued_at = stamp;
                    state.queue.push_back(cmd);
                    state.counts.submitted += 1;
                    state.counts.dumped += 1;
                    drop(state);
                    if let Some(oldest) = oldest {
                        self.dump(&oldest.event, &DumpCause::Evicted);
                        oldest.answer(Outcome::Dumped(DumpCause::Evicted));
                    }
                    return Push::Done(Ok(()));
                }
                Overload::Delegate => {
                    drop(state);
                    return Push::Done(self.delegate_full(cmd));
                }
            }
        }
    }

    /// A full queue under [`Overload::Delegate`]: the overflow sink takes the command, or it is
    /// handed back as `Full`.
    fn delegate_full(&self, cmd: Command<E>) -> Result<(), SubmitError<E>> {
        let (event, shell) = cmd.split();
        let refused = match &self.config.overflow {
            Some(sink) => sink.delegate(event, &DelegateCause::QueueFull).err(),
            None => Some(event),
        };
        let mut state = self.lock();
        state.counts.submitted += 1;
        match refused {
            None => {
                state.counts.delegated += 1;
                drop(state);
                drop(shell);
                Err(SubmitError::Delegated)
            }
            Some(event) => {
                state.counts.full += 1;
                Err(SubmitError::Full(shell.carrying(event)))
            }
        }
    }
}

/// Waits on `condvar`, at most `bound` if given (a wake-up may be spurious: callers re-check).
pub(crate) fn wait_on<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    bound: Option<Duration>,
) -> MutexGuard<'a, T> {
    match bound {
        None => condvar.wait(guard).recover(),
        Some(bound) => condvar.wait_timeout(guard, bound).recover().0,
    }
}

/// Detaches the reply of a command handed back to a caller who holds no ticket for it.
fn detach<E>(mut error: SubmitError<E>) -> SubmitError<E> {
    if let SubmitError::Full(c)
    | SubmitError::Closed(c)
    | SubmitError::Expired(c)
    | SubmitError::Dumped(c) = &mut error
    {
        c.reply = None;
    }
    error
}

/// The producers' handle of a queue: submit commands from any thread. Clone it for more
/// producers; the queue's intake closes when [`Sender::close`] is called or the last sender
/// is dropped.
///
/// Three ways to submit, each with and without a [`Ticket`] for the outcome:
///
/// | | fire and count | with a ticket |
/// |---|---|---|
/// | never waits | [`try_submit`](Sender::try_submit) | [`try_request`](Sender::try_request) |
/// | blocks the thread for room, up to the command's deadline | [`submit`](Sender::submit) | [`request`](Sender::request) |
/// | awaits room without blocking the executor | [`submit_async`](Sender::submit_async) | [`request_async`](Sender::request_async) |
///
/// Waiting for room only happens under [`Overload::Backpressure`]; the other policies decide at
/// once. A command the queue did not keep comes back inside the [`SubmitError`].
pub struct Sender<E> {
    pub(crate) shared: Arc<Shared<E>>,
}

impl<E> Sender<E> {
    pub(crate) fn new(shared: Arc<Shared<E>>) -> Self {
        Sender { shared }
    }

    /// Queues the command if there is room now; otherwise the overload policy decides at once.
    pub fn try_submit(&self, command: impl Into<Command<E>>) -> Result<(), SubmitError<E>> {
        match self.shared.push(command.into(), Wait::No) {
            Push::Done(result) => result.map_err(detach),
            Push::Pending(cmd) => Err(SubmitError::Full(cmd)),
        }
    }

    /// Queues the command, blocking the thread while the queue is full under back-pressure,
    /// until there is room, the command's deadline passes ([`SubmitError::Expired`]) or the
    /// queue closes ([`SubmitError::Closed`]).
    pub fn submit(&self, command: impl Into<Command<E>>) -> Result<(), SubmitError<E>> {
        match self.shared.push(command.into(), Wait::Block) {
            Push::Done(result) => result.map_err(detach),
            Push::Pending(cmd) => Err(SubmitError::Full(cmd)),
        }
    }

    /// Like [`Sender::submit`], as a future: while the queue is full it registers the task's
    /// waker and yields, so it never blocks an executor thread. Works under any executor.
    ///
    /// A command's deadline is checked each time the future is woken (by room, or by the
    /// queue closing); to bound the wait itself, wrap the future in your runtime's timeout.
    /// Dropping the future drops the command it holds.
    pub fn submit_async(&self, command: impl Into<Command<E>>) -> Submit<'_, E> {
        Submit {
            shared: &self.shared,
            command: Some(command.into()),
        }
    }

    /// Like [`Sender::try_submit`], with a [`Ticket`] for the outcome.
    pub fn try_request(&self, command: impl Into<Command<E>>) -> Result<Ticket, SubmitError<E>> {
        let (ticket, cmd) = with_ticket(command.into());
        self.try_submit(cmd).map(|()| ticket)
    }

    /// Like [`Sender::submit`], with a [`Ticket`] for the outcome.
    pub fn request(&self, command: impl Into<Command<E>>) -> Result<Ticket, SubmitError<E>> {
        let (ticket, cmd) = with_ticket(command.into());
        self.submit(cmd).map(|()| ticket)
    }

    /// Like [`Sender::submit_async`], with a [`Ticket`] for the outcome (itself a future).
    pub fn request_async(&self, command: impl Into<Command<E>>) -> RequestAsync<'_, E> {
        let (ticket, cmd) = with_ticket(command.into());
        RequestAsync {
            submit: self.submit_async(cmd),
            ticket: Some(ticket),
        }
    }

    /// Stops intake: every later submit returns [`SubmitError::Closed`] with its command, and
    /// producers waiting for room wake up with the same answer. Commands already accepted stay
    /// for the consumer, which drains them or hands them back
    /// ([`Consumer::shutdown`](super::Consumer::shutdown)).
    pub fn close(&self) {
        self.shared.close();
    }

    /// Whether intake is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.intake_over(&self.shared.lock())
    }

    /// A snapshot of the queue's metrics.
    pub fn metrics(&self) -> Metrics {
        self.shared.metrics()
    }

    /// A copy of the full latency histograms.
    pub fn latencies(&self) -> Latencies {
        self.shared.lock_latencies().clone()
    }
}

fn with_ticket<E>(mut cmd: Command<E>) -> (Ticket, Command<E>) {
    let (ticket, reply) = Ticket::new(|| Outcome::Closed);
    cmd.reply = Some(reply);
    (ticket, cmd)
}

impl<E> Clone for Sender<E> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<E> Drop for Sender<E> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last producer is gone: wake the consumer so it can finish.
            let _state = self.shared.lock();
            self.shared.work.notify_all();
        }
    }
}

impl<E> fmt::Debug for Sender<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("machine", &self.shared.config.machine)
            .finish_non_exhaustive()
    }
}

/// A queue is an overflow sink for another: `try_submit`, handing the event back when this
/// queue does not keep it either.
impl<E: Send + 'static> Overflow<E> for Sender<E> {
    fn delegate(&self, event: E, _cause: &DelegateCause) -> Result<(), E> {
        match self.try_submit(event) {
            Ok(()) | Err(SubmitError::Delegated) => Ok(()),
            Err(
                SubmitError::Full(c)
                | SubmitError::Closed(c)
                | SubmitError::Expired(c)
                | SubmitError::Dumped(c),
            ) => Err(c.into_event()),
        }
    }
}

/// The future of [`Sender::submit_async`].
#[must_use = "futures do nothing unless polled"]
pub struct Submit<'a, E> {
    shared: &'a Shared<E>,
    command: Option<Command<E>>,
}

// The future never pins its fields: the command is moved in and out by value.
impl<E> Unpin for Submit<'_, E> {}

impl<E> Future for Submit<'_, E> {
    type Output = Result<(), SubmitError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(cmd) = this.command.take() else {
            // Polled after completion: there is nothing left to submit.
            return Poll::Pending;
        };
        match this.shared.push(cmd, Wait::Async(cx.waker())) {
            Push::Done(result) => Poll::Ready(result),
            Push::Pending(cmd) => {
                this.command = Some(cmd);
                Poll::Pending
            }
        }
    }
}

impl<E> fmt::Debug for Submit<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submit")
            .field("done", &self.command.is_none())
            .finish()
    }
}

/// The future of [`Sender::request_async`]: resolves to the command's [`Ticket`] once the
/// queue accepted it.
#[must_use = "futures do nothing unless polled"]
pub struct RequestAsync<'a, E> {
    submit: Submit<'a, E>,
    ticket: Option<Ticket>,
}

impl<E> Unpin for RequestAsync<'_, E> {}

impl<E> Future for RequestAsync<'_, E> {
    type Output = Result<Ticket, SubmitError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match Pin::new(&mut this.submit).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => match this.ticket.take() {
                Some(ticket) => Poll::Ready(Ok(ticket)),
                None => Poll::Pending,
            },
            Poll::Ready(Err(e)) => {
                this.ticket = None;
                Poll::Ready(Err(detach(e)))
            }
        }
    }
}

impl<E> fmt::Debug for RequestAsync<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestAsync")
            .field("submit", &self.submit)
            .finish()
    }
}
