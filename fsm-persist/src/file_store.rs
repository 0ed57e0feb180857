//! The file store: the embedded default backend. One directory, a file per machine, and
//! write-ahead log segments that batches from several threads append to in parallel.

use crate::sync::Recover;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fsm_core::store::{
    check_batch, Capabilities, Corruption, Limits, ListQuery, MachineId, Page, Put, Smallest,
    Snapshot, SnapshotStore, StateCounts, StateFilter, StoreError,
};

use crate::group::GroupCommit;
use crate::io::{Io, IoFile, OsIo};
use crate::wal;

const SNAP_SUFFIX: &str = ".snap";
const TEMP_PREFIX: &str = ".tmp-";
/// The largest log segment replay reads (a segment is compacted long before).
const MAX_SEGMENT: u64 = 4 << 30;
const PARTITIONS: usize = FileStore::PARTITIONS;

/// A [`SnapshotStore`] in one directory of the local file system.
///
/// # Layout and protocol
/// - `<id>.snap`: machine `id`'s newest compacted snapshot, a whole envelope. A single
///   [`put`](SnapshotStore::put) replaces it atomically: write a temp file `.tmp-<id>-<n>` in
///   the same directory, fsync it, rename it over `<id>.snap`, fsync the directory. A crash at
///   any point leaves the old file or the new one.
/// - `wal-<n>.log`: write-ahead log segments. [`put_many`](SnapshotStore::put_many) appends
///   the whole batch as one checksummed record to a segment and fdatasyncs once, which is
///   what lets a batch of a hundred snapshots cost one sync instead of a hundred. Up to
///   [`FileStoreBuilder::lanes`] segments are open at once, so batches from several threads
///   (the kernel's shards) sync in parallel instead of taking turns, and batches that meet on
///   one lane share one write and one sync. Once the
///   log holds [`FileStoreBuilder::checkpoint_bytes`] its segments are sealed and compacted
///   into the per-machine files (each written to a temp file and renamed over its file, all
///   of them made durable by one sync of the file system, [`Io::open_fs`]), then removed.
///   Until that sync the segments still hold every copy, so a file a crash cut short is
///   replaced from the log when the store opens ([`Recovery::torn_files`]).
/// - Files are created with mode 0600. Machine ids cannot name anything outside the directory
///   ([`MachineId`] refuses separators, `..`, NUL and leading dots).
///
/// The layout is the same whatever the number of lanes or the kernel's shards: a directory
/// can be reopened with other settings, and one written by earlier versions of this store
/// (a single log) opens as it is.
///
/// # Concurrency
/// The id space is cut into [`FileStore::PARTITIONS`] partitions, each with its own index and lock.
/// A write first *reserves* its machines in their partitions (checking the compare-and-set
/// there), then appends and syncs without holding any partition lock, then publishes the
/// new locations; a second writer of a reserved machine waits for the first. So writers of
/// different machines never wait for each other's syncs, and the compare-and-set of each
/// machine is as strict as under one lock. Every rename onto `<id>.snap` happens under the
/// machine's partition lock, after checking the index, so compaction never puts an older
/// snapshot over a newer one.
///
/// # Compaction
/// By default ([`Compaction::Background`]) a thread of the store compacts: committing
/// threads only append. If compaction falls behind and the log reaches
/// [`FileStoreBuilder::log_limit`], commits wait for it (counted in
/// [`FileStore::stats`]). [`Compaction::Inline`] compacts on the committing thread instead,
/// as soon as the log passes the threshold: every step happens in call order, which is what
/// a test that counts disk operations needs.
///
/// # Opening is recovery
/// [`FileStore::open`] removes stray temp files, verifies every snapshot file and replays the
/// log segments (on several threads; a record that does not verify ends a segment: the torn
/// tail of a crash), keeps per machine the newest valid snapshot by sequence, and compacts.
/// What it found is in [`FileStore::recovery`]. A snapshot file that does not verify is kept
/// on disk and reported: [`get`](SnapshotStore::get) answers [`StoreError::Corrupt`] for it,
/// and only a write that expects nothing (`expected = None`, as a mirror's repair or an
/// operator's restore does) can replace it.
///
/// # Errors
/// After a failed fsync (of a file or the directory) or rename the store is **poisoned**: the
/// kernel's page cache may have dropped the data it failed to write, so retrying the fsync on
/// the same descriptor could report success for data that is gone. Every later call fails
/// with [`StoreError::Poisoned`] until the store is reopened, which rereads and verifies the
/// disk. Errors before anything reached its final name are [`StoreError::Io`]: the store is
/// unchanged.
pub struct FileStore {
    shared: Arc<Shared>,
    compactor: Option<JoinHandle<()>>,
    recovery: Recovery,
}

/// Who compacts the log into the per-machine files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compaction {
    /// A thread of the store, beside the commits (the default).
    #[default]
    Background,
    /// The committing thread whose batch took the log past the threshold, before it returns.
    Inline,
}

/// What a [`FileStore`] has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileStoreStats {
    /// Bytes in log segments not yet compacted.
    pub log_bytes: u64,
    /// Log segments not yet compacted.
    pub log_segments: usize,
    /// Compactions run.
    pub compactions: u64,
    /// Snapshots moved from the log into their files.
    pub compacted_snapshots: u64,
    /// Commits that waited because the log had reached its limit.
    pub commit_waits: u64,
    /// The time those commits waited, in all.
    pub commit_wait: Duration,
    /// The time spent compacting, in all (wall clock, from the first snapshot moved out of
    /// the sealed segments to their removal), a compaction under way included. Beside the
    /// time the store has been open it says how much of it a compactor was busy: on a disk
    /// with many machines, compaction creates a file per machine and can take as much CPU as
    /// the commits themselves.
    pub compacting: Duration,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("FileStore")
            .field("dir", &s.dir)
            .field("limits", &s.limits)
            .field("checkpoint_bytes", &s.checkpoint_bytes)
            .field("log_limit", &s.log_limit)
            .field("lanes", &s.lanes.len())
            .field("compaction", &s.compaction)
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
    /// Files that are only a torn copy of what the log holds are in
    /// [`torn_files`](Recovery::torn_files) instead.
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
    /// Snapshot files that a crash cut short while a compaction was writing them: each did not
    /// verify, and each is a prefix (with blocks that read as zeros, where the data never
    /// reached the disk) of the copy the log still held, which replaced it. Nothing was lost,
    /// so they are not in [`corrupt`](Recovery::corrupt).
    pub torn_files: Vec<String>,
}

/// Options for [`FileStore`]; from [`FileStore::builder`].
#[derive(Clone)]
pub struct FileStoreBuilder {
    dir: PathBuf,
    io: Arc<dyn Io>,
    limits: Limits,
    checkpoint_bytes: u64,
    log_limit: Option<u64>,
    lanes: Option<usize>,
    compaction: Compaction,
    put_syncs_dir: bool,
}

impl fmt::Debug for FileStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStoreBuilder")
            .field("dir", &self.dir)
            .field("limits", &self.limits)
            .field("checkpoint_bytes", &self.checkpoint_bytes)
            .field("log_limit", &self.log_limit)
            .field("lanes", &self.lanes)
            .field("compaction", &self.compaction)
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
    /// 64 MiB). Smaller means faster recovery and more compaction work.
    pub fn checkpoint_bytes(mut self, bytes: u64) -> Self {
        self.checkpoint_bytes = bytes;
        self
    }

    /// The most bytes the log may hold while background compaction catches up; a commit that
    /// finds the log this large waits for compaction (default four times
    /// [`checkpoint_bytes`](Self::checkpoint_bytes), and at least 16 MiB). A value below
    /// `checkpoint_bytes` is taken as `checkpoint_bytes`.
    pub fn log_limit(mut self, bytes: u64) -> Self {
        self.log_limit = Some(bytes);
        self
    }

    /// How many log segments batches append to in parallel (default: the machine's cores, at
    /// most 16; at least 1). Each committing thread (a kernel shard) keeps to one lane; threads
    /// that share a lane share its writes: whoever finds no write under way appends every batch
    /// waiting on the lane with one write and one fdatasync (group commit). So up to `lanes`
    /// fdatasyncs run at once, and more committing threads than lanes make bigger groups, not
    /// more syncs. A lane's segment is created on first use.
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.lanes = Some(lanes.max(1));
        self
    }

    /// Who compacts (default [`Compaction::Background`]).
    pub fn compaction(mut self, compaction: Compaction) -> Self {
        self.compaction = compaction;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    Valid {
        seq: u64,
        at: Location,
        /// The state name the snapshot records (interned per partition).
        state: Option<Arc<str>>,
    },
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

/// One partition of the id space: its machines' entries, and which of them a write is
/// making durable right now.
#[repr(align(128))]
#[derive(Default)]
struct Partition {
    state: Mutex<PartitionState>,
    /// Signalled when reservations end.
    released: Condvar,
}

#[derive(Default)]
struct PartitionState {
    index: HashMap<MachineId, Entry>,
    writing: HashSet<MachineId>,
    /// The state names its entries hold, one allocation each.
    names: Vec<Arc<str>>,
}

/// More distinct state names than this in one partition are not interned (a machine type has
/// a few dozen states; a store of many types, a few hundred).
const MAX_INTERNED: usize = 1024;

impl PartitionState {
    /// The shared copy of state name `state`.
    fn name(&mut self, state: Option<&str>) -> Option<Arc<str>> {
        let state = state?;
        if let Some(known) = self.names.iter().find(|n| &***n == state) {
            return Some(known.clone());
        }
        let name: Arc<str> = state.into();
        if self.names.len() < MAX_INTERNED {
            self.names.push(name.clone());
        }
        Some(name)
    }
}

/// A segment open for appending.
struct Segment {
    number: u64,
    file: Box<dyn IoFile>,
    /// Bytes written so far: where the next record lands.
    len: u64,
}

/// A log lane: at most one open segment, and the batches waiting to be appended to it. The
/// writer that finds no write under way appends every waiting batch with one write and one
/// fdatasync (group commit); the others wait for their result.
#[repr(align(128))]
#[derive(Default)]
struct Lane {
    group: GroupCommit<Vec<u8>, Result<(u64, u64), AppendError>>,
    /// The open segment: held by the group's writer while it writes, and by compaction to
    /// seal it.
    segment: Mutex<Option<Segment>>,
}

/// Why a group write failed, for every batch in the group (a `StoreError` is not `Clone`).
#[derive(Clone)]
struct AppendError {
    operation: &'static str,
    path: PathBuf,
    kind: io::ErrorKind,
    message: String,
    /// The write may or may not be on disk (the store is poisoned).
    unknown: bool,
}

impl AppendError {
    fn into_store_error(self) -> StoreError {
        let source = io::Error::new(self.kind, self.message);
        if self.unknown {
            StoreError::OutcomeUnknown {
                operation: self.operation,
                path: Some(self.path),
                source,
            }
        } else {
            StoreError::Io {
                operation: self.operation,
                path: Some(self.path),
                source,
            }
        }
    }
}

#[derive(Default)]
struct LogState {
    /// Segments holding snapshots not yet compacted: their bytes, and whether they are sealed
    /// (no lane appends to them any more).
    live: BTreeMap<u64, LiveSegment>,
    bytes: u64,
    /// Why the last background compaction failed, while it keeps failing.
    compaction_failed: Option<String>,
}

#[derive(Clone, Copy)]
struct LiveSegment {
    bytes: u64,
    sealed: bool,
    /// Batches appended to it whose index entries are not yet published: compaction waits
    /// for them, so it never removes a segment holding a batch the index does not show yet.
    unpublished: usize,
}

/// What the store's users, and its compactor thread, share.
struct Shared {
    dir: PathBuf,
    io: Arc<dyn Io>,
    limits: Limits,
    checkpoint_bytes: u64,
    log_limit: u64,
    compaction: Compaction,
    /// Test-only: `put` leaves out its directory fsync (a deliberately broken write path the
    /// power-loss model must catch).
    put_syncs_dir: bool,
    partitions: Box<[Partition]>,
    lanes: Box<[Lane]>,
    log: Mutex<LogState>,
    /// Signalled when the log passes the checkpoint (for the compactor), when it shrinks (for
    /// commits waiting for room), when the store is poisoned, and on close.
    log_changed: Condvar,
    /// One compaction at a time.
    compacting: Mutex<()>,
    next_segment: AtomicU64,
    temp_counter: AtomicU64,
    poisoned: AtomicBool,
    poison_cause: Mutex<Option<String>>,
    closing: AtomicBool,
    compactions: AtomicU64,
    compacted: AtomicU64,
    commit_waits: AtomicU64,
    commit_wait_ns: AtomicU64,
    /// Nanoseconds spent in finished compactions.
    compacting_ns: AtomicU64,
    /// When the compaction under way started, in nanoseconds after `opened` plus one (0: none
    /// under way).
    compacting_since: AtomicU64,
    /// When the store was opened: the origin of `compacting_since`.
    opened: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section of the store updates its state only after the I/O it describes
    // succeeded, so a panic elsewhere cannot leave the state describing what the disk lacks.
    m.lock().recover()
}

thread_local! {
    /// The lane this thread tries first, so that a thread that commits again tends to find
    /// its own lane free (and its segment's pages warm).
    static LANE_HINT: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_HINT: AtomicUsize = AtomicUsize::new(0);

fn lane_hint() -> usize {
    LANE_HINT.with(|hint| {
        if hint.get() == usize::MAX {
            hint.set(NEXT_HINT.fetch_add(1, Ordering::Relaxed));
        }
        hint.get()
    })
}

/// `f` over `items` on up to `threads` scoped threads, the results in the items' order.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    // Threads cost more than they save for a few items (a fuzzer opens a small store
    // thousands of times).
    if threads <= 1 || items.len() < 64 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a recovery reader does not panic"))
            .collect()
    })
}

/// Lanes unless told otherwise: the syncs worth running at once, one per core.
fn default_lanes() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16)
}

/// A write's machines by partition, ascending: (partition, indices into the batch).
type Groups = BTreeMap<usize, Vec<usize>>;

fn groups(batch: &[Put<'_>]) -> Groups {
    let mut groups = Groups::new();
    for (i, put) in batch.iter().enumerate() {
        groups
            .entry(put.id.partition(PARTITIONS))
            .or_default()
            .push(i);
    }
    groups
}

impl FileStore {
    /// Parts of the id space ([`MachineId::partition`]) with an index and a lock each.
    pub const PARTITIONS: usize = 64;

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
            log_limit: None,
            lanes: None,
            compaction: Compaction::Background,
            put_syncs_dir: true,
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// What opening found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Whether an earlier failure stopped the store (reopen it).
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    /// What the store has done since it was opened: the log, compactions, and commits that
    /// waited for compaction.
    pub fn stats(&self) -> FileStoreStats {
        let s = &self.shared;
        let (log_bytes, log_segments) = {
            let log = lock(&s.log);
            (log.bytes, log.live.len())
        };
        FileStoreStats {
            log_bytes,
            log_segments,
            compactions: s.compactions.load(Ordering::Relaxed),
            compacted_snapshots: s.compacted.load(Ordering::Relaxed),
            commit_waits: s.commit_waits.load(Ordering::Relaxed),
            commit_wait: Duration::from_nanos(s.commit_wait_ns.load(Ordering::Relaxed)),
            compacting: s.compacting(),
        }
    }

    /// Publishes [`FileStore::stats`] through the `metrics` facade (feature `metrics`), for
    /// whatever exporter the process installed; call it beside
    /// `KernelHandle::publish_metrics`. Labelled with the store's directory.
    ///
    /// | name | kind |
    /// | --- | --- |
    /// | `fsm_file_store_log_bytes`, `fsm_file_store_log_segments` | gauge |
    /// | `fsm_file_store_compactions_total`, `fsm_file_store_compacted_snapshots_total`, `fsm_file_store_commit_waits_total` | counter |
    /// | `fsm_file_store_commit_wait_seconds`, `fsm_file_store_compacting_seconds` (in all, since open) | gauge |
    /// | `fsm_file_store_poisoned` (0 or 1) | gauge |
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        use metrics::{counter, gauge};
        let st = self.stats();
        let labels = [("store", self.shared.dir.display().to_string())];
        gauge!("fsm_file_store_log_bytes", &labels).set(st.log_bytes as f64);
        gauge!("fsm_file_store_log_segments", &labels).set(st.log_segments as f64);
        counter!("fsm_file_store_compactions_total", &labels).absolute(st.compactions);
        counter!("fsm_file_store_compacted_snapshots_total", &labels)
            .absolute(st.compacted_snapshots);
        counter!("fsm_file_store_commit_waits_total", &labels).absolute(st.commit_waits);
        gauge!("fsm_file_store_commit_wait_seconds", &labels).set(st.commit_wait.as_secs_f64());
        gauge!("fsm_file_store_compacting_seconds", &labels).set(st.compacting.as_secs_f64());
        gauge!("fsm_file_store_poisoned", &labels).set(f64::from(u8::from(self.is_poisoned())));
    }

    /// Compacts the log into the per-machine files now and removes its segments.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.shared.check_poison()?;
        let _one = lock(&self.shared.compacting);
        self.shared.compact_all(1)
    }

    fn open_with(options: FileStoreBuilder) -> Result<FileStore, StoreError> {
        let FileStoreBuilder {
            dir,
            io,
            limits,
            checkpoint_bytes,
            log_limit,
            lanes,
            compaction,
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
        let log_limit = log_limit
            .unwrap_or_else(|| checkpoint_bytes.saturating_mul(4).max(16 << 20))
            .max(checkpoint_bytes);
        let shared = Arc::new(Shared {
            dir,
            io,
            limits,
            checkpoint_bytes,
            log_limit,
            compaction,
            put_syncs_dir,
            partitions: (0..PARTITIONS).map(|_| Partition::default()).collect(),
            lanes: (0..lanes.unwrap_or_else(default_lanes))
                .map(|_| Lane::default())
                .collect(),
            log: Mutex::new(LogState::default()),
            log_changed: Condvar::new(),
            compacting: Mutex::new(()),
            next_segment: AtomicU64::new(1),
            temp_counter: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(None),
            closing: AtomicBool::new(false),
            compactions: AtomicU64::new(0),
            compacted: AtomicU64::new(0),
            commit_waits: AtomicU64::new(0),
            commit_wait_ns: AtomicU64::new(0),
            compacting_ns: AtomicU64::new(0),
            compacting_since: AtomicU64::new(0),
            opened: Instant::now(),
        });
        let recovery = shared.recover()?;
        let compactor = match compaction {
            Compaction::Inline => None,
            Compaction::Background => {
                let shared = shared.clone();
                Some(
                    std::thread::Builder::new()
                        .name("fsm-file-store-compactor".into())
                        .spawn(move || shared.compactor())
                        .map_err(|source| StoreError::Io {
                            operation: "starting the compaction thread",
                            path: None,
                            source,
                        })?,
                )
            }
        };
        Ok(FileStore {
            shared,
            compactor,
            recovery,
        })
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake_log();
        if let Some(compactor) = self.compactor.take() {
            let _ = compactor.join();
        }
    }
}

enum ReadFailure {
    Corrupt(Corruption),
    Io(io::Error),
}

/// What one snapshot file held when recovery verified it.
type Verified = (
    MachineId,
    String,
    Result<(u64, Option<String>), ReadFailure>,
);

impl Shared {
    fn partition(&self, id: &MachineId) -> &Partition {
        &self.partitions[id.partition(PARTITIONS)]
    }

    fn check_poison(&self) -> Result<(), StoreError> {
        if !self.poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(StoreError::Poisoned {
            cause: lock(&self.poison_cause).clone().unwrap_or_default(),
        })
    }

    fn poison_with(&self, cause: String) {
        lock(&self.poison_cause).get_or_insert(cause);
        self.poisoned.store(true, Ordering::Release);
        // Commits waiting for room must not wait for a compaction that will not come.
        self.wake_log();
    }

    fn poison(&self, operation: &'static str, path: PathBuf, source: io::Error) -> StoreError {
        self.poison_with(format!(
            "{operation} of {} failed: {source}",
            path.display()
        ));
        StoreError::OutcomeUnknown {
            operation,
            path: Some(path),
            source,
        }
    }

    /// Wakes whoever waits on the log (through its lock, so no waiter misses it).
    fn wake_log(&self) {
        let _log = lock(&self.log);
        self.log_changed.notify_all();
    }

    fn snap_path(&self, id: &MachineId) -> PathBuf {
        self.dir.join(format!("{id}{SNAP_SUFFIX}"))
    }

    fn segment_path(&self, number: u64) -> PathBuf {
        self.dir.join(wal::segment_name(number))
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

    // ---- recovery ----

    fn recover(&self) -> Result<Recovery, StoreError> {
        let mut report = Recovery::default();
        let names = self
            .io
            .list(&self.dir)
            .map_err(|e| self.io_error("listing the store directory", None, e))?;
        let mut snaps = Vec::new();
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
                match MachineId::new(stem) {
                    Ok(id) => snaps.push((id, name)),
                    Err(_) => report.foreign_files.push(name),
                }
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
        // Verifying files and replaying segments are independent reads: several threads.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        let verified = self.verify_files(snaps, threads);
        let replayed = self.replay_segments(&segments, threads);
        for (id, name, found) in verified {
            let mut part = lock(&self.partition(&id).state);
            let entry = match found {
                Ok((seq, state)) => Entry::Valid {
                    seq,
                    at: Location::File,
                    state: part.name(state.as_deref()),
                },
                Err(ReadFailure::Corrupt(problem)) => {
                    report.corrupt.push((name, problem.clone()));
                    Entry::Corrupt(problem)
                }
                Err(ReadFailure::Io(e)) => {
                    let path = self.dir.join(&name);
                    return Err(self.io_error("reading a snapshot", Some(path), e));
                }
            };
            part.index.insert(id, entry);
        }
        let mut log = LogState::default();
        // Every log copy of a machine whose file did not verify: the file may be a torn copy
        // of any of them (see `separate_torn_files`).
        let unreadable: HashSet<&str> = report
            .corrupt
            .iter()
            .filter_map(|(name, _)| name.strip_suffix(SNAP_SUFFIX))
            .collect();
        let mut copies: HashMap<MachineId, Vec<(u64, u64, usize)>> = HashMap::new();
        // In segment order: of two copies with the same sequence, the older segment's stays.
        for (number, replay) in replayed {
            let (bytes, replay) = match replay {
                Ok(found) => found,
                Err(e) => {
                    let path = self.segment_path(number);
                    return Err(self.io_error("reading a log segment", Some(path), e));
                }
            };
            report.wal_segments += 1;
            report.wal_records += replay.records;
            report.wal_torn_bytes += replay.torn_bytes;
            for e in replay.entries {
                if unreadable.contains(e.id.as_str()) {
                    copies
                        .entry(e.id.clone())
                        .or_default()
                        .push((number, e.offset, e.len));
                }
                let mut part = lock(&self.partition(&e.id).state);
                let newer = part
                    .index
                    .get(&e.id)
                    .and_then(Entry::cas_seq)
                    .is_none_or(|s| e.seq > s);
                if newer {
                    report.wal_snapshots_applied += 1;
                    let state = part.name(e.state.as_deref());
                    part.index.insert(
                        e.id,
                        Entry::Valid {
                            seq: e.seq,
                            at: Location::Wal {
                                segment: number,
                                offset: e.offset,
                                len: e.len,
                            },
                            state,
                        },
                    );
                }
            }
            log.live.insert(
                number,
                LiveSegment {
                    bytes,
                    sealed: true,
                    unpublished: 0,
                },
            );
            log.bytes += bytes;
            self.next_segment.fetch_max(number + 1, Ordering::Relaxed);
        }
        self.separate_torn_files(&mut report, &copies);
        let replayed_any = !log.live.is_empty();
        *lock(&self.log) = log;
        if replayed_any {
            let _one = lock(&self.compacting);
            self.compact_all(1)?;
        }
        report.machines = self
            .partitions
            .iter()
            .map(|p| {
                lock(&p.state)
                    .index
                    .values()
                    .filter(|e| matches!(e, Entry::Valid { .. }))
                    .count()
            })
            .sum();
        Ok(report)
    }

    /// Moves the corrupt files that are torn copies of what the log holds (see
    /// [`Recovery::torn_files`]) out of `report.corrupt`. A compaction writes a machine's file
    /// without an fsync of its own and syncs the file system once at the end, so a crash
    /// before that end may leave any of its files short, zeroed or empty; the log segments it
    /// was emptying are only removed after the sync, so they still hold every such copy. A
    /// file that differs from the log's copy anywhere else (a newer snapshot damaged on disk)
    /// stays reported.
    fn separate_torn_files(
        &self,
        report: &mut Recovery,
        copies: &HashMap<MachineId, Vec<(u64, u64, usize)>>,
    ) {
        let corrupt = std::mem::take(&mut report.corrupt);
        for (name, problem) in corrupt {
            let copies = name
                .strip_suffix(SNAP_SUFFIX)
                .and_then(|stem| MachineId::new(stem).ok())
                .and_then(|id| copies.get(&id));
            // The file is read once; it cannot be a torn copy if it is longer than every copy.
            let longest = copies.map_or(0, |c| c.iter().map(|&(_, _, len)| len).max().unwrap_or(0));
            let file =
                copies.and_then(|_| self.io.read(&self.dir.join(&name), longest as u64).ok());
            let torn = copies.zip(file).is_some_and(|(copies, file)| {
                copies
                    .iter()
                    .any(|&(segment, offset, len)| self.is_torn_copy(&file, segment, offset, len))
            });
            if torn {
                report.torn_files.push(name);
            } else {
                report.corrupt.push((name, problem));
            }
        }
    }

    /// Whether `file` is a prefix of the log's copy at `offset` in `segment`, with zeros
    /// allowed where the copy has data (blocks that never reached the disk).
    fn is_torn_copy(&self, file: &[u8], segment: u64, offset: u64, len: usize) -> bool {
        if file.len() > len {
            return false;
        }
        let Ok(copy) = self.io.read_at(&self.segment_path(segment), offset, len) else {
            return false;
        };
        file.iter().zip(&copy).all(|(&f, &c)| f == c || f == 0)
    }

    /// Reads and verifies every snapshot file, on `threads` threads.
    fn verify_files(&self, snaps: Vec<(MachineId, String)>, threads: usize) -> Vec<Verified> {
        in_parallel(&snaps, threads, |(id, name)| {
            let found = self
                .read_verified(&self.dir.join(name))
                .map(|s| (s.seq(), s.state().map(str::to_owned)));
            (id.clone(), name.clone(), found)
        })
    }

    /// Replays every segment, on up to `threads` threads; returns them in segment order with
    /// their lengths.
    fn replay_segments(
        &self,
        segments: &BTreeMap<u64, PathBuf>,
        threads: usize,
    ) -> Vec<(u64, io::Result<(u64, wal::Replay)>)> {
        let list: Vec<(u64, &PathBuf)> = segments.iter().map(|(n, p)| (*n, p)).collect();
        in_parallel(&list, threads, |&(number, path)| {
            let replay = self
                .io
                .read(path, MAX_SEGMENT)
                .map(|bytes| (bytes.len() as u64, wal::replay(&bytes, &self.limits)));
            (number, replay)
        })
    }

    // ---- writes ----

    /// Reserves the batch's machines in their partitions, checking each compare-and-set
    /// there. A machine another write has reserved is waited for (holding no reservation
    /// meanwhile), then everything is checked again.
    fn reserve(&self, groups: &Groups, batch: &[Put<'_>]) -> Result<(), StoreError> {
        'again: loop {
            let mut reserved: Groups = Groups::new();
            for (&p, members) in groups {
                let partition = &self.partitions[p];
                let mut state = lock(&partition.state);
                let busy = members
                    .iter()
                    .map(|&i| batch[i].id)
                    .find(|id| state.writing.contains(*id))
                    .cloned();
                if let Some(busy) = busy {
                    drop(state);
                    self.release(&reserved, batch);
                    let mut state = lock(&partition.state);
                    while state.writing.contains(&busy) {
                        state = partition.released.wait(state).recover();
                    }
                    continue 'again;
                }
                for &i in members {
                    let put = &batch[i];
                    if let Err(e) = put.check(state.index.get(put.id).and_then(Entry::cas_seq)) {
                        drop(state);
                        self.release(&reserved, batch);
                        return Err(e);
                    }
                }
                for &i in members {
                    state.writing.insert(batch[i].id.clone());
                }
                reserved.insert(p, members.clone());
            }
            return Ok(());
        }
    }

    /// Ends the reservations of `groups` (a write that did not happen).
    fn release(&self, groups: &Groups, batch: &[Put<'_>]) {
        for (&p, members) in groups {
            let partition = &self.partitions[p];
            let mut state = lock(&partition.state);
            for &i in members {
                state.writing.remove(batch[i].id);
            }
            partition.released.notify_all();
        }
    }

    /// Records where the batch's snapshots now are and ends their reservations.
    fn publish(&self, groups: &Groups, batch: &[Put<'_>], at: impl Fn(usize) -> Location) {
        for (&p, members) in groups {
            let partition = &self.partitions[p];
            let mut state = lock(&partition.state);
            for &i in members {
                let put = &batch[i];
                state.writing.remove(put.id);
                let name = state.name(put.snapshot.state());
                state.index.insert(
                    put.id.clone(),
                    Entry::Valid {
                        seq: put.snapshot.seq(),
                        at: at(i),
                        state: name,
                    },
                );
            }
            partition.released.notify_all();
        }
    }

    /// Appends a batch's record through this thread's lane, together with the records other
    /// threads queue on it meanwhile (one write, one fdatasync for all of them); returns the
    /// segment and the record's offset in it. The caller publishes the batch, then calls
    /// [`Shared::published`].
    fn append(&self, record: Vec<u8>) -> Result<(u64, u64), StoreError> {
        let lane = &self.lanes[lane_hint() % self.lanes.len()];
        lane.group
            .commit(record, |group| {
                let mut segment = lock(&lane.segment);
                let outcome = if let [(_, only)] = group.as_slice() {
                    self.append_group(&mut segment, only, 1)
                } else {
                    let bytes: Vec<u8> =
                        group.iter().flat_map(|(_, r)| r.iter().copied()).collect();
                    self.append_group(&mut segment, &bytes, group.len())
                };
                match outcome {
                    Ok((number, mut offset)) => group
                        .into_iter()
                        .map(|(t, record)| {
                            let at = offset;
                            offset += record.len() as u64;
                            (t, Ok((number, at)))
                        })
                        .collect(),
                    Err(e) => group
                        .into_iter()
                        .map(|(t, _)| (t, Err(e.clone())))
                        .collect(),
                }
            })
            .map_err(AppendError::into_store_error)
    }

    /// Appends `bytes` (the records of `records` batches) to the segment (opening one if
    /// there is none) and makes them durable; returns the segment and where they start.
    fn append_group(
        &self,
        lane: &mut Option<Segment>,
        bytes: &[u8],
        records: usize,
    ) -> Result<(u64, u64), AppendError> {
        let failure = |operation, path: PathBuf, e: &io::Error, unknown| AppendError {
            operation,
            path,
            kind: e.kind(),
            message: e.to_string(),
            unknown,
        };
        if lane.is_none() {
            let number = self.next_segment.fetch_add(1, Ordering::Relaxed);
            let path = self.segment_path(number);
            let file = self
                .io
                .create(&path)
                .map_err(|e| failure("creating a log segment", path.clone(), &e, false))?;
            // Live from now on: whatever happens next, compaction removes it.
            lock(&self.log).live.insert(
                number,
                LiveSegment {
                    bytes: 0,
                    sealed: false,
                    unpublished: 0,
                },
            );
            *lane = Some(Segment {
                number,
                file,
                len: 0,
            });
            if let Err(source) = self.io.sync_dir(&self.dir) {
                self.seal(lane);
                self.poison_with(format!("fsync of the store directory failed: {source}"));
                return Err(failure(
                    "fsync of the store directory",
                    self.dir.clone(),
                    &source,
                    false,
                ));
            }
        }
        let segment = lane.as_mut().expect("opened above");
        let number = segment.number;
        if let Err(e) = segment.file.write_all(bytes) {
            // The segment may now end in a partial record: the next batch starts a new one
            // (replay reads each segment up to its first invalid record).
            self.seal(lane);
            return Err(failure(
                "appending to the log",
                self.segment_path(number),
                &e,
                false,
            ));
        }
        if let Err(source) = segment.file.sync_data() {
            self.seal(lane);
            let path = self.segment_path(number);
            let error = failure("fdatasync of the log", path.clone(), &source, true);
            self.poison("fdatasync of the log", path, source);
            return Err(error);
        }
        let offset = segment.len;
        segment.len += bytes.len() as u64;
        let mut log = lock(&self.log);
        log.bytes += bytes.len() as u64;
        if let Some(live) = log.live.get_mut(&number) {
            live.bytes += bytes.len() as u64;
            live.unpublished += records;
        }
        Ok((number, offset))
    }

    /// A batch appended to `segment` is in the index now. Returns whether the log holds enough
    /// to compact (read under the same lock).
    fn published(&self, segment: u64) -> bool {
        let mut log = lock(&self.log);
        if let Some(live) = log.live.get_mut(&segment) {
            live.unpublished -= 1;
            if live.unpublished == 0 && live.sealed {
                self.log_changed.notify_all();
            }
        }
        log.bytes >= self.checkpoint_bytes
    }

    /// Closes the lane's segment for appending; it stays live until compacted.
    fn seal(&self, lane: &mut Option<Segment>) {
        if let Some(segment) = lane.take() {
            if let Some(live) = lock(&self.log).live.get_mut(&segment.number) {
                live.sealed = true;
            }
        }
    }

    /// Waits while the log is at its limit and background compaction works it down.
    fn wait_for_room(&self) -> Result<(), StoreError> {
        if self.compaction == Compaction::Inline {
            // Inline compaction keeps the log under the threshold on the commit path.
            return Ok(());
        }
        let mut log = lock(&self.log);
        if log.bytes < self.log_limit {
            return Ok(());
        }
        let started = Instant::now();
        self.commit_waits.fetch_add(1, Ordering::Relaxed);
        self.log_changed.notify_all();
        let outcome = loop {
            if let Some(why) = &log.compaction_failed {
                break Err(StoreError::Io {
                    operation: "compacting the log, which is at its limit",
                    path: Some(self.dir.clone()),
                    source: io::Error::other(why.clone()),
                });
            }
            if log.bytes < self.log_limit
                || self.poisoned.load(Ordering::Acquire)
                || self.closing.load(Ordering::Acquire)
            {
                break Ok(());
            }
            log = self.log_changed.wait(log).recover();
        };
        drop(log);
        self.commit_wait_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        outcome?;
        self.check_poison()
    }

    /// After a batch took the log past the threshold: compacts (inline) or tells the
    /// compactor.
    fn compaction_due(&self) {
        match self.compaction {
            Compaction::Background => self.wake_log(),
            Compaction::Inline => {
                // The batch is durable in the log already; a failed compaction is reported by
                // the next call (it poisons the store or leaves the log to be compacted later).
                if let Ok(_one) = self.compacting.try_lock() {
                    let _ = self.compact_all(1);
                }
            }
        }
    }

    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        check_batch(batch)?;
        self.check_poison()?;
        let groups = groups(batch);
        if batch.is_empty() {
            return Ok(());
        }
        self.wait_for_room()?;
        self.reserve(&groups, batch)?;
        let (record, offsets) = wal::encode(batch);
        let (segment, base) = match self.append(record) {
            Ok(at) => at,
            Err(e) => {
                self.release(&groups, batch);
                return Err(e);
            }
        };
        self.publish(&groups, batch, |i| Location::Wal {
            segment,
            offset: base + offsets[i] as u64,
            len: batch[i].snapshot.len(),
        });
        if self.published(segment) {
            self.compaction_due();
        }
        Ok(())
    }

    fn put(
        &self,
        id: &MachineId,
        expected: Option<u64>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        self.check_poison()?;
        let batch = [Put::new(id, expected, snapshot)];
        let groups = groups(&batch);
        self.reserve(&groups, &batch)?;
        let result = self.replace_file(id, snapshot);
        self.release(&groups, &batch);
        result
    }

    /// The atomic replace protocol for one snapshot file: temp, write, fsync, then under the
    /// partition's lock rename, fsync the directory and point the index at the file.
    fn replace_file(&self, id: &MachineId, snapshot: &Snapshot) -> Result<(), StoreError> {
        let temp = self.create_synced_temp(id, snapshot.as_bytes())?;
        let target = self.snap_path(id);
        let mut state = lock(&self.partition(id).state);
        if let Err(source) = self.io.rename(&temp, &target) {
            let _ = self.io.remove(&temp);
            drop(state);
            return Err(self.poison("rename", target, source));
        }
        if self.put_syncs_dir {
            if let Err(source) = self.io.sync_dir(&self.dir) {
                drop(state);
                return Err(self.poison("fsync of the store directory", self.dir.clone(), source));
            }
        }
        let name = state.name(snapshot.state());
        state.index.insert(
            id.clone(),
            Entry::Valid {
                seq: snapshot.seq(),
                at: Location::File,
                state: name,
            },
        );
        Ok(())
    }

    /// Writes and fsyncs a temp file holding `bytes`; returns its path.
    fn create_synced_temp(&self, id: &MachineId, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        self.create_temp(id, bytes, true)
    }

    /// Writes a temp file holding `bytes`, and fsyncs it if `sync`; returns its path.
    fn create_temp(&self, id: &MachineId, bytes: &[u8], sync: bool) -> Result<PathBuf, StoreError> {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed) + 1;
        let temp = self.dir.join(format!("{TEMP_PREFIX}{id}-{n}"));
        let mut file = self
            .io
            .create(&temp)
            .map_err(|e| self.io_error("creating a temp file", Some(temp.clone()), e))?;
        if let Err(e) = file.write_all(bytes) {
            drop(file);
            let _ = self.io.remove(&temp);
            return Err(self.io_error("writing a snapshot", Some(temp), e));
        }
        if !sync {
            return Ok(temp);
        }
        if let Err(source) = file.sync_all() {
            drop(file);
            let _ = self.io.remove(&temp);
            // Nothing reached the snapshot's name, but a failed fsync may have dropped dirty
            // pages the kernel will not write again: stop until reopened.
            self.poison_with(format!("fsync of {} failed: {source}", temp.display()));
            return Err(StoreError::Io {
                operation: "fsync of a new snapshot",
                path: Some(temp),
                source,
            });
        }
        Ok(temp)
    }

    // ---- compaction ----

    /// Time spent compacting so far, the compaction under way included.
    fn compacting(&self) -> Duration {
        // The start first: if it reads as cleared, the finished compaction's time is in the
        // total read after it.
        let since = self.compacting_since.load(Ordering::Acquire);
        let done = Duration::from_nanos(self.compacting_ns.load(Ordering::Acquire));
        if since == 0 {
            return done;
        }
        let under_way = self
            .opened
            .elapsed()
            .saturating_sub(Duration::from_nanos(since - 1));
        done + under_way
    }

    /// Seals every open segment and compacts every sealed one, on up to `threads` threads.
    /// The caller holds `compacting`.
    fn compact_all(&self, threads: usize) -> Result<(), StoreError> {
        for lane in self.lanes.iter() {
            // A group being written holds the segment: sealed after it.
            self.seal(&mut lock(&lane.segment));
        }
        // Batches already appended to the sealed segments publish their index entries first.
        let mut log = lock(&self.log);
        while log.live.values().any(|s| s.sealed && s.unpublished > 0) {
            log = self.log_changed.wait(log).recover();
        }
        let sealed: Vec<u64> = log
            .live
            .iter()
            .filter(|(_, s)| s.sealed)
            .map(|(n, _)| *n)
            .collect();
        drop(log);
        if sealed.is_empty() {
            return Ok(());
        }
        self.timed_compact(&sealed, threads)
    }

    /// [`Shared::compact`], with its time added to [`FileStoreStats::compacting`] (and seen
    /// there while it runs).
    fn timed_compact(&self, sealed: &[u64], threads: usize) -> Result<(), StoreError> {
        let started = self.opened.elapsed();
        let since = u64::try_from(started.as_nanos()).unwrap_or(u64::MAX - 1) + 1;
        self.compacting_since.store(since, Ordering::Release);
        let result = self.compact(sealed, threads);
        let took = self.opened.elapsed().saturating_sub(started);
        // Added before the start is cleared, and read after it (`compacting`): a reader
        // between the two counts the compaction twice for a moment, never not at all.
        self.compacting_ns.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        self.compacting_since.store(0, Ordering::Release);
        result
    }

    /// Moves machine `id`'s copy at `here` (sequence `seq`, in the segment `bytes` read from
    /// `path`) into its file, if the index still points at it: returns the machine and the
    /// copy it moved, or `None` if a newer write superseded it (before or during the move).
    fn compact_one(
        &self,
        id: &MachineId,
        seq: u64,
        here: Location,
        bytes: &[u8],
        path: &Path,
    ) -> Result<Option<(MachineId, Location)>, StoreError> {
        let Location::Wal { offset, len, .. } = here else {
            return Ok(None);
        };
        let current = |state: &PartitionState| {
            matches!(
                state.index.get(id),
                Some(Entry::Valid { seq: s, at, .. }) if *s == seq && *at == here
            )
        };
        // A copy a newer write already replaced costs nothing (under load most do).
        if !current(&lock(&self.partition(id).state)) {
            return Ok(None);
        }
        let envelope = bytes
            .get(offset as usize..offset as usize + len)
            .ok_or_else(|| {
                StoreError::corrupt(
                    path.display().to_string(),
                    Corruption::Other("log segment shorter than its index".into()),
                )
            })?;
        // Not synced here: the log keeps this copy until the whole compaction is durable (one
        // file-system sync in `compact`), so a file a crash cuts short is replaced from it.
        let temp = self.create_temp(id, envelope, false)?;
        // Only if the index still points at this copy: a newer write (to the log or the file)
        // must not be replaced by it.
        let state = lock(&self.partition(id).state);
        if !current(&state) {
            drop(state);
            let _ = self.io.remove(&temp);
            return Ok(None);
        }
        let target = self.snap_path(id);
        if let Err(source) = self.io.rename(&temp, &target) {
            let _ = self.io.remove(&temp);
            drop(state);
            return Err(self.poison("rename", target, source));
        }
        Ok(Some((id.clone(), here)))
    }

    /// Writes every snapshot that lives in `segments` (sealed: nothing appends to them) into
    /// its file, on up to `threads` threads, then removes the segments.
    fn compact(&self, segments: &[u64], threads: usize) -> Result<(), StoreError> {
        let wanted: HashSet<u64> = segments.iter().copied().collect();
        // What lives in them, by segment.
        let mut by_segment: BTreeMap<u64, Vec<(MachineId, u64, u64, usize)>> = BTreeMap::new();
        for partition in self.partitions.iter() {
            let state = lock(&partition.state);
            for (id, entry) in &state.index {
                if let Entry::Valid {
                    seq,
                    at:
                        Location::Wal {
                            segment,
                            offset,
                            len,
                        },
                    ..
                } = entry
                {
                    if wanted.contains(segment) {
                        by_segment.entry(*segment).or_default().push((
                            id.clone(),
                            *seq,
                            *offset,
                            *len,
                        ));
                    }
                }
            }
        }
        // Opened before anything is written, so its sync reports any write-back failure of
        // the files this compaction writes.
        let mut fs = self
            .io
            .open_fs(&self.dir)
            .map_err(|e| self.io_error("opening the store's file system", None, e))?;
        let mut renamed = Vec::new();
        for (segment, entries) in by_segment {
            let path = self.segment_path(segment);
            let bytes = self
                .io
                .read(&path, MAX_SEGMENT)
                .map_err(|e| self.io_error("reading a log segment", Some(path.clone()), e))?;
            // Several threads at once in the background compactor (creating and renaming files
            // is the file system's CPU work), one after the other otherwise.
            let moved = in_parallel(&entries, threads, |(id, seq, offset, len)| {
                let here = Location::Wal {
                    segment,
                    offset: *offset,
                    len: *len,
                };
                self.compact_one(id, *seq, here, &bytes, &path)
            });
            for result in moved {
                if let Some(done) = result? {
                    renamed.push(done);
                }
            }
        }
        if !renamed.is_empty() {
            // Every file written and renamed above, and the directory, in one sync; only then
            // may the log's copies go.
            if let Err(source) = fs.sync() {
                return Err(self.poison(
                    "sync of the store's file system",
                    self.dir.clone(),
                    source,
                ));
            }
        }
        drop(fs);
        let moved = renamed.len() as u64;
        for (id, here) in renamed {
            let mut state = lock(&self.partition(&id).state);
            if let Some(Entry::Valid { at, .. }) = state.index.get_mut(&id) {
                if *at == here {
                    *at = Location::File;
                }
            }
        }
        for &segment in segments {
            let path = self.segment_path(segment);
            if let Err(source) = self.io.remove(&path) {
                // Harmless for correctness (replay skips what the files already hold); retried
                // at the next compaction or open.
                return Err(self.io_error("removing a compacted log segment", Some(path), source));
            }
            let mut log = lock(&self.log);
            if let Some(live) = log.live.remove(&segment) {
                log.bytes -= live.bytes;
            }
        }
        if let Err(source) = self.io.sync_dir(&self.dir) {
            return Err(self.poison("fsync of the store directory", self.dir.clone(), source));
        }
        self.compactions.fetch_add(1, Ordering::Relaxed);
        self.compacted.fetch_add(moved, Ordering::Relaxed);
        // Room for commits that waited.
        self.wake_log();
        Ok(())
    }

    /// The background compactor: compacts whenever the log passes the threshold, until the
    /// store closes or is poisoned.
    fn compactor(&self) {
        let mut log = lock(&self.log);
        loop {
            if self.closing.load(Ordering::Acquire) || self.poisoned.load(Ordering::Acquire) {
                return;
            }
            if log.bytes < self.checkpoint_bytes {
                log = self.log_changed.wait(log).recover();
                continue;
            }
            drop(log);
            let result = {
                let _one = lock(&self.compacting);
                // As many file syncs at once as the store has lanes (one per core by default).
                self.compact_all(self.lanes.len())
            };
            log = lock(&self.log);
            log.compaction_failed = result.as_ref().err().map(ToString::to_string);
            self.log_changed.notify_all();
            if result.is_err() {
                // Not in a loop: try again in a while, or when woken.
                log = self
                    .log_changed
                    .wait_timeout(log, Duration::from_millis(500))
                    .recover()
                    .0;
            }
        }
    }

    // ---- reads ----

    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
        self.check_poison()?;
        // Read under the partition's lock: no rename or compaction of this machine meanwhile.
        let mut state = lock(&self.partition(id).state);
        let (seq, at) = match state.index.get(id) {
            None => return Err(StoreError::NotFound { id: id.clone() }),
            Some(Entry::Corrupt(problem)) => {
                return Err(StoreError::corrupt(id.to_string(), problem.clone()))
            }
            Some(Entry::Valid { seq, at, .. }) => (*seq, *at),
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
                let path = self.segment_path(segment);
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
            state
                .index
                .insert(id.clone(), Entry::Corrupt(problem.clone()));
        }
        result
    }

    fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError> {
        self.check_poison()?;
        match lock(&self.partition(id).state).index.get(id) {
            None => Ok(None),
            Some(Entry::Valid { seq, .. }) => Ok(Some(*seq)),
            Some(Entry::Corrupt(problem)) => {
                Err(StoreError::corrupt(id.to_string(), problem.clone()))
            }
        }
    }

    fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
        self.check_poison()?;
        Ok(self
            .partitions
            .iter()
            .flat_map(|p| lock(&p.state).index.keys().cloned().collect::<Vec<_>>())
            .collect())
    }

    /// One pass over the index, partition by partition: no snapshot is read.
    fn list(&self, query: &ListQuery<'_>) -> Result<Page, StoreError> {
        self.check_poison()?;
        let mut page = Smallest::new(query.page_size());
        for partition in self.partitions.iter() {
            for (id, entry) in lock(&partition.state).index.iter() {
                let selected = match entry {
                    Entry::Valid { state, .. } => query.state.matches(state.as_deref()),
                    // A damaged machine is listed, but in no state.
                    Entry::Corrupt(_) => query.state == StateFilter::Any,
                };
                if selected && query.is_after(id) {
                    page.offer(id);
                }
            }
        }
        Ok(page.into_page())
    }

    fn count_states(&self) -> Result<StateCounts, StoreError> {
        self.check_poison()?;
        let mut counts = StateCounts::default();
        for partition in self.partitions.iter() {
            for entry in lock(&partition.state).index.values() {
                match entry {
                    Entry::Valid { state, .. } => counts.add(state.as_deref()),
                    Entry::Corrupt(_) => counts.unreadable += 1,
                }
            }
        }
        Ok(counts)
    }
}

impl SnapshotStore for FileStore {
    fn put(
        &self,
        id: &MachineId,
        expected: Option<u64>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        self.shared.put(id, expected, snapshot)
    }

    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        self.shared.put_many(batch)
    }

    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
        self.shared.get(id)
    }

    fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError> {
        self.shared.sequence(id)
    }

    fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
        self.shared.ids()
    }

    fn list(&self, query: &ListQuery<'_>) -> Result<Page, StoreError> {
        self.shared.list(query)
    }

    fn count_states(&self) -> Result<StateCounts, StoreError> {
        self.shared.count_states()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new("file", true)
    }
}
