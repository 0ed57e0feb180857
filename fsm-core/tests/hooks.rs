//! Enter and exit hooks: the order exit, handler, enter; none on a self-transition unless it is
//! marked `reenter`; nothing of them survives a rejection; the typestate path runs them too;
//! restoring a snapshot runs none; and the property check holds for a machine with hooks.
#![allow(missing_docs)]

use std::sync::{Arc, Mutex};

use fsm_core::kernel::{EffectCtx, EffectError, EffectWorker, Kernel, Shutdown};
use fsm_core::store::{MachineId, MemoryStore, SnapshotStore};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = Door, effect = String)]
pub enum Room {
    #[fsm(initial, on(Enter => Inside), on(Knock => Outside), exit = leave_outside, enter = arrive_outside)]
    Outside,
    #[fsm(
        on(Leave => Outside, plain), on(Stay => Inside), on(Refresh => Inside, reenter),
        on(Shout => Inside),
        enter = arrive_inside, exit = leave_inside, validate = not_too_loud
    )]
    Inside { noise: u8 },
}

#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Door {
    Enter { key: bool },
    Leave,
    Stay,
    Refresh,
    Knock,
    Shout { loud: u8 },
}

fn leave_outside(_: room::Outside, fx: &mut Effects<String>) {
    fx.push("exit Outside".into());
}
fn arrive_outside(_: room::Outside, fx: &mut Effects<String>) {
    fx.push("enter Outside".into());
}
fn arrive_inside(s: room::InsideRef<'_>, fx: &mut Effects<String>) {
    fx.push(format!("enter Inside (noise {})", s.noise));
}
fn leave_inside(_: room::InsideRef<'_>, fx: &mut Effects<String>) {
    fx.push("exit Inside".into());
}
fn not_too_loud(s: room::InsideRef<'_>) -> Result<(), Refusal> {
    if *s.noise > 9 {
        Err(Refusal::new("too loud"))
    } else {
        Ok(())
    }
}

impl Handler<door::Enter, room::Inside> for room::Outside {
    fn handle(
        _: room::Outside,
        e: door::Enter,
        fx: &mut Effects<String>,
    ) -> Result<room::Inside, Refusal> {
        if !e.key {
            return Err(Refusal::new("no key"));
        }
        fx.push("open the door".into());
        Ok(room::Inside { noise: 1 })
    }
}
impl Handler<door::Knock, room::Outside> for room::Outside {
    fn handle(
        _: room::Outside,
        _: door::Knock,
        fx: &mut Effects<String>,
    ) -> Result<room::Outside, Refusal> {
        fx.push("knock".into());
        Ok(room::Outside)
    }
}
impl Handler<door::Stay, room::Inside> for room::Inside {
    fn handle(
        s: room::InsideRef<'_>,
        _: door::Stay,
        _: &mut Effects<String>,
    ) -> Result<room::Inside, Refusal> {
        Ok(room::Inside { noise: *s.noise })
    }
}
impl Handler<door::Refresh, room::Inside> for room::Inside {
    fn handle(
        _: room::InsideRef<'_>,
        _: door::Refresh,
        fx: &mut Effects<String>,
    ) -> Result<room::Inside, Refusal> {
        fx.push("refresh".into());
        Ok(room::Inside { noise: 0 })
    }
}
impl Handler<door::Shout, room::Inside> for room::Inside {
    fn handle(
        s: room::InsideRef<'_>,
        e: door::Shout,
        fx: &mut Effects<String>,
    ) -> Result<room::Inside, Refusal> {
        fx.push("shout".into());
        Ok(room::Inside {
            noise: s.noise.saturating_add(e.loud),
        })
    }
}

fn effects(room: &mut Room, door: Door) -> Vec<String> {
    room.apply(door).unwrap().effects.into_vec()
}

#[test]
fn hooks_run_in_the_order_exit_handler_enter_on_a_state_change() {
    let mut r = Room::Outside;
    assert_eq!(
        effects(&mut r, Door::Enter { key: true }),
        ["exit Outside", "open the door", "enter Inside (noise 1)"]
    );
    // A plain transition runs the hooks too.
    assert_eq!(
        effects(&mut r, Door::Leave),
        ["exit Inside", "enter Outside"]
    );
}

#[test]
fn a_self_transition_runs_no_hook_unless_marked_reenter() {
    let mut r = Room::Outside;
    assert_eq!(effects(&mut r, Door::Knock), ["knock"]);
    r.apply(Door::Enter { key: true }).unwrap();
    assert!(effects(&mut r, Door::Stay).is_empty());
    assert_eq!(
        effects(&mut r, Door::Refresh),
        ["exit Inside", "refresh", "enter Inside (noise 0)"]
    );
}

#[test]
fn a_rejected_event_runs_no_hook_and_leaves_the_state() {
    let mut r = Room::Outside;
    let mut fx = Effects::new();
    // The guard refuses after the exit hook ran: its effect is rewound with the rest.
    assert!(r.apply_into(Door::Enter { key: false }, &mut fx).is_err());
    assert!(fx.is_empty());
    assert_eq!(r, Room::Outside);
    r.apply(Door::Enter { key: true }).unwrap();
    // The target's invariant refuses: nothing of the transition stays.
    assert!(r.apply_into(Door::Shout { loud: 20 }, &mut fx).is_err());
    assert!(fx.is_empty());
    assert_eq!(r, Room::Inside { noise: 1 });
}

#[test]
fn the_typestate_path_runs_the_same_hooks() {
    let next = room::Outside.enter(door::Enter { key: true }).unwrap();
    assert_eq!(
        next.effects.into_vec(),
        ["exit Outside", "open the door", "enter Inside (noise 1)"]
    );
    let back = next.state.leave(door::Leave).unwrap();
    assert_eq!(back.effects.into_vec(), ["exit Inside", "enter Outside"]);
}

#[test]
fn a_machine_with_hooks_holds_every_property() {
    fsm_core::testing::check_machine(Room::Outside);
}

struct Recorder(Arc<Mutex<Vec<String>>>);

impl EffectWorker<Room> for Recorder {
    fn run(&mut self, _: &EffectCtx, fx: &String) -> Result<Option<Door>, EffectError> {
        self.0.lock().unwrap().push(fx.clone());
        Ok(None)
    }
}

#[test]
fn restoring_a_snapshot_runs_no_enter_hook() {
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let id = MachineId::new("room").unwrap();
    let start = |seen: &Arc<Mutex<Vec<String>>>| {
        let seen = seen.clone();
        Kernel::builder_shared(store.clone(), |_| Room::Outside)
            .shards(1)
            .effects(1, move |_| Recorder(seen.clone()))
            .start()
            .unwrap()
    };
    let kernel = start(&seen);
    kernel
        .submit(&id, Door::Enter { key: true })
        .unwrap()
        .wait()
        .unwrap();
    kernel.shutdown(Shutdown::Drain);
    assert_eq!(seen.lock().unwrap().len(), 3);
    // A restart recovers the machine Inside: its enter hook ran when it was entered, and its
    // effects (a door opened, a light switched on) must not run again.
    let kernel = start(&seen);
    assert_eq!(kernel.recovery().recovered, 1);
    assert_eq!(kernel.state(&id).unwrap().0, Room::Inside { noise: 1 });
    kernel.submit(&id, Door::Stay).unwrap().wait().unwrap();
    kernel.shutdown(Shutdown::Drain);
    assert_eq!(
        *seen.lock().unwrap(),
        ["exit Outside", "open the door", "enter Inside (noise 1)"]
    );
}
