//! Internal events (`Effects::raise`, gen_statem's `next_event`): applied right after the
//! transition that raised them, depth first in the order raised, before any queued command; a
//! command and its raised events are one step (all or none, one durable write); a cycle is a
//! typed error at the bound; the property check covers chains.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use fsm_core::kernel::{CommandError, Kernel, Request, TraceSource};
use fsm_core::queue::ManualClock;
use fsm_core::store::{MachineId, MemoryStore, SnapshotStore};
use fsm_core::testing::Checker;
use fsm_core::{Effects, Event, Handler, Reason, Refusal, StateMachine, RAISE_LIMIT};
use serde::{Deserialize, Serialize};

#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = Op, effect = String)]
pub enum Job {
    #[fsm(initial, on(Submit => Checking))]
    Idle,
    #[fsm(on(Pass => Running), on(Fail => Failed, plain), on(Note => Checking))]
    Checking { score: u8 },
    #[fsm(
        on(Finish => Done, plain), on(Stop => Stopped, plain), on(Loop => Running),
        on(Alien => Running), state_timeout(ms = 1000 => Finish), enter = entered_running
    )]
    Running,
    #[fsm(terminal)]
    Failed,
    #[fsm(terminal)]
    Done,
    #[fsm(terminal)]
    Stopped,
}

#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Raises `Note { n }` for n in 1..=notes, then `Pass`.
    Submit {
        score: u8,
        notes: u8,
    },
    Pass,
    Fail,
    /// Note 1 raises note 10 in turn.
    Note {
        n: u8,
    },
    Loop,
    Alien,
    Finish,
    Stop,
}

/// Another event type: raising it into a `Job` is a mistake the applier reports.
#[derive(Event, Debug, Clone)]
pub enum Other {
    Stray,
}

fn entered_running(_: job::Running, fx: &mut Effects<String>) {
    fx.push("enter Running".into());
}

impl Handler<op::Submit, job::Checking> for job::Idle {
    fn handle(
        _: job::Idle,
        e: op::Submit,
        fx: &mut Effects<String>,
    ) -> Result<job::Checking, Refusal> {
        fx.push("submit".into());
        for n in 1..=e.notes {
            fx.raise(Op::Note { n });
        }
        fx.raise(Op::Pass);
        Ok(job::Checking { score: e.score })
    }
}

impl Handler<op::Note, job::Checking> for job::Checking {
    fn handle(
        s: job::CheckingRef<'_>,
        e: op::Note,
        fx: &mut Effects<String>,
    ) -> Result<job::Checking, Refusal> {
        fx.push(format!("note {}", e.n));
        if e.n == 1 {
            fx.raise(Op::Note { n: 10 });
        }
        Ok(job::Checking { score: *s.score })
    }
}

impl Handler<op::Pass, job::Running> for job::Checking {
    fn handle(
        s: job::CheckingRef<'_>,
        _: op::Pass,
        fx: &mut Effects<String>,
    ) -> Result<job::Running, Refusal> {
        if *s.score < 5 {
            return Err(Refusal::new("score below 5"));
        }
        fx.push("pass".into());
        Ok(job::Running)
    }
}

impl Handler<op::Loop, job::Running> for job::Running {
    fn handle(
        _: job::Running,
        _: op::Loop,
        fx: &mut Effects<String>,
    ) -> Result<job::Running, Refusal> {
        fx.raise(Op::Loop);
        Ok(job::Running)
    }
}

impl Handler<op::Alien, job::Running> for job::Running {
    fn handle(
        _: job::Running,
        _: op::Alien,
        fx: &mut Effects<String>,
    ) -> Result<job::Running, Refusal> {
        fx.raise(Other::Stray);
        Ok(job::Running)
    }
}

fn submit(score: u8, notes: u8) -> Op {
    Op::Submit { score, notes }
}

fn running() -> Job {
    let mut j = Job::Idle;
    j.apply(submit(9, 0)).unwrap();
    assert_eq!(j, Job::Running);
    j
}

#[test]
fn a_raised_event_is_applied_right_after_the_transition_that_raised_it() {
    let mut j = Job::Idle;
    let applied = j.apply(submit(7, 0)).unwrap();
    assert_eq!(j, Job::Running);
    assert_eq!(
        applied.transition.to_name(),
        "Checking",
        "the command's own transition"
    );
    let raised: Vec<String> = applied.raised.iter().map(|t| t.to_string()).collect();
    assert_eq!(raised.len(), 1);
    assert!(raised[0].contains("Pass"), "{raised:?}");
    // One effects list: the command's, then the raised event's handler and hooks.
    assert_eq!(
        applied.effects.as_slice(),
        ["submit", "pass", "enter Running"]
    );
    assert!(
        applied.effects.raised().is_empty(),
        "nothing is left to apply"
    );
}

#[test]
fn raised_events_are_applied_depth_first_in_the_order_raised() {
    let mut j = Job::Idle;
    let applied = j.apply(submit(7, 2)).unwrap();
    // Submit raised [Note 1, Note 2, Pass]; Note 1 raised Note 10, which goes before Note 2.
    assert_eq!(
        applied.effects.as_slice(),
        [
            "submit",
            "note 1",
            "note 10",
            "note 2",
            "pass",
            "enter Running"
        ]
    );
    assert_eq!(applied.raised.len(), 4);
}

#[test]
fn a_rejected_raised_event_rejects_the_command_and_changes_nothing() {
    let mut j = Job::Idle;
    let mut fx = Effects::new();
    fx.push("before".to_owned());
    let r = j.apply_into(submit(3, 1), &mut fx).unwrap_err();
    assert_eq!(j, Job::Idle, "the machine is as it was");
    assert_eq!(fx.as_slice(), ["before"], "nothing of the chain is left");
    assert!(fx.raised().is_empty());
    assert_eq!((r.state_name(), r.event_name()), ("Idle", "Submit"));
    let Reason::Raised(inner) = r.reason() else {
        panic!("expected Reason::Raised, got {r}");
    };
    // The inner rejection names where the chain had got to and what refused.
    assert_eq!(
        (inner.state_name(), inner.event_name()),
        ("Checking", "Pass")
    );
    assert_eq!(
        inner.reason(),
        &Reason::Refused(Refusal::new("score below 5"))
    );
    let text = r.to_string();
    assert!(
        text.contains("an event it raised was rejected") && text.contains("score below 5"),
        "{text}"
    );
}

#[test]
fn a_cycle_of_raised_events_stops_at_the_bound_with_a_typed_error() {
    let mut j = running();
    let r = j.apply(Op::Loop).unwrap_err();
    assert_eq!(r.reason(), &Reason::RaiseLimit { limit: RAISE_LIMIT });
    assert_eq!(j, Job::Running);
    assert!(r.to_string().contains("a cycle of raised events"), "{r}");
}

#[test]
fn raising_a_value_of_another_type_is_a_typed_error() {
    let mut j = running();
    let r = j.apply(Op::Alien).unwrap_err();
    let Reason::RaisedWrongType { expected, found } = r.reason() else {
        panic!("expected RaisedWrongType, got {r}");
    };
    assert!(
        expected.ends_with("Op") && found.ends_with("Other"),
        "{expected} / {found}"
    );
    assert_eq!(j, Job::Running);
}

#[test]
fn the_property_check_holds_over_chains_of_raised_events() {
    let events = [submit(7, 3), Op::Loop, Op::Alien, Op::Stop, submit(1, 0)];
    let run = Checker::<Job>::new()
        .snapshots()
        .check_sequence(&Job::Idle, events)
        .unwrap();
    assert_eq!((run.accepted, run.rejected), (2, 3));
    let refused = Checker::<Job>::new()
        .check_sequence(&Job::Idle, [submit(2, 2), submit(8, 1), Op::Finish])
        .unwrap();
    assert_eq!((refused.accepted, refused.rejected), (2, 1));
}

fn id(s: &str) -> MachineId {
    MachineId::new(s).unwrap()
}

#[test]
fn in_the_kernel_a_chain_is_one_durable_step_applied_before_the_next_queued_command() {
    let clock = ManualClock::at_wall_ms(5_000_000);
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let kernel = Kernel::builder_shared(store.clone(), |_| Job::Idle)
        .shards(1)
        .clock(clock.clock())
        .timer_events()
        .start()
        .unwrap();
    let m = id("job-1");
    // Submit raises Pass; Fail is queued right behind it in the same batch. Were Fail applied
    // before the raised Pass, the job would end Failed.
    let mut tickets = kernel.submit_batch([
        (m.clone(), Request::from(submit(8, 1))),
        (m.clone(), Request::from(Op::Fail)),
    ]);
    let fail = tickets.pop().unwrap().unwrap().wait();
    let first = tickets.pop().unwrap().unwrap().wait().unwrap();
    assert_eq!(first.transition.to_name(), "Checking");
    assert_eq!(first.seq, 1, "the chain is one step: one sequence number");
    match fail {
        Err(CommandError::Rejected(r)) => assert_eq!(r.state_name(), "Running"),
        other => panic!("Fail must meet Running and be rejected, got {other:?}"),
    }
    assert_eq!(kernel.state(&m).unwrap().0, Job::Running);
    let stored = store.get(&m).unwrap();
    assert_eq!(
        stored.seq(),
        1,
        "one durable write for the command and its raised events"
    );
    let counts = kernel.metrics().total.counts;
    // Note 1, the Note 10 it raised, Pass.
    assert_eq!(
        (counts.committed, counts.rejected, counts.raised),
        (1, 1, 3)
    );

    // Running was entered by a raised event: its state timeout is armed all the same.
    clock.advance(Duration::from_millis(999));
    assert_eq!(kernel.fire_due_timers(), 0);
    clock.advance(Duration::from_millis(1));
    assert_eq!(kernel.fire_due_timers(), 1);
    kernel.wait_idle();
    assert_eq!(kernel.state(&m).unwrap().0, Job::Done);

    // A chain that fails is rejected as a whole, and the machine keeps its timers and state.
    let n = id("job-2");
    match kernel.submit(&n, submit(2, 0)).unwrap().wait() {
        Err(CommandError::Rejected(r)) => assert!(matches!(r.reason(), Reason::Raised(_)), "{r}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(kernel.state(&n).unwrap().0, Job::Idle);

    // Every transition of a committed chain is counted against its declared transition, the
    // rejected chain's none.
    let counted = kernel.metrics().total.transitions;
    let table = Job::TABLE;
    let taken: Vec<(String, u64)> = table
        .transitions()
        .iter()
        .zip(counted.iter().chain(std::iter::repeat(&0)))
        .filter(|(_, n)| **n > 0)
        .map(|(t, n)| {
            let name = format!(
                "{} --{}--> {}",
                table.state_name(t.from),
                table.event_name(t.event),
                table.state_name(t.to)
            );
            (name, *n)
        })
        .collect();
    assert_eq!(
        taken,
        [
            ("Idle --Submit--> Checking".to_owned(), 1),
            ("Checking --Pass--> Running".to_owned(), 1),
            ("Checking --Note--> Checking".to_owned(), 2),
            ("Running --Finish--> Done".to_owned(), 1),
        ]
    );
    assert_eq!(counted.len(), table.transitions().len());
    // The trace says where each command came from and how many effects it emitted.
    let trace = kernel.trace(&fsm_core::kernel::TraceFilter::new().machine(&m));
    let seen: Vec<(&str, Option<&str>, TraceSource, u32)> = trace
        .iter()
        .map(|e| (e.event, e.to, e.source, e.effects))
        .collect();
    assert_eq!(
        seen,
        [
            // Submit, Note 1, Note 10, Pass and Running's enter hook each pushed one.
            ("Submit", Some("Checking"), TraceSource::Command, 5),
            ("Fail", None, TraceSource::Command, 0),
            ("Finish", Some("Done"), TraceSource::Timer, 0),
        ]
    );
}
