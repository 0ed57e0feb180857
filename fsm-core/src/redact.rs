//! Printing states and events without their sensitive fields.
//!
//! Fields marked `#[fsm(sensitive)]` print as `<redacted>` through [`Redact`]. The library only
//! ever prints machine data through it; rejections and transitions carry names, never data.

use std::fmt;

/// Formats a value with its sensitive fields hidden. Implemented by both derives for the enum
/// and for every generated typed state, view and event payload (whose `Debug` uses it too).
pub trait Redact {
    /// Writes the value like `Debug` would, with sensitive fields as `<redacted>`.
    fn fmt_redacted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// Wraps a reference so that `{:?}` and `{}` print it redacted.
///
/// ```
/// use fsm_core::{Event, Redacted};
/// #[derive(Event, Debug)]
/// enum Cmd { Pay { cents: u64, #[fsm(sensitive)] card: String } }
/// let cmd = Cmd::Pay { cents: 100, card: "4111 1111 1111 1111".into() };
/// assert_eq!(format!("{:?}", Redacted(&cmd)), "Pay { cents: 100, card: <redacted> }");
/// ```
pub struct Redacted<'a, T: ?Sized>(pub &'a T);

impl<T: Redact + ?Sized> fmt::Debug for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_redacted(f)
    }
}

impl<T: Redact + ?Sized> fmt::Display for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_redacted(f)
    }
}

impl<T: Redact + ?Sized> Redact for &T {
    fn fmt_redacted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt_redacted(f)
    }
}

/// What a sensitive field prints as.
pub(crate) struct Hidden;

impl fmt::Debug for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
