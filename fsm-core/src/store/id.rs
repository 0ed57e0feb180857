//! Machine ids: the key under which a store keeps a machine's snapshot.

use std::borrow::Borrow;
use std::fmt;

/// The longest id accepted, in bytes. Short enough to be a file name on every common file
/// system (255 bytes) with room for a store's prefix and suffix.
pub const MAX_ID_LEN: usize = 128;

/// A validated machine id.
///
/// Every store keys snapshots by a `MachineId`, and the file store turns it into a file name,
/// so an id is restricted to what is safe there: 1 to [`MAX_ID_LEN`] bytes of ASCII letters,
/// digits and `. _ - : @ +`, not starting with `.`. That rules out `..`, path separators, NUL,
/// control characters and hidden files by construction: no id can name a file outside the
/// store's directory.
///
/// ```
/// use fsm_core::store::MachineId;
///
/// let id = MachineId::new("order-42").unwrap();
/// assert_eq!(id.as_str(), "order-42");
/// let err = MachineId::new("orders/../../etc").unwrap_err();
/// assert!(err.to_string().contains("'/'"));
/// ```
///
/// Cloning one is a reference count, not a copy: the kernel hands ids to its shards, workers,
/// answers and traces.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachineId(std::sync::Arc<str>);

impl MachineId {
    /// Checks `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<MachineId, InvalidId> {
        let id: String = id.into();
        match check(&id) {
            Ok(()) => Ok(MachineId(id.into())),
            Err(problem) => Err(InvalidId { id, problem }),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A 64-bit hash of the id, the same in every process, build and platform (FNV-1a over
    /// its bytes, then a finalizer so that every bit depends on every byte): what the kernel
    /// places machines on shards by, and what stores cut their id space into partitions by.
    ///
    /// ```
    /// use fsm_core::store::MachineId;
    ///
    /// let id = MachineId::new("order-17")?;
    /// assert_eq!(id.stable_hash(), MachineId::new("order-17")?.stable_hash());
    /// assert!(id.partition(64) < 64);
    /// # Ok::<(), fsm_core::store::InvalidId>(())
    /// ```
    pub fn stable_hash(&self) -> u64 {
        self.salted_hash(0)
    }

    /// Which of `partitions` parts of the id space the id falls in (`stable_hash` modulo
    /// `partitions`; 0 when `partitions` is 0).
    pub fn partition(&self, partitions: usize) -> usize {
        if partitions == 0 {
            return 0;
        }
        (self.stable_hash() % partitions as u64) as usize
    }

    /// [`MachineId::stable_hash`] started from another seed, for a second placement
    /// independent of the first (the kernel's effect workers).
    pub(crate) fn salted_hash(&self, salt: u64) -> u64 {
        let h = self.0.bytes().fold(0xcbf2_9ce4_8422_2325 ^ salt, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        let h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

fn check(id: &str) -> Result<(), IdProblem> {
    if id.is_empty() {
        return Err(IdProblem::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdProblem::TooLong(id.len()));
    }
    if id.starts_with('.') {
        return Err(IdProblem::LeadingDot);
    }
    for c in id.chars() {
        let allowed = c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '+');
        if !allowed {
            return Err(IdProblem::Char(c));
        }
    }
    Ok(())
}

impl fmt::Debug for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for MachineId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for MachineId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for MachineId {
    type Error = InvalidId;
    fn try_from(id: &str) -> Result<Self, InvalidId> {
        MachineId::new(id)
    }
}

impl TryFrom<String> for MachineId {
    type Error = InvalidId;
    fn try_from(id: String) -> Result<Self, InvalidId> {
        MachineId::new(id)
    }
}

/// An id [`MachineId::new`] refused, with what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid machine id {id:?}: {problem}")]
pub struct InvalidId {
    id: String,
    problem: IdProblem,
}

impl InvalidId {
    /// The refused id, as given.
    pub fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum IdProblem {
    Empty,
    TooLong(usize),
    LeadingDot,
    Char(char),
}

impl fmt::Display for IdProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdProblem::Empty => f.write_str("it is empty; give every machine a non-empty id"),
            IdProblem::TooLong(n) => write!(
                f,
                "it is {n} bytes long; ids are at most {MAX_ID_LEN} bytes (hash longer keys)"
            ),
            IdProblem::LeadingDot => {
                f.write_str("it starts with `.`, which is reserved for the store's own files")
            }
            IdProblem::Char(c) => write!(
                f,
                "it contains {c:?}; ids may use ASCII letters, digits and `. _ - : @ +`"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_a_directory_are_refused() {
        for bad in [
            "", ".", "..", "../x", "a/b", "a\\b", "a\0b", ".hidden", "a b", "é",
        ] {
            assert!(MachineId::new(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(MachineId::new("x".repeat(MAX_ID_LEN + 1)).is_err());
        for good in [
            "a",
            "order-42",
            "user@example.com",
            "shard:3",
            "a.b_c+d",
            "x..y",
        ] {
            assert_eq!(MachineId::new(good).unwrap().as_str(), good);
        }
        assert!(MachineId::new("x".repeat(MAX_ID_LEN)).is_ok());
    }

    #[test]
    fn the_error_names_the_id_and_the_offending_character() {
        let err = MachineId::new("a/b").unwrap_err();
        assert_eq!(err.id(), "a/b");
        assert!(err.to_string().contains("'/'"), "{err}");
        assert!(err.to_string().contains("ASCII letters"), "{err}");
    }
}
