//! Names that could collide with generated code: fields called `event`, `effects`, `view`;
//! an event whose method name is a keyword; a restricted visibility; a renamed module; names
//! spelt raw (`r#Go`) in one place and plain (`Go`) in another, which are one name to rustc.

pub(crate) mod inner {
    use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};

    #[derive(Event, Debug)]
    #[fsm(module = commands)]
    pub(crate) enum Cmd {
        Match { r#type: u8 },
        Move,
    }

    #[derive(StateMachine, Debug, PartialEq)]
    #[fsm(event = Cmd, module = states)]
    pub(crate) enum M {
        #[fsm(initial, on(Match => B))]
        A { event: u8, effects: u8, view: u8 },
        #[fsm(on(Move => A), dump)]
        B(u8),
    }

    impl Handler<commands::Match, states::B> for states::A {
        fn handle(
            s: states::ARef<'_>,
            ev: commands::Match,
            _: &mut Effects<()>,
        ) -> Result<states::B, Refusal> {
            Ok(states::B(*s.event + *s.effects + *s.view + ev.r#type))
        }
    }

    impl Handler<commands::Move, states::A> for states::B {
        fn handle(
            s: states::BRef<'_>,
            _: commands::Move,
            _: &mut Effects<()>,
        ) -> Result<states::A, Refusal> {
            Ok(states::A { event: *s.0, effects: 0, view: 0 })
        }
    }

    pub(crate) fn run() {
        let mut m = M::A { event: 1, effects: 2, view: 3 };
        m.apply(Cmd::Match { r#type: 4 }).unwrap();
        assert_eq!(m, M::B(10));
        let a = states::B(5).r#move(commands::Move).unwrap().state;
        let b = a.r#match(commands::Match { r#type: 1 }).unwrap().state;
        assert_eq!(b.0, 6);
    }
}

mod raw {
    use fsm_core::{Event, StateMachine};

    #[derive(Event, Debug, Clone, Copy)]
    pub enum Sig {
        r#Go,
        Stop,
    }

    #[derive(StateMachine, Debug, PartialEq)]
    #[fsm(event = Sig)]
    pub enum Light {
        #[fsm(initial, on(Go => r#Green, plain), on(r#Stop => Red, plain))]
        r#Red,
        #[fsm(on(r#Stop => r#Red, plain), on(Go => Amber, plain))]
        Green,
        #[fsm(on(r#Go => Green, plain))]
        Amber,
    }

    pub fn run() {
        let mut l = Light::Red;
        l.apply(Sig::Go).unwrap();
        assert_eq!(l, Light::Green);
        l.apply(Sig::r#Go).unwrap();
        assert_eq!(l, Light::Amber);
        l.apply(Sig::Go).unwrap();
        l.apply(Sig::r#Stop).unwrap();
        assert_eq!(l, Light::Red);
        let amber = light::Green.go(sig::Go).unwrap().state;
        assert_eq!(Light::from(amber.go(sig::r#Go).unwrap().state), Light::Green);
    }
}

fn main() {
    inner::run();
    raw::run();
}
