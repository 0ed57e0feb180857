//! Why a queue did not keep a command, and why a queue could not be built.

use std::fmt;

use crate::machine::Event;

use super::command::Command;

/// A submit the queue did not keep. Every variant that still owns the command hands it back,
/// so nothing is lost without the caller knowing.
#[non_exhaustive]
pub enum SubmitError<E> {
    /// The queue is full and pushes back ([`Overload::Backpressure`](super::Overload)):
    /// retry later, or use a blocking or async submit to wait for room.
    Full(Command<E>),
    /// The queue is closed (or all its consumers are gone); it takes no more commands.
    Closed(Command<E>),
    /// The command's deadline passed before the queue had room for it (or before it was
    /// submitted at all).
    Expired(Command<E>),
    /// The queue was full and drops the newest command
    /// ([`Overload::DropNewest`](super::Overload)); the drop was counted and reported to the
    /// dump sink.
    Dumped(Command<E>),
    /// The queue was full and the command went to its overflow sink
    /// ([`Overload::Delegate`](super::Overload)), which now owns it.
    Delegated,
}

impl<E> SubmitError<E> {
    /// The command, when the queue handed it back.
    pub fn into_command(self) -> Option<Command<E>> {
        match self {
            SubmitError::Full(c)
            | SubmitError::Closed(c)
            | SubmitError::Expired(c)
            | SubmitError::Dumped(c) => Some(c),
            SubmitError::Delegated => None,
        }
    }

    /// The event, when the queue handed it back.
    pub fn into_event(self) -> Option<E> {
        self.into_command().map(Command::into_event)
    }

    /// Whether trying again later may succeed (the queue was full).
    pub fn is_full(&self) -> bool {
        matches!(self, SubmitError::Full(_))
    }

    /// Whether the queue is closed for good.
    pub fn is_closed(&self) -> bool {
        matches!(self, SubmitError::Closed(_))
    }

    fn kind(&self) -> &'static str {
        match self {
            SubmitError::Full(_) => "Full",
            SubmitError::Closed(_) => "Closed",
            SubmitError::Expired(_) => "Expired",
            SubmitError::Dumped(_) => "Dumped",
            SubmitError::Delegated => "Delegated",
        }
    }
}

/// Names the variant and the event, never the payload.
impl<E: Event> fmt::Debug for SubmitError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Delegated => f.write_str("Delegated"),
            SubmitError::Full(c)
            | SubmitError::Closed(c)
            | SubmitError::Expired(c)
            | SubmitError::Dumped(c) => f.debug_tuple(self.kind()).field(c).finish(),
        }
    }
}

impl<E: Event> fmt::Display for SubmitError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let event = match self {
            SubmitError::Delegated => "",
            SubmitError::Full(c)
            | SubmitError::Closed(c)
            | SubmitError::Expired(c)
            | SubmitError::Dumped(c) => c.event().name(),
        };
        match self {
            SubmitError::Full(_) => write!(
                f,
                "queue full: `{event}` was not queued; retry later or submit with a deadline to wait for room"
            ),
            SubmitError::Closed(_) => write!(f, "queue closed: `{event}` was not queued"),
            SubmitError::Expired(_) => write!(
                f,
                "deadline passed: `{event}` was not queued (the queue had no room in time)"
            ),
            SubmitError::Dumped(_) => write!(
                f,
                "queue full: `{event}` was dropped (policy: drop newest) and reported to the dump sink"
            ),
            SubmitError::Delegated => {
                f.write_str("queue full: the command went to the overflow sink (policy: delegate)")
            }
        }
    }
}

impl<E: Event> std::error::Error for SubmitError<E> {}

/// A queue configuration that cannot work, found when the queue is built.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A bounded queue needs room for at least one command.
    ZeroCapacity,
    /// Something needs an overflow sink and none was given with
    /// [`QueueBuilder::overflow`](super::QueueBuilder::overflow).
    MissingOverflow {
        /// What needs it: the overload policy, or a state's `delegate(..)`.
        needed_by: String,
    },
    /// A state declares `defer(..)` but the defer limit is zero.
    ZeroDeferLimit {
        /// The state.
        state: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroCapacity => f.write_str(
                "queue capacity is 0: give a bounded queue room for at least one command",
            ),
            ConfigError::MissingOverflow { needed_by } => write!(
                f,
                "{needed_by} delegates commands, but the queue has no overflow sink: add one with `.overflow(..)`"
            ),
            ConfigError::ZeroDeferLimit { state } => write!(
                f,
                "state `{state}` defers events, but the queue's defer limit is 0: raise it with `.defer_limit(..)`"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}
