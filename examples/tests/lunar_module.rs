//! The lunar module's error kernel: every invariant rejects the command that would break it
//! and leaves the craft as it was; a damaged copy on one side of the mirror is detected on
//! read, served from the other side and rewritten, so both sides end with the final state.

use fsm_core::{Reason, StateMachine};
use fsm_examples::lunar_module::{self, autopilot, Control, Invariant, Lander};

fn broken(craft: &mut Lander, command: Control) -> Invariant {
    let before = craft.clone();
    let r = craft.apply(command).unwrap_err();
    assert_eq!(
        *craft, before,
        "a rejected command leaves the craft as it was"
    );
    match r.reason() {
        Reason::Invalid { refusal, .. } => {
            Invariant::of(refusal.reason()).unwrap_or_else(|| panic!("no invariant named in {r}"))
        }
        other => panic!("expected an invariant to refuse, got {other:?}"),
    }
}

#[test]
fn each_invariant_rejects_the_command_that_would_break_it() {
    let mut craft = Lander::start();
    assert_eq!(
        broken(&mut craft, Control::Coast { seconds: 90 }),
        Invariant::AltitudeNeverNegative
    );
    assert_eq!(
        broken(
            &mut craft,
            Control::Burn {
                seconds: 61,
                throttle: 100
            }
        ),
        Invariant::FuelNeverNegative
    );
    // Just above the surface, falling at 10 m/s: the legs would not survive.
    let mut fast = Lander::Descending {
        altitude: 50,
        vertical: -1_000,
        horizontal: 0,
        fuel: 1_000,
    };
    assert_eq!(
        broken(&mut fast, Control::Touchdown),
        Invariant::SoftContact
    );
    // A burn of exactly the fuel left is fine.
    let mut exact = Lander::start();
    exact
        .apply(Control::Burn {
            seconds: 60,
            throttle: 100,
        })
        .unwrap();
    assert_eq!(exact.readout().2, 0);
}

#[test]
fn the_autopilot_lands_softly_from_the_start() {
    let mut craft = Lander::start();
    for _ in 0..10_000 {
        if craft.is_terminal() {
            break;
        }
        craft.apply(autopilot(&craft)).unwrap();
    }
    let Lander::Landed { contact, fuel } = craft else {
        panic!("did not land: {craft}");
    };
    assert!(
        contact.abs() <= lunar_module::SOFT_CONTACT && fuel > 0,
        "{craft}"
    );
}

#[test]
fn a_damaged_replica_is_repaired_on_read_and_the_descent_lands() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Vec::new();
    let report = lunar_module::descend(tmp.path(), 20, &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(
        matches!(report.end, Lander::Landed { .. }),
        "{log}\n{report:?}"
    );
    // The three bad commands: one per kind of refusal.
    assert_eq!(report.refused, 1, "{log}");
    assert_eq!(
        report.broken,
        vec![
            (Invariant::AltitudeNeverNegative, 1),
            (Invariant::FuelNeverNegative, 1)
        ],
        "{log}"
    );
    assert!(log.contains("damaged the secondary's copy"), "{log}");
    assert!(
        report.repairs >= 1,
        "the damaged side was not repaired: {report:?}"
    );
    // Read back alone, each side holds the final state: the repaired one too.
    assert_eq!(
        report.sides,
        [Some(report.end.clone()), Some(report.end.clone())]
    );
}
