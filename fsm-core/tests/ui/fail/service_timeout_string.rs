// A service's machine as a user writes it (handlers, hooks, a state timeout, a named timer, a
// kernel, typed calls), with a string where a duration
// goes: one error, at the string, saying what is accepted.
use std::time::Duration;

use fsm_core::kernel::Kernel;
use fsm_core::store::{MachineId, MemoryStore};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

const TRIAL_MS: u64 = 14 * 24 * 60 * 60 * 1000;

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = Billing, effect = Mail)]
enum Subscription {
    #[fsm(initial, state_timeout(ms = 60_000 => Expire), on(Start => Trial), on(Expire => Closed, plain))]
    Pending,
    #[fsm(state_timeout(ms = "two weeks" => TrialEnded), on(Pay => Active), on(TrialEnded => PastDue, plain), enter = welcome)]
    Trial { plan: String },
    #[fsm(on(Pay => Active), on(Refund => Active), on(Cancel => Closed, plain), exit = goodbye)]
    Active { plan: String, paid_cents: u64 },
    #[fsm(on(Pay => Active), on(Cancel => Closed, plain), validate = past_due_ok)]
    PastDue,
    #[fsm(terminal)]
    Closed,
}

#[derive(Event, Debug, Clone, Serialize, Deserialize)]
enum Billing {
    Start { plan: String },
    Pay { cents: u64 },
    Refund { cents: u64 },
    Cancel,
    Expire,
    TrialEnded,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Mail {
    Welcome,
    Goodbye,
    Receipt(u64),
}

fn welcome(_: subscription::TrialRef<'_>, fx: &mut Effects<Mail>) {
    fx.push(Mail::Welcome);
}

fn goodbye(_: subscription::ActiveRef<'_>, fx: &mut Effects<Mail>) {
    fx.push(Mail::Goodbye);
}

fn past_due_ok(_: subscription::PastDue) -> Result<(), Refusal> {
    Ok(())
}

impl Handler<billing::Start, subscription::Trial> for subscription::Pending {
    fn handle(_: subscription::Pending, ev: billing::Start, fx: &mut Effects<Mail>) -> Result<subscription::Trial, Refusal> {
        fx.start_timer("reminder", Duration::from_millis(TRIAL_MS / 2), Billing::Cancel);
        Ok(subscription::Trial { plan: ev.plan })
    }
}

impl Handler<billing::Pay, subscription::Active> for subscription::Trial {
    fn handle(s: subscription::TrialRef<'_>, ev: billing::Pay, fx: &mut Effects<Mail>) -> Result<subscription::Active, Refusal> {
        fx.push(Mail::Receipt(ev.cents));
        Ok(subscription::Active { plan: s.plan.clone(), paid_cents: ev.cents })
    }
}

impl Handler<billing::Pay, subscription::Active> for subscription::Active {
    fn handle(s: subscription::ActiveRef<'_>, ev: billing::Pay, _: &mut Effects<Mail>) -> Result<subscription::Active, Refusal> {
        Ok(subscription::Active { plan: s.plan.clone(), paid_cents: s.paid_cents + ev.cents })
    }
}

impl Handler<billing::Refund, subscription::Active> for subscription::Active {
    fn handle(s: subscription::ActiveRef<'_>, ev: billing::Refund, _: &mut Effects<Mail>) -> Result<subscription::Active, Refusal> {
        let left = s.paid_cents.checked_sub(ev.cents).ok_or(Refusal::new("refund above what was paid"))?;
        Ok(subscription::Active { plan: s.plan.clone(), paid_cents: left })
    }
}

impl Handler<billing::Pay, subscription::Active> for subscription::PastDue {
    fn handle(_: subscription::PastDue, ev: billing::Pay, _: &mut Effects<Mail>) -> Result<subscription::Active, Refusal> {
        Ok(subscription::Active { plan: "basic".into(), paid_cents: ev.cents })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kernel = Kernel::builder(MemoryStore::new(), |_| Subscription::Pending).start()?;
    let id = MachineId::new("sub-1")?;
    kernel.submit(&id, Billing::Start { plan: "pro".into() })?.wait()?;
    kernel.submit(&id, Billing::Pay { cents: 1_200 })?.wait()?;
    let trial = subscription::Pending.start(billing::Start { plan: "pro".into() })?.state;
    let _active = trial.pay(billing::Pay { cents: 100 })?.state;
    Ok(())
}
