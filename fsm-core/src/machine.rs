//! The machine traits: [`StateMachine`] (runtime dispatch over the enum), [`Event`] (the
//! commands it accepts), [`TypedState`] (one type per state, the typestate API), and
//! [`Handler`] (the user's logic, one impl per declared transition).

use std::fmt;

use crate::effects::Effects;
use crate::rejection::{InvalidState, Refusal, Rejection};
use crate::table::{EventId, StateId, Table};

/// The events (commands) a machine accepts: an enum deriving [`Event`](macro@crate::Event).
///
/// The derive also generates a module named after the enum (`OrderCmd` -> `order_cmd`) with one
/// payload type per variant; handlers receive those payloads.
pub trait Event: Sized {
    /// The variant names, in declaration order; [`EventId`]s index this list.
    const NAMES: &'static [&'static str];

    /// The id of this event's variant.
    fn id(&self) -> EventId;

    /// The name of this event's variant.
    fn name(&self) -> &'static str {
        Self::NAMES
            .get(self.id().index())
            .copied()
            .unwrap_or("<unknown>")
    }
}

/// A state machine: an enum deriving [`StateMachine`](macro@crate::StateMachine), whose
/// variants are the states and whose attributes are the transition table.
///
/// The enum is the storable, serializable form of the machine. [`StateMachine::apply`] is the
/// runtime dispatch for events that arrive as data; the typed states (see [`TypedState`]) are
/// the compile-time-checked route for code paths known in advance.
///
/// # Guarantees
/// - `next` and `apply` never panic on their own; only a panicking user handler or invariant
///   can unwind through them, and even then the machine is unchanged (handlers see the old
///   state by reference, and the new state is written only after it passed its invariant).
/// - On any rejection the machine, and the effects buffer, are exactly as before.
pub trait StateMachine: Sized {
    /// The event enum.
    type Event: Event;
    /// What handlers hand back for the world to do after the transition is durable.
    type Effect;
    /// The transition table.
    const TABLE: &'static Table;

    /// The current state's id.
    fn state(&self) -> StateId;

    /// Computes the machine that `event` leads to, leaving `self` untouched. Effects the
    /// handler emits are appended to `effects`; on rejection `effects` is left as it was.
    fn next(
        &self,
        event: Self::Event,
        effects: &mut Effects<Self::Effect>,
    ) -> Result<(Self, Transition), Rejection>;

    /// Runs the current state's invariant (`validate = path`), for a value that did not come
    /// from a transition (a restored snapshot, a value built by hand).
    fn validate(&self) -> Result<(), InvalidState>;

    /// The event that `state`'s declared timeout fires (`state_timeout(ms = N => Event)`), if
    /// it declares one. The derive writes it; a hand-written machine without state timeouts
    /// keeps the default.
    fn timeout_event(state: StateId) -> Option<Self::Event> {
        let _ = state;
        None
    }

    /// The current state's name.
    fn state_name(&self) -> &'static str {
        Self::TABLE.state_name(self.state())
    }

    /// Whether the current state is terminal.
    fn is_terminal(&self) -> bool {
        Self::TABLE.is_terminal(self.state())
    }

    /// Whether the table has a transition for `event` in the current state (a guard may still
    /// refuse it).
    fn accepts(&self, event: &Self::Event) -> bool {
        Self::TABLE.target(self.state(), event.id()).is_some()
    }

    /// Applies `event`: on success the machine is in the new state and the effects are
    /// returned; on rejection the machine is exactly as it was.
    fn apply(&mut self, event: impl Into<Self::Event>) -> Result<Applied<Self::Effect>, Rejection> {
        let mut effects = Effects::new();
        let transition = self.apply_into(event.into(), &mut effects)?;
        Ok(Applied {
            transition,
            effects,
        })
    }

    /// Like [`StateMachine::apply`], appending effects to a buffer the caller reuses.
    #[inline]
    fn apply_into(
        &mut self,
        event: Self::Event,
        effects: &mut Effects<Self::Effect>,
    ) -> Result<Transition, Rejection> {
        let (next, transition) = self.next(event, effects)?;
        *self = next;
        Ok(transition)
    }
}

/// A transition that was taken: from, event, to, with names from the table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    table: &'static Table,
    from: StateId,
    event: EventId,
    to: StateId,
}

impl Transition {
    /// A transition of the machine described by `table`.
    pub fn new(table: &'static Table, from: StateId, event: EventId, to: StateId) -> Self {
        Transition {
            table,
            from,
            event,
            to,
        }
    }

    /// The state left.
    pub fn from(&self) -> StateId {
        self.from
    }

    /// The event.
    pub fn event(&self) -> EventId {
        self.event
    }

    /// The state entered.
    pub fn to(&self) -> StateId {
        self.to
    }

    /// Name of the state left.
    pub fn from_name(&self) -> &'static str {
        self.table.state_name(self.from)
    }

    /// Name of the event.
    pub fn event_name(&self) -> &'static str {
        self.table.event_name(self.event)
    }

    /// Name of the state entered.
    pub fn to_name(&self) -> &'static str {
        self.table.state_name(self.to)
    }

    /// Whether the machine stayed in the same state (a self-transition). Deferred events are
    /// replayed only after a transition that is not one.
    pub fn is_self_transition(&self) -> bool {
        self.from == self.to
    }
}

impl fmt::Debug for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} --{}--> {}",
            self.from_name(),
            self.event_name(),
            self.to_name()
        )
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The result of [`StateMachine::apply`]: the transition taken and the effects to run.
#[derive(Debug)]
pub struct Applied<F> {
    /// The transition taken.
    pub transition: Transition,
    /// Effects for the world, to run after the new state is durable.
    pub effects: Effects<F>,
}

/// One state of a machine as a type of its own (the typestate API).
///
/// Generated by the derive in a module named after the enum (`Order` -> `order::Submitted`).
/// Each declared transition is a method on the owned type, so an undeclared transition does
/// not compile. Conversion to and from the enum is a move: `Order::from(s)` and
/// `order::Submitted::try_from(o)`.
pub trait TypedState: Sized {
    /// The machine this state belongs to.
    type Machine: StateMachine;
    /// A borrowed view of the state's data, which handlers and invariants receive
    /// (`order::SubmittedRef<'a>`; a unit state is its own view).
    type Ref<'a>: Copy
    where
        Self: 'a;
    /// The state's id in the table.
    const ID: StateId;

    /// Borrows the state as its view.
    fn view(&self) -> Self::Ref<'_>;

    /// Runs the state's invariant (always `Ok` for a state without `validate`).
    fn check(view: Self::Ref<'_>) -> Result<(), Refusal>;

    /// Moves the state into the machine enum.
    fn into_machine(self) -> Self::Machine;
}

/// The effect type of the machine a typed state belongs to.
pub type EffectOf<S> = <<S as TypedState>::Machine as StateMachine>::Effect;

/// Marks a transition declared in the table: state `Self`, event payload `E`, target `T`.
/// Implemented by the derive only; it is what makes a [`Handler`] for an undeclared
/// transition impossible to write.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no declared transition on `{E}` into `{T}`",
    label = "this transition is not in the machine's table",
    note = "declare it on the state with `#[fsm(on(Event => Target))]`, or remove this handler (a transition marked `plain` has none)"
)]
pub trait Declared<E, T> {}

/// The user's logic for one declared transition: from the state `Self` on event payload `E`
/// into the state `T`. Returns the new state, or a [`Refusal`] (a guard) with a reason.
/// Effects for the world are pushed into `effects`; transitions themselves do no I/O.
///
/// ```
/// use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
///
/// #[derive(StateMachine, Debug)]
/// #[fsm(event = Cmd)]
/// enum Door {
///     #[fsm(initial, on(Lock => Locked))]
///     Open,
///     #[fsm(on(Unlock => Open))]
///     Locked { code: u32 },
/// }
///
/// #[derive(Event, Debug)]
/// enum Cmd {
///     Lock { code: u32 },
///     Unlock { code: u32 },
/// }
///
/// impl Handler<cmd::Lock, door::Locked> for door::Open {
///     fn handle(_: door::Open, ev: cmd::Lock, _: &mut Effects<()>) -> Result<door::Locked, Refusal> {
///         Ok(door::Locked { code: ev.code })
///     }
/// }
///
/// impl Handler<cmd::Unlock, door::Open> for door::Locked {
///     fn handle(s: door::LockedRef<'_>, ev: cmd::Unlock, _: &mut Effects<()>) -> Result<door::Open, Refusal> {
///         if ev.code == *s.code { Ok(door::Open) } else { Err(Refusal::new("wrong code")) }
///     }
/// }
///
/// let mut d = Door::Open;
/// d.apply(Cmd::Lock { code: 7 }).unwrap();
/// assert!(d.apply(Cmd::Unlock { code: 1 }).is_err());
/// assert_eq!(d.state_name(), "Locked");
/// ```
#[diagnostic::on_unimplemented(
    message = "missing handler: state `{Self}` declares a transition on `{E}` into `{T}` but has no handler for it",
    label = "this transition needs a handler",
    note = "write `impl fsm_core::Handler<{E}, {T}> for {Self} {{ fn handle(state: <{Self} as fsm_core::TypedState>::Ref<'_>, event: {E}, effects: &mut fsm_core::Effects<..>) -> Result<{T}, fsm_core::Refusal> {{ .. }} }}`"
)]
pub trait Handler<E, T: TypedState>: TypedState + Declared<E, T> {
    /// Computes the new state from a view of the old one and the event.
    fn handle(
        state: Self::Ref<'_>,
        event: E,
        effects: &mut Effects<EffectOf<Self>>,
    ) -> Result<T, Refusal>;
}

/// The result of a typestate transition method: the new typed state and its effects.
#[derive(Debug)]
pub struct Next<T, F> {
    /// The new state.
    pub state: T,
    /// The effects the handler emitted.
    pub effects: Effects<F>,
}

impl<T, F> Next<T, F> {
    /// The new state, dropping the effects.
    pub fn into_state(self) -> T {
        self.state
    }
}

/// A typestate transition that was rejected: the unchanged state, handed back, and why.
#[derive(Debug)]
pub struct Rejected<S> {
    /// The state, exactly as it was.
    pub state: S,
    /// Why the transition was rejected.
    pub rejection: Rejection,
}

impl<S> From<Rejected<S>> for Rejection {
    fn from(r: Rejected<S>) -> Self {
        r.rejection
    }
}

impl<S> fmt::Display for Rejected<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.rejection, f)
    }
}

impl<S: fmt::Debug> std::error::Error for Rejected<S> {}
