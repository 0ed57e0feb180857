//! Fault injection for the file store (feature `fault-injection`; never in the default build),
//! and [`Pausable`], a store wrapper that freezes writes as a paused process would.
//!
//! [`FaultyIo`] does real I/O through [`OsIo`] and counts every operation by [`Step`]. Given a
//! plan (a step, which occurrence of it, and a [`Fault`]), it fails or crashes exactly there.
//! A test first runs a scenario with [`FaultyIo::counting`] to learn how many operations of
//! each step it does, then runs it once per (step, occurrence, fault), reopens the store with
//! plain [`OsIo`] and checks what survived.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::io::{FsSync, Io, IoFile, OsIo};

pub use crate::pausable::Pausable;
pub use crate::power::{Image, Outcome, PowerLossIo, Unsynced, BLOCK};

/// A kind of disk operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Creating a file (a snapshot's temp file, a log segment).
    Create,
    /// One write of bytes into a file.
    Write,
    /// An fsync or fdatasync of a file.
    Sync,
    /// A rename.
    Rename,
    /// An fsync of the directory.
    SyncDir,
    /// Removing a file.
    Remove,
    /// A sync of the whole file system (compaction's, once per compaction).
    SyncFs,
}

impl Step {
    /// Every step, for tests that go through all of them.
    pub const ALL: [Step; 7] = [
        Step::Create,
        Step::Write,
        Step::Sync,
        Step::Rename,
        Step::SyncDir,
        Step::Remove,
        Step::SyncFs,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// What happens at the chosen operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The operation fails with an I/O error (EIO); later ones succeed.
    FailOnce,
    /// The operation and every later one of the same step fail.
    FailForever,
    /// The process dies before the operation: it and everything after it fail, and nothing
    /// more reaches the disk.
    Crash,
    /// A write of which only the first half reaches the disk, then a crash. Other steps:
    /// as [`Fault::Crash`].
    Torn,
    /// A write whose last block (up to 512 bytes) reaches the disk as garbage, then a crash:
    /// what a power loss leaves in blocks that were never synced. Other steps: as
    /// [`Fault::Crash`].
    Garbage,
}

impl Fault {
    /// Every fault, for tests that go through all of them.
    pub const ALL: [Fault; 5] = [
        Fault::FailOnce,
        Fault::FailForever,
        Fault::Crash,
        Fault::Torn,
        Fault::Garbage,
    ];
}

#[derive(Debug)]
struct State {
    plan: Option<(Step, usize, Fault)>,
    counts: [AtomicUsize; Step::ALL.len()],
    failing_forever: AtomicBool,
    crashed: AtomicBool,
    injected: AtomicBool,
}

enum Verdict {
    Proceed,
    Fail,
    Crash,
    Torn,
    Garbage,
}

impl State {
    fn decide(&self, step: Step) -> Verdict {
        if self.crashed.load(Ordering::SeqCst) {
            return Verdict::Fail;
        }
        let n = self.counts[step.index()].fetch_add(1, Ordering::SeqCst);
        let Some((planned, nth, fault)) = self.plan else {
            return Verdict::Proceed;
        };
        if planned != step {
            return Verdict::Proceed;
        }
        if n == nth {
            self.injected.store(true, Ordering::SeqCst);
            return match fault {
                Fault::FailOnce => Verdict::Fail,
                Fault::FailForever => {
                    self.failing_forever.store(true, Ordering::SeqCst);
                    Verdict::Fail
                }
                Fault::Crash => self.crash(),
                Fault::Torn if step == Step::Write => Verdict::Torn,
                Fault::Garbage if step == Step::Write => Verdict::Garbage,
                Fault::Torn | Fault::Garbage => self.crash(),
            };
        }
        if self.failing_forever.load(Ordering::SeqCst) {
            return Verdict::Fail;
        }
        Verdict::Proceed
    }

    fn crash(&self) -> Verdict {
        self.crashed.store(true, Ordering::SeqCst);
        Verdict::Crash
    }
}

fn injected_error(step: Step) -> io::Error {
    io::Error::other(format!("injected fault at {step:?}"))
}

/// Real I/O with one planned fault. Cheap to clone; clones share the plan and the counts.
#[derive(Debug, Clone)]
pub struct FaultyIo {
    state: Arc<State>,
}

impl FaultyIo {
    /// No fault: counts operations only.
    pub fn counting() -> Self {
        FaultyIo::plan(None)
    }

    /// `fault` at occurrence `nth` (from 0) of `step`.
    pub fn new(step: Step, nth: usize, fault: Fault) -> Self {
        FaultyIo::plan(Some((step, nth, fault)))
    }

    fn plan(plan: Option<(Step, usize, Fault)>) -> Self {
        FaultyIo {
            state: Arc::new(State {
                plan,
                counts: Default::default(),
                failing_forever: AtomicBool::new(false),
                crashed: AtomicBool::new(false),
                injected: AtomicBool::new(false),
            }),
        }
    }

    /// How many operations of `step` were attempted.
    pub fn count(&self, step: Step) -> usize {
        self.state.counts[step.index()].load(Ordering::SeqCst)
    }

    /// Whether the planned fault happened.
    pub fn injected(&self) -> bool {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// Whether the simulated process has died.
    pub fn crashed(&self) -> bool {
        self.state.crashed.load(Ordering::SeqCst)
    }

    fn gate(&self, step: Step) -> io::Result<()> {
        match self.state.decide(step) {
            Verdict::Proceed => Ok(()),
            _ => Err(injected_error(step)),
        }
    }
}

impl Io for FaultyIo {
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        if self.crashed() {
            return Err(injected_error(Step::Create));
        }
        OsIo.list(dir)
    }

    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        if self.crashed() {
            return Err(injected_error(Step::Create));
        }
        OsIo.read(path, limit)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if self.crashed() {
            return Err(injected_error(Step::Create));
        }
        OsIo.read_at(path, offset, len)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn IoFile>> {
        self.gate(Step::Create)?;
        let inner = OsIo.create(path)?;
        Ok(Box::new(FaultyFile {
            inner,
            state: self.state.clone(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.gate(Step::Rename)?;
        OsIo.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.gate(Step::SyncDir)?;
        OsIo.sync_dir(dir)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.gate(Step::Remove)?;
        OsIo.remove(path)
    }

    fn open_fs(&self, dir: &Path) -> io::Result<Box<dyn FsSync>> {
        if self.crashed() {
            return Err(injected_error(Step::SyncFs));
        }
        Ok(Box::new(FaultyFs {
            inner: OsIo.open_fs(dir)?,
            io: self.clone(),
        }))
    }
}

struct FaultyFs {
    inner: Box<dyn FsSync>,
    io: FaultyIo,
}

impl FsSync for FaultyFs {
    fn sync(&mut self) -> io::Result<()> {
        self.io.gate(Step::SyncFs)?;
        self.inner.sync()
    }
}

struct FaultyFile {
    inner: Box<dyn IoFile>,
    state: Arc<State>,
}

impl IoFile for FaultyFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self.state.decide(Step::Write) {
            Verdict::Proceed => self.inner.write_all(buf),
            Verdict::Fail | Verdict::Crash => Err(injected_error(Step::Write)),
            Verdict::Torn => {
                self.state.crashed.store(true, Ordering::SeqCst);
                self.inner.write_all(&buf[..buf.len() / 2])?;
                Err(injected_error(Step::Write))
            }
            Verdict::Garbage => {
                self.state.crashed.store(true, Ordering::SeqCst);
                let mut garbled = buf.to_vec();
                let from = garbled.len().saturating_sub(512);
                let mut x = 0x9e37_79b9_u32 ^ buf.len() as u32;
                for b in &mut garbled[from..] {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    *b = x as u8;
                }
                self.inner.write_all(&garbled)?;
                Err(injected_error(Step::Write))
            }
        }
    }

    fn sync_all(&mut self) -> io::Result<()> {
        match self.state.decide(Step::Sync) {
            Verdict::Proceed => self.inner.sync_all(),
            _ => Err(injected_error(Step::Sync)),
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        match self.state.decide(Step::Sync) {
            Verdict::Proceed => self.inner.sync_data(),
            _ => Err(injected_error(Step::Sync)),
        }
    }
}
