//! A pacemaker: the error kernel is the time of the last pulse, the pacing mode, and how many
//! paces were delivered. A state timeout paces when no pulse came within the interval; the
//! interval is scaled down (250 ms) so the examples and tests run in seconds.
//!
//! Why this is the kernel: after a crash the device must know when the heart last beat (to
//! pace at the right moment, not a whole interval late) and whether it is pacing (to keep
//! pacing); everything else (telemetry, logs) can be rebuilt. The armed timeout is part of it:
//! it is stored with the transition that armed it, so a restart neither loses the deadline nor
//! paces twice for one missed beat (the pace count is stored in the same write as the
//! transition that paced).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fsm_core::kernel::{EffectCtx, EffectError, EffectWorker, Request, Shutdown};
use fsm_core::store::{Codec, MachineId, SnapshotStoreExt};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

/// The pacing interval: a pace when no pulse came for this long.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// The device.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = Heart, effect = Pace)]
pub enum Pacemaker {
    /// Listening to the heart's own beat; paces when none came within the interval.
    #[fsm(initial, on(Pulse => Sensing), on(Missed => Pacing), state_timeout(ms = 250 => Missed))]
    Sensing {
        /// When the heart last beat (the sensor's milliseconds).
        last_pulse: u64,
        /// Paces delivered so far.
        paced: u64,
    },
    /// The heart missed: a pace every interval until it beats on its own again.
    #[fsm(on(Pulse => Sensing), on(Missed => Pacing), state_timeout(ms = 250 => Missed))]
    Pacing {
        /// When the heart last beat.
        last_pulse: u64,
        /// Paces delivered so far.
        paced: u64,
    },
}

/// What the device hears.
#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Heart {
    /// The sensor felt a beat at `at` (its milliseconds).
    Pulse {
        /// When.
        at: u64,
    },
    /// No beat within the interval (the state timeout).
    Missed,
}

/// The effect: deliver pace number `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Which pace, counted from 1 over the device's life.
    pub n: u64,
}

impl Pacemaker {
    /// A new device that has felt nothing yet.
    pub fn new() -> Self {
        Pacemaker::Sensing {
            last_pulse: 0,
            paced: 0,
        }
    }

    /// When the heart last beat.
    pub fn last_pulse(&self) -> u64 {
        match self {
            Pacemaker::Sensing { last_pulse, .. } | Pacemaker::Pacing { last_pulse, .. } => {
                *last_pulse
            }
        }
    }

    /// Paces delivered so far.
    pub fn paced(&self) -> u64 {
        match self {
            Pacemaker::Sensing { paced, .. } | Pacemaker::Pacing { paced, .. } => *paced,
        }
    }
}

impl Default for Pacemaker {
    fn default() -> Self {
        Pacemaker::new()
    }
}

impl Handler<heart::Pulse, pacemaker::Sensing> for pacemaker::Sensing {
    fn handle(
        s: pacemaker::SensingRef<'_>,
        e: heart::Pulse,
        fx: &mut Effects<Pace>,
    ) -> Result<pacemaker::Sensing, Refusal> {
        // A beat: the interval starts again from now.
        fx.restart_state_timeout();
        Ok(pacemaker::Sensing {
            last_pulse: e.at.max(*s.last_pulse),
            paced: *s.paced,
        })
    }
}

impl Handler<heart::Missed, pacemaker::Pacing> for pacemaker::Sensing {
    fn handle(
        s: pacemaker::SensingRef<'_>,
        _: heart::Missed,
        fx: &mut Effects<Pace>,
    ) -> Result<pacemaker::Pacing, Refusal> {
        fx.push(Pace { n: s.paced + 1 });
        Ok(pacemaker::Pacing {
            last_pulse: *s.last_pulse,
            paced: s.paced + 1,
        })
    }
}

impl Handler<heart::Missed, pacemaker::Pacing> for pacemaker::Pacing {
    fn handle(
        s: pacemaker::PacingRef<'_>,
        _: heart::Missed,
        fx: &mut Effects<Pace>,
    ) -> Result<pacemaker::Pacing, Refusal> {
        // The timeout that fired is spent; pacing goes on, one interval from now.
        fx.restart_state_timeout();
        fx.push(Pace { n: s.paced + 1 });
        Ok(pacemaker::Pacing {
            last_pulse: *s.last_pulse,
            paced: s.paced + 1,
        })
    }
}

impl Handler<heart::Pulse, pacemaker::Sensing> for pacemaker::Pacing {
    fn handle(
        s: pacemaker::PacingRef<'_>,
        e: heart::Pulse,
        _: &mut Effects<Pace>,
    ) -> Result<pacemaker::Sensing, Refusal> {
        Ok(pacemaker::Sensing {
            last_pulse: e.at.max(*s.last_pulse),
            paced: *s.paced,
        })
    }
}

/// The machine id of the one device.
pub fn device() -> MachineId {
    MachineId::new("pacemaker-1").expect("a valid id")
}

/// The lead: writes every pace to `paces.log` (one line, `pace <n> <ms since the device
/// started>`), synced, as the electrode would deliver it.
pub struct Lead {
    log: File,
    started: Instant,
}

impl Lead {
    /// Appends to `dir/paces.log`.
    pub fn open(dir: &Path, started: Instant) -> std::io::Result<Lead> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("paces.log"))?;
        Ok(Lead { log, started })
    }
}

impl EffectWorker<Pacemaker> for Lead {
    fn run(&mut self, _: &EffectCtx, pace: &Pace) -> Result<Option<Heart>, EffectError> {
        writeln!(
            self.log,
            "pace {} {}",
            pace.n,
            self.started.elapsed().as_millis()
        )?;
        self.log.sync_data()?;
        Ok(None)
    }
}

/// The paces `dir/paces.log` holds, in the order delivered.
pub fn paces(dir: &Path) -> Vec<u64> {
    let Ok(file) = File::open(dir.join("paces.log")) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.split(' ').nth(1)?.parse().ok())
        .collect()
}

/// The device over a file store in `dir/store` on the system clock, with its lead: reads
/// `pulse <at>` lines from `input` and answers `ack <at> <seq>` on `output` once each pulse is
/// durable. Returns when `input` ends, after draining.
pub fn run_device(
    dir: &Path,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let lead_dir: PathBuf = dir.to_owned();
    let kernel = fsm_persist::file_kernel(dir.join("store"), |_| Pacemaker::new())
        .shards(1)
        // At most once: a pace is for this beat; delivered again after a restart it would be
        // a pace at the wrong moment.
        .effects_at_most_once(1, move |_| {
            Lead::open(&lead_dir, started).expect("the pace log opens")
        })
        .start()?;
    let id = device();
    for line in input.lines() {
        let line = line?;
        let Some(at) = line.strip_prefix("pulse ").and_then(|a| a.parse().ok()) else {
            continue;
        };
        let committed = kernel
            .submit(&id, Request::new(Heart::Pulse { at }))?
            .wait()?;
        writeln!(output, "ack {at} {}", committed.seq)?;
        output.flush()?;
    }
    kernel.shutdown(Shutdown::Drain);
    Ok(())
}

/// The device as stored in `dir/store` (what a restart recovers).
pub fn stored(dir: &Path) -> Option<Pacemaker> {
    let store = fsm_persist::FileStore::open(dir.join("store")).ok()?;
    store
        .load(&device(), &Codec::<Pacemaker>::new(1))
        .ok()
        .flatten()
        .map(|(m, _)| m)
}
