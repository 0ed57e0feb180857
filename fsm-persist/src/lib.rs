//! Durable snapshot storage for `fsm-core` machines: the error kernel's backends.
//!
//! Every backend implements [`fsm_core::store::SnapshotStore`] and passes the same
//! [`conformance`] suite:
//! - [`FileStore`]: the embedded default, one directory, atomic replace per snapshot and a
//!   write-ahead log for batches;
//! - [`MirroredStore`]: two stores written through, the newest valid copy read, stale or corrupt
//!   copies repaired;
//! - `SqliteStore` (feature `sqlite`): SQLite in WAL mode with `synchronous=FULL`;
//! - `postgres::PostgresStore` (feature `postgres`): PostgreSQL, for machines served by
//!   several nodes: versioned upserts, batches in one statement, ownership with fencing
//!   tokens so only one node writes a machine at a time.
//!
//! [`file_kernel`] starts a [`fsm_core::kernel::Kernel`] over a file store in one call.
//!
//! ```
//! use fsm_core::store::{Format, MachineId, Snapshot, SnapshotStore};
//! use fsm_persist::FileStore;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let id = MachineId::new("order-1").unwrap();
//! let store = FileStore::open(dir.path()).unwrap();
//! let first = Snapshot::new("Order", 1, 1, Format::Postcard, b"\x00").unwrap();
//! store.put(&id, None, &first).unwrap(); // durable when it returns
//! drop(store);
//!
//! let store = FileStore::open(dir.path()).unwrap();
//! assert_eq!(store.get(&id).unwrap(), first);
//! ```

pub mod conformance;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod file_store;
mod group;
pub mod inspect;
pub mod io;
mod kernel;
mod mirror;
#[cfg(feature = "fault-injection")]
mod pausable;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "fault-injection")]
pub mod power;
#[cfg(feature = "sqlite")]
mod sqlite;
mod sync;
mod verify;
mod wal;

pub use file_store::{Compaction, FileStore, FileStoreBuilder, FileStoreStats, Recovery};
pub use kernel::file_kernel;
#[cfg(feature = "sqlite")]
pub use kernel::sqlite_kernel;
pub use mirror::{MirrorCounts, MirrorStatus, MirroredStore, Side};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, SqliteStoreBuilder, Synchronous};
