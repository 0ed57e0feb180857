//! The count of work in flight (queued commands, effects, timer firings), so that a draining
//! shutdown and `Kernel::wait_idle` know when everything accepted has been decided.

use std::sync::{Condvar, Mutex, PoisonError};

/// Counts the work in flight (queued commands and effects), so a draining shutdown knows when
/// everything accepted has been decided and every effect run.
pub(super) struct Quiet {
    pub(super) busy: Mutex<i64>,
    pub(super) idle: Condvar,
}

impl Quiet {
    pub(super) fn more(&self, n: usize) {
        if n > 0 {
            *self.busy.lock().unwrap_or_else(PoisonError::into_inner) += n as i64;
        }
    }

    pub(super) fn done(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        *busy -= n as i64;
        if *busy <= 0 {
            self.idle.notify_all();
        }
    }

    pub(super) fn wait_idle(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        while *busy > 0 {
            busy = self.idle.wait(busy).unwrap_or_else(PoisonError::into_inner);
        }
    }
}
