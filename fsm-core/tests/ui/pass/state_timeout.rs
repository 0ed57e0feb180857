use std::time::Duration;

use fsm_core::{Effects, Event, Handler, Refusal, StateMachine, StateId};

#[derive(Event, Debug, Clone, PartialEq)]
enum Beat {
    Pulse,
    Missed,
}

#[derive(StateMachine, Debug, Clone, PartialEq)]
#[fsm(event = Beat)]
enum Pacer {
    #[fsm(initial, on(Pulse => Sensing), on(Missed => Pacing), state_timeout(ms = 1200 => Missed))]
    Sensing,
    #[fsm(on(Pulse => Sensing), on(Missed => Pacing), state_timeout(s = 1 => Missed))]
    Pacing,
}

impl Handler<beat::Pulse, pacer::Sensing> for pacer::Sensing {
    fn handle(_: pacer::Sensing, _: beat::Pulse, fx: &mut Effects<()>) -> Result<pacer::Sensing, Refusal> {
        fx.restart_state_timeout();
        Ok(pacer::Sensing)
    }
}
impl Handler<beat::Missed, pacer::Pacing> for pacer::Sensing {
    fn handle(_: pacer::Sensing, _: beat::Missed, _: &mut Effects<()>) -> Result<pacer::Pacing, Refusal> {
        Ok(pacer::Pacing)
    }
}
impl Handler<beat::Pulse, pacer::Sensing> for pacer::Pacing {
    fn handle(_: pacer::Pacing, _: beat::Pulse, _: &mut Effects<()>) -> Result<pacer::Sensing, Refusal> {
        Ok(pacer::Sensing)
    }
}
impl Handler<beat::Missed, pacer::Pacing> for pacer::Pacing {
    fn handle(_: pacer::Pacing, _: beat::Missed, fx: &mut Effects<()>) -> Result<pacer::Pacing, Refusal> {
        fx.restart_state_timeout();
        fx.start_timer("log", Duration::from_secs(60), Beat::Pulse);
        Ok(pacer::Pacing)
    }
}

fn main() {
    let sensing = Pacer::TABLE.state(StateId::new(0)).unwrap().state_timeout().unwrap();
    assert_eq!(sensing.after_ms, 1200);
    assert_eq!(Pacer::timeout_event(StateId::new(1)), Some(Beat::Missed));
    assert!(Pacer::TABLE.to_mermaid().contains("Sensing --> Pacing : after 1200 ms / Missed"));
    let mut p = Pacer::Pacing;
    let applied = p.apply(Beat::Missed).unwrap();
    assert_eq!(applied.effects.timers().len(), 2);
}
