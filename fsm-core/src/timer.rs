//! Timers: a machine's deadlines as part of its error kernel.
//!
//! Three kinds, with the semantics of Erlang's `gen_statem`:
//!
//! | kind | armed by | cancelled by | at most |
//! | --- | --- | --- | --- |
//! | **state timeout** | a transition that *enters* a state declaring `state_timeout(ms = N => Event)`, or [`Effects::restart_state_timeout`] | any transition that changes the state (not a self-transition), or [`Effects::cancel_state_timeout`] | one per machine |
//! | **event timeout** | [`Effects::event_timeout`] | any event the machine accepts, or [`Effects::cancel_event_timeout`] | one per machine |
//! | **named timer** | [`Effects::start_timer`] (a running timer of that name is replaced) | [`Effects::cancel_timer`] only: it survives state changes | [`KernelBuilder::max_timers`](crate::kernel::KernelBuilder::max_timers) in all |
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

use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;

use crate::kernel::SectionError;
use crate::machine::Transition;
use crate::store::Section;
use crate::table::{StateId, Table};

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
}

impl fmt::Display for TimerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimerKind::State => f.write_str("state timeout"),
            TimerKind::Event => f.write_str("event timeout"),
            TimerKind::Named(n) => write!(f, "timer `{n}`"),
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
    #[error("{timer}: storing the event it fires needs a kernel built with KernelBuilder::timer_events() (the event enum must implement Serialize and Deserialize)")]
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

fn check_name(name: &str) -> Result<(), TimerError> {
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

fn check_after(timer: &TimerKind, after: Duration) -> Result<(), TimerError> {
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

/// One armed timer. `deadline` is in the kernel's milliseconds (wall-clock milliseconds since
/// the UNIX epoch, as the kernel's clock counts them); `after` is the duration it was armed
/// for, which bounds the wait after a restart (see `Timers::rebase`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Armed<P> {
    pub(crate) kind: TimerKind,
    pub(crate) instance: u64,
    pub(crate) deadline: u64,
    pub(crate) after: u64,
    /// The event it fires; `None` for the state timeout, whose event is in the table.
    pub(crate) event: Option<P>,
}

/// A machine's armed timers. `P` is how a timer's event is held: encoded bytes in the kernel,
/// the event itself in the property check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Timers<P> {
    /// The next instance number: instances never repeat within a machine, so a firing names
    /// exactly one arming.
    pub(crate) next: u64,
    pub(crate) armed: Vec<Armed<P>>,
}

impl<P> Default for Timers<P> {
    fn default() -> Self {
        Timers {
            next: 1,
            armed: Vec::new(),
        }
    }
}

impl<P> Timers<P> {
    pub(crate) fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }

    pub(crate) fn get(&self, kind: &TimerKind) -> Option<&Armed<P>> {
        self.armed.iter().find(|a| &a.kind == kind)
    }

    /// Whether this very arming is still armed.
    pub(crate) fn is_armed(&self, kind: &TimerKind, instance: u64) -> bool {
        self.get(kind).is_some_and(|a| a.instance == instance)
    }

    /// The timers due at `now`, in firing order: by deadline, then by arming order.
    pub(crate) fn due(&self, now: u64) -> Vec<(TimerKind, u64)> {
        let mut due: Vec<&Armed<P>> = self.armed.iter().filter(|a| a.deadline <= now).collect();
        due.sort_by_key(|a| (a.deadline, a.instance));
        due.into_iter()
            .map(|a| (a.kind.clone(), a.instance))
            .collect()
    }

    /// Removes this arming (a firing consumes its timer).
    pub(crate) fn consume(&mut self, kind: &TimerKind, instance: u64) -> Option<Armed<P>> {
        let at = self
            .armed
            .iter()
            .position(|a| &a.kind == kind && a.instance == instance)?;
        Some(self.armed.swap_remove(at))
    }

    fn cancel(&mut self, kind: &TimerKind) {
        // At most one arming per kind.
        if let Some(at) = self.armed.iter().position(|a| &a.kind == kind) {
            self.armed.swap_remove(at);
        }
    }

    /// Arms `kind` for `after` milliseconds from `now` (checked by the caller not to
    /// overflow), replacing a running arming of it.
    fn arm(&mut self, kind: TimerKind, after: u64, now: u64, event: Option<P>) {
        let deadline = now.saturating_add(after);
        self.cancel(&kind);
        let instance = self.next;
        self.next += 1;
        self.armed.push(Armed {
            kind,
            instance,
            deadline,
            after,
            event,
        });
    }

    /// Moves the deadlines of timers restored from a snapshot onto this process's clock: a
    /// deadline further away than the timer's own duration means the wall clock was stepped
    /// back while the machine was down, and the wait is cut to that duration (a timer never
    /// waits longer after a restart than it was armed for).
    pub(crate) fn rebase(&mut self, now: u64) {
        for a in &mut self.armed {
            let latest = now.saturating_add(a.after);
            if a.deadline > latest {
                a.deadline = latest;
            }
        }
    }
}

/// A request with its event converted and its duration in milliseconds, checked.
pub(crate) enum Step<P> {
    Arm(TimerKind, u64, Option<P>),
    Cancel(TimerKind),
}

/// The rules for one accepted event (see the module documentation), applied to `timers` in
/// place. All or nothing: on error `timers` is exactly as it was.
///
/// `payload` turns a request's event into how `P` holds it.
pub(crate) fn on_accepted<P>(
    timers: &mut Timers<P>,
    table: &Table,
    transition: &Transition,
    requests: impl IntoIterator<Item = TimerRequest>,
    now: u64,
    limit: usize,
    payload: impl FnMut(&TimerKind, TimerEvent) -> Result<P, TimerError>,
) -> Result<(), TimerError> {
    let mut scratch = Vec::new();
    on_accepted_in(
        &mut scratch,
        timers,
        table,
        transition,
        requests,
        now,
        limit,
        payload,
    )
}

/// [`on_accepted`] with a buffer the caller keeps between calls (the kernel's shard, which
/// arms timers for every command of a busy machine), so the rules allocate nothing of their
/// own. `steps` is cleared at the start.
#[allow(clippy::too_many_arguments)] // on_accepted's arguments and the buffer
pub(crate) fn on_accepted_in<P>(
    steps: &mut Vec<Step<P>>,
    timers: &mut Timers<P>,
    table: &Table,
    transition: &Transition,
    requests: impl IntoIterator<Item = TimerRequest>,
    now: u64,
    limit: usize,
    mut payload: impl FnMut(&TimerKind, TimerEvent) -> Result<P, TimerError>,
) -> Result<(), TimerError> {
    steps.clear();
    let declared = table.state(transition.to()).and_then(|s| s.state_timeout());
    let enters = !transition.is_self_transition();
    let deadline = |kind: &TimerKind, after: u64| {
        now.checked_add(after)
            .map(|_| ())
            .ok_or_else(|| TimerError::Overflow {
                timer: kind.clone(),
            })
    };
    // Check and convert everything first: nothing changes until all of it holds.
    if enters {
        steps.push(Step::Cancel(TimerKind::State));
        if let Some(t) = declared {
            deadline(&TimerKind::State, t.after_ms)?;
            steps.push(Step::Arm(TimerKind::State, t.after_ms, None));
        }
    }
    // A timer that carries an event: duration, deadline and event checked.
    let mut carrying = |kind: TimerKind, after: Duration, event: TimerEvent| {
        check_after(&kind, after)?;
        let ms = millis_ceil(after);
        deadline(&kind, ms)?;
        let p = payload(&kind, event)?;
        Ok::<_, TimerError>(Step::Arm(kind, ms, Some(p)))
    };
    for request in requests {
        steps.push(match request {
            TimerRequest::Start { name, after, event } => {
                carrying(TimerKind::Named(name), after, event)?
            }
            TimerRequest::Cancel { name } => Step::Cancel(TimerKind::Named(name)),
            TimerRequest::EventTimeout { after, event } => {
                carrying(TimerKind::Event, after, event)?
            }
            TimerRequest::CancelEventTimeout => Step::Cancel(TimerKind::Event),
            TimerRequest::RestartStateTimeout => match declared {
                Some(t) => {
                    deadline(&TimerKind::State, t.after_ms)?;
                    Step::Arm(TimerKind::State, t.after_ms, None)
                }
                None => {
                    return Err(TimerError::NoStateTimeout {
                        state: table.state_name(transition.to()),
                    })
                }
            },
            TimerRequest::CancelStateTimeout => Step::Cancel(TimerKind::State),
        });
    }
    // How many would be armed after: those armed now that no step touches (the event timeout
    // is always cancelled), plus every kind whose last step arms it. A handful of steps: no
    // allocation for the count.
    let last_arms = |kind: &TimerKind| {
        steps.iter().rev().find_map(|step| match step {
            Step::Arm(k, _, _) if k == kind => Some(true),
            Step::Cancel(k) if k == kind => Some(false),
            _ => None,
        })
    };
    let untouched = timers
        .armed
        .iter()
        .filter(|a| a.kind != TimerKind::Event && last_arms(&a.kind).is_none())
        .count();
    let armed_by_steps = steps
        .iter()
        .enumerate()
        .filter(|(i, step)| match step {
            // Count each kind once: at its first arming step, if its last step arms it.
            Step::Arm(kind, _, _) => {
                last_arms(kind) == Some(true)
                    && !steps[..*i]
                        .iter()
                        .any(|s| matches!(s, Step::Arm(k, _, _) if k == kind))
            }
            Step::Cancel(_) => false,
        })
        .count();
    let after = untouched + armed_by_steps;
    if after > limit {
        return Err(TimerError::TooMany {
            armed: after,
            limit,
        });
    }
    // Apply: cannot fail from here on.
    timers.cancel(&TimerKind::Event);
    for step in steps.drain(..) {
        match step {
            Step::Arm(kind, after, event) => timers.arm(kind, after, now, event),
            Step::Cancel(kind) => timers.cancel(&kind),
        }
    }
    Ok(())
}

/// The timers section's layout version this build writes and reads.
const SECTION_VERSION: u8 = 1;
/// Armed timers a section may hold, whatever the kernel's bound: more is corruption.
const SECTION_MAX_TIMERS: usize = 4096;

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StoredTimer {
    /// 0 state timeout, 1 event timeout, 2 named.
    kind: u8,
    name: Option<String>,
    instance: u64,
    deadline: u64,
    after: u64,
    event: Option<Vec<u8>>,
}

/// Appends `v` as postcard writes an unsigned integer (LEB128: seven bits a byte, low first).
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `bytes` as postcard writes a string or byte sequence: length, then the bytes.
fn counted(out: &mut Vec<u8>, bytes: &[u8]) {
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The timers section of a snapshot: its layout version, the next instance number, then every
/// armed timer, in postcard's format for `(u8, u64, Vec<StoredTimer>)` (what
/// [`decode_section`] reads with postcard), written by hand: it is written with every commit
/// of a machine with timers, and a generic serializer costs several times as much here.
pub(crate) fn encode_section(timers: &Timers<Box<[u8]>>) -> Vec<u8> {
    let size = 12
        + timers
            .armed
            .iter()
            .map(|a| {
                32 + a.event.as_ref().map_or(0, |e| e.len())
                    + match &a.kind {
                        TimerKind::Named(n) => n.len(),
                        _ => 0,
                    }
            })
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.push(SECTION_VERSION);
    varint(&mut out, timers.next);
    varint(&mut out, timers.armed.len() as u64);
    for a in &timers.armed {
        match &a.kind {
            TimerKind::State => out.extend_from_slice(&[0, 0]),
            TimerKind::Event => out.extend_from_slice(&[1, 0]),
            TimerKind::Named(n) => {
                out.extend_from_slice(&[2, 1]);
                counted(&mut out, n.as_bytes());
            }
        }
        varint(&mut out, a.instance);
        varint(&mut out, a.deadline);
        varint(&mut out, a.after);
        match &a.event {
            None => out.push(0),
            Some(e) => {
                out.push(1);
                counted(&mut out, e);
            }
        }
    }
    out
}

/// Decodes a timers section written for a machine with `table` that is now in `state`,
/// checking everything against them: a section that does not fit is corrupt.
pub(crate) fn decode_section(
    bytes: &[u8],
    table: &Table,
    state: StateId,
) -> Result<Timers<Box<[u8]>>, SectionError> {
    let (next, stored): (u64, Vec<StoredTimer>) =
        crate::kernel::section::decode_versioned(Section::Timers, bytes, SECTION_VERSION)?;
    let invalid = |problem: String| SectionError::invalid(Section::Timers, problem);
    if stored.len() > SECTION_MAX_TIMERS {
        return Err(invalid(format!(
            "{} armed timers, more than any machine holds",
            stored.len()
        )));
    }
    let mut timers = Timers {
        next,
        armed: Vec::with_capacity(stored.len()),
    };
    for s in stored {
        let kind = match (s.kind, s.name) {
            (0, None) => TimerKind::State,
            (1, None) => TimerKind::Event,
            (2, Some(name)) => {
                check_name(&name).map_err(|e| invalid(e.to_string()))?;
                TimerKind::Named(Cow::Owned(name))
            }
            (k, _) => return Err(invalid(format!("unknown timer kind {k}"))),
        };
        if s.instance >= next {
            return Err(invalid(format!(
                "{kind}: instance {} not below the next, {next}",
                s.instance
            )));
        }
        if s.after == 0 || s.after > millis_ceil(MAX_TIMER_DURATION) {
            return Err(invalid(format!("{kind}: duration of {} ms", s.after)));
        }
        match (&kind, &s.event) {
            (TimerKind::State, None) => {
                let declared = table.state(state).and_then(|m| m.state_timeout());
                if declared.is_none() {
                    return Err(invalid(format!(
                        "a state timeout armed in state `{}`, which declares none",
                        table.state_name(state)
                    )));
                }
            }
            (TimerKind::State, Some(_)) => {
                return Err(invalid("a state timeout with an event".into()))
            }
            (_, None) => return Err(invalid(format!("{kind} without its event"))),
            _ => {}
        }
        if timers.get(&kind).is_some() {
            return Err(invalid(format!("{kind} armed twice")));
        }
        timers.armed.push(Armed {
            kind,
            instance: s.instance,
            deadline: s.deadline,
            after: s.after,
            event: s.event.map(Vec::into_boxed_slice),
        });
    }
    Ok(timers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{EventId, StateMeta, TransitionMeta};

    // Sensing --Pulse--> Sensing, Sensing --Missed--> Pacing, Pacing --Pulse--> Sensing.
    static TABLE: Table = Table::new(
        "Pacer",
        &[
            StateMeta::new("Sensing").timeout(1200, 1),
            StateMeta::new("Pacing"),
        ],
        &["Pulse", "Missed"],
        &[
            TransitionMeta::new(0, 0, 0),
            TransitionMeta::new(0, 1, 1),
            TransitionMeta::new(1, 0, 0),
        ],
        0,
    );

    fn t(from: u16, event: u16, to: u16) -> Transition {
        Transition::new(
            &TABLE,
            StateId::new(from),
            EventId::new(event),
            StateId::new(to),
        )
    }

    fn run(
        timers: &mut Timers<u32>,
        tr: Transition,
        requests: Vec<TimerRequest>,
        now: u64,
    ) -> Result<(), TimerError> {
        on_accepted(timers, &TABLE, &tr, requests, now, 3, |_, e| {
            e.downcast::<u32>().map_err(|e| TimerError::WrongEventType {
                timer: TimerKind::Event,
                expected: "u32",
                found: e.type_name(),
            })
        })
    }

    fn start(name: &'static str, ms: u64, e: u32) -> TimerRequest {
        TimerRequest::Start {
            name: name.into(),
            after: Duration::from_millis(ms),
            event: TimerEvent::new(e),
        }
    }

    #[test]
    fn entering_a_state_arms_its_timeout_and_leaving_it_cancels_it() {
        let mut timers = Timers::default();
        run(&mut timers, t(1, 0, 0), vec![], 1000).unwrap();
        let armed = timers.get(&TimerKind::State).unwrap();
        assert_eq!((armed.deadline, armed.instance), (2200, 1));
        run(&mut timers, t(0, 1, 1), vec![], 1500).unwrap();
        assert!(timers.is_empty());
    }

    #[test]
    fn a_self_transition_keeps_the_state_timeout_unless_restarted() {
        let mut timers = Timers::default();
        run(&mut timers, t(1, 0, 0), vec![], 1000).unwrap();
        run(&mut timers, t(0, 0, 0), vec![], 1100).unwrap();
        assert_eq!(timers.get(&TimerKind::State).unwrap().deadline, 2200);
        run(
            &mut timers,
            t(0, 0, 0),
            vec![TimerRequest::RestartStateTimeout],
            1100,
        )
        .unwrap();
        let armed = timers.get(&TimerKind::State).unwrap();
        assert_eq!((armed.deadline, armed.instance), (2300, 2));
    }

    #[test]
    fn any_accepted_event_cancels_the_event_timeout_and_named_timers_survive() {
        let mut timers = Timers::default();
        let idle = TimerRequest::EventTimeout {
            after: Duration::from_millis(50),
            event: TimerEvent::new(7u32),
        };
        run(
            &mut timers,
            t(0, 0, 0),
            vec![idle, start("retry", 500, 9)],
            0,
        )
        .unwrap();
        assert!(timers.get(&TimerKind::Event).is_some());
        run(&mut timers, t(0, 1, 1), vec![], 10).unwrap();
        assert!(timers.get(&TimerKind::Event).is_none());
        let retry = timers.get(&TimerKind::Named("retry".into())).unwrap();
        assert_eq!((retry.deadline, retry.event), (500, Some(9)));
    }

    #[test]
    fn restarting_a_named_timer_replaces_it_with_a_new_instance() {
        let mut timers = Timers::default();
        run(&mut timers, t(1, 0, 0), vec![start("retry", 500, 1)], 0).unwrap();
        let first = timers
            .get(&TimerKind::Named("retry".into()))
            .unwrap()
            .instance;
        run(&mut timers, t(0, 0, 0), vec![start("retry", 800, 2)], 100).unwrap();
        let named: Vec<_> = timers
            .armed
            .iter()
            .filter(|a| matches!(a.kind, TimerKind::Named(_)))
            .collect();
        assert_eq!(named.len(), 1);
        assert!(named[0].instance > first);
        assert_eq!((named[0].deadline, named[0].event), (900, Some(2)));
        assert!(!timers.is_armed(&TimerKind::Named("retry".into()), first));
    }

    #[test]
    fn bad_requests_are_typed_errors() {
        let mut timers = Timers::default();
        let zero = run(&mut timers, t(0, 0, 0), vec![start("a", 0, 1)], 0).unwrap_err();
        assert!(matches!(zero, TimerError::ZeroDuration { .. }), "{zero}");
        let many = vec![
            start("a", 1, 1),
            start("b", 1, 1),
            start("c", 1, 1),
            start("d", 1, 1),
        ];
        let err = run(&mut timers, t(0, 0, 0), many, 0).unwrap_err();
        assert_eq!(err, TimerError::TooMany { armed: 4, limit: 3 });
        let wrong = TimerRequest::Start {
            name: "a".into(),
            after: Duration::from_millis(1),
            event: TimerEvent::new("text"),
        };
        let err = run(&mut timers, t(0, 0, 0), vec![wrong], 0).unwrap_err();
        assert!(err.to_string().contains("&str"), "{err}");
        let overflow = run(
            &mut timers,
            t(0, 0, 0),
            vec![start("a", 5, 1)],
            u64::MAX - 1,
        )
        .unwrap_err();
        assert!(matches!(overflow, TimerError::Overflow { .. }));
        let bad_name = TimerRequest::Cancel { name: "a b".into() };
        assert!(check_request(&bad_name, &TABLE, StateId::new(0)).is_err());
        let no_timeout = check_request(&TimerRequest::RestartStateTimeout, &TABLE, StateId::new(1));
        assert_eq!(
            no_timeout,
            Err(TimerError::NoStateTimeout { state: "Pacing" })
        );
    }

    #[test]
    fn a_refused_transition_leaves_the_timers_exactly_as_they_were() {
        let mut timers = Timers::default();
        run(&mut timers, t(1, 0, 0), vec![start("a", 100, 1)], 0).unwrap();
        let before = timers.clone();
        // Leaving the state and cancelling `a` would have happened; the third named timer
        // is one too many: none of it happens.
        let requests = vec![
            TimerRequest::Cancel { name: "a".into() },
            start("b", 5, 2),
            start("c", 5, 3),
            start("d", 5, 4),
            start("e", 5, 5),
        ];
        let err = run(&mut timers, t(0, 1, 1), requests, 10).unwrap_err();
        assert!(
            matches!(err, TimerError::TooMany { armed: 4, limit: 3 }),
            "{err}"
        );
        assert_eq!(timers, before);
        let wrong = vec![
            start("b", 5, 2),
            TimerRequest::Start {
                name: "c".into(),
                after: Duration::from_millis(1),
                event: TimerEvent::new("text"),
            },
        ];
        assert!(run(&mut timers, t(0, 1, 1), wrong, 10).is_err());
        assert_eq!(timers, before);
    }

    #[test]
    fn due_timers_come_in_deadline_then_arming_order() {
        let mut timers = Timers::default();
        run(
            &mut timers,
            t(1, 0, 0),
            vec![start("b", 1200, 1), start("a", 100, 2)],
            0,
        )
        .unwrap();
        let due = timers.due(1200);
        assert_eq!(
            due.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>(),
            ["timer `a`", "state timeout", "timer `b`"]
        );
        assert!(timers.due(99).is_empty());
    }

    #[test]
    fn a_restored_deadline_never_waits_longer_than_its_duration() {
        let mut timers: Timers<Box<[u8]>> = Timers::default();
        timers.arm(TimerKind::State, 1200, 10_000_000, None);
        // The wall clock was stepped back an hour while the machine was down.
        timers.rebase(10_000_000 - 3_600_000);
        assert_eq!(timers.armed[0].deadline, 10_000_000 - 3_600_000 + 1200);
        // Stepped forward: already due, fires at once.
        let mut late = timers.clone();
        late.rebase(20_000_000);
        assert_eq!(late.due(20_000_000).len(), 1);
    }

    #[test]
    fn the_section_round_trips_and_refuses_what_does_not_fit() {
        let mut timers: Timers<Box<[u8]>> = Timers::default();
        timers.arm(TimerKind::State, 1200, 5, None);
        timers.arm(
            TimerKind::Named("retry".into()),
            30,
            5,
            Some(vec![1, 2, 3].into()),
        );
        let bytes = encode_section(&timers);
        assert_eq!(
            decode_section(&bytes, &TABLE, StateId::new(0)).unwrap(),
            timers
        );
        // Pacing declares no timeout: a state timeout there is corruption.
        let err = decode_section(&bytes, &TABLE, StateId::new(1)).unwrap_err();
        assert!(err.to_string().contains("declares none"), "{err}");
        let mut newer = bytes.clone();
        newer[0] = 2;
        assert!(decode_section(&newer, &TABLE, StateId::new(0))
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        assert!(decode_section(&bytes[..bytes.len() - 1], &TABLE, StateId::new(0)).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_section(&longer, &TABLE, StateId::new(0)).is_err());
    }

    #[test]
    fn the_hand_written_section_is_what_postcard_writes() {
        let mut timers: Timers<Box<[u8]>> = Timers {
            next: 300,
            ..Timers::default()
        };
        timers.arm(TimerKind::State, 1200, 1_800_000_000_000, None);
        timers.arm(TimerKind::Event, 1 << 35, 7, Some(vec![9; 200].into()));
        timers.arm(
            TimerKind::Named("a-long-enough-name".into()),
            5,
            0,
            Some(vec![].into()),
        );
        let stored: Vec<StoredTimer> = timers
            .armed
            .iter()
            .map(|a| StoredTimer {
                kind: match a.kind {
                    TimerKind::State => 0,
                    TimerKind::Event => 1,
                    TimerKind::Named(_) => 2,
                },
                name: match &a.kind {
                    TimerKind::Named(n) => Some(n.to_string()),
                    _ => None,
                },
                instance: a.instance,
                deadline: a.deadline,
                after: a.after,
                event: a.event.as_ref().map(|e| e.to_vec()),
            })
            .collect();
        let by_postcard = postcard::to_allocvec(&(SECTION_VERSION, timers.next, stored)).unwrap();
        assert_eq!(encode_section(&timers), by_postcard);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_ms(1200), "1200 ms");
        assert_eq!(human_ms(90_000), "90 s");
        assert_eq!(human_ms(300_000), "5 min");
        assert_eq!(human_ms(7_200_000), "2 h");
    }
}
