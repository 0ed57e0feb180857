//! Effects: what a transition asks the world to do, as plain data.
//!
//! Handlers push effects instead of doing I/O; the kernel runs them after the new state is
//! durable, on workers that may fail without harming the machine.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::machine::Event;
use crate::table::EventId;
use crate::timer::{TimerEvent, TimerRequest};

/// A buffer of effects emitted by handlers, and of what they asked of the machine's timers.
/// Creating one does not allocate; it allocates on the first push.
///
/// Timers (see [`crate::timer`] for the rules): a handler arms, restarts or cancels them here;
/// the kernel applies the requests of an accepted transition in the same durable write as the
/// transition, and runs nothing of a rejected one.
///
/// ```
/// use std::time::Duration;
/// use fsm_core::Effects;
/// # #[derive(Debug, Clone, PartialEq)] enum Cmd { Retry }
/// let mut fx: Effects<()> = Effects::new();
/// fx.start_timer("retry", Duration::from_secs(30), Cmd::Retry);
/// fx.cancel_timer("retry");
/// assert_eq!(fx.timers().len(), 2);
/// assert!(fx.is_empty()); // no effect for the world, only timer requests
/// ```
pub struct Effects<F> {
    items: Vec<F>,
    timers: Vec<TimerRequest>,
    raised: Vec<Raised>,
}

/// How far a buffer was filled, to rewind a rejected transition's pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    items: usize,
    timers: usize,
    raised: usize,
}

impl Mark {
    /// Timer requests held at the mark.
    pub(crate) fn timers(self) -> usize {
        self.timers
    }

    /// Raised events held at the mark.
    pub(crate) fn raised(self) -> usize {
        self.raised
    }
}

impl<F> Effects<F> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Effects {
            items: Vec::new(),
            timers: Vec::new(),
            raised: Vec::new(),
        }
    }

    /// Arms the named timer (replacing a running timer of that name): `event` fires `after`
    /// from now unless the timer is cancelled or restarted first. It survives state changes.
    /// `event` must be the machine's event enum (`Cmd::Retry`); names are 1 to 64 bytes of
    /// ASCII letters, digits and `. _ - : @ +`.
    pub fn start_timer<E: Any + Send>(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        after: Duration,
        event: E,
    ) {
        self.timers.push(TimerRequest::Start {
            name: name.into(),
            after,
            event: TimerEvent::new(event),
        });
    }

    /// Cancels the named timer (nothing happens if it is not running).
    pub fn cancel_timer(&mut self, name: impl Into<Cow<'static, str>>) {
        self.timers.push(TimerRequest::Cancel { name: name.into() });
    }

    /// Arms the event timeout: `event` fires `after` from now unless the machine accepts any
    /// event first (replaces a running event timeout).
    pub fn event_timeout<E: Any + Send>(&mut self, after: Duration, event: E) {
        self.timers.push(TimerRequest::EventTimeout {
            after,
            event: TimerEvent::new(event),
        });
    }

    /// Cancels the event timeout.
    pub fn cancel_event_timeout(&mut self) {
        self.timers.push(TimerRequest::CancelEventTimeout);
    }

    /// Arms the target state's declared timeout anew. A self-transition leaves a running state
    /// timeout as it is; this restarts it (a pacemaker's pulse). The target state must declare
    /// `state_timeout(..)`, or the transition is rejected.
    pub fn restart_state_timeout(&mut self) {
        self.timers.push(TimerRequest::RestartStateTimeout);
    }

    /// Cancels the state timeout.
    pub fn cancel_state_timeout(&mut self) {
        self.timers.push(TimerRequest::CancelStateTimeout);
    }

    /// Raises `event` to this machine (gen_statem's `next_event`): it is applied right after the
    /// transition that raised it, before any other command, as part of the same step. `event`
    /// must be the machine's event enum (`Cmd::Settle`).
    ///
    /// A command and the events its transitions raise are one step: all of them are applied,
    /// or none (a raised event that is rejected rejects the command, with
    /// [`Reason::Raised`](crate::Reason::Raised)). Events raised by one transition are applied
    /// in the order raised, each followed at once by the events it raises in turn (depth
    /// first, as gen_statem inserts them). At most
    /// [`RAISE_LIMIT`](crate::RAISE_LIMIT) events are raised per command; a cycle
    /// meets that bound and is rejected with [`Reason::RaiseLimit`](crate::Reason::RaiseLimit).
    ///
    /// ```
    /// use fsm_core::{Effects, Event};
    /// #[derive(Event, Debug)]
    /// enum Cmd { Settle }
    /// # fn main() {
    /// let mut fx: Effects<()> = Effects::new();
    /// fx.raise(Cmd::Settle);
    /// assert_eq!(fx.raised()[0].name(), "Settle");
    /// assert!(fx.is_empty()); // raised events are not effects for the world
    /// # }
    /// ```
    pub fn raise<E: Event + Any + Send>(&mut self, event: E) {
        self.raised.push(Raised {
            id: event.id(),
            name: event.name(),
            event: TimerEvent::new(event),
        });
    }

    /// The raised events not yet applied, in the order raised.
    pub fn raised(&self) -> &[Raised] {
        &self.raised
    }

    /// Raised events pushed since `mark`, removed.
    pub(crate) fn split_raised(&mut self, mark: usize) -> Vec<Raised> {
        if self.raised.len() <= mark {
            return Vec::new();
        }
        self.raised.split_off(mark)
    }

    /// The timer requests held, in the order they were made.
    pub fn timers(&self) -> &[TimerRequest] {
        &self.timers
    }

    /// Removes and returns the timer requests.
    pub fn take_timers(&mut self) -> Vec<TimerRequest> {
        std::mem::take(&mut self.timers)
    }

    /// Removes and yields the timer requests, keeping the allocation for reuse.
    pub fn drain_timers(&mut self) -> std::vec::Drain<'_, TimerRequest> {
        self.timers.drain(..)
    }

    /// Removes and yields the first `n` timer requests (all of them if fewer are held).
    pub(crate) fn drain_timers_front(&mut self, n: usize) -> std::vec::Drain<'_, TimerRequest> {
        let n = n.min(self.timers.len());
        self.timers.drain(..n)
    }

    #[inline]
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            items: self.items.len(),
            timers: self.timers.len(),
            raised: self.raised.len(),
        }
    }

    /// Timer requests pushed since `mark`.
    pub(crate) fn timers_since(&self, mark: Mark) -> &[TimerRequest] {
        self.timers.get(mark.timers..).unwrap_or(&[])
    }

    /// Forgets effects and timer requests pushed after `mark` (a rejected transition's).
    #[inline]
    pub(crate) fn rewind(&mut self, mark: Mark) {
        self.items.truncate(mark.items);
        self.timers.truncate(mark.timers);
        self.raised.truncate(mark.raised);
    }

    /// Forgets everything held.
    pub(crate) fn clear(&mut self) {
        self.items.clear();
        self.timers.clear();
        self.raised.clear();
    }

    /// Appends an effect.
    pub fn push(&mut self, effect: F) {
        self.items.push(effect);
    }

    /// Number of effects held (timer requests not counted).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no effect is held (timer requests not counted).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The effects, in emission order.
    pub fn as_slice(&self) -> &[F] {
        &self.items
    }

    /// Iterates over the effects in emission order.
    pub fn iter(&self) -> std::slice::Iter<'_, F> {
        self.items.iter()
    }

    /// Removes and yields every effect, keeping the allocation for reuse.
    #[inline]
    pub fn drain(&mut self) -> std::vec::Drain<'_, F> {
        self.items.drain(..)
    }

    /// The effects as a vector.
    pub fn into_vec(self) -> Vec<F> {
        self.items
    }
}

impl<F> Default for Effects<F> {
    fn default() -> Self {
        Effects::new()
    }
}

impl<F: fmt::Debug> fmt::Debug for Effects<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.timers.is_empty() && self.raised.is_empty() {
            return f.debug_list().entries(&self.items).finish();
        }
        f.debug_struct("Effects")
            .field("effects", &self.items)
            .field("timers", &self.timers)
            .field("raised", &self.raised)
            .finish()
    }
}

impl<F> IntoIterator for Effects<F> {
    type Item = F;
    type IntoIter = std::vec::IntoIter<F>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl<'a, F> IntoIterator for &'a Effects<F> {
    type Item = &'a F;
    type IntoIter = std::slice::Iter<'a, F>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// An event a handler raised ([`Effects::raise`]), waiting to be applied.
#[derive(Debug)]
pub struct Raised {
    id: EventId,
    name: &'static str,
    event: TimerEvent,
}

impl Raised {
    /// The event's variant id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// The event's variant name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The event itself, type-erased.
    pub fn into_event(self) -> TimerEvent {
        self.event
    }
}

/// The effect type of a machine that declares none: it has no values, so no effect can be
/// emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum NoEffect {}
