//! Atomicity of runtime dispatch: whatever a handler does (refuse after emitting effects,
//! panic), the machine and the effects buffer are exactly as before.

use std::panic::{catch_unwind, AssertUnwindSafe};

use fsm_core::{Effects, Event, Handler, Reason, Refusal, StateMachine};

#[derive(StateMachine, Debug, Clone, PartialEq, Eq)]
#[fsm(event = Cmd, effect = &'static str)]
enum Account {
    #[fsm(initial, on(Deposit => Open), on(Freeze => Frozen))]
    Open { balance: i64 },
    #[fsm(on(Deposit => Open))]
    Frozen,
}

#[derive(Event, Debug)]
enum Cmd {
    Deposit(i64),
    Freeze,
}

impl Handler<cmd::Deposit, account::Open> for account::Open {
    fn handle(
        s: account::OpenRef<'_>,
        ev: cmd::Deposit,
        fx: &mut Effects<&'static str>,
    ) -> Result<account::Open, Refusal> {
        fx.push("audit");
        match ev.0 {
            0 => Err(Refusal::new("empty deposit")),
            i64::MIN => panic!("handler bug"),
            n => Ok(account::Open {
                balance: s.balance + n,
            }),
        }
    }
}

impl Handler<cmd::Freeze, account::Frozen> for account::Open {
    fn handle(
        _: account::OpenRef<'_>,
        _: cmd::Freeze,
        _: &mut Effects<&'static str>,
    ) -> Result<account::Frozen, Refusal> {
        Ok(account::Frozen)
    }
}

impl Handler<cmd::Deposit, account::Open> for account::Frozen {
    fn handle(
        _: account::Frozen,
        ev: cmd::Deposit,
        _: &mut Effects<&'static str>,
    ) -> Result<account::Open, Refusal> {
        Ok(account::Open { balance: ev.0 })
    }
}

#[test]
fn a_refusal_after_emitting_effects_discards_them() {
    let mut a = Account::Open { balance: 5 };
    let mut fx = Effects::new();
    fx.push("earlier");
    let r = a.apply_into(Cmd::Deposit(0), &mut fx).unwrap_err();
    assert_eq!(r.reason(), &Reason::Refused(Refusal::new("empty deposit")));
    assert_eq!(fx.as_slice(), ["earlier"]);
    assert_eq!(a, Account::Open { balance: 5 });
    a.apply_into(Cmd::Deposit(2), &mut fx).unwrap();
    assert_eq!(fx.as_slice(), ["earlier", "audit"]);
    assert_eq!(a, Account::Open { balance: 7 });
}

#[test]
fn a_panicking_handler_leaves_the_machine_unchanged() {
    let mut a = Account::Open { balance: 5 };
    let result = catch_unwind(AssertUnwindSafe(|| a.apply(Cmd::Deposit(i64::MIN))));
    assert!(result.is_err(), "the handler panicked");
    assert_eq!(a, Account::Open { balance: 5 });
    assert!(a.apply(Cmd::Deposit(1)).is_ok());
}

#[test]
fn an_event_without_a_transition_is_rejected_by_name() {
    let mut a = Account::Frozen;
    let r = a.apply(Cmd::Freeze).unwrap_err();
    assert_eq!(r.reason(), &Reason::NoTransition);
    assert_eq!(a, Account::Frozen);
    assert_eq!(
        r.to_string(),
        "Account rejected event `Freeze` in state `Frozen`: no transition for it here (this state accepts `Deposit`)"
    );
}
