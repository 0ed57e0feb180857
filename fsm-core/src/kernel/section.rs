//! What can be wrong with one of the kernel's sections of a snapshot (the journal, the timers,
//! the outbox): one typed error for every section decoder, naming the section.

use crate::store::Section;

/// Why a kernel section of a snapshot does not decode or does not fit the machine. The
/// envelope verified (its checksum matched), so this is a snapshot written by another build or
/// for another machine type, or damaged before it was framed: the machine is quarantined.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SectionError {
    /// The bytes are not the section's layout.
    #[error("the {section} section does not decode: {message}")]
    Undecodable {
        /// Which section.
        section: Section,
        /// The decoder's message.
        message: String,
    },
    /// Written in a layout version this build does not read.
    #[error("the {section} section has layout version {found}; this build reads version {supported} (upgrade to read it)")]
    Version {
        /// Which section.
        section: Section,
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// Bytes follow the section's content inside its declared length.
    #[error("{count} bytes after the {section} section's content")]
    Trailing {
        /// Which section.
        section: Section,
        /// How many.
        count: usize,
    },
    /// The section decodes but does not fit the machine (an id outside its table, a state
    /// timeout in a state that declares none, an effect this kernel cannot decode).
    #[error("the {section} section does not fit the machine: {problem}")]
    Invalid {
        /// Which section.
        section: Section,
        /// What does not fit.
        problem: String,
    },
}

impl SectionError {
    /// The section the error is about.
    pub fn section(&self) -> Section {
        match self {
            SectionError::Undecodable { section, .. }
            | SectionError::Version { section, .. }
            | SectionError::Trailing { section, .. }
            | SectionError::Invalid { section, .. } => *section,
        }
    }

    pub(crate) fn invalid(section: Section, problem: impl Into<String>) -> Self {
        SectionError::Invalid {
            section,
            problem: problem.into(),
        }
    }
}

/// Decodes a section laid out as postcard's encoding of `(u8 version, T)`: checks the version
/// and that nothing follows, and returns `T` for the caller to check against the machine.
pub(crate) fn decode_versioned<'a, T: serde::Deserialize<'a>>(
    section: Section,
    bytes: &'a [u8],
    supported: u8,
) -> Result<T, SectionError> {
    // The version byte alone first: a newer layout is named as such, not as garbage.
    match bytes.first() {
        Some(&found) if found != supported => {
            return Err(SectionError::Version {
                section,
                found,
                supported,
            })
        }
        _ => {}
    }
    let ((_, value), rest): ((u8, T), _) =
        postcard::take_from_bytes(bytes).map_err(|e| SectionError::Undecodable {
            section,
            message: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(SectionError::Trailing {
            section,
            count: rest.len(),
        });
    }
    Ok(value)
}

/// Appends `v` as postcard writes an unsigned integer (LEB128: seven bits a byte, low first),
/// for sections written by hand (they are written with every commit of the machines that have
/// them, and a generic serializer costs several times as much).
pub(crate) fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `bytes` as postcard writes a string or byte sequence: length, then the bytes.
pub(crate) fn counted(out: &mut Vec<u8>, bytes: &[u8]) {
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_checked_for_its_version_its_layout_and_what_follows() {
        let ok = postcard::to_allocvec(&(1u8, 7u32)).unwrap();
        assert_eq!(decode_versioned::<u32>(Section::Outbox, &ok, 1), Ok(7));
        let newer = postcard::to_allocvec(&(2u8, 7u32)).unwrap();
        assert_eq!(
            decode_versioned::<u32>(Section::Outbox, &newer, 1),
            Err(SectionError::Version {
                section: Section::Outbox,
                found: 2,
                supported: 1
            })
        );
        let mut long = ok.clone();
        long.push(0);
        let err = decode_versioned::<u32>(Section::Timers, &long, 1).unwrap_err();
        assert_eq!(err.section(), Section::Timers);
        assert!(matches!(err, SectionError::Trailing { count: 1, .. }));
        let err = decode_versioned::<u32>(Section::Journal, &[1], 1).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("the journal section does not decode"));
    }
}
