//! Where the queue reads the time: the system's monotonic clock, or a clock a test moves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The time source of a queue: deadlines are checked and latencies measured against it.
///
/// [`Clock::System`] is [`Instant::now`]. [`Clock::Manual`] stands still until a test moves it,
/// so deadline expiry and latency figures can be tested exactly, without sleeping.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Clock {
    /// The operating system's monotonic clock.
    #[default]
    System,
    /// A clock that moves only when [`ManualClock::advance`] is called.
    Manual(ManualClock),
}

impl Clock {
    /// The current instant.
    #[inline]
    pub fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            Clock::Manual(clock) => clock.now(),
        }
    }

    /// Wall-clock milliseconds since the UNIX epoch: the system's real-time clock, or a
    /// manual clock's own wall time. The kernel reads it once at start, to place durable
    /// timer deadlines; everything after runs on the monotonic [`Clock::now`].
    pub fn wall_ms(&self) -> u64 {
        match self {
            Clock::System => system_wall_ms(),
            Clock::Manual(clock) => clock.wall_ms(),
        }
    }

    /// How long a blocked thread may sleep before it must look at this clock again, when it
    /// waits for `deadline`. A manual clock does not move with real time, so waiters poll it.
    pub(crate) fn sleep_bound(&self, deadline: Option<Instant>) -> Option<Duration> {
        match self {
            Clock::System => deadline.map(|d| d.saturating_duration_since(Instant::now())),
            Clock::Manual(_) => Some(Duration::from_millis(1)),
        }
    }
}

/// A clock for tests: it starts at the instant it was created and moves only when told.
///
/// Cloning shares the clock: every clone sees the same time.
///
/// ```
/// use std::time::Duration;
/// use fsm_core::queue::ManualClock;
///
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(clock.now() - t0, Duration::from_millis(5));
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    start: Instant,
    /// Wall-clock milliseconds at `start`.
    wall_start: u64,
    elapsed_nanos: Arc<AtomicU64>,
}

fn system_wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ManualClock {
    /// A clock standing at the current real instant (and the current wall-clock time).
    pub fn new() -> Self {
        ManualClock::at_wall_ms(system_wall_ms())
    }

    /// A clock whose wall time starts at `wall_ms` (milliseconds since the UNIX epoch): a
    /// test that restarts a kernel "later" gives the next one a clock further on.
    pub fn at_wall_ms(wall_ms: u64) -> Self {
        ManualClock {
            start: Instant::now(),
            wall_start: wall_ms,
            elapsed_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The clock's current instant.
    pub fn now(&self) -> Instant {
        self.start + Duration::from_nanos(self.elapsed_nanos.load(Ordering::Acquire))
    }

    /// The clock's wall time: its start plus how far it was moved, in milliseconds since the
    /// UNIX epoch.
    pub fn wall_ms(&self) -> u64 {
        self.wall_start
            .saturating_add(self.elapsed_nanos.load(Ordering::Acquire) / 1_000_000)
    }

    /// Moves the clock forward by `by` (saturating at about 584 years).
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .elapsed_nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                Some(e.saturating_add(nanos))
            });
    }

    /// This clock as a queue [`Clock`].
    pub fn clock(&self) -> Clock {
        Clock::Manual(self.clone())
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

/// The cheap time stamps the queue takes for latencies, in a clock's own units: CPU ticks for
/// [`Clock::System`] (read through `quanta`, about 10 ns, where `Instant::now` costs about
/// 25 ns; it falls back to the OS clock where the CPU has no stable counter), nanoseconds since
/// start for a manual clock. Deadlines are still checked against [`Clock::now`].
#[derive(Clone, Debug)]
pub(crate) struct Stamps {
    ticks: Option<quanta::Clock>,
    manual: Option<ManualClock>,
}

impl Stamps {
    pub(crate) fn new(clock: &Clock) -> Self {
        match clock {
            Clock::System => Stamps {
                ticks: Some(quanta::Clock::new()),
                manual: None,
            },
            Clock::Manual(m) => Stamps {
                ticks: None,
                manual: Some(m.clone()),
            },
        }
    }

    /// A stamp of the current moment.
    #[inline]
    pub(crate) fn stamp(&self) -> u64 {
        match (&self.ticks, &self.manual) {
            (Some(t), _) => t.raw(),
            (None, Some(m)) => m.elapsed_nanos.load(Ordering::Acquire),
            (None, None) => 0,
        }
    }

    /// Nanoseconds from stamp `from` to stamp `to` (0 if `to` is not later).
    #[inline]
    pub(crate) fn nanos(&self, from: u64, to: u64) -> u64 {
        match &self.ticks {
            Some(t) => t.delta_as_nanos(from, to),
            None => to.saturating_sub(from),
        }
    }
}
