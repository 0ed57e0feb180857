//! The transition table as `const` data: states, events, transitions, initial and terminal
//! states, and each state's policy for events it has no transition for.
//!
//! `#[derive(StateMachine)]` writes one [`Table`] per machine into
//! [`StateMachine::TABLE`](crate::StateMachine::TABLE); everything else (dispatch checks,
//! diagrams, reachability queries, the queue's defer/dump/delegate decisions) reads it.

use std::collections::VecDeque;
use std::fmt;

/// Index of a state in its machine's [`Table`] (declaration order of the enum's variants).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateId(u16);

impl StateId {
    /// The state with the given declaration index.
    pub const fn new(index: u16) -> Self {
        StateId(index)
    }

    /// The declaration index, usable to index [`Table::states`].
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// Index of an event in its event enum (declaration order of the enum's variants).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(u16);

impl EventId {
    /// The event with the given declaration index.
    pub const fn new(index: u16) -> Self {
        EventId(index)
    }

    /// The declaration index, usable to index [`Table::events`].
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// What a state does with an event it has no transition for.
///
/// Declared per state with `defer(..)`, `dump(..)` and `delegate(..)`; the default is
/// [`Policy::Reject`]. Runtime dispatch ([`StateMachine::apply`](crate::StateMachine::apply))
/// always rejects such an event; the command queue gives the other policies their meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Answer the submitter with a typed rejection (the default).
    Reject,
    /// Postpone the event and replay it, in arrival order, after the next real state change.
    Defer,
    /// Drop the event, counted and reported.
    Dump,
    /// Hand the event to an overflow sink (another queue, a dead-letter handler).
    Delegate,
}

/// One declared transition: in state `from`, event `event` leads to state `to`.
///
/// In a machine with superstates the table lists transitions per (leaf) state: one declared
/// on a superstate, or on the machine for every state, appears once for each state that
/// inherits it, and [`TransitionMeta::declared_on`] says where it was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TransitionMeta {
    /// The state the transition leaves.
    pub from: StateId,
    /// The event that triggers it.
    pub event: EventId,
    /// The state it enters (equal to `from` for a self-transition).
    pub to: StateId,
    /// Where it was declared: `u16::MAX` on the state itself, `u16::MAX - 1` on the
    /// machine (from any state), else the index of a superstate.
    declared: u16,
    /// The outermost superstate it leaves and enters again though both states are inside
    /// it; `u16::MAX` for none.
    reenters: u16,
}

/// Where a transition was declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeclaredOn {
    /// On the state it leaves.
    State,
    /// On a superstate (its index in [`Table::superstates`]); the state inherits it.
    Superstate(usize),
    /// On the machine itself: from every state that is not terminal.
    AnyState,
}

const ON_STATE: u16 = u16::MAX;
const ON_ANY: u16 = u16::MAX - 1;
const NO_SUPERSTATE: u16 = u16::MAX;

impl TransitionMeta {
    /// A transition from `from` on `event` to `to`.
    pub const fn new(from: u16, event: u16, to: u16) -> Self {
        TransitionMeta {
            from: StateId(from),
            event: EventId(event),
            to: StateId(to),
            declared: ON_STATE,
            reenters: NO_SUPERSTATE,
        }
    }

    /// The same transition, inherited from superstate `superstate` (an index in
    /// [`Table::superstates`]).
    pub const fn inherited_from(mut self, superstate: u16) -> Self {
        self.declared = superstate;
        self
    }

    /// The same transition, declared on the machine for every state.
    pub const fn from_any_state(mut self) -> Self {
        self.declared = ON_ANY;
        self
    }

    /// The same transition, leaving superstate `superstate` (an index in
    /// [`Table::superstates`]) and every superstate inside it around the source, and entering
    /// them again, though the source and the target are both inside it: an external
    /// transition declared on that superstate into itself or a state inside it (SCXML's
    /// external transition; the derive records it). Its exit and enter hooks run, and its
    /// timeout starts again.
    pub const fn reentering(mut self, superstate: u16) -> Self {
        self.reenters = superstate;
        self
    }

    /// The outermost superstate the transition leaves and enters again though both its
    /// states are inside it (see [`TransitionMeta::reentering`]); `None` when it crosses only
    /// the superstates that are not around both.
    pub const fn reenters(&self) -> Option<usize> {
        match self.reenters {
            NO_SUPERSTATE => None,
            i => Some(i as usize),
        }
    }

    /// Where the transition was declared.
    pub const fn declared_on(&self) -> DeclaredOn {
        match self.declared {
            ON_STATE => DeclaredOn::State,
            ON_ANY => DeclaredOn::AnyState,
            i => DeclaredOn::Superstate(i as usize),
        }
    }
}

/// A superstate: a named group of states (and of other superstates) whose transitions and
/// policies every state inside inherits, unless it declares its own for the same event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuperstateMeta {
    name: &'static str,
    parent: Option<u16>,
    initial: StateId,
    timeout: Option<StateTimeout>,
}

impl SuperstateMeta {
    /// A superstate at the top level, whose transitions enter state `initial` (the leaf its
    /// initial substates lead to).
    pub const fn new(name: &'static str, initial: u16) -> Self {
        SuperstateMeta {
            name,
            parent: None,
            initial: StateId(initial),
            timeout: None,
        }
    }

    /// Declares the superstate's timeout: `event` fires `after_ms` milliseconds after the
    /// machine came into the superstate, unless it left the superstate first (moves between
    /// the states inside do not cancel it).
    pub const fn timeout(mut self, after_ms: u64, event: u16) -> Self {
        self.timeout = Some(StateTimeout {
            after_ms,
            event: EventId(event),
        });
        self
    }

    /// The superstate's declared timeout, if any.
    pub const fn state_timeout(&self) -> Option<StateTimeout> {
        self.timeout
    }

    /// The same, inside superstate `parent` (an index in [`Table::superstates`]).
    pub const fn within(mut self, parent: u16) -> Self {
        self.parent = Some(parent);
        self
    }

    /// Its name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The superstate it is inside, if any (an index in [`Table::superstates`]).
    pub const fn parent(&self) -> Option<usize> {
        match self.parent {
            Some(p) => Some(p as usize),
            None => None,
        }
    }

    /// The state a transition into it enters.
    pub const fn initial(&self) -> StateId {
        self.initial
    }
}

/// Everything the table knows about one state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateMeta {
    name: &'static str,
    terminal: bool,
    validated: bool,
    policies: &'static [(EventId, Policy)],
    otherwise: Policy,
    timeout: Option<StateTimeout>,
    parent: Option<u16>,
}

/// A state's declared timeout (`state_timeout(ms = 1200 => Missed)`): armed whenever a
/// transition enters the state, cancelled by any transition that leaves it, firing `event`
/// after `after_ms` milliseconds (see [`crate::timer`] for the rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateTimeout {
    /// Milliseconds from entering the state until the timeout fires.
    pub after_ms: u64,
    /// The event it fires (a variant without fields, with a transition from the state).
    pub event: EventId,
}

impl StateMeta {
    /// A non-terminal state without invariant that rejects events it has no transition for.
    pub const fn new(name: &'static str) -> Self {
        StateMeta {
            name,
            terminal: false,
            validated: false,
            policies: &[],
            otherwise: Policy::Reject,
            timeout: None,
            parent: None,
        }
    }

    /// Places the state inside superstate `superstate` (an index in [`Table::superstates`]).
    pub const fn within(mut self, superstate: u16) -> Self {
        self.parent = Some(superstate);
        self
    }

    /// The superstate the state is directly inside, if any (an index in
    /// [`Table::superstates`]).
    pub const fn parent(&self) -> Option<usize> {
        match self.parent {
            Some(p) => Some(p as usize),
            None => None,
        }
    }

    /// Declares the state's timeout: `event` fires `after_ms` milliseconds after the state was
    /// entered, unless a transition left it first.
    pub const fn timeout(mut self, after_ms: u64, event: u16) -> Self {
        self.timeout = Some(StateTimeout {
            after_ms,
            event: EventId(event),
        });
        self
    }

    /// The state's declared timeout, if any.
    pub const fn state_timeout(&self) -> Option<StateTimeout> {
        self.timeout
    }

    /// Marks the state terminal: it accepts no event.
    pub const fn terminal(mut self) -> Self {
        self.terminal = true;
        self
    }

    /// Records that the state has an invariant (`validate = path`).
    pub const fn validated(mut self) -> Self {
        self.validated = true;
        self
    }

    /// Sets the policy for the listed events that have no transition here.
    pub const fn policies(mut self, policies: &'static [(EventId, Policy)]) -> Self {
        self.policies = policies;
        self
    }

    /// Sets the policy for every other event that has no transition here.
    pub const fn otherwise(mut self, policy: Policy) -> Self {
        self.otherwise = policy;
        self
    }

    /// The state's name (the enum variant's name).
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the state is terminal.
    pub const fn is_terminal(&self) -> bool {
        self.terminal
    }

    /// Whether the state has an invariant that runs after every transition into it.
    pub const fn is_validated(&self) -> bool {
        self.validated
    }

    /// Policies declared for specific events.
    pub const fn event_policies(&self) -> &'static [(EventId, Policy)] {
        self.policies
    }

    /// The policy for unhandled events not listed in [`StateMeta::event_policies`].
    pub const fn otherwise_policy(&self) -> Policy {
        self.otherwise
    }
}

/// The complete transition table of one machine.
///
/// Built as `const` data by the derive (or by hand with the `const fn` constructors). All
/// lookups are total: an out-of-range id yields `None` or a placeholder name, never a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    machine: &'static str,
    states: &'static [StateMeta],
    events: &'static [&'static str],
    transitions: &'static [TransitionMeta],
    initial: StateId,
    superstates: &'static [SuperstateMeta],
}

/// Name shown for an id that is out of range of its table (only reachable through a
/// hand-built, inconsistent table).
const UNKNOWN: &str = "<unknown>";

impl Table {
    /// Assembles a table. `transitions` may be in any order; `initial` indexes `states`.
    pub const fn new(
        machine: &'static str,
        states: &'static [StateMeta],
        events: &'static [&'static str],
        transitions: &'static [TransitionMeta],
        initial: u16,
    ) -> Self {
        Table {
            machine,
            states,
            events,
            transitions,
            initial: StateId(initial),
            superstates: &[],
        }
    }

    /// The same table with superstates (each state's [`StateMeta::within`] and each
    /// superstate's [`SuperstateMeta::within`] index into them).
    pub const fn with_superstates(mut self, superstates: &'static [SuperstateMeta]) -> Self {
        self.superstates = superstates;
        self
    }

    /// The superstates, in declaration order (empty for a flat machine).
    pub const fn superstates(&self) -> &'static [SuperstateMeta] {
        self.superstates
    }

    /// Looks a superstate up by name.
    pub fn superstate_index(&self, name: &str) -> Option<usize> {
        self.superstates.iter().position(|s| s.name == name)
    }

    /// The superstates `state` is inside, innermost first (a cycle in a hand-built table
    /// ends the walk).
    pub fn ancestors(&self, state: StateId) -> impl Iterator<Item = usize> + '_ {
        let mut next = self.state(state).and_then(StateMeta::parent);
        let mut steps = 0;
        std::iter::from_fn(move || {
            let here = next?;
            steps += 1;
            if steps > self.superstates.len() {
                return None;
            }
            next = self.superstates.get(here).and_then(SuperstateMeta::parent);
            Some(here)
        })
    }

    /// The innermost superstate that the transition from `from` on `event` to `to` stays
    /// inside (neither left nor entered again), or `None` when it stays inside none: the
    /// superstates around `from` below it are left, innermost first, and those around `to`
    /// below it entered. That is the innermost superstate around both states, unless the
    /// transition re-enters one of them ([`TransitionMeta::reenters`]).
    pub fn common_superstate(&self, from: StateId, event: EventId, to: StateId) -> Option<usize> {
        let reenters = self
            .transitions
            .iter()
            .find(|t| t.from == from && t.event == event)
            .and_then(TransitionMeta::reenters);
        match reenters {
            Some(outer) => self.superstates.get(outer).and_then(SuperstateMeta::parent),
            None => self
                .ancestors(from)
                .find(|&a| self.ancestors(to).any(|b| b == a)),
        }
    }

    /// The superstates a transition from `from` on `event` to `to` leaves and those it enters,
    /// each innermost first: see [`Table::common_superstate`].
    pub fn crossed(
        &self,
        from: StateId,
        event: EventId,
        to: StateId,
    ) -> (
        impl Iterator<Item = usize> + '_,
        impl Iterator<Item = usize> + '_,
    ) {
        let common = self.common_superstate(from, event, to);
        (
            self.ancestors(from).take_while(move |&a| Some(a) != common),
            self.ancestors(to).take_while(move |&a| Some(a) != common),
        )
    }

    /// Whether `state` is inside the superstate named `superstate`, at any depth.
    pub fn is_in(&self, state: StateId, superstate: &str) -> bool {
        self.superstate_index(superstate)
            .is_some_and(|wanted| self.ancestors(state).any(|s| s == wanted))
    }

    /// The machine's name (the enum's name).
    pub const fn machine(&self) -> &'static str {
        self.machine
    }

    /// All states, in declaration order.
    pub const fn states(&self) -> &'static [StateMeta] {
        self.states
    }

    /// All event names, in declaration order of the event enum.
    pub const fn events(&self) -> &'static [&'static str] {
        self.events
    }

    /// All declared transitions, in declaration order.
    pub const fn transitions(&self) -> &'static [TransitionMeta] {
        self.transitions
    }

    /// The initial state.
    pub const fn initial(&self) -> StateId {
        self.initial
    }

    /// Metadata of one state, or `None` if the id is not in this table.
    pub fn state(&self, state: StateId) -> Option<&'static StateMeta> {
        self.states.get(state.index())
    }

    /// The name of a state (`"<unknown>"` for an id not in this table).
    pub fn state_name(&self, state: StateId) -> &'static str {
        self.state(state).map_or(UNKNOWN, |s| s.name)
    }

    /// The name of an event (`"<unknown>"` for an id not in this table).
    pub fn event_name(&self, event: EventId) -> &'static str {
        self.events.get(event.index()).copied().unwrap_or(UNKNOWN)
    }

    /// Looks a state up by name.
    pub fn state_id(&self, name: &str) -> Option<StateId> {
        self.states
            .iter()
            .position(|s| s.name == name)
            .map(|i| StateId(i as u16))
    }

    /// Looks an event up by name.
    pub fn event_id(&self, name: &str) -> Option<EventId> {
        self.events
            .iter()
            .position(|e| *e == name)
            .map(|i| EventId(i as u16))
    }

    /// Whether the state is terminal (unknown ids are not).
    pub fn is_terminal(&self, state: StateId) -> bool {
        self.state(state).is_some_and(|s| s.terminal)
    }

    /// The state that `event` leads to from `state`, if the table declares that transition.
    pub fn target(&self, state: StateId, event: EventId) -> Option<StateId> {
        self.transitions
            .iter()
            .find(|t| t.from == state && t.event == event)
            .map(|t| t.to)
    }

    /// The transitions leaving `state`, in declaration order.
    pub fn transitions_from(&self, state: StateId) -> impl Iterator<Item = TransitionMeta> + '_ {
        self.transitions
            .iter()
            .copied()
            .filter(move |t| t.from == state)
    }

    /// The events `state` has a transition for, in declaration order.
    pub fn accepted_events(&self, state: StateId) -> impl Iterator<Item = EventId> + '_ {
        self.transitions_from(state).map(|t| t.event)
    }

    /// What `state` does with `event` when it has no transition for it. Returns `None` when a
    /// transition exists (the event is handled, no policy applies).
    pub fn policy(&self, state: StateId, event: EventId) -> Option<Policy> {
        if self.target(state, event).is_some() {
            return None;
        }
        let Some(meta) = self.state(state) else {
            return Some(Policy::Reject);
        };
        Some(
            meta.policies
                .iter()
                .find(|(e, _)| *e == event)
                .map_or(meta.otherwise, |(_, p)| *p),
        )
    }

    /// Every state reachable from the initial state (including it), in id order.
    pub fn reachable(&self) -> Vec<StateId> {
        self.reachable_from(self.initial)
    }

    /// Every state reachable from `start` (including it), in id order.
    pub fn reachable_from(&self, start: StateId) -> Vec<StateId> {
        let parents = self.search(start);
        (0..self.states.len())
            .filter(|&i| parents[i].is_some())
            .map(|i| StateId(i as u16))
            .collect()
    }

    /// Whether `target` can be reached from the initial state.
    pub fn is_reachable(&self, target: StateId) -> bool {
        self.path_to(target).is_some()
    }

    /// A shortest path of transitions from the initial state to `target`, or `None` if it is
    /// unreachable. The path to the initial state itself is empty.
    pub fn path_to(&self, target: StateId) -> Option<Vec<TransitionMeta>> {
        self.path_between(self.initial, target)
    }

    /// A shortest path of transitions from `from` to `to`, or `None` if there is none.
    pub fn path_between(&self, from: StateId, to: StateId) -> Option<Vec<TransitionMeta>> {
        let parents = self.search(from);
        let mut step = (*parents.get(to.index())?)?;
        let mut path = Vec::new();
        while let Some(t) = step {
            path.push(t);
            step = parents[t.from.index()].flatten();
        }
        path.reverse();
        Some(path)
    }

    /// Breadth-first search from `start`. `result[s]` is `None` when `s` is unreachable,
    /// `Some(None)` for the start itself, and `Some(Some(t))` when `t` is the last transition
    /// of a shortest path into `s`.
    fn search(&self, start: StateId) -> Vec<Option<Option<TransitionMeta>>> {
        let mut parents = vec![None; self.states.len()];
        if start.index() >= self.states.len() {
            return parents;
        }
        parents[start.index()] = Some(None);
        let mut queue = VecDeque::from([start]);
        while let Some(s) = queue.pop_front() {
            for t in self.transitions_from(s) {
                if let Some(slot) = parents.get_mut(t.to.index()) {
                    if slot.is_none() {
                        *slot = Some(Some(t));
                        queue.push_back(t.to);
                    }
                }
            }
        }
        parents
    }

    /// Checks a table's internal consistency: every id in range, at most one transition per
    /// (state, event) pair, no transition out of a terminal state, no policy for an event the
    /// state handles. The derive guarantees all of this at compile time; use this on tables
    /// written by hand.
    pub fn verify(&self) -> Result<(), Vec<TableError>> {
        let mut errors = Vec::new();
        let n_states = self.states.len();
        let n_events = self.events.len();
        if self.initial.index() >= n_states {
            errors.push(TableError::StateOutOfRange(self.initial));
        }
        for (i, t) in self.transitions.iter().enumerate() {
            for s in [t.from, t.to] {
                if s.index() >= n_states {
                    errors.push(TableError::StateOutOfRange(s));
                }
            }
            if t.event.index() >= n_events {
                errors.push(TableError::EventOutOfRange(t.event));
            }
            if self.transitions[..i]
                .iter()
                .any(|u| u.from == t.from && u.event == t.event)
            {
                errors.push(TableError::DuplicateTransition {
                    state: t.from,
                    event: t.event,
                });
            }
            if self.is_terminal(t.from) {
                errors.push(TableError::TransitionFromTerminal(*t));
            }
            // A superstate re-entered is one around both states.
            if let Some(outer) = t.reenters() {
                let around = |s: StateId| self.ancestors(s).any(|a| a == outer);
                if !(around(t.from) && around(t.to)) {
                    errors.push(TableError::BadReentry(*t));
                }
            }
        }
        for (i, s) in self.states.iter().enumerate() {
            let id = StateId(i as u16);
            for (e, _) in s.policies {
                if e.index() >= n_events {
                    errors.push(TableError::EventOutOfRange(*e));
                } else if self.target(id, *e).is_some() {
                    errors.push(TableError::PolicyForHandledEvent {
                        state: id,
                        event: *e,
                    });
                }
            }
            if s.parent().is_some_and(|p| p >= self.superstates.len()) {
                errors.push(TableError::BadSuperstate {
                    superstate: s.parent().unwrap_or(0),
                });
            }
        }
        for (i, sup) in self.superstates.iter().enumerate() {
            let parent_out = sup.parent().is_some_and(|p| p >= self.superstates.len());
            let initial_out = sup.initial.index() >= n_states;
            // A chain of parents longer than the superstates is a cycle.
            let mut next = sup.parent();
            let mut steps = 0;
            while let Some(p) = next {
                steps += 1;
                if steps > self.superstates.len() {
                    break;
                }
                next = self.superstates.get(p).and_then(SuperstateMeta::parent);
            }
            if parent_out || initial_out || steps > self.superstates.len() {
                errors.push(TableError::BadSuperstate { superstate: i });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// An inconsistency found by [`Table::verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableError {
    /// A state id is not an index into the state list.
    StateOutOfRange(StateId),
    /// An event id is not an index into the event list.
    EventOutOfRange(EventId),
    /// Two transitions leave the same state on the same event.
    DuplicateTransition {
        /// The state.
        state: StateId,
        /// The event.
        event: EventId,
    },
    /// A terminal state has a transition.
    TransitionFromTerminal(TransitionMeta),
    /// A policy is declared for an event the state has a transition for.
    PolicyForHandledEvent {
        /// The state.
        state: StateId,
        /// The event.
        event: EventId,
    },
    /// A superstate index out of range, a superstate inside itself (a cycle of parents), or
    /// a superstate whose initial state is out of range.
    BadSuperstate {
        /// The superstate (or the out-of-range index a state names).
        superstate: usize,
    },
    /// A transition that says it re-enters a superstate ([`TransitionMeta::reentering`])
    /// that is not around both of its states.
    BadReentry(TransitionMeta),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::StateOutOfRange(s) => write!(f, "state id {} is out of range", s.0),
            TableError::EventOutOfRange(e) => write!(f, "event id {} is out of range", e.0),
            TableError::DuplicateTransition { state, event } => write!(
                f,
                "state {} has two transitions on event {}",
                state.0, event.0
            ),
            TableError::TransitionFromTerminal(t) => {
                write!(f, "terminal state {} has a transition", t.from.0)
            }
            TableError::PolicyForHandledEvent { state, event } => write!(
                f,
                "state {} declares a policy for event {} that it has a transition for",
                state.0, event.0
            ),
            TableError::BadSuperstate { superstate } => write!(
                f,
                "superstate {superstate} is out of range, inside itself, or enters a state out of range"
            ),
            TableError::BadReentry(t) => write!(
                f,
                "the transition from state {} on event {} re-enters superstate {}, which is not around both its states",
                t.from.0,
                t.event.0,
                t.reenters
            ),
        }
    }
}

impl std::error::Error for TableError {}

#[cfg(test)]
mod tests {
    use super::*;

    // A -x-> B -y-> C(terminal), B -z-> B, D unreachable
    const STATES: &[StateMeta] = &[
        StateMeta::new("A"),
        StateMeta::new("B").policies(&[(EventId(0), Policy::Defer)]),
        StateMeta::new("C").terminal(),
        StateMeta::new("D").otherwise(Policy::Dump),
    ];
    const T: Table = Table::new(
        "M",
        STATES,
        &["x", "y", "z"],
        &[
            TransitionMeta::new(0, 0, 1),
            TransitionMeta::new(1, 1, 2),
            TransitionMeta::new(1, 2, 1),
            TransitionMeta::new(3, 0, 2),
        ],
        0,
    );

    #[test]
    fn reachability_follows_transitions_from_the_initial_state() {
        assert_eq!(T.reachable(), vec![StateId(0), StateId(1), StateId(2)]);
        assert!(!T.is_reachable(StateId(3)));
        assert_eq!(T.reachable_from(StateId(3)), vec![StateId(2), StateId(3)]);
    }

    #[test]
    fn path_to_is_a_shortest_path() {
        let p = T.path_to(StateId(2)).unwrap();
        assert_eq!(
            p,
            vec![TransitionMeta::new(0, 0, 1), TransitionMeta::new(1, 1, 2)]
        );
        assert_eq!(T.path_to(StateId(0)), Some(vec![]));
        assert_eq!(T.path_to(StateId(3)), None);
        assert_eq!(T.path_to(StateId(99)), None);
    }

    #[test]
    fn policy_applies_only_to_unhandled_events() {
        assert_eq!(T.policy(StateId(1), EventId(1)), None);
        assert_eq!(T.policy(StateId(1), EventId(0)), Some(Policy::Defer));
        assert_eq!(T.policy(StateId(0), EventId(1)), Some(Policy::Reject));
        assert_eq!(T.policy(StateId(3), EventId(1)), Some(Policy::Dump));
    }

    #[test]
    fn lookups_are_total() {
        assert_eq!(T.state_name(StateId(40)), "<unknown>");
        assert_eq!(T.event_name(EventId(40)), "<unknown>");
        assert_eq!(T.target(StateId(40), EventId(0)), None);
        assert_eq!(T.state_id("C"), Some(StateId(2)));
        assert_eq!(T.event_id("z"), Some(EventId(2)));
        assert_eq!(T.event_id("nope"), None);
    }

    #[test]
    fn verify_reports_every_inconsistency() {
        assert_eq!(T.verify(), Ok(()));
        const BAD: Table = Table::new(
            "Bad",
            &[
                StateMeta::new("A").policies(&[(EventId(0), Policy::Defer)]),
                StateMeta::new("B").terminal(),
            ],
            &["x"],
            &[
                TransitionMeta::new(0, 0, 1),
                TransitionMeta::new(0, 0, 0),
                TransitionMeta::new(1, 0, 5),
            ],
            0,
        );
        let errors = BAD.verify().unwrap_err();
        assert!(errors.contains(&TableError::DuplicateTransition {
            state: StateId(0),
            event: EventId(0)
        }));
        assert!(errors.contains(&TableError::StateOutOfRange(StateId(5))));
        assert!(
            errors.contains(&TableError::TransitionFromTerminal(TransitionMeta::new(
                1, 0, 5
            )))
        );
        assert!(errors.contains(&TableError::PolicyForHandledEvent {
            state: StateId(0),
            event: EventId(0)
        }));
    }

    // S = { A, B } with a timeout-free superstate; C outside. x re-enters S (declared on S into
    // itself), y moves inside, z leaves; w claims to re-enter S though C is not inside it.
    const NESTED: Table = Table::new(
        "Nested",
        &[
            StateMeta::new("A").within(0),
            StateMeta::new("B").within(0),
            StateMeta::new("C"),
        ],
        &["x", "y", "z", "w"],
        &[
            TransitionMeta::new(1, 0, 0).reentering(0),
            TransitionMeta::new(0, 1, 1),
            TransitionMeta::new(0, 2, 2),
            TransitionMeta::new(2, 3, 0).reentering(0),
        ],
        0,
    )
    .with_superstates(&[SuperstateMeta::new("S", 0)]);

    #[test]
    fn crossed_follows_reentry_and_verify_checks_it() {
        let crossed = |from: u16, event: u16, to: u16| {
            let (left, entered) = NESTED.crossed(StateId(from), EventId(event), StateId(to));
            (left.collect::<Vec<_>>(), entered.collect::<Vec<_>>())
        };
        assert_eq!(crossed(1, 0, 0), (vec![0], vec![0]), "re-entered");
        assert_eq!(crossed(0, 1, 1), (vec![], vec![]), "a move inside");
        assert_eq!(crossed(0, 2, 2), (vec![0], vec![]), "left");
        assert_eq!(
            NESTED.common_superstate(StateId(0), EventId(1), StateId(1)),
            Some(0)
        );
        assert_eq!(
            NESTED.common_superstate(StateId(1), EventId(0), StateId(0)),
            None
        );
        let errors = NESTED.verify().unwrap_err();
        assert_eq!(
            errors,
            [TableError::BadReentry(
                TransitionMeta::new(2, 3, 0).reentering(0)
            )]
        );
        assert!(errors[0].to_string().contains("re-enters superstate 0"));
    }
}
