//! A command on its way to the machine, and the ticket that tells its submitter how it ended.

use crate::sync::Recover;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::machine::{Event, Transition};
use crate::rejection::Rejection;

use super::overload::{DelegateCause, DumpCause};

/// An event on its way to the machine, with an optional deadline.
///
/// Every submit method takes `impl Into<Command<E>>`, so a bare event is a command without a
/// deadline:
///
/// ```
/// use std::time::{Duration, Instant};
/// use fsm_core::queue::Command;
///
/// let plain: Command<&str> = "ping".into();
/// assert!(plain.deadline().is_none());
/// let urgent = Command::new("ping").with_deadline(Instant::now() + Duration::from_millis(50));
/// assert!(urgent.deadline().is_some());
/// ```
pub struct Command<E> {
    pub(crate) event: E,
    pub(crate) deadline: Option<Instant>,
    /// When the queue accepted it, as a latency stamp (set only when the queue measures
    /// latency).
    pub(crate) enqueued_at: Option<u64>,
    /// Where the outcome goes, for commands submitted with a [`Ticket`].
    pub(crate) reply: Option<Reply>,
}

impl<E> Command<E> {
    /// A command without a deadline.
    pub fn new(event: E) -> Self {
        Command {
            event,
            deadline: None,
            enqueued_at: None,
            reply: None,
        }
    }

    /// The same command, to be answered [`Outcome::Expired`] instead of applied if it has not
    /// reached the machine by `deadline` (as read from the queue's [`Clock`](super::Clock)).
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The event.
    pub fn event(&self) -> &E {
        &self.event
    }

    /// The event, giving up the command.
    pub fn into_event(self) -> E {
        self.event
    }

    /// Whether the deadline has passed at `now`.
    pub(crate) fn expired_at(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Separates the event from the rest (deadline, stamp, reply), for when the event goes
    /// one way (the machine, a sink) and the answer another.
    pub(crate) fn split(self) -> (E, Command<()>) {
        let Command {
            event,
            deadline,
            enqueued_at,
            reply,
        } = self;
        let shell = Command {
            event: (),
            deadline,
            enqueued_at,
            reply,
        };
        (event, shell)
    }

    /// Answers the submitter (if it holds a ticket) and gives the event back.
    pub(crate) fn answer(mut self, outcome: Outcome) -> E {
        if let Some(reply) = self.reply.take() {
            reply.send(outcome);
        }
        self.event
    }
}

impl Command<()> {
    /// Puts an event back into a command split by [`Command::split`].
    pub(crate) fn carrying<E>(self, event: E) -> Command<E> {
        Command {
            event,
            deadline: self.deadline,
            enqueued_at: self.enqueued_at,
            reply: self.reply,
        }
    }
}

impl<E> From<E> for Command<E> {
    fn from(event: E) -> Self {
        Command::new(event)
    }
}

/// Shows the event's name and the deadline, never the payload (it may hold sensitive fields).
impl<E: Event> fmt::Debug for Command<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("event", &self.event.name())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// How a command that was accepted by a queue ended.
///
/// Commands the queue did not accept never get an `Outcome`: the submit call returns a
/// [`SubmitError`](super::SubmitError) with the command inside instead.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The machine took the transition.
    Applied(Transition),
    /// The machine refused the event; it is exactly as it was.
    Rejected(Rejection),
    /// The command was dropped by policy, reported to the queue's dump sink and counted.
    Dumped(DumpCause),
    /// The command was handed to the queue's overflow sink.
    Delegated(DelegateCause),
    /// Its deadline passed before it reached the machine; it was not applied.
    Expired,
    /// The queue closed (or its consumer went away) before the command reached the machine;
    /// it was not applied.
    Closed,
}

impl Outcome {
    /// Whether the machine took the transition.
    pub fn is_applied(&self) -> bool {
        matches!(self, Outcome::Applied(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Applied(t) => write!(f, "applied: {t}"),
            Outcome::Rejected(r) => write!(f, "rejected: {r}"),
            Outcome::Dumped(c) => write!(f, "dumped: {c}"),
            Outcome::Delegated(c) => write!(f, "delegated: {c}"),
            Outcome::Expired => {
                f.write_str("expired: the deadline passed before the machine saw it")
            }
            Outcome::Closed => f.write_str("closed: the queue closed before the machine saw it"),
        }
    }
}

struct Slot<O> {
    state: Mutex<SlotState<O>>,
    ready: Condvar,
}

struct SlotState<O> {
    outcome: Option<O>,
    /// Set once the outcome was sent, even after the ticket took it.
    sent: bool,
    waker: Option<Waker>,
    /// Threads blocked in `wait` or `wait_timeout`: the sender signals the condition variable
    /// only if one is (a signal is a system call even when nobody waits, and most tickets are
    /// answered before anyone waits on them, or are polled as futures).
    blocked: u32,
}

impl<O> Slot<O> {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState<O>> {
        // A panic while holding this lock cannot leave the state half-written (plain moves).
        self.state.lock().recover()
    }
}

/// The sending half of a ticket, carried by the command through the queue (or the kernel).
pub(crate) struct Reply<O = Outcome> {
    slot: Option<Arc<Slot<O>>>,
    /// The answer of a command dropped unanswered.
    closed: fn() -> O,
}

impl<O> Reply<O> {
    pub(crate) fn send(mut self, outcome: O) {
        if let Some(slot) = self.slot.take() {
            deliver(&slot, outcome);
        }
    }

    /// Sets the outcome like [`Reply::send`], but leaves waking whoever waits for it to
    /// `wakes`. A shard answers a whole batch that way and wakes the waiters once every answer
    /// is set: a client woken by its first answer then finds its next ones already there,
    /// instead of blocking again on each (woken and preempted once per answer on a busy core).
    pub(crate) fn send_later(mut self, outcome: O, wakes: &mut Wakes<O>) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let Some((waker, blocked)) = set(&slot, outcome) else {
            return;
        };
        wakes.wakers.extend(waker);
        if blocked {
            wakes.blocked.push(slot);
        }
    }
}

/// Wake-ups owed for outcomes already set by [`Reply::send_later`]; [`Wakes::wake`] makes
/// them. Dropped, it makes them too, so no waiter is left asleep.
pub(crate) struct Wakes<O> {
    blocked: Vec<Arc<Slot<O>>>,
    wakers: Vec<Waker>,
}

impl<O> Default for Wakes<O> {
    fn default() -> Self {
        Wakes {
            blocked: Vec::new(),
            wakers: Vec::new(),
        }
    }
}

impl<O> Wakes<O> {
    /// Wakes every thread blocked on, and every task polling, the outcomes set so far.
    pub(crate) fn wake(&mut self) {
        for slot in self.blocked.drain(..) {
            slot.ready.notify_all();
        }
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }
}

impl<O> Drop for Wakes<O> {
    fn drop(&mut self) {
        self.wake();
    }
}

/// Sets the outcome unless one was sent before (`None` then); returns the task's waker to wake
/// and whether a thread is blocked on the slot.
fn set<O>(slot: &Slot<O>, outcome: O) -> Option<(Option<Waker>, bool)> {
    let mut state = slot.lock();
    if state.sent {
        return None;
    }
    state.sent = true;
    state.outcome = Some(outcome);
    Some((state.waker.take(), state.blocked > 0))
}

fn deliver<O>(slot: &Slot<O>, outcome: O) {
    let Some((waker, blocked)) = set(slot, outcome) else {
        return;
    };
    // A thread that blocks later finds the outcome under the lock before it would wait.
    if blocked {
        slot.ready.notify_all();
    }
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// A command that is dropped unanswered (its queue's consumer unwound, say) still answers: it
/// never reached a decision by the machine, so it is closed (`Outcome::Closed` for a queue).
impl<O> Drop for Reply<O> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            deliver(&slot, (self.closed)());
        }
    }
}

/// The receiving end of a command's outcome: wait for it, poll it, or `.await` it.
///
/// Returned by the `request` methods of [`Sender`](super::Sender) once the queue accepted the
/// command (with `O` = [`Outcome`]), and by the kernel's submit methods (with `O` = the
/// kernel's [`Answer`](crate::kernel::Answer)). Every accepted command is answered exactly once,
/// so waiting always ends (at the latest when whoever holds the command drops it, with a
/// "closed" answer).
///
/// As a future it needs no particular executor: it stores the waker and is woken when the
/// outcome is sent.
#[must_use = "a ticket does nothing unless its outcome is read"]
pub struct Ticket<O = Outcome> {
    slot: Arc<Slot<O>>,
}

impl<O> Ticket<O> {
    /// A ticket and the reply that answers it; `closed` is the answer if the reply is dropped
    /// unanswered.
    pub(crate) fn new(closed: fn() -> O) -> (Ticket<O>, Reply<O>) {
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                outcome: None,
                sent: false,
                waker: None,
                blocked: 0,
            }),
            ready: Condvar::new(),
        });
        (
            Ticket { slot: slot.clone() },
            Reply {
                slot: Some(slot),
                closed,
            },
        )
    }

    /// Blocks the thread until the outcome is known.
    pub fn wait(self) -> O {
        let mut state = self.slot.lock();
        loop {
            if let Some(outcome) = state.outcome.take() {
                return outcome;
            }
            state.blocked += 1;
            state = self.slot.ready.wait(state).recover();
            state.blocked -= 1;
        }
    }
}

impl<O: Clone> Ticket<O> {
    /// The outcome if it is already known.
    pub fn try_outcome(&self) -> Option<O> {
        self.slot.lock().outcome.clone()
    }

    /// Blocks the thread for at most `timeout` of real time; `None` if the outcome is not
    /// known by then (the ticket stays usable).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<O> {
        let deadline = Instant::now() + timeout;
        let mut state = self.slot.lock();
        loop {
            if let Some(outcome) = &state.outcome {
                return Some(outcome.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state.blocked += 1;
            state = self.slot.ready.wait_timeout(state, left).recover().0;
            state.blocked -= 1;
        }
    }
}

impl<O> Future for Ticket<O> {
    type Output = O;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O> {
        let mut state = self.slot.lock();
        match state.outcome.take() {
            Some(outcome) => Poll::Ready(outcome),
            None => {
                match &mut state.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl<O> fmt::Debug for Ticket<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.slot.lock();
        f.debug_struct("Ticket")
            .field("answered", &state.sent)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{Outcome, Reply, Ticket, Wakes};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::Duration;

    /// Long enough never to end in a test: the tests wait for an answer, not for a timeout.
    const NEVER: Duration = Duration::from_secs(3600);

    /// Spins until `n` threads are blocked on the ticket's condition variable.
    fn until_blocked<O>(ticket: &Ticket<O>, n: u32) {
        while ticket.slot.lock().blocked < n {
            std::thread::yield_now();
        }
    }

    /// A ticket waited on by a thread that is blocked by the time this returns: a probe
    /// sharing the ticket's slot, its reply, and the waiting thread.
    fn waited() -> (Ticket<Outcome>, Reply<Outcome>, JoinHandle<Outcome>) {
        let (ticket, reply) = Ticket::new(|| Outcome::Closed);
        let probe = Ticket {
            slot: ticket.slot.clone(),
        };
        let waiter = std::thread::spawn(move || ticket.wait());
        until_blocked(&probe, 1);
        (probe, reply, waiter)
    }

    #[test]
    fn a_thread_blocked_in_wait_is_woken_by_the_answer() {
        let (probe, reply, waiter) = waited();
        reply.send(Outcome::Expired);
        assert_eq!(waiter.join().unwrap(), Outcome::Expired);
        assert_eq!(
            probe.slot.lock().blocked,
            0,
            "the waiter counted itself out"
        );
    }

    #[test]
    fn every_thread_blocked_on_a_ticket_is_woken_by_one_answer() {
        let (ticket, reply) = Ticket::new(|| Outcome::Closed);
        let ticket = Arc::new(ticket);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let ticket = ticket.clone();
                std::thread::spawn(move || ticket.wait_timeout(NEVER))
            })
            .collect();
        until_blocked(&ticket, 3);
        reply.send(Outcome::Expired);
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), Some(Outcome::Expired));
        }
    }

    #[test]
    fn an_answer_sent_before_anyone_waits_is_there_without_blocking() {
        let (ticket, reply) = Ticket::new(|| Outcome::Closed);
        reply.send(Outcome::Expired);
        assert_eq!(ticket.slot.lock().blocked, 0);
        assert_eq!(ticket.try_outcome(), Some(Outcome::Expired));
        assert_eq!(ticket.wait_timeout(NEVER), Some(Outcome::Expired));
        assert_eq!(ticket.wait(), Outcome::Expired);
    }

    #[test]
    fn a_reply_dropped_unanswered_wakes_its_waiter_with_the_closed_answer() {
        let (_probe, reply, waiter) = waited();
        drop(reply);
        assert_eq!(waiter.join().unwrap(), Outcome::Closed);
    }

    #[test]
    fn answers_sent_later_wake_their_waiters_only_when_the_wakes_are_made() {
        let (first, first_reply) = Ticket::new(|| Outcome::Closed);
        let (second, second_reply) = Ticket::new(|| Outcome::Closed);
        let (probe1, probe2) = (
            Ticket {
                slot: first.slot.clone(),
            },
            Ticket {
                slot: second.slot.clone(),
            },
        );
        let waiter = std::thread::spawn(move || (first.wait(), second.wait()));
        until_blocked(&probe1, 1);
        let mut wakes = Wakes::default();
        first_reply.send_later(Outcome::Expired, &mut wakes);
        second_reply.send_later(Outcome::Closed, &mut wakes);
        // Both outcomes are set, and the waiter, not yet woken, is still blocked on the first.
        assert_eq!(probe1.try_outcome(), Some(Outcome::Expired));
        assert_eq!(probe2.try_outcome(), Some(Outcome::Closed));
        assert_eq!(probe1.slot.lock().blocked, 1);
        assert_eq!(
            wakes.blocked.len(),
            1,
            "only the blocked ticket is owed a wake"
        );
        wakes.wake();
        assert_eq!(
            waiter.join().unwrap(),
            (Outcome::Expired, Outcome::Closed),
            "the second answer was there when the waiter woke"
        );
        assert_eq!(
            probe2.slot.lock().blocked,
            0,
            "it never blocked on the second"
        );
    }

    #[test]
    fn wakes_dropped_unmade_still_wake_the_waiter() {
        let (_probe, reply, waiter) = waited();
        {
            let mut wakes = Wakes::default();
            reply.send_later(Outcome::Expired, &mut wakes);
        }
        assert_eq!(waiter.join().unwrap(), Outcome::Expired);
    }
}
