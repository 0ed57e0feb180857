//! The seam through which the file store touches the disk.
//!
//! [`FileStore`](crate::FileStore) does every read, write, sync, rename and removal through
//! an [`Io`]. [`OsIo`] is the real thing; with the `fault-injection` feature,
//! [`FaultyIo`][faulty] wraps it to fail or crash at any step, so tests can show what the
//! store does when the disk misbehaves.
//!
#![cfg_attr(feature = "fault-injection", doc = "[faulty]: crate::fault::FaultyIo")]
#![cfg_attr(not(feature = "fault-injection"), doc = "[faulty]: crate::io")]

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Disk operations, as the file store needs them.
pub trait Io: Send + Sync + 'static {
    /// The names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// The whole content of `path`, refused with `InvalidData` if it is longer than `limit`
    /// (before reading it).
    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>>;
    /// `len` bytes of `path` at `offset`.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Creates `path`, which must not exist, readable and writable by the owner only (0600).
    fn create(&self, path: &Path) -> io::Result<Box<dyn IoFile>>;
    /// Renames `from` to `to`, replacing `to` atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes the file `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// A handle on the file system that holds `dir`, whose [`FsSync::sync`] makes durable
    /// everything written to it (file data, sizes and directory entries) up to that call.
    /// Compaction opens one before it writes and syncs it once at the end, instead of an fsync
    /// per file.
    fn open_fs(&self, dir: &Path) -> io::Result<Box<dyn FsSync>>;
}

/// A whole file system's sync, from [`Io::open_fs`].
pub trait FsSync: Send {
    /// Makes everything written to the file system durable (`syncfs`), and fails if writing
    /// any of it back failed since the handle was opened.
    fn sync(&mut self) -> io::Result<()>;
}

/// An open file being written.
pub trait IoFile: Send {
    /// Appends all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// fsync: data and metadata.
    fn sync_all(&mut self) -> io::Result<()>;
    /// fdatasync: data and the metadata needed to read it back.
    fn sync_data(&mut self) -> io::Result<()>;
}

/// The operating system's file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsIo;

impl Io for OsIo {
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }

    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{len} bytes, more than the {limit} a snapshot may take"),
            ));
        }
        let mut buf = Vec::with_capacity(len as usize);
        // `take` guards against a file that grew after the length was read.
        file.take(limit + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than the {limit} bytes a snapshot may take"),
            ));
        }
        Ok(buf)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0; len];
        file.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn open_fs(&self, dir: &Path) -> io::Result<Box<dyn FsSync>> {
        Ok(Box::new(OsFs(File::open(dir)?)))
    }
}

/// `syncfs` on a descriptor opened before the writes it covers: Linux (since 5.8) reports
/// through it any write-back error on the file system since the descriptor was opened.
struct OsFs(File);

impl FsSync for OsFs {
    fn sync(&mut self) -> io::Result<()> {
        rustix::fs::syncfs(&self.0).map_err(io::Error::from)
    }
}

struct OsFile(File);

impl IoFile for OsFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}
