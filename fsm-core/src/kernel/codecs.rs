//! How the kernel stores what it keeps in a machine's snapshot besides the state: the events
//! of timers that carry one, and owed effects (postcard, through function pointers, so the
//! kernel's types stay free of serde bounds where nothing is stored).

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// How a kernel stores the events of named timers and event timeouts (state timeouts need
/// none: their event is in the table). Given by `#[derive(Event)]` for an event type that is
/// also `Serialize + Deserialize`, or set by `KernelBuilder::timer_events`. Not public API.
#[doc(hidden)]
pub struct EventCodec<E> {
    pub(crate) encode: fn(&E) -> Result<Vec<u8>, String>,
    pub(crate) decode: fn(&[u8]) -> Result<E, String>,
}

// Two function pointers: copied whatever `E` is (a derive would ask `E: Clone`).
impl<E> Clone for EventCodec<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for EventCodec<E> {}

impl<E: Serialize + DeserializeOwned> EventCodec<E> {
    /// Postcard, the kernel's format for what it keeps beside the state.
    pub fn postcard() -> Self {
        EventCodec {
            encode: |e| {
                // Most events are a few bytes: encode on the stack, allocate exactly once.
                let mut buf = [0u8; 64];
                match postcard::to_slice(e, &mut buf) {
                    Ok(used) => Ok(used.to_vec()),
                    Err(_) => postcard::to_allocvec(e).map_err(|e| e.to_string()),
                }
            },
            decode: |b| match postcard::take_from_bytes(b) {
                Ok((e, [])) => Ok(e),
                Ok((_, rest)) => Err(format!("{} bytes after the event", rest.len())),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// Decodes one stored effect.
pub(crate) type DecodeEffect<F> = fn(&[u8]) -> Result<F, String>;

/// Which effects are at most once (the builder's `at_most_once`).
pub(crate) type OnceFilter<F> = Arc<dyn Fn(&F) -> bool + Send + Sync>;

/// How a kernel stores effects (postcard).
pub(crate) struct EffectCodec<F> {
    pub(crate) encode: fn(&F) -> Result<Vec<u8>, String>,
    pub(crate) decode: DecodeEffect<F>,
}

impl<F> Clone for EffectCodec<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F> Copy for EffectCodec<F> {}

impl<F: Serialize + DeserializeOwned> EffectCodec<F> {
    pub(crate) fn postcard() -> Self {
        EffectCodec {
            encode: |e| {
                // Most effects are a few dozen bytes: encode on the stack, allocate once.
                let mut buf = [0u8; 128];
                match postcard::to_slice(e, &mut buf) {
                    Ok(used) => Ok(used.to_vec()),
                    Err(_) => postcard::to_allocvec(e).map_err(|e| e.to_string()),
                }
            },
            decode: |b| match postcard::take_from_bytes(b) {
                Ok((e, [])) => Ok(e),
                Ok((_, rest)) => Err(format!("{} bytes after the effect", rest.len())),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}
