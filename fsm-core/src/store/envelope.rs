//! The snapshot envelope: the self-checking byte layout every store keeps.
//!
//! ```text
//! offset size  field
//!      0    4  magic "FSMS"
//!      4    1  format version (1)
//!      5    1  payload codec (0 postcard, 1 JSON)
//!      6    2  flags: bit 0 = the payload area holds a journal, bit 1 = timers,
//!                 bit 2 = an outbox, bit 3 = the state's name, bit 4 = sealed fields;
//!                 other bits reserved (0)
//!      8    4  schema version of the machine type      (little endian, as every number)
//!     12    8  sequence
//!     20    2  machine type name length n (at most 255)
//!     22    4  payload length p
//!     26    n  machine type name (UTF-8)
//!   26+n    p  payload
//! 26+n+p    4  CRC32C of every byte before it
//! ```
//!
//! With flag bit 0 set, the payload area holds a **journal** before the machine's state:
//! a 4-byte journal length `j`, `j` bytes of journal, then the state. The journal is the
//! kernel's bookkeeping that must become durable in the same write as the state (the
//! idempotency keys of the transitions that produced it); [`Snapshot::payload`] is the state
//! alone, so a codec reads a journaled snapshot like any other.
//!
//! The kernel's other sections follow the journal in a fixed order, each present only when its
//! flag bit is set, each a 4-byte length and that many bytes (their own layouts carry a version
//! byte):
//! - bit 1, **timers**: the machine's armed timers with their deadlines (see [`crate::timer`]);
//! - bit 2, **outbox**: the effects the machine owes the world and that no worker has answered
//!   yet (see [`crate::kernel`]'s durable effects);
//! - bit 3, **state**: the name of the state the payload holds (UTF-8, 1 to
//!   [`MAX_STATE_NAME`] bytes), written by [`Codec`](crate::store::Codec) for every snapshot,
//!   so that a store can index machines by state and answer "which machines are in
//!   `PastDue`?" from the envelope, without decoding a payload. Snapshots written before this
//!   section existed have no state name: stores report them as *unrecorded*;
//! - bit 4, **sealed**: the state's `#[fsm(sensitive)]` fields, encrypted (see
//!   [`Sealer`](crate::store::Sealer)); the payload then holds their default values.
//!
//! A snapshot of a machine with no armed timer and nothing owed has neither section, so it
//! reads as before; a reader that predates a section refuses a snapshot that has it with
//! [`EnvelopeError::ReservedFlags`] instead of silently dropping what it holds. Every section
//! is located by one parser ([`Section`] names them), which checks its length against the bytes
//! that follow it before anything reads it.
//!
//! Decoding borrows the bytes it is given and allocates nothing; it checks the length fields
//! against the bytes actually present and against [`Limits`] before anything else looks at
//! them, so no input can make a reader allocate or index past what it holds.

use std::fmt;

/// The first four bytes of every envelope.
pub const MAGIC: [u8; 4] = *b"FSMS";
/// The envelope layout version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes before the machine type name.
const FIXED: usize = 26;
/// Bytes of the trailing checksum.
const CRC_LEN: usize = 4;
/// The longest machine type name an envelope carries.
pub const MAX_MACHINE_NAME: usize = 255;
/// The longest state name an envelope carries.
pub const MAX_STATE_NAME: usize = 255;
/// Bytes of a section's length field.
const SECTION_LEN: usize = 4;
/// Every flag bit a section uses; the others are reserved.
const SECTION_FLAGS: u16 = 0b1_1111;

/// The kernel's sections of an envelope's payload area, in the order they are stored (each
/// before the machine's state, each present only when its flag bit is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    /// The idempotency keys of the transitions that produced the state.
    Journal,
    /// The machine's armed timers.
    Timers,
    /// The effects the machine owes and no worker has answered yet.
    Outbox,
    /// The name of the state the payload holds.
    State,
    /// The state's sensitive fields, encrypted.
    Sealed,
}

/// How many kinds of section there are.
const SECTIONS: usize = 5;

impl Section {
    /// Every section, in stored order.
    pub const ALL: [Section; SECTIONS] = [
        Section::Journal,
        Section::Timers,
        Section::Outbox,
        Section::State,
        Section::Sealed,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn flag(self) -> u16 {
        1 << self.index()
    }

    /// The section's name, as errors say it.
    pub fn name(self) -> &'static str {
        match self {
            Section::Journal => "journal",
            Section::Timers => "timers",
            Section::Outbox => "outbox",
            Section::State => "state",
            Section::Sealed => "sealed",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kernel's sections to frame with a state (see [`Snapshot::framed`]); `None` leaves a
/// section out (its flag clear).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sections<'a> {
    /// The journal ([`Snapshot::journal`]).
    pub journal: Option<&'a [u8]>,
    /// The timers section ([`Snapshot::timers`]).
    pub timers: Option<&'a [u8]>,
    /// The outbox section ([`Snapshot::outbox`]).
    pub outbox: Option<&'a [u8]>,
    /// The name of the state the payload holds ([`Snapshot::state`]);
    /// [`Codec`](crate::store::Codec) fills it in from the machine it encodes.
    pub state: Option<&'a str>,
    /// The state's sensitive fields, sealed ([`Snapshot::sealed`]); a sealing
    /// [`Codec`](crate::store::Codec) fills it in.
    pub sealed: Option<&'a [u8]>,
}

impl<'a> Sections<'a> {
    fn get(&self, section: Section) -> Option<&'a [u8]> {
        match section {
            Section::Journal => self.journal,
            Section::Timers => self.timers,
            Section::Outbox => self.outbox,
            Section::State => self.state.map(str::as_bytes),
            Section::Sealed => self.sealed,
        }
    }
}

/// How the payload (the machine's state) is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Format {
    /// postcard: compact binary serde, the default.
    #[default]
    Postcard,
    /// JSON, for snapshots a human reads (feature `json` to encode or decode).
    Json,
}

impl Format {
    fn tag(self) -> u8 {
        match self {
            Format::Postcard => 0,
            Format::Json => 1,
        }
    }

    fn from_tag(tag: u8) -> Option<Format> {
        match tag {
            0 => Some(Format::Postcard),
            1 => Some(Format::Json),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Postcard => "postcard",
            Format::Json => "JSON",
        })
    }
}

/// Bounds on what a reader accepts from untrusted bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest payload accepted, in bytes (default 16 MiB).
    pub max_payload: usize,
}

impl Limits {
    /// The default bound: payloads up to 16 MiB.
    pub const DEFAULT: Limits = Limits {
        max_payload: 16 << 20,
    };

    /// The largest whole envelope these limits accept, for readers that size a buffer.
    pub fn max_envelope(&self) -> usize {
        FIXED + MAX_MACHINE_NAME + self.max_payload + CRC_LEN
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// One machine's state as a store keeps it: a verified envelope.
///
/// A `Snapshot` can only be made by encoding ([`Snapshot::new`]) or by verifying bytes
/// ([`Snapshot::from_bytes`]), so holding one means its checksum matched.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    bytes: Vec<u8>,
    format: Format,
    schema: u32,
    seq: u64,
    name_len: usize,
    /// Per [`Section`], its length (without its length field), if the snapshot has it.
    sections: [Option<usize>; SECTIONS],
}

impl Snapshot {
    /// Frames `payload` (already encoded in `format`) as snapshot number `seq` of a machine
    /// type `machine` at schema version `schema`.
    pub fn new(
        machine: &str,
        schema: u32,
        seq: u64,
        format: Format,
        payload: &[u8],
    ) -> Result<Snapshot, EnvelopeError> {
        Snapshot::framed(machine, schema, seq, format, Sections::default(), payload)
    }

    /// Like [`Snapshot::new`], with a `journal` stored before the state in the same envelope
    /// (so both become durable in one write). [`Snapshot::journal`] reads it back.
    pub fn with_journal(
        machine: &str,
        schema: u32,
        seq: u64,
        format: Format,
        journal: &[u8],
        payload: &[u8],
    ) -> Result<Snapshot, EnvelopeError> {
        let sections = Sections {
            journal: Some(journal),
            ..Sections::default()
        };
        Snapshot::framed(machine, schema, seq, format, sections, payload)
    }

    /// Like [`Snapshot::with_journal`], with a `timers` section too when it is `Some` (the
    /// kernel's armed timers, stored in the same write as the state; [`Snapshot::timers`]).
    pub fn with_sections(
        machine: &str,
        schema: u32,
        seq: u64,
        format: Format,
        journal: &[u8],
        timers: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<Snapshot, EnvelopeError> {
        let sections = Sections {
            journal: Some(journal),
            timers,
            ..Sections::default()
        };
        Snapshot::framed(machine, schema, seq, format, sections, payload)
    }

    /// Frames `payload` with the kernel's `sections` (each one given is stored before the
    /// state, in [`Section::ALL`]'s order, in the same write).
    pub fn framed(
        machine: &str,
        schema: u32,
        seq: u64,
        format: Format,
        sections: Sections<'_>,
        payload: &[u8],
    ) -> Result<Snapshot, EnvelopeError> {
        if machine.len() > MAX_MACHINE_NAME {
            return Err(EnvelopeError::NameTooLong { len: machine.len() });
        }
        if let Some(state) = sections.state {
            check_state_name(state.as_bytes())?;
        }
        let present = Section::ALL.map(|s| sections.get(s));
        let area = payload.len()
            + present
                .iter()
                .flatten()
                .map(|b| SECTION_LEN + b.len())
                .sum::<usize>();
        let too_large = || EnvelopeError::TooLarge {
            len: area,
            limit: u32::MAX as usize,
        };
        let payload_len = u32::try_from(area).map_err(|_| too_large())?;
        let flags = Section::ALL
            .iter()
            .filter(|s| present[s.index()].is_some())
            .fold(0u16, |f, s| f | s.flag());
        let mut bytes = Vec::with_capacity(FIXED + machine.len() + area + CRC_LEN);
        bytes.extend_from_slice(&MAGIC);
        bytes.push(FORMAT_VERSION);
        bytes.push(format.tag());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&schema.to_le_bytes());
        bytes.extend_from_slice(&seq.to_le_bytes());
        bytes.extend_from_slice(&(machine.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&payload_len.to_le_bytes());
        bytes.extend_from_slice(machine.as_bytes());
        for section in present.iter().flatten() {
            // Fits: the whole area fits in a u32.
            bytes.extend_from_slice(&(section.len() as u32).to_le_bytes());
            bytes.extend_from_slice(section);
        }
        bytes.extend_from_slice(payload);
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        Ok(Snapshot {
            bytes,
            format,
            schema,
            seq,
            name_len: machine.len(),
            sections: present.map(|s| s.map(<[u8]>::len)),
        })
    }

    /// Verifies `bytes` as one whole envelope and takes them.
    pub fn from_bytes(bytes: Vec<u8>, limits: &Limits) -> Result<Snapshot, EnvelopeError> {
        let header = verify(&bytes, limits)?;
        if header.total != bytes.len() {
            return Err(EnvelopeError::LengthMismatch {
                declared: header.total,
                actual: bytes.len(),
            });
        }
        Ok(Snapshot {
            bytes,
            format: header.format,
            schema: header.schema,
            seq: header.seq,
            name_len: header.name_len,
            sections: header.sections,
        })
    }

    /// Verifies the envelope at the start of `bytes` (which may continue with other data) and
    /// returns its length, for readers of logs that hold envelopes back to back.
    pub fn verify_prefix(bytes: &[u8], limits: &Limits) -> Result<usize, EnvelopeError> {
        verify(bytes, limits).map(|h| h.total)
    }

    /// Like [`Snapshot::verify_prefix`], also returning the state name the envelope records
    /// (see [`Snapshot::state`]), borrowed from `bytes`: what a log reader keeps in its index.
    pub fn verify_prefix_state<'b>(
        bytes: &'b [u8],
        limits: &Limits,
    ) -> Result<(usize, Option<&'b str>), EnvelopeError> {
        let header = verify(bytes, limits)?;
        let state = header.sections[Section::State.index()].map(|len| {
            let before: usize = header.sections[..Section::State.index()]
                .iter()
                .flatten()
                .map(|len| SECTION_LEN + len)
                .sum();
            let start = FIXED + header.name_len + before + SECTION_LEN;
            // Checked as UTF-8 by `verify`.
            std::str::from_utf8(&bytes[start..start + len]).unwrap_or("")
        });
        Ok((header.total, state))
    }

    /// The sequence number: rises by at least one with every snapshot of one machine.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The machine type name the snapshot was written for.
    pub fn machine(&self) -> &str {
        // Verified as UTF-8 on the way in, or built from a `&str`.
        std::str::from_utf8(&self.bytes[FIXED..FIXED + self.name_len]).unwrap_or("")
    }

    /// The schema version of the machine type the payload was written with.
    pub fn schema_version(&self) -> u32 {
        self.schema
    }

    /// The payload codec.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Where `section`'s length field would start: after the sections before it.
    fn section_at(&self, section: Section) -> usize {
        FIXED
            + self.name_len
            + self.sections[..section.index()]
                .iter()
                .flatten()
                .map(|len| SECTION_LEN + len)
                .sum::<usize>()
    }

    /// A kernel section stored with the state, if the snapshot has it.
    pub fn section(&self, section: Section) -> Option<&[u8]> {
        let len = self.sections[section.index()]?;
        let start = self.section_at(section) + SECTION_LEN;
        Some(&self.bytes[start..start + len])
    }

    /// The encoded machine state (without the kernel's sections, if there are any).
    pub fn payload(&self) -> &[u8] {
        let start = FIXED
            + self.name_len
            + self
                .sections
                .iter()
                .flatten()
                .map(|len| SECTION_LEN + len)
                .sum::<usize>();
        &self.bytes[start..self.bytes.len() - CRC_LEN]
    }

    /// The timers section stored with the state, if the snapshot has one.
    pub fn timers(&self) -> Option<&[u8]> {
        self.section(Section::Timers)
    }

    /// The outbox section stored with the state, if the snapshot has one.
    pub fn outbox(&self) -> Option<&[u8]> {
        self.section(Section::Outbox)
    }

    /// The name of the state the payload holds, if the snapshot records it (every snapshot a
    /// [`Codec`](crate::store::Codec) writes does; those written before the state section
    /// existed do not). Read from the envelope: no payload is decoded.
    pub fn state(&self) -> Option<&str> {
        // Verified as UTF-8 on the way in, or built from a `&str`.
        self.section(Section::State)
            .map(|bytes| std::str::from_utf8(bytes).unwrap_or(""))
    }

    /// The sealed section (the state's sensitive fields, encrypted), if the snapshot has one.
    pub fn sealed(&self) -> Option<&[u8]> {
        self.section(Section::Sealed)
    }

    /// The journal stored with the state, if the snapshot was made
    /// [`with_journal`](Snapshot::with_journal).
    pub fn journal(&self) -> Option<&[u8]> {
        self.section(Section::Journal)
    }

    /// The whole envelope, as a store writes it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The whole envelope, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The envelope's length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true (an envelope has a header); present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl fmt::Debug for Snapshot {
    // The payload is the machine's state and may hold sensitive fields: show its size only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("machine", &self.machine())
            .field("schema_version", &self.schema)
            .field("seq", &self.seq)
            .field("format", &self.format)
            .field("payload_len", &self.payload().len())
            .field("sections", &self.sections)
            .finish()
    }
}

struct Header {
    format: Format,
    schema: u32,
    seq: u64,
    name_len: usize,
    sections: [Option<usize>; SECTIONS],
    total: usize,
}

fn le<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

fn verify(bytes: &[u8], limits: &Limits) -> Result<Header, EnvelopeError> {
    if bytes.len() < FIXED + CRC_LEN {
        return Err(EnvelopeError::Truncated {
            needed: FIXED + CRC_LEN,
            actual: bytes.len(),
        });
    }
    let magic: [u8; 4] = le(bytes, 0);
    if magic != MAGIC {
        return Err(EnvelopeError::BadMagic { found: magic });
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(EnvelopeError::UnsupportedFormatVersion { found: bytes[4] });
    }
    let format = Format::from_tag(bytes[5]).ok_or(EnvelopeError::UnknownCodec { tag: bytes[5] })?;
    let flags = u16::from_le_bytes(le(bytes, 6));
    if flags & !SECTION_FLAGS != 0 {
        return Err(EnvelopeError::ReservedFlags { flags });
    }
    let schema = u32::from_le_bytes(le(bytes, 8));
    let seq = u64::from_le_bytes(le(bytes, 12));
    let name_len = u16::from_le_bytes(le(bytes, 20)) as usize;
    let payload_len = u32::from_le_bytes(le(bytes, 22)) as usize;
    if name_len > MAX_MACHINE_NAME {
        return Err(EnvelopeError::NameTooLong { len: name_len });
    }
    if payload_len > limits.max_payload {
        return Err(EnvelopeError::TooLarge {
            len: payload_len,
            limit: limits.max_payload,
        });
    }
    let total = FIXED + name_len + payload_len + CRC_LEN;
    if bytes.len() < total {
        return Err(EnvelopeError::Truncated {
            needed: total,
            actual: bytes.len(),
        });
    }
    let body = &bytes[..total - CRC_LEN];
    let stored = u32::from_le_bytes(le(bytes, total - CRC_LEN));
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(EnvelopeError::Checksum { stored, computed });
    }
    if std::str::from_utf8(&bytes[FIXED..FIXED + name_len]).is_err() {
        return Err(EnvelopeError::NameNotUtf8);
    }
    let mut sections = [None; SECTIONS];
    let mut at = FIXED + name_len;
    for section in Section::ALL {
        if flags & section.flag() == 0 {
            continue;
        }
        let len = section_len(&bytes[at..total - CRC_LEN], section)?;
        if section == Section::State {
            let start = at + SECTION_LEN;
            check_state_name(&bytes[start..start + len])?;
        }
        sections[section.index()] = Some(len);
        at += SECTION_LEN + len;
    }
    Ok(Header {
        format,
        schema,
        seq,
        name_len,
        sections,
        total,
    })
}

/// The length of `section`, whose length field starts `area` (what is left of the payload
/// area), checked to fit in it.
fn section_len(area: &[u8], section: Section) -> Result<usize, EnvelopeError> {
    if area.len() < SECTION_LEN {
        return Err(EnvelopeError::BadSection {
            section,
            declared: None,
            area: area.len(),
        });
    }
    let declared = u32::from_le_bytes(le(area, 0)) as usize;
    if declared > area.len() - SECTION_LEN {
        return Err(EnvelopeError::BadSection {
            section,
            declared: Some(declared),
            area: area.len(),
        });
    }
    Ok(declared)
}

/// A state name as the state section holds it: UTF-8, 1 to [`MAX_STATE_NAME`] bytes.
fn check_state_name(bytes: &[u8]) -> Result<(), EnvelopeError> {
    if bytes.is_empty() || bytes.len() > MAX_STATE_NAME || std::str::from_utf8(bytes).is_err() {
        return Err(EnvelopeError::BadStateName { len: bytes.len() });
    }
    Ok(())
}

/// Why bytes are not a valid envelope. Every variant means "corrupt or not a snapshot";
/// none of them is retryable by reading the same bytes again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Fewer bytes than the header or the declared lengths need (a truncated file or a torn
    /// write).
    #[error("truncated: {actual} bytes where the envelope needs {needed}")]
    Truncated {
        /// Bytes the envelope needs.
        needed: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The bytes do not start with `FSMS`.
    #[error("not a snapshot envelope: magic {found:02x?}, expected \"FSMS\"")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// Written by a newer (or unknown) envelope layout.
    #[error(
        "envelope format version {found} is not supported (this build reads version {FORMAT_VERSION}); upgrade to read it"
    )]
    UnsupportedFormatVersion {
        /// The version byte found.
        found: u8,
    },
    /// An unknown payload codec tag.
    #[error("unknown payload codec tag {tag}")]
    UnknownCodec {
        /// The tag found.
        tag: u8,
    },
    /// Reserved flag bits are set.
    #[error("reserved flags {flags:#06x} are set")]
    ReservedFlags {
        /// The flags found.
        flags: u16,
    },
    /// The machine type name is longer than 255 bytes.
    #[error("machine type name of {len} bytes; at most {MAX_MACHINE_NAME} fit in an envelope")]
    NameTooLong {
        /// The declared length.
        len: usize,
    },
    /// The machine type name is not UTF-8.
    #[error("machine type name is not UTF-8")]
    NameNotUtf8,
    /// The payload is larger than the reader's [`Limits`] allow.
    #[error("payload of {len} bytes exceeds the limit of {limit} bytes (raise Limits::max_payload if it is genuine)")]
    TooLarge {
        /// The declared payload length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The envelope is followed by bytes that are not part of it.
    #[error("envelope declares {declared} bytes but {actual} are present")]
    LengthMismatch {
        /// The length the header declares.
        declared: usize,
        /// The length present.
        actual: usize,
    },
    /// A section's flag is set but the section does not fit in what is left of the payload
    /// area after the sections before it.
    #[error("{section} section of {declared:?} bytes does not fit in the {area} bytes left of the payload area")]
    BadSection {
        /// Which section.
        section: Section,
        /// The length declared, if the area even holds the length field.
        declared: Option<usize>,
        /// The bytes left, length field included.
        area: usize,
    },
    /// The state section does not hold a state name: empty, longer than
    /// [`MAX_STATE_NAME`] bytes, or not UTF-8.
    #[error("the state section's {len} bytes are not a state name (1 to {MAX_STATE_NAME} bytes of UTF-8)")]
    BadStateName {
        /// The section's length.
        len: usize,
    },
    /// The checksum does not match: flipped bits, a torn write, or garbage.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The CRC32C in the envelope.
        stored: u32,
        /// The CRC32C of the bytes.
        computed: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timers_section_travels_beside_the_journal_and_the_state() {
        let s =
            Snapshot::with_sections("M", 1, 7, Format::Postcard, b"jj", Some(b"tttt"), b"state")
                .unwrap();
        let back = Snapshot::from_bytes(s.as_bytes().to_vec(), &Limits::DEFAULT).unwrap();
        assert_eq!(back.journal(), Some(&b"jj"[..]));
        assert_eq!(back.timers(), Some(&b"tttt"[..]));
        assert_eq!(back.payload(), b"state");
        let plain =
            Snapshot::with_sections("M", 1, 7, Format::Postcard, b"jj", None, b"state").unwrap();
        assert_eq!(plain.timers(), None);
        assert_eq!(
            plain.as_bytes(),
            Snapshot::with_journal("M", 1, 7, Format::Postcard, b"jj", b"state")
                .unwrap()
                .as_bytes()
        );
        // A section longer than what follows the journal is refused before anything reads it.
        let mut bytes = s.into_bytes();
        let at = FIXED + 1 + SECTION_LEN + 2;
        bytes[at..at + 4].copy_from_slice(&100u32.to_le_bytes());
        let n = bytes.len();
        let crc = crc32c::crc32c(&bytes[..n - CRC_LEN]);
        bytes[n - CRC_LEN..].copy_from_slice(&crc.to_le_bytes());
        let err = Snapshot::from_bytes(bytes, &Limits::DEFAULT).unwrap_err();
        assert!(
            matches!(
                err,
                EnvelopeError::BadSection {
                    section: Section::Timers,
                    declared: Some(100),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn every_section_is_found_by_its_flag_whichever_others_are_present() {
        for mask in 0u8..32 {
            let pick = |bit: u8, b: &'static [u8]| (mask & bit != 0).then_some(b);
            let sections = Sections {
                journal: pick(1, b"j"),
                timers: pick(2, b"tt"),
                outbox: pick(4, b"ooo"),
                state: (mask & 8 != 0).then_some("PastDue"),
                sealed: pick(16, b"ssss"),
            };
            let s = Snapshot::framed("M", 1, 2, Format::Postcard, sections, b"state").unwrap();
            let back = Snapshot::from_bytes(s.into_bytes(), &Limits::DEFAULT).unwrap();
            assert_eq!(back.journal(), sections.journal, "mask {mask}");
            assert_eq!(back.timers(), sections.timers, "mask {mask}");
            assert_eq!(back.outbox(), sections.outbox, "mask {mask}");
            assert_eq!(back.state(), sections.state, "mask {mask}");
            assert_eq!(back.sealed(), sections.sealed, "mask {mask}");
            assert_eq!(back.payload(), b"state", "mask {mask}");
        }
        // An outbox longer than what is left is refused, named.
        let s = Snapshot::framed(
            "M",
            1,
            2,
            Format::Postcard,
            Sections {
                outbox: Some(b"ooo"),
                ..Sections::default()
            },
            b"",
        )
        .unwrap();
        let mut bytes = s.into_bytes();
        let at = FIXED + 1;
        bytes[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
        let n = bytes.len();
        let crc = crc32c::crc32c(&bytes[..n - CRC_LEN]);
        bytes[n - CRC_LEN..].copy_from_slice(&crc.to_le_bytes());
        let err = Snapshot::from_bytes(bytes, &Limits::DEFAULT).unwrap_err();
        assert_eq!(
            err,
            EnvelopeError::BadSection {
                section: Section::Outbox,
                declared: Some(9),
                area: 7
            }
        );
        assert!(err.to_string().starts_with("outbox section"), "{err}");
    }

    #[test]
    fn a_state_name_that_is_empty_too_long_or_not_utf8_is_refused_both_ways() {
        let with = |state: &str| {
            let sections = Sections {
                state: Some(state),
                ..Sections::default()
            };
            Snapshot::framed("M", 1, 1, Format::Postcard, sections, b"p")
        };
        assert_eq!(
            with("").unwrap_err(),
            EnvelopeError::BadStateName { len: 0 }
        );
        let long = "S".repeat(MAX_STATE_NAME + 1);
        assert_eq!(
            with(&long).unwrap_err(),
            EnvelopeError::BadStateName {
                len: MAX_STATE_NAME + 1
            }
        );
        assert_eq!(with(&long[1..]).unwrap().state(), Some(&long[1..]));
        // Bytes that are not UTF-8, behind a valid checksum, are refused by the reader.
        let mut bytes = with("Ab").unwrap().into_bytes();
        let at = FIXED + 1 + SECTION_LEN;
        bytes[at] = 0xff;
        let n = bytes.len();
        let crc = crc32c::crc32c(&bytes[..n - CRC_LEN]);
        bytes[n - CRC_LEN..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Snapshot::from_bytes(bytes, &Limits::DEFAULT).unwrap_err(),
            EnvelopeError::BadStateName { len: 2 }
        );
    }

    fn sample() -> Snapshot {
        Snapshot::new("Order", 3, 42, Format::Postcard, b"payload bytes").unwrap()
    }

    #[test]
    fn an_envelope_round_trips_with_every_header_field() {
        let s = sample();
        let back = Snapshot::from_bytes(s.as_bytes().to_vec(), &Limits::DEFAULT).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.machine(), "Order");
        assert_eq!(back.schema_version(), 3);
        assert_eq!(back.seq(), 42);
        assert_eq!(back.format(), Format::Postcard);
        assert_eq!(back.payload(), b"payload bytes");
        assert_eq!(back.len(), FIXED + 5 + 13 + CRC_LEN);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = sample().into_bytes();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(
                Snapshot::from_bytes(b, &Limits::DEFAULT).is_err(),
                "flip of bit {i} went unnoticed"
            );
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = sample().into_bytes();
        for len in 0..bytes.len() {
            let err = Snapshot::from_bytes(bytes[..len].to_vec(), &Limits::DEFAULT).unwrap_err();
            assert!(
                matches!(err, EnvelopeError::Truncated { .. }),
                "{len}: {err}"
            );
        }
    }

    #[test]
    fn a_payload_over_the_limit_is_refused_before_it_is_read() {
        let s = Snapshot::new("M", 1, 1, Format::Postcard, &[7; 100]).unwrap();
        let err = Snapshot::from_bytes(s.into_bytes(), &Limits { max_payload: 99 }).unwrap_err();
        assert_eq!(
            err,
            EnvelopeError::TooLarge {
                len: 100,
                limit: 99
            }
        );
        // A header that claims 4 GiB over 30 real bytes is refused the same way.
        let mut forged = sample().into_bytes();
        forged[22..26].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Snapshot::from_bytes(forged, &Limits::DEFAULT),
            Err(EnvelopeError::TooLarge { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused_whole_but_allowed_as_a_prefix() {
        let mut bytes = sample().into_bytes();
        let len = bytes.len();
        bytes.extend_from_slice(b"next record");
        assert_eq!(Snapshot::verify_prefix(&bytes, &Limits::DEFAULT), Ok(len));
        assert!(matches!(
            Snapshot::from_bytes(bytes, &Limits::DEFAULT),
            Err(EnvelopeError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn foreign_bytes_and_newer_layouts_are_typed_errors() {
        let err = Snapshot::from_bytes(
            b"{\"json\": true, \"padding\": 1234567}".to_vec(),
            &Limits::DEFAULT,
        )
        .unwrap_err();
        assert!(matches!(err, EnvelopeError::BadMagic { .. }));
        let mut newer = sample().into_bytes();
        newer[4] = FORMAT_VERSION + 1;
        assert_eq!(
            Snapshot::from_bytes(newer, &Limits::DEFAULT).unwrap_err(),
            EnvelopeError::UnsupportedFormatVersion {
                found: FORMAT_VERSION + 1
            }
        );
    }

    #[test]
    fn a_journal_travels_before_the_state_and_the_payload_is_the_state_alone() {
        let s = Snapshot::with_journal("Order", 3, 9, Format::Postcard, b"keys", b"state").unwrap();
        let back = Snapshot::from_bytes(s.as_bytes().to_vec(), &Limits::DEFAULT).unwrap();
        assert_eq!(back.journal(), Some(&b"keys"[..]));
        assert_eq!(back.payload(), b"state");
        assert_eq!(sample().journal(), None);
        let empty = Snapshot::with_journal("M", 1, 1, Format::Postcard, b"", b"").unwrap();
        assert_eq!(empty.journal(), Some(&b""[..]));
        assert_eq!(empty.payload(), b"");
    }

    #[test]
    fn a_journal_longer_than_its_area_is_refused() {
        let s = Snapshot::with_journal("M", 1, 1, Format::Postcard, b"keys", b"state").unwrap();
        let mut bytes = s.into_bytes();
        let at = FIXED + 1;
        bytes[at..at + 4].copy_from_slice(&10u32.to_le_bytes());
        let end = bytes.len() - CRC_LEN;
        let crc = crc32c::crc32c(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Snapshot::from_bytes(bytes, &Limits::DEFAULT).unwrap_err(),
            EnvelopeError::BadSection {
                section: Section::Journal,
                declared: Some(10),
                area: 13
            }
        );
        // The flag over a payload area too short for the length field.
        let mut short = Snapshot::new("M", 1, 1, Format::Postcard, b"ab")
            .unwrap()
            .into_bytes();
        short[6] = 1;
        let end = short.len() - CRC_LEN;
        let crc = crc32c::crc32c(&short[..end]);
        short[end..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Snapshot::from_bytes(short, &Limits::DEFAULT),
            Err(EnvelopeError::BadSection {
                section: Section::Journal,
                declared: None,
                area: 2
            })
        ));
    }

    #[test]
    fn debug_shows_the_header_but_not_the_payload() {
        let shown = format!("{:?}", sample());
        assert!(shown.contains("seq: 42"), "{shown}");
        assert!(!shown.contains("payload bytes"), "{shown}");
    }
}
