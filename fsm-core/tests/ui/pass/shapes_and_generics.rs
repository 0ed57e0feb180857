//! Unit, tuple and struct-like states; a machine generic over a type and one over a lifetime;
//! `A | B => T`; a self-transition; an invariant on a generic state.

use fsm_core::{Effects, Event, Handler, Refusal, StateMachine, TypedState};

#[derive(Event, Debug)]
enum JobCmd<T> {
    Start(T),
    Tick { by: u32 },
    Finish,
    Abort,
}

#[derive(StateMachine, Debug, PartialEq)]
#[fsm(event = JobCmd<T>, effect = String)]
enum Job<T: Clone + std::fmt::Debug> {
    #[fsm(initial, on(Start => Running), on(Abort => Done))]
    Idle,
    #[fsm(on(Tick => Running), on(Finish | Abort => Done), validate = progress_bounded)]
    Running(T, u32),
    #[fsm(terminal)]
    Done,
}

fn progress_bounded<T: Clone + std::fmt::Debug>(s: job::RunningRef<'_, T>) -> Result<(), Refusal> {
    if *s.1 <= 100 {
        Ok(())
    } else {
        Err(Refusal::new("progress above 100"))
    }
}

impl<T: Clone + std::fmt::Debug> Handler<job_cmd::Start<T>, job::Running<T>> for job::Idle<T> {
    fn handle(
        _: job::Idle<T>,
        ev: job_cmd::Start<T>,
        fx: &mut Effects<String>,
    ) -> Result<job::Running<T>, Refusal> {
        fx.push(format!("started {:?}", ev.0));
        Ok(job::Running(ev.0, 0, std::marker::PhantomData))
    }
}

impl<T: Clone + std::fmt::Debug> Handler<job_cmd::Abort<T>, job::Done<T>> for job::Idle<T> {
    fn handle(_: job::Idle<T>, _: job_cmd::Abort<T>, _: &mut Effects<String>) -> Result<job::Done<T>, Refusal> {
        Ok(job::Done(std::marker::PhantomData))
    }
}

impl<T: Clone + std::fmt::Debug> Handler<job_cmd::Tick<T>, job::Running<T>> for job::Running<T> {
    fn handle(
        s: job::RunningRef<'_, T>,
        ev: job_cmd::Tick<T>,
        _: &mut Effects<String>,
    ) -> Result<job::Running<T>, Refusal> {
        Ok(job::Running(s.0.clone(), s.1 + ev.by, std::marker::PhantomData))
    }
}

impl<T: Clone + std::fmt::Debug> Handler<job_cmd::Finish<T>, job::Done<T>> for job::Running<T> {
    fn handle(_: job::RunningRef<'_, T>, _: job_cmd::Finish<T>, _: &mut Effects<String>) -> Result<job::Done<T>, Refusal> {
        Ok(job::Done(std::marker::PhantomData))
    }
}

impl<T: Clone + std::fmt::Debug> Handler<job_cmd::Abort<T>, job::Done<T>> for job::Running<T> {
    fn handle(_: job::RunningRef<'_, T>, _: job_cmd::Abort<T>, _: &mut Effects<String>) -> Result<job::Done<T>, Refusal> {
        Ok(job::Done(std::marker::PhantomData))
    }
}

// A machine over borrowed data.
#[derive(Event, Debug)]
enum Feed<'a> {
    Word(&'a str),
    End,
}

#[derive(StateMachine, Debug)]
#[fsm(event = Feed<'a>)]
enum Reader<'a> {
    #[fsm(initial, on(Word => Reading))]
    Empty,
    #[fsm(on(Word => Reading), on(End => Closed))]
    Reading { last: &'a str, count: usize },
    #[fsm(terminal)]
    Closed,
}

impl<'a> Handler<feed::Word<'a>, reader::Reading<'a>> for reader::Empty<'a> {
    fn handle(_: reader::Empty<'a>, ev: feed::Word<'a>, _: &mut Effects<()>) -> Result<reader::Reading<'a>, Refusal> {
        Ok(reader::Reading { last: ev.0, count: 1, __marker: std::marker::PhantomData })
    }
}

impl<'a> Handler<feed::Word<'a>, reader::Reading<'a>> for reader::Reading<'a> {
    fn handle(s: reader::ReadingRef<'_, 'a>, ev: feed::Word<'a>, _: &mut Effects<()>) -> Result<reader::Reading<'a>, Refusal> {
        Ok(reader::Reading { last: ev.0, count: s.count + 1, __marker: std::marker::PhantomData })
    }
}

impl<'a> Handler<feed::End<'a>, reader::Closed<'a>> for reader::Reading<'a> {
    fn handle(_: reader::ReadingRef<'_, 'a>, _: feed::End<'a>, _: &mut Effects<()>) -> Result<reader::Closed<'a>, Refusal> {
        Ok(reader::Closed(std::marker::PhantomData))
    }
}

fn main() {
    let mut j: Job<&str> = Job::Idle;
    let a = j.apply(JobCmd::Start("build")).unwrap();
    assert_eq!(a.effects.as_slice(), ["started \"build\"".to_string()]);
    let t = j.apply(JobCmd::Tick { by: 60 }).unwrap().transition;
    assert!(t.is_self_transition());
    // 120 > 100: the invariant refuses and the job stays at 60.
    assert!(j.apply(JobCmd::Tick { by: 60 }).is_err());
    assert_eq!(j, Job::Running("build", 60));
    j.apply(JobCmd::Abort).unwrap();
    assert!(j.is_terminal());
    assert_eq!(<job::Running<u8> as TypedState>::ID.index(), 1);

    let text = String::from("a b c");
    let mut r = Reader::Empty;
    for w in text.split(' ') {
        r.apply(Feed::Word(w)).unwrap();
    }
    assert!(matches!(r, Reader::Reading { last: "c", count: 3 }));
    r.apply(Feed::End).unwrap();
    assert_eq!(r.state_name(), "Closed");
}
