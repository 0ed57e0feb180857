//! The generated code compiles clean under the strictest lints a user may set: rustc's
//! warnings and `missing_docs` here, clippy's `all` and `pedantic` in CI's clippy run.
#![deny(warnings, missing_docs, clippy::all, clippy::pedantic)]

use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};

/// A turnstile.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq)]
#[fsm(event = Input, effect = Sound)]
pub enum Turnstile {
    /// Waiting for a coin.
    #[fsm(initial, on(Coin => Unlocked), on(Push => Locked), on(Kick => Broken), dump)]
    Locked,
    /// One person may pass.
    #[fsm(on(Push => Locked), on(Coin => Unlocked), validate = credit_ok)]
    Unlocked {
        /// Coins inserted.
        credit: u32,
        /// Who paid.
        #[fsm(sensitive)]
        payer: String,
    },
    /// Broken: terminal.
    #[fsm(terminal)]
    Broken(u8),
}

/// What the turnstile can do.
#[derive(Event, Debug, Clone)]
pub enum Input {
    /// A coin.
    Coin(u32),
    /// Someone pushes.
    Push,
    /// Someone kicks.
    Kick {
        /// How hard.
        force: u8,
    },
}

/// Sounds.
#[derive(Debug, PartialEq, Eq)]
pub enum Sound {
    /// Beep.
    Beep,
}

fn credit_ok(s: turnstile::UnlockedRef<'_>) -> Result<(), Refusal> {
    if *s.credit > 0 {
        Ok(())
    } else {
        Err(Refusal::new("no credit"))
    }
}

impl Handler<input::Coin, turnstile::Unlocked> for turnstile::Locked {
    fn handle(
        _: turnstile::Locked,
        ev: input::Coin,
        fx: &mut Effects<Sound>,
    ) -> Result<turnstile::Unlocked, Refusal> {
        fx.push(Sound::Beep);
        Ok(turnstile::Unlocked {
            credit: ev.0,
            payer: String::from("anon"),
        })
    }
}

impl Handler<input::Push, turnstile::Locked> for turnstile::Locked {
    fn handle(
        _: turnstile::Locked,
        _: input::Push,
        _: &mut Effects<Sound>,
    ) -> Result<turnstile::Locked, Refusal> {
        Ok(turnstile::Locked)
    }
}

impl Handler<input::Kick, turnstile::Broken> for turnstile::Locked {
    fn handle(
        _: turnstile::Locked,
        ev: input::Kick,
        _: &mut Effects<Sound>,
    ) -> Result<turnstile::Broken, Refusal> {
        Ok(turnstile::Broken(ev.force))
    }
}

impl Handler<input::Push, turnstile::Locked> for turnstile::Unlocked {
    fn handle(
        _: turnstile::UnlockedRef<'_>,
        _: input::Push,
        _: &mut Effects<Sound>,
    ) -> Result<turnstile::Locked, Refusal> {
        Ok(turnstile::Locked)
    }
}

impl Handler<input::Coin, turnstile::Unlocked> for turnstile::Unlocked {
    fn handle(
        s: turnstile::UnlockedRef<'_>,
        ev: input::Coin,
        _: &mut Effects<Sound>,
    ) -> Result<turnstile::Unlocked, Refusal> {
        Ok(turnstile::Unlocked {
            credit: s.credit + ev.0,
            payer: s.payer.clone(),
        })
    }
}

#[test]
fn strict_machine_runs() {
    let mut t = Turnstile::Locked;
    assert!(
        t.apply(Input::Coin(0)).is_err(),
        "the invariant refuses zero credit"
    );
    assert_eq!(t, Turnstile::Locked);
    let applied = t.apply(Input::Coin(2)).unwrap();
    assert_eq!(applied.effects.as_slice(), [Sound::Beep]);
    assert_eq!(
        format!("{:?}", fsm_core::Redacted(&t)),
        "Unlocked { credit: 2, payer: <redacted> }"
    );
    assert!(t.apply(Input::Kick { force: 9 }).is_err());
    t.apply(Input::Push).unwrap();
    assert_eq!(t, Turnstile::Locked);
}

/// A lamp that switches itself off: plain transitions and a state timeout, under the same lints.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq)]
#[fsm(event = Switch)]
pub enum Lamp {
    /// Dark.
    #[fsm(initial, on(Toggle => Lit, plain))]
    Dark,
    /// Lit, for a minute at most.
    #[fsm(
        on(Toggle | Timeout => Dark, plain),
        on(Stay => Lit, plain, reenter),
        state_timeout(min = 1 => Timeout),
        enter = lamp_lit,
        exit = lamp_dark
    )]
    Lit,
}

fn lamp_lit(_: lamp::Lit, fx: &mut Effects<()>) {
    fx.restart_state_timeout();
}

fn lamp_dark(_: lamp::Lit, _: &mut Effects<()>) {}

/// What a lamp is told.
#[derive(Event, Debug, Clone)]
pub enum Switch {
    /// Flip it.
    Toggle,
    /// Its minute is up.
    Timeout,
    /// Stay lit: a new minute.
    Stay,
}

#[test]
fn plain_transitions_and_timeouts_compile_under_strict_lints() {
    let mut lamp = Lamp::Dark;
    lamp.apply(Switch::Toggle).unwrap();
    assert_eq!(lamp, Lamp::Lit);
    assert!(matches!(
        Lamp::timeout_event(fsm_core::StateId::new(1)),
        Some(Switch::Timeout)
    ));
    lamp.apply(Switch::Timeout).unwrap();
    assert_eq!(lamp, Lamp::Dark);
}
