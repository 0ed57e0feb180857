//! The guide: chapters to read in order, each code block a doctest that `cargo test` compiles
//! and runs.
//!
//! 1. [Writing a machine](writing): states, events, the attributes, handlers, hooks, internal
//!    events, the mistakes the compiler catches.
//! 2. [The command queue](queue): overload decided in one place, a definite outcome for every
//!    command.
//! 3. [Durability and the kernel](kernel): snapshots, the stores, a kernel of many machines,
//!    nothing acknowledged before it is durable, scaling on one host.
//! 4. [A machine's lifecycle](lifecycle): when a machine exists, when its timers start, what a
//!    worker is given after a crash.
//! 5. [Time](time): timeouts that survive a crash, and the examples from the talk.
//! 6. [Effects](effects): work that survives a crash, in a durable outbox.
//! 7. [Several nodes](nodes): PostgreSQL with fencing tokens, and a cluster with one inbox.
//! 8. [Testing and fuzzing](testing): the property check and the fuzz targets.
//! 9. [Operating it](operating): the admin socket, the `fsm` tool, metrics.
//!
//! The chapters that use a store of `fsm-persist` (the file store, SQLite, PostgreSQL) are
//! doctests too: `fsm-persist` is a dev-dependency of this crate.
//! `BENCHMARKS.md` and `TESTING.md` at the repository's root hold the measurements, the fault
//! matrices and the soaks, with the commands that produce them.

#[doc = include_str!("../guide/writing.md")]
pub mod writing {}

#[doc = include_str!("../guide/queue.md")]
pub mod queue {}

#[doc = include_str!("../guide/kernel.md")]
pub mod kernel {}

#[doc = include_str!("../guide/lifecycle.md")]
pub mod lifecycle {}

#[doc = include_str!("../guide/time.md")]
pub mod time {}

#[doc = include_str!("../guide/effects.md")]
pub mod effects {}

#[doc = include_str!("../guide/nodes.md")]
pub mod nodes {}

// The chapter shows a property check as the `#[test]` a user writes; its doctest calls it.
#[allow(clippy::test_attr_in_doctest)]
#[doc = include_str!("../guide/testing.md")]
pub mod testing {}

#[doc = include_str!("../guide/operating.md")]
pub mod operating {}
