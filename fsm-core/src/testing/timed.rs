//! The property check with time: event sequences with "time passes" steps, timers armed and
//! fired under the kernel's rules, and a model of what must have been cancelled.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use super::{Checker, Property, Run, Step, Violation, Walk};
use crate::table::StateId;
use crate::timer::{self, TimerError, TimerKind, TimerRequest, Timers, DEFAULT_MAX_TIMERS};
use crate::{StateMachine, Transition};

/// One input of a timed sequence: an event, or time passing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<E> {
    /// Apply an event.
    Event(E),
    /// Let time pass: every timer due within it fires, in deadline order.
    Elapse(Duration),
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
}

impl<M> Checker<M>
where
    M: StateMachine + Clone + PartialEq + fmt::Debug + 'static,
    M::Event: Clone + fmt::Debug + 'static,
{
    /// Checks one timed sequence from `start` (which is taken as just entered, so its
    /// declared timeout is armed). Every property of the [module](super) holds at every step,
    /// plus [`Property::TimerRequestsHold`] and [`Property::TimeoutsFireOnlyWhileArmed`].
    pub fn check_timed(
        &self,
        start: &M,
        inputs: impl IntoIterator<Item = Input<M::Event>>,
    ) -> Result<Run, Violation> {
        let mut walk = Walk::new(self, start)?;
        let mut clock = Clockwork {
            timers: Timers::default(),
            now: 0,
            armed_in: HashMap::new(),
            gone: HashSet::new(),
        };
        // The superstates the machine starts inside arm their timeouts, as in the kernel.
        timer::arm_entering_superstates(&mut clock.timers, M::TABLE, start.state(), 0);
        if let Some(declared) = M::TABLE
            .state(start.state())
            .and_then(|s| s.state_timeout())
        {
            let entered = Transition::new(M::TABLE, start.state(), declared.event, start.state());
            settle(
                &mut walk,
                &mut clock,
                &entered,
                None,
                vec![TimerRequest::RestartStateTimeout],
            )?;
        }
        for input in inputs {
            match input {
                Input::Event(event) => {
                    if let Some(t) = walk.event(event)? {
                        let requests = walk.effects.take_timers();
                        settle(&mut walk, &mut clock, &t, None, requests)?;
                    }
                }
                Input::Elapse(by) => elapse(&mut walk, &mut clock, by)?,
            }
        }
        Ok(walk.run)
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
    let mut cancels: HashSet<TimerKind> = HashSet::from([TimerKind::Event]);
    if !t.is_self_transition() {
        cancels.insert(TimerKind::State);
        // Leaving a superstate cancels its timeout.
        let table = M::TABLE;
        for left in table.ancestors(t.from()) {
            if !table.ancestors(t.to()).any(|a| a == left) {
                if let Some(s) = table.superstates().get(left) {
                    cancels.insert(TimerKind::Superstate(s.name().into()));
                }
            }
        }
    }
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
        if !still && !cancels.contains(&kind) {
            return Err(walk.fail(
                Property::TimeoutsFireOnlyWhileArmed,
                format!("after {t:?}, the {kind} disappeared though nothing cancelled it"),
            ));
        }
        if still && cancels.contains(&kind) {
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
        /// twice the longest declared state timeout pass (at least a second).
        pub fn run_timed(&self, start: M) -> Result<Coverage, Failure>
        where
            M::Event: Arbitrary,
        {
            let longest = M::TABLE
                .states()
                .iter()
                .filter_map(|s| s.state_timeout())
                .map(|t| t.after_ms)
                .max()
                .unwrap_or(0);
            let max_ms = (2 * longest).max(1000);
            let inputs = proptest::prop_oneof![
                3 => any::<M::Event>().prop_map(Input::Event),
                1 => (1..=max_ms).prop_map(|ms| Input::Elapse(Duration::from_millis(ms))),
            ];
            self.run_inputs(Just(start), inputs, |checker, start, inputs| {
                checker.check_timed(start, inputs)
            })
        }
    }
}
