//! What a queue does when it is full, and where dropped and delegated commands go.

use std::fmt;

/// What a full queue does with one more command. Chosen once per queue.
///
/// Whatever the policy, the submitter gets a definite answer, a dropped command is counted
/// and reported to the [`DumpSink`], and a command the queue does not keep is either handed
/// back inside the [`SubmitError`](super::SubmitError) or handed to the [`Overflow`] sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overload {
    /// Push back on the producer (the design's "defer" for a full queue): `try_submit`
    /// refuses at once with [`SubmitError::Full`](super::SubmitError::Full) ("retry later");
    /// blocking and async submits wait for room, up to the command's deadline.
    #[default]
    Backpressure,
    /// Drop the incoming command: it is reported to the dump sink and handed back in
    /// [`SubmitError::Dumped`](super::SubmitError::Dumped).
    DropNewest,
    /// Make room by evicting the oldest queued command: it is reported to the dump sink and
    /// its submitter is answered [`Outcome::Dumped`](super::Outcome::Dumped).
    DropOldest,
    /// Hand the incoming command to the queue's [`Overflow`] sink (another queue, a
    /// dead-letter handler); the submitter gets [`SubmitError::Delegated`](super::SubmitError::Delegated).
    Delegate,
}

/// Why a command was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DumpCause {
    /// The queue was full and drops the newest command ([`Overload::DropNewest`]).
    QueueFull,
    /// The queue was full and evicted this, its oldest command ([`Overload::DropOldest`]).
    Evicted,
    /// The state the machine was in declares `dump(..)` for this event.
    StatePolicy {
        /// That state's name.
        state: &'static str,
    },
    /// The state declares `defer(..)` for this event, but the queue already holds as many
    /// postponed commands as its defer limit allows.
    DeferLimit,
    /// The overflow sink refused a command the consumer had to delegate.
    OverflowRefused,
}

impl fmt::Display for DumpCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DumpCause::QueueFull => f.write_str("the queue was full (policy: drop newest)"),
            DumpCause::Evicted => {
                f.write_str("evicted as the oldest command of a full queue (policy: drop oldest)")
            }
            DumpCause::StatePolicy { state } => {
                write!(f, "state `{state}` dumps this event (`dump(..)`)")
            }
            DumpCause::DeferLimit => {
                f.write_str("too many postponed commands (raise the queue's defer limit)")
            }
            DumpCause::OverflowRefused => f.write_str("the overflow sink refused the command"),
        }
    }
}

/// Why a command was handed to the overflow sink.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DelegateCause {
    /// The queue was full ([`Overload::Delegate`]).
    QueueFull,
    /// The state the machine was in declares `delegate(..)` for this event.
    StatePolicy {
        /// That state's name.
        state: &'static str,
    },
    /// The state declares `defer(..)` for this event, the defer limit was reached, and the
    /// queue's overload policy is [`Overload::Delegate`].
    DeferLimit,
}

impl fmt::Display for DelegateCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DelegateCause::QueueFull => f.write_str("the queue was full (policy: delegate)"),
            DelegateCause::StatePolicy { state } => {
                write!(f, "state `{state}` delegates this event (`delegate(..)`)")
            }
            DelegateCause::DeferLimit => {
                f.write_str("too many postponed commands (policy: delegate)")
            }
        }
    }
}

/// Observes every command a queue drops, with the reason; runs on the thread that drops it
/// (a producer for [`Overload`] drops, the consumer for state policies), outside the queue's
/// lock, so it may submit to queues itself. Keep it short: it delays that thread.
///
/// Implemented for closures `Fn(&E, &DumpCause)`.
pub trait DumpSink<E>: Send + Sync {
    /// `event` is being dropped for `cause`.
    fn dumped(&self, event: &E, cause: &DumpCause);
}

impl<E, F: Fn(&E, &DumpCause) + Send + Sync> DumpSink<E> for F {
    fn dumped(&self, event: &E, cause: &DumpCause) {
        self(event, cause);
    }
}

/// Takes over commands a queue delegates: another queue ([`Sender`](super::Sender) implements
/// it with `try_submit`), a dead-letter store, a worker pool. Runs on the delegating thread,
/// outside the queue's lock.
///
/// Implemented for closures `Fn(E, &DelegateCause) -> Result<(), E>`.
pub trait Overflow<E>: Send + Sync {
    /// Takes `event`, or hands it back when it cannot (then the queue falls back: a producer
    /// gets [`SubmitError::Full`](super::SubmitError::Full), the consumer dumps it with
    /// [`DumpCause::OverflowRefused`]).
    fn delegate(&self, event: E, cause: &DelegateCause) -> Result<(), E>;
}

impl<E, F: Fn(E, &DelegateCause) -> Result<(), E> + Send + Sync> Overflow<E> for F {
    fn delegate(&self, event: E, cause: &DelegateCause) -> Result<(), E> {
        self(event, cause)
    }
}
