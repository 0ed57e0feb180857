//! A read-only look at a file store's directory: what `fsm verify`, `fsm ls` and `fsm export`
//! show. Unlike [`FileStore::open`](crate::FileStore::open), which is recovery (it removes
//! stray temp files and compacts the log), inspecting changes nothing on disk.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use fsm_core::store::{Corruption, Format, Limits, MachineId, Snapshot};

use crate::wal;

/// Where a snapshot was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The machine's own file, `<id>.snap`.
    File,
    /// A batch in the write-ahead log segment of this number (`wal-<n>.log`).
    Log(u64),
}

/// The envelope header of a snapshot that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Header {
    /// The machine type the envelope names.
    pub machine: String,
    /// Its schema version.
    pub schema_version: u32,
    /// Its sequence.
    pub seq: u64,
    /// The payload's format.
    pub format: Format,
    /// The state name the envelope records (`None`: written before snapshots recorded one).
    pub state: Option<String>,
}

/// One snapshot found on disk, valid or not.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Found {
    /// The machine.
    pub id: MachineId,
    /// Where.
    pub source: Source,
    /// Its size in bytes.
    pub size: u64,
    /// Its header, or what is wrong with it.
    pub verdict: Result<Header, Corruption>,
    /// Offset and length inside its file.
    span: (u64, usize),
}

/// One log segment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Segment {
    /// Its file name.
    pub name: String,
    /// Valid records (batches) in it.
    pub records: usize,
    /// Snapshots in those records.
    pub snapshots: usize,
    /// Bytes after the last valid record that do not form one.
    pub torn_bytes: usize,
}

/// What [`inspect`] found.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Inspection {
    /// Every snapshot file and every snapshot in the log, in the order read.
    pub found: Vec<Found>,
    /// The log's segments.
    pub segments: Vec<Segment>,
    /// Temp files of interrupted writes (recovery removes them).
    pub stray_temps: Vec<String>,
    /// Files that are none of the store's.
    pub foreign: Vec<String>,
}

impl Inspection {
    /// Per machine, the snapshot recovery would keep: the valid one with the highest
    /// sequence (file or log), or, if none is valid, the damaged file.
    pub fn newest(&self) -> BTreeMap<MachineId, &Found> {
        let mut newest: BTreeMap<MachineId, &Found> = BTreeMap::new();
        for f in &self.found {
            let better = match (newest.get(&f.id), &f.verdict) {
                (None, _) => true,
                (Some(old), Ok(h)) => old.verdict.as_ref().map_or(true, |o| h.seq > o.seq),
                (Some(_), Err(_)) => false,
            };
            if better {
                newest.insert(f.id.clone(), f);
            }
        }
        newest
    }

    /// Snapshot files that do not verify.
    pub fn corrupt(&self) -> impl Iterator<Item = &Found> {
        self.found.iter().filter(|f| f.verdict.is_err())
    }

    /// Bytes at segment ends that are not a valid record.
    pub fn torn_bytes(&self) -> usize {
        self.segments.iter().map(|s| s.torn_bytes).sum()
    }

    /// Whether anything is damaged: a snapshot that does not verify, or a log segment
    /// ending in bytes that are not a valid record.
    pub fn is_damaged(&self) -> bool {
        self.corrupt().next().is_some() || self.torn_bytes() > 0
    }
}

/// Reads every file of the file store in `dir` without changing anything, verifying each
/// snapshot (checksum, header, limits) and replaying each log segment. `progress(done, total)`
/// is called after each file.
///
/// ```
/// use fsm_core::store::{Format, Limits, MachineId, Snapshot, SnapshotStore};
/// use fsm_persist::{inspect, FileStore};
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = FileStore::open(dir.path()).unwrap();
/// let id = MachineId::new("m").unwrap();
/// store.put(&id, None, &Snapshot::new("M", 1, 3, Format::Postcard, b"x").unwrap()).unwrap();
/// let found = inspect::inspect(dir.path(), &Limits::DEFAULT, |_, _| {}).unwrap();
/// assert!(!found.is_damaged());
/// assert_eq!(found.newest()[&id].verdict.as_ref().unwrap().seq, 3);
/// ```
pub fn inspect(
    dir: &Path,
    limits: &Limits,
    mut progress: impl FnMut(u64, u64),
) -> io::Result<Inspection> {
    let mut names: Vec<String> = Vec::new();
    let mut report = Inspection::default();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        match entry.file_name().into_string() {
            Ok(name) => names.push(name),
            Err(name) => report.foreign.push(format!("{name:?}")),
        }
    }
    names.sort();
    let total = names.len() as u64;
    for (done, name) in names.into_iter().enumerate() {
        let path: PathBuf = dir.join(&name);
        if name.starts_with(".tmp-") {
            report.stray_temps.push(name);
        } else if let Some(stem) = name.strip_suffix(".snap") {
            match MachineId::new(stem) {
                Ok(id) => {
                    let bytes = fs::read(&path)?;
                    let size = bytes.len() as u64;
                    let verdict = verify(bytes, limits);
                    report.found.push(Found {
                        id,
                        source: Source::File,
                        size,
                        verdict,
                        span: (0, size as usize),
                    });
                }
                Err(_) => report.foreign.push(name),
            }
        } else if let Some(number) = wal::segment_number(&name) {
            let bytes = fs::read(&path)?;
            let replay = wal::replay(&bytes, limits);
            for e in &replay.entries {
                let envelope = bytes[e.offset as usize..e.offset as usize + e.len].to_vec();
                report.found.push(Found {
                    id: e.id.clone(),
                    source: Source::Log(number),
                    size: e.len as u64,
                    verdict: verify(envelope, limits),
                    span: (e.offset, e.len),
                });
            }
            report.segments.push(Segment {
                name,
                records: replay.records,
                snapshots: replay.entries.len(),
                torn_bytes: replay.torn_bytes,
            });
        } else {
            report.foreign.push(name);
        }
        progress(done as u64 + 1, total);
    }
    Ok(report)
}

fn verify(bytes: Vec<u8>, limits: &Limits) -> Result<Header, Corruption> {
    let snapshot = Snapshot::from_bytes(bytes, limits).map_err(Corruption::from)?;
    Ok(header(&snapshot))
}

/// The header of a verified snapshot.
pub fn header(snapshot: &Snapshot) -> Header {
    Header {
        machine: snapshot.machine().to_owned(),
        schema_version: snapshot.schema_version(),
        seq: snapshot.seq(),
        format: snapshot.format(),
        state: snapshot.state().map(str::to_owned),
    }
}

/// The snapshot `found` describes, read again and verified (for `export` and `show`).
pub fn read(
    dir: &Path,
    found: &Found,
    limits: &Limits,
) -> io::Result<Result<Snapshot, Corruption>> {
    let bytes = match found.source {
        Source::File => fs::read(dir.join(format!("{}.snap", found.id)))?,
        Source::Log(number) => {
            let bytes = fs::read(dir.join(wal::segment_name(number)))?;
            let (offset, len) = (found.span.0 as usize, found.span.1);
            match bytes.get(offset..offset + len) {
                Some(envelope) => envelope.to_vec(),
                None => return Ok(Err(Corruption::Other("the log segment shrank".into()))),
            }
        }
    };
    Ok(Snapshot::from_bytes(bytes, limits).map_err(Corruption::from))
}
