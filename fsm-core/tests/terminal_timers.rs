//! Entering a terminal state cancels every timer: a dunning reminder armed by a handler and a
//! state timeout, both gone after a `plain` cancel into a terminal state, in memory and in the
//! snapshot, so nothing fires into the state that takes no event.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use fsm_core::kernel::Kernel;
use fsm_core::queue::ManualClock;
use fsm_core::store::{MachineId, MemoryStore, SnapshotStore};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = Cmd)]
pub enum Sub {
    #[fsm(initial, on(Lapse => PastDue))]
    Active,
    #[fsm(
        on(Remind => PastDue),
        on(Cancel => Cancelled, plain),
        on(GiveUp => Cancelled, plain),
        state_timeout(ms = 60000 => GiveUp)
    )]
    PastDue,
    #[fsm(terminal)]
    Cancelled,
}

#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cmd {
    Lapse,
    Remind,
    Cancel,
    GiveUp,
}

fn remind_daily(fx: &mut Effects<()>) {
    fx.start_timer("dunning", Duration::from_secs(86_400), Cmd::Remind);
}

impl Handler<cmd::Lapse, sub::PastDue> for sub::Active {
    fn handle(
        _: sub::Active,
        _: cmd::Lapse,
        fx: &mut Effects<()>,
    ) -> Result<sub::PastDue, Refusal> {
        remind_daily(fx);
        Ok(sub::PastDue)
    }
}

impl Handler<cmd::Remind, sub::PastDue> for sub::PastDue {
    fn handle(
        _: sub::PastDue,
        _: cmd::Remind,
        fx: &mut Effects<()>,
    ) -> Result<sub::PastDue, Refusal> {
        remind_daily(fx);
        Ok(sub::PastDue)
    }
}

#[test]
fn entering_a_terminal_state_cancels_every_timer() {
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let clock = ManualClock::new();
    let kernel = Kernel::builder_shared(store.clone(), |_| Sub::Active)
        .shards(1)
        .clock(clock.clock())
        .timer_events()
        .start()
        .unwrap();
    let m = MachineId::new("sub-1").unwrap();
    kernel.submit(&m, Cmd::Lapse).unwrap().wait().unwrap();
    assert!(
        store.get(&m).unwrap().timers().is_some(),
        "the reminder and the state timeout are armed"
    );
    kernel.submit(&m, Cmd::Cancel).unwrap().wait().unwrap();
    assert_eq!(
        store.get(&m).unwrap().timers(),
        None,
        "nothing is armed any more"
    );
    // Two days later: neither the reminder nor the state timeout fires into `Cancelled`.
    clock.advance(Duration::from_secs(2 * 86_400));
    assert_eq!(kernel.fire_due_timers(), 0);
    kernel.wait_idle();
    let counts = kernel.metrics().total.counts;
    assert_eq!((counts.timers_fired, counts.rejected), (0, 0));
    assert_eq!(kernel.state(&m).unwrap().0, Sub::Cancelled);
}
