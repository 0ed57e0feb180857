//! Timers: a machine's deadlines as part of its error kernel.
//!
//! Three parts, a file each: this one, the public vocabulary (kinds, requests, errors, the
//! checks of a request); `rules`, gen_statem's rules applied to a machine's armed timers
//! after an accepted transition; and `section`, the armed timers' layout in the snapshot's
//! timers section.
//!
//! Three kinds, with the semantics of Erlang's `gen_statem`:
//!
//! | kind | armed by | cancelled by | at most |
//! | --- | --- | --- | --- |
//! | **state timeout** | a transition that *enters* a state declaring `state_timeout(ms = N => Event)`, or [`Effects::restart_state_timeout`] | any transition that changes the state (not a self-transition), or [`Effects::cancel_state_timeout`] | one per machine |
//! | **event timeout** | [`Effects::event_timeout`] | any event the machine accepts, or [`Effects::cancel_event_timeout`] | one per machine |
//! | **named timer** | [`Effects::start_timer`] (a running timer of that name is replaced) | [`Effects::cancel_timer`]: it survives state changes | [`KernelBuilder::max_timers`](crate::kernel::KernelBuilder::max_timers) in all |
//! | **superstate timeout** | a transition that brings the machine into a superstate declaring `state_timeout(..)` (or a machine starting inside one), also one that leaves it and enters it again (declared on it into itself or a state inside, not `local`) | a transition that takes it out of the superstate (see [`Table::crossed`](crate::Table::crossed)): moves between the states inside keep it | one per superstate |
//!
//! Entering a **terminal** state cancels every timer of the machine, named ones and those the
//! transition's handler asked for included: a terminal state takes no event, so nothing armed
//! could fire into it.
//!
//! For each accepted event the rules run in this order: the timer that fired (if the event is
//! a firing) is consumed; the event timeout is cancelled; if the state changed, the state
//! timeout is cancelled and the new state's declared timeout armed; then the handler's
//! requests, in the order it made them. A rejected event changes no timer (the machine is
//! exactly as it was), except that a timer whose firing was rejected is consumed: it fired.
//!
//! A firing is an ordinary command: it goes through the kernel's queue, the state's policy
//! (`defer(..)` postpones it), the handler, the group commit and the effects. A timer fires
//! only while it is armed, so a cancelled or restarted timer never fires, and a state timeout
//! fires only in the state that armed it.
//!
//! The kernel stores the armed timers in the machine's snapshot (the envelope's timers
//! section), in the same write as the transition that armed them, and recovery re-arms them:
//! see [`crate::kernel`] for the clock and what survives a crash.
//!
//! [`Effects::restart_state_timeout`]: crate::Effects::restart_state_timeout
//! [`Effects::cancel_state_timeout`]: crate::Effects::cancel_state_timeout
//! [`Effects::event_timeout`]: crate::Effects::event_timeout
//! [`Effects::cancel_event_timeout`]: crate::Effects::cancel_event_timeout
//! [`Effects::start_timer`]: crate::Effects::start_timer
//! [`Effects::cancel_timer`]: crate::Effects::cancel_timer

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::table::{StateId, Table};

mod rules;
mod section;
#[cfg(test)]
mod tests;

pub(crate) use rules::{arm_entering_superstates, on_accepted, on_accepted_in, Step, Timers};
pub(crate) use section::{decode_section, encode_section, StoredTimer, SECTION_VERSION};

/// The longest timer name accepted, in bytes.
pub const MAX_TIMER_NAME: usize = 64;
/// The longest duration a timer may be armed for: 2^40 ms, about 34.8 years. Longer ones are
/// refused ([`TimerError::TooLong`]) rather than wrapped around the clock.
pub const MAX_TIMER_DURATION: Duration = Duration::from_millis(1 << 40);
/// Timers one machine may hold armed at once, by default.
pub const DEFAULT_MAX_TIMERS: usize = 32;

/// Which timer of a machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKind {
    /// The state timeout (declared in the table).
    State,
    /// The event timeout.
    Event,
    /// A named timer (a name given as a `&'static str` is not copied).
    Named(Cow<'static, str>),
    /// A superstate's timeout (declared in the table), by the superstate's name.
    Superstate(Cow<'static, str>),
}

impl fmt::Display for TimerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimerKind::State => f.write_str("state timeout"),
            TimerKind::Event => f.write_str("event timeout"),
            TimerKind::Named(n) => write!(f, "timer `{n}`"),
            TimerKind::Superstate(n) => write!(f, "superstate timeout of `{n}`"),
        }
    }
}

/// The event a timer fires, or a handler raised, as the handler gave it.
/// [`Effects`](crate::Effects) does not know the machine's event type, so the value travels
/// type-erased; whoever applies it checks that it is the machine's event enum
/// ([`TimerError::WrongEventType`], [`Reason::RaisedWrongType`](crate::Reason::RaisedWrongType)
/// if not).
pub struct TimerEvent {
    value: Box<dyn Any + Send>,
    type_name: &'static str,
}

impl TimerEvent {
    /// Wraps an event.
    pub fn new<E: Any + Send>(event: E) -> Self {
        TimerEvent {
            value: Box::new(event),
            type_name: std::any::type_name::<E>(),
        }
    }

    /// The event as `E`, or itself back if it is of another type.
    pub fn downcast<E: Any>(self) -> Result<E, TimerEvent> {
        let TimerEvent { value, type_name } = self;
        match value.downcast::<E>() {
            Ok(e) => Ok(*e),
            Err(value) => Err(TimerEvent { value, type_name }),
        }
    }

    /// The event as `&E`, if it is of that type.
    pub fn downcast_ref<E: Any>(&self) -> Option<&E> {
        self.value.downcast_ref()
    }

    /// The name of the event's type, as given.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl fmt::Debug for TimerEvent {
    // The value may hold sensitive fields and is not `Debug`-bound: its type only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.type_name)
    }
}

/// What a handler asked of the machine's timers through its [`Effects`](crate::Effects).
#[derive(Debug)]
#[non_exhaustive]
pub enum TimerRequest {
    /// Arm (or re-arm, replacing a running one) the named timer.
    Start {
        /// The timer's name.
        name: Cow<'static, str>,
        /// When it fires, from now.
        after: Duration,
        /// What it fires.
        event: TimerEvent,
    },
    /// Cancel the named timer (nothing if it is not running).
    Cancel {
        /// The timer's name.
        name: Cow<'static, str>,
    },
    /// Arm the event timeout, replacing a running one.
    EventTimeout {
        /// When it fires, from now, unless an event is accepted first.
        after: Duration,
        /// What it fires.
        event: TimerEvent,
    },
    /// Cancel the event timeout.
    CancelEventTimeout,
    /// Arm the target state's declared timeout anew (on a self-transition, which otherwise
    /// leaves a running state timeout as it is).
    RestartStateTimeout,
    /// Cancel the state timeout.
    CancelStateTimeout,
}

impl TimerRequest {
    /// The kind of timer the request is about.
    pub fn kind(&self) -> TimerKind {
        match self {
            TimerRequest::Start { name, .. } | TimerRequest::Cancel { name } => {
                TimerKind::Named(name.clone())
            }
            TimerRequest::EventTimeout { .. } | TimerRequest::CancelEventTimeout => {
                TimerKind::Event
            }
            TimerRequest::RestartStateTimeout | TimerRequest::CancelStateTimeout => {
                TimerKind::State
            }
        }
    }
}

/// Why a timer could not be armed. The command that asked for it is refused and the machine
/// is exactly as it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimerError {
    /// A duration of zero: a timer must lie in the future (send the event directly instead).
    #[error("{timer}: a duration of zero; give a positive duration, or submit the event directly")]
    ZeroDuration {
        /// Which timer.
        timer: TimerKind,
    },
    /// A duration past [`MAX_TIMER_DURATION`].
    #[error("{timer}: {after:?} is longer than the longest timer, {max:?}")]
    TooLong {
        /// Which timer.
        timer: TimerKind,
        /// The duration asked for.
        after: Duration,
        /// [`MAX_TIMER_DURATION`].
        max: Duration,
    },
    /// The deadline does not fit the clock.
    #[error("{timer}: the deadline overflows the clock")]
    Overflow {
        /// Which timer.
        timer: TimerKind,
    },
    /// A name that is empty, too long or has characters other than ASCII letters, digits and
    /// `. _ - : @ +`.
    #[error("timer name {name:?} is invalid: {problem}")]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// More armed timers than the machine may hold.
    #[error("{armed} timers would be armed; a machine holds at most {limit} (KernelBuilder::max_timers)")]
    TooMany {
        /// How many the transition would leave armed.
        armed: usize,
        /// The bound.
        limit: usize,
    },
    /// `restart_state_timeout` in a transition into a state that declares no timeout.
    #[error("restart_state_timeout: state `{state}` declares no state_timeout(..)")]
    NoStateTimeout {
        /// The state entered.
        state: &'static str,
    },
    /// The event given to a timer is not the machine's event enum.
    #[error("{timer}: the event is a `{found}`, not the machine's event type `{expected}`; pass the enum's variant (`Cmd::Retry`, or `cmd::Retry{{..}}.into()`)")]
    WrongEventType {
        /// Which timer.
        timer: TimerKind,
        /// The machine's event type.
        expected: &'static str,
        /// The type given.
        found: &'static str,
    },
    /// A timer that carries an event, in a kernel that cannot store events.
    #[error("{timer}: the event it fires cannot be stored in the snapshot; derive Serialize and Deserialize on the event enum (a hand-written Event impl also needs KernelBuilder::timer_events())")]
    EventsNotStorable {
        /// Which timer.
        timer: TimerKind,
    },
    /// The event could not be encoded for the snapshot.
    #[error("{timer}: its event cannot be encoded: {message}")]
    Unencodable {
        /// Which timer.
        timer: TimerKind,
        /// The encoder's message.
        message: String,
    },
}

/// Milliseconds, rounded up: a timer never fires early.
pub(crate) fn millis_ceil(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// `1200 ms`, `90 s`, `5 min`, `2 h`: the largest unit that divides the duration.
pub(crate) fn human_ms(ms: u64) -> String {
    match ms {
        0 => "0 ms".into(),
        ms if ms % 3_600_000 == 0 => format!("{} h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{} min", ms / 60_000),
        ms if ms % 1000 == 0 && ms >= 10_000 => format!("{} s", ms / 1000),
        ms => format!("{ms} ms"),
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), TimerError> {
    let bad = |problem| {
        Err(TimerError::BadName {
            name: name.chars().take(MAX_TIMER_NAME + 8).collect(),
            problem,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_TIMER_NAME {
        return bad("it is longer than 64 bytes");
    }
    let allowed =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '+');
    if !name.chars().all(allowed) {
        return bad("use ASCII letters, digits and `. _ - : @ +`");
    }
    Ok(())
}

pub(crate) fn check_after(timer: &TimerKind, after: Duration) -> Result<(), TimerError> {
    if after.is_zero() {
        return Err(TimerError::ZeroDuration {
            timer: timer.clone(),
        });
    }
    if after > MAX_TIMER_DURATION {
        return Err(TimerError::TooLong {
            timer: timer.clone(),
            after,
            max: MAX_TIMER_DURATION,
        });
    }
    Ok(())
}

/// The checks that need nothing but the request itself (run by the dispatch, so a bad
/// request is a rejection even outside a kernel).
pub(crate) fn check_request(
    request: &TimerRequest,
    table: &Table,
    target: StateId,
) -> Result<(), TimerError> {
    match request {
        TimerRequest::Start { name, after, .. } => {
            check_name(name)?;
            check_after(&request.kind(), *after)
        }
        TimerRequest::Cancel { name } => check_name(name),
        TimerRequest::EventTimeout { after, .. } => check_after(&TimerKind::Event, *after),
        TimerRequest::RestartStateTimeout => {
            match table.state(target).and_then(|s| s.state_timeout()) {
                Some(_) => Ok(()),
                None => Err(TimerError::NoStateTimeout {
                    state: table.state_name(target),
                }),
            }
        }
        TimerRequest::CancelEventTimeout | TimerRequest::CancelStateTimeout => Ok(()),
    }
}
