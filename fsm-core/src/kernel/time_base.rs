//! Where the kernel keeps time for deadlines (timers and effect retries).
//!
//! A deadline is stored as wall-clock milliseconds since the UNIX epoch, because it must mean
//! the same moment to the next process, which shares no monotonic clock with this one. The
//! kernel reads the wall clock **once**, at start ([`TimeBase`]), and from then on counts on the
//! monotonic [`Clock::now`]: a clock step while it runs (NTP, an operator) moves no timer.
//! A step while the process is down is the one thing a wall deadline cannot tell from time
//! passing; recovery bounds it: a restored timer never waits longer than the duration it was
//! armed for (a step back of an hour does not silence a pacemaker for an hour), and one whose
//! deadline passed (or that a step forward made due) fires promptly.
//!

use std::time::{Duration, Instant};

use crate::queue::Clock;

/// The kernel's time line for deadlines: wall-clock milliseconds, read once at start and
/// advanced by the monotonic clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimeBase {
    anchor: Instant,
    wall_ms: u64,
}

impl TimeBase {
    pub(crate) fn new(clock: &Clock) -> Self {
        TimeBase {
            anchor: clock.now(),
            wall_ms: clock.wall_ms(),
        }
    }

    fn since(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.anchor)
    }

    /// `now` in the kernel's milliseconds, rounded down: a timer is due once this reaches its
    /// deadline, so it never fires early.
    pub(crate) fn floor(&self, now: Instant) -> u64 {
        let ms = u64::try_from(self.since(now).as_millis()).unwrap_or(u64::MAX);
        self.wall_ms.saturating_add(ms)
    }

    /// `now` in the kernel's milliseconds, rounded up, to arm from.
    pub(crate) fn ceil(&self, now: Instant) -> u64 {
        self.wall_ms
            .saturating_add(crate::timer::millis_ceil(self.since(now)))
    }

    /// How long from `now` until kernel millisecond `at`.
    pub(crate) fn until(&self, now: Instant, at: u64) -> Duration {
        let at = Duration::from_millis(at.saturating_sub(self.wall_ms));
        at.saturating_sub(self.since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::ManualClock;

    #[test]
    fn the_time_base_rounds_so_that_no_timer_fires_early() {
        let clock = ManualClock::at_wall_ms(1_000);
        let base = TimeBase::new(&clock.clock());
        clock.advance(Duration::from_micros(1500));
        let now = clock.now();
        assert_eq!((base.floor(now), base.ceil(now)), (1001, 1002));
        assert_eq!(base.until(now, 1003), Duration::from_micros(1500));
        assert_eq!(base.until(now, 900), Duration::ZERO);
    }
}
