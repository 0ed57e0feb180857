//! The file store: the embedded default backend. One directory, a file per machine.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fsm_core::store::{
    check_batch, check_put, Capabilities, Corruption, Limits, MachineId, Put, Snapshot,
    SnapshotStore, StoreError,
};

use crate::io::{Io, IoFile, OsIo};
use crate::wal;

const SNAP_SUFFIX: &str = ".snap";
const TEMP_PREFIX: &str = ".tmp-";
/// The largest log segment replay reads (a segment is compacted long before).
const MAX_SEGMENT: u64 = 4 << 30;

/// A [`SnapshotStore`] in one directory of the local file system.
///
/// # Layout and protocol
/// - `<id>.snap`: machine `id`'s newest snapshot, a whole envelope. A single
///   [`put`](SnapshotStore::put) replaces it atomically: write a temp file `.tmp-<id>-<n>` in
///   the same directory, fsync it, rename it over `<id>.snap`, fsync the directory. A crash at
///   any point leaves the old file or the new one.
/// - `wal-<n>.log`: the write-ahead log. [`put_many`](SnapshotStore::put_many) appends the
///   whole batch as one checksummed record and fdatasyncs once, which is what lets a batch of
///   a hundred snapshots cost one sync instead of a hundred. When the log passes
///   [`FileStoreBuilder::checkpoint_bytes`] (and on every open) its newest snapshots are
///   compacted into the per-machine files and the segments are removed.
/// - Files are created with mode 0600. Machine ids cannot name anything outside the directory
///   ([`MachineId`] refuses separators, `..`, NUL and leading dots).
///
/// # Opening is recovery
/// [`FileStore::open`] removes stray temp files, verifies every snapshot file, replays the log
/// segments (a record that does not verify ends a segment: the torn tail of a crash), keeps
/// per machine the newest valid snapshot by sequence, and compacts. What it found is in
/// [`FileStore::recovery`]. A snapshot file that does not verify is kept on disk and reported:
/// [`get`](SnapshotStore::get) answers [`StoreError::Corrupt`] for it, and only a write that
/// expects nothing (`expected = None`, as a mirror's repair or an operator's restore does) can
/// replace it.
///
/// # Errors
/// After a failed fsync (of a file or the directory) or rename the store is **poisoned**: the
/// kernel's page cache may have dropped the data it failed to write, so retrying the fsync on
/// the same descriptor could report success for data that is gone. Every later call fails
/// with [`StoreError::Poisoned`] until the store is reopened, which rereads and verifies the
/// disk. Errors before anything reached its final name are [`StoreError::Io`]: the store is
/// unchanged.
///
/// Calls are serialized by one lock; a put holds it through its fsyncs. For throughput with
/// many machines, batch with `put_many`.
pub struct FileStore {
    dir: PathBuf,
    io: Arc<dyn Io>,
    limits: Limits,
    checkpoint_bytes: u64,
    /// Test-only: `put` leaves out its directory fsync (a deliberately broken write path the
    /// power-loss model must catch).
    put_syncs_dir: bool,
    inner: Mutex<Inner>,
    recovery: Recovery,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.dir)
            .field("limits", &self.limits)
            .field("checkpoint_bytes", &self.checkpoint_bytes)
            .finish_non_exhaustive()
    }
}

/// What [`FileStore::open`] found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// Machines with a valid snapshot after recovery.
    pub machines: usize,
    /// Snapshot files that did not verify, by file name, with what is wrong. Reported even
    /// when the log held a valid snapshot for the same machine: that one may be older than
    /// what the corrupt file held, so a caller decides whether the fallback is acceptable.
    pub corrupt: Vec<(String, Corruption)>,
    /// Temp files of interrupted writes that were removed.
    pub stray_temps_removed: usize,
    /// Files that are none of the store's, left alone.
    pub foreign_files: Vec<String>,
    /// Log segments replayed.
    pub wal_segments: usize,
    /// Log records (batches) replayed.
    pub wal_records: usize,
    /// Snapshots taken from the log because they were newer than the files.
    pub wal_snapshots_applied: usize,
    /// Bytes at the end of segments that did not form a valid record (torn by a crash).
    pub wal_torn_bytes: usize,
}

/// Options for [`FileStore`]; from [`FileStore::builder`].
#[derive(Clone)]
pub struct FileStoreBuilder {
    dir: PathBuf,
    io: Arc<dyn Io>,
    limits: Limits,
    checkpoint_bytes: u64,
    put_syncs_dir: bool,
}

impl fmt::Debug for FileStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStoreBuilder")
            .field("dir", &self.dir)
            .field("limits", &self.limits)
            .field("checkpoint_bytes", &self.checkpoint_bytes)
            .finish_non_exhaustive()
    }
}

impl FileStoreBuilder {
    /// Bounds what a read accepts (default [`Limits::DEFAULT`]: 16 MiB payloads).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Compacts the log into the per-machine files once it holds this many bytes (default
    /// 64 MiB). Smaller means faster recovery and more frequent compaction pauses.
    pub fn checkpoint_bytes(mut self, bytes: u64) -> Self {
        self.checkpoint_bytes = bytes;
        self
    }

    /// Does all I/O through `io` (the fault-injection seam); default [`OsIo`].
    pub fn io(mut self, io: impl Io) -> Self {
        self.io = Arc::new(io);
        self
    }

    /// A deliberately broken write path, for the test that shows the power-loss model catches
    /// a missing directory fsync: `put` renames its snapshot into place without syncing the
    /// directory. Never use it outside that test.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn broken_put_without_dir_sync(mut self) -> Self {
        self.put_syncs_dir = false;
        self
    }

    /// Opens (creating if needed) and recovers the store.
    pub fn open(self) -> Result<FileStore, StoreError> {
        FileStore::open_with(self)
    }
}

#[derive(Debug, Clone, Copy)]
enum Location {
    File,
    Wal {
        segment: u64,
        offset: u64,
        len: usize,
    },
}

#[derive(Debug, Clone)]
enum Entry {
    Valid { seq: u64, at: Location },
    Corrupt(Corruption),
}

impl Entry {
    /// The sequence compare-and-set checks against: a corrupt snapshot counts as none.
    fn cas_seq(&self) -> Option<u64> {
        match self {
            Entry::Valid { seq, .. } => Some(*seq),
            Entry::Corrupt(_) => None,
        }
    }
}

struct Segment {
    number: u64,
    file: Box<dyn IoFile>,
    /// Bytes written so far: where the next record lands.
    len: u64,
}

struct Inner {
    index: HashMap<MachineId, Entry>,
    poisoned: Option<String>,
    /// The segment batches append to, if one is open.
    open_segment: Option<Segment>,
    /// Segments holding snapshots not yet compacted (the open one included).
    live_segments: Vec<u64>,
    next_segment: u64,
    wal_bytes: u64,
    temp_counter: u64,
}

impl FileStore {
    /// Opens the store in `dir` (created if missing) with the default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStore, StoreError> {
        FileStore::builder(dir).open()
    }

    /// Options for a store in `dir`.
    pub fn builder(dir: impl AsRef<Path>) -> FileStoreBuilder {
        FileStoreBuilder {
            dir: dir.as_ref().to_path_buf(),
            io: Arc::new(OsIo),
            limits: Limits::DEFAULT,
            checkpoint_bytes: 64 << 20,
            put_syncs_dir: true,
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Whether an earlier failure stopped the store (reopen it).
    pub fn is_poisoned(&self) -> bool {
        self.lock().poisoned.is_some()
    }

    /// Compacts the log into the per-machine files now and removes its segments.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.check_poison()?;
        self.compact(&mut inner)
    }

    fn open_with(options: FileStoreBuilder) -> Result<FileStore, StoreError> {
        let FileStoreBuilder {
            dir,
            io,
            limits,
            checkpoint_bytes,
            put_syncs_dir,
        } = options;
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
                operation: "creating the store directory",
                path: Some(dir.clone()),
                source,
            })?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                io.sync_dir(parent).map_err(|source| StoreError::Io {
                    operation: "fsync of the parent directory",
                    path: Some(parent.to_path_buf()),
                    source,
                })?;
            }
        }
        let mut store = FileStore {
            dir,
            io,
            limits,
            checkpoint_bytes,
            put_syncs_dir,
            inner: Mutex::new(Inner {
                index: HashMap::new(),
                poisoned: None,
                open_segment: None,
                live_segments: Vec::new(),
                next_segment: 1,
                wal_bytes: 0,
                temp_counter: 0,
            }),
            recovery: Recovery::default(),
        };
        store.recovery = store.recover()?;
        Ok(store)
    }

    fn recover(&self) -> Result<Recovery, StoreError> {
        let mut report = Recovery::default();
        let mut inner = self.lock();
        let names = self
            .io
            .list(&self.dir)
            .map_err(|e| self.io_error("listing the store directory", None, e))?;
        let mut segments = BTreeMap::new();
        for name in names {
            let Some(name) = name.to_str().map(str::to_owned) else {
                report.foreign_files.push(format!("{name:?}"));
                continue;
            };
            if name.starts_with(TEMP_PREFIX) {
                let path = self.dir.join(&name);
                self.io
                    .remove(&path)
                    .map_err(|e| self.io_error("removing a stray temp file", Some(path), e))?;
                report.stray_temps_removed += 1;
            } else if let Some(stem) = name.strip_suffix(SNAP_SUFFIX) {
                let Ok(id) = MachineId::new(stem) else {
                    report.foreign_files.push(name);
                    continue;
                };
                let path = self.dir.join(&name);
                let entry = match self.read_verified(&path) {
                    Ok(snapshot) => Entry::Valid {
                        seq: snapshot.seq(),
                        at: Location::File,
                    },
                    Err(ReadFailure::Corrupt(problem)) => {
                        report.corrupt.push((name, problem.clone()));
                        Entry::Corrupt(problem)
                    }
                    Err(ReadFailure::Io(e)) => {
                        return Err(self.io_error("reading a snapshot", Some(path), e))
                    }
                };
                inner.index.insert(id, entry);
            } else if let Some(number) = wal::segment_number(&name) {
                segments.insert(number, self.dir.join(&name));
            } else {
                report.foreign_files.push(name);
            }
        }
        if report.stray_temps_removed > 0 {
            self.io
                .sync_dir(&self.dir)
                .map_err(|e| self.io_error("fsync of the store directory", None, e))?;
        }
        for (&number, path) in &segments {
            let bytes = self
                .io
                .read(path, MAX_SEGMENT)
                .map_err(|e| self.io_error("reading a log segment", Some(path.clone()), e))?;
            let replay = wal::replay(&bytes, &self.limits);
            report.wal_segments += 1;
            report.wal_records += replay.records;
            report.wal_torn_bytes += replay.torn_bytes;
            for e in replay.entries {
                let newer = inner
                    .index
                    .get(&e.id)
                    .and_then(Entry::cas_seq)
                    .is_none_or(|s| e.seq > s);
                if newer {
                    report.wal_snapshots_applied += 1;
                    inner.index.insert(
                        e.id,
                        Entry::Valid {
                            seq: e.seq,
                            at: Location::Wal {
                                segment: number,
                                offset: e.offset,
                                len: e.len,
                            },
                        },
                    );
                }
            }
            inner.next_segment = number + 1;
        }
        inner.live_segments = segments.keys().copied().collect();
        if !inner.live_segments.is_empty() {
            self.compact(&mut inner)?;
        }
        report.machines = inner
            .index
            .values()
            .filter(|e| matches!(e, Entry::Valid { .. }))
            .count();
        Ok(report)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section updates the index only after its I/O succeeded, so a panic
        // cannot leave it describing something the disk does not hold.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn snap_path(&self, id: &MachineId) -> PathBuf {
        self.dir.join(format!("{id}{SNAP_SUFFIX}"))
    }

    fn io_error(
        &self,
        operation: &'static str,
        path: Option<PathBuf>,
        source: io::Error,
    ) -> StoreError {
        StoreError::Io {
            operation,
            path: Some(path.unwrap_or_else(|| self.dir.clone())),
            source,
        }
    }

    fn read_verified(&self, path: &Path) -> Result<Snapshot, ReadFailure> {
        let bytes = match self.io.read(path, self.limits.max_envelope() as u64) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(ReadFailure::Corrupt(Corruption::Other(e.to_string())))
            }
            Err(e) => return Err(ReadFailure::Io(e)),
        };
        Snapshot::from_bytes(bytes, &self.limits).map_err(|e| ReadFailure::Corrupt(e.into()))
    }

    /// The atomic replace protocol for one snapshot file: temp, write, fsync, rename, and
    /// (if `sync_dir`) fsync the directory.
    fn replace_file(
        &self,
        inner: &mut Inner,
        id: &MachineId,
        bytes: &[u8],
        sync_dir: bool,
    ) -> Result<(), StoreError> {
        let temp = self.create_synced_temp(inner, id, bytes)?;
        let target = self.snap_path(id);
        if let Err(source) = self.io.rename(&temp, &target) {
            let _ = self.io.remove(&temp);
            return Err(inner.poison("rename", target, source));
        }
        if sync_dir {
            if let Err(source) = self.io.sync_dir(&self.dir) {
                return Err(inner.poison("fsync of the store directory", self.dir.clone(), source));
            }
        }
        Ok(())
    }

    /// Writes and fsyncs a temp file holding `bytes`; returns its path.
    fn create_synced_temp(
        &self,
        inner: &mut Inner,
        id: &MachineId,
        bytes: &[u8],
    ) -> Result<PathBuf, StoreError> {
        inner.temp_counter += 1;
        let temp = self
            .dir
            .join(format!("{TEMP_PREFIX}{id}-{}", inner.temp_counter));
        let mut file = self
            .io
            .create(&temp)
            .map_err(|e| self.io_error("creating a temp file", Some(temp.clone()), e))?;
        if let Err(e) = file.write_all(bytes) {
            drop(file);
            let _ = self.io.remove(&temp);
            return Err(self.io_error("writing a snapshot", Some(temp), e));
        }
        if let Err(source) = file.sync_all() {
            drop(file);
            let _ = self.io.remove(&temp);
            // Nothing reached the snapshot's name, but a failed fsync may have dropped dirty
            // pages the kernel will not write again: stop until reopened.
            inner.poisoned = Some(format!("fsync of {} failed: {source}", temp.display()));
            return Err(StoreError::Io {
                operation: "fsync of a new snapshot",
                path: Some(temp),
                source,
            });
        }
        Ok(temp)
    }

    fn append_batch(&self, inner: &mut Inner, record: &[u8]) -> Result<(u64, u64), StoreError> {
        if inner.open_segment.is_none() {
            let number = inner.next_segment;
            let path = self.dir.join(wal::segment_name(number));
            let file = self
                .io
                .create(&path)
                .map_err(|e| self.io_error("creating a log segment", Some(path.clone()), e))?;
            if let Err(source) = self.io.sync_dir(&self.dir) {
                inner.poisoned = Some(format!("fsync of the store directory failed: {source}"));
                return Err(self.io_error("fsync of the store directory", None, source));
            }
            inner.next_segment += 1;
            inner.live_segments.push(number);
            inner.open_segment = Some(Segment {
                number,
                file,
                len: 0,
            });
        }
        let segment = inner.open_segment.as_mut().expect("opened above");
        let number = segment.number;
        if let Err(e) = segment.file.write_all(record) {
            // The segment may now end in a partial record: start a new one for the next batch
            // (replay reads each segment up to its first invalid record).
            inner.open_segment = None;
            return Err(self.io_error(
                "appending to the log",
                Some(self.dir.join(wal::segment_name(number))),
                e,
            ));
        }
        if let Err(source) = segment.file.sync_data() {
            inner.open_segment = None;
            return Err(inner.poison(
                "fdatasync of the log",
                self.dir.join(wal::segment_name(number)),
                source,
            ));
        }
        let offset = segment.len;
        segment.len += record.len() as u64;
        inner.wal_bytes += record.len() as u64;
        Ok((number, offset))
    }

    /// Writes every snapshot that lives in the log into its file, then removes the segments.
    fn compact(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let mut by_segment: BTreeMap<u64, Vec<(MachineId, u64, u64, usize)>> = BTreeMap::new();
        for (id, entry) in &inner.index {
            if let Entry::Valid {
                seq,
                at:
                    Location::Wal {
                        segment,
                        offset,
                        len,
                    },
            } = entry
            {
                by_segment
                    .entry(*segment)
                    .or_default()
                    .push((id.clone(), *seq, *offset, *len));
            }
        }
        let mut written = Vec::new();
        for (segment, entries) in by_segment {
            let path = self.dir.join(wal::segment_name(segment));
            let bytes = self
                .io
                .read(&path, MAX_SEGMENT)
                .map_err(|e| self.io_error("reading a log segment", Some(path.clone()), e))?;
            for (id, seq, offset, len) in entries {
                let envelope = bytes
                    .get(offset as usize..offset as usize + len)
                    .ok_or_else(|| {
                        StoreError::corrupt(
                            path.display().to_string(),
                            Corruption::Other("log segment shorter than its index".into()),
                        )
                    })?;
                self.replace_file(inner, &id, envelope, false)?;
                written.push((id, seq));
            }
        }
        if !written.is_empty() {
            if let Err(source) = self.io.sync_dir(&self.dir) {
                return Err(inner.poison("fsync of the store directory", self.dir.clone(), source));
            }
        }
        for (id, seq) in written {
            inner.index.insert(
                id,
                Entry::Valid {
                    seq,
                    at: Location::File,
                },
            );
        }
        inner.open_segment = None;
        for segment in std::mem::take(&mut inner.live_segments) {
            let path = self.dir.join(wal::segment_name(segment));
            if let Err(source) = self.io.remove(&path) {
                // Harmless for correctness (replay skips what the files already hold); retried
                // at the next compaction or open.
                inner.live_segments.push(segment);
                return Err(self.io_error("removing a compacted log segment", Some(path), source));
            }
        }
        inner.wal_bytes = 0;
        if let Err(source) = self.io.sync_dir(&self.dir) {
            return Err(inner.poison("fsync of the store directory", self.dir.clone(), source));
        }
        Ok(())
    }
}

enum ReadFailure {
    Corrupt(Corruption),
    Io(io::Error),
}

impl Inner {
    fn check_poison(&self) -> Result<(), StoreError> {
        match &self.poisoned {
            Some(cause) => Err(StoreError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison(&mut self, operation: &'static str, path: PathBuf, source: io::Error) -> StoreError {
        self.poisoned = Some(format!(
            "{operation} of {} failed: {source}",
            path.display()
        ));
        StoreError::OutcomeUnknown {
            operation,
            path: Some(path),
            source,
        }
    }
}

impl SnapshotStore for FileStore {
    fn put(
        &self,
        id: &MachineId,
        expected: Option<u64>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.check_poison()?;
        check_put(
            id,
            expected,
            snapshot,
            inner.index.get(id).and_then(Entry::cas_seq),
        )?;
        self.replace_file(&mut inner, id, snapshot.as_bytes(), self.put_syncs_dir)?;
        inner.index.insert(
            id.clone(),
            Entry::Valid {
                seq: snapshot.seq(),
                at: Location::File,
            },
        );
        Ok(())
    }

    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        check_batch(batch)?;
        let mut inner = self.lock();
        inner.check_poison()?;
        for put in batch {
            put.check(inner.index.get(put.id).and_then(Entry::cas_seq))?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        let (record, offsets) = wal::encode(batch);
        let (segment, base) = self.append_batch(&mut inner, &record)?;
        for (put, offset) in batch.iter().zip(offsets) {
            inner.index.insert(
                put.id.clone(),
                Entry::Valid {
                    seq: put.snapshot.seq(),
                    at: Location::Wal {
                        segment,
                        offset: base + offset as u64,
                        len: put.snapshot.len(),
                    },
                },
            );
        }
        if inner.wal_bytes >= self.checkpoint_bytes {
            // The batch is durable in the log already; a failed compaction is reported by the
            // next call (it poisons the store or leaves the log to be compacted later).
            let _ = self.compact(&mut inner);
        }
        Ok(())
    }

    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
        let mut inner = self.lock();
        inner.check_poison()?;
        let (seq, at) = match inner.index.get(id) {
            None => return Err(StoreError::NotFound { id: id.clone() }),
            Some(Entry::Corrupt(problem)) => {
                return Err(StoreError::corrupt(id.to_string(), problem.clone()))
            }
            Some(Entry::Valid { seq, at }) => (*seq, *at),
        };
        let read = match at {
            Location::File => {
                let path = self.snap_path(id);
                match self.read_verified(&path) {
                    Ok(s) => Ok(s),
                    Err(ReadFailure::Corrupt(problem)) => Err(problem),
                    Err(ReadFailure::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                        Err(Corruption::Other(format!("{} disappeared", path.display())))
                    }
                    Err(ReadFailure::Io(e)) => {
                        return Err(self.io_error("reading a snapshot", Some(path), e))
                    }
                }
            }
            Location::Wal {
                segment,
                offset,
                len,
            } => {
                let path = self.dir.join(wal::segment_name(segment));
                let bytes = self
                    .io
                    .read_at(&path, offset, len)
                    .map_err(|e| self.io_error("reading the log", Some(path), e))?;
                Snapshot::from_bytes(bytes, &self.limits).map_err(Corruption::from)
            }
        };
        let result = read
            .map_err(|problem| StoreError::corrupt(id.to_string(), problem))
            .and_then(|snapshot| crate::verify::recorded(id, snapshot, seq));
        if let Err(StoreError::Corrupt { problem, .. }) = &result {
            // Damaged since it was written (a bad sector, a stray write): from now on the
            // machine's copy counts as corrupt, as if found so at open, so that a repair (a
            // write expecting nothing, as a mirror's) may replace it.
            inner
                .index
                .insert(id.clone(), Entry::Corrupt(problem.clone()));
        }
        result
    }

    fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError> {
        let inner = self.lock();
        inner.check_poison()?;
        match inner.index.get(id) {
            None => Ok(None),
            Some(Entry::Valid { seq, .. }) => Ok(Some(*seq)),
            Some(Entry::Corrupt(problem)) => {
                Err(StoreError::corrupt(id.to_string(), problem.clone()))
            }
        }
    }

    fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
        let inner = self.lock();
        inner.check_poison()?;
        Ok(inner.index.keys().cloned().collect())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new("file", true)
    }
}
