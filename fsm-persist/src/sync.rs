//! Lock poisoning, recovered in one place.
//!
//! A lock is poisoned when a thread panicked while holding it. The stores here keep what a
//! lock guards consistent at every step (a write that fails half-way marks the store itself
//! poisoned, which is a state of the store, not of the lock), so the guard is taken over
//! rather than the panic spread to every later caller.

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
