//! A lunar module on its descent: the error kernel is the altitude, the velocity vector and
//! the fuel left, with the physical invariants checked on every state the machine could enter.
//!
//! Why this is the kernel: after a computer restart the guidance must know where the craft is
//! and how fast it moves (a restarted guidance that thinks it hovers at 500 m when it falls at
//! 20 m/s kills the crew), and how much fuel is left (every decision depends on it). The
//! autopilot's plan, the telemetry and the displays are rebuilt from these three.
//!
//! The invariants are the table's `validate = ..`: a command whose result would break one is
//! rejected with the invariant's name, and the machine stays where it was, so a bad command
//! from the ground (or a bug in the autopilot) cannot put an impossible state in the store.
//!
//! Units are integers, so the descent is the same on every machine: centimetres, centimetres
//! per second, grams; a command covers whole seconds, integrated one second at a time.

use std::fmt;

use fsm_core::{Event, Handler, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

/// The Moon's gravity, cm/s².
pub const GRAVITY: i64 = 162;
/// The engine's acceleration at full throttle, cm/s² (the craft's mass is taken as fixed).
pub const FULL_THRUST: i64 = 300;
/// Fuel burnt per second at full throttle, grams.
pub const FULL_BURN: i64 = 5_000;
/// The fastest vertical speed at contact the legs survive, cm/s.
pub const SOFT_CONTACT: i64 = 300;
/// How close to the surface a touchdown may be called, cm.
pub const CONTACT_HEIGHT: i64 = 100;

/// The physical invariants, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invariant {
    /// Altitude never below zero before touchdown.
    AltitudeNeverNegative,
    /// Fuel never negative.
    FuelNeverNegative,
    /// Contact no faster than [`SOFT_CONTACT`].
    SoftContact,
}

impl Invariant {
    /// The invariant's name, as rejections say it.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::AltitudeNeverNegative => "altitude never below zero before touchdown",
            Invariant::FuelNeverNegative => "fuel never negative",
            Invariant::SoftContact => "contact at 3 m/s or slower",
        }
    }

    /// Which invariant a rejection's refusal names, if any.
    pub fn of(refusal: &str) -> Option<Invariant> {
        [
            Invariant::AltitudeNeverNegative,
            Invariant::FuelNeverNegative,
            Invariant::SoftContact,
        ]
        .into_iter()
        .find(|i| refusal.starts_with(&format!("invariant `{}`", i.name())))
    }

    fn broken(self, detail: String) -> Refusal {
        Refusal::new(format!("invariant `{}`: {detail}", self.name()))
    }
}

/// The craft.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = Control)]
pub enum Lander {
    /// Falling, burning or coasting.
    #[fsm(
        initial,
        on(Burn => Descending), on(Coast => Descending),
        on(Touchdown => Landed), on(Abort => Aborted),
        validate = descent_holds
    )]
    Descending {
        /// Height above the surface, cm.
        altitude: i64,
        /// Vertical speed, cm/s (positive is up).
        vertical: i64,
        /// Horizontal speed, cm/s.
        horizontal: i64,
        /// Fuel left, grams.
        fuel: i64,
    },
    /// On the surface.
    #[fsm(terminal, validate = contact_holds)]
    Landed {
        /// Vertical speed at contact, cm/s.
        contact: i64,
        /// Fuel left, grams.
        fuel: i64,
    },
    /// The descent was given up: the ascent stage fires.
    #[fsm(terminal)]
    Aborted {
        /// Where it was given up, cm.
        altitude: i64,
    },
}

/// The commands guidance sends.
#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Fire the descent engine at `throttle` percent for `seconds`.
    Burn {
        /// Seconds.
        seconds: u32,
        /// Percent of full thrust, 0 to 100.
        throttle: u8,
    },
    /// Engine off for `seconds`.
    Coast {
        /// Seconds.
        seconds: u32,
    },
    /// The contact light: the craft is on the surface.
    Touchdown,
    /// Give up the descent.
    Abort,
}

impl Lander {
    /// The descent's start: 500 m up, falling at 20 m/s, drifting at 2 m/s, 300 kg of fuel.
    pub fn start() -> Self {
        Lander::Descending {
            altitude: 50_000,
            vertical: -2_000,
            horizontal: 200,
            fuel: 300_000,
        }
    }

    /// Altitude, vertical speed and fuel, where they mean something.
    pub fn readout(&self) -> (i64, i64, i64) {
        match self {
            Lander::Descending {
                altitude,
                vertical,
                fuel,
                ..
            } => (*altitude, *vertical, *fuel),
            Lander::Landed { contact, fuel } => (0, *contact, *fuel),
            Lander::Aborted { altitude } => (*altitude, 0, 0),
        }
    }
}

impl fmt::Display for Lander {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (altitude, vertical, fuel) = self.readout();
        write!(
            f,
            "{} at {:.1} m, {:+.1} m/s, {:.1} kg of fuel",
            self.state_name(),
            altitude as f64 / 100.0,
            vertical as f64 / 100.0,
            fuel as f64 / 1000.0
        )
    }
}

fn descent_holds(s: lander::DescendingRef<'_>) -> Result<(), Refusal> {
    if *s.altitude < 0 {
        return Err(Invariant::AltitudeNeverNegative.broken(format!(
            "the command would put the craft {:.1} m below the surface",
            -*s.altitude as f64 / 100.0
        )));
    }
    if *s.fuel < 0 {
        return Err(Invariant::FuelNeverNegative.broken(format!(
            "the command needs {:.1} kg more fuel than is left",
            -*s.fuel as f64 / 1000.0
        )));
    }
    Ok(())
}

fn contact_holds(s: lander::LandedRef<'_>) -> Result<(), Refusal> {
    if s.contact.abs() > SOFT_CONTACT {
        return Err(Invariant::SoftContact.broken(format!(
            "contact at {:.1} m/s; burn to slow down first",
            s.contact.abs() as f64 / 100.0
        )));
    }
    Ok(())
}

/// Integrates `seconds` of flight at `throttle` percent: the state it leads to, which the
/// target's invariant then checks (it may be below the surface or out of fuel).
fn fly(s: &lander::DescendingRef<'_>, seconds: u32, throttle: i64) -> lander::Descending {
    let (mut altitude, mut vertical, mut fuel) = (*s.altitude, *s.vertical, *s.fuel);
    for _ in 0..seconds {
        vertical += FULL_THRUST * throttle / 100 - GRAVITY;
        altitude += vertical;
        fuel -= FULL_BURN * throttle / 100;
    }
    lander::Descending {
        altitude,
        vertical,
        horizontal: *s.horizontal,
        fuel,
    }
}

impl Handler<control::Burn, lander::Descending> for lander::Descending {
    fn handle(
        s: lander::DescendingRef<'_>,
        e: control::Burn,
        _: &mut fsm_core::Effects<()>,
    ) -> Result<lander::Descending, Refusal> {
        if e.throttle > 100 {
            return Err(Refusal::new(format!(
                "throttle {}% is above 100%",
                e.throttle
            )));
        }
        Ok(fly(&s, e.seconds, i64::from(e.throttle)))
    }
}

impl Handler<control::Coast, lander::Descending> for lander::Descending {
    fn handle(
        s: lander::DescendingRef<'_>,
        e: control::Coast,
        _: &mut fsm_core::Effects<()>,
    ) -> Result<lander::Descending, Refusal> {
        Ok(fly(&s, e.seconds, 0))
    }
}

impl Handler<control::Touchdown, lander::Landed> for lander::Descending {
    fn handle(
        s: lander::DescendingRef<'_>,
        _: control::Touchdown,
        _: &mut fsm_core::Effects<()>,
    ) -> Result<lander::Landed, Refusal> {
        if *s.altitude > CONTACT_HEIGHT {
            return Err(Refusal::new(format!(
                "no contact yet: {:.1} m to go",
                *s.altitude as f64 / 100.0
            )));
        }
        Ok(lander::Landed {
            contact: *s.vertical,
            fuel: *s.fuel,
        })
    }
}

impl Handler<control::Abort, lander::Aborted> for lander::Descending {
    fn handle(
        s: lander::DescendingRef<'_>,
        _: control::Abort,
        _: &mut fsm_core::Effects<()>,
    ) -> Result<lander::Aborted, Refusal> {
        Ok(lander::Aborted {
            altitude: *s.altitude,
        })
    }
}

/// The autopilot's next command for a craft in this state: descend at a tenth of the height
/// per second (slower near the ground), never faster than 20 m/s nor slower than 1 m/s.
pub fn autopilot(craft: &Lander) -> Control {
    let Lander::Descending {
        altitude, vertical, ..
    } = craft
    else {
        return Control::Abort;
    };
    if *altitude <= CONTACT_HEIGHT {
        return Control::Touchdown;
    }
    let target = -(altitude / 10).clamp(100, 2_000);
    let needed = target - vertical + GRAVITY;
    let throttle = (needed * 100 / FULL_THRUST).clamp(0, 100);
    if throttle == 0 {
        Control::Coast { seconds: 1 }
    } else {
        Control::Burn {
            seconds: 1,
            throttle: throttle as u8,
        }
    }
}

/// What a descent did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Commands applied.
    pub applied: u32,
    /// Commands rejected by a named invariant, per invariant.
    pub broken: Vec<(Invariant, u32)>,
    /// Commands rejected by a guard (a touchdown called too high).
    pub refused: u32,
    /// Copies the mirror rewrote from the good side.
    pub repairs: u64,
    /// The craft at the end, as the kernel holds it.
    pub end: Lander,
    /// The craft as each mirror side holds it after the run, read back alone.
    pub sides: [Option<Lander>; 2],
}

/// The craft's machine id.
pub fn craft() -> fsm_core::store::MachineId {
    fsm_core::store::MachineId::new("eagle").expect("a valid id")
}

/// Flips one byte in the middle of a file: the damage a bad sector or a stray write does.
pub fn damage(path: &std::path::Path) -> std::io::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes)
}

/// Flies a descent under the autopilot with a kernel over a [`MirroredStore`] of two file
/// stores (`dir/a`, `dir/b`), sending three bad commands on the way (a touchdown called at
/// altitude, a coast into the ground, a burn longer than the fuel), and damaging the
/// secondary's copy of the craft after `damage_at` commands: the craft is then evicted, so
/// its next command reads it back through the mirror, which repairs the damaged side.
/// `log` gets one line per rejection and event of note.
///
/// [`MirroredStore`]: fsm_persist::MirroredStore
pub fn descend(
    dir: &std::path::Path,
    damage_at: u32,
    log: &mut dyn std::io::Write,
) -> Result<Report, Box<dyn std::error::Error>> {
    use fsm_core::kernel::{CommandError, Kernel, Shutdown};
    use fsm_core::queue::ManualClock;
    use fsm_core::store::{Codec, SnapshotStore, SnapshotStoreExt};
    use fsm_core::Reason;
    use fsm_persist::{Compaction, FileStore, MirroredStore};
    use std::sync::Arc;

    // A checkpoint after every write, on the committing thread, so each side's per-machine
    // file is current when the write returns.
    let side = |name: &str| {
        FileStore::builder(dir.join(name))
            .checkpoint_bytes(1)
            .compaction(Compaction::Inline)
            .open()
    };
    let mirror = Arc::new(MirroredStore::new(side("a")?, side("b")?));
    let clock = ManualClock::new();
    let kernel = Kernel::builder_shared(mirror.clone() as Arc<dyn SnapshotStore>, |_| {
        Lander::start()
    })
    .shards(1)
    .clock(clock.clock())
    .idle_after(std::time::Duration::from_secs(60))
    .start()?;
    let id = craft();
    let mut report = Report {
        applied: 0,
        broken: Vec::new(),
        refused: 0,
        repairs: 0,
        end: Lander::start(),
        sides: [None, None],
    };
    let mut sent = 0u32;
    loop {
        let (craft, _) = kernel.state(&id)?;
        if craft.is_terminal() || sent > 10_000 {
            report.end = craft;
            break;
        }
        let command = match sent {
            3 => Control::Touchdown,
            8 => Control::Coast { seconds: 90 },
            12 => Control::Burn {
                seconds: 120,
                throttle: 100,
            },
            _ => autopilot(&craft),
        };
        sent += 1;
        match kernel.submit(&id, command.clone())?.wait() {
            Ok(_) => report.applied += 1,
            Err(CommandError::Rejected(r)) => {
                writeln!(log, "rejected {command:?} at {craft}: {r}")?;
                let refusal = match r.reason() {
                    Reason::Invalid { refusal, .. } => Invariant::of(refusal.reason()),
                    _ => None,
                };
                match refusal {
                    Some(i) => match report.broken.iter_mut().find(|(b, _)| *b == i) {
                        Some((_, n)) => *n += 1,
                        None => report.broken.push((i, 1)),
                    },
                    None => report.refused += 1,
                }
            }
            Err(e) => return Err(e.into()),
        }
        if sent == damage_at {
            let file = dir.join("b").join(format!("{id}.snap"));
            damage(&file)?;
            // Out of memory, so the next command reads it back through the mirror.
            clock.advance(std::time::Duration::from_secs(120));
            let resident = kernel.sweep();
            writeln!(
                log,
                "damaged the secondary's copy ({}) and evicted the craft ({resident} resident)",
                file.display()
            )?;
        }
    }
    kernel.shutdown(Shutdown::Drain);
    report.repairs = mirror.counts().repairs;
    drop(mirror);
    let codec = Codec::<Lander>::new(1);
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let alone = FileStore::open(dir.join(name))?;
        report.sides[i] = alone.load(&id, &codec)?.map(|(m, _)| m);
    }
    Ok(report)
}
