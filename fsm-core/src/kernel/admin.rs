//! The admin endpoint (feature `admin`): a running kernel answers an operator's questions on
//! a Unix domain socket (or, if asked, a loopback TCP port), one JSON object per line.
//!
//! Off by default: nothing listens until [`KernelHandle::serve_admin`](super::KernelHandle::serve_admin)
//! is called, and dropping the returned [`AdminServer`] stops it and removes its socket.
//!
//! # Protocol
//! Each request is one line holding a JSON object with an `op`; each answer is one line,
//! `{"ok": ...}` or `{"error": {"kind": ..., "message": ...}}`. A connection takes any number
//! of requests in turn. Every message is a type of [`proto`], which the endpoint writes and
//! the `fsm` tool reads: the protocol is versioned ([`proto::PROTOCOL`], told by `hello`).
//!
//! | request | answer |
//! | --- | --- |
//! | `{"op":"hello"}` | the endpoint's protocol version and machine type |
//! | `{"op":"metrics"}` | counts, queue depths and latency percentiles per shard and in total, workers, uptime |
//! | `{"op":"table"}` | the machine type's states (terminal, state timeout) and transitions, as checked at compile time |
//! | `{"op":"trace", "machine"?, "state"?, "event"?, "outcome"?, "since_ms"?, "limit"?}` | the newest matching decisions, oldest first |
//! | `{"op":"trace_window"}` | what the trace ring still holds: `capacity` (entries per shard), `overwritten` (entries dropped since start) and `complete_since_ms` (from when every decision is still there; `null` while nothing was dropped) |
//! | `{"op":"watch", "machine"?, "state"?, "event"?, "outcome"?, "max_per_sec"?}` | a stream: `{"entry": ...}` per matching decision as it happens, `{"dropped": n, ...}` once a second when the rate limit or the ring dropped some |
//! | `{"op":"show", "machine": id}` | the machine's state name, its value printed through [`Redact`] (sensitive fields never leave the process), its durable sequence, the effects it owes, its armed timers (kind, deadline, duration, event) and the idempotency keys it remembers (key, sequence, transition); `not_found` when nothing is stored for it |
//! | `{"op":"states"}` | stored machines per state: every declared state in declaration order with its count, then other state names the store holds; `unreadable` and `total` |
//! | `{"op":"machines", "state"?, "after"?, "limit"?}` | one page of stored machine ids in id order (of one state if asked), and `next`, the `after` of the next page (`null` on the last); `limit` defaults to 100, at most 10,000 |
//! | `{"op":"quarantined"}` | quarantined machines and why |
//! | `{"op":"escalations"}` | effect workers that exceeded their restart intensity |
//! | `{"op":"restart_worker", "worker": n}` | `{"restarted": bool}` |
//! | `{"op":"release", "machine": id}` | `{"released": bool}` |
//!
//! Error kinds: `bad_request` (not JSON, an unknown op or field, a bad value), `too_long`
//! (a line over [`AdminConfig::max_line`]; the connection is closed), `busy` (more clients than
//! [`AdminConfig::max_clients`]; closed), `timeout` (no complete request within
//! [`AdminConfig::timeout`]; closed), `not_found` (no such machine), `closed` (the kernel
//! stopped), `unavailable` (the machine could not be loaded).
//!
//! # Bounds
//! A line is at most `max_line` bytes, a client gets `timeout` to send each request and to
//! take each answer (a client that stops reading is dropped, never waited for), at most
//! `max_clients` are served at once, a trace answer holds at most `max_entries` entries, and a
//! watch sends at most `max_per_sec` entries a second. The endpoint only reads what the
//! kernel already keeps (metrics, the trace ring) or asks a shard between batches, as
//! [`KernelHandle::state`](super::KernelHandle::state) does; it holds no lock while it writes to a client,
//! so a slow or dead client never blocks a shard.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

#[path = "admin_proto.rs"]
pub mod proto;

use super::stats::ShardMetrics;
use super::trace::Trace;
use super::{Durable, Inner, KernelHandle, TraceEntry, TraceFilter, TraceOutcome};
use crate::queue::LatencySummary;
use crate::store::{ListQuery, MachineId, StateFilter, MAX_PAGE};
use crate::Redact;
use proto::{FailureKind, Reply};

/// Where and how the admin endpoint listens; from [`AdminConfig::unix`] or
/// [`AdminConfig::tcp`].
#[derive(Clone, Debug)]
pub struct AdminConfig {
    address: Address,
    allow_remote: bool,
    max_clients: usize,
    max_line: usize,
    timeout: Duration,
    max_entries: usize,
    max_per_sec: u32,
}

#[derive(Clone, Debug)]
enum Address {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl AdminConfig {
    /// A Unix domain socket at `path`, created with mode 0600 (only this user can connect).
    /// Refused if `path` exists and is not a socket, or is a socket another process serves; a
    /// stale socket nobody listens on (a crashed process's) is replaced.
    pub fn unix(path: impl AsRef<Path>) -> Self {
        AdminConfig::at(Address::Unix(path.as_ref().to_path_buf()))
    }

    /// A TCP port. Only a loopback address is accepted unless
    /// [`allow_remote`](AdminConfig::allow_remote) says otherwise: the endpoint has no
    /// authentication, and anyone who reaches it can release machines and restart workers.
    pub fn tcp(address: SocketAddr) -> Self {
        AdminConfig::at(Address::Tcp(address))
    }

    fn at(address: Address) -> Self {
        AdminConfig {
            address,
            allow_remote: false,
            max_clients: 8,
            max_line: 64 << 10,
            timeout: Duration::from_secs(10),
            max_entries: 10_000,
            max_per_sec: 1_000,
        }
    }

    /// Accepts a TCP address that is not loopback (the caller has put the port behind
    /// something that authenticates).
    #[must_use]
    pub fn allow_remote(mut self, allow: bool) -> Self {
        self.allow_remote = allow;
        self
    }

    /// Clients served at once (default 8); one more is answered `busy` and closed.
    #[must_use]
    pub fn max_clients(mut self, n: usize) -> Self {
        self.max_clients = n.max(1);
        self
    }

    /// The longest request line, in bytes (default 64 KiB).
    #[must_use]
    pub fn max_line(mut self, bytes: usize) -> Self {
        self.max_line = bytes.max(64);
        self
    }

    /// How long a client may take to send a request, or to take an answer (default 10 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The most entries one trace answer holds (default 10,000).
    #[must_use]
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n.max(1);
        self
    }

    /// The most entries a watch sends per second, whatever the client asks (default 1,000).
    #[must_use]
    pub fn max_per_sec(mut self, n: u32) -> Self {
        self.max_per_sec = n.max(1);
        self
    }
}

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The socket path exists and is not a socket: nothing was touched.
    #[error("{0} exists and is not a socket; choose another path or remove it")]
    PathExists(PathBuf),
    /// Another process answers on the socket.
    #[error("{0} is served by another process; stop it or choose another path")]
    InUse(PathBuf),
    /// A TCP address that is not loopback, without `allow_remote(true)`.
    #[error("{0} is not a loopback address; the admin endpoint has no authentication (use AdminConfig::allow_remote to insist)")]
    Remote(SocketAddr),
    /// Binding or preparing the socket failed.
    #[error("admin endpoint at {address}: {source}")]
    Io {
        /// The address.
        address: String,
        /// What failed.
        source: io::Error,
    },
}

/// A running admin endpoint; dropping it stops it (and removes its socket file).
#[derive(Debug)]
pub struct AdminServer {
    shared: Arc<Shared>,
    listener: Option<JoinHandle<()>>,
    address: String,
    socket: Option<PathBuf>,
}

impl AdminServer {
    /// Where it listens: the socket path, or the TCP address (with the port it got).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Requests answered so far (errors included).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        match &self.socket {
            Some(path) => drop(UnixStream::connect(path)),
            None => {
                if let Ok(addr) = self.address.parse::<SocketAddr>() {
                    drop(TcpStream::connect_timeout(&addr, Duration::from_secs(1)));
                }
            }
        }
        if let Some(listener) = self.listener.take() {
            let _ = listener.join();
        }
        if let Some(path) = &self.socket {
            let _ = fs::remove_file(path);
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    active: AtomicUsize,
    requests: AtomicUsize,
}

/// What the endpoint needs of a kernel, whatever its machine type.
trait Target: Send + Sync {
    fn machine(&self) -> &'static str;
    fn table(&self) -> &'static crate::Table;
    fn metrics(&self) -> proto::Metrics;
    fn trace(&self) -> &Trace;
    fn show(&self, id: &MachineId) -> Result<proto::Show, proto::Failure>;
    fn states(&self) -> Result<proto::States, proto::Failure>;
    fn machines(&self, query: &ListQuery<'_>) -> Result<proto::Machines, proto::Failure>;
    fn quarantined(&self) -> Vec<proto::QuarantinedMachine>;
    fn escalations(&self) -> Vec<proto::Escalated>;
    fn restart_worker(&self, worker: usize) -> bool;
    fn release(&self, id: &MachineId) -> bool;
}

/// A kernel handle that owns no thread: it reads and asks the kernel's shared state, and its
/// drop stops nothing.
struct View<M: Durable>(KernelHandle<M>);

impl<M: Durable> View<M> {
    fn of(kernel: &KernelHandle<M>) -> Self {
        View(kernel.clone())
    }

    fn inner(&self) -> &Inner<M> {
        &self.0.inner
    }
}

impl<M: Durable + Redact + Clone> Target for View<M> {
    fn machine(&self) -> &'static str {
        M::TABLE.machine()
    }

    fn table(&self) -> &'static crate::Table {
        M::TABLE
    }

    fn metrics(&self) -> proto::Metrics {
        let m = self.0.metrics();
        proto::Metrics {
            machine: m.machine.to_owned(),
            uptime_ms: millis(m.uptime),
            store_reopens: m.store_reopens,
            total: shard_proto(&m.total),
            shards: m.shards.iter().map(shard_proto).collect(),
            workers: m
                .workers
                .iter()
                .enumerate()
                .map(|(i, w)| proto::Worker {
                    worker: i,
                    effects: w.effects,
                    errors: w.errors,
                    panics: w.panics,
                    restarts: w.restarts,
                    fed_back: w.fed_back,
                    abandoned: w.abandoned,
                    retries: w.retries,
                    given_up: w.given_up,
                    parked: w.parked,
                    escalated: w.escalated,
                })
                .collect(),
        }
    }

    fn trace(&self) -> &Trace {
        &self.inner().trace
    }

    fn states(&self) -> Result<proto::States, proto::Failure> {
        let mut counts = self.0.count_states().map_err(unavailable)?;
        let total = counts.total();
        let mut states: Vec<proto::StateCount> = M::TABLE
            .states()
            .iter()
            .map(|s| proto::StateCount {
                state: s.name().to_owned(),
                machines: counts.states.remove(s.name()).unwrap_or(0),
                declared: true,
            })
            .collect();
        states.extend(
            counts
                .states
                .into_iter()
                .map(|(state, machines)| proto::StateCount {
                    state,
                    machines,
                    declared: false,
                }),
        );
        Ok(proto::States {
            states,
            unreadable: counts.unreadable + counts.unrecorded,
            total,
        })
    }

    fn machines(&self, query: &ListQuery<'_>) -> Result<proto::Machines, proto::Failure> {
        let page = self.0.machines(query).map_err(unavailable)?;
        Ok(proto::Machines {
            next: page.next().map(|id| id.as_str().to_owned()),
            ids: page.ids.iter().map(|id| id.as_str().to_owned()).collect(),
        })
    }

    fn show(&self, id: &MachineId) -> Result<proto::Show, proto::Failure> {
        match self.0.state(id) {
            Ok((_, None)) => Err(failure(
                FailureKind::NotFound,
                format!("no machine `{id}`: nothing is stored for it (a machine exists once a command it accepted is stored)"),
            )),
            Ok((machine, seq)) => {
                let mut value = String::new();
                let _ = write!(value, "{:?}", crate::Redacted(&machine));
                let owed = self.0.owed(id).unwrap_or_default();
                // Timers and keys in one visit to the shard.
                let (timers, keys) = self.0.details(id).unwrap_or_default();
                Ok(proto::Show {
                    machine: id.as_str().to_owned(),
                    state: machine.state_name().to_owned(),
                    superstates: M::TABLE
                        .ancestors(machine.state())
                        .filter_map(|a| M::TABLE.superstates().get(a))
                        .map(|s| s.name().to_owned())
                        .collect(),
                    value,
                    seq,
                    owed: owed.iter().map(owed_proto).collect(),
                    timers: timers.iter().map(timer_proto).collect(),
                    keys: keys.iter().map(key_proto).collect(),
                })
            }
            Err(super::CommandError::Closed) => {
                Err(failure(FailureKind::Closed, "the kernel stopped".into()))
            }
            Err(e) => Err(failure(FailureKind::Unavailable, e.to_string())),
        }
    }

    fn quarantined(&self) -> Vec<proto::QuarantinedMachine> {
        self.0
            .quarantined()
            .iter()
            .map(|q| proto::QuarantinedMachine {
                machine: q.id.as_str().to_owned(),
                cause: q.cause.to_string(),
            })
            .collect()
    }

    fn escalations(&self) -> Vec<proto::Escalated> {
        self.0
            .escalations()
            .iter()
            .map(|e| proto::Escalated {
                worker: e.worker,
                at_ms: millis(e.at),
                max_restarts: e.intensity.max_restarts,
                within_ms: millis(e.intensity.within),
                failure: e.failure.to_string(),
            })
            .collect()
    }

    fn restart_worker(&self, worker: usize) -> bool {
        self.0.restart_worker(worker)
    }

    fn release(&self, id: &MachineId) -> bool {
        self.0.release(id)
    }
}

impl<M: Durable + Redact + Clone> KernelHandle<M> {
    /// Starts the admin endpoint (see [`admin`](self::super::admin)): a thread that accepts
    /// clients on `config`'s socket, and a thread per client. Stops when the returned server
    /// is dropped.
    ///
    /// ```no_run
    /// # fn run(kernel: &fsm_core::kernel::Kernel<impl fsm_core::kernel::Durable + fsm_core::Redact + Clone>) {
    /// use fsm_core::kernel::admin::AdminConfig;
    /// let admin = kernel.serve_admin(AdminConfig::unix("/run/orders/admin.sock")).unwrap();
    /// // `fsm top /run/orders/admin.sock` now shows the kernel live.
    /// # drop(admin);
    /// # }
    /// ```
    pub fn serve_admin(&self, config: AdminConfig) -> Result<AdminServer, AdminError> {
        let target: Arc<dyn Target> = Arc::new(View::of(self));
        let shared = Arc::new(Shared::default());
        let (listener, address, socket) = bind(&config)?;
        let handle = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("fsm-admin".into())
                .spawn(move || accept_loop(listener, target, config, shared))
                .map_err(|source| AdminError::Io {
                    address: address.clone(),
                    source,
                })?
        };
        Ok(AdminServer {
            shared,
            listener: Some(handle),
            address,
            socket,
        })
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
        }
    }

    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

fn bind(config: &AdminConfig) -> Result<(Listener, String, Option<PathBuf>), AdminError> {
    match &config.address {
        Address::Tcp(addr) => {
            if !addr.ip().is_loopback() && !config.allow_remote {
                return Err(AdminError::Remote(*addr));
            }
            let listener = TcpListener::bind(addr).map_err(|source| AdminError::Io {
                address: addr.to_string(),
                source,
            })?;
            let local = listener
                .local_addr()
                .map_err(|source| AdminError::Io {
                    address: addr.to_string(),
                    source,
                })?
                .to_string();
            Ok((Listener::Tcp(listener), local, None))
        }
        Address::Unix(path) => {
            let io_error = |source| AdminError::Io {
                address: path.display().to_string(),
                source,
            };
            match fs::symlink_metadata(path) {
                Ok(meta) if !meta.file_type().is_socket() => {
                    return Err(AdminError::PathExists(path.clone()))
                }
                Ok(_) => {
                    if UnixStream::connect(path).is_ok() {
                        return Err(AdminError::InUse(path.clone()));
                    }
                    // A stale socket: its server is gone.
                    fs::remove_file(path).map_err(io_error)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(e)),
            }
            // Bind inside a fresh directory only this user can enter, make the socket 0600,
            // then move it into place: nobody can connect in between with looser rights.
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let private = parent.join(format!(
                ".fsm-admin-{}-{}",
                std::process::id(),
                NEXT_PRIVATE.fetch_add(1, Ordering::Relaxed)
            ));
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&private)
                .map_err(io_error)?;
            let staged = private.join("admin.sock");
            let result = UnixListener::bind(&staged)
                .and_then(|listener| {
                    fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))?;
                    fs::rename(&staged, path)?;
                    Ok(listener)
                })
                .map_err(io_error);
            let _ = fs::remove_file(&staged);
            let _ = fs::remove_dir(&private);
            let listener = result?;
            Ok((
                Listener::Unix(listener),
                path.display().to_string(),
                Some(path.clone()),
            ))
        }
    }
}

static NEXT_PRIVATE: AtomicUsize = AtomicUsize::new(0);

fn accept_loop(
    listener: Listener,
    target: Arc<dyn Target>,
    config: AdminConfig,
    shared: Arc<Shared>,
) {
    let config = Arc::new(config);
    loop {
        let accepted = match &listener {
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut stream) = accepted else {
            // A failed accept (out of descriptors): back off instead of spinning.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if stream.set_timeouts(config.timeout).is_err() {
            continue;
        }
        if shared.active.fetch_add(1, Ordering::SeqCst) >= config.max_clients {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            let _ = send(
                &mut stream,
                &error(
                    FailureKind::Busy,
                    &format!(
                        "{} clients are connected, the most this endpoint serves",
                        config.max_clients
                    ),
                ),
            );
            continue;
        }
        let (target, config, client_shared) = (target.clone(), config.clone(), shared.clone());
        let spawned = std::thread::Builder::new()
            .name("fsm-admin-client".into())
            .spawn(move || {
                serve_client(stream, &*target, &config, &client_shared);
                client_shared.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn send(stream: &mut Stream, value: &Value) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.flush()
}

/// An answer line: `{"ok": ..}`.
fn ok<T: Serialize>(answer: T) -> Value {
    serde_json::to_value(Reply::Ok(answer)).unwrap_or(Value::Null)
}

fn failure(kind: FailureKind, message: String) -> proto::Failure {
    proto::Failure { kind, message }
}

/// A store that could not answer a query.
fn unavailable(e: crate::store::StoreError) -> proto::Failure {
    failure(
        FailureKind::Unavailable,
        format!("the store did not answer: {e}"),
    )
}

/// Ids in a `machines` page when the request names no limit.
const DEFAULT_PAGE: usize = 100;

/// An answer line: `{"error": {"kind": .., "message": ..}}`.
fn error(kind: FailureKind, message: &str) -> Value {
    serde_json::to_value(Reply::<()>::Error(failure(kind, message.to_owned())))
        .unwrap_or(Value::Null)
}

fn serve_client(stream: Stream, target: &dyn Target, config: &AdminConfig, shared: &Shared) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        line.clear();
        let read = (&mut reader)
            .take(config.max_line as u64 + 1)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let _ = send(
                    &mut writer,
                    &error(
                        FailureKind::Timeout,
                        &format!("no complete request within {:?}", config.timeout),
                    ),
                );
                return;
            }
            Err(_) => return,
        }
        // No newline: a line over the limit, or the client closed in the middle of one (then
        // what came is answered, and the next read ends the connection).
        if line.last() != Some(&b'\n') && line.len() > config.max_line {
            shared.requests.fetch_add(1, Ordering::SeqCst);
            let _ = send(
                &mut writer,
                &error(
                    FailureKind::TooLong,
                    &format!(
                        "a request line is at most {} bytes; closing",
                        config.max_line
                    ),
                ),
            );
            return;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let answer = match serde_json::from_slice::<proto::Request>(text) {
            Err(e) => error(FailureKind::BadRequest, &format!("{e}")),
            Ok(proto::Request::Watch {
                machine,
                state,
                event,
                outcome,
                since_ms,
                max_per_sec,
            }) => {
                let spec = FilterSpec {
                    machine,
                    state,
                    event,
                    outcome,
                    since_ms,
                };
                match spec.build() {
                    Ok(filter) => {
                        let rate = max_per_sec.unwrap_or(config.max_per_sec);
                        watch(
                            &mut writer,
                            target,
                            &filter,
                            rate.clamp(1, config.max_per_sec),
                            shared,
                        );
                    }
                    Err(message) => {
                        let _ = send(&mut writer, &error(FailureKind::BadRequest, &message));
                    }
                }
                // A watch ends the connection (the client stopped reading, or we stop).
                return;
            }
            Ok(request) => answer(request, target, config),
        };
        if send(&mut writer, &answer).is_err() {
            return;
        }
    }
}

/// Filter fields shared by `trace` and `watch`.
struct FilterSpec {
    machine: Option<String>,
    state: Option<String>,
    event: Option<String>,
    outcome: Option<String>,
    since_ms: Option<f64>,
}

impl FilterSpec {
    fn build(self) -> Result<TraceFilter, String> {
        let mut filter = TraceFilter::new();
        if let Some(m) = self.machine {
            let id = MachineId::new(m).map_err(|e| format!("machine: {e}"))?;
            filter = filter.machine(&id);
        }
        if let Some(s) = &self.state {
            filter = filter.state(s);
        }
        if let Some(e) = &self.event {
            filter = filter.event(e);
        }
        if let Some(o) = &self.outcome {
            filter = filter.outcome(outcome_named(o).ok_or_else(|| {
                format!("outcome: `{o}` is none of {}", outcome_names().join(", "))
            })?);
        }
        if let Some(ms) = self.since_ms {
            if !(ms.is_finite() && ms >= 0.0) {
                return Err(format!(
                    "since_ms: {ms} is not a time since the kernel started"
                ));
            }
            filter = filter.since(Duration::from_secs_f64(ms / 1000.0));
        }
        Ok(filter)
    }
}

fn outcome_named(name: &str) -> Option<TraceOutcome> {
    TraceOutcome::named(name)
}

fn outcome_names() -> Vec<&'static str> {
    TraceOutcome::ALL.iter().map(|o| o.name()).collect()
}

fn machine_id(text: &str) -> Result<MachineId, Value> {
    MachineId::new(text).map_err(|e| error(FailureKind::BadRequest, &format!("machine: {e}")))
}

fn answer(request: proto::Request, target: &dyn Target, config: &AdminConfig) -> Value {
    use proto::Request;
    match request {
        Request::Hello => ok(proto::Hello {
            protocol: proto::PROTOCOL,
            machine: target.machine().to_owned(),
        }),
        Request::Metrics => ok(target.metrics()),
        Request::Table => ok(proto::Table::of(target.table())),
        Request::Trace {
            machine,
            state,
            event,
            outcome,
            since_ms,
            limit,
        } => {
            let spec = FilterSpec {
                machine,
                state,
                event,
                outcome,
                since_ms,
            };
            match spec.build() {
                Ok(filter) => {
                    let limit = limit.unwrap_or(config.max_entries).min(config.max_entries);
                    let entries = target.trace().read(&filter.last(limit));
                    ok(entries.iter().map(entry_proto).collect::<Vec<_>>())
                }
                Err(message) => error(FailureKind::BadRequest, &message),
            }
        }
        Request::TraceWindow => {
            let trace = target.trace();
            let (overwritten, since) = trace.window();
            ok(proto::TraceWindow {
                capacity: trace.capacity(),
                overwritten,
                complete_since_ms: since.map(millis),
            })
        }
        Request::Watch { .. } => unreachable!("handled by the caller"),
        Request::Show { machine } => match machine_id(&machine) {
            Ok(id) => match target.show(&id) {
                Ok(v) => ok(v),
                Err(f) => error(f.kind, &f.message),
            },
            Err(e) => e,
        },
        Request::States => match target.states() {
            Ok(v) => ok(v),
            Err(f) => error(f.kind, &f.message),
        },
        Request::Machines {
            state,
            after,
            limit,
        } => {
            let after = match after.as_deref().map(MachineId::new).transpose() {
                Ok(after) => after,
                Err(e) => return error(FailureKind::BadRequest, &format!("after: {e}")),
            };
            let query = ListQuery {
                state: state.as_deref().map_or(StateFilter::Any, StateFilter::In),
                after: after.as_ref(),
                limit: limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE),
            };
            match target.machines(&query) {
                Ok(v) => ok(v),
                Err(f) => error(f.kind, &f.message),
            }
        }
        Request::Quarantined => ok(target.quarantined()),
        Request::Escalations => ok(target.escalations()),
        Request::RestartWorker { worker } => ok(proto::Restarted {
            restarted: target.restart_worker(worker),
        }),
        Request::Release { machine } => match machine_id(&machine) {
            Ok(id) => ok(proto::Released {
                released: target.release(&id),
            }),
            Err(e) => e,
        },
    }
}

/// Streams matching entries as they are appended, at most `rate` a second, until the client
/// stops reading or the endpoint stops. Polls the ring: the shards never wait for a watcher.
fn watch(
    writer: &mut Stream,
    target: &dyn Target,
    filter: &TraceFilter,
    rate: u32,
    shared: &Shared,
) {
    const POLL: Duration = Duration::from_millis(50);
    let trace = target.trace();
    let mut cursor = trace.cursor();
    let watching = proto::Watching {
        watching: target.machine().to_owned(),
        max_per_sec: rate,
    };
    if send(writer, &ok(watching)).is_err() {
        return;
    }
    let mut window = Instant::now();
    let (mut sent, mut dropped, mut overrun) = (0u32, 0u64, 0u64);
    while !shared.stop.load(Ordering::SeqCst) {
        let followed = trace.read_after(&cursor, filter, 4096);
        cursor = followed.cursor;
        overrun += followed.overrun;
        for entry in &followed.entries {
            if sent < rate {
                sent += 1;
                let line = proto::WatchMessage::Entry {
                    entry: entry_proto(entry),
                };
                if send(writer, &to_line(&line)).is_err() {
                    return;
                }
            } else {
                dropped += 1;
            }
        }
        if window.elapsed() >= Duration::from_secs(1) {
            if dropped > 0 || overrun > 0 {
                let note = proto::WatchMessage::Dropped {
                    dropped: dropped + overrun,
                    rate_limited: dropped,
                    overrun,
                    max_per_sec: rate,
                };
                if send(writer, &to_line(&note)).is_err() {
                    return;
                }
            }
            window = Instant::now();
            (sent, dropped, overrun) = (0, 0, 0);
        }
        if followed.entries.len() < 4096 {
            std::thread::sleep(POLL);
        }
    }
}

/// A message as a line's JSON.
fn to_line<T: Serialize>(message: &T) -> Value {
    serde_json::to_value(message).unwrap_or(Value::Null)
}

/// An armed timer as `show` answers it.
pub fn timer_proto(t: &super::ArmedTimer) -> proto::Timer {
    proto::Timer {
        kind: t.kind.to_string(),
        deadline_ms: t.deadline_ms,
        after_ms: t.after_ms,
        event: t.event.map(str::to_owned),
    }
}

/// A remembered idempotency key as `show` answers it.
pub fn key_proto(k: &super::AppliedKey) -> proto::Key {
    proto::Key {
        key: k.key.clone(),
        seq: k.seq,
        transition: k.transition.map(|t| t.to_string()),
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn latency_proto(l: &LatencySummary) -> proto::Latency {
    proto::Latency {
        count: l.count,
        p50_us: micros(l.p50),
        p95_us: micros(l.p95),
        p99_us: micros(l.p99),
        max_us: micros(l.max),
    }
}

/// One owed effect, as `show` lists it (and `fsm show` and `fsm export` print it offline):
/// its key, failed attempts, next attempt (wall-clock milliseconds, absent for at once), when
/// it was first owed, and whether its worker runs it now.
pub fn owed_proto(o: &super::OwedEffect) -> proto::Owed {
    proto::Owed {
        key: o.id.key().to_string(),
        attempts: o.attempts,
        next_attempt_ms: (o.not_before_ms > 0).then_some(o.not_before_ms),
        owed_since_ms: o.since_ms,
        running: o.running,
    }
}

fn shard_proto(s: &ShardMetrics) -> proto::Shard {
    proto::Shard {
        counts: s.counts,
        commits: s.commits,
        snapshots: s.snapshots,
        resident: s.resident,
        quarantined: s.quarantined,
        timer_entries: s.timer_entries,
        high_water: s.high_water,
        oldest_owed_ms: s.oldest_owed.map(millis),
        wait: latency_proto(&s.wait),
        apply: latency_proto(&s.apply),
        persist: latency_proto(&s.persist),
        end_to_end: latency_proto(&s.end_to_end),
        batch: proto::Batch {
            count: s.batch.count,
            p50: s.batch.p50.as_nanos() as u64,
            p99: s.batch.p99.as_nanos() as u64,
            max: s.batch.max.as_nanos() as u64,
        },
        transitions: s.transitions.clone(),
    }
}

fn entry_proto(e: &TraceEntry) -> proto::Entry {
    proto::Entry {
        at_ms: millis(e.at),
        machine: e.machine.as_str().to_owned(),
        from: e.from.to_owned(),
        event: e.event.to_owned(),
        to: e.to.map(str::to_owned),
        outcome: e.outcome,
        source: e.source,
        effects: e.effects,
        handled_by: e.handled_by.map(str::to_owned),
        wait_us: micros(e.wait),
        apply_us: micros(e.apply),
        persist_us: micros(e.persist),
        end_to_end_us: micros(e.end_to_end),
    }
}
