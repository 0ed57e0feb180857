use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};

#[derive(Event, Debug)]
enum Cmd {
    Go,
    Stop,
}

#[derive(StateMachine, Debug)]
#[fsm(event = Cmd)]
enum M {
    #[fsm(initial, on(Go => B))]
    A,
    #[fsm(terminal)]
    B,
}

impl Handler<cmd::Go, m::B> for m::A {
    fn handle(_: m::A, _: cmd::Go, _: &mut Effects<()>) -> Result<m::B, Refusal> {
        Ok(m::B)
    }
}

fn main() {
    // `A` declares only `Go`: there is no `stop` method on it.
    let _ = m::A.stop(cmd::Stop);
    // `B` is terminal: it has no transition methods at all.
    let b = m::A.go(cmd::Go).unwrap().state;
    let _ = b.go(cmd::Go);
}
