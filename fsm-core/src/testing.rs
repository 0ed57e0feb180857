//! Property checks for any machine: random event sequences against the transition table as a
//! model, in one line from a test or from a fuzz target.
//!
//! ```
//! # use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
//! # use serde::{Deserialize, Serialize};
//! #[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
//! #[fsm(event = Cmd)]
//! enum Door {
//!     #[fsm(initial, on(Lock => Locked))]
//!     Open,
//!     #[fsm(on(Unlock => Open))]
//!     Locked { code: u32 },
//! }
//! #[derive(Event, Debug, Clone)]
//! enum Cmd { Lock { code: u32 }, Unlock { code: u32 } }
//! # impl Handler<cmd::Lock, door::Locked> for door::Open {
//! #     fn handle(_: door::Open, ev: cmd::Lock, _: &mut Effects<()>) -> Result<door::Locked, Refusal> { Ok(door::Locked { code: ev.code }) }
//! # }
//! # impl Handler<cmd::Unlock, door::Open> for door::Locked {
//! #     fn handle(s: door::LockedRef<'_>, ev: cmd::Unlock, _: &mut Effects<()>) -> Result<door::Open, Refusal> {
//! #         if ev.code == *s.code { Ok(door::Open) } else { Err(Refusal::new("wrong code")) }
//! #     }
//! # }
//!
//! // With fsm-core's `proptest` feature (the derive then generates the strategies):
//! # #[cfg(feature = "proptest")]
//! fsm_core::testing::check_machine(Door::Open);
//!
//! // Without it, any source of event sequences (a fuzzer's, a hand-written list):
//! use fsm_core::testing::Checker;
//! let run = Checker::<Door>::new()
//!     .snapshots()
//!     .check_sequence(&Door::Open, [Cmd::Lock { code: 7 }, Cmd::Unlock { code: 1 }, Cmd::Unlock { code: 7 }])
//!     .unwrap();
//! assert_eq!((run.accepted, run.rejected), (2, 1));
//! ```
//!
//! # The properties
//! Every sequence starts from a given state (by default the machine's initial value) and applies
//! the events one by one as [`StateMachine::apply_into`] and the kernel do: the machine's
//! [`StateMachine::next`], then the events its handlers raised. After each step the checker
//! requires, and names the first [`Property`] that does not hold:
//! - [`Property::NeverPanics`]: applying an event answers, it does not unwind;
//! - [`Property::RejectionLeavesStateUnchanged`]: a rejected event leaves the machine equal to
//!   what it was, and the effects buffer as long as it was;
//! - [`Property::InvariantsHold`]: the start state and every state entered pass their invariant;
//! - [`Property::AcceptsExactlyTheTable`]: an accepted event is a transition the table lists,
//!   from the state the machine was in to the state it is in now; a rejection for "no
//!   transition" happens only where the table lists none; a guard refusal or failed invariant
//!   happens only where the table lists one;
//! - [`Property::TerminalAcceptsNothing`]: a terminal state rejects every event;
//! - [`Property::VisitedStatesAreReachable`]: every state the machine is in is reachable from
//!   the initial state per the table;
//! - [`Property::SnapshotRoundTrips`] (with [`Checker::snapshots`]): every state visited,
//!   encoded into an envelope and decoded from its bytes, is equal to itself.
//!
//! With timers ([`Checker::check_timed`], [`Checker::run_timed`][run_timed]), a sequence also holds
//! "time passes" steps ([`Input::Elapse`]): the timers due fire in deadline order, each
//! applied like any event, under the kernel's rules (see [`crate::timer`]), and two more
//! properties hold: [`Property::TimerRequestsHold`] and
//! [`Property::TimeoutsFireOnlyWhileArmed`]. With [`Checker::restores`] a timed sequence also
//! holds restarts ([`Input::Restore`]): the machine and its armed timers go through a snapshot
//! as the kernel stores and loads them, and [`Property::RestoreIsInvisible`] compares the run,
//! step by step, with the same run without the restarts (states, effects, armed timers,
//! firings and when they came).
//!
//! A failure is a [`Violation`]: the property, what was seen, and the whole sequence up to it with
//! state and event names. [`Checker::run`][run] (proptest) shrinks a failing sequence to a minimal one
//! before reporting it; [`Checker::fuzz`][fuzz] (arbitrary) decodes a fuzzer's bytes into a sequence.
//!
//! A run that holds every property can still have tested nothing: random events rarely pass a
//! guard on a field's value. So a run also fails when its sequences took no transition, or
//! fewer than [`Checker::min_coverage`] of the table's (default [`DEFAULT_MIN_COVERAGE`],
//! half), naming the transitions never taken and how to reach them.
//!
#![cfg_attr(feature = "proptest", doc = "[run]: Checker::run")]
#![cfg_attr(not(feature = "proptest"), doc = "[run]: Checker")]
#![cfg_attr(feature = "proptest", doc = "[run_timed]: Checker::run_timed")]
#![cfg_attr(not(feature = "proptest"), doc = "[run_timed]: Checker")]
#![cfg_attr(feature = "arbitrary", doc = "[fuzz]: Checker::fuzz")]
#![cfg_attr(not(feature = "arbitrary"), doc = "[fuzz]: Checker")]

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::rejection::panic_message;
use crate::store::Codec;
use crate::table::{StateId, Table};
use crate::{Effects, Event, Reason, StateMachine, Transition};

mod timed;
pub use timed::Input;

/// A property of a machine that [`Checker`] verifies after every step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Property {
    /// Applying an event answers (accepted or rejected); it never unwinds.
    NeverPanics,
    /// A rejection leaves the machine, and the effects buffer, exactly as they were.
    RejectionLeavesStateUnchanged,
    /// The start state and every state entered pass their invariant.
    InvariantsHold,
    /// The machine accepts exactly the transitions its table lists (guards aside).
    AcceptsExactlyTheTable,
    /// A terminal state accepts no event.
    TerminalAcceptsNothing,
    /// Every state visited is reachable from the initial state per the table.
    VisitedStatesAreReachable,
    /// Every state visited round-trips through a snapshot envelope to an equal state.
    SnapshotRoundTrips,
    /// Every timer request a handler makes can be honoured (the machine's event type, a valid
    /// duration and name, within the default bound of armed timers).
    TimerRequestsHold,
    /// A timeout fires only while it is armed: a state timeout only in the state that armed
    /// it, and no timer after a cancel, a replacement or a state change cancelled it.
    TimeoutsFireOnlyWhileArmed,
    /// The events a handler raised are applied right after its transition, depth first in the
    /// order raised, each as a transition of the table from where the chain had reached; all
    /// of them are applied or, if one is rejected, none.
    RaisedEventsInOrder,
    /// A restart changes nothing (with [`Checker::restores`]): a run in which the machine and
    /// its armed timers go through a snapshot envelope at [`Input::Restore`] steps, as the
    /// kernel stores and loads them, reaches the same states, emits the same effects and
    /// fires the same timers at the same times as the same run without the restarts.
    RestoreIsInvisible,
}

impl Property {
    /// The property's name, as the checks print it.
    pub fn name(self) -> &'static str {
        match self {
            Property::NeverPanics => "never panics",
            Property::RejectionLeavesStateUnchanged => "a rejection leaves the state unchanged",
            Property::InvariantsHold => "invariants hold",
            Property::AcceptsExactlyTheTable => "accepts exactly the transitions of the table",
            Property::TerminalAcceptsNothing => "a terminal state accepts nothing",
            Property::VisitedStatesAreReachable => "visited states are reachable",
            Property::SnapshotRoundTrips => "snapshots round-trip",
            Property::TimerRequestsHold => "timer requests can be honoured",
            Property::TimeoutsFireOnlyWhileArmed => "timeouts fire only while armed",
            Property::RaisedEventsInOrder => "raised events are applied in order",
            Property::RestoreIsInvisible => "a restore from a snapshot is invisible",
        }
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One step of a checked sequence, as a failure report prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The state the step started in.
    pub from: &'static str,
    /// The event's variant name.
    pub event: &'static str,
    /// The event, as `Debug` prints it.
    pub event_value: String,
    /// What happened: `-> State` or `rejected: why`.
    pub outcome: String,
}

/// A property that did not hold, with the sequence that broke it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The machine's name.
    pub machine: &'static str,
    /// The property broken.
    pub property: Property,
    /// What was seen, with the values involved.
    pub detail: String,
    /// The start state, as `Debug` prints it.
    pub start: String,
    /// Every step up to and including the one that broke the property.
    pub steps: Vec<Step>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} broke `{}` at step {} of the sequence below: {}",
            self.machine,
            self.property,
            self.steps.len(),
            self.detail
        )?;
        writeln!(f, "  start: {}", self.start)?;
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(
                f,
                "  {}. in `{}`, event `{}` ({}) {}",
                i + 1,
                s.from,
                s.event,
                s.event_value,
                s.outcome
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}

/// What one checked sequence did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Run {
    /// Events applied.
    pub steps: usize,
    /// Events accepted (a transition was taken).
    pub accepted: usize,
    /// Events rejected.
    pub rejected: usize,
    /// Indices into the table's transitions of those taken, in order.
    pub transitions: Vec<usize>,
    /// Timers fired (by [`Checker::check_timed`]; their events count as steps too).
    pub fired: usize,
    /// Restarts from a snapshot ([`Input::Restore`] steps of [`Checker::check_timed`]).
    pub restored: usize,
}

/// What a whole [`Checker::run`][run] covered: which of the table's transitions the random
/// sequences took, so a strategy that never reaches part of the machine shows.
///
#[cfg_attr(feature = "proptest", doc = "[run]: Checker::run")]
#[cfg_attr(not(feature = "proptest"), doc = "[run]: Checker")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coverage {
    table: &'static Table,
    /// Sequences checked (including those proptest ran while shrinking).
    pub sequences: u64,
    /// Events applied over all sequences.
    pub steps: u64,
    /// Events accepted.
    pub accepted: u64,
    /// Times each transition of the table was taken, by index into `Table::transitions`.
    pub taken: Vec<u64>,
}

// Only the proptest runner builds coverage.
#[cfg_attr(not(feature = "proptest"), allow(dead_code))]
impl Coverage {
    fn new(table: &'static Table) -> Self {
        Coverage {
            table,
            sequences: 0,
            steps: 0,
            accepted: 0,
            taken: vec![0; table.transitions().len()],
        }
    }

    fn add(&mut self, run: &Run) {
        self.sequences += 1;
        self.steps += run.steps as u64;
        self.accepted += run.accepted as u64;
        for &t in &run.transitions {
            if let Some(n) = self.taken.get_mut(t) {
                *n += 1;
            }
        }
    }

    /// How many of the table's transitions were taken at least once.
    pub fn covered(&self) -> usize {
        self.taken.iter().filter(|&&n| n > 0).count()
    }

    /// Whether the run took at least `share` of the table's transitions, and at least one.
    pub fn is_enough(&self, share: f64) -> bool {
        let covered = self.covered();
        let all = self.taken.len();
        all == 0 || (covered > 0 && covered as f64 >= share * all as f64)
    }

    /// The transitions never taken, as `From --Event--> To`.
    pub fn missed(&self) -> Vec<String> {
        self.table
            .transitions()
            .iter()
            .zip(&self.taken)
            .filter(|(_, &n)| n == 0)
            .map(|(t, _)| {
                format!(
                    "{} --{}--> {}",
                    self.table.state_name(t.from),
                    self.table.event_name(t.event),
                    self.table.state_name(t.to)
                )
            })
            .collect()
    }
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let covered = self.taken.iter().filter(|&&n| n > 0).count();
        write!(
            f,
            "{}: {} sequences, {} events ({} accepted), {} of {} transitions taken",
            self.table.machine(),
            self.sequences,
            self.steps,
            self.accepted,
            covered,
            self.taken.len()
        )?;
        let missed = self.missed();
        if !missed.is_empty() {
            write!(f, "; never taken: {}", missed.join(", "))?;
        }
        Ok(())
    }
}

type RoundTrip<M> = fn(&M) -> Result<(), String>;

/// Checks random event sequences against a machine's table. See the [module docs](self) for the
/// properties.
///
/// Bounds: the machine is `Clone + PartialEq + Debug` (to compare a rejected step with the
/// state before it and to print failures), its events are `Debug`. [`Checker::snapshots`]
/// adds the round trip for machines that are `Serialize + DeserializeOwned`.
pub struct Checker<M: StateMachine> {
    cases: u32,
    max_len: usize,
    round_trip: Option<RoundTrip<M>>,
    restore: Option<timed::Restorer<M>>,
    min_coverage: f64,
}

/// The share of a table's transitions a run must take by default (see
/// [`Checker::min_coverage`]): a run that takes fewer tested too little of the machine.
pub const DEFAULT_MIN_COVERAGE: f64 = 0.5;

impl<M: StateMachine> fmt::Debug for Checker<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checker")
            .field("machine", &M::TABLE.machine())
            .field("cases", &self.cases)
            .field("max_len", &self.max_len)
            .field("snapshots", &self.round_trip.is_some())
            .field("restores", &self.restore.is_some())
            .field("min_coverage", &self.min_coverage)
            .finish()
    }
}

impl<M> Default for Checker<M>
where
    M: StateMachine + Clone + PartialEq + fmt::Debug,
    M::Event: fmt::Debug,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<M> Checker<M>
where
    M: StateMachine + Clone + PartialEq + fmt::Debug,
    M::Event: fmt::Debug,
{
    /// A checker running 256 sequences (or `PROPTEST_CASES`) of up to 64 events, without the
    /// snapshot round trip.
    pub fn new() -> Self {
        Checker {
            cases: default_cases(),
            max_len: 64,
            round_trip: None,
            restore: None,
            min_coverage: DEFAULT_MIN_COVERAGE,
        }
    }

    /// The share of the table's transitions (0 to 1) a whole run must take, or it fails with
    /// the transitions it never took (default [`DEFAULT_MIN_COVERAGE`]). A run that took no
    /// transition at all always fails: it tested nothing. Lower it for a table with
    /// transitions the random events cannot reach on purpose (a guard that needs a secret);
    /// usually the fix is a `#[fsm(strategy = ..)]` on the field that blocked them.
    pub fn min_coverage(mut self, share: f64) -> Self {
        self.min_coverage = if share.is_nan() {
            DEFAULT_MIN_COVERAGE
        } else {
            share.clamp(0.0, 1.0)
        };
        self
    }

    /// How many random sequences [`Checker::run`][run] checks.
    ///
    #[cfg_attr(feature = "proptest", doc = "[run]: Checker::run")]
    #[cfg_attr(not(feature = "proptest"), doc = "[run]: Checker")]
    pub fn cases(mut self, cases: u32) -> Self {
        self.cases = cases.max(1);
        self
    }

    /// The longest sequence generated (and the most events [`Checker::fuzz`][fuzz] takes from
    /// its bytes).
    ///
    #[cfg_attr(feature = "arbitrary", doc = "[fuzz]: Checker::fuzz")]
    #[cfg_attr(not(feature = "arbitrary"), doc = "[fuzz]: Checker")]
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// Also checks that every state visited round-trips through a snapshot envelope (the
    /// default [`Codec`]: postcard, schema version 1) to an equal state.
    pub fn snapshots(mut self) -> Self
    where
        M: Serialize + DeserializeOwned,
    {
        self.round_trip = Some(round_trip::<M>);
        self
    }

    /// Also checks that a restart is invisible ([`Property::RestoreIsInvisible`]): at each
    /// [`Input::Restore`] step of a timed sequence the machine and its armed timers are
    /// written into a snapshot envelope as the kernel writes them (the state's payload, the
    /// timers section with each timer's event encoded), read back as the kernel reads them on
    /// load (the section checked against the state read back, deadlines moved onto the
    /// clock), and the run goes on from what was read. Beside it the checker runs the same
    /// sequence without the restarts; after every step both must be in equal states, have
    /// emitted equal effects, hold the same timers, and have fired the same timers at the
    /// same moments. [`Checker::run_timed`][run_timed] then draws `Restore` steps too.
    ///
    /// A restart of the kernel also keeps what this check does not model: postponed events
    /// and owed effects (tested with the kernel itself).
    ///
    #[cfg_attr(feature = "proptest", doc = "[run_timed]: Checker::run_timed")]
    #[cfg_attr(not(feature = "proptest"), doc = "[run_timed]: Checker")]
    pub fn restores(mut self) -> Self
    where
        M: Serialize + DeserializeOwned + 'static,
        M::Event: Clone + Serialize + DeserializeOwned + 'static,
        M::Effect: PartialEq + fmt::Debug,
    {
        self.restore = Some(timed::Restorer::new());
        self
    }

    /// Checks one sequence from `start`. Returns what it did, or the first property broken.
    pub fn check_sequence(
        &self,
        start: &M,
        events: impl IntoIterator<Item = M::Event>,
    ) -> Result<Run, Violation> {
        let mut walk = Walk::new(self, start)?;
        for event in events {
            walk.event(event)?;
        }
        Ok(walk.run)
    }

    /// The per-state properties: invariant, reachability, snapshot round trip.
    fn check_state(&self, machine: &M, reachable: &[bool]) -> Result<(), (Property, String)> {
        if let Err(invalid) = machine.validate() {
            return Err((
                Property::InvariantsHold,
                format!("{machine:?} fails its invariant: {invalid}"),
            ));
        }
        let state = machine.state();
        if !reachable.get(state.index()).copied().unwrap_or(false) {
            return Err((
                Property::VisitedStatesAreReachable,
                format!(
                    "`{}` is not reachable from the initial state `{}` per the table",
                    M::TABLE.state_name(state),
                    M::TABLE.state_name(M::TABLE.initial())
                ),
            ));
        }
        if let Some(round_trip) = self.round_trip {
            round_trip(machine).map_err(|d| (Property::SnapshotRoundTrips, d))?;
        }
        Ok(())
    }
}

/// One checked sequence in progress: the machine, what it did, and the report so far.
struct Walk<'c, M: StateMachine> {
    checker: &'c Checker<M>,
    start: String,
    reachable: Vec<bool>,
    machine: M,
    steps: Vec<Step>,
    run: Run,
    effects: Effects<M::Effect>,
}

impl<'c, M> Walk<'c, M>
where
    M: StateMachine + Clone + PartialEq + fmt::Debug,
    M::Event: fmt::Debug,
{
    /// Starts from `start`, which must pass the per-state properties itself.
    fn new(checker: &'c Checker<M>, start: &M) -> Result<Self, Violation> {
        let walk = Walk {
            checker,
            start: format!("{start:?}"),
            reachable: reachable_set(M::TABLE),
            machine: start.clone(),
            steps: Vec::new(),
            run: Run::default(),
            effects: Effects::new(),
        };
        walk.checker
            .check_state(&walk.machine, &walk.reachable)
            .map_err(|(p, d)| walk.fail(p, format!("the start state: {d}")))?;
        Ok(walk)
    }

    fn fail(&self, property: Property, detail: String) -> Violation {
        Violation {
            machine: M::TABLE.machine(),
            property,
            detail,
            start: self.start.clone(),
            steps: self.steps.clone(),
        }
    }

    /// Applies one event and checks every property; the transition taken, if accepted.
    fn event(&mut self, event: M::Event) -> Result<Option<Transition>, Violation> {
        let before = self.machine.clone();
        let table = M::TABLE;
        let from = self.machine.state();
        let event_id = event.id();
        let event_name = event.name();
        let event_value = format!("{event:?}");
        let declared = table.target(from, event_id);
        let terminal = table.is_terminal(from);
        let mark = self.effects.mark();
        let held = self.effects.len();
        let (machine, effects) = (&mut self.machine, &mut self.effects);
        // Every transition of the chain, with the ids of the events it raised.
        let mut chain: Vec<(Transition, Vec<crate::EventId>)> = Vec::new();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let settled = crate::machine::settle(machine, event, effects, |t, fx| {
                let raised = fx.raised().get(mark.raised()..).unwrap_or(&[]);
                chain.push((*t, raised.iter().map(|r| r.id()).collect()));
                Ok::<(), std::convert::Infallible>(())
            });
            match settled {
                Ok((next, transition)) => {
                    *machine = next;
                    Ok(transition)
                }
                Err(crate::machine::Stop::Rejected(r)) => Err(r),
                Err(crate::machine::Stop::Step(never)) => match never {},
            }
        }));
        self.run.steps += 1;
        let mut step = Step {
            from: table.state_name(from),
            event: event_name,
            event_value,
            outcome: String::new(),
        };
        match result {
            Err(panic) => {
                step.outcome = "panicked".to_owned();
                self.steps.push(step);
                return Err(self.fail(
                    Property::NeverPanics,
                    format!(
                        "the handler or invariant panicked: {}",
                        panic_message(&*panic)
                    ),
                ));
            }
            Ok(Ok(transition)) => {
                step.outcome = format!("-> {}", transition.to_name());
                self.steps.push(step);
                self.run.accepted += 1;
                let reported = (transition.from(), transition.event(), transition.to());
                if terminal {
                    return Err(self.fail(
                        Property::TerminalAcceptsNothing,
                        format!(
                            "terminal state `{}` accepted `{event_name}` and moved to `{}`",
                            table.state_name(from),
                            table.state_name(self.machine.state())
                        ),
                    ));
                }
                // The command's own transition is a transition of the table; without raised
                // events, it is where the machine is now.
                let raised = chain.len() > 1;
                if declared != Some(reported.2)
                    || reported.0 != from
                    || reported.1 != event_id
                    || (!raised && reported.2 != self.machine.state())
                {
                    return Err(self.fail(Property::AcceptsExactlyTheTable,
                        format!(
                            "accepted as {transition:?} and the machine is now in `{}`, but the table {}",
                            table.state_name(self.machine.state()),
                            match declared {
                                Some(to) => format!("leads to `{}`", table.state_name(to)),
                                None => "has no transition for this event here".to_owned(),
                            }
                        )
                    ));
                }
                if let Err(detail) = check_chain(table, &chain, self.machine.state()) {
                    return Err(self.fail(Property::RaisedEventsInOrder, detail));
                }
                for (t, _) in &chain {
                    if let Some(i) = table
                        .transitions()
                        .iter()
                        .position(|d| d.from == t.from() && d.event == t.event())
                    {
                        self.run.transitions.push(i);
                    }
                }
                self.checker
                    .check_state(&self.machine, &self.reachable)
                    .map_err(|(p, d)| self.fail(p, format!("the state entered: {d}")))?;
                return Ok(Some(transition));
            }
            Ok(Err(rejection)) => {
                step.outcome = format!("rejected: {rejection}");
                self.steps.push(step);
                self.run.rejected += 1;
                if self.machine != before {
                    return Err(self.fail(
                        Property::RejectionLeavesStateUnchanged,
                        format!("the machine was {before:?} and is now {:?}", self.machine),
                    ));
                }
                if self.effects.mark() != mark {
                    return Err(self.fail(Property::RejectionLeavesStateUnchanged,
                        format!(
                            "the effects buffer held {held} effects and {} timer requests and now holds {} and {}",
                            mark.timers(),
                            self.effects.len(),
                            self.effects.timers().len()
                        )
                    ));
                }
                if let Some(problem) =
                    rejection_mismatch(table, from, event_id, declared, terminal, &rejection)
                {
                    return Err(self.fail(Property::AcceptsExactlyTheTable, problem));
                }
            }
        }
        Ok(None)
    }
}

/// What is wrong with a chain of transitions (a command's, then those of the events raised
/// along the way), if anything: each step must be a transition of the table from where the
/// previous one ended, the raised events must be applied depth first in the order raised, and
/// the machine must be where the last step ended.
fn check_chain(
    table: &'static Table,
    chain: &[(Transition, Vec<crate::EventId>)],
    now: StateId,
) -> Result<(), String> {
    let mut expected: Vec<crate::EventId> = Vec::new();
    let mut at = None;
    for (i, (t, raised)) in chain.iter().enumerate() {
        if let Some(prev) = at {
            let want = expected.pop();
            if want != Some(t.event()) {
                return Err(format!(
                    "step {i} applied `{}`, but the next raised event was {}",
                    t.event_name(),
                    want.map_or("none".to_owned(), |e| format!("`{}`", table.event_name(e)))
                ));
            }
            if t.from() != prev || table.target(t.from(), t.event()) != Some(t.to()) {
                return Err(format!(
                    "raised `{}` was applied as {t:?} after the chain reached `{}`, which the table does not allow",
                    t.event_name(),
                    table.state_name(prev)
                ));
            }
        }
        expected.extend(raised.iter().rev());
        at = Some(t.to());
    }
    if let Some(left) = expected.last() {
        return Err(format!(
            "raised `{}` was never applied",
            table.event_name(*left)
        ));
    }
    if at.is_some_and(|end| end != now) {
        return Err(format!(
            "the chain ended in `{}` but the machine is in `{}`",
            at.map_or("-", |s| table.state_name(s)),
            table.state_name(now)
        ));
    }
    Ok(())
}

/// What is wrong with a rejection given what the table says, if anything.
fn rejection_mismatch(
    table: &'static Table,
    from: StateId,
    event: crate::EventId,
    declared: Option<StateId>,
    terminal: bool,
    rejection: &crate::Rejection,
) -> Option<String> {
    if rejection.state() != from || rejection.event() != event {
        return Some(format!(
            "the rejection names state `{}` and event `{}`, not the state the machine was in and the event applied",
            rejection.state_name(),
            rejection.event_name()
        ));
    }
    let state = table.state_name(from);
    match (rejection.reason(), declared) {
        (Reason::Terminal, _) if terminal => None,
        (Reason::Terminal, _) => Some(format!(
            "rejected as terminal, but `{state}` is not terminal"
        )),
        (_, _) if terminal => Some(format!(
            "terminal state `{state}` must reject with `Reason::Terminal`, not {:?}",
            rejection.reason()
        )),
        (Reason::NoTransition, None) => None,
        (Reason::NoTransition, Some(to)) => Some(format!(
            "rejected as having no transition, but the table leads to `{}`",
            table.state_name(to)
        )),
        (
            Reason::Refused(_)
            | Reason::Panicked(_)
            | Reason::Timer(_)
            | Reason::Raised(_)
            | Reason::RaiseLimit { .. }
            | Reason::RaisedWrongType { .. },
            Some(_),
        ) => None,
        (Reason::Invalid { target, .. }, Some(to)) if *target == to => None,
        (Reason::Invalid { target, .. }, Some(to)) => Some(format!(
            "the invariant of `{}` refused, but the table leads to `{}`",
            table.state_name(*target),
            table.state_name(to)
        )),
        (reason, None) => Some(format!(
            "a handler ran ({reason:?}) for an event the table has no transition for in `{state}`"
        )),
    }
}

fn reachable_set(table: &'static Table) -> Vec<bool> {
    let mut set = vec![false; table.states().len()];
    for s in table.reachable() {
        if let Some(slot) = set.get_mut(s.index()) {
            *slot = true;
        }
    }
    set
}

/// Encodes `machine` into an envelope, decodes the envelope's bytes, and compares.
fn round_trip<M>(machine: &M) -> Result<(), String>
where
    M: StateMachine + Serialize + DeserializeOwned + PartialEq + fmt::Debug,
{
    let codec = Codec::<M>::new(1);
    let snapshot = codec
        .encode(machine, 7)
        .map_err(|e| format!("{machine:?} does not encode: {e}"))?;
    let (back, seq) = codec
        .decode_bytes(snapshot.as_bytes())
        .map_err(|e| format!("{machine:?} encodes but does not decode: {e}"))?;
    if back != *machine || seq != 7 {
        return Err(format!(
            "{machine:?} came back from its snapshot as {back:?} (sequence {seq}, written 7)"
        ));
    }
    Ok(())
}

fn default_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

#[cfg(feature = "proptest")]
mod with_proptest {
    use std::cell::RefCell;
    use std::fmt;

    use proptest::arbitrary::{any, Arbitrary};
    use proptest::collection::vec;
    use proptest::strategy::{Just, Strategy};
    use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

    use super::{Checker, Coverage, Violation};
    use crate::StateMachine;

    /// How one generated sequence of inputs is checked.
    type CheckFn<M, V> = fn(&Checker<M>, &M, Vec<V>) -> Result<super::Run, Violation>;

    /// Why [`Checker::run`] failed: a property broken (the sequence already shrunk), or
    /// proptest gave up (too many rejected inputs).
    #[derive(Debug)]
    #[non_exhaustive]
    pub enum Failure {
        /// A property did not hold; the sequence is minimal.
        Violated(Violation),
        /// proptest aborted the run.
        Aborted(String),
        /// Every property held, but the random sequences took too few of the table's
        /// transitions (none, or fewer than [`Checker::min_coverage`]): the run tested too
        /// little to mean anything.
        Uncovered {
            /// What the run covered (its `missed()` lists the transitions never taken).
            coverage: Coverage,
            /// The share required.
            required: f64,
        },
    }

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Failure::Violated(v) => write!(f, "{v}(sequence shrunk by proptest)"),
                Failure::Aborted(why) => write!(f, "the property run was aborted: {why}"),
                Failure::Uncovered { coverage, required } => {
                    let all = coverage.taken.len();
                    writeln!(
                        f,
                        "the random sequences took {} of {all} transitions, fewer than the {:.0}% required: every property held, but over too little of the machine to mean much.",
                        coverage.covered(),
                        required * 100.0
                    )?;
                    writeln!(f, "never taken:")?;
                    for t in coverage.missed() {
                        writeln!(f, "  {t}")?;
                    }
                    write!(
                        f,
                        "Random events rarely pass a guard on a field's value: give that field a `#[fsm(strategy = ..)]` that produces accepted values, weight the events with `Checker::run_with`, or lower `Checker::min_coverage` if those transitions are unreachable on purpose.\n({coverage})"
                    )
                }
            }
        }
    }

    impl std::error::Error for Failure {}

    impl<M> Checker<M>
    where
        M: StateMachine + Clone + PartialEq + fmt::Debug,
        M::Event: fmt::Debug,
    {
        /// Runs [`Checker::cases`] random sequences from `start`, events from the derived
        /// strategy (`any::<Event>()`), and shrinks a failing one to a minimal sequence.
        pub fn run(&self, start: M) -> Result<Coverage, Failure>
        where
            M::Event: Arbitrary,
        {
            self.run_with(Just(start), any::<M::Event>())
        }

        /// Like [`Checker::run`], with the start states and the events drawn from the given
        /// strategies (for example `any::<Machine>()` filtered to valid states, or events
        /// weighted toward the interesting ones).
        pub fn run_with<S, E>(&self, starts: S, events: E) -> Result<Coverage, Failure>
        where
            S: Strategy<Value = M>,
            E: Strategy<Value = M::Event>,
        {
            self.run_inputs(starts, events, |checker, start, events| {
                checker.check_sequence(start, events)
            })
        }

        /// Runs [`Checker::cases`] sequences of `inputs` from `starts` through `check`, and
        /// re-checks the sequence proptest shrank a failure to.
        pub(crate) fn run_inputs<S, I>(
            &self,
            starts: S,
            inputs: I,
            check: CheckFn<M, I::Value>,
        ) -> Result<Coverage, Failure>
        where
            S: Strategy<Value = M>,
            I: Strategy,
        {
            let config = Config {
                cases: self.cases,
                failure_persistence: None,
                ..Config::default()
            };
            let mut runner = TestRunner::new(config);
            let coverage = RefCell::new(Coverage::new(M::TABLE));
            let strategy = (starts, vec(inputs, 0..=self.max_len));
            let result = runner.run(&strategy, |(start, inputs)| {
                let run =
                    check(self, &start, inputs).map_err(|v| TestCaseError::fail(v.to_string()))?;
                coverage.borrow_mut().add(&run);
                Ok(())
            });
            match result {
                Ok(()) => {
                    let coverage = coverage.into_inner();
                    if coverage.is_enough(self.min_coverage) {
                        Ok(coverage)
                    } else {
                        Err(Failure::Uncovered {
                            coverage,
                            required: self.min_coverage,
                        })
                    }
                }
                Err(TestError::Fail(reason, (start, inputs))) => match check(self, &start, inputs) {
                    Err(v) => Err(Failure::Violated(v)),
                    // A property that fails once and not again (a handler that is not a
                    // function of its inputs): report what proptest saw.
                    Ok(_) => Err(Failure::Aborted(format!(
                        "a sequence failed, then passed when run again (is a handler not deterministic?): {reason}"
                    ))),
                },
                Err(TestError::Abort(reason)) => Err(Failure::Aborted(reason.to_string())),
            }
        }
    }

    /// The one-line property check: runs random event sequences from `start` against the
    /// machine's table with every property of the [module](super), including the snapshot
    /// round trip, and panics with the shrunk sequence if one fails. Prints the coverage.
    /// Call it from a `#[test]`, one line per machine; the [module documentation](crate::testing)
    /// runs it on a machine of two states.
    pub fn check_machine<M>(start: M) -> Coverage
    where
        M: StateMachine
            + Clone
            + PartialEq
            + fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
        M::Event: fmt::Debug + Arbitrary,
    {
        match Checker::<M>::new().snapshots().run(start) {
            Ok(coverage) => {
                println!("{coverage}");
                coverage
            }
            Err(failure) => panic!("{failure}"),
        }
    }
}

#[cfg(feature = "proptest")]
pub use with_proptest::{check_machine, Failure};

/// [`check_machine`] with time: random sequences of events and "time passes" steps
/// ([`Checker::run_timed`]), every property including the timer ones and the snapshot round
/// trip; panics with the shrunk sequence if one fails. Prints the coverage.
#[cfg(feature = "proptest")]
pub fn check_timed_machine<M>(start: M) -> Coverage
where
    M: StateMachine + Clone + PartialEq + fmt::Debug + Serialize + DeserializeOwned + 'static,
    M::Event: Clone + fmt::Debug + proptest::arbitrary::Arbitrary + 'static,
{
    match Checker::<M>::new().snapshots().run_timed(start) {
        Ok(coverage) => {
            println!("{coverage}");
            coverage
        }
        Err(failure) => panic!("{failure}"),
    }
}

#[cfg(feature = "arbitrary")]
mod with_arbitrary {
    use std::fmt;

    use arbitrary::{Arbitrary, Unstructured};

    use super::{Checker, Run, Violation};
    use crate::StateMachine;

    impl<M> Checker<M>
    where
        M: StateMachine + Clone + PartialEq + fmt::Debug,
        M::Event: fmt::Debug,
    {
        /// Checks the sequence a fuzzer's bytes decode to (events from the derived
        /// `arbitrary::Arbitrary` impl, at most [`Checker::max_len`] of them), from `start`.
        /// For a `fuzz_target!`: panic on `Err` so the fuzzer records the input.
        pub fn fuzz(&self, start: &M, data: &[u8]) -> Result<Run, Violation>
        where
            M::Event: for<'a> Arbitrary<'a>,
        {
            let mut u = Unstructured::new(data);
            let events = events(&mut u, self.max_len);
            self.check_sequence(start, events)
        }

        /// Like [`Checker::fuzz`], starting from a state drawn from the bytes too (the derived
        /// `Arbitrary` impl of the machine). Bytes that give a state failing its invariant are
        /// not a sequence to check: `Ok` with an empty [`Run`].
        pub fn fuzz_any_start(&self, data: &[u8]) -> Result<Run, Violation>
        where
            M: for<'a> Arbitrary<'a>,
            M::Event: for<'a> Arbitrary<'a>,
        {
            let mut u = Unstructured::new(data);
            let Ok(start) = M::arbitrary(&mut u) else {
                return Ok(Run::default());
            };
            if start.validate().is_err() {
                return Ok(Run::default());
            }
            let events = events(&mut u, self.max_len);
            self.check_sequence(&start, events)
        }
    }

    fn events<'a, E: Arbitrary<'a>>(u: &mut Unstructured<'a>, max: usize) -> Vec<E> {
        let mut out = Vec::new();
        while out.len() < max && !u.is_empty() {
            match E::arbitrary(u) {
                Ok(e) => out.push(e),
                Err(_) => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod chain_tests {
    use super::check_chain;
    use crate::table::{EventId, StateId, StateMeta, Table, TransitionMeta};
    use crate::Transition;

    // A -x-> B, B -y-> C, B -z-> B, C -y-> A.
    static TABLE: Table = Table::new(
        "T",
        &[
            StateMeta::new("A"),
            StateMeta::new("B"),
            StateMeta::new("C"),
        ],
        &["x", "y", "z"],
        &[
            TransitionMeta::new(0, 0, 1),
            TransitionMeta::new(1, 1, 2),
            TransitionMeta::new(1, 2, 1),
            TransitionMeta::new(2, 1, 0),
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

    fn ids(list: &[u16]) -> Vec<EventId> {
        list.iter().map(|&i| EventId::new(i)).collect()
    }

    #[test]
    fn a_chain_in_depth_first_order_passes_and_any_other_order_fails() {
        // x raised [z, y]; z raised nothing: z, then y.
        let good = [
            (t(0, 0, 1), ids(&[2, 1])),
            (t(1, 2, 1), ids(&[])),
            (t(1, 1, 2), ids(&[])),
        ];
        assert_eq!(check_chain(&TABLE, &good, StateId::new(2)), Ok(()));
        let swapped = [
            (t(0, 0, 1), ids(&[1, 2])),
            (t(1, 2, 1), ids(&[])),
            (t(1, 1, 2), ids(&[])),
        ];
        let e = check_chain(&TABLE, &swapped, StateId::new(2)).unwrap_err();
        assert!(
            e.contains("step 1 applied `z`, but the next raised event was `y`"),
            "{e}"
        );
        let unapplied = [(t(0, 0, 1), ids(&[2]))];
        assert!(check_chain(&TABLE, &unapplied, StateId::new(1)).is_err());
        // A raised step that is not a transition of the table from where the chain was.
        let off_table = [(t(0, 0, 1), ids(&[1])), (t(2, 1, 0), ids(&[]))];
        assert!(check_chain(&TABLE, &off_table, StateId::new(0)).is_err());
        // The machine is not where the chain ended.
        assert!(check_chain(&TABLE, &good, StateId::new(0)).is_err());
    }
}
