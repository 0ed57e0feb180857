//! Why a machine did not take an event: typed rejections that name the machine, state, event
//! and reason, and carry no state or event data (so nothing sensitive can leak through them).

use std::borrow::Cow;
use std::fmt;

use crate::table::{EventId, Policy, StateId, Table};
use crate::timer::TimerError;

/// A handler's or an invariant's refusal, with a reason written for humans.
///
/// The reason is the one piece of user text a rejection carries: keep secrets out of it.
///
/// ```
/// use fsm_core::Refusal;
/// let r = Refusal::new("payment below the 1.00 minimum");
/// assert_eq!(r.reason(), "payment below the 1.00 minimum");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Refusal {
    reason: Cow<'static, str>,
}

impl Refusal {
    /// A refusal with the given reason.
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Refusal {
            reason: reason.into(),
        }
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Why an event was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The table has no transition for this event in this state.
    NoTransition,
    /// The state is terminal: it accepts no event.
    Terminal,
    /// The handler (a guard) refused the event.
    Refused(Refusal),
    /// The handler produced a state whose invariant does not hold.
    Invalid {
        /// The state the transition would have entered.
        target: StateId,
        /// What the invariant said.
        refusal: Refusal,
    },
    /// The handler panicked (a bug). The machine and the effects buffer are unchanged. Only
    /// the command queue reports this: it catches the panic to answer the command, then lets
    /// the panic continue to whoever supervises the consumer.
    Panicked(Refusal),
    /// The handler made a timer request that cannot be honoured (a zero or overlong duration,
    /// a bad name, a restart of a state timeout the target does not declare). Boxed, so that
    /// every rejection stays as small as it was without timers.
    Timer(Box<TimerError>),
    /// An event raised by the transition (or by one it raised in turn) was rejected, so the
    /// whole command is: the inner rejection names the state the chain had reached, the raised
    /// event and why.
    Raised(Box<Rejection>),
    /// The command's transitions raised more than [`RAISE_LIMIT`](crate::RAISE_LIMIT)
    /// events: most likely a cycle (an event whose handler raises it again).
    RaiseLimit {
        /// The bound that was met.
        limit: usize,
    },
    /// A handler raised a value that is not the machine's event enum (or the event type does
    /// not take raised events: see [`Event::from_raised`](crate::Event::from_raised)).
    RaisedWrongType {
        /// The machine's event type.
        expected: &'static str,
        /// The type raised.
        found: &'static str,
    },
}

/// An event a machine did not take. The machine is exactly as it was before.
///
/// Names the machine, the state, the event and the [`Reason`]; its `Display` also says what the
/// state would accept, so the message tells the caller what to do instead.
#[derive(Clone, PartialEq, Eq)]
pub struct Rejection {
    table: &'static Table,
    state: StateId,
    event: EventId,
    reason: Stored,
}

/// A rejection's reason as held: the two that carry nothing apart, so that dropping the
/// commonest rejections (an event the state has no transition for) is known to free nothing
/// and costs nothing, where dropping a [`Reason`] is a call into its drop glue.
#[derive(Clone, PartialEq, Eq)]
enum Stored {
    NoTransition,
    Terminal,
    Other(Box<Reason>),
}

static NO_TRANSITION: Reason = Reason::NoTransition;
static TERMINAL: Reason = Reason::Terminal;

impl Rejection {
    /// A rejection of `event` in `state` of the machine described by `table`.
    #[inline]
    pub fn new(table: &'static Table, state: StateId, event: EventId, reason: Reason) -> Self {
        let light = match &reason {
            Reason::NoTransition => Some(Stored::NoTransition),
            Reason::Terminal => Some(Stored::Terminal),
            _ => None,
        };
        let reason = match light {
            Some(light) => {
                // Holds nothing to free; dropping it would still be a call into the glue.
                std::mem::forget(reason);
                light
            }
            None => Stored::Other(Box::new(reason)),
        };
        Rejection {
            table,
            state,
            event,
            reason,
        }
    }

    /// A rejection of `event` in `state` for which the table has no transition
    /// ([`Reason::NoTransition`]).
    #[inline]
    pub fn no_transition(table: &'static Table, state: StateId, event: EventId) -> Self {
        Rejection {
            table,
            state,
            event,
            reason: Stored::NoTransition,
        }
    }

    /// A rejection of `event` in terminal `state` ([`Reason::Terminal`]).
    #[inline]
    pub fn terminal(table: &'static Table, state: StateId, event: EventId) -> Self {
        Rejection {
            table,
            state,
            event,
            reason: Stored::Terminal,
        }
    }

    /// The state the machine is (still) in.
    pub fn state(&self) -> StateId {
        self.state
    }

    /// The rejected event.
    pub fn event(&self) -> EventId {
        self.event
    }

    /// The machine's name.
    pub fn machine_name(&self) -> &'static str {
        self.table.machine()
    }

    /// The name of the state the machine is (still) in.
    pub fn state_name(&self) -> &'static str {
        self.table.state_name(self.state)
    }

    /// The name of the rejected event.
    pub fn event_name(&self) -> &'static str {
        self.table.event_name(self.event)
    }

    /// Why it was rejected.
    #[inline]
    pub fn reason(&self) -> &Reason {
        match &self.reason {
            Stored::NoTransition => &NO_TRANSITION,
            Stored::Terminal => &TERMINAL,
            Stored::Other(reason) => reason,
        }
    }

    /// The machine's table.
    pub fn table(&self) -> &'static Table {
        self.table
    }

    /// What the state's policy says about this event, when it has no transition for it.
    pub fn policy(&self) -> Option<Policy> {
        match self.reason {
            Stored::NoTransition | Stored::Terminal => self.table.policy(self.state, self.event),
            Stored::Other(_) => None,
        }
    }
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Rejection");
        d.field("machine", &self.machine_name())
            .field("state", &self.state_name())
            .field("event", &self.event_name());
        match self.reason() {
            Reason::NoTransition => d.field("reason", &"NoTransition"),
            Reason::Terminal => d.field("reason", &"Terminal"),
            Reason::Refused(r) => d.field("refused", &r.reason()),
            Reason::Panicked(r) => d.field("panicked", &r.reason()),
            Reason::Timer(e) => d.field("timer", e),
            Reason::Raised(r) => d.field("raised", r),
            Reason::RaiseLimit { limit } => d.field("raise_limit", limit),
            Reason::RaisedWrongType { expected, found } => {
                d.field("raised_type", found).field("expected", expected)
            }
            Reason::Invalid { target, refusal } => d
                .field("invalid_target", &self.table.state_name(*target))
                .field("refused", &refusal.reason()),
        };
        d.finish()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rejected event `{}` in state `{}`: ",
            self.machine_name(),
            self.event_name(),
            self.state_name()
        )?;
        match self.reason() {
            Reason::NoTransition => {
                f.write_str("no transition for it here")?;
                let mut accepted = self.table.accepted_events(self.state).peekable();
                if accepted.peek().is_some() {
                    f.write_str(" (this state accepts ")?;
                    for (i, e) in accepted.enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "`{}`", self.table.event_name(e))?;
                    }
                    f.write_str(")")?;
                }
                Ok(())
            }
            Reason::Invalid { target, refusal } => write!(
                f,
                "the new state `{}` would break its invariant: {refusal}",
                self.table.state_name(*target)
            ),
            reason => fmt::Display::fmt(reason, f),
        }
    }
}

/// What went wrong, without the machine's names (a [`Rejection`] says it with them: which
/// machine, event and state, and which events the state accepts).
///
/// ```
/// use fsm_core::{Reason, Refusal};
/// assert_eq!(
///     Reason::Refused(Refusal::new("over the card's limit")).to_string(),
///     "refused by the handler: over the card's limit"
/// );
/// assert_eq!(Reason::Terminal.to_string(), "the state is terminal and accepts no event");
/// ```
impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoTransition => f.write_str("no transition for this event in this state"),
            Reason::Terminal => f.write_str("the state is terminal and accepts no event"),
            Reason::Timer(e) => write!(f, "a timer request of the handler: {e}"),
            Reason::Raised(r) => write!(f, "an event it raised was rejected: {r}"),
            Reason::RaiseLimit { limit } => write!(
                f,
                "its transitions raised more than {limit} events (a cycle of raised events?)"
            ),
            Reason::RaisedWrongType { expected, found } => write!(
                f,
                "a handler raised a `{found}`, which is not the machine's event type `{expected}`"
            ),
            Reason::Refused(r) => write!(f, "refused by the handler: {r}"),
            Reason::Panicked(r) => write!(
                f,
                "the handler panicked ({r}); the machine is unchanged, fix the handler"
            ),
            Reason::Invalid { refusal, .. } => {
                write!(f, "the new state would break its invariant: {refusal}")
            }
        }
    }
}

impl std::error::Error for Rejection {}

/// A state whose invariant does not hold (found after a restore, or when checking a value
/// built outside the machine).
#[derive(Clone, PartialEq, Eq)]
pub struct InvalidState {
    table: &'static Table,
    state: StateId,
    refusal: Refusal,
}

impl InvalidState {
    /// The invariant of `state` refused with `refusal`.
    pub fn new(table: &'static Table, state: StateId, refusal: Refusal) -> Self {
        InvalidState {
            table,
            state,
            refusal,
        }
    }

    /// The state whose invariant failed.
    pub fn state(&self) -> StateId {
        self.state
    }

    /// Its name.
    pub fn state_name(&self) -> &'static str {
        self.table.state_name(self.state)
    }

    /// What the invariant said.
    pub fn refusal(&self) -> &Refusal {
        &self.refusal
    }
}

impl fmt::Debug for InvalidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidState")
            .field("machine", &self.table.machine())
            .field("state", &self.state_name())
            .field("refused", &self.refusal.reason())
            .finish()
    }
}

impl fmt::Display for InvalidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in state `{}` breaks its invariant: {}",
            self.table.machine(),
            self.state_name(),
            self.refusal
        )
    }
}

impl std::error::Error for InvalidState {}

/// The message of a caught panic, for [`Reason::Panicked`] and the kernel's failure reports.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
