use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};

#[derive(Event, Debug, Clone, PartialEq)]
enum Cmd {
    Start,
    Pause,
    Resume,
    Fail,
    Stop,
    Retry { attempts: u32 },
}

// Six unit states, plain transitions everywhere but one that builds data: one handler in all.
#[derive(StateMachine, Debug, Clone, PartialEq)]
#[fsm(event = Cmd)]
enum Job {
    #[fsm(initial, on(Start => Running, plain), on(Stop => Stopped, plain))]
    Idle,
    #[fsm(on(Pause => Paused, plain), on(Fail => Failed, plain), on(Stop => Stopped, plain))]
    Running,
    #[fsm(on(Resume | Start => Running, plain), on(Stop => Stopped, plain))]
    Paused,
    #[fsm(on(Retry => Retrying), on(Stop => Stopped, plain))]
    Failed,
    #[fsm(on(Start => Running, plain), on(Stop => Stopped, plain))]
    Retrying { attempts: u32 },
    #[fsm(terminal)]
    Stopped,
}

impl Handler<cmd::Retry, job::Retrying> for job::Failed {
    fn handle(_: job::Failed, e: cmd::Retry, _: &mut Effects<()>) -> Result<job::Retrying, Refusal> {
        Ok(job::Retrying { attempts: e.attempts })
    }
}

fn main() {
    let mut j = Job::Idle;
    for cmd in [Cmd::Start, Cmd::Pause, Cmd::Resume, Cmd::Fail, Cmd::Retry { attempts: 2 }, Cmd::Start, Cmd::Stop] {
        j.apply(cmd).unwrap();
    }
    assert_eq!(j, Job::Stopped);
    assert!(Job::Idle.apply(Cmd::Pause).is_err());
    // The typestate methods exist for plain transitions too.
    let running = job::Idle.start(cmd::Start).unwrap().into_state();
    let _paused: job::Paused = running.pause(cmd::Pause).unwrap().into_state();
}
