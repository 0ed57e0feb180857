//! A kernel over the file store, or over SQLite, in one call.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fsm_core::kernel::{Durable, Kernel, KernelBuilder};
use fsm_core::store::{MachineId, SnapshotStore};

use crate::FileStore;

/// A [`KernelBuilder`] whose store is a [`FileStore`] in `dir` (created if missing), reopened
/// (with recovery) whenever it stops after a failed fsync; `initial` gives a machine the store
/// holds nothing for. Add effect workers and other settings, then `start()`.
///
/// ```
/// # use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # #[fsm(event = Cmd)]
/// # enum Lamp { #[fsm(initial, on(Toggle => On))] Off, #[fsm(on(Toggle => Off))] On }
/// # #[derive(Event, Debug, Clone)]
/// # enum Cmd { Toggle }
/// # impl Handler<cmd::Toggle, lamp::On> for lamp::Off {
/// #     fn handle(_: lamp::Off, _: cmd::Toggle, _: &mut Effects<()>) -> Result<lamp::On, Refusal> { Ok(lamp::On) }
/// # }
/// # impl Handler<cmd::Toggle, lamp::Off> for lamp::On {
/// #     fn handle(_: lamp::On, _: cmd::Toggle, _: &mut Effects<()>) -> Result<lamp::Off, Refusal> { Ok(lamp::Off) }
/// # }
/// use fsm_core::store::MachineId;
///
/// let dir = tempfile::tempdir()?;
/// let kernel = fsm_persist::file_kernel(dir.path(), |_| Lamp::Off).start()?;
/// let hall = MachineId::new("hall")?;
/// let committed = kernel.submit(&hall, Cmd::Toggle)?.wait()?; // durable when answered
/// assert_eq!(committed.transition.to_name(), "On");
/// drop(kernel);
/// // A new kernel over the same directory recovers the lamp.
/// let kernel = fsm_persist::file_kernel(dir.path(), |_| Lamp::Off).start()?;
/// assert_eq!(kernel.recovery().recovered, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn file_kernel<M: Durable>(
    dir: impl AsRef<Path>,
    initial: impl Fn(&MachineId) -> M + Send + Sync + 'static,
) -> KernelBuilder<M> {
    let dir: PathBuf = dir.as_ref().to_owned();
    Kernel::builder_reopening(
        move || {
            std::fs::create_dir_all(&dir).map_err(|source| fsm_core::store::StoreError::Io {
                operation: "creating the store directory",
                path: Some(dir.clone()),
                source,
            })?;
            Ok(Arc::new(FileStore::open(&dir)?) as Arc<dyn SnapshotStore>)
        },
        initial,
    )
}

/// A [`KernelBuilder`] whose store is a [`SqliteStore`](crate::SqliteStore) in the database
/// file `path` (created with its directory if missing; WAL, `synchronous = FULL`), reopened
/// whenever it stops; `initial` gives a machine the store holds nothing for. The counterpart
/// of [`file_kernel`] for one file that other tools can query (feature `sqlite`).
///
/// ```
/// # use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # #[fsm(event = Cmd)]
/// # enum Lamp { #[fsm(initial, on(Toggle => On))] Off, #[fsm(on(Toggle => Off))] On }
/// # #[derive(Event, Debug, Clone)]
/// # enum Cmd { Toggle }
/// # impl Handler<cmd::Toggle, lamp::On> for lamp::Off {
/// #     fn handle(_: lamp::Off, _: cmd::Toggle, _: &mut Effects<()>) -> Result<lamp::On, Refusal> { Ok(lamp::On) }
/// # }
/// # impl Handler<cmd::Toggle, lamp::Off> for lamp::On {
/// #     fn handle(_: lamp::On, _: cmd::Toggle, _: &mut Effects<()>) -> Result<lamp::Off, Refusal> { Ok(lamp::Off) }
/// # }
/// use fsm_core::store::MachineId;
///
/// let dir = tempfile::tempdir()?;
/// let db = dir.path().join("lamps/lamps.db");
/// let kernel = fsm_persist::sqlite_kernel(&db, |_| Lamp::Off).start()?;
/// kernel.submit(&MachineId::new("hall")?, Cmd::Toggle)?.wait()?;
/// drop(kernel);
/// let kernel = fsm_persist::sqlite_kernel(&db, |_| Lamp::Off).start()?;
/// assert_eq!(kernel.recovery().recovered, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(feature = "sqlite")]
pub fn sqlite_kernel<M: Durable>(
    path: impl AsRef<Path>,
    initial: impl Fn(&MachineId) -> M + Send + Sync + 'static,
) -> KernelBuilder<M> {
    let path: PathBuf = path.as_ref().to_owned();
    Kernel::builder_reopening(
        move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| fsm_core::store::StoreError::Io {
                    operation: "creating the database's directory",
                    path: Some(dir.to_owned()),
                    source,
                })?;
            }
            Ok(Arc::new(crate::SqliteStore::open(&path)?) as Arc<dyn SnapshotStore>)
        },
        initial,
    )
}
