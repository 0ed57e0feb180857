//! The command queue in front of a machine: the one place where overload is decided.
//!
//! Many producers meet one machine here. The queue is bounded (an unbounded one exists only
//! through [`unbounded`]), and everything that happens to a command is definite and typed:
//!
//! - the submit call either keeps the command or returns a [`SubmitError`] that hands it back
//!   (`Full`, `Closed`, `Expired`, `Dumped`) or says where it went (`Delegated`);
//! - a kept command ends in exactly one [`Outcome`] (applied, rejected, dumped, delegated,
//!   expired, closed), which the submitter can read from a [`Ticket`];
//! - the [`Counts`] in [`Metrics`] always add up.
//!
//! A full queue follows its [`Overload`] policy: push back on producers, drop the newest or the
//! oldest command (reported to a [`DumpSink`]), or delegate to an [`Overflow`] sink. An event
//! the current state has no transition for follows that state's policy from the derive
//! (`defer(..)`, `dump(..)`, `delegate(..)`, or reject); see [`Consumer`].
//!
//! ```
//! use fsm_core::queue::{self, Outcome, Overload};
//! use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
//!
//! #[derive(Event, Debug)]
//! enum Cmd { Open, Close }
//!
//! #[derive(StateMachine, Debug)]
//! #[fsm(event = Cmd)]
//! enum Door {
//!     #[fsm(initial, on(Open => Opened))]
//!     Closed,
//!     #[fsm(on(Close => Closed))]
//!     Opened,
//! }
//!
//! impl Handler<cmd::Open, door::Opened> for door::Closed {
//!     fn handle(_: door::Closed, _: cmd::Open, _: &mut Effects<()>) -> Result<door::Opened, Refusal> {
//!         Ok(door::Opened)
//!     }
//! }
//! impl Handler<cmd::Close, door::Closed> for door::Opened {
//!     fn handle(_: door::Opened, _: cmd::Close, _: &mut Effects<()>) -> Result<door::Closed, Refusal> {
//!         Ok(door::Closed)
//!     }
//! }
//!
//! let (tx, mut rx) = queue::bounded::<Door>(64).overload(Overload::DropOldest).build()?;
//! let producer = std::thread::spawn(move || {
//!     let ticket = tx.request(Cmd::Open).expect("room");
//!     tx.try_submit(Cmd::Open).expect("room"); // rejected: already open
//!     ticket.wait()
//! });
//! let mut door = Door::Closed;
//! let leftovers = rx.run(&mut door, |_effects| {});
//! assert!(leftovers.is_empty());
//! assert!(matches!(producer.join().unwrap(), Outcome::Applied(_)));
//! assert_eq!(door.state_name(), "Opened");
//! let counts = rx.metrics().counts;
//! assert_eq!((counts.applied, counts.rejected), (1, 1));
//! assert!(counts.is_balanced());
//! # Ok::<(), fsm_core::queue::ConfigError>(())
//! ```

mod clock;
mod command;
mod consumer;
mod error;
#[cfg(feature = "metrics")]
mod export;
mod metrics;
mod overload;
mod shared;

use std::marker::PhantomData;
use std::sync::Arc;

use crate::machine::StateMachine;

pub use clock::{Clock, ManualClock};
pub use command::{Command, Outcome, Ticket};
pub use consumer::{Consumer, Shutdown};
pub use error::{ConfigError, SubmitError};
pub use hdrhistogram::Histogram;
pub use metrics::{Counts, Latencies, LatencySummary, Metrics};
pub use overload::{DelegateCause, DumpCause, DumpSink, Overflow, Overload};
pub use shared::{RequestAsync, Sender, Submit};

pub(crate) use clock::Stamps;
pub(crate) use command::{Reply, Wakes};
pub(crate) use consumer::{routes, Route};
pub(crate) use metrics::MAX_NANOS;
use shared::{Config, Shared};

/// The default bound on commands postponed by `defer(..)`.
pub const DEFAULT_DEFER_LIMIT: usize = 1024;

/// Starts building a queue that holds at most `capacity` waiting commands.
///
/// A capacity of 0 is refused by [`QueueBuilder::build`].
pub fn bounded<M: StateMachine>(capacity: usize) -> QueueBuilder<M> {
    QueueBuilder::new(Some(capacity))
}

/// Starts building a queue without a bound on waiting commands.
///
/// Memory then is the only limit, and overload shows up as latency instead of as a decision;
/// prefer [`bounded`] unless producers are bounded by something else.
pub fn unbounded<M: StateMachine>() -> QueueBuilder<M> {
    QueueBuilder::new(None)
}

/// Configures a queue; [`QueueBuilder::build`] checks the configuration against the machine's
/// table and returns the producers' [`Sender`] and the machine's [`Consumer`].
pub struct QueueBuilder<M: StateMachine> {
    capacity: Option<usize>,
    overload: Overload,
    dump: Option<Arc<dyn DumpSink<M::Event>>>,
    overflow: Option<Arc<dyn Overflow<M::Event>>>,
    defer_limit: usize,
    clock: Clock,
    timing: bool,
    machine: PhantomData<fn(M)>,
}

impl<M: StateMachine> QueueBuilder<M> {
    fn new(capacity: Option<usize>) -> Self {
        QueueBuilder {
            capacity,
            overload: Overload::default(),
            dump: None,
            overflow: None,
            defer_limit: DEFAULT_DEFER_LIMIT,
            clock: Clock::System,
            timing: true,
            machine: PhantomData,
        }
    }

    /// What a full queue does with one more command (default: [`Overload::Backpressure`]).
    pub fn overload(mut self, policy: Overload) -> Self {
        self.overload = policy;
        self
    }

    /// Where dropped commands are reported (by the overload policy, a state's `dump(..)`, or
    /// the defer limit). Without a sink, drops are still counted.
    pub fn on_dump(mut self, sink: impl DumpSink<M::Event> + 'static) -> Self {
        self.dump = Some(Arc::new(sink));
        self
    }

    /// Where delegated commands go (by [`Overload::Delegate`] or a state's `delegate(..)`);
    /// required when either is in play.
    pub fn overflow(mut self, sink: impl Overflow<M::Event> + 'static) -> Self {
        self.overflow = Some(Arc::new(sink));
        self
    }

    /// At most this many commands may be postponed by `defer(..)` at once (default
    /// [`DEFAULT_DEFER_LIMIT`]); one more is handled by the overload policy: dropped
    /// ([`DumpCause::DeferLimit`]), or under [`Overload::DropOldest`] the oldest postponed
    /// command is dropped instead, or under [`Overload::Delegate`] it is delegated.
    pub fn defer_limit(mut self, limit: usize) -> Self {
        self.defer_limit = limit;
        self
    }

    /// The time source for deadlines and latencies (default [`Clock::System`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Whether to measure latencies (default on). Off saves one clock read per command on the
    /// producer's side and one on the consumer's; counts and depth are kept either way.
    pub fn latency(mut self, on: bool) -> Self {
        self.timing = on;
        self
    }

    /// Checks the configuration and builds the queue.
    pub fn build(self) -> Result<(Sender<M::Event>, Consumer<M>), ConfigError> {
        if self.capacity == Some(0) {
            return Err(ConfigError::ZeroCapacity);
        }
        let routes = consumer::routes(M::TABLE);
        if self.overflow.is_none() {
            if self.overload == Overload::Delegate {
                return Err(ConfigError::MissingOverflow {
                    needed_by: "the overload policy `Overload::Delegate`".to_owned(),
                });
            }
            if let Some(state) = states_with(M::TABLE, &routes, Route::Delegate).next() {
                return Err(ConfigError::MissingOverflow {
                    needed_by: format!("state `{state}` (`delegate(..)`)"),
                });
            }
        }
        if self.defer_limit == 0 {
            if let Some(state) = states_with(M::TABLE, &routes, Route::Defer).next() {
                return Err(ConfigError::ZeroDeferLimit { state });
            }
        }
        let shared = Arc::new(Shared::new(Config {
            machine: M::TABLE.machine(),
            capacity: self.capacity.unwrap_or(usize::MAX),
            bounded: self.capacity.is_some(),
            overload: self.overload,
            dump: self.dump,
            overflow: self.overflow,
            stamps: clock::Stamps::new(&self.clock),
            clock: self.clock,
            timing: self.timing,
        }));
        Ok((
            Sender::new(shared.clone()),
            Consumer::new(shared, self.defer_limit, routes),
        ))
    }
}

/// The names of the states that route some event `route`.
pub(crate) fn states_with<'a>(
    table: &'static crate::Table,
    routes: &'a [Route],
    route: Route,
) -> impl Iterator<Item = &'static str> + 'a {
    let events = table.events().len().max(1);
    table
        .states()
        .iter()
        .zip(routes.chunks(events))
        .filter(move |(_, row)| row.contains(&route))
        .map(|(s, _)| s.name())
}

impl<M: StateMachine> std::fmt::Debug for QueueBuilder<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueBuilder")
            .field("machine", &M::TABLE.machine())
            .field("capacity", &self.capacity)
            .field("overload", &self.overload)
            .field("defer_limit", &self.defer_limit)
            .field("clock", &self.clock)
            .field("latency", &self.timing)
            .finish_non_exhaustive()
    }
}
