//! Support for generated code. Not public API: names and signatures change without notice.

#![allow(missing_docs)]

pub use crate::kernel::EventCodec;
pub use crate::machine::Event;
pub use core;
pub use std::string::String;

/// Whether an event type can be stored, decided where the type is concrete (in the code
/// `#[derive(Event)]` writes), by autoref specialization: `(&Probe::<E>::new()).stored()`
/// finds [`SerdeEvent`] when `E` is `Serialize + Deserialize`, and [`PlainEvent`] otherwise.
pub struct Probe<E>(core::marker::PhantomData<fn() -> E>);

impl<E> Probe<E> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Probe(core::marker::PhantomData)
    }
}

/// Chosen for an event type that serde can store.
pub trait SerdeEvent<E> {
    fn stored(&self) -> Option<EventCodec<E>>;
}

impl<E: serde::Serialize + serde::de::DeserializeOwned> SerdeEvent<E> for Probe<E> {
    fn stored(&self) -> Option<EventCodec<E>> {
        Some(EventCodec::postcard())
    }
}

/// Chosen otherwise: the kernel stores none of its events.
pub trait PlainEvent<E> {
    fn stored(&self) -> Option<EventCodec<E>>;
}

impl<E> PlainEvent<E> for &Probe<E> {
    fn stored(&self) -> Option<EventCodec<E>> {
        None
    }
}

#[cfg(feature = "arbitrary")]
pub use arbitrary;
#[cfg(feature = "proptest")]
pub use proptest;

pub use crate::__fsm_if_arbitrary as if_arbitrary;
pub use crate::__fsm_if_proptest as if_proptest;

/// Emits the items it is given when fsm-core's `proptest` feature is on: the derive wraps its
/// proptest impls in it, so the feature is decided here and not in the user's crate.
#[cfg(feature = "proptest")]
#[doc(hidden)]
#[macro_export]
macro_rules! __fsm_if_proptest {
    ($($item:item)*) => { $($item)* };
}

/// Drops the items it is given: fsm-core's `proptest` feature is off.
#[cfg(not(feature = "proptest"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __fsm_if_proptest {
    ($($item:item)*) => {};
}

/// Emits the items it is given when fsm-core's `arbitrary` feature is on.
#[cfg(feature = "arbitrary")]
#[doc(hidden)]
#[macro_export]
macro_rules! __fsm_if_arbitrary {
    ($($item:item)*) => { $($item)* };
}

/// Drops the items it is given: fsm-core's `arbitrary` feature is off.
#[cfg(not(feature = "arbitrary"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __fsm_if_arbitrary {
    ($($item:item)*) => {};
}

use crate::effects::{Effects, Mark};
use crate::machine::{EffectOf, Next, Rejected, StateMachine, Transition, TypedState};
use crate::rejection::{Reason, Refusal, Rejection};
use crate::table::{EventId, StateId};

/// What a sensitive field prints as.
pub const HIDDEN: &dyn core::fmt::Debug = &crate::redact::Hidden;

/// An event payload's name, as a type: `Key<hash of the variant's name>`. [`DeclaredAt`]
/// impls are keyed by it as well as by the payload, so that two transitions of one state
/// into one target stay distinct impls even when one of them names an event the enum lacks
/// (whose payload is then unknown to rustc): that mistake is one error, not a second one
/// about conflicting impls.
pub trait Keyed {
    /// `Key<hash>`.
    type Key;
}

/// See [`Keyed`].
pub struct Key<const NAME_HASH: u64>;

/// A declared transition of state `Self` on the event named by `K` (payload `E`) into `T`;
/// what [`Declared`](crate::Declared) is implemented through.
pub trait DeclaredAt<K, T, E> {}

/// One variant of an event enum, keyed by a hash of its name (the state derive cannot see the
/// event enum, so it names variants through this trait).
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no event variant with the name written here",
    label = "not a variant of the event enum",
    note = "names in `on(..)`, `defer(..)`, `dump(..)` and `delegate(..)` must be variants of the enum given as `#[fsm(event = ..)]`, and that enum must `#[derive(fsm_core::Event)]`"
)]
pub trait Variant<const NAME_HASH: u64>: Event {
    type Payload;
    const ID: u16;
    fn split(self) -> Result<Self::Payload, Self>;
}

/// A variant of an event enum without fields, keyed like [`Variant`]: the events a declared
/// state timeout may fire (the table holds no payload to build another from).
#[diagnostic::on_unimplemented(
    message = "the event of a `state_timeout(..)` must be a variant without fields",
    label = "this event has fields, or is not a variant of the event enum",
    note = "a state timeout fires a fixed event; for one that carries data, arm a named timer from the handler with `effects.start_timer(name, after, event)`"
)]
pub trait UnitVariant<const NAME_HASH: u64>: Variant<NAME_HASH> {
    fn unit() -> Self;
}

/// A handler's result with the target's invariant applied: the new state, or why not.
#[inline(always)]
fn checked<T: TypedState>(result: Result<T, Refusal>) -> Result<T, Reason> {
    let next = result.map_err(Reason::Refused)?;
    match T::check(next.view()) {
        Ok(()) => Ok(next),
        Err(refusal) => Err(Reason::Invalid {
            target: T::ID,
            refusal,
        }),
    }
}

/// The checks of the timer requests a handler made (zero or overlong durations, bad names, a
/// restart of a timeout the target does not declare): a bad request rejects the transition.
/// Only the emptiness test is inline; a machine without timers pays one comparison.
#[inline(always)]
fn check_timers<T: TypedState>(effects: &Effects<EffectOf<T>>, mark: Mark) -> Result<(), Reason> {
    if effects.timers().len() == mark.timers() {
        return Ok(());
    }
    check_timer_requests::<T>(effects, mark)
}

#[cold]
#[inline(never)]
fn check_timer_requests<T: TypedState>(
    effects: &Effects<EffectOf<T>>,
    mark: Mark,
) -> Result<(), Reason> {
    let table = <T::Machine as StateMachine>::TABLE;
    effects
        .timers_since(mark)
        .iter()
        .try_for_each(|r| crate::timer::check_request(r, table, T::ID))
        .map_err(|e| Reason::Timer(Box::new(e)))
}

/// Runs the handler of a declared transition and the target's invariant, for the runtime
/// dispatch. Effects of a rejected transition are discarded.
///
/// `handler` is the generated forwarder to the user's [`crate::Handler`] impl: the one place
/// that requires the impl, so a missing handler is reported once.
#[inline(always)]
pub fn run<'v, S, E, T, H>(
    view: S::Ref<'v>,
    event: E,
    effects: &mut Effects<EffectOf<S>>,
    event_id: u16,
    handler: H,
) -> Result<(S::Machine, Transition), Rejection>
where
    S: TypedState + 'v,
    T: TypedState<Machine = S::Machine>,
    H: FnOnce(S::Ref<'v>, E, &mut Effects<EffectOf<S>>) -> Result<T, Refusal>,
{
    let table = <S::Machine as StateMachine>::TABLE;
    let event_id = EventId::new(event_id);
    let mark = effects.mark();
    let result = checked(handler(view, event, effects))
        .and_then(|next| check_timers::<T>(effects, mark).map(|()| next));
    match result {
        Ok(next) => Ok((
            next.into_machine(),
            Transition::new(table, S::ID, event_id, T::ID),
        )),
        Err(reason) => {
            effects.rewind(mark);
            Err(Rejection::new(table, S::ID, event_id, reason))
        }
    }
}

/// The typestate version of [`run`]: consumes the typed state, hands it back on rejection.
#[inline(always)]
pub fn typed<S, E, T, H>(
    state: S,
    event: E,
    event_id: u16,
    handler: H,
) -> Result<Next<T, EffectOf<S>>, Rejected<S>>
where
    S: TypedState,
    T: TypedState<Machine = S::Machine>,
    H: FnOnce(&S, E, &mut Effects<EffectOf<S>>) -> Result<T, Refusal>,
{
    let mut effects = Effects::new();
    let mark = effects.mark();
    let result = checked(handler(&state, event, &mut effects))
        .and_then(|next| check_timers::<T>(&effects, mark).map(|()| next));
    match result {
        Ok(next) => Ok(Next {
            state: next,
            effects,
        }),
        Err(reason) => {
            let table = <S::Machine as StateMachine>::TABLE;
            let rejection = Rejection::new(table, S::ID, EventId::new(event_id), reason);
            Err(Rejected { state, rejection })
        }
    }
}

/// `StateMachine::apply_into`'s default body: the derive's `apply_into` takes its direct
/// transitions (plain, no hook, no invariant) in place and falls back to this for the rest.
#[inline]
pub fn apply_into<M: StateMachine>(
    machine: &mut M,
    event: M::Event,
    effects: &mut Effects<M::Effect>,
) -> Result<Transition, Rejection> {
    crate::machine::apply_into(machine, event, effects)
}

/// Whether `event` is the variant with id `id`: the test in front of each declared
/// transition of the derive's dispatch (one call instead of a method, a conversion and a
/// comparison for rustc to check at every transition; the same code once inlined).
#[inline(always)]
pub fn is<E: Event>(event: &E, id: u16) -> bool {
    event.id().index() == usize::from(id)
}

/// `StateMachine::next` of a direct transition `from --event--> to` into `target` (see
/// [`direct`]).
#[inline(always)]
pub fn direct_next<M: StateMachine>(
    target: M,
    from: u16,
    event: u16,
    to: u16,
) -> Result<(M, Transition), Rejection> {
    Ok((
        target,
        Transition::new(
            M::TABLE,
            StateId::new(from),
            EventId::new(event),
            StateId::new(to),
        ),
    ))
}

/// The record of a direct transition `from --event--> to`, which the derive's `apply_into`
/// has already written in place: one call per transition keeps the generated code small.
#[inline(always)]
pub fn direct<M: StateMachine>(from: u16, event: u16, to: u16) -> Result<Transition, Rejection> {
    Ok(Transition::new(
        M::TABLE,
        StateId::new(from),
        EventId::new(event),
        StateId::new(to),
    ))
}

/// The rejection for an event that (non-terminal) `state` has no transition for.
#[inline]
pub fn no_transition<M: StateMachine>(state: u16, event: &M::Event) -> Rejection {
    Rejection::no_transition(M::TABLE, StateId::new(state), event.id())
}

/// The rejection for any event in terminal `state`.
#[inline]
pub fn terminal<M: StateMachine>(state: u16, event: &M::Event) -> Rejection {
    Rejection::terminal(M::TABLE, StateId::new(state), event.id())
}

/// Runs a typed state's invariant for [`StateMachine::validate`].
#[inline]
pub fn validate<S: TypedState>(view: S::Ref<'_>) -> Result<(), crate::InvalidState> {
    S::check(view)
        .map_err(|r| crate::InvalidState::new(<S::Machine as StateMachine>::TABLE, S::ID, r))
}

/// Decodes a snapshot's timers section for machine `M` in `state` and encodes it again, for the
/// `envelope_decode` fuzz target (the decoder runs on bytes from disk).
pub fn timers_section_round_trip<M: StateMachine>(
    bytes: &[u8],
    state: StateId,
) -> Result<Vec<u8>, String> {
    let timers = crate::timer::decode_section(bytes, M::TABLE, state).map_err(|e| e.to_string())?;
    Ok(crate::timer::encode_section(&timers))
}

/// What `#[derive(StateMachine)]` hands each `sensitive` field of the current state to, for
/// the codec to seal it at rest (see [`crate::store::Sealer`]).
pub trait SealVisit {
    fn field(&mut self, name: &'static str, value: &mut dyn SealField) -> Result<(), String>;
}

/// A sensitive field as the codec handles it: its value encoded alone, replaced by its
/// default in the payload, and put back from its encoding.
#[diagnostic::on_unimplemented(
    message = "a `sensitive` field of a state is sealed at rest: `{Self}` must implement `Default`, `Serialize` and `Deserialize`",
    label = "this field's type",
    note = "the stored payload holds the field's `Default` value; its real value travels encrypted beside it"
)]
pub trait SealField {
    fn seal(&self) -> Result<Vec<u8>, String>;
    fn blank(&mut self);
    fn open(&mut self, bytes: &[u8]) -> Result<(), String>;
}

impl<T: serde::Serialize + serde::de::DeserializeOwned + Default> SealField for T {
    fn seal(&self) -> Result<Vec<u8>, String> {
        postcard::to_allocvec(self).map_err(|e| e.to_string())
    }

    fn blank(&mut self) {
        *self = T::default();
    }

    fn open(&mut self, bytes: &[u8]) -> Result<(), String> {
        *self = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        Ok(())
    }
}
