//! One seven-state subscription written twice: with `Handler` impls (module `impls`) and with
//! the functions named in the table (module `functions`, `with =` and `update =`). Both must
//! behave alike on every sequence of events; the closing note of the change counts their
//! lines.

use fsm_core::{Effects, Event, StateMachine};
use proptest::prelude::*;

#[derive(Event, Debug, Clone, PartialEq)]
pub(crate) enum Billing {
    Start { plan: u8 },
    Charge { cents: u32 },
    Decline,
    Retry,
    Upgrade { plan: u8 },
    Pause,
    Resume,
    Cancel,
    Expire,
    Refund { cents: u32 },
    Reactivate,
    Close,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Mail {
    Welcome,
    Receipt(u32),
    Dunning(u8),
    Refunded(u32),
    Goodbye,
}

mod impls {
    use super::{billing, Billing, Mail};
    use fsm_core::{Effects, Handler, Refusal, StateMachine};

    type Fx = Effects<Mail>;

    #[derive(StateMachine, Debug, Clone, PartialEq)]
    #[fsm(event = Billing, effect = Mail)]
    pub(crate) enum Sub {
        #[fsm(initial, on(Start => Trial), on(Cancel => Closed, plain))]
        Pending,
        #[fsm(on(Charge => Active), on(Expire => Lapsed, plain), on(Cancel => Closed, plain))]
        Trial { plan: u8 },
        #[fsm(
            on(Charge => Active),
            on(Upgrade => Active),
            on(Decline => PastDue),
            on(Pause => Paused),
            on(Refund => Active),
            on(Cancel => Cancelled)
        )]
        Active { plan: u8, paid: u32 },
        #[fsm(on(Retry => PastDue), on(Charge => Active), on(Expire => Lapsed, plain))]
        PastDue { plan: u8, tries: u8 },
        #[fsm(on(Resume => Active), on(Cancel => Cancelled))]
        Paused { plan: u8, paid: u32 },
        #[fsm(on(Reactivate => Pending, plain), on(Close => Closed, plain))]
        Lapsed,
        #[fsm(on(Reactivate => Pending, plain), on(Close => Closed, plain))]
        Cancelled { paid: u32 },
        #[fsm(terminal)]
        Closed,
    }

    impl Handler<billing::Start, sub::Trial> for sub::Pending {
        fn handle(_: sub::Pending, ev: billing::Start, fx: &mut Fx) -> Result<sub::Trial, Refusal> {
            fx.push(Mail::Welcome);
            Ok(sub::Trial { plan: ev.plan })
        }
    }

    impl Handler<billing::Charge, sub::Active> for sub::Trial {
        fn handle(
            s: sub::TrialRef<'_>,
            ev: billing::Charge,
            fx: &mut Fx,
        ) -> Result<sub::Active, Refusal> {
            if ev.cents == 0 {
                return Err(Refusal::new("nothing charged"));
            }
            fx.push(Mail::Receipt(ev.cents));
            Ok(sub::Active {
                plan: *s.plan,
                paid: ev.cents,
            })
        }
    }

    impl Handler<billing::Charge, sub::Active> for sub::Active {
        fn handle(
            s: sub::ActiveRef<'_>,
            ev: billing::Charge,
            fx: &mut Fx,
        ) -> Result<sub::Active, Refusal> {
            if ev.cents == 0 {
                return Err(Refusal::new("nothing charged"));
            }
            fx.push(Mail::Receipt(ev.cents));
            Ok(sub::Active {
                plan: *s.plan,
                paid: s.paid.saturating_add(ev.cents),
            })
        }
    }

    impl Handler<billing::Upgrade, sub::Active> for sub::Active {
        fn handle(
            s: sub::ActiveRef<'_>,
            ev: billing::Upgrade,
            _: &mut Fx,
        ) -> Result<sub::Active, Refusal> {
            if ev.plan <= *s.plan {
                return Err(Refusal::new("not an upgrade"));
            }
            Ok(sub::Active {
                plan: ev.plan,
                paid: *s.paid,
            })
        }
    }

    impl Handler<billing::Decline, sub::PastDue> for sub::Active {
        fn handle(
            s: sub::ActiveRef<'_>,
            _: billing::Decline,
            fx: &mut Fx,
        ) -> Result<sub::PastDue, Refusal> {
            fx.push(Mail::Dunning(1));
            Ok(sub::PastDue {
                plan: *s.plan,
                tries: 1,
            })
        }
    }

    impl Handler<billing::Pause, sub::Paused> for sub::Active {
        fn handle(
            s: sub::ActiveRef<'_>,
            _: billing::Pause,
            _: &mut Fx,
        ) -> Result<sub::Paused, Refusal> {
            Ok(sub::Paused {
                plan: *s.plan,
                paid: *s.paid,
            })
        }
    }

    impl Handler<billing::Refund, sub::Active> for sub::Active {
        fn handle(
            s: sub::ActiveRef<'_>,
            ev: billing::Refund,
            fx: &mut Fx,
        ) -> Result<sub::Active, Refusal> {
            let paid = s
                .paid
                .checked_sub(ev.cents)
                .ok_or(Refusal::new("more than was paid"))?;
            fx.push(Mail::Refunded(ev.cents));
            Ok(sub::Active {
                plan: *s.plan,
                paid,
            })
        }
    }

    impl Handler<billing::Cancel, sub::Cancelled> for sub::Active {
        fn handle(
            s: sub::ActiveRef<'_>,
            _: billing::Cancel,
            fx: &mut Fx,
        ) -> Result<sub::Cancelled, Refusal> {
            fx.push(Mail::Goodbye);
            Ok(sub::Cancelled { paid: *s.paid })
        }
    }

    impl Handler<billing::Retry, sub::PastDue> for sub::PastDue {
        fn handle(
            s: sub::PastDueRef<'_>,
            _: billing::Retry,
            fx: &mut Fx,
        ) -> Result<sub::PastDue, Refusal> {
            if *s.tries >= 3 {
                return Err(Refusal::new("three tries already"));
            }
            fx.push(Mail::Dunning(s.tries + 1));
            Ok(sub::PastDue {
                plan: *s.plan,
                tries: s.tries + 1,
            })
        }
    }

    impl Handler<billing::Charge, sub::Active> for sub::PastDue {
        fn handle(
            s: sub::PastDueRef<'_>,
            ev: billing::Charge,
            fx: &mut Fx,
        ) -> Result<sub::Active, Refusal> {
            if ev.cents == 0 {
                return Err(Refusal::new("nothing charged"));
            }
            fx.push(Mail::Receipt(ev.cents));
            Ok(sub::Active {
                plan: *s.plan,
                paid: ev.cents,
            })
        }
    }

    impl Handler<billing::Resume, sub::Active> for sub::Paused {
        fn handle(
            s: sub::PausedRef<'_>,
            _: billing::Resume,
            _: &mut Fx,
        ) -> Result<sub::Active, Refusal> {
            Ok(sub::Active {
                plan: *s.plan,
                paid: *s.paid,
            })
        }
    }

    impl Handler<billing::Cancel, sub::Cancelled> for sub::Paused {
        fn handle(
            s: sub::PausedRef<'_>,
            _: billing::Cancel,
            fx: &mut Fx,
        ) -> Result<sub::Cancelled, Refusal> {
            fx.push(Mail::Goodbye);
            Ok(sub::Cancelled { paid: *s.paid })
        }
    }
}

mod functions {
    use super::{billing, Billing, Mail};
    use fsm_core::{Effects, Refusal, StateMachine};

    type Fx = Effects<Mail>;

    #[derive(StateMachine, Debug, Clone, PartialEq)]
    #[fsm(event = Billing, effect = Mail)]
    pub(crate) enum Sub {
        #[fsm(initial, on(Start => Trial, with = start), on(Cancel => Closed, plain))]
        Pending,
        #[fsm(on(Charge => Active, with = first_charge), on(Expire => Lapsed, plain), on(Cancel => Closed, plain))]
        Trial { plan: u8 },
        #[fsm(
            on(Charge => Active, update = charge),
            on(Upgrade => Active, update = upgrade),
            on(Decline => PastDue, with = decline),
            on(Pause => Paused, with = pause),
            on(Refund => Active, update = refund),
            on(Cancel => Cancelled, with = cancel)
        )]
        Active { plan: u8, paid: u32 },
        #[fsm(on(Retry => PastDue, update = retry), on(Charge => Active, with = recover), on(Expire => Lapsed, plain))]
        PastDue { plan: u8, tries: u8 },
        #[fsm(on(Resume => Active, with = resume), on(Cancel => Cancelled, with = cancel_paused))]
        Paused { plan: u8, paid: u32 },
        #[fsm(on(Reactivate => Pending, plain), on(Close => Closed, plain))]
        Lapsed,
        #[fsm(on(Reactivate => Pending, plain), on(Close => Closed, plain))]
        Cancelled { paid: u32 },
        #[fsm(terminal)]
        Closed,
    }

    fn start(_: sub::Pending, ev: billing::Start, fx: &mut Fx) -> Result<sub::Trial, Refusal> {
        fx.push(Mail::Welcome);
        Ok(sub::Trial { plan: ev.plan })
    }

    fn charged(cents: u32, fx: &mut Fx) -> Result<u32, Refusal> {
        if cents == 0 {
            return Err(Refusal::new("nothing charged"));
        }
        fx.push(Mail::Receipt(cents));
        Ok(cents)
    }

    fn first_charge(
        s: sub::TrialRef<'_>,
        ev: billing::Charge,
        fx: &mut Fx,
    ) -> Result<sub::Active, Refusal> {
        Ok(sub::Active {
            plan: *s.plan,
            paid: charged(ev.cents, fx)?,
        })
    }

    fn charge(s: &mut sub::Active, ev: billing::Charge, fx: &mut Fx) -> Result<(), Refusal> {
        s.paid = s.paid.saturating_add(charged(ev.cents, fx)?);
        Ok(())
    }

    fn upgrade(s: &mut sub::Active, ev: billing::Upgrade, _: &mut Fx) -> Result<(), Refusal> {
        if ev.plan <= s.plan {
            return Err(Refusal::new("not an upgrade"));
        }
        s.plan = ev.plan;
        Ok(())
    }

    fn decline(
        s: sub::ActiveRef<'_>,
        _: billing::Decline,
        fx: &mut Fx,
    ) -> Result<sub::PastDue, Refusal> {
        fx.push(Mail::Dunning(1));
        Ok(sub::PastDue {
            plan: *s.plan,
            tries: 1,
        })
    }

    fn pause(s: sub::ActiveRef<'_>, _: billing::Pause, _: &mut Fx) -> Result<sub::Paused, Refusal> {
        Ok(sub::Paused {
            plan: *s.plan,
            paid: *s.paid,
        })
    }

    fn refund(s: &mut sub::Active, ev: billing::Refund, fx: &mut Fx) -> Result<(), Refusal> {
        s.paid = s
            .paid
            .checked_sub(ev.cents)
            .ok_or(Refusal::new("more than was paid"))?;
        fx.push(Mail::Refunded(ev.cents));
        Ok(())
    }

    fn cancel(
        s: sub::ActiveRef<'_>,
        _: billing::Cancel,
        fx: &mut Fx,
    ) -> Result<sub::Cancelled, Refusal> {
        fx.push(Mail::Goodbye);
        Ok(sub::Cancelled { paid: *s.paid })
    }

    fn retry(s: &mut sub::PastDue, _: billing::Retry, fx: &mut Fx) -> Result<(), Refusal> {
        if s.tries >= 3 {
            return Err(Refusal::new("three tries already"));
        }
        s.tries += 1;
        fx.push(Mail::Dunning(s.tries));
        Ok(())
    }

    fn recover(
        s: sub::PastDueRef<'_>,
        ev: billing::Charge,
        fx: &mut Fx,
    ) -> Result<sub::Active, Refusal> {
        Ok(sub::Active {
            plan: *s.plan,
            paid: charged(ev.cents, fx)?,
        })
    }

    fn resume(
        s: sub::PausedRef<'_>,
        _: billing::Resume,
        _: &mut Fx,
    ) -> Result<sub::Active, Refusal> {
        Ok(sub::Active {
            plan: *s.plan,
            paid: *s.paid,
        })
    }

    fn cancel_paused(
        s: sub::PausedRef<'_>,
        _: billing::Cancel,
        fx: &mut Fx,
    ) -> Result<sub::Cancelled, Refusal> {
        fx.push(Mail::Goodbye);
        Ok(sub::Cancelled { paid: *s.paid })
    }
}

fn event() -> impl Strategy<Value = Billing> {
    prop_oneof![
        (0u8..4).prop_map(|plan| Billing::Start { plan }),
        (0u32..3).prop_map(|cents| Billing::Charge { cents }),
        Just(Billing::Decline),
        Just(Billing::Retry),
        (0u8..4).prop_map(|plan| Billing::Upgrade { plan }),
        Just(Billing::Pause),
        Just(Billing::Resume),
        Just(Billing::Cancel),
        Just(Billing::Expire),
        (0u32..3).prop_map(|cents| Billing::Refund { cents }),
        Just(Billing::Reactivate),
        Just(Billing::Close),
    ]
}

/// What a step did, in words both machines share: the state's name, the effects, or why not.
fn step<M: StateMachine<Event = Billing, Effect = Mail> + std::fmt::Debug>(
    m: &mut M,
    ev: Billing,
) -> (String, Result<Vec<Mail>, String>) {
    let done = m
        .apply(ev)
        .map(|a| a.effects.into_vec())
        .map_err(|r| r.to_string());
    (format!("{m:?}"), done)
}

proptest! {
    #[test]
    fn both_forms_behave_alike(events in proptest::collection::vec(event(), 0..60)) {
        let (mut a, mut b) = (impls::Sub::Pending, functions::Sub::Pending);
        for ev in events {
            let (sa, ra) = step(&mut a, ev.clone());
            let (sb, rb) = step(&mut b, ev);
            prop_assert_eq!(sa, sb);
            prop_assert_eq!(ra, rb);
        }
    }
}

#[test]
fn the_sequences_reach_every_state() {
    // A sequence that visits each state, so the property above is not trivially true.
    let mut b = functions::Sub::Pending;
    let mut seen = std::collections::BTreeSet::new();
    for ev in [
        Billing::Start { plan: 1 },
        Billing::Charge { cents: 2 },
        Billing::Upgrade { plan: 2 },
        Billing::Refund { cents: 1 },
        Billing::Pause,
        Billing::Resume,
        Billing::Decline,
        Billing::Retry,
        Billing::Expire,
        Billing::Reactivate,
        Billing::Start { plan: 1 },
        Billing::Charge { cents: 1 },
        Billing::Cancel,
        Billing::Close,
    ] {
        b.apply(ev).unwrap();
        seen.insert(b.state_name());
    }
    assert_eq!(seen.len(), 8, "{seen:?}");
    let _ = Effects::<Mail>::new();
}
