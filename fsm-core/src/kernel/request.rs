//! What a submitter hands the kernel: an event, and optionally an idempotency key and a
//! deadline.

use std::fmt;
use std::time::Instant;

use crate::machine::Event;

/// The longest idempotency key, in bytes.
pub const MAX_KEY_LEN: usize = 64;

/// A key that makes a command idempotent: the kernel applies at most one command per key and
/// machine, and answers a retry with the original outcome.
///
/// 1 to [`MAX_KEY_LEN`] bytes of printable ASCII without spaces (a UUID, a request id, a
/// message id from the upstream system), so a key is safe to log and to store.
///
/// ```
/// use fsm_core::kernel::IdempotencyKey;
///
/// assert!(IdempotencyKey::new("pay-7f3a9c").is_ok());
/// assert!(IdempotencyKey::new("").is_err());
/// assert!(IdempotencyKey::new("with space").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(Box<str>);

impl IdempotencyKey {
    /// Checks `key` and wraps it.
    pub fn new(key: impl Into<String>) -> Result<IdempotencyKey, InvalidKey> {
        let key: String = key.into();
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(InvalidKey::Length { len: key.len() });
        }
        if let Some((at, byte)) = key
            .bytes()
            .enumerate()
            .find(|(_, b)| !(0x21..=0x7e).contains(b))
        {
            return Err(InvalidKey::Byte { at, byte });
        }
        Ok(IdempotencyKey(key.into_boxed_str()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a string is not an [`IdempotencyKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidKey {
    /// Empty or longer than [`MAX_KEY_LEN`].
    #[error(
        "idempotency key of {len} bytes; use 1 to {MAX_KEY_LEN} bytes (a UUID or request id fits)"
    )]
    Length {
        /// The key's length.
        len: usize,
    },
    /// A byte outside printable ASCII, or a space.
    #[error("idempotency key has byte {byte:#04x} at {at}; use printable ASCII without spaces")]
    Byte {
        /// Where.
        at: usize,
        /// The byte.
        byte: u8,
    },
}

/// A command for one machine: the event, an optional [`IdempotencyKey`] and an optional
/// deadline. A bare event converts into a request without either.
///
/// ```
/// use std::time::{Duration, Instant};
/// use fsm_core::kernel::{IdempotencyKey, Request};
///
/// let plain: Request<&str> = "ping".into();
/// assert!(plain.key().is_none());
/// let careful = Request::new("ping")
///     .with_key(IdempotencyKey::new("ping-1").unwrap())
///     .with_deadline(Instant::now() + Duration::from_secs(1));
/// assert_eq!(careful.key().unwrap().as_str(), "ping-1");
/// ```
pub struct Request<E> {
    pub(crate) event: E,
    pub(crate) key: Option<IdempotencyKey>,
    pub(crate) deadline: Option<Instant>,
}

impl<E> Request<E> {
    /// A request without key or deadline.
    pub fn new(event: E) -> Self {
        Request {
            event,
            key: None,
            deadline: None,
        }
    }

    /// The same request, applied at most once per machine under `key`.
    #[must_use]
    pub fn with_key(mut self, key: IdempotencyKey) -> Self {
        self.key = Some(key);
        self
    }

    /// The same request, answered `Expired` instead of applied if the machine has not taken
    /// it by `deadline` (read from the kernel's clock).
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The event.
    pub fn event(&self) -> &E {
        &self.event
    }

    /// The idempotency key, if any.
    pub fn key(&self) -> Option<&IdempotencyKey> {
        self.key.as_ref()
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The event, giving up the request.
    pub fn into_event(self) -> E {
        self.event
    }
}

impl<E> From<E> for Request<E> {
    fn from(event: E) -> Self {
        Request::new(event)
    }
}

/// Shows the event's name, the key and the deadline, never the payload (it may hold
/// sensitive fields).
impl<E: Event> fmt::Debug for Request<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("event", &self.event.name())
            .field("key", &self.key)
            .field("deadline", &self.deadline)
            .finish()
    }
}
