//! Effects: what a transition asks the world to do, as plain data.
//!
//! Handlers push effects instead of doing I/O; the kernel runs them after the new state is
//! durable, on workers that may fail without harming the machine.

use std::fmt;

/// A buffer of effects emitted by handlers. Creating one does not allocate; it allocates on
/// the first push.
pub struct Effects<F> {
    items: Vec<F>,
}

impl<F> Effects<F> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Effects { items: Vec::new() }
    }

    /// Appends an effect.
    pub fn push(&mut self, effect: F) {
        self.items.push(effect);
    }

    /// Number of effects held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no effect is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The effects, in emission order.
    pub fn as_slice(&self) -> &[F] {
        &self.items
    }

    /// Iterates over the effects in emission order.
    pub fn iter(&self) -> std::slice::Iter<'_, F> {
        self.items.iter()
    }

    /// Removes and yields every effect, keeping the allocation for reuse.
    pub fn drain(&mut self) -> std::vec::Drain<'_, F> {
        self.items.drain(..)
    }

    /// The effects as a vector.
    pub fn into_vec(self) -> Vec<F> {
        self.items
    }

    /// Forgets effects pushed after `len` (a rejected transition's).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.items.truncate(len);
    }
}

impl<F> Default for Effects<F> {
    fn default() -> Self {
        Effects::new()
    }
}

impl<F: fmt::Debug> fmt::Debug for Effects<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.items).finish()
    }
}

impl<F> IntoIterator for Effects<F> {
    type Item = F;
    type IntoIter = std::vec::IntoIter<F>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl<'a, F> IntoIterator for &'a Effects<F> {
    type Item = &'a F;
    type IntoIter = std::slice::Iter<'a, F>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// The effect type of a machine that declares none: it has no values, so no effect can be
/// emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoEffect {}
