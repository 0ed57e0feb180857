//! Lock poisoning, recovered in one place.
//!
//! A lock is poisoned when a thread panicked while holding it. Nothing this crate guards
//! with a lock is left half-updated by a panic that matters (a panicking handler or worker
//! is caught before it could leave shared state torn, and every guarded structure is valid
//! between statements), so the guard is taken over rather than the panic spread to every
//! thread that touches the lock afterwards.

use std::sync::{LockResult, PoisonError};

/// `.recover()` on what `lock`, `read`, `write` and a condition variable's waits return:
/// the guard, poisoned or not.
pub(crate) trait Recover<G> {
    fn recover(self) -> G;
}

impl<G> Recover<G> for LockResult<G> {
    fn recover(self) -> G {
        self.unwrap_or_else(PoisonError::into_inner)
    }
}
