//! Sensitive fields sealed at rest.
//!
//! A state's fields marked `#[fsm(sensitive)]` print as `<redacted>` everywhere the library
//! prints; with a [`Sealer`] on the [`Codec`](super::Codec) they are also kept out of the stored
//! bytes. Encoding a machine then writes its payload with each sensitive field of the current
//! state replaced by the field type's `Default`, and the real values, encoded, encrypted and
//! authenticated, in the envelope's **sealed** section:
//!
//! ```text
//! offset size  field
//!      0    1  layout version (1)
//!      1    4  key id (little endian): which key of the keyring sealed it
//!      5    n  what the sealer wrote: for Keyring, a 24-byte nonce, then the ciphertext
//!              of the field values and its 16-byte Poly1305 tag
//! ```
//!
//! The associated data binds the ciphertext to the machine type, schema version, sequence and
//! key id of its envelope, so a sealed section moved into another snapshot does not open.
//!
//! **What is encrypted:** the values of the sensitive fields of the state the machine is in.
//! **What is not:** the machine id, the machine type, the state's name (the state section), the
//! schema version and sequence, the other fields of the payload, the kernel's sections (the
//! idempotency journal, armed timers and their events, owed effects), and events the kernel
//! keeps for later (timers, a cluster's inbox): keep secrets out of events and effects, or seal
//! them yourself.
//!
//! **Keys rotate:** a [`Keyring`] seals under its current key and opens anything sealed under
//! any key it holds, so a new key is added as current with the old ones kept for reading; each
//! snapshot moves to the new key when it is next written. **A lost key is lost data:** the
//! fields it sealed cannot be read back by anyone; the rest of the machine can
//! ([`Codec::decode_redacted`](super::Codec::decode_redacted) shows it, with those fields
//! at their defaults), and a kernel quarantines the machine with a typed cause instead of
//! running it on defaults. Snapshots written without a sealer (before sealing was turned on)
//! read as before and are sealed when next written.

use thiserror::Error;

use crate::__private::{SealField, SealVisit};

/// The layout version of the sealed section.
const LAYOUT: u8 = 1;
/// Bytes before what the sealer wrote.
const HEADER: usize = 5;

/// Encrypts and authenticates the sealed section's contents. `Keyring` (feature `seal`) is
/// the implementation with RustCrypto's XChaCha20-Poly1305; implement this for a key
/// management service or a hardware module.
pub trait Sealer: Send + Sync {
    /// The id of the key new snapshots are sealed under.
    fn current_key(&self) -> u32;

    /// Encrypts `plaintext` under key `key_id` (the current one), authenticating `aad` with
    /// it; returns the bytes to store.
    fn seal(&self, key_id: u32, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError>;

    /// Decrypts `sealed`, written by [`Sealer::seal`] under key `key_id` with `aad`.
    fn open(&self, key_id: u32, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError>;
}

/// Why sealed fields could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SealError {
    /// The keyring holds no key of this id.
    #[error("the fields were sealed under key {key_id}, which the keyring does not hold: add it (Keyring::with_key) to read them")]
    UnknownKey {
        /// The key id the section names.
        key_id: u32,
    },
    /// Authentication failed: the bytes were altered, or the key of this id is not the one
    /// that sealed them.
    #[error("the fields sealed under key {key_id} do not authenticate: the snapshot was altered, or the key with this id is not the one that sealed them")]
    Tampered {
        /// The key id the section names.
        key_id: u32,
    },
    /// The section or what it decrypts to does not have the expected layout.
    #[error("the sealed section is malformed: {0}")]
    Malformed(String),
    /// Sealing itself failed (no randomness for a nonce, a failing key service).
    #[error("sealing failed: {0}")]
    Failed(String),
}

/// The associated data of a sealed section.
pub(crate) fn aad(machine: &str, schema: u32, seq: u64, key_id: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(machine.len() + 20);
    aad.extend_from_slice(b"fsm-sealed-v1\0");
    aad.extend_from_slice(machine.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&schema.to_le_bytes());
    aad.extend_from_slice(&seq.to_le_bytes());
    aad.extend_from_slice(&key_id.to_le_bytes());
    aad
}

/// The section's bytes for what `key_id` sealed.
pub(crate) fn section(key_id: u32, sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + sealed.len());
    out.push(LAYOUT);
    out.extend_from_slice(&key_id.to_le_bytes());
    out.extend_from_slice(sealed);
    out
}

/// The key id a sealed section names, and what its sealer wrote.
pub fn sealed_key(section: &[u8]) -> Result<(u32, &[u8]), SealError> {
    if section.len() < HEADER {
        return Err(SealError::Malformed(format!(
            "{} bytes, shorter than its {HEADER}-byte header",
            section.len()
        )));
    }
    if section[0] != LAYOUT {
        return Err(SealError::Malformed(format!(
            "layout version {} (this build reads {LAYOUT})",
            section[0]
        )));
    }
    let key_id = u32::from_le_bytes([section[1], section[2], section[3], section[4]]);
    Ok((key_id, &section[HEADER..]))
}

/// Takes each sensitive field's value (encoded) and leaves its default in its place.
#[derive(Default)]
pub(crate) struct Take {
    pub(crate) values: Vec<(&'static str, Vec<u8>)>,
}

impl SealVisit for Take {
    fn field(&mut self, name: &'static str, value: &mut dyn SealField) -> Result<(), String> {
        self.values.push((name, value.seal()?));
        value.blank();
        Ok(())
    }
}

/// Puts each sensitive field's value back from what was sealed.
pub(crate) struct Restore<'a>(pub(crate) &'a [(String, Vec<u8>)]);

impl SealVisit for Restore<'_> {
    fn field(&mut self, name: &'static str, value: &mut dyn SealField) -> Result<(), String> {
        let Some((_, bytes)) = self.0.iter().find(|(n, _)| n == name) else {
            return Err(format!(
                "the sealed section holds no value for field `{name}`"
            ));
        };
        value
            .open(bytes)
            .map_err(|e| format!("field `{name}`: {e}"))
    }
}

/// Records the names of the sensitive fields of the current state.
#[derive(Default)]
pub(crate) struct Names(pub(crate) Vec<&'static str>);

impl SealVisit for Names {
    fn field(&mut self, name: &'static str, _: &mut dyn SealField) -> Result<(), String> {
        self.0.push(name);
        Ok(())
    }
}

/// Keys for sealing, by id: one current key that seals, and older ones kept to open what they
/// sealed (feature `seal`). XChaCha20-Poly1305 from RustCrypto's `chacha20poly1305`, with a
/// random 24-byte nonce per snapshot (large enough that random nonces do not repeat).
///
/// ```
/// use fsm_core::store::{Keyring, Sealer};
/// // In a service: keys from its secret store, never from source code.
/// let old = Keyring::new(1, Keyring::generate_key());
/// let rotated = Keyring::new(2, Keyring::generate_key()).with_key(1, old.key(1).unwrap());
/// assert_eq!(rotated.current_key(), 2);
/// ```
#[cfg(feature = "seal")]
#[derive(Clone)]
pub struct Keyring {
    current: u32,
    keys: std::collections::BTreeMap<u32, [u8; 32]>,
}

#[cfg(feature = "seal")]
impl Keyring {
    /// A keyring that seals under key `id`.
    pub fn new(id: u32, key: [u8; 32]) -> Self {
        Keyring {
            current: id,
            keys: [(id, key)].into_iter().collect(),
        }
    }

    /// Also holds key `id`, to open what it sealed (the current key stays current).
    pub fn with_key(mut self, id: u32, key: [u8; 32]) -> Self {
        self.keys.insert(id, key);
        self
    }

    /// A new random key from the operating system's generator.
    pub fn generate_key() -> [u8; 32] {
        use chacha20poly1305::aead::{KeyInit, OsRng};
        chacha20poly1305::XChaCha20Poly1305::generate_key(&mut OsRng).into()
    }

    /// Key `id`'s bytes, if the keyring holds it (to hand it on to a rotated keyring).
    pub fn key(&self, id: u32) -> Option<[u8; 32]> {
        self.keys.get(&id).copied()
    }

    fn cipher(&self, id: u32) -> Result<chacha20poly1305::XChaCha20Poly1305, SealError> {
        use chacha20poly1305::aead::KeyInit;
        let key = self
            .keys
            .get(&id)
            .ok_or(SealError::UnknownKey { key_id: id })?;
        Ok(chacha20poly1305::XChaCha20Poly1305::new(key.into()))
    }
}

#[cfg(feature = "seal")]
impl std::fmt::Debug for Keyring {
    // Key ids only: the keys never print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(feature = "seal")]
impl Sealer for Keyring {
    fn current_key(&self) -> u32 {
        self.current
    }

    fn seal(&self, key_id: u32, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        use chacha20poly1305::aead::{Aead, AeadCore, OsRng, Payload};
        let cipher = self.cipher(key_id)?;
        let nonce = chacha20poly1305::XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| SealError::Failed("XChaCha20-Poly1305 encryption failed".into()))?;
        let mut out = Vec::with_capacity(nonce.len() + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn open(&self, key_id: u32, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        use chacha20poly1305::aead::{Aead, Payload};
        const NONCE: usize = 24;
        let cipher = self.cipher(key_id)?;
        if sealed.len() < NONCE + 16 {
            return Err(SealError::Malformed(format!(
                "{} bytes, shorter than a nonce and a tag",
                sealed.len()
            )));
        }
        let (nonce, msg) = sealed.split_at(NONCE);
        cipher
            .decrypt(nonce.into(), Payload { msg, aad })
            .map_err(|_| SealError::Tampered { key_id })
    }
}

/// A sealer as the codec holds it.
pub(crate) type SharedSealer = std::sync::Arc<dyn Sealer>;
