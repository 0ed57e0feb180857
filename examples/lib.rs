//! Example machines from the field, shared by the runnable examples, the tests and the
//! benchmarks.
//!
//! - [`registrar`]: a domain-registration order, derived with `#[derive(StateMachine)]`.
//! - [`registrar_service`]: the registrar as a service over a file store, with a flaky
//!   registrar worker whose registrations are durable effects.
//! - [`registrar_by_hand`]: the same machine written by hand against the core traits.
//! - [`workload`]: event streams for benchmarks and tests.
//! - [`pacemaker`]: a pacemaker whose state timeout paces when no pulse came in time.
//! - [`lunar_module`]: a descent with physical invariants, over a mirrored store.
//! - [`torrent`]: a registry of torrents with peers that come and go, over SQLite.
//! - [`cluster`]: node processes over one PostgreSQL database, a load through the inbox, a
//!   nemesis that kills and pauses nodes, and a checker.

#[path = "machines/registrar.rs"]
pub mod registrar;

#[path = "machines/registrar_service.rs"]
pub mod registrar_service;

#[path = "machines/registrar_by_hand.rs"]
pub mod registrar_by_hand;

#[path = "machines/workload.rs"]
pub mod workload;

#[path = "machines/pacemaker.rs"]
pub mod pacemaker;

#[path = "machines/lunar_module.rs"]
pub mod lunar_module;

#[path = "machines/cluster.rs"]
pub mod cluster;

#[path = "machines/torrent.rs"]
pub mod torrent;
