//! What starting and stopping a kernel report: recovery on start, the shutdown modes and
//! what a shutdown hands back.

use std::fmt;
use std::sync::Arc;

use super::{KernelMetrics, Quarantined, Request};
use crate::store::MachineId;

/// What recovery on start found.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Machines loaded from their newest valid snapshot (invariants checked).
    pub recovered: usize,
    /// Machines whose snapshot is corrupt or invalid: quarantined, not run. The others run.
    pub quarantined: Vec<Arc<Quarantined>>,
    /// Machines that could not be read for another reason (the store failed); they are
    /// loaded again on first use.
    pub unavailable: Vec<(MachineId, String)>,
    /// Stored machines another node owns (the store fences this one): not loaded here.
    pub not_owned: usize,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recovered {} machines, quarantined {}, unavailable {}",
            self.recovered,
            self.quarantined.len(),
            self.unavailable.len()
        )?;
        if self.not_owned > 0 {
            write!(f, ", owned by other nodes {}", self.not_owned)?;
        }
        for q in &self.quarantined {
            write!(f, "\n  {q}")?;
        }
        for (id, e) in &self.unavailable {
            write!(f, "\n  machine `{id}` unavailable: {e}")?;
        }
        Ok(())
    }
}

/// What [`Kernel::shutdown`](super::Kernel::shutdown) returns.
pub struct ShutdownReport<E> {
    /// Commands that were accepted but never applied, handed back with their machine.
    pub handed_back: Vec<(MachineId, Request<E>)>,
    /// The kernel's final metrics.
    pub metrics: KernelMetrics,
}

impl<E> fmt::Debug for ShutdownReport<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownReport")
            .field("handed_back", &self.handed_back.len())
            .field("metrics", &self.metrics)
            .finish()
    }
}
