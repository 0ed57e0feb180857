//! A torrent client's registry: one machine per torrent, whose error kernel is the root hash,
//! the peers known, and which pieces are done.
//!
//! Why this is the kernel: with the root hash a client can check every piece it is given, and
//! with any one peer it can find the rest of the swarm; the pieces done are what a restart
//! must not fetch again. In-flight requests, transfer rates and peer choking are rebuilt in
//! seconds from those, so they are not stored.
//!
//! What it exercises: thousands of machines in one kernel, most of them idle and evicted from
//! memory (their timers keep them: a peer's timeout loads the torrent when it fires); peers
//! that come and go (each known peer has a named timer, re-armed by every sign of life, that
//! drops the peer when it fires); a peer worker (the kernel's effect worker) that fetches
//! pieces, sometimes hands over a corrupt one and sometimes crashes, and is restarted by its
//! supervisor; events raised by handlers (`Complete` when the last piece is in, `Stall` when
//! the last peer is gone); and a SQLite store.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use fsm_core::kernel::{EffectCtx, EffectError, EffectWorker, Failure};
use fsm_core::store::MachineId;
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

/// Pieces per torrent (a `u64` bit set holds them).
pub const PIECES: u8 = 16;
/// Requests a torrent keeps in flight when it starts or a peer comes back.
pub const WINDOW: u8 = 4;
/// A peer not heard from for this long is dropped.
pub const PEER_TIMEOUT: Duration = Duration::from_millis(1_500);

/// One torrent. Once added it is in the superstate `Added`, which says once what its three
/// states share: the user can remove it, and pieces, failed fetches and resumes that arrive
/// where nothing takes them are dropped.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(
    event = Swarm,
    effect = Fetch,
    superstate(
        Added,
        initial = Fetching,
        on(Remove => Removed, plain),
        dump(Piece, FetchFailed, Resume)
    )
)]
pub enum Torrent {
    /// Not added yet.
    #[fsm(initial, on(Add => Fetching))]
    New,
    /// Fetching pieces from the peers known.
    #[fsm(
        parent = Added,
        on(PeerUp => Fetching), on(PeerLost => Fetching), on(Piece => Fetching),
        on(FetchFailed => Fetching), on(Complete => Seeding), on(Stall => Stalled),
        on(Resume => Fetching)
    )]
    Fetching {
        /// The root hash: what every piece is checked against.
        root: String,
        /// Pieces done, one bit each.
        done: u64,
        /// Peers known.
        peers: BTreeSet<String>,
    },
    /// No peer left: waits for one.
    #[fsm(parent = Added, on(PeerUp => Fetching), dump(PeerLost))]
    Stalled {
        /// The root hash.
        root: String,
        /// Pieces done.
        done: u64,
    },
    /// Every piece done: serves them to the peers known.
    #[fsm(parent = Added, on(PeerUp => Seeding), on(PeerLost => Seeding))]
    Seeding {
        /// The root hash.
        root: String,
        /// Peers known.
        peers: BTreeSet<String>,
    },
    /// Removed by the user.
    #[fsm(terminal)]
    Removed,
}

/// What the swarm and the user tell a torrent.
#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Swarm {
    /// The user adds the torrent, with its root hash and a first peer.
    Add {
        /// The root hash (hex).
        root: String,
        /// A peer to start from.
        peer: String,
    },
    /// A peer announced itself or answered (a sign of life).
    PeerUp {
        /// Which.
        peer: String,
    },
    /// A peer's timer fired: not heard from within [`PEER_TIMEOUT`].
    PeerLost {
        /// Which.
        peer: String,
    },
    /// A peer handed over a piece.
    Piece {
        /// Which piece.
        n: u8,
        /// From whom.
        peer: String,
        /// Its hash, as received.
        hash: u64,
    },
    /// The peer worker failed while fetching a piece.
    FetchFailed {
        /// Which piece.
        n: u8,
        /// From whom.
        peer: String,
    },
    /// A new process took the torrent over: nothing is in flight, ask again.
    Resume,
    /// Raised when the last piece is in.
    Complete,
    /// Raised when the last peer is gone.
    Stall,
    /// The user removes the torrent.
    Remove,
}

/// The effect: fetch piece `n` from `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// Which piece.
    pub n: u8,
    /// From whom.
    pub peer: String,
}

const ALL: u64 = (1u64 << PIECES) - 1;

/// A 64-bit FNV-1a hash (a real client uses SHA-1 or SHA-256; the machine does not care).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The root hash of the torrent named `name`, as hex (32 bytes).
pub fn root_of(name: &str) -> String {
    let mut out = String::with_capacity(64);
    for i in 0u8..4 {
        let _ = write!(out, "{:016x}", fnv(&[name.as_bytes(), &[i]]));
    }
    out
}

/// The hash piece `n` of the torrent with root `root` must have.
pub fn piece_hash(root: &str, n: u8) -> u64 {
    fnv(&[root.as_bytes(), &[n]])
}

/// The timer that drops `peer` when it fires.
fn peer_timer(peer: &str) -> String {
    format!("peer:{peer}")
}

/// Re-arms `peer`'s timeout.
fn heard_from(peer: &str, fx: &mut Effects<Fetch>) {
    fx.start_timer(
        peer_timer(peer),
        PEER_TIMEOUT,
        Swarm::PeerLost {
            peer: peer.to_owned(),
        },
    );
}

/// Requests up to `k` missing pieces after `from` (cyclically), spread over `peers`.
fn request(done: u64, from: u8, k: u8, peers: &BTreeSet<String>, fx: &mut Effects<Fetch>) {
    let peers: Vec<&String> = peers.iter().collect();
    if peers.is_empty() {
        return;
    }
    let missing = (0..PIECES)
        .map(|i| (from + i) % PIECES)
        .filter(|n| done & (1 << n) == 0)
        .take(usize::from(k));
    for (i, n) in missing.enumerate() {
        fx.push(Fetch {
            n,
            peer: peers[(usize::from(n) + i) % peers.len()].clone(),
        });
    }
}

impl Torrent {
    /// The root hash, once added.
    pub fn root(&self) -> Option<&str> {
        match self {
            Torrent::Fetching { root, .. }
            | Torrent::Stalled { root, .. }
            | Torrent::Seeding { root, .. } => Some(root),
            Torrent::New | Torrent::Removed => None,
        }
    }

    /// How many pieces are done.
    pub fn pieces_done(&self) -> u32 {
        match self {
            Torrent::Fetching { done, .. } | Torrent::Stalled { done, .. } => done.count_ones(),
            Torrent::Seeding { .. } => u32::from(PIECES),
            Torrent::New | Torrent::Removed => 0,
        }
    }

    /// The peers known.
    pub fn peers(&self) -> usize {
        match self {
            Torrent::Fetching { peers, .. } | Torrent::Seeding { peers, .. } => peers.len(),
            _ => 0,
        }
    }
}

impl Handler<swarm::Add, torrent::Fetching> for torrent::New {
    fn handle(
        _: torrent::New,
        e: swarm::Add,
        fx: &mut Effects<Fetch>,
    ) -> Result<torrent::Fetching, Refusal> {
        if e.root.len() != 64 || !e.root.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Refusal::new("a root hash is 64 hex digits"));
        }
        let peers = BTreeSet::from([e.peer.clone()]);
        heard_from(&e.peer, fx);
        request(0, 0, WINDOW, &peers, fx);
        Ok(torrent::Fetching {
            root: e.root,
            done: 0,
            peers,
        })
    }
}

impl Handler<swarm::PeerUp, torrent::Fetching> for torrent::Fetching {
    fn handle(
        s: torrent::FetchingRef<'_>,
        e: swarm::PeerUp,
        fx: &mut Effects<Fetch>,
    ) -> Result<torrent::Fetching, Refusal> {
        // A sign of life: the peer is known (requests spread over the peers known) and its
        // timer starts again. Each answer asks for the next piece, so the requests in flight
        // stay at the window without asking anything here.
        let mut peers = s.peers.clone();
        heard_from(&e.peer, fx);
        peers.insert(e.peer);
        Ok(torrent::Fetching {
            root: s.root.clone(),
            done: *s.done,
            peers,
        })
    }
}

impl Handler<swarm::PeerLost, torrent::Fetching> for torrent::Fetching {
    fn handle(
        s: torrent::FetchingRef<'_>,
        e: swarm::PeerLost,
        fx: &mut Effects<Fetch>,
    ) -> Result<torrent::Fetching, Refusal> {
        let mut peers = s.peers.clone();
        peers.remove(&e.peer);
        if peers.is_empty() {
            fx.raise(Swarm::Stall);
        } else {
            // What was asked of the lost peer is lost with it: ask the others.
            request(*s.done, 0, WINDOW, &peers, fx);
        }
        Ok(torrent::Fetching {
            root: s.root.clone(),
            done: *s.done,
            peers,
        })
    }
}

impl Handler<swarm::Piece, torrent::Fetching> for torrent::Fetching {
    fn handle(
        s: torrent::FetchingRef<'_>,
        e: swarm::Piece,
        fx: &mut Effects<Fetch>,
    ) -> Result<torrent::Fetching, Refusal> {
        if e.n >= PIECES {
            return Err(Refusal::new(format!(
                "no piece {} in a torrent of {PIECES}",
                e.n
            )));
        }
        let mut done = *s.done;
        let mut peers = s.peers.clone();
        if piece_hash(s.root, e.n) == e.hash {
            done |= 1 << e.n;
            heard_from(&e.peer, fx);
            peers.insert(e.peer);
        } else {
            // A corrupt piece: the root hash caught it. Ask someone else; the peer's timer
            // runs on (it gets no credit for garbage).
            let others: BTreeSet<String> =
                peers.iter().filter(|p| **p != e.peer).cloned().collect();
            request(
                done,
                e.n,
                1,
                if others.is_empty() { &peers } else { &others },
                fx,
            );
        }
        if done == ALL {
            fx.raise(Swarm::Complete);
        } else if piece_hash(s.root, e.n) == e.hash {
            request(done, e.n + 1, 1, &peers, fx);
        }
        Ok(torrent::Fetching {
            root: s.root.clone(),
            done,
            peers,
        })
    }
}

impl Handler<swarm::FetchFailed, torrent::Fetching> for torrent::Fetching {
    fn handle(
        s: torrent::FetchingRef<'_>,
        e: swarm::FetchFailed,
        fx: &mut Effects<Fetch>,
    ) -> Result<torrent::Fetching, Refusal> {
        request(*s.done, e.n, 1, s.peers, fx);
        Ok(torrent::Fetching {
            root: s.root.clone(),
            done: *s.done,
            peers: s.peers.clone(),
        })
    }
}

impl Handler<swarm::Resume, torrent::Fetching> for torrent::Fetching {
    fn handle(
        s: torrent::FetchingRef<'_>,
        _: swarm::Resume,
        fx: &mut Effects<Fetch>,
    ) -> Result<torrent::Fetching, Refusal> {
        // The stored peers are enough to go on: any one of them leads back to the swarm.
        request(*s.done, 0, WINDOW, s.peers, fx);
        Ok(torrent::Fetching {
            root: s.root.clone(),
            done: *s.done,
            peers: s.peers.clone(),
        })
    }
}

impl Handler<swarm::Complete, torrent::Seeding> for torrent::Fetching {
    fn handle(
        s: torrent::FetchingRef<'_>,
        _: swarm::Complete,
        _: &mut Effects<Fetch>,
    ) -> Result<torrent::Seeding, Refusal> {
        if *s.done != ALL {
            return Err(Refusal::new("pieces are missing"));
        }
        Ok(torrent::Seeding {
            root: s.root.clone(),
            peers: s.peers.clone(),
        })
    }
}

impl Handler<swarm::Stall, torrent::Stalled> for torrent::Fetching {
    fn handle(
        s: torrent::FetchingRef<'_>,
        _: swarm::Stall,
        _: &mut Effects<Fetch>,
    ) -> Result<torrent::Stalled, Refusal> {
        if !s.peers.is_empty() {
            return Err(Refusal::new("peers are left"));
        }
        Ok(torrent::Stalled {
            root: s.root.clone(),
            done: *s.done,
        })
    }
}

impl Handler<swarm::PeerUp, torrent::Fetching> for torrent::Stalled {
    fn handle(
        s: torrent::StalledRef<'_>,
        e: swarm::PeerUp,
        fx: &mut Effects<Fetch>,
    ) -> Result<torrent::Fetching, Refusal> {
        let peers = BTreeSet::from([e.peer.clone()]);
        heard_from(&e.peer, fx);
        request(*s.done, 0, WINDOW, &peers, fx);
        Ok(torrent::Fetching {
            root: s.root.clone(),
            done: *s.done,
            peers,
        })
    }
}

impl Handler<swarm::PeerUp, torrent::Seeding> for torrent::Seeding {
    fn handle(
        s: torrent::SeedingRef<'_>,
        e: swarm::PeerUp,
        fx: &mut Effects<Fetch>,
    ) -> Result<torrent::Seeding, Refusal> {
        heard_from(&e.peer, fx);
        let mut peers = s.peers.clone();
        peers.insert(e.peer);
        Ok(torrent::Seeding {
            root: s.root.clone(),
            peers,
        })
    }
}

impl Handler<swarm::PeerLost, torrent::Seeding> for torrent::Seeding {
    fn handle(
        s: torrent::SeedingRef<'_>,
        e: swarm::PeerLost,
        _: &mut Effects<Fetch>,
    ) -> Result<torrent::Seeding, Refusal> {
        let mut peers = s.peers.clone();
        peers.remove(&e.peer);
        Ok(torrent::Seeding {
            root: s.root.clone(),
            peers,
        })
    }
}

/// The torrent named `name`'s machine id.
pub fn torrent_id(name: &str) -> MachineId {
    MachineId::new(name).expect("torrent names are valid ids")
}

/// The peer worker: "fetches" a piece (computes what the peer would send), hands over a
/// corrupt piece every `corrupt_every` fetches and crashes every `crash_every` (a panic, as a
/// bug in a network library would): the supervisor restarts it and the torrent is told
/// ([`Swarm::FetchFailed`]) so it asks again.
pub struct PeerWorker {
    fetched: u64,
    corrupt_every: u64,
    crash_every: u64,
    delay: Duration,
    roots: std::sync::Arc<dyn Fn(&MachineId) -> String + Send + Sync>,
    corrupt: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    unreachable: Option<PeerFilter>,
}

/// Which peers cannot be reached now.
pub type PeerFilter = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl PeerWorker {
    /// A worker; `roots` tells the root hash of a torrent (the peer's side of the protocol),
    /// `delay` is the time one fetch takes.
    pub fn new(
        corrupt_every: u64,
        crash_every: u64,
        delay: Duration,
        roots: std::sync::Arc<dyn Fn(&MachineId) -> String + Send + Sync>,
        seed: u64,
    ) -> Self {
        PeerWorker {
            fetched: seed,
            corrupt_every,
            crash_every,
            delay,
            roots,
            corrupt: None,
            unreachable: None,
        }
    }
}

impl EffectWorker<Torrent> for PeerWorker {
    fn run(&mut self, ctx: &EffectCtx, fetch: &Fetch) -> Result<Option<Swarm>, EffectError> {
        let id = ctx.machine();
        if self
            .unreachable
            .as_ref()
            .is_some_and(|gone| gone(&fetch.peer))
        {
            // The request is lost, as with a peer that vanished: no answer at all.
            return Ok(None);
        }
        self.fetched += 1;
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        if self.fetched % self.crash_every == 0 {
            panic!("peer {} reset the connection mid-piece", fetch.peer);
        }
        let root = (self.roots)(id);
        let mut hash = piece_hash(&root, fetch.n);
        if self.fetched % self.corrupt_every == 0 {
            hash ^= 1;
            if let Some(c) = &self.corrupt {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(Some(Swarm::Piece {
            n: fetch.n,
            peer: fetch.peer.clone(),
            hash,
        }))
    }

    fn failure_event(&self, _: &EffectCtx, fetch: &Fetch, _: &Failure) -> Option<Swarm> {
        Some(Swarm::FetchFailed {
            n: fetch.n,
            peer: fetch.peer.clone(),
        })
    }
}

/// How a swarm run is set up.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Torrents in the registry.
    pub torrents: usize,
    /// Peers in the pool (torrent `i` knows peers `i` and `i + 1` of it).
    pub peers: usize,
    /// Time one fetch takes.
    pub fetch_delay: Duration,
    /// A torrent untouched this long is evicted from memory.
    pub idle: Duration,
    /// Every this many fetches the peer worker hands over a corrupt piece.
    pub corrupt_every: u64,
    /// Every this many fetches the peer worker crashes.
    pub crash_every: u64,
    /// Give up (an error) after this long.
    pub deadline: Duration,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            torrents: 2_000,
            peers: 40,
            fetch_delay: Duration::ZERO,
            idle: Duration::from_millis(500),
            corrupt_every: 53,
            crash_every: 211,
            deadline: Duration::from_secs(300),
        }
    }
}

/// What a swarm run did.
#[derive(Debug, Clone, Default)]
pub struct SwarmReport {
    /// Torrents seeding at the end.
    pub seeding: usize,
    /// Torrents that stalled (lost every peer) and came back.
    pub stalled: usize,
    /// The most torrents in memory at once, and at the end.
    pub resident_high: usize,
    /// Torrents in memory at the end (idle ones are evicted).
    pub resident_end: usize,
    /// Peer worker restarts by its supervisor.
    pub restarts: u64,
    /// Corrupt pieces handed over (each caught by the root hash and fetched again).
    pub corrupt: u64,
    /// Commands committed (adds, signs of life, pieces, raised events not counted apart).
    pub committed: u64,
    /// Events raised by handlers (`Complete`, `Stall`).
    pub raised: u64,
    /// Timer firings (peers lost).
    pub timers_fired: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// Ticks (a fifth of [`PEER_TIMEOUT`] each) for which two peers of the pool are gone.
const GONE_FOR: u32 = 12;

/// The name of torrent `i`.
pub fn torrent_name(i: usize) -> String {
    format!("t-{i:05}")
}

fn peer_name(i: usize) -> String {
    format!("p-{i:03}")
}

/// Runs a registry of torrents over SQLite at `dir/torrents.db` until every torrent seeds:
/// adds them (or, when the store holds them, resumes them: the peers stored are all a torrent
/// needs to go on), keeps their peers alive, has two peers of the pool gone for
/// the first seconds (the torrents that know only those stall, then resume when they are
/// back), and reports. `progress` gets `progress <torrent> <pieces done>` whenever a torrent's count
/// changed (read from the kernel, so durable) and `seeding <torrent>` once it seeds.
pub fn run_swarm(
    dir: &std::path::Path,
    config: &SwarmConfig,
    progress: &mut dyn std::io::Write,
) -> Result<SwarmReport, Box<dyn std::error::Error>> {
    use fsm_core::kernel::{Kernel, Request, Shutdown};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    quiet_worker_crashes();
    let started = Instant::now();
    let store = fsm_persist::SqliteStore::open(dir.join("torrents.db"))?;
    let corrupt = Arc::new(AtomicU64::new(0));
    let roots: Arc<dyn Fn(&MachineId) -> String + Send + Sync> =
        Arc::new(|id: &MachineId| root_of(id.as_str()));
    // Peers 0 and 1 of the pool are gone for the first ticks (2.4 peer timeouts): requests
    // to them are lost and they send no sign of life, so the torrents that know only them
    // stall until they are back.
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let g = gone.clone();
    let unreachable: PeerFilter = Arc::new(move |p: &str| {
        g.load(Ordering::Relaxed) && (p == peer_name(0) || p == peer_name(1))
    });
    let (c, u, cfg) = (corrupt.clone(), unreachable.clone(), config.clone());
    let kernel = Kernel::builder(store, |_| Torrent::New)
        .shards(2)
        .timer_events()
        .idle_after(config.idle)
        .restart_intensity(1_000_000, Duration::from_secs(1))
        // At most once: a torrent re-requests a piece from another peer on its own timers, so a
        // fetch replayed after a crash would only duplicate one its machine already gave up.
        .effects_at_most_once(2, move |i| {
            let mut w = PeerWorker::new(
                cfg.corrupt_every,
                cfg.crash_every,
                cfg.fetch_delay,
                roots.clone(),
                i as u64 * 7,
            );
            w.corrupt = Some(c.clone());
            w.unreachable = Some(u.clone());
            w
        })
        .start()?;
    let ids: Vec<MachineId> = (0..config.torrents)
        .map(|i| torrent_id(&torrent_name(i)))
        .collect();
    let peers_of = |i: usize| {
        [
            peer_name(i % config.peers),
            peer_name((i + 1) % config.peers),
        ]
    };

    // Add what the store does not hold yet; resume what it holds (a new process has nothing
    // in flight).
    let mut adds = Vec::new();
    let mut resumes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        match kernel.state(id)?.0 {
            Torrent::New => {
                let add = Swarm::Add {
                    root: root_of(id.as_str()),
                    peer: peers_of(i)[0].clone(),
                };
                adds.push((id.clone(), Request::new(add)));
                resumes.push(false);
            }
            Torrent::Fetching { .. } => {
                adds.push((id.clone(), Request::new(Swarm::Resume)));
                resumes.push(true);
            }
            _ => {}
        }
    }
    for (ticket, resume) in kernel.submit_batch(adds).into_iter().zip(resumes) {
        match ticket?.wait() {
            Ok(_) => {}
            // Loading a torrent re-arms its stored peer timers, and one can fire between the
            // state read above and its resume: the torrent lost its last peer and stalled,
            // where a resume is dumped by the table. Nothing is lost; the next sign of life
            // from a peer brings it back.
            Err(fsm_core::kernel::CommandError::Dumped(_)) if resume => {}
            Err(e) => return Err(e.into()),
        }
    }

    let mut report = SwarmReport::default();
    let mut last_done = vec![u32::MAX; ids.len()];
    let mut seeding = vec![false; ids.len()];
    let mut was_stalled = vec![false; ids.len()];
    let mut tick = 0u32;
    while seeding.iter().any(|s| !s) {
        let tick_len = PEER_TIMEOUT / 5;
        if tick == GONE_FOR {
            gone.store(false, Ordering::Relaxed);
        }
        if started.elapsed() > config.deadline {
            return Err(format!(
                "{} torrents still not seeding after {:?}",
                seeding.iter().filter(|s| !**s).count(),
                config.deadline
            )
            .into());
        }
        let mut alive = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let (torrent, _) = kernel.state(id)?;
            let done = torrent.pieces_done();
            if done != last_done[i] {
                writeln!(progress, "progress {id} {done}")?;
                last_done[i] = done;
            }
            if matches!(torrent, Torrent::Stalled { .. }) {
                was_stalled[i] = true;
            }
            if matches!(torrent, Torrent::Seeding { .. }) {
                if !seeding[i] {
                    seeding[i] = true;
                    writeln!(progress, "seeding {id}")?;
                }
                continue;
            }
            for peer in peers_of(i).into_iter().filter(|p| !unreachable(p)) {
                alive.push((id.clone(), Request::new(Swarm::PeerUp { peer })));
            }
        }
        for ticket in kernel.submit_batch(alive) {
            // A sign of life is best effort: a full inbox drops it, the next tick sends more.
            let _ = ticket.map(|t| t.wait());
        }
        let m = kernel.metrics();
        report.resident_high = report.resident_high.max(m.total.resident);
        std::thread::sleep(tick_len);
        tick += 1;
    }
    // Left alone, the seeding torrents' peers time out (each firing loads its torrent, which
    // drops the peer) and then the torrents go idle and are evicted.
    std::thread::sleep(PEER_TIMEOUT + config.idle * 2);
    report.resident_end = kernel.sweep();
    let m = kernel.metrics();
    report.seeding = seeding.iter().filter(|s| **s).count();
    report.stalled = was_stalled.iter().filter(|s| **s).count();
    report.restarts = m.workers.iter().map(|w| w.restarts).sum();
    report.corrupt = corrupt.load(Ordering::Relaxed);
    report.committed = m.total.counts.committed;
    report.raised = m.total.counts.raised;
    report.timers_fired = m.total.counts.timers_fired;
    report.elapsed = started.elapsed();
    kernel.shutdown(Shutdown::Drain);
    Ok(report)
}

/// The worker's crashes are part of the demo: their panics are not printed (any other panic
/// is, as usual).
fn quiet_worker_crashes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let ours = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m.contains("reset the connection mid-piece"));
            if !ours {
                default(info);
            }
        }));
    });
}

/// Every torrent the SQLite store at `dir/torrents.db` holds, read on its own (after the
/// process that wrote it is gone).
pub fn stored(
    dir: &std::path::Path,
) -> Result<Vec<(MachineId, Torrent)>, Box<dyn std::error::Error>> {
    use fsm_core::store::{Codec, SnapshotStore, SnapshotStoreExt};
    let store = fsm_persist::SqliteStore::open(dir.join("torrents.db"))?;
    let codec = Codec::<Torrent>::new(1);
    let mut out = Vec::new();
    for id in store.ids()? {
        if let Some((t, _)) = store.load(&id, &codec)? {
            out.push((id, t));
        }
    }
    Ok(out)
}
