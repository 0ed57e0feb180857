//! Restore is invisible: a run in which the machine and its armed timers are stored and
//! loaded again at random moments (as the kernel does across a restart) reaches the same
//! states, emits the same effects and fires the same timers at the same moments as the same
//! run without the restarts. Checked over every hierarchy configuration: a flat machine here,
//! three levels here (timeouts on two of them, a transition declared for every state, local
//! and re-entering transitions, hooks, named timers and event timeouts), and one superstate
//! with a deadline in `hierarchy.rs` (its checkout). The two machines at the end break it on
//! purpose, and the check says where.
#![allow(missing_docs)]

use std::time::Duration;

use fsm_core::testing::{Checker, Failure, Input, Property};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------- three levels

/// A plant: `Online` holds `Warming` and `Running`, which holds three states. `Online` must
/// hand over within 5 s, `Running` is checked every 1.5 s (a re-entering self-transition that
/// arms its timeout anew), a scram is declared once for every state.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(
    event = Ev,
    effect = String,
    on(Scram => Shutdown, plain),
    superstate(
        Online,
        initial = Warming,
        state_timeout(ms = 5000 => Shift),
        on(Shift => Handover, plain),
        enter = online_in,
        exit = online_out
    ),
    superstate(
        Running,
        parent = Online,
        initial = Steady,
        state_timeout(ms = 1500 => Check),
        on(Check => Running, plain),
        on(Nudge => Trimmed, plain, local),
        enter = running_in,
        exit = running_out
    )
)]
pub enum Plant {
    #[fsm(initial, parent = Online, on(Ready => Running, plain), state_timeout(ms = 700 => Ready))]
    Warming,
    #[fsm(parent = Running, on(Load => Loaded))]
    Steady,
    #[fsm(parent = Running, on(Ramp => Loaded), on(Unload => Steady, plain), exit = loaded_out)]
    Loaded { steps: u32 },
    #[fsm(parent = Running, on(Untrim => Steady, plain), state_timeout(ms = 300 => Untrim))]
    Trimmed,
    #[fsm(on(Resume => Online, plain))]
    Handover,
    #[fsm(terminal)]
    Shutdown,
}

#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ev {
    Ready,
    Load { ramp_ms: u16 },
    Ramp { step: u8 },
    Unload,
    Check,
    Nudge,
    Untrim,
    Shift,
    Resume,
    Scram,
}

fn online_in(fx: &mut Effects<String>) {
    fx.push("online".into());
}

fn online_out(fx: &mut Effects<String>) {
    fx.push("offline".into());
}

fn running_in(fx: &mut Effects<String>) {
    fx.push("running".into());
}

fn running_out(fx: &mut Effects<String>) {
    fx.push("stopped".into());
}

fn loaded_out(s: plant::LoadedRef<'_>, fx: &mut Effects<String>) {
    fx.push(format!("unloaded after {} steps", s.steps));
}

impl Handler<ev::Load, plant::Loaded> for plant::Steady {
    fn handle(
        _: plant::Steady,
        e: ev::Load,
        fx: &mut Effects<String>,
    ) -> Result<plant::Loaded, Refusal> {
        if e.ramp_ms == 0 {
            return Err(Refusal::new("a ramp takes time"));
        }
        // A named timer with an event that carries data, stored with the machine.
        fx.start_timer(
            "ramp",
            Duration::from_millis(e.ramp_ms.into()),
            Ev::Ramp { step: 1 },
        );
        fx.push(format!("load, ramp every {} ms", e.ramp_ms));
        Ok(plant::Loaded { steps: 0 })
    }
}

impl Handler<ev::Ramp, plant::Loaded> for plant::Loaded {
    fn handle(
        s: plant::LoadedRef<'_>,
        e: ev::Ramp,
        fx: &mut Effects<String>,
    ) -> Result<plant::Loaded, Refusal> {
        fx.push(format!("ramp {}", e.step));
        if e.step < 4 {
            fx.start_timer(
                "ramp",
                Duration::from_millis(250),
                Ev::Ramp { step: e.step + 1 },
            );
        } else {
            // Ramped up: unload unless something else happens first.
            fx.event_timeout(Duration::from_millis(400), Ev::Unload);
        }
        Ok(plant::Loaded { steps: s.steps + 1 })
    }
}

fn ms<E>(n: u64) -> Input<E> {
    Input::Elapse(Duration::from_millis(n))
}

#[test]
fn three_levels_of_superstates_restore_invisibly_under_random_runs() {
    for start in [Plant::Warming, Plant::Steady, Plant::Loaded { steps: 2 }] {
        let coverage = Checker::<Plant>::new()
            .snapshots()
            .restores()
            .run_timed(start.clone())
            .unwrap_or_else(|f| panic!("from {start:?}: {f}"));
        assert!(coverage.is_enough(0.8), "from {start:?}: {coverage}");
    }
}

#[test]
fn a_restart_inside_the_superstates_keeps_every_deadline() {
    let checker = Checker::<Plant>::new().restores();
    let run = checker
        .check_timed(
            &Plant::Warming,
            [
                ms(700), // Ready fires: into Running, its check armed for 2200, Online's at 5000
                Input::Restore,
                Input::Event(Ev::Load { ramp_ms: 100 }), // ramp at 800
                ms(50),
                Input::Restore,
                ms(700), // to 1450: ramps at 800, 1050 and 1300, the fourth armed for 1550
                Input::Restore,
                Input::Event(Ev::Nudge), // local: Running's check (2200) stays
                Input::Restore,
                // To 3450: the fourth ramp at 1550 (Trimmed takes no Ramp: rejected), Untrim
                // at 1750, the check at 2200 (Running entered again: the next at 3700).
                ms(2000),
                Input::Restore,
                ms(2000), // to 5450: the check at 3700, Shift at 5000 into Handover
                Input::Restore,
                Input::Event(Ev::Resume), // Online again: Warming's Ready due at 6150
                Input::Restore,
                ms(700),
                Input::Event(Ev::Scram),
            ],
        )
        .unwrap();
    assert_eq!(run.restored, 7);
    // Ready, four ramps, Untrim, two checks, Shift, and Ready after the resume.
    assert_eq!(run.fired, 10, "{run:?}");
}

// ---------------------------------------------------------------- flat

/// A flat machine with a state timeout, a named timer and an event timeout.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = Beat, effect = u32)]
pub enum Pacer {
    #[fsm(initial, on(Pulse => Sensing), on(Missed => Pacing), state_timeout(ms = 1200 => Missed))]
    Sensing,
    #[fsm(on(Pulse => Sensing, plain), on(Missed => Pacing), state_timeout(ms = 800 => Missed))]
    Pacing { paced: u32 },
}

#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Beat {
    Pulse { hold_ms: u16 },
    Missed,
}

impl Handler<beat::Pulse, pacer::Sensing> for pacer::Sensing {
    fn handle(
        _: pacer::Sensing,
        e: beat::Pulse,
        fx: &mut Effects<u32>,
    ) -> Result<pacer::Sensing, Refusal> {
        fx.restart_state_timeout();
        if e.hold_ms > 0 {
            fx.event_timeout(Duration::from_millis(e.hold_ms.into()), Beat::Missed);
        }
        Ok(pacer::Sensing)
    }
}

impl Handler<beat::Missed, pacer::Pacing> for pacer::Pacing {
    fn handle(
        s: pacer::PacingRef<'_>,
        _: beat::Missed,
        fx: &mut Effects<u32>,
    ) -> Result<pacer::Pacing, Refusal> {
        fx.restart_state_timeout();
        fx.push(*s.paced + 1);
        Ok(pacer::Pacing {
            paced: *s.paced + 1,
        })
    }
}

impl Handler<beat::Missed, pacer::Pacing> for pacer::Sensing {
    fn handle(
        _: pacer::Sensing,
        _: beat::Missed,
        fx: &mut Effects<u32>,
    ) -> Result<pacer::Pacing, Refusal> {
        fx.start_timer(
            "alarm",
            Duration::from_millis(3000),
            Beat::Pulse { hold_ms: 0 },
        );
        Ok(pacer::Pacing { paced: 0 })
    }
}

#[test]
fn a_flat_machine_restores_invisibly_under_random_runs() {
    let coverage = Checker::<Pacer>::new()
        .snapshots()
        .restores()
        .run_timed(Pacer::Sensing)
        .unwrap();
    assert!(coverage.missed().is_empty(), "{coverage}");
}

// ---------------------------------------------------------------- broken on purpose

/// A counter whose label is not stored (`serde(skip)`), and whose equality ignores it: a
/// restart is invisible to a comparison of states, and shows in what it emits afterwards.
#[derive(StateMachine, Debug, Clone, Serialize, Deserialize)]
#[fsm(event = Tick, effect = String)]
pub enum Labelled {
    #[fsm(initial, on(Name => Counting))]
    Blank,
    #[fsm(on(Count => Counting))]
    Counting {
        n: u32,
        #[serde(skip)]
        label: String,
    },
}

impl PartialEq for Labelled {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Labelled::Blank, Labelled::Blank) => true,
            (Labelled::Counting { n: a, .. }, Labelled::Counting { n: b, .. }) => a == b,
            _ => false,
        }
    }
}

#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tick {
    Name,
    Count,
}

impl Handler<tick::Name, labelled::Counting> for labelled::Blank {
    fn handle(
        _: labelled::Blank,
        _: tick::Name,
        _: &mut Effects<String>,
    ) -> Result<labelled::Counting, Refusal> {
        Ok(labelled::Counting {
            n: 0,
            label: "boiler".into(),
        })
    }
}

impl Handler<tick::Count, labelled::Counting> for labelled::Counting {
    fn handle(
        s: labelled::CountingRef<'_>,
        _: tick::Count,
        fx: &mut Effects<String>,
    ) -> Result<labelled::Counting, Refusal> {
        fx.push(format!("{} {}", s.label, s.n + 1));
        Ok(labelled::Counting {
            n: s.n + 1,
            label: s.label.clone(),
        })
    }
}

#[test]
fn a_field_the_snapshot_forgets_shows_in_the_effects_after_a_restart() {
    let v = Checker::<Labelled>::new()
        .restores()
        .check_timed(
            &Labelled::Blank,
            [
                Input::Event(Tick::Name),
                Input::Event(Tick::Count),
                Input::Restore,
                Input::Event(Tick::Count),
            ],
        )
        .unwrap_err();
    assert_eq!(v.property, Property::RestoreIsInvisible, "{v}");
    assert_eq!(
        v.steps.len(),
        4,
        "caught at the step after the restart: {v}"
    );
    assert_eq!(v.steps[2].event, "<restart>", "{v}");
    assert!(
        v.detail
            .contains(r#"emitted [" 2"] where the run without emitted ["boiler 2"]"#),
        "{v}"
    );
    // And proptest finds it on its own, shrunk to a name, a restart and a count.
    let failure = Checker::<Labelled>::new()
        .restores()
        .run_timed(Labelled::Blank)
        .unwrap_err();
    let Failure::Violated(v) = failure else {
        panic!("{failure}")
    };
    assert_eq!(v.property, Property::RestoreIsInvisible, "{v}");
    assert_eq!(v.steps.len(), 3, "{v}");
}

/// A state whose data does not survive its snapshot at all.
#[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[fsm(event = Tick)]
pub enum Forgetful {
    #[fsm(initial, on(Name => Named))]
    Blank,
    #[fsm(on(Count => Named))]
    Named {
        #[serde(skip)]
        name: String,
    },
}

impl Handler<tick::Name, forgetful::Named> for forgetful::Blank {
    fn handle(
        _: forgetful::Blank,
        _: tick::Name,
        _: &mut Effects<()>,
    ) -> Result<forgetful::Named, Refusal> {
        Ok(forgetful::Named {
            name: "kept?".into(),
        })
    }
}

impl Handler<tick::Count, forgetful::Named> for forgetful::Named {
    fn handle(
        s: forgetful::NamedRef<'_>,
        _: tick::Count,
        _: &mut Effects<()>,
    ) -> Result<forgetful::Named, Refusal> {
        Ok(forgetful::Named {
            name: s.name.clone(),
        })
    }
}

#[test]
fn a_state_that_does_not_come_back_from_its_snapshot_is_caught_at_the_restart() {
    let v = Checker::<Forgetful>::new()
        .restores()
        .check_timed(
            &Forgetful::Blank,
            [Input::Event(Tick::Name), Input::Restore],
        )
        .unwrap_err();
    assert_eq!(v.property, Property::RestoreIsInvisible, "{v}");
    assert!(
        v.detail
            .contains(r#"Named { name: "kept?" } was stored and Named { name: "" } was loaded"#),
        "{v}"
    );
}

#[test]
fn a_restart_without_restores_is_a_mistake_that_says_what_to_call() {
    let v = Checker::<Plant>::new()
        .check_timed(&Plant::Warming, [Input::Restore])
        .unwrap_err();
    assert_eq!(v.property, Property::RestoreIsInvisible);
    assert!(v.detail.contains("Checker::restores()"), "{v}");
}
