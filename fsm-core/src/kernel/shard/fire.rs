//! A shard's timers: arming them after a transition, restoring them from a snapshot, and
//! firing the due ones as commands through the normal path.

use std::time::Instant;

use super::core::{Core, Rules, SlotTimers};
use super::Shard;
use crate::effects::Effects;
use crate::kernel::inbox::{Cmd, Fire};
use crate::kernel::outcome::{CommandError, QuarantineCause};
use crate::kernel::request::Request;
use crate::kernel::Durable;
use crate::kernel::SectionError;
use crate::machine::Transition;
use crate::store::{MachineId, Section, Snapshot, SnapshotStore};
use crate::timer::{self, TimerError, TimerKind, TimerRequest, Timers};

/// How long a machine whose timers came due but that could not be loaded waits before the
/// shard tries again, in milliseconds.
const RETRY_LOAD_MS: u64 = 1000;

/// Applies the rules of [`crate::timer`] for an accepted transition to a machine's timers, in
/// place, or says why the transition may not be applied (then they are as they were). A firing
/// is consumed by the caller before.
pub(super) fn after_transition<M: Durable>(
    rules: &Rules<M>,
    scratch: &mut Vec<timer::Step<Box<[u8]>>>,
    timers: &mut Option<Box<SlotTimers>>,
    transition: &Transition,
    requests: std::vec::Drain<'_, TimerRequest>,
    now: Instant,
) -> Result<(), TimerError> {
    let enters_timeout = !transition.is_self_transition()
        && (M::TABLE
            .state(transition.to())
            .is_some_and(|s| s.state_timeout().is_some())
            || enters_superstate_timeout(M::TABLE, transition));
    if timers.is_none() && requests.len() == 0 && !enters_timeout {
        // The common case of a machine without timers: nothing to do, nothing allocated.
        return Ok(());
    }
    let codec = rules.timer_events.as_ref();
    let slot = timers.get_or_insert_with(Box::default);
    let result = timer::on_accepted_in(
        scratch,
        &mut slot.armed,
        M::TABLE,
        transition,
        requests,
        rules.time.ceil(now),
        rules.max_timers,
        |kind, event| {
            let event = event
                .downcast::<M::Event>()
                .map_err(|e| TimerError::WrongEventType {
                    timer: kind.clone(),
                    expected: std::any::type_name::<M::Event>(),
                    found: e.type_name(),
                })?;
            let codec = codec.ok_or_else(|| TimerError::EventsNotStorable {
                timer: kind.clone(),
            })?;
            (codec.encode)(&event)
                .map(Vec::into_boxed_slice)
                .map_err(|message| TimerError::Unencodable {
                    timer: kind.clone(),
                    message,
                })
        },
    );
    // A machine holds few timers: no room kept for more (a new Vec would keep four).
    slot.armed.armed.shrink_to_fit();
    if slot.armed.is_empty() && slot.firing.is_empty() {
        *timers = None;
    }
    result
}

/// [`after_transition`] for each transition of a chain (a command's, then those of the events
/// it raised), in order, each with the timer requests its step made (`chain` holds, per step,
/// how many requests the buffer held when it ended). All or nothing: on an error the timers
/// are as they were.
pub(super) fn after_chain<M: Durable>(
    rules: &Rules<M>,
    scratch: &mut Vec<timer::Step<Box<[u8]>>>,
    timers: &mut Option<Box<SlotTimers>>,
    chain: &[(Transition, usize)],
    effects: &mut Effects<M::Effect>,
    now: Instant,
) -> Result<(), TimerError> {
    let saved = timers.clone();
    let mut taken = 0;
    for (transition, end) in chain {
        let requests = effects.drain_timers_front(end.saturating_sub(taken));
        taken = *end;
        if let Err(e) = after_transition::<M>(rules, scratch, timers, transition, requests, now) {
            *timers = saved;
            return Err(e);
        }
    }
    Ok(())
}

/// Whether `transition` brings the machine into a superstate that declares a timeout.
fn enters_superstate_timeout(table: &crate::Table, transition: &Transition) -> bool {
    !table.superstates().is_empty()
        && table.ancestors(transition.to()).any(|a| {
            table
                .superstates()
                .get(a)
                .is_some_and(|s| s.state_timeout().is_some())
                && !table.ancestors(transition.from()).any(|b| b == a)
        })
}

/// The timers of a machine the store holds nothing for: it starts as if it had just entered
/// its initial state, so that state's declared timeout is armed, and those of the
/// superstates around it.
pub(super) fn initial<M: Durable>(rules: &Rules<M>, now: Instant) -> Option<Box<SlotTimers>> {
    let mut armed = Timers::default();
    let supers = timer::arm_entering_superstates(
        &mut armed,
        M::TABLE,
        M::TABLE.initial(),
        rules.time.ceil(now),
    );
    let Some(declared) = M::TABLE.state(M::TABLE.initial())?.state_timeout() else {
        return (supers > 0).then(|| {
            Box::new(SlotTimers {
                armed,
                ..SlotTimers::default()
            })
        });
    };
    let enter = Transition::new(
        M::TABLE,
        M::TABLE.initial(),
        declared.event,
        M::TABLE.initial(),
    );
    // Entering the initial state (a self-transition would not arm, so restart it).
    timer::on_accepted(
        &mut armed,
        M::TABLE,
        &enter,
        [TimerRequest::RestartStateTimeout],
        rules.time.ceil(now),
        usize::MAX,
        |_, _| {
            Err(TimerError::EventsNotStorable {
                timer: TimerKind::State,
            })
        },
    )
    .ok()?;
    Some(Box::new(SlotTimers {
        armed,
        ..SlotTimers::default()
    }))
}

/// The timers stored in `snapshot` for `machine`, moved onto this process's clock; an error
/// (the section does not fit) quarantines the machine.
pub(super) fn restore<M: Durable>(
    rules: &Rules<M>,
    snapshot: &Snapshot,
    machine: &M,
    now: Instant,
) -> Result<Option<Box<SlotTimers>>, SectionError> {
    let Some(bytes) = snapshot.timers() else {
        return Ok(None);
    };
    let mut armed = timer::decode_section(bytes, M::TABLE, machine.state())?;
    let invalid = |problem: String| SectionError::invalid(Section::Timers, problem);
    for a in &armed.armed {
        let Some(event) = &a.event else { continue };
        let Some(codec) = &rules.timer_events else {
            return Err(invalid(format!(
                "the {} carries an event, and this kernel stores none: derive Serialize and Deserialize on the event enum (a hand-written Event impl also needs KernelBuilder::timer_events())",
                a.kind
            )));
        };
        (codec.decode)(event)
            .map_err(|e| invalid(format!("the event of the {} does not decode: {e}", a.kind)))?;
    }
    armed.rebase(rules.time.floor(now));
    Ok((!armed.is_empty()).then(|| {
        Box::new(SlotTimers {
            armed,
            ..SlotTimers::default()
        })
    }))
}

impl<M: Durable> Shard<M> {
    /// Fires every timer due at `now`: each becomes a command at the end of the shard's work,
    /// decided in this batch like any other. Machines evicted from memory are loaded first.
    /// Returns how many fired.
    pub(super) fn fire_due(&mut self, now: Instant, store: &dyn SnapshotStore) -> usize {
        let now_ms = self.core.rules.time.floor(now);
        if self.core.due.next().is_none_or(|next| next > now_ms) {
            return 0;
        }
        let mut fired = 0;
        let mut broken: Vec<(MachineId, String)> = Vec::new();
        for id in self.core.due.take_due(now_ms) {
            if !self.core.slots.contains_key(&id) {
                // Loading indexes the machine's timers (its real first deadline, if this
                // entry was a stale one).
                match self.ensure_loaded(&id, now, store) {
                    Ok(()) => {}
                    Err(CommandError::Unavailable { .. }) => {
                        self.core
                            .due
                            .schedule(&id, now_ms.saturating_add(RETRY_LOAD_MS));
                        continue;
                    }
                    // Quarantined, owned by another node, or not startable: not fired here.
                    Err(_) => continue,
                }
            }
            match self.core.fire(&id, now_ms) {
                Ok(n) => fired += n,
                Err(message) => broken.push((id, message)),
            }
        }
        for (id, message) in broken {
            let cause = QuarantineCause::Section(SectionError::invalid(Section::Timers, message));
            let error = self.quarantine(&id, cause);
            self.evict(&id, &error);
        }
        self.inner.quiet.more(self.index, fired);
        fired
    }
}

impl<M: Durable> Core<M> {
    /// Queues a firing for each of machine `id`'s timers due at `now_ms` that has none on its
    /// way, and indexes its next deadline. Returns how many it queued, or why a due timer
    /// cannot fire (the machine is then quarantined by the shell).
    pub(super) fn fire(&mut self, id: &MachineId, now_ms: u64) -> Result<usize, String> {
        let Some(slot) = self.slots.get_mut(id) else {
            return Ok(0);
        };
        if slot
            .outbox
            .as_ref()
            .and_then(|o| o.front())
            .is_some_and(|head| {
                !head.dispatched && head.not_before > 0 && head.not_before <= now_ms
            })
        {
            // Its first owed effect's retry delay passed: ready for its worker again.
            self.kicked.push(id.clone());
        }
        let state = slot.machine.state();
        let Some(timers) = slot.timers.as_mut() else {
            return Ok(0);
        };
        let due: Vec<(TimerKind, u64)> = timers
            .armed
            .due(now_ms)
            .into_iter()
            .filter(|(_, instance)| !timers.firing.contains(instance))
            .collect();
        let mut fired = 0;
        for (kind, instance) in due {
            let event = match &kind {
                TimerKind::State => M::timeout_event(state).ok_or_else(|| {
                    format!(
                        "a state timeout is armed in `{}`, which declares none",
                        M::TABLE.state_name(state)
                    )
                }),
                TimerKind::Superstate(name) => M::TABLE
                    .superstate_index(name)
                    .and_then(M::superstate_timeout_event)
                    .ok_or_else(|| {
                        format!("the {kind} is armed, and the table declares no such timeout")
                    }),
                _ => match (
                    timers.armed.get(&kind).and_then(|a| a.event.as_ref()),
                    &self.rules.timer_events,
                ) {
                    (Some(bytes), Some(codec)) => (codec.decode)(bytes)
                        .map_err(|e| format!("the event of the {kind} does not decode: {e}")),
                    _ => Err(format!("the {kind} has no event this kernel can decode")),
                },
            };
            let event = event?;
            timers.firing.push(instance);
            self.work.push_back(Cmd {
                id: id.clone(),
                request: Request::new(event),
                enqueued: self.rules.stamp(),
                reply: None,
                fire: Some(Box::new(Fire { kind, instance })),
                settles: None,
            });
            fired += 1;
        }
        // Every entry due now was taken: index the machine's next deadline.
        if timers.indexed.is_some_and(|at| at <= now_ms) {
            timers.indexed = None;
        }
        timers.reindex(id, &mut self.due);
        Ok(fired)
    }

    /// Rebuilds the index when stale entries (re-armed timers) dominate it; run after every
    /// batch, so a machine re-armed again and again before its deadline (a pacemaker's pulse)
    /// does not grow it without bound.
    pub(super) fn compact_index(&mut self) {
        if self.due.wants_rebuild() {
            let slots = &self.slots;
            self.due.rebuild(|id| slots.get(id).map(|s| s.first_due()));
            // What the rebuild kept for each resident machine is its first deadline (a
            // timer's or a retry's): the entry its timers now have in the index.
            for slot in self.slots.values_mut() {
                let first = slot.first_due();
                if let Some(t) = slot.timers.as_mut() {
                    t.indexed = first;
                }
            }
        }
    }
}
