//! The property check with time: event sequences with "time passes" steps, timers armed and
//! fired under the kernel's rules, and a model of what must have been cancelled; with
//! restarts, the same sequence run beside it without them.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Checker, Property, Run, Step, Violation, Walk};
use crate::kernel::EventCodec;
use crate::store::{Codec, Limits, Sections, Snapshot};
use crate::table::StateId;
use crate::timer::{self, TimerError, TimerKind, TimerRequest, Timers, DEFAULT_MAX_TIMERS};
use crate::{StateMachine, Transition};

/// One input of a timed sequence: an event, time passing, or a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<E> {
    /// Apply an event.
    Event(E),
    /// Let time pass: every timer due within it fires, in deadline order.
    Elapse(Duration),
    /// The process stops and starts again: the machine and its armed timers are stored in a
    /// snapshot and loaded from it, as the kernel does (needs [`Checker::restores`]).
    Restore,
}

/// Firings one `Elapse` may cause before the check stops moving time (a timer that re-arms
/// itself with a tiny duration would otherwise fire without end).
const MAX_FIRINGS_PER_ELAPSE: usize = 10_000;

/// The machine's timers in the check, and the independent record of what happened to each
/// arming.
struct Clockwork<E> {
    timers: Timers<E>,
    /// Milliseconds since the sequence started.
    now: u64,
    /// The state each state-timeout arming was made in.
    armed_in: HashMap<u64, StateId>,
    /// Armings that were cancelled or replaced.
    gone: HashSet<u64>,
    /// Every firing: the timer and the moment it fired.
    fired: Vec<(TimerKind, u64)>,
}

/// One timed run: the walk and its timers.
struct Timed<'c, M: StateMachine> {
    walk: Walk<'c, M>,
    clock: Clockwork<M::Event>,
}

/// The round trip through a snapshot and the comparison of effects, for
/// [`Checker::restores`]: function pointers made where the machine's types are known to
/// encode and compare, so the rest of the checker asks nothing more of them.
pub(super) struct Restorer<M: StateMachine> {
    through: Through<M>,
    same_effects: SameEffects<M>,
}

/// Whether two runs' effects are equal, and if not where they differ.
type SameEffects<M> =
    fn(&[<M as StateMachine>::Effect], &[<M as StateMachine>::Effect]) -> Result<(), String>;

/// A machine and its timers, through a snapshot and back, at a moment of the check's clock.
type Through<M> = fn(
    &M,
    &Timers<<M as StateMachine>::Event>,
    u64,
) -> Result<(M, Timers<<M as StateMachine>::Event>), String>;

impl<M: StateMachine> Restorer<M> {
    pub(super) fn new() -> Self
    where
        M: Serialize + DeserializeOwned + fmt::Debug,
        M::Event: Serialize + DeserializeOwned,
        M::Effect: PartialEq + fmt::Debug,
    {
        Restorer {
            through: through::<M>,
            same_effects: same_effects::<M::Effect>,
        }
    }
}

/// Stores `machine` and its `timers` as the kernel does (its payload, the timers section with
/// each timer's event encoded, no section without a timer) and loads them back as the kernel
/// does: the envelope verified, the state decoded, the section checked against that state,
/// every event decoded, deadlines moved onto the clock at `now`.
fn through<M>(
    machine: &M,
    timers: &Timers<M::Event>,
    now: u64,
) -> Result<(M, Timers<M::Event>), String>
where
    M: StateMachine + Serialize + DeserializeOwned + fmt::Debug,
    M::Event: Serialize + DeserializeOwned,
{
    let events = EventCodec::<M::Event>::postcard();
    let stored = timers.try_map(|kind, event| {
        (events.encode)(event)
            .map(Vec::into_boxed_slice)
            .map_err(|e| format!("the event of the {kind} does not encode: {e}"))
    })?;
    let section = (!stored.is_empty()).then(|| timer::encode_section(&stored));
    let codec = Codec::<M>::new(1);
    let written = codec
        .encode_framed(
            machine,
            1,
            Sections {
                timers: section.as_deref(),
                ..Sections::default()
            },
        )
        .map_err(|e| format!("{machine:?} does not encode: {e}"))?;
    let read = Snapshot::from_bytes(written.as_bytes().to_vec(), &Limits::default())
        .map_err(|e| format!("the snapshot of {machine:?} does not read back: {e}"))?;
    let back = codec
        .decode(&read)
        .map_err(|e| format!("{machine:?} does not decode from its snapshot: {e}"))?;
    let mut loaded = match read.timers() {
        None => Timers::default(),
        Some(bytes) => timer::decode_section(bytes, M::TABLE, back.state())
            .map_err(|e| format!("the timers of {machine:?} do not load: {e}"))?
            .try_map(|kind, bytes| {
                (events.decode)(bytes)
                    .map_err(|e| format!("the event of the {kind} does not decode: {e}"))
            })?,
    };
    loaded.rebase(now);
    Ok((back, loaded))
}

fn same_effects<F: PartialEq + fmt::Debug>(restored: &[F], straight: &[F]) -> Result<(), String> {
    if restored == straight {
        return Ok(());
    }
    let at = restored
        .iter()
        .zip(straight)
        .take_while(|(a, b)| a == b)
        .count();
    Err(format!(
        "from effect {at} on, the run with restarts emitted {:?} where the run without emitted {:?}",
        &restored[at..],
        &straight[at..]
    ))
}

impl<M> Checker<M>
where
    M: StateMachine + Clone + PartialEq + fmt::Debug + 'static,
    M::Event: Clone + fmt::Debug + 'static,
{
    /// Checks one timed sequence from `start` (which is taken as just entered, so its
    /// declared timeout is armed). Every property of the [module](super) holds at every step,
    /// plus [`Property::TimerRequestsHold`] and [`Property::TimeoutsFireOnlyWhileArmed`];
    /// with [`Checker::restores`], [`Property::RestoreIsInvisible`] too.
    pub fn check_timed(
        &self,
        start: &M,
        inputs: impl IntoIterator<Item = Input<M::Event>>,
    ) -> Result<Run, Violation> {
        let mut run = Timed::start(self, start)?;
        // The same sequence without the restarts, to compare with.
        let mut straight = match self.restore {
            Some(_) => Some(Timed::start(self, start)?),
            None => None,
        };
        for input in inputs {
            match input {
                Input::Event(event) => {
                    if let Some(s) = straight.as_mut() {
                        s.event(event.clone())?;
                    }
                    run.event(event)?;
                }
                Input::Elapse(by) => {
                    if let Some(s) = straight.as_mut() {
                        s.elapse(by)?;
                    }
                    run.elapse(by)?;
                }
                Input::Restore => match &self.restore {
                    Some(restorer) => run.restore(restorer)?,
                    None => {
                        return Err(run.walk.fail(
                            Property::RestoreIsInvisible,
                            "the sequence has a `Restore` step, and the checker does not restore: call `Checker::restores()`".to_owned(),
                        ))
                    }
                },
            }
            if let (Some(restorer), Some(s)) = (&self.restore, &straight) {
                run.compare(s, restorer)?;
            }
        }
        Ok(run.walk.run)
    }
}

impl<'c, M> Timed<'c, M>
where
    M: StateMachine + Clone + PartialEq + fmt::Debug + 'static,
    M::Event: Clone + fmt::Debug + 'static,
{
    /// A run from `start`, taken as just entered: the superstates around it and the state
    /// itself arm their declared timeouts, as in the kernel.
    fn start(checker: &'c Checker<M>, start: &M) -> Result<Self, Violation> {
        let mut timed = Timed {
            walk: Walk::new(checker, start)?,
            clock: Clockwork {
                timers: Timers::default(),
                now: 0,
                armed_in: HashMap::new(),
                gone: HashSet::new(),
                fired: Vec::new(),
            },
        };
        timer::arm_entering_superstates(&mut timed.clock.timers, M::TABLE, start.state(), 0);
        if let Some(declared) = M::TABLE
            .state(start.state())
            .and_then(|s| s.state_timeout())
        {
            let entered = Transition::new(M::TABLE, start.state(), declared.event, start.state());
            settle(
                &mut timed.walk,
                &mut timed.clock,
                &entered,
                None,
                vec![TimerRequest::RestartStateTimeout],
            )?;
        }
        Ok(timed)
    }

    fn event(&mut self, event: M::Event) -> Result<(), Violation> {
        if let Some(t) = self.walk.event(event)? {
            let requests = self.walk.effects.take_timers();
            settle(&mut self.walk, &mut self.clock, &t, None, requests)?;
        }
        Ok(())
    }

    fn elapse(&mut self, by: Duration) -> Result<(), Violation> {
        elapse(&mut self.walk, &mut self.clock, by)
    }

    /// A restart: the machine and its timers go through a snapshot. What the model knows
    /// about armings is per process: the armings read back are the ones alive, each still in
    /// the state it was armed in.
    fn restore(&mut self, restorer: &Restorer<M>) -> Result<(), Violation> {
        self.walk.run.restored += 1;
        self.walk.steps.push(Step {
            from: M::TABLE.state_name(self.walk.machine.state()),
            event: "<restart>",
            event_value: "stored and loaded".to_owned(),
            outcome: String::new(),
        });
        let (machine, timers) =
            (restorer.through)(&self.walk.machine, &self.clock.timers, self.clock.now)
                .map_err(|d| self.walk.fail(Property::RestoreIsInvisible, d))?;
        if machine != self.walk.machine {
            return Err(self.walk.fail(
                Property::RestoreIsInvisible,
                format!(
                    "{:?} was stored and {machine:?} was loaded",
                    self.walk.machine
                ),
            ));
        }
        self.walk.machine = machine;
        self.clock
            .armed_in
            .retain(|i, _| timers.armed.iter().any(|a| a.instance == *i));
        self.clock.gone.clear();
        self.clock.timers = timers;
        Ok(())
    }

    /// The run with restarts against `straight`, the same without them, after a step.
    fn compare(&self, straight: &Self, restorer: &Restorer<M>) -> Result<(), Violation> {
        let fail = |detail: String| {
            Err(self.walk.fail(
                Property::RestoreIsInvisible,
                format!("{detail} (run with restarts vs. the same run without)"),
            ))
        };
        if self.walk.machine != straight.walk.machine {
            return fail(format!(
                "the machine is {:?} where it is {:?} without restarts",
                self.walk.machine, straight.walk.machine
            ));
        }
        if let Err(detail) = (restorer.same_effects)(
            self.walk.effects.as_slice(),
            straight.walk.effects.as_slice(),
        ) {
            return fail(detail);
        }
        if self.clock.fired != straight.clock.fired {
            return fail(format!(
                "timers fired {:?}, without restarts {:?}",
                self.clock.fired, straight.clock.fired
            ));
        }
        // Instance numbers start again after a restart without timers: compared without them.
        let armed = |c: &Clockwork<M::Event>| {
            let mut armed: Vec<(String, u64, u64, String)> = c
                .timers
                .armed
                .iter()
                .map(|a| {
                    (
                        a.kind.to_string(),
                        a.deadline,
                        a.after,
                        format!("{:?}", a.event),
                    )
                })
                .collect();
            armed.sort();
            armed
        };
        let (mine, theirs) = (armed(&self.clock), armed(&straight.clock));
        if mine != theirs {
            return fail(format!(
                "armed timers {mine:?}, without restarts {theirs:?}"
            ));
        }
        Ok(())
    }
}

/// Moves time by `by`, firing every timer due on the way.
fn elapse<M>(
    walk: &mut Walk<'_, M>,
    clock: &mut Clockwork<M::Event>,
    by: Duration,
) -> Result<(), Violation>
where
    M: StateMachine + Clone + PartialEq + fmt::Debug + 'static,
    M::Event: Clone + fmt::Debug + 'static,
{
    let until = clock.now.saturating_add(timer::millis_ceil(by));
    walk.steps.push(Step {
        from: M::TABLE.state_name(walk.machine.state()),
        event: "<time passes>",
        event_value: format!("{by:?}"),
        outcome: String::new(),
    });
    for _ in 0..MAX_FIRINGS_PER_ELAPSE {
        let Some((kind, instance)) = clock.timers.due(until).into_iter().next() else {
            break;
        };
        let Some(armed) = clock.timers.consume(&kind, instance) else {
            break;
        };
        clock.now = clock.now.max(armed.deadline);
        let state = walk.machine.state();
        if clock.gone.contains(&instance) {
            return Err(walk.fail(
                Property::TimeoutsFireOnlyWhileArmed,
                format!("the {kind} fired after it was cancelled or replaced"),
            ));
        }
        let event = match kind {
            TimerKind::State => {
                if clock.armed_in.get(&instance) != Some(&state) {
                    return Err(walk.fail(
                        Property::TimeoutsFireOnlyWhileArmed,
                        format!(
                            "a state timeout armed in `{}` fired in `{}`",
                            clock
                                .armed_in
                                .get(&instance)
                                .map_or("<unknown>", |s| M::TABLE.state_name(*s)),
                            M::TABLE.state_name(state)
                        ),
                    ));
                }
                match M::timeout_event(state) {
                    Some(event) => event,
                    None => {
                        return Err(walk.fail(
                            Property::TimeoutsFireOnlyWhileArmed,
                            format!(
                                "a state timeout fired in `{}`, which declares none",
                                M::TABLE.state_name(state)
                            ),
                        ))
                    }
                }
            }
            TimerKind::Superstate(ref name) => {
                if !M::TABLE.is_in(state, name) {
                    return Err(walk.fail(
                        Property::TimeoutsFireOnlyWhileArmed,
                        format!(
                            "the {kind} fired in `{}`, which is not inside it",
                            M::TABLE.state_name(state)
                        ),
                    ));
                }
                match M::TABLE
                    .superstate_index(name)
                    .and_then(M::superstate_timeout_event)
                {
                    Some(event) => event,
                    None => {
                        return Err(walk.fail(
                            Property::TimeoutsFireOnlyWhileArmed,
                            format!("the {kind} fired, and the table declares no such timeout"),
                        ))
                    }
                }
            }
            _ => match armed.event {
                Some(event) => event,
                None => break,
            },
        };
        walk.run.fired += 1;
        clock.fired.push((kind.clone(), clock.now));
        let fired = Some((kind, instance));
        if let Some(t) = walk.event(event)? {
            let requests = walk.effects.take_timers();
            settle(walk, clock, &t, fired, requests)?;
        }
    }
    clock.now = clock.now.max(until);
    Ok(())
}

/// Applies the timer rules for an accepted transition and checks them against what must have
/// happened: only what the transition cancels disappears, and it does disappear.
fn settle<M>(
    walk: &mut Walk<'_, M>,
    clock: &mut Clockwork<M::Event>,
    t: &Transition,
    fired: Option<(TimerKind, u64)>,
    requests: Vec<TimerRequest>,
) -> Result<(), Violation>
where
    M: StateMachine + Clone + PartialEq + fmt::Debug + 'static,
    M::Event: Clone + fmt::Debug + 'static,
{
    let before: Vec<(TimerKind, u64)> = clock
        .timers
        .armed
        .iter()
        .map(|a| (a.kind.clone(), a.instance))
        .collect();
    // What the rules say this transition cancels, from the transition and the requests alone.
    let table = M::TABLE;
    let mut cancels: HashSet<TimerKind> = HashSet::from([TimerKind::Event]);
    if !t.is_self_transition() {
        cancels.insert(TimerKind::State);
    }
    // Leaving a superstate cancels its timeout (re-entering it arms a new one).
    for left in table.crossed(t.from(), t.event(), t.to()).0 {
        if let Some(s) = table.superstates().get(left) {
            cancels.insert(TimerKind::Superstate(s.name().into()));
        }
    }
    // Entering a terminal state cancels everything.
    let terminal = table.state(t.to()).is_some_and(|s| s.is_terminal());
    for r in &requests {
        cancels.insert(r.kind());
    }
    let mut next = clock.timers.clone();
    let result = timer::on_accepted(
        &mut next,
        M::TABLE,
        t,
        requests,
        clock.now,
        DEFAULT_MAX_TIMERS,
        |kind, event| {
            event
                .downcast::<M::Event>()
                .map_err(|e| TimerError::WrongEventType {
                    timer: kind.clone(),
                    expected: std::any::type_name::<M::Event>(),
                    found: e.type_name(),
                })
        },
    );
    if let Err(e) = result {
        return Err(walk.fail(Property::TimerRequestsHold, format!("after {t:?}: {e}")));
    }
    for (kind, instance) in before {
        if fired.as_ref().is_some_and(|(_, i)| *i == instance) {
            continue;
        }
        let still = next.is_armed(&kind, instance);
        if !still && !cancels.contains(&kind) && !terminal {
            return Err(walk.fail(
                Property::TimeoutsFireOnlyWhileArmed,
                format!("after {t:?}, the {kind} disappeared though nothing cancelled it"),
            ));
        }
        if still && (cancels.contains(&kind) || terminal) {
            return Err(walk.fail(
                Property::TimeoutsFireOnlyWhileArmed,
                format!("after {t:?}, the {kind} is still armed though the transition cancels it"),
            ));
        }
        if !still {
            clock.gone.insert(instance);
        }
    }
    for a in &next.armed {
        if a.kind == TimerKind::State && !clock.armed_in.contains_key(&a.instance) {
            clock.armed_in.insert(a.instance, t.to());
        }
    }
    clock.timers = next;
    Ok(())
}

#[cfg(feature = "proptest")]
mod with_proptest {
    use std::fmt;
    use std::time::Duration;

    use proptest::arbitrary::{any, Arbitrary};
    use proptest::strategy::{Just, Strategy};

    use super::Input;
    use crate::testing::{Checker, Coverage, Failure};
    use crate::StateMachine;

    impl<M> Checker<M>
    where
        M: StateMachine + Clone + PartialEq + fmt::Debug + 'static,
        M::Event: Clone + fmt::Debug + 'static,
    {
        /// Like [`Checker::run`], with "time passes" steps among the events: each lets up to
        /// twice the longest declared state or superstate timeout pass (at least a second); with
        /// [`Checker::restores`], restarts among them too.
        pub fn run_timed(&self, start: M) -> Result<Coverage, Failure>
        where
            M::Event: Arbitrary,
        {
            let table = M::TABLE;
            let longest = table
                .states()
                .iter()
                .filter_map(|s| s.state_timeout())
                .chain(table.superstates().iter().filter_map(|s| s.state_timeout()))
                .map(|t| t.after_ms)
                .max()
                .unwrap_or(0);
            let max_ms = (2 * longest).max(1000);
            // Restarts only where the checker restores (a sequence with one fails otherwise).
            let restarts = u32::from(self.restore.is_some());
            let inputs = proptest::prop_oneof![
                3 => any::<M::Event>().prop_map(Input::Event),
                1 => (1..=max_ms).prop_map(|ms| Input::Elapse(Duration::from_millis(ms))),
                restarts => Just(Input::Restore),
            ];
            self.run_inputs(Just(start), inputs, |checker, start, inputs| {
                checker.check_timed(start, inputs)
            })
        }
    }
}
