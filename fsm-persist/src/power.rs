//! A power-loss model of the file store's directory (feature `fault-injection`).
//!
//! A SIGKILL keeps everything the process wrote in the operating system's page cache; a power
//! cut does not. [`PowerLossIo`] is an [`Io`] that keeps the store's directory in memory and
//! remembers what was never made durable: per file, the bytes written since its last
//! fsync/fdatasync; per directory, the entries created, renamed and removed since its last
//! fsync. When the power is cut, [`PowerLossIo::image`] chooses, from a seed, one of the disk
//! states a POSIX file system may leave, and [`Image::write_to`] puts it on the real disk, where
//! the store is reopened with plain [`OsIo`] as after a reboot.
//!
//! # The model
//! - The directory's content when the model starts is durable (written by an earlier process
//!   and synced, or left by an earlier cut).
//! - A file's bytes up to its last successful `sync_all`/`sync_data` are durable. Bytes
//!   written after it (files are only appended to) are, independently per file, **dropped**
//!   (the file ends at its synced length), **kept**, kept as a **prefix** of random length, or
//!   kept as a random subset of whole 4 KiB **blocks** with the file at its full length and
//!   the other blocks reading as zeros (the size reached the disk, the data did not).
//! - A sync of the whole file system ([`Io::open_fs`], `syncfs`) makes every file's bytes and
//!   every entry durable at once.
//! - The directory's entries as of its last successful `sync_dir` are durable. Every entry
//!   operation after it (a creation, a rename, a removal) is, independently, **kept or
//!   undone**; the kept ones apply in the order they happened. A rename is atomic: its target
//!   names the old file or the new one, never neither. A file created but whose directory was
//!   not synced may be missing; a file removed may come back.
//! - Seed 0 drops everything unsynced and undoes every unsynced entry operation; seed 1 keeps
//!   everything (what a SIGKILL leaves); other seeds choose at random, per file and per entry
//!   operation.
//!
//! # What it does not cover
//! - Only the store's own directory is modelled; operations on other paths are refused,
//!   except a directory fsync of another directory (the parent, when the store creates its
//!   directory), which passes through to the real disk.
//! - Overwrites in place and truncation (the file store only appends to new files), hard
//!   links, and metadata other than names and sizes are not modelled.
//! - Synced data is never damaged: a disk that loses or corrupts what it acknowledged as
//!   synced (a lying write cache, a bad sector) is the fault layer's
//!   [`Fault::Garbage`](crate::fault::Fault::Garbage) and the corruption tests' concern.
//! - A file system may be stricter than the model (ext4's ordered mode keeps entry operations
//!   in order and commits a new file's entry with its fsync); the model allows everything
//!   POSIX allows, so a store correct under it is correct on those too.
//!
//! # Across processes
//! [`PowerLossIo::journal`] appends every operation to a journal file as it happens (a plain
//! write: a SIGKILL keeps it, and an operation cut off in the middle is a torn record that
//! replay ignores). After the process is killed, [`PowerLossIo::replay`] rebuilds the model
//! from the directory (untouched by the dead process, which wrote only to memory and the
//! journal) and the journal, and its [`image`](PowerLossIo::image) is what the power cut left.
//!
//! ```
//! use fsm_core::store::{Format, MachineId, Snapshot, SnapshotStore};
//! use fsm_persist::fault::PowerLossIo;
//! use fsm_persist::FileStore;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let io = PowerLossIo::new(dir.path()).unwrap();
//! let store = FileStore::builder(dir.path()).io(io.clone()).open().unwrap();
//! let id = MachineId::new("m").unwrap();
//! store.put(&id, None, &Snapshot::new("M", 1, 1, Format::Postcard, b"x").unwrap()).unwrap();
//! drop(store);
//!
//! // The worst case: everything that was not synced is gone. The acknowledged put is not.
//! let outcome = io.restart(0).unwrap();
//! assert_eq!(outcome.dir_ops_kept, 0);
//! let store = FileStore::open(dir.path()).unwrap();
//! assert_eq!(store.get(&id).unwrap().seq(), 1);
//! ```

use crate::sync::Recover;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fault::Step;
use crate::io::{FsSync, Io, IoFile, OsIo};

/// The block size of the model: unsynced data survives in whole blocks of this size.
pub const BLOCK: usize = 4096;

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    /// Bytes known durable: the length at the last successful sync.
    synced: usize,
}

#[derive(Debug, Clone)]
enum DirOp {
    Create {
        name: OsString,
        ino: usize,
    },
    Rename {
        from: OsString,
        to: OsString,
        ino: usize,
    },
    Remove {
        name: OsString,
        ino: usize,
    },
}

impl DirOp {
    fn apply(&self, names: &mut BTreeMap<OsString, usize>) {
        match self {
            DirOp::Create { name, ino } => {
                names.insert(name.clone(), *ino);
            }
            DirOp::Rename { from, to, ino } => {
                if names.get(from) == Some(ino) {
                    names.remove(from);
                }
                names.insert(to.clone(), *ino);
            }
            DirOp::Remove { name, ino } => {
                if names.get(name) == Some(ino) {
                    names.remove(name);
                }
            }
        }
    }
}

/// One operation, as the journal records it (replayed in order, it rebuilds the model).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Create {
        name: OsString,
    },
    Write {
        ino: usize,
        data: Vec<u8>,
    },
    Sync {
        ino: usize,
    },
    Rename {
        from: OsString,
        to: OsString,
    },
    SyncDir,
    Remove {
        name: OsString,
    },
    /// A sync of the whole file system: every file and the directory.
    SyncFs,
}

struct Disk {
    inodes: Vec<Inode>,
    /// The directory as the running process sees it.
    names: BTreeMap<OsString, usize>,
    /// The directory as of its last fsync.
    durable: BTreeMap<OsString, usize>,
    /// Entry operations since then, in order.
    pending: Vec<DirOp>,
    /// Operations attempted, by kind (the one the power failed at included).
    ops: Vec<Step>,
    cut_before: Option<usize>,
    /// The operation the power failed at, if it failed during one.
    cut_at: Option<(usize, Step)>,
    off: bool,
    journal: Option<File>,
}

impl Disk {
    fn power_off_error() -> io::Error {
        io::Error::other("the power is off (power-loss model)")
    }

    /// Counts an operation and cuts the power if this is the planned one.
    fn gate(&mut self, step: Step) -> io::Result<()> {
        if self.off {
            return Err(Disk::power_off_error());
        }
        let n = self.ops.len();
        self.ops.push(step);
        if self.cut_before == Some(n) {
            self.off = true;
            self.cut_at = Some((n, step));
            return Err(Disk::power_off_error());
        }
        Ok(())
    }

    fn check_on(&self) -> io::Result<()> {
        if self.off {
            Err(Disk::power_off_error())
        } else {
            Ok(())
        }
    }

    /// Validates, counts, journals and applies one operation; `Ok(ino)` for a creation.
    fn perform(&mut self, record: Record) -> io::Result<usize> {
        let step = match &record {
            Record::Create { name } => {
                if self.names.contains_key(name) {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists", Path::new(name).display()),
                    ));
                }
                Step::Create
            }
            Record::Write { .. } => Step::Write,
            Record::Sync { .. } => Step::Sync,
            Record::Rename { from: name, .. } | Record::Remove { name } => {
                if !self.names.contains_key(name) {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{} does not exist", Path::new(name).display()),
                    ));
                }
                if matches!(record, Record::Rename { .. }) {
                    Step::Rename
                } else {
                    Step::Remove
                }
            }
            Record::SyncDir => Step::SyncDir,
            Record::SyncFs => Step::SyncFs,
        };
        self.gate(step)?;
        if let Some(journal) = &mut self.journal {
            journal.write_all(&encode(&record))?;
        }
        Ok(self.apply(record))
    }

    fn apply(&mut self, record: Record) -> usize {
        match record {
            Record::Create { name } => {
                let ino = self.inodes.len();
                self.inodes.push(Inode::default());
                self.names.insert(name.clone(), ino);
                self.pending.push(DirOp::Create { name, ino });
                ino
            }
            Record::Write { ino, data } => {
                self.inodes[ino].data.extend_from_slice(&data);
                ino
            }
            Record::Sync { ino } => {
                let inode = &mut self.inodes[ino];
                inode.synced = inode.data.len();
                ino
            }
            Record::Rename { from, to } => {
                let ino = self.names.remove(&from).expect("validated");
                self.names.insert(to.clone(), ino);
                self.pending.push(DirOp::Rename { from, to, ino });
                ino
            }
            Record::SyncDir => {
                self.durable = self.names.clone();
                self.pending.clear();
                0
            }
            Record::Remove { name } => {
                let ino = self.names.remove(&name).expect("validated");
                self.pending.push(DirOp::Remove { name, ino });
                ino
            }
            Record::SyncFs => {
                for inode in &mut self.inodes {
                    inode.synced = inode.data.len();
                }
                self.durable = self.names.clone();
                self.pending.clear();
                0
            }
        }
    }
}

/// An [`Io`] over one directory that keeps it in memory, tracks what was never synced, and
/// can cut the power: see the [module documentation](self). Cheap to clone; clones share the
/// disk.
#[derive(Clone)]
pub struct PowerLossIo {
    dir: PathBuf,
    disk: Arc<Mutex<Disk>>,
}

impl fmt::Debug for PowerLossIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let disk = self.lock();
        f.debug_struct("PowerLossIo")
            .field("dir", &self.dir)
            .field("ops", &disk.ops.len())
            .field("off", &disk.off)
            .finish_non_exhaustive()
    }
}

impl PowerLossIo {
    /// A model of `dir`, whose current files are taken as durable. The power stays on until
    /// [`cut`](PowerLossIo::cut), a planned cut ([`cut_before`](PowerLossIo::cut_before)) or
    /// [`image`](PowerLossIo::image).
    pub fn new(dir: impl AsRef<Path>) -> io::Result<PowerLossIo> {
        let dir = dir.as_ref().to_path_buf();
        let mut inodes = Vec::new();
        let mut names = BTreeMap::new();
        let mut entries: Vec<_> = fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(fs::DirEntry::file_name);
        for entry in entries {
            if !entry.file_type()?.is_file() {
                continue;
            }
            let data = fs::read(entry.path())?;
            names.insert(entry.file_name(), inodes.len());
            inodes.push(Inode {
                synced: data.len(),
                data,
            });
        }
        Ok(PowerLossIo {
            dir,
            disk: Arc::new(Mutex::new(Disk {
                inodes,
                durable: names.clone(),
                names,
                pending: Vec::new(),
                ops: Vec::new(),
                cut_before: None,
                cut_at: None,
                off: false,
                journal: None,
            })),
        })
    }

    /// Plans the power to fail at operation `op` (counted from 0 over creations, writes,
    /// syncs, renames, directory syncs and removals): it and everything after it fail, as in a
    /// process that lost its machine. [`ops`](PowerLossIo::ops) of a run without a cut tells
    /// how many there are.
    pub fn cut_before(self, op: usize) -> PowerLossIo {
        self.lock().cut_before = Some(op);
        self
    }

    /// Appends every operation to the file `path` (created or truncated) as it happens, for
    /// [`replay`](PowerLossIo::replay) after the process is killed.
    pub fn journal(self, path: impl AsRef<Path>) -> io::Result<PowerLossIo> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        self.lock().journal = Some(file);
        Ok(self)
    }

    /// The model a killed process left: `dir` as it was when that process started its
    /// [`journal`](PowerLossIo::journal), with every complete journal record applied. The
    /// power is off.
    pub fn replay(dir: impl AsRef<Path>, journal: impl AsRef<Path>) -> io::Result<PowerLossIo> {
        let io = PowerLossIo::new(dir)?;
        let bytes = fs::read(journal)?;
        {
            let mut disk = io.lock();
            for record in decode_all(&bytes) {
                if let Record::Write { ino, .. } | Record::Sync { ino } = record {
                    if ino >= disk.inodes.len() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("journal names file {ino}, which it never created"),
                        ));
                    }
                }
                let step = match &record {
                    Record::Create { .. } => Step::Create,
                    Record::Write { .. } => Step::Write,
                    Record::Sync { .. } => Step::Sync,
                    Record::Rename { .. } => Step::Rename,
                    Record::SyncDir => Step::SyncDir,
                    Record::Remove { .. } => Step::Remove,
                    Record::SyncFs => Step::SyncFs,
                };
                if let Record::Rename { from: name, .. } | Record::Remove { name } = &record {
                    if !disk.names.contains_key(name) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "journal renames or removes a file that does not exist",
                        ));
                    }
                }
                disk.ops.push(step);
                disk.apply(record);
            }
            disk.off = true;
        }
        Ok(io)
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // Every operation validates before it changes anything, so a panic leaves no half
        // applied state behind.
        self.disk.lock().recover()
    }

    /// The modelled directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Operations attempted so far (the one the power failed at included).
    pub fn ops(&self) -> usize {
        self.lock().ops.len()
    }

    /// The kind of operation `n`, if there was one.
    pub fn op(&self, n: usize) -> Option<Step> {
        self.lock().ops.get(n).copied()
    }

    /// Whether the power is off (a planned cut happened, or [`cut`](PowerLossIo::cut) or
    /// [`image`](PowerLossIo::image) was called).
    pub fn is_off(&self) -> bool {
        self.lock().off
    }

    /// Where a planned cut happened: the operation's number and kind.
    pub fn cut_at(&self) -> Option<(usize, Step)> {
        self.lock().cut_at
    }

    /// Cuts the power now: every later operation fails.
    pub fn cut(&self) {
        self.lock().off = true;
    }

    /// What is not durable now: files with unsynced bytes, those bytes, and unsynced entry
    /// operations.
    pub fn unsynced(&self) -> Unsynced {
        let disk = self.lock();
        let dirty = disk.inodes.iter().filter(|i| i.data.len() > i.synced);
        Unsynced {
            files: dirty.clone().count(),
            bytes: dirty.map(|i| (i.data.len() - i.synced) as u64).sum(),
            dir_ops: disk.pending.len(),
        }
    }

    /// Cuts the power (if it is on) and chooses, from `seed`, one disk state the cut may
    /// leave: see the [module documentation](self) for the choices.
    pub fn image(&self, seed: u64) -> Image {
        let mut disk = self.lock();
        disk.off = true;
        let mut rng = SplitMix(seed);
        let choose = |rng: &mut SplitMix, options: u64| match seed {
            0 => 0,
            1 => 1,
            _ => rng.below(options),
        };
        let mut outcome = Outcome {
            seed,
            dir_ops: disk.pending.len(),
            ..Outcome::default()
        };
        let mut names = disk.durable.clone();
        for op in &disk.pending {
            // 1: kept, 0: undone.
            if choose(&mut rng, 2) == 1 {
                op.apply(&mut names);
                outcome.dir_ops_kept += 1;
            }
        }
        let mut contents: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut files = BTreeMap::new();
        for (name, &ino) in &names {
            let inode = &disk.inodes[ino];
            let data = contents.entry(ino).or_insert_with(|| {
                let (synced, len) = (inode.synced, inode.data.len());
                if len == synced {
                    return inode.data.clone();
                }
                outcome.unsynced_files += 1;
                outcome.unsynced_bytes += (len - synced) as u64;
                // 0: dropped, 1: kept, 2: a prefix, 3: some blocks.
                let data = match choose(&mut rng, 4) {
                    0 => inode.data[..synced].to_vec(),
                    1 => inode.data.clone(),
                    2 => {
                        let keep = rng.below((len - synced) as u64 + 1) as usize;
                        inode.data[..synced + keep].to_vec()
                    }
                    _ => {
                        let mut data = inode.data.clone();
                        let mut start = synced;
                        while start < len {
                            let end = ((start / BLOCK + 1) * BLOCK).min(len);
                            if rng.below(2) == 0 {
                                data[start..end].fill(0);
                                outcome.zeroed_bytes += (end - start) as u64;
                            }
                            start = end;
                        }
                        data
                    }
                };
                outcome.kept_bytes += (data.len() - synced) as u64;
                data
            });
            files.insert(name.clone(), data.clone());
        }
        outcome.dropped_bytes = outcome.unsynced_bytes - outcome.kept_bytes;
        let mut hasher = DefaultHasher::new();
        files.hash(&mut hasher);
        outcome.fingerprint = hasher.finish();
        Image { files, outcome }
    }

    /// Cuts the power, chooses the outcome of `seed` and writes it over the real directory:
    /// [`image`](PowerLossIo::image) then [`Image::write_to`].
    pub fn restart(&self, seed: u64) -> io::Result<Outcome> {
        let image = self.image(seed);
        image.write_to(&self.dir)?;
        Ok(image.outcome)
    }

    fn name_in(&self, path: &Path) -> io::Result<OsString> {
        match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) if parent == self.dir => Ok(name.to_owned()),
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{} is outside the modelled directory {}",
                    path.display(),
                    self.dir.display()
                ),
            )),
        }
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let name = self.name_in(path)?;
        let disk = self.lock();
        disk.check_on()?;
        match disk.names.get(&name) {
            Some(&ino) => Ok(disk.inodes[ino].data.clone()),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", path.display()),
            )),
        }
    }
}

impl Io for PowerLossIo {
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        if dir != self.dir {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{} is not the modelled directory", dir.display()),
            ));
        }
        let disk = self.lock();
        disk.check_on()?;
        Ok(disk.names.keys().cloned().collect())
    }

    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        let data = self.read_file(path)?;
        if data.len() as u64 > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} bytes, more than the {limit} a snapshot may take",
                    data.len()
                ),
            ));
        }
        Ok(data)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let data = self.read_file(path)?;
        usize::try_from(offset)
            .ok()
            .and_then(|start| data.get(start..start.checked_add(len)?))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} is shorter than {offset} + {len}", path.display()),
                )
            })
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        let name = self.name_in(path)?;
        let ino = self.lock().perform(Record::Create { name })?;
        Ok(Box::new(PowerFile {
            disk: self.disk.clone(),
            ino,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (self.name_in(from)?, self.name_in(to)?);
        self.lock().perform(Record::Rename { from, to }).map(drop)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if dir != self.dir {
            self.lock().check_on()?;
            return OsIo.sync_dir(dir);
        }
        self.lock().perform(Record::SyncDir).map(drop)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let name = self.name_in(path)?;
        self.lock().perform(Record::Remove { name }).map(drop)
    }

    fn open_fs(&self, dir: &Path) -> io::Result<Box<dyn FsSync>> {
        if dir != self.dir {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{} is not the modelled directory", dir.display()),
            ));
        }
        self.lock().check_on()?;
        Ok(Box::new(PowerFs {
            disk: self.disk.clone(),
        }))
    }
}

/// The modelled directory's file system: its sync makes every file and entry durable.
struct PowerFs {
    disk: Arc<Mutex<Disk>>,
}

impl FsSync for PowerFs {
    fn sync(&mut self) -> io::Result<()> {
        self.disk.lock().recover().perform(Record::SyncFs).map(drop)
    }
}

struct PowerFile {
    disk: Arc<Mutex<Disk>>,
    ino: usize,
}

impl PowerFile {
    fn perform(&self, record: Record) -> io::Result<()> {
        let mut disk = self.disk.lock().recover();
        disk.perform(record).map(drop)
    }
}

impl IoFile for PowerFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.perform(Record::Write {
            ino: self.ino,
            data: buf.to_vec(),
        })
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.perform(Record::Sync { ino: self.ino })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.perform(Record::Sync { ino: self.ino })
    }
}

/// What a power cut left: the directory's files and how they were chosen.
#[derive(Debug, Clone)]
pub struct Image {
    files: BTreeMap<OsString, Vec<u8>>,
    /// How this image was chosen.
    pub outcome: Outcome,
}

impl Image {
    /// The files, by name.
    pub fn files(&self) -> &BTreeMap<OsString, Vec<u8>> {
        &self.files
    }

    /// Makes `dir` hold exactly this image (its other files are removed), synced.
    pub fn write_to(&self, dir: impl AsRef<Path>) -> io::Result<()> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() && !self.files.contains_key(&entry.file_name()) {
                fs::remove_file(entry.path())?;
            }
        }
        for (name, data) in &self.files {
            let mut file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.join(name))?;
            file.write_all(data)?;
            file.sync_all()?;
        }
        File::open(dir)?.sync_all()
    }
}

/// How [`PowerLossIo::image`] chose an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// The seed it was chosen by.
    pub seed: u64,
    /// Files in the image that had unsynced bytes.
    pub unsynced_files: usize,
    /// Their unsynced bytes.
    pub unsynced_bytes: u64,
    /// Of those, bytes kept (zeroed blocks included: they are in the file, as zeros).
    pub kept_bytes: u64,
    /// Of the kept bytes, bytes that read as zeros (blocks whose data never reached the disk).
    pub zeroed_bytes: u64,
    /// Unsynced bytes beyond the end of the file in the image.
    pub dropped_bytes: u64,
    /// Unsynced entry operations (creations, renames, removals).
    pub dir_ops: usize,
    /// Of those, the ones kept.
    pub dir_ops_kept: usize,
    /// A hash of the image's names and contents: equal images have equal fingerprints.
    pub fingerprint: u64,
}

/// What is not durable at a moment: from [`PowerLossIo::unsynced`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unsynced {
    /// Files with bytes written since their last sync.
    pub files: usize,
    /// Those bytes.
    pub bytes: u64,
    /// Entry operations since the directory's last sync.
    pub dir_ops: usize,
}

/// SplitMix64: a small, well-mixed generator, so that a seed names one outcome everywhere.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by rejection.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next();
            if x < zone {
                return x % n;
            }
        }
    }
}

// The journal: records of [len: u32 LE][crc32c of the payload: u32 LE][payload]; the payload
// is a tag byte and the fields, byte strings as [len: u32 LE][bytes].

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn encode(record: &Record) -> Vec<u8> {
    let mut payload = Vec::new();
    match record {
        Record::Create { name } => {
            payload.push(0);
            put_bytes(&mut payload, name.as_bytes());
        }
        Record::Write { ino, data } => {
            payload.push(1);
            payload.extend_from_slice(&(*ino as u32).to_le_bytes());
            put_bytes(&mut payload, data);
        }
        Record::Sync { ino } => {
            payload.push(2);
            payload.extend_from_slice(&(*ino as u32).to_le_bytes());
        }
        Record::Rename { from, to } => {
            payload.push(3);
            put_bytes(&mut payload, from.as_bytes());
            put_bytes(&mut payload, to.as_bytes());
        }
        Record::SyncDir => payload.push(4),
        Record::Remove { name } => {
            payload.push(5);
            put_bytes(&mut payload, name.as_bytes());
        }
        Record::SyncFs => payload.push(6),
    }
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        Some(self.take(n)?.to_vec())
    }

    fn name(&mut self) -> Option<OsString> {
        self.bytes().map(OsString::from_vec)
    }
}

fn decode(payload: &[u8]) -> Option<Record> {
    let mut r = Reader(payload);
    let record = match r.take(1)?[0] {
        0 => Record::Create { name: r.name()? },
        1 => Record::Write {
            ino: r.u32()? as usize,
            data: r.bytes()?,
        },
        2 => Record::Sync {
            ino: r.u32()? as usize,
        },
        3 => Record::Rename {
            from: r.name()?,
            to: r.name()?,
        },
        4 => Record::SyncDir,
        5 => Record::Remove { name: r.name()? },
        6 => Record::SyncFs,
        _ => return None,
    };
    r.0.is_empty().then_some(record)
}

/// Every complete, verified record, up to the first that is not (a torn tail).
fn decode_all(bytes: &[u8]) -> Vec<Record> {
    let mut r = Reader(bytes);
    let mut records = Vec::new();
    while let (Some(len), Some(crc)) = (r.u32(), r.u32()) {
        let Some(payload) = r.take(len as usize) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Some(record) = decode(payload) else {
            break;
        };
        records.push(record);
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_in(dir: &Path) -> PowerLossIo {
        PowerLossIo::new(dir).unwrap()
    }

    fn write_file(io: &PowerLossIo, name: &str, data: &[u8], sync: bool) {
        let mut file = io.create(&io.dir().join(name)).unwrap();
        file.write_all(data).unwrap();
        if sync {
            file.sync_data().unwrap();
        }
    }

    #[test]
    fn seed_zero_drops_what_was_not_synced_and_seed_one_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("old"), b"durable").unwrap();
        let io = io_in(dir.path());
        write_file(&io, "synced", b"abc", true);
        io.sync_dir(dir.path()).unwrap();
        write_file(&io, "unsynced", b"xyz", false);
        io.remove(&dir.path().join("old")).unwrap();
        assert_eq!(
            io.unsynced(),
            Unsynced {
                files: 1,
                bytes: 3,
                dir_ops: 2
            }
        );

        let worst = io.image(0);
        let names: Vec<_> = worst.files().keys().cloned().collect();
        assert_eq!(names, ["old", "synced"]);
        assert_eq!(worst.files()[&OsString::from("old")], b"durable");
        assert_eq!(worst.outcome.dir_ops_kept, 0);

        let all = io.image(1);
        let names: Vec<_> = all.files().keys().cloned().collect();
        assert_eq!(names, ["synced", "unsynced"]);
        assert_eq!(all.files()[&OsString::from("unsynced")], b"xyz");
        assert_eq!(all.outcome.dir_ops_kept, 2);
        assert_eq!(all.outcome.kept_bytes, 3);
    }

    #[test]
    fn a_file_system_sync_makes_every_file_and_entry_durable_also_after_a_replayed_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        fs::create_dir(&store_dir).unwrap();
        let journal = dir.path().join("journal");
        let io = io_in(&store_dir).journal(&journal).unwrap();
        let mut fs_sync = io.open_fs(&store_dir).unwrap();
        write_file(&io, "a", b"first", false);
        write_file(&io, "temp", b"second", false);
        io.rename(&store_dir.join("temp"), &store_dir.join("b"))
            .unwrap();
        fs_sync.sync().unwrap();
        write_file(&io, "c", b"after", false);
        // The process dies; the journal rebuilds the model, and the worst cut keeps exactly
        // what the file-system sync covered.
        drop(io);
        let replayed = PowerLossIo::replay(&store_dir, &journal).unwrap();
        let image = replayed.image(0);
        let names: Vec<_> = image.files().keys().cloned().collect();
        assert_eq!(names, vec![OsString::from("a"), OsString::from("b")]);
        assert_eq!(image.files()[&OsString::from("a")], b"first");
        assert_eq!(image.files()[&OsString::from("b")], b"second");
    }

    #[test]
    fn a_rename_either_happened_or_not_and_the_target_always_names_a_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("target"), b"old").unwrap();
        let io = io_in(dir.path());
        write_file(&io, "temp", b"new", true);
        io.rename(&dir.path().join("temp"), &dir.path().join("target"))
            .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let image = io.image(seed);
            let target = image.files()[&OsString::from("target")].clone();
            assert!(target == b"old" || target == b"new", "seed {seed}");
            seen.insert((target, image.files().contains_key(&OsString::from("temp"))));
        }
        // Old and new target, with and without the temp's creation: every combination the
        // model allows appears.
        assert!(seen.len() >= 3, "{seen:?}");
    }

    #[test]
    fn unsynced_bytes_survive_as_a_prefix_or_in_whole_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let io = io_in(dir.path());
        let mut file = io.create(&dir.path().join("log")).unwrap();
        io.sync_dir(dir.path()).unwrap();
        file.write_all(&[7; 100]).unwrap();
        file.sync_data().unwrap();
        let tail: Vec<u8> = (0..3 * BLOCK).map(|i| (i % 251) as u8 + 1).collect();
        file.write_all(&tail).unwrap();
        let (mut prefixes, mut holes) = (0, 0);
        for seed in 2..200 {
            let image = io.image(seed);
            let data = &image.files()[&OsString::from("log")];
            assert_eq!(&data[..100], &[7; 100], "synced bytes are never lost");
            let rest = &data[100..];
            assert!(rest.len() <= tail.len());
            if rest.len() < tail.len() {
                assert_eq!(rest, &tail[..rest.len()], "a shorter file is a prefix");
                prefixes += 1;
            } else if rest != tail.as_slice() {
                // Full length with some blocks zero: each block is all data or all zeros.
                let mut start = 0;
                while start < rest.len() {
                    let end = ((100 + start) / BLOCK + 1) * BLOCK - 100;
                    let end = end.min(rest.len());
                    let block = &rest[start..end];
                    assert!(block == &tail[start..end] || block.iter().all(|&b| b == 0));
                    start = end;
                }
                holes += 1;
            }
        }
        assert!(
            prefixes > 0 && holes > 0,
            "{prefixes} prefixes, {holes} holes"
        );
    }

    #[test]
    fn a_planned_cut_fails_that_operation_and_everything_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let io = io_in(dir.path()).cut_before(2);
        let mut file = io.create(&dir.path().join("a")).unwrap();
        file.write_all(b"x").unwrap();
        assert!(file.sync_all().is_err());
        assert_eq!(io.cut_at(), Some((2, Step::Sync)));
        assert!(io.is_off());
        assert!(io.list(dir.path()).is_err());
        assert!(io.create(&dir.path().join("b")).is_err());
        assert_eq!(
            io.ops(),
            3,
            "the cut operation counts; later ones are refused"
        );
    }

    #[test]
    fn the_journal_replays_to_the_same_model_and_ignores_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        fs::create_dir(&store_dir).unwrap();
        let journal = dir.path().join("journal");
        let io = io_in(&store_dir).journal(&journal).unwrap();
        write_file(&io, "a", b"alpha", true);
        io.sync_dir(&store_dir).unwrap();
        write_file(&io, "b", b"beta", false);
        io.rename(&store_dir.join("b"), &store_dir.join("c"))
            .unwrap();
        let replayed = PowerLossIo::replay(&store_dir, &journal).unwrap();
        assert_eq!(replayed.ops(), io.ops());
        for seed in 0..16 {
            assert_eq!(replayed.image(seed).files(), io.image(seed).files());
        }
        // A record cut off in the middle is an operation that never happened.
        let mut bytes = fs::read(&journal).unwrap();
        bytes.truncate(bytes.len() - 3);
        fs::write(&journal, &bytes).unwrap();
        let torn = PowerLossIo::replay(&store_dir, &journal).unwrap();
        assert_eq!(torn.ops(), io.ops() - 1);
        assert!(torn.image(1).files().contains_key(&OsString::from("b")));
    }

    #[test]
    fn paths_outside_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let io = io_in(dir.path());
        let outside = dir.path().parent().unwrap().join("elsewhere");
        let err = io.create(&outside).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert_eq!(io.ops(), 0);
    }

    #[test]
    fn write_to_makes_the_directory_hold_exactly_the_image() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("gone"), b"1").unwrap();
        let io = io_in(dir.path());
        io.remove(&dir.path().join("gone")).unwrap();
        io.sync_dir(dir.path()).unwrap();
        write_file(&io, "kept", b"2", true);
        io.sync_dir(dir.path()).unwrap();
        let outcome = io.restart(0).unwrap();
        assert_eq!(outcome.dir_ops, 0);
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["kept"]);
        assert_eq!(fs::read(dir.path().join("kept")).unwrap(), b"2");
    }
}
