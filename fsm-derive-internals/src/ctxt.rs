//! Error accumulation: every check records its errors here and the derive reports them all
//! at once (serde_derive's `Ctxt` pattern).

use std::cell::RefCell;

/// Collects errors from parsing and checking.
#[derive(Default)]
pub(crate) struct Ctxt {
    errors: RefCell<Vec<syn::Error>>,
}

impl Ctxt {
    pub(crate) fn new() -> Self {
        Ctxt::default()
    }

    /// Records an error; processing continues.
    pub(crate) fn push(&self, error: syn::Error) {
        self.errors.borrow_mut().push(error);
    }

    /// Whether any error was recorded.
    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.borrow().is_empty()
    }

    /// All errors recorded so far, combined into one, or `Ok` if there were none.
    pub(crate) fn check(&self) -> Result<(), syn::Error> {
        let mut errors = self
            .errors
            .borrow_mut()
            .drain(..)
            .collect::<Vec<_>>()
            .into_iter();
        let Some(mut first) = errors.next() else {
            return Ok(());
        };
        for e in errors {
            first.combine(e);
        }
        Err(first)
    }
}
