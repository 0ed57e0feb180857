//! gen_statem's timer rules, applied to a machine's armed timers after an accepted transition
//! (see the table in [`crate::timer`]), and the armed timers themselves.

use std::time::Duration;

use super::{check_after, millis_ceil, TimerError, TimerEvent, TimerKind, TimerRequest};
use crate::machine::Transition;
use crate::table::Table;

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

    /// The same timers with each event converted by `f`; the first conversion that fails
    /// is the answer.
    pub(crate) fn try_map<Q, E>(
        &self,
        mut f: impl FnMut(&TimerKind, &P) -> Result<Q, E>,
    ) -> Result<Timers<Q>, E> {
        let mut armed = Vec::with_capacity(self.armed.len());
        for a in &self.armed {
            armed.push(Armed {
                kind: a.kind.clone(),
                instance: a.instance,
                deadline: a.deadline,
                after: a.after,
                event: a.event.as_ref().map(|e| f(&a.kind, e)).transpose()?,
            });
        }
        Ok(Timers {
            next: self.next,
            armed,
        })
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

    pub(super) fn cancel(&mut self, kind: &TimerKind) {
        // At most one arming per kind.
        if let Some(at) = self.armed.iter().position(|a| &a.kind == kind) {
            self.armed.swap_remove(at);
        }
    }

    /// Arms `kind` for `after` milliseconds from `now` (checked by the caller not to
    /// overflow), replacing a running arming of it.
    pub(super) fn arm(&mut self, kind: TimerKind, after: u64, now: u64, event: Option<P>) {
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

/// The cancels and armings of superstate timeouts for a transition: those of the superstates
/// it leaves are cancelled, those of the superstates it enters armed (a transition that
/// re-enters a superstate does both).
fn superstate_steps<P>(
    steps: &mut Vec<Step<P>>,
    table: &Table,
    transition: &Transition,
    deadline: &impl Fn(&TimerKind, u64) -> Result<(), TimerError>,
) -> Result<(), TimerError> {
    let (left, entered) = table.crossed(transition.from(), transition.event(), transition.to());
    for left in left {
        if let Some(s) = table.superstates().get(left) {
            if s.state_timeout().is_some() {
                steps.push(Step::Cancel(TimerKind::Superstate(s.name().into())));
            }
        }
    }
    for entered in entered {
        let Some(s) = table.superstates().get(entered) else {
            continue;
        };
        if let Some(t) = s.state_timeout() {
            let kind = TimerKind::Superstate(s.name().into());
            deadline(&kind, t.after_ms)?;
            steps.push(Step::Arm(kind, t.after_ms, None));
        }
    }
    Ok(())
}

/// Arms the superstate timeouts of a machine that starts in `state` (as if it had just
/// entered it): one per superstate around it that declares one. Returns how many.
pub(crate) fn arm_entering_superstates<P>(
    timers: &mut Timers<P>,
    table: &Table,
    state: crate::table::StateId,
    now: u64,
) -> usize {
    let mut n = 0;
    for a in table.ancestors(state) {
        let Some(s) = table.superstates().get(a) else {
            continue;
        };
        if let Some(t) = s.state_timeout() {
            timers.arm(
                TimerKind::Superstate(s.name().into()),
                t.after_ms,
                now,
                None,
            );
            n += 1;
        }
    }
    n
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
    // A superstate's timeout follows the superstate's exits and entries: cancelled by a
    // transition that leaves it, armed by one that enters it (both by one that leaves it and
    // enters it again); moves between the states inside change nothing.
    if !table.superstates().is_empty() {
        superstate_steps(steps, table, transition, &deadline)?;
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
    // A terminal state takes no event: nothing armed could ever fire into it.
    if table
        .state(transition.to())
        .is_some_and(|s| s.is_terminal())
    {
        timers.armed.clear();
    }
    Ok(())
}
