//! The machine traits: [`StateMachine`] (runtime dispatch over the enum), [`Event`] (the
//! commands it accepts), [`TypedState`] (one type per state, the typestate API), and
//! [`Handler`] (the user's logic, one impl per declared transition).

use std::convert::Infallible;
use std::fmt;

use crate::effects::Effects;
use crate::rejection::{InvalidState, Reason, Refusal, Rejection};
use crate::table::{EventId, StateId, Table};
use crate::timer::TimerEvent;

/// The most events the transitions of one command may raise ([`Effects::raise`]), counted over
/// the whole chain: a cycle of raised events meets it and the command is rejected with
/// [`Reason::RaiseLimit`] instead of running forever.
pub const RAISE_LIMIT: usize = 64;

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

    /// The event a handler raised ([`Effects::raise`]), if it is of this type; itself back if
    /// not. The derive writes it for an enum without generic parameters; the default takes
    /// nothing, so a machine whose event type is generic (or written by hand without this)
    /// rejects a raise with [`Reason::RaisedWrongType`].
    fn from_raised(raised: TimerEvent) -> Result<Self, TimerEvent> {
        Err(raised)
    }

    /// How a kernel stores this event in a snapshot (for timers that carry it), if it can:
    /// `#[derive(Event)]` gives postcard when the type is also `Serialize + Deserialize`.
    /// Not public API; a hand-written impl keeps the default (none) and a kernel needs
    /// `KernelBuilder::timer_events`.
    #[doc(hidden)]
    fn __stored() -> Option<crate::__private::EventCodec<Self>> {
        None
    }
}

/// Why a chain of raised events stopped: a rejection, or the caller's step check.
pub(crate) enum Stop<X> {
    Rejected(Rejection),
    Step(X),
}

/// Applies `event` to `machine` and then every event the transitions raise (depth first, at
/// most [`RAISE_LIMIT`]), leaving `machine` untouched: the final machine and the command's own
/// transition, or why not. `step` sees each transition taken, in order, with the effects
/// buffer as the step left it (its raised events not yet taken); an error from it stops the
/// chain. On any error the effects are rewound to where they were.
#[inline]
pub(crate) fn settle<M: StateMachine, X>(
    machine: &M,
    event: M::Event,
    effects: &mut Effects<M::Effect>,
    mut step: impl FnMut(&Transition, &mut Effects<M::Effect>) -> Result<(), X>,
) -> Result<(M, Transition), Stop<X>> {
    let mark = effects.mark();
    let (next, first) = machine.next(event, effects).map_err(Stop::Rejected)?;
    if let Err(x) = step(&first, effects) {
        effects.rewind(mark);
        return Err(Stop::Step(x));
    }
    if effects.raised().len() == mark.raised() {
        return Ok((next, first));
    }
    settle_raised(
        first.from(),
        first.event(),
        next,
        first,
        effects,
        mark,
        step,
    )
}

/// The rest of [`settle`], for a transition that raised events.
#[cold]
#[inline(never)]
fn settle_raised<M: StateMachine, X>(
    from: StateId,
    event_id: EventId,
    mut current: M,
    first: Transition,
    effects: &mut Effects<M::Effect>,
    mark: crate::effects::Mark,
    mut step: impl FnMut(&Transition, &mut Effects<M::Effect>) -> Result<(), X>,
) -> Result<(M, Transition), Stop<X>> {
    let reject = |effects: &mut Effects<M::Effect>, reason| {
        effects.rewind(mark);
        Err(Stop::Rejected(Rejection::new(
            M::TABLE,
            from,
            event_id,
            reason,
        )))
    };
    let mut stack = effects.split_raised(mark.raised());
    let mut count = stack.len();
    stack.reverse();
    while let Some(raised) = stack.pop() {
        if count > RAISE_LIMIT {
            return reject(effects, Reason::RaiseLimit { limit: RAISE_LIMIT });
        }
        let event = match M::Event::from_raised(raised.into_event()) {
            Ok(event) => event,
            Err(raised) => {
                let reason = Reason::RaisedWrongType {
                    expected: std::any::type_name::<M::Event>(),
                    found: raised.type_name(),
                };
                return reject(effects, reason);
            }
        };
        match current.next(event, effects) {
            Ok((next, transition)) => {
                if let Err(x) = step(&transition, effects) {
                    effects.rewind(mark);
                    return Err(Stop::Step(x));
                }
                current = next;
                let more = effects.split_raised(mark.raised());
                count += more.len();
                stack.extend(more.into_iter().rev());
            }
            Err(rejection) => return reject(effects, Reason::Raised(Box::new(rejection))),
        }
    }
    Ok((current, first))
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

    /// Whether the current state has `#[fsm(sensitive)]` fields (written by the derive when
    /// a state has one): a sealing codec copies the machine only then.
    #[doc(hidden)]
    fn __has_sensitive_fields(&self) -> bool {
        false
    }

    /// Hands each `#[fsm(sensitive)]` field of the current state to `visit` (written by the
    /// derive when a state has one): how the codec seals them at rest.
    #[doc(hidden)]
    fn __sensitive_fields(
        &mut self,
        visit: &mut dyn crate::__private::SealVisit,
    ) -> Result<(), String> {
        let _ = visit;
        Ok(())
    }

    /// The event that `state`'s declared timeout fires (`state_timeout(ms = N => Event)`), if
    /// it declares one. The derive writes it; a hand-written machine without state timeouts
    /// keeps the default.
    fn timeout_event(state: StateId) -> Option<Self::Event> {
        let _ = state;
        None
    }

    /// The event that superstate `superstate`'s declared timeout fires (an index in
    /// [`Table::superstates`](crate::Table::superstates)), if it declares one. The derive
    /// writes it.
    fn superstate_timeout_event(superstate: usize) -> Option<Self::Event> {
        let _ = superstate;
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

    /// Applies `event`, and the events its transitions raise ([`Effects::raise`]): on success
    /// the machine is in the new state and the effects are returned; on rejection (of the
    /// event or of one it raised) the machine is exactly as it was.
    fn apply(&mut self, event: impl Into<Self::Event>) -> Result<Applied<Self::Effect>, Rejection> {
        let mut effects = Effects::new();
        let mut raised = Vec::new();
        let mut first = true;
        let (next, transition) = settle(self, event.into(), &mut effects, |t, _| {
            if !std::mem::take(&mut first) {
                raised.push(*t);
            }
            Ok::<(), Infallible>(())
        })
        .map_err(unstoppable)?;
        *self = next;
        Ok(Applied {
            transition,
            raised,
            effects,
        })
    }

    /// Like [`StateMachine::apply`], appending effects to a buffer the caller reuses; the
    /// transition returned is the event's own (raised events may have moved the machine on).
    #[inline]
    fn apply_into(
        &mut self,
        event: Self::Event,
        effects: &mut Effects<Self::Effect>,
    ) -> Result<Transition, Rejection> {
        apply_into(self, event, effects)
    }
}

/// [`StateMachine::apply_into`]'s default body, which the derive's own `apply_into` falls back
/// to for whatever its direct arms do not cover.
#[inline]
pub(crate) fn apply_into<M: StateMachine>(
    machine: &mut M,
    event: M::Event,
    effects: &mut Effects<M::Effect>,
) -> Result<Transition, Rejection> {
    // `settle`, written out so that the common case (nothing raised) moves the new machine
    // once, as a plain `next` would.
    let mark = effects.mark();
    let (next, first) = machine.next(event, effects)?;
    if effects.raised().len() == mark.raised() {
        *machine = next;
        return Ok(first);
    }
    let step = |_: &Transition, _: &mut Effects<M::Effect>| Ok::<(), Infallible>(());
    let (next, first) = settle_raised(
        first.from(),
        first.event(),
        next,
        first,
        effects,
        mark,
        step,
    )
    .map_err(unstoppable)?;
    *machine = next;
    Ok(first)
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

/// A chain without a step check stops only on a rejection.
fn unstoppable(stop: Stop<Infallible>) -> Rejection {
    match stop {
        Stop::Rejected(r) => r,
        Stop::Step(never) => match never {},
    }
}

/// The result of [`StateMachine::apply`]: the transition taken and the effects to run.
#[derive(Debug)]
pub struct Applied<F> {
    /// The transition taken.
    pub transition: Transition,
    /// The transitions the raised events took after it, in the order applied (empty unless a
    /// handler raised an event).
    pub raised: Vec<Transition>,
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

    /// Runs the state's invariant (always `Ok` for a state without `validate`, which is what
    /// the default does; the derive writes this only for a state with one).
    #[inline]
    fn check(view: Self::Ref<'_>) -> Result<(), Refusal> {
        let _ = view;
        Ok(())
    }

    /// Moves the state into the machine enum.
    fn into_machine(self) -> Self::Machine;
}

/// The effect type of the machine a typed state belongs to.
pub type EffectOf<S> = <<S as TypedState>::Machine as StateMachine>::Effect;

/// Marks a transition declared in the table: state `Self`, event payload `E`, target `T`.
/// Implemented by the derive only; it is what makes a [`Handler`] for an undeclared
/// transition impossible to write.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no transition on `{E}` into `{T}` that takes a handler",
    label = "no transition here runs a handler: it is not declared, or it is `plain` or names its function",
    note = "if the state says `on(Event => Target, plain)`, or names the transition's function with `with = ..` or `update = ..`, the transition takes no handler: remove this impl, or drop the marker to have it run",
    note = "if it is not declared, declare it on the state with `#[fsm(on(Event => Target))]`"
)]
pub trait Declared<E, T> {}

// The derive declares each transition as `DeclaredAt<Key<hash of the event's name>, T, E>`:
// keyed by the name, so that two transitions of one state into one target never look alike
// to rustc, even when one names an event the enum lacks. Not recommended, so that a handler
// for an undeclared transition is reported as `Declared`'s message, not as this bound.
#[diagnostic::do_not_recommend]
impl<S, E: crate::__private::Keyed, T> Declared<E, T> for S where
    S: crate::__private::DeclaredAt<E::Key, T, E>
{
}

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
