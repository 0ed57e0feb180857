//! Handlers without ceremony: a transition's function named in the table (`with = f`), and a
//! self-transition that changes the state in place (`update = f`), through the runtime
//! dispatch, the typestate API and a kernel, with hooks, invariants and rollback on refusal.

use fsm_core::kernel::Kernel;
use fsm_core::store::{MachineId, MemoryStore};
use fsm_core::{Effects, Event, Reason, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = Cmd, effect = Note)]
enum Account {
    #[fsm(initial, on(Open => Active, with = open))]
    New,
    #[fsm(
        on(Deposit => Active, update = deposit),
        on(Withdraw => Active, update = withdraw),
        on(Rename => Active, update = rename, reenter),
        on(Close => Closed, with = close),
        validate = not_overdrawn,
        enter = entered,
        exit = left
    )]
    Active {
        owner: String,
        cents: i64,
        limit: i64,
    },
    #[fsm(terminal)]
    Closed { owner: String },
}

#[derive(Event, Debug, Clone, Serialize, Deserialize)]
enum Cmd {
    Open { owner: String },
    Deposit { cents: i64 },
    Withdraw { cents: i64 },
    Rename { owner: String },
    Close,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Note {
    Entered,
    Left,
    Moved(i64),
}

fn open(_: account::New, ev: cmd::Open, _: &mut Effects<Note>) -> Result<account::Active, Refusal> {
    Ok(account::Active {
        owner: ev.owner,
        cents: 0,
        limit: 100,
    })
}

fn deposit(
    s: &mut account::Active,
    ev: cmd::Deposit,
    fx: &mut Effects<Note>,
) -> Result<(), Refusal> {
    if ev.cents <= 0 {
        return Err(Refusal::new("a deposit is positive"));
    }
    s.cents += ev.cents;
    fx.push(Note::Moved(ev.cents));
    Ok(())
}

/// Changes the state, then may refuse: the change must not be kept.
fn withdraw(
    s: &mut account::Active,
    ev: cmd::Withdraw,
    fx: &mut Effects<Note>,
) -> Result<(), Refusal> {
    s.cents -= ev.cents;
    fx.push(Note::Moved(-ev.cents));
    if ev.cents > 1_000 {
        return Err(Refusal::new("above the daily maximum"));
    }
    Ok(())
}

fn rename(s: &mut account::Active, ev: cmd::Rename, _: &mut Effects<Note>) -> Result<(), Refusal> {
    s.owner = ev.owner;
    Ok(())
}

fn close(
    s: account::ActiveRef<'_>,
    _: cmd::Close,
    _: &mut Effects<Note>,
) -> Result<account::Closed, Refusal> {
    Ok(account::Closed {
        owner: s.owner.clone(),
    })
}

fn not_overdrawn(s: account::ActiveRef<'_>) -> Result<(), Refusal> {
    if *s.cents < -*s.limit {
        return Err(Refusal::new("overdrawn past the limit"));
    }
    Ok(())
}

fn entered(_: account::ActiveRef<'_>, fx: &mut Effects<Note>) {
    fx.push(Note::Entered);
}

fn left(_: account::ActiveRef<'_>, fx: &mut Effects<Note>) {
    fx.push(Note::Left);
}

fn active(owner: &str, cents: i64) -> Account {
    Account::Active {
        owner: owner.into(),
        cents,
        limit: 100,
    }
}

#[test]
fn with_and_update_run_through_the_dispatch_with_hooks() {
    let mut a = Account::New;
    let opened = a
        .apply(Cmd::Open {
            owner: "ada".into(),
        })
        .unwrap();
    assert_eq!(opened.effects.into_vec(), [Note::Entered]);
    let deposited = a.apply(Cmd::Deposit { cents: 50 }).unwrap();
    // A self-transition runs no hook unless marked `reenter`.
    assert_eq!(deposited.effects.into_vec(), [Note::Moved(50)]);
    assert_eq!(a, active("ada", 50));
    let renamed = a
        .apply(Cmd::Rename {
            owner: "bob".into(),
        })
        .unwrap();
    assert_eq!(renamed.effects.into_vec(), [Note::Left, Note::Entered]);
    assert_eq!(a, active("bob", 50));
    a.apply(Cmd::Close).unwrap();
    assert_eq!(
        a,
        Account::Closed {
            owner: "bob".into()
        }
    );
}

#[test]
fn an_update_that_refuses_or_breaks_the_invariant_changes_nothing() {
    let mut a = active("ada", 50);
    let refused = a.apply(Cmd::Withdraw { cents: 5_000 }).unwrap_err();
    assert!(
        matches!(refused.reason(), Reason::Refused(r) if r.reason() == "above the daily maximum"),
        "{refused}"
    );
    assert_eq!(a, active("ada", 50), "the function's change is not kept");
    let invalid = a.apply(Cmd::Withdraw { cents: 200 }).unwrap_err();
    assert!(
        matches!(invalid.reason(), Reason::Invalid { .. }),
        "{invalid}"
    );
    assert_eq!(
        a,
        active("ada", 50),
        "the invariant runs on the changed copy"
    );
    a.apply(Cmd::Withdraw { cents: 120 }).unwrap();
    assert_eq!(a, active("ada", -70));
}

#[test]
fn with_and_update_are_typestate_methods() {
    let opened = account::New
        .open(cmd::Open {
            owner: "ada".into(),
        })
        .unwrap()
        .state;
    let more = opened.deposit(cmd::Deposit { cents: 7 }).unwrap();
    assert_eq!(more.effects.into_vec(), [Note::Moved(7)]);
    let back = more
        .state
        .withdraw(cmd::Withdraw { cents: 5_000 })
        .unwrap_err();
    assert_eq!(
        (back.state.owner.as_str(), back.state.cents),
        ("ada", 7),
        "handed back unchanged"
    );
    let closed = Account::from(back.state.close(cmd::Close).unwrap().state);
    assert_eq!(
        closed,
        Account::Closed {
            owner: "ada".into()
        }
    );
}

#[test]
fn with_and_update_run_in_a_kernel() {
    let kernel = Kernel::builder(MemoryStore::new(), Account::initial_state)
        .start()
        .unwrap();
    let id = MachineId::new("acct-1").unwrap();
    kernel
        .submit(
            &id,
            Cmd::Open {
                owner: "ada".into(),
            },
        )
        .unwrap()
        .wait()
        .unwrap();
    kernel
        .submit(&id, Cmd::Deposit { cents: 40 })
        .unwrap()
        .wait()
        .unwrap();
    let refused = kernel
        .submit(&id, Cmd::Deposit { cents: -1 })
        .unwrap()
        .wait();
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(kernel.state(&id).unwrap(), (active("ada", 40), Some(2)));
}
