//! Machines to snapshots and back: serde payloads, schema versions, migrations, invariants.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::envelope::{EnvelopeError, Format, Limits, Snapshot};
use super::error::StoreError;
use super::seal::{self, SealError, Sealer, SharedSealer};
use crate::{InvalidState, StateMachine};

type Migration<M> = Box<dyn Fn(&[u8], Format) -> Result<M, String> + Send + Sync>;

/// Encodes machines of type `M` into [`Snapshot`]s and decodes them back.
///
/// The codec knows the machine type's current **schema version** (a number you raise when the
/// serialized shape of `M` changes) and how to read older ones: for each older version, a
/// migration from the type that version was written with. Decoding checks, in order: the
/// envelope (done when the [`Snapshot`] was made), the machine type name, the schema version
/// (newer than this build: refused; older: migrated; older without a migration: refused), the
/// payload, and finally the state's invariant ([`StateMachine::validate`]); an invalid state
/// is refused, never returned.
///
/// ```
/// # use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
/// # use serde::{Deserialize, Serialize};
/// use fsm_core::store::{Codec, DecodeError};
/// # #[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # #[fsm(event = Cmd)]
/// # enum Counter { #[fsm(initial, on(Bump => Counting))] Idle, #[fsm(on(Bump => Counting))] Counting { n: u64, label: String } }
/// # #[derive(Event, Debug, Clone)]
/// # enum Cmd { Bump }
/// # impl Handler<cmd::Bump, counter::Counting> for counter::Idle {
/// #     fn handle(_: counter::Idle, _: cmd::Bump, _: &mut Effects<()>) -> Result<counter::Counting, Refusal> { Ok(counter::Counting { n: 1, label: String::new() }) }
/// # }
/// # impl Handler<cmd::Bump, counter::Counting> for counter::Counting {
/// #     fn handle(s: counter::CountingRef<'_>, _: cmd::Bump, _: &mut Effects<()>) -> Result<counter::Counting, Refusal> { Ok(counter::Counting { n: s.n + 1, label: s.label.clone() }) }
/// # }
/// // Version 1 of the schema had no label.
/// #[derive(Deserialize)]
/// enum CounterV1 { Idle, Counting { n: u64 } }
///
/// let v1 = Codec::<Counter>::new(1);
/// # #[derive(Serialize)] enum CounterV1Out { Idle, Counting { n: u64 } }
/// # let old = fsm_core::store::Snapshot::new("Counter", 1, 7, Default::default(), &postcard::to_allocvec(&CounterV1Out::Counting { n: 5 }).unwrap()).unwrap();
/// let v2 = Codec::<Counter>::new(2).migrate_from(1, |old: CounterV1| match old {
///     CounterV1::Idle => Counter::Idle,
///     CounterV1::Counting { n } => Counter::Counting { n, label: "migrated".into() },
/// });
/// // `old` is a snapshot written at schema version 1.
/// assert_eq!(v2.decode(&old).unwrap(), Counter::Counting { n: 5, label: "migrated".into() });
/// // A build that only knows version 1 refuses version 2 loudly.
/// let new = v2.encode(&Counter::Idle, 8).unwrap();
/// assert!(matches!(v1.decode(&new), Err(DecodeError::NewerSchema { found: 2, supported: 1, .. })));
/// ```
pub struct Codec<M> {
    schema: u32,
    format: Format,
    limits: Limits,
    migrations: BTreeMap<u32, Migration<M>>,
    /// Seals sensitive fields, if set (with `blank`, which copies a machine to blank them).
    sealer: Option<SharedSealer>,
    blank: Option<fn(&M) -> M>,
    _machine: PhantomData<fn() -> M>,
}

impl<M> fmt::Debug for Codec<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("schema", &self.schema)
            .field("format", &self.format)
            .field("limits", &self.limits)
            .field(
                "migrations_from",
                &self.migrations.keys().collect::<Vec<_>>(),
            )
            .field("sealing", &self.sealer.is_some())
            .finish()
    }
}

impl<M> Codec<M>
where
    M: StateMachine + Serialize + DeserializeOwned,
{
    /// A codec for schema version `schema_version` of `M`, writing postcard payloads.
    pub fn new(schema_version: u32) -> Self {
        Codec {
            schema: schema_version,
            format: Format::Postcard,
            limits: Limits::DEFAULT,
            migrations: BTreeMap::new(),
            sealer: None,
            blank: None,
            _machine: PhantomData,
        }
    }

    /// Seals the state's `#[fsm(sensitive)]` fields at rest with `sealer` (a
    /// `Keyring` with feature `seal`): the stored payload holds their
    /// defaults and the envelope their values, encrypted (see [`crate::store::Sealer`] for the
    /// layout, and what is and is not encrypted). Snapshots sealed under a key the sealer does
    /// not hold, or altered, are refused with [`DecodeError::Unseal`]; snapshots written
    /// before sealing read as before.
    pub fn sealed(mut self, sealer: impl Sealer + 'static) -> Self
    where
        M: Clone,
    {
        self.sealer = Some(std::sync::Arc::new(sealer));
        self.blank = Some(M::clone);
        self
    }

    /// Whether this codec seals sensitive fields.
    pub fn is_sealing(&self) -> bool {
        self.sealer.is_some()
    }

    /// Writes payloads in `format` (reading accepts every format this build supports,
    /// whatever the snapshot says it holds).
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Bounds what [`decode_bytes`](Codec::decode_bytes) accepts.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Reads snapshots written at the older schema `version` as `Old` and converts them with
    /// `migrate`. The result still has to pass the state's invariant.
    pub fn migrate_from<Old: DeserializeOwned>(
        mut self,
        version: u32,
        migrate: impl Fn(Old) -> M + Send + Sync + 'static,
    ) -> Self {
        self.migrations.insert(
            version,
            Box::new(move |payload, format| deserialize::<Old>(payload, format).map(&migrate)),
        );
        self
    }

    /// The schema version this codec writes.
    pub fn schema_version(&self) -> u32 {
        self.schema
    }

    /// Encodes `machine` as snapshot number `seq`. Every snapshot a codec writes records the
    /// name of the machine's state in the envelope ([`Snapshot::state`]), which is what lets
    /// stores answer queries by state without decoding payloads.
    pub fn encode(&self, machine: &M, seq: u64) -> Result<Snapshot, EncodeError> {
        self.encode_framed(machine, seq, crate::store::Sections::default())
    }

    /// Encodes `machine` as snapshot number `seq` with `journal` stored beside it in the same
    /// envelope (see [`Snapshot::with_journal`]); [`Codec::decode`] ignores the journal.
    pub fn encode_with_journal(
        &self,
        machine: &M,
        seq: u64,
        journal: &[u8],
    ) -> Result<Snapshot, EncodeError> {
        let sections = crate::store::Sections {
            journal: Some(journal),
            ..Default::default()
        };
        self.encode_framed(machine, seq, sections)
    }

    /// Encodes `machine` with the kernel's sections: its `journal`, and its armed `timers`
    /// when it has any (see [`Snapshot::with_sections`]); [`Codec::decode`] ignores both.
    pub fn encode_with_sections(
        &self,
        machine: &M,
        seq: u64,
        journal: &[u8],
        timers: Option<&[u8]>,
    ) -> Result<Snapshot, EncodeError> {
        let sections = crate::store::Sections {
            journal: Some(journal),
            timers,
            ..Default::default()
        };
        self.encode_framed(machine, seq, sections)
    }

    /// Encodes `machine` framed with the kernel's `sections` (see [`Snapshot::framed`]);
    /// [`Codec::decode`] ignores them. The state section is always the machine's own state
    /// name, whatever `sections.state` says.
    pub fn encode_framed(
        &self,
        machine: &M,
        seq: u64,
        sections: crate::store::Sections<'_>,
    ) -> Result<Snapshot, EncodeError> {
        let (payload, sealed) = match self.seal(machine, seq)? {
            Some((blanked, sealed)) => (serialize(&blanked, self.format)?, Some(sealed)),
            None => (serialize(machine, self.format)?, None),
        };
        let sections = crate::store::Sections {
            state: Some(machine.state_name()),
            sealed: sealed.as_deref(),
            ..sections
        };
        Ok(Snapshot::framed(
            M::TABLE.machine(),
            self.schema,
            seq,
            self.format,
            sections,
            &payload,
        )?)
    }

    /// With a sealer, and sensitive fields in the machine's state: the machine with them at
    /// their defaults, and the sealed section holding their values.
    fn seal(&self, machine: &M, seq: u64) -> Result<Option<(M, Vec<u8>)>, EncodeError> {
        let (Some(sealer), Some(blank)) = (&self.sealer, self.blank) else {
            return Ok(None);
        };
        if !machine.__has_sensitive_fields() {
            return Ok(None);
        }
        let mut blanked = blank(machine);
        let mut take = seal::Take::default();
        blanked
            .__sensitive_fields(&mut take)
            .map_err(EncodeError::Payload)?;
        if take.values.is_empty() {
            return Ok(None);
        }
        let plaintext =
            postcard::to_allocvec(&take.values).map_err(|e| EncodeError::Payload(e.to_string()))?;
        let key_id = sealer.current_key();
        let aad = seal::aad(M::TABLE.machine(), self.schema, seq, key_id);
        let sealed = sealer
            .seal(key_id, &aad, &plaintext)
            .map_err(EncodeError::Seal)?;
        Ok(Some((blanked, seal::section(key_id, &sealed))))
    }

    /// Decodes a verified snapshot into a valid machine.
    pub fn decode(&self, snapshot: &Snapshot) -> Result<M, DecodeError> {
        let mut machine = self.decode_payload(snapshot)?;
        if let Some(section) = snapshot.sealed() {
            let (key_id, sealed) = seal::sealed_key(section).map_err(DecodeError::Unseal)?;
            let Some(sealer) = &self.sealer else {
                return Err(DecodeError::Sealed { key_id });
            };
            let aad = seal::aad(
                snapshot.machine(),
                snapshot.schema_version(),
                snapshot.seq(),
                key_id,
            );
            let plaintext = sealer
                .open(key_id, &aad, sealed)
                .map_err(DecodeError::Unseal)?;
            let values: Vec<(String, Vec<u8>)> = postcard::from_bytes(&plaintext)
                .map_err(|e| DecodeError::Unseal(SealError::Malformed(e.to_string())))?;
            machine
                .__sensitive_fields(&mut seal::Restore(&values))
                .map_err(|e| DecodeError::Unseal(SealError::Malformed(e)))?;
        }
        machine.validate().map_err(DecodeError::Invalid)?;
        Ok(machine)
    }

    /// Decodes a snapshot for printing only: its sealed fields are not opened (they hold their
    /// types' defaults, so print the result through [`Redacted`](crate::Redacted)) and the
    /// state's invariant is not run. What `fsm show` prints without the key.
    pub fn decode_redacted(&self, snapshot: &Snapshot) -> Result<M, DecodeError> {
        self.decode_payload(snapshot)
    }

    /// The names of the sensitive fields of `machine`'s state (`&mut` only because the
    /// derive's visitor takes it: nothing is changed).
    pub fn sensitive_fields(machine: &mut M) -> Vec<&'static str> {
        let mut names = seal::Names::default();
        let _ = machine.__sensitive_fields(&mut names);
        names.0
    }

    /// The payload as `M` (migrated if older), sealed fields and invariant aside.
    fn decode_payload(&self, snapshot: &Snapshot) -> Result<M, DecodeError> {
        let expected = M::TABLE.machine();
        if snapshot.machine() != expected {
            return Err(DecodeError::WrongMachine {
                expected,
                found: snapshot.machine().to_owned(),
            });
        }
        let version = snapshot.schema_version();
        let machine = if version == self.schema {
            deserialize::<M>(snapshot.payload(), snapshot.format())
        } else if version > self.schema {
            return Err(DecodeError::NewerSchema {
                machine: expected,
                found: version,
                supported: self.schema,
            });
        } else {
            let Some(migrate) = self.migrations.get(&version) else {
                return Err(DecodeError::NoMigration {
                    machine: expected,
                    found: version,
                    current: self.schema,
                });
            };
            migrate(snapshot.payload(), snapshot.format())
        }
        .map_err(|message| DecodeError::Payload {
            format: snapshot.format(),
            version,
            message,
        })?;
        Ok(machine)
    }

    /// Verifies untrusted `bytes` as an envelope (within the codec's [`Limits`]) and decodes
    /// it; returns the machine and its sequence.
    pub fn decode_bytes(&self, bytes: &[u8]) -> Result<(M, u64), DecodeError> {
        // The copy is bounded by the input; the envelope's own length fields are checked
        // against it and the limits before anything else reads them.
        let snapshot = Snapshot::from_bytes(bytes.to_vec(), &self.limits)?;
        Ok((self.decode(&snapshot)?, snapshot.seq()))
    }
}

fn serialize<T: Serialize>(value: &T, format: Format) -> Result<Vec<u8>, EncodeError> {
    match format {
        Format::Postcard => {
            postcard::to_allocvec(value).map_err(|e| EncodeError::Payload(e.to_string()))
        }
        #[cfg(feature = "json")]
        Format::Json => serde_json::to_vec(value).map_err(|e| EncodeError::Payload(e.to_string())),
        #[cfg(not(feature = "json"))]
        Format::Json => Err(EncodeError::FormatUnavailable(format)),
    }
}

fn deserialize<T: DeserializeOwned>(payload: &[u8], format: Format) -> Result<T, String> {
    match format {
        Format::Postcard => {
            let (value, rest) = postcard::take_from_bytes(payload).map_err(|e| e.to_string())?;
            if !rest.is_empty() {
                return Err(format!("{} bytes left over after the value", rest.len()));
            }
            Ok(value)
        }
        #[cfg(feature = "json")]
        Format::Json => serde_json::from_slice(payload).map_err(|e| e.to_string()),
        #[cfg(not(feature = "json"))]
        Format::Json => {
            Err("the payload is JSON and this build lacks fsm-core's `json` feature".to_owned())
        }
    }
}

/// Why a machine could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// serde refused the value.
    #[error("cannot serialize the machine: {0}")]
    Payload(String),
    /// The format needs a feature this build lacks.
    #[error("{0} payloads need fsm-core's `json` feature")]
    FormatUnavailable(Format),
    /// The envelope cannot hold it.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The sensitive fields could not be sealed.
    #[error("cannot seal the sensitive fields: {0}")]
    Seal(SealError),
}

/// Why a snapshot could not become a machine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not a valid envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The snapshot belongs to another machine type.
    #[error("snapshot is of machine type `{found}`, expected `{expected}`")]
    WrongMachine {
        /// This codec's machine type.
        expected: &'static str,
        /// The type the snapshot names.
        found: String,
    },
    /// Written by a newer build: this one cannot know what it means.
    #[error("snapshot of `{machine}` has schema version {found}, newer than the {supported} this build knows; upgrade before reading it")]
    NewerSchema {
        /// The machine type.
        machine: &'static str,
        /// The snapshot's version.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// An older version with no migration registered.
    #[error("snapshot of `{machine}` has schema version {found} and there is no migration from it to {current}; register one with Codec::migrate_from({found}, ..)")]
    NoMigration {
        /// The machine type.
        machine: &'static str,
        /// The snapshot's version.
        found: u32,
        /// The current version.
        current: u32,
    },
    /// The payload does not deserialize.
    #[error("{format} payload of schema version {version} does not decode: {message}")]
    Payload {
        /// The payload's format.
        format: Format,
        /// The schema version it claims.
        version: u32,
        /// serde's message.
        message: String,
    },
    /// The decoded state fails its invariant.
    #[error("decoded state is invalid: {0}")]
    Invalid(InvalidState),
    /// The snapshot holds sealed fields and this codec has no sealer.
    #[error("the snapshot's sensitive fields are sealed (under key {key_id}); give the codec the keyring (Codec::sealed) to read them")]
    Sealed {
        /// The key id the sealed section names.
        key_id: u32,
    },
    /// The sealed fields do not open: an unknown key, a wrong one, or altered bytes.
    #[error(transparent)]
    Unseal(SealError),
}

/// Why [`SnapshotStoreExt::load`](super::SnapshotStoreExt::load) or `save` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The snapshot did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The machine did not encode.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}
