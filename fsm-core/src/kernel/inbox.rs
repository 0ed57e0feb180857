//! A shard's inbox: the bounded queue in front of every machine of one shard, where overload
//! is decided for the kernel.

use crate::sync::Recover;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::queue::{Clock, DumpCause, Overload, Reply};
use crate::store::MachineId;

use super::outcome::{Answer, CommandError, SubmitError};
use super::request::Request;
use super::Durable;

/// A command on its way to a machine.
pub(crate) struct Cmd<M: Durable> {
    pub(crate) id: MachineId,
    pub(crate) request: Request<M::Event>,
    /// Latency stamp taken when the inbox accepted it (0 when latencies are off).
    pub(crate) enqueued: u64,
    /// Where the outcome goes; `None` for events fed back by effect workers and for timer
    /// firings.
    pub(crate) reply: Option<Reply<Answer>>,
    /// The timer arming this command is the firing of, if it is one.
    pub(crate) fire: Option<Box<Fire>>,
    /// The owed effect whose worker answered with this event, if it is such an answer: the
    /// effect leaves the outbox in the write that decides the event.
    pub(crate) settles: Option<Settles>,
}

/// Which owed effect of the command's machine an answer settles: its sequence and index.
pub(crate) type Settles = (u64, u32);

/// A worker's answer that carries no event for the machine: the effect is done (or given up)
/// and leaves the outbox, or it failed and is to be retried.
pub(crate) struct WorkerAnswer {
    pub(crate) id: MachineId,
    pub(crate) settles: Settles,
    pub(crate) retry: bool,
}

/// Which arming of which timer a firing command comes from: its idempotency key, checked
/// against the armed timers in the machine's snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fire {
    pub(crate) kind: crate::timer::TimerKind,
    pub(crate) instance: u64,
}

impl<M: Durable> Cmd<M> {
    pub(crate) fn answer(mut self, outcome: Answer) -> Request<M::Event> {
        if let Some(reply) = self.reply.take() {
            reply.send(outcome);
        }
        self.request
    }
}

/// What a shard is asked to do.
pub(crate) enum Job<M: Durable> {
    Command(Cmd<M>),
    /// Evict idle machines now; answers how many stay resident.
    Sweep(Reply<usize>),
    /// Forget a quarantine so the next command reloads the machine; answers whether it was
    /// quarantined.
    Release(MachineId, Reply<bool>),
    /// Show the machine (loading it if needed) and its durable sequence to a reader.
    Inspect(MachineId, Inspector<M>),
    /// Fire the timers due now (the batch does so anyway); answers how many fired.
    FireTimers(Reply<usize>),
    /// An effect worker's answer without an event.
    Answer(WorkerAnswer),
    /// A reader of machine `id`'s armed timers and remembered keys (loading it if needed).
    Details(MachineId, Reply<Result<Details, CommandError>>),
    /// A reader of what machine `id` owes (loading it if needed).
    Owed(
        MachineId,
        Reply<Result<Vec<crate::kernel::OwedEffect>, CommandError>>,
    ),
}

/// A reader of one machine's state, run on its shard between batches.
/// A machine's armed timers and remembered keys.
pub(crate) type Details = (
    Vec<crate::kernel::ArmedTimer>,
    Vec<crate::kernel::AppliedKey>,
);

pub(crate) type Inspector<M> = Box<dyn FnOnce(Result<(&M, Option<u64>), CommandError>) + Send>;

/// How a shard leaves its loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closing {
    /// Decide what is queued, then stop.
    Drain,
    /// Decide nothing more; hand every queued command back.
    HandBack,
}

pub(crate) struct State<M: Durable> {
    pub(crate) jobs: VecDeque<Job<M>>,
    /// Commands among `jobs` (the capacity counts commands, not control jobs).
    pub(crate) commands: usize,
    pub(crate) closing: Option<Closing>,
    parked: bool,
    /// Submitters blocked waiting for room: the shard signals `room` only if one is (a signal
    /// is a system call even when nobody waits, and the shard takes a batch many times a
    /// second).
    room_waiters: u32,
    pub(crate) high_water: usize,
    /// Submit calls that reached a decision here, by outcome.
    pub(crate) submitted: u64,
    pub(crate) full: u64,
    pub(crate) dumped: u64,
    pub(crate) expired: u64,
    pub(crate) closed: u64,
}

// A cache line (pair) of its own: each shard's inbox is written by its clients and its shard,
// never by another shard's.
#[repr(align(128))]
pub(crate) struct Inbox<M: Durable> {
    state: Mutex<State<M>>,
    work: Condvar,
    room: Condvar,
    /// Wakes async submitters waiting for room.
    #[cfg(feature = "tokio")]
    room_async: tokio::sync::Notify,
}

/// What a submit does when the inbox is full under back-pressure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Room {
    /// Wait for room (up to the request's deadline).
    Wait,
    /// Refuse `Full` at once, counted.
    Refuse,
    /// Refuse `Full` at once, not counted: the caller waits for room elsewhere and tries
    /// again (an async submit).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    Poll,
}

/// How the inbox kept a command.
pub(crate) enum Admitted {
    Queued,
    /// In place of the oldest queued command, which was answered dumped.
    Evicted,
}

/// Why the inbox did not keep a command.
pub(crate) enum Refusal {
    Full,
    Closed,
    Expired,
    Dumped,
}

impl Refusal {
    /// The submitter's error, handing `request` back.
    pub(crate) fn into_error<E>(self, request: Request<E>) -> SubmitError<E> {
        match self {
            Refusal::Full => SubmitError::Full(request),
            Refusal::Closed => SubmitError::Closed(request),
            Refusal::Expired => SubmitError::Expired(request),
            Refusal::Dumped => SubmitError::Dumped(request),
        }
    }
}

impl<M: Durable> Inbox<M> {
    pub(crate) fn new() -> Self {
        Inbox {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                commands: 0,
                closing: None,
                parked: false,
                room_waiters: 0,
                high_water: 0,
                submitted: 0,
                full: 0,
                dumped: 0,
                expired: 0,
                closed: 0,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            #[cfg(feature = "tokio")]
            room_async: tokio::sync::Notify::new(),
        }
    }

    /// What async submitters wait on for room.
    #[cfg(feature = "tokio")]
    pub(crate) fn room_async(&self) -> &tokio::sync::Notify {
        &self.room_async
    }

    /// Wakes submitters waiting for room: the async ones always (waking none is free), the
    /// blocked threads only if `threads` (a signal is a system call even when nobody waits).
    fn notify_room(&self, threads: bool) {
        if threads {
            self.room.notify_all();
        }
        #[cfg(feature = "tokio")]
        self.room_async.notify_waiters();
    }

    /// Only plain field updates happen under the lock, so a poisoned lock holds consistent
    /// data.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State<M>> {
        self.state.lock().recover()
    }

    fn wake_shard(&self, mut state: MutexGuard<'_, State<M>>) {
        let wake = std::mem::replace(&mut state.parked, false);
        drop(state);
        if wake {
            self.work.notify_one();
        }
    }

    /// Queues a control job (never refused while the shard runs).
    pub(crate) fn control(&self, job: Job<M>) -> bool {
        let mut state = self.lock();
        if state.closing.is_some() {
            return false;
        }
        state.jobs.push_back(job);
        self.wake_shard(state);
        true
    }

    /// Queues what effect workers send back (fed-back events, answers), several at once: one
    /// lock, one wake. Never refused for room (they are bounded by the effects in flight, and
    /// refusing them could deadlock a worker against its own shard), only once the shard
    /// stops: then returns how many were refused (all of them).
    pub(crate) fn feedback_many(&self, jobs: Vec<Job<M>>) -> Result<(), usize> {
        let mut state = self.lock();
        if state.closing.is_some() {
            return Err(jobs.len());
        }
        state.commands += jobs.len();
        state.jobs.extend(jobs);
        state.high_water = state.high_water.max(state.commands);
        self.wake_shard(state);
        Ok(())
    }

    /// Queues a submitter's command under the overload policy; `room` says what to do when
    /// it is full under back-pressure.
    #[allow(clippy::too_many_arguments)] // One call site; a struct would only rename them.
    pub(crate) fn submit(
        &self,
        mut cmd: Cmd<M>,
        capacity: usize,
        overload: Overload,
        clock: &Clock,
        room: Room,
        intake_open: impl Fn() -> bool,
        stamp: impl Fn() -> u64,
    ) -> Result<Admitted, (Refusal, Cmd<M>)> {
        let mut state = self.lock();
        loop {
            let deadline = cmd.request.deadline;
            if deadline.is_some_and(|d| clock.now() >= d) {
                state.submitted += 1;
                state.expired += 1;
                return Err((Refusal::Expired, cmd));
            }
            if state.closing.is_some() || !intake_open() {
                state.submitted += 1;
                state.closed += 1;
                return Err((Refusal::Closed, cmd));
            }
            if state.commands < capacity {
                cmd.enqueued = stamp();
                state.jobs.push_back(Job::Command(cmd));
                state.commands += 1;
                state.submitted += 1;
                state.high_water = state.high_water.max(state.commands);
                self.wake_shard(state);
                return Ok(Admitted::Queued);
            }
            match overload {
                Overload::DropNewest => {
                    state.submitted += 1;
                    state.dumped += 1;
                    return Err((Refusal::Dumped, cmd));
                }
                Overload::DropOldest => {
                    let oldest = state
                        .jobs
                        .iter()
                        .position(|j| matches!(j, Job::Command(_)))
                        .and_then(|at| state.jobs.remove(at));
                    cmd.enqueued = stamp();
                    state.jobs.push_back(Job::Command(cmd));
                    state.submitted += 1;
                    state.dumped += 1;
                    self.wake_shard(state);
                    if let Some(Job::Command(oldest)) = oldest {
                        oldest.answer(Err(CommandError::Dumped(DumpCause::Evicted)));
                        return Ok(Admitted::Evicted);
                    }
                    return Ok(Admitted::Queued);
                }
                // Delegate is decided by the caller, which owns the overflow sink.
                _ if room == Room::Poll => return Err((Refusal::Full, cmd)),
                _ if room == Room::Refuse => {
                    state.submitted += 1;
                    state.full += 1;
                    return Err((Refusal::Full, cmd));
                }
                _ => {
                    let bound = clock.sleep_bound(deadline);
                    state.room_waiters += 1;
                    state = match bound {
                        Some(d) => self.room.wait_timeout(state, d).recover().0,
                        None => self.room.wait(state).recover(),
                    };
                    state.room_waiters -= 1;
                }
            }
        }
    }

    /// Queues commands that arrive together under one lock, so the shard takes them in one
    /// batch (one group commit). Never waits: what does not fit is refused `Full`, whatever
    /// the overload policy.
    pub(crate) fn submit_many(
        &self,
        cmds: Vec<Cmd<M>>,
        capacity: usize,
        clock: &Clock,
        intake_open: impl Fn() -> bool,
        stamp: u64,
    ) -> Vec<Result<(), (Refusal, Cmd<M>)>> {
        let now = clock.now();
        let mut state = self.lock();
        let mut out = Vec::with_capacity(cmds.len());
        for mut cmd in cmds {
            state.submitted += 1;
            out.push(if cmd.request.deadline.is_some_and(|d| now >= d) {
                state.expired += 1;
                Err((Refusal::Expired, cmd))
            } else if state.closing.is_some() || !intake_open() {
                state.closed += 1;
                Err((Refusal::Closed, cmd))
            } else if state.commands >= capacity {
                state.full += 1;
                Err((Refusal::Full, cmd))
            } else {
                cmd.enqueued = stamp;
                state.jobs.push_back(Job::Command(cmd));
                state.commands += 1;
                Ok(())
            });
        }
        state.high_water = state.high_water.max(state.commands);
        self.wake_shard(state);
        out
    }

    /// Counts a submit the caller decided itself (a delegation).
    pub(crate) fn count_delegated(&self) {
        self.lock().submitted += 1;
    }

    /// Takes every queued job, waiting up to `bound` (forever if `None`) when there is none.
    /// Returns the jobs and how the shard is asked to close, if it is.
    pub(crate) fn take(
        &self,
        bound: Option<Duration>,
        into: &mut VecDeque<Job<M>>,
    ) -> Option<Closing> {
        let mut state = self.lock();
        if state.jobs.is_empty() && state.closing.is_none() {
            state.parked = true;
            state = match bound {
                Some(d) => self.work.wait_timeout(state, d).recover().0,
                None => self.work.wait(state).recover(),
            };
            state.parked = false;
        }
        std::mem::swap(&mut state.jobs, into);
        let had = state.commands;
        state.commands = 0;
        let closing = state.closing;
        // A submitter that blocks later checks the room under the lock first.
        let blocked = state.room_waiters > 0;
        drop(state);
        if had > 0 {
            self.notify_room(blocked);
        }
        closing
    }

    /// Asks the shard to stop; blocked submitters are released (they are answered closed).
    pub(crate) fn close(&self, how: Closing) {
        let mut state = self.lock();
        if state.closing != Some(Closing::HandBack) {
            state.closing = Some(how);
        }
        drop(state);
        self.work.notify_all();
        self.notify_room(true);
    }

    /// Wakes blocked submitters so they see that intake closed.
    pub(crate) fn release_waiters(&self) {
        let _state = self.lock();
        self.notify_room(true);
    }
}
