//! A cluster of node processes over one PostgreSQL database, a load that submits through the
//! inbox, a nemesis that kills and pauses nodes, and a checker that reads the database at the
//! end. Shared by `cargo run --example cluster` and the nemesis test.
//!
//! The machine is an account that only adds: its total is the sum of the amounts applied to
//! it, and its snapshot sequence counts the commands applied, so a command applied twice or
//! lost shows in both.

use std::collections::{BTreeMap, HashMap};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fsm_core::kernel::{IdempotencyKey, Kernel};
use fsm_core::store::{Codec, MachineId, SnapshotStoreExt};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use fsm_persist::postgres::{
    Claim, Config, Inbox, InboxCommand, InboxError, InboxTicket, NodeBuilder, Ownership,
    PostgresStore, Status,
};
use serde::{Deserialize, Serialize};

/// An account that adds amounts.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = Ledger)]
pub enum Account {
    /// Open, with the sum of what was added.
    #[fsm(initial, on(Add => Open))]
    Open {
        /// The sum.
        total: u64,
    },
}

/// What an account takes.
#[derive(Event, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ledger {
    /// Adds an amount.
    Add {
        /// The amount.
        amount: u64,
    },
}

impl Handler<ledger::Add, account::Open> for account::Open {
    fn handle(
        s: account::OpenRef<'_>,
        ev: ledger::Add,
        _: &mut Effects<()>,
    ) -> Result<account::Open, Refusal> {
        Ok(account::Open {
            total: s.total + ev.amount,
        })
    }
}

impl Account {
    /// The sum of the amounts applied.
    pub fn total(&self) -> u64 {
        match self {
            Account::Open { total } => *total,
        }
    }
}

/// The schema the cluster's tables live in.
pub const SCHEMA: &str = "cluster";
/// Partitions of the id space.
pub const PARTITIONS: u32 = 16;

/// Timings of a node: a short lease, so a dead node's partitions move within a second or so.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// The lease.
    pub lease: Duration,
    /// The heartbeat.
    pub heartbeat: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease: Duration::from_millis(1500),
            heartbeat: Duration::from_millis(300),
        }
    }
}

/// The connection settings as a string a child process can parse.
pub fn config_string(config: &Config) -> String {
    let mut parts = vec![];
    for host in config.get_hosts() {
        match host {
            postgres::config::Host::Tcp(h) => parts.push(format!("host={h}")),
            postgres::config::Host::Unix(p) => parts.push(format!("host={}", p.display())),
        }
    }
    if let Some(port) = config.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={user}"));
    }
    if let Some(db) = config.get_dbname() {
        parts.push(format!("dbname={db}"));
    }
    parts.push("connect_timeout=5".into());
    parts.join(" ")
}

fn open_store(config: &Config, name: &str, claim: Claim, timing: Timing) -> PostgresStore {
    PostgresStore::builder(config.clone())
        .schema(SCHEMA)
        .pool_size(4)
        .ownership(
            Ownership::new(name)
                .partitions(PARTITIONS)
                .lease(timing.lease)
                .heartbeat(Some(timing.heartbeat))
                .claim(claim),
        )
        .open()
        .expect("open the cluster's tables")
}

/// Creates the tables (a store that claims nothing), so clients can open the inbox before
/// any node runs.
pub fn create_tables(config: &Config) {
    drop(open_store(
        config,
        "setup",
        Claim::Nothing,
        Timing::default(),
    ));
}

/// Runs a node until the process is killed: its kernel over a fenced store, and the pump.
/// Prints `ready` once serving, then a line of stats every second.
pub fn run_node(config: &Config, name: &str, timing: Timing) -> ! {
    let store = Arc::new(open_store(config, name, Claim::Free, timing));
    let kernel = Kernel::builder_shared(store.clone(), |_| Account::Open { total: 0 })
        .codec(Codec::new(1))
        .shards(2)
        .start()
        .expect("start the kernel");
    let node = NodeBuilder::new()
        .poll(Duration::from_millis(250))
        .start(kernel, store)
        .expect("start the node");
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let s = node.stats();
        println!(
            "node {name}: applied {} held {} lag {} ms",
            s.applied,
            node.store().held().len(),
            s.lag_ms
        );
    }
}

/// One submitted command, as the load saw it.
struct Sent {
    amount: u64,
    /// `None`: the submit failed (outcome unknown if the error came from the connection).
    ticket: Option<InboxTicket>,
}

/// What the load did.
#[derive(Default)]
pub struct LoadLog {
    sent: Mutex<BTreeMap<String, Sent>>,
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// The account of machine `i`.
pub fn account(i: usize) -> MachineId {
    MachineId::new(format!("acct-{i}")).expect("a valid id")
}

/// Submits commands from `threads` threads until `stop`: each thread owns its machines
/// (machine `i` belongs to thread `i % threads`) and submits to each in turn, so a
/// machine's commands are submitted one after another and their rows' order is their
/// submission order. Closed loop: each batch waits (at most 5 s) for its answers.
pub fn load(
    inbox: &Inbox,
    machines: usize,
    threads: usize,
    batch: usize,
    stop: &AtomicBool,
    log: &LoadLog,
) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mine: Vec<usize> = (t..machines).step_by(threads).collect();
                let mut n = 0_u64;
                let mut rng = fastrand::Rng::with_seed(t as u64);
                while !stop.load(Ordering::Relaxed) {
                    let mut commands = vec![];
                    let mut meta = vec![];
                    for _ in 0..batch {
                        n += 1;
                        let m = mine[rng.usize(..mine.len())];
                        let key = format!("t{t}-{n}");
                        let amount = rng.u64(1..1000);
                        let cmd = InboxCommand::new(
                            account(m),
                            IdempotencyKey::new(key.clone()).expect("a valid key"),
                            &Ledger::Add { amount },
                        )
                        .expect("encodes");
                        commands.push(cmd);
                        meta.push((key, amount));
                    }
                    let results = inbox.submit_many(commands);
                    // Closed loop: wait (a bounded while) for this batch's answers before the
                    // next, so the offered load follows what the cluster applies and no
                    // backlog builds up while an owner is down.
                    let until = Instant::now() + Duration::from_secs(5);
                    for t in results.iter().flatten() {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        let _ = t.wait(left);
                    }
                    let mut sent = log.sent.lock().expect("not poisoned");
                    for ((key, amount), r) in meta.into_iter().zip(results) {
                        let ticket = match r {
                            Ok(t) => {
                                log.accepted.fetch_add(1, Ordering::Relaxed);
                                Some(t)
                            }
                            Err(InboxError::Full { .. }) => {
                                // Refused, nothing stored: not a command of the history.
                                log.refused.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Err(_) => None,
                        };
                        sent.insert(key, Sent { amount, ticket });
                    }
                    drop(sent);
                }
            });
        }
    });
}

/// A node process the orchestrator runs.
pub struct NodeProc {
    /// Its name.
    pub name: String,
    /// The process, while it runs.
    pub child: Option<Child>,
    /// Whether it is stopped (SIGSTOP) now.
    pub paused: bool,
}

/// Sends `sig` (`KILL`, `STOP`, `CONT`) to a child, with the system's `kill` command.
fn signal(child: &Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {} failed", child.id());
}

/// One fault the nemesis injected.
#[derive(Debug, Clone)]
pub struct Fault {
    /// What: `kill`, `pause` or `cut` (its link to the database taken down).
    pub kind: &'static str,
    /// The node.
    pub node: String,
    /// How long until another node held every partition the faulty one held.
    pub takeover: Option<Duration>,
}

/// The nemesis: `cycles` times, SIGKILL a node (and restart it) or SIGSTOP one past its lease
/// (and resume it), waiting each time until its partitions have moved.
pub fn nemesis(
    config: &Config,
    nodes: &mut [NodeProc],
    spawn: &dyn Fn(&str) -> Child,
    net: Option<&dyn Cut>,
    cycles: usize,
    timing: Timing,
    rng: &mut fastrand::Rng,
) -> Vec<Fault> {
    let observer = open_store(config, "nemesis", Claim::Nothing, timing);
    let mut faults = vec![];
    let kinds: &[&'static str] = if net.is_some() {
        &["kill", "pause", "cut"]
    } else {
        &["kill", "pause"]
    };
    for cycle in 0..cycles {
        let kind = kinds[cycle % kinds.len()];
        // A node that serves something: a fault on an idle one moves nothing.
        let owners = observer.owners().unwrap_or_default();
        let holds = |name: &str| {
            owners
                .iter()
                .filter(|r| r.live && r.owner.as_deref() == Some(name))
                .map(|r| r.partition)
                .collect::<Vec<u32>>()
        };
        let serving: Vec<usize> = (0..nodes.len())
            .filter(|&i| !holds(&nodes[i].name).is_empty())
            .collect();
        let i = if serving.is_empty() {
            rng.usize(..nodes.len())
        } else {
            serving[rng.usize(..serving.len())]
        };
        let name = nodes[i].name.clone();
        let held_before = holds(&name);
        let at = Instant::now();
        let child = nodes[i].child.as_mut().expect("running");
        match kind {
            "kill" => {
                signal(child, "KILL");
                let _ = child.wait();
                nodes[i].child = None;
            }
            "pause" => {
                signal(child, "STOP");
                nodes[i].paused = true;
            }
            _ => net.expect("cuts only with a network").cut(i),
        }
        // Until every partition it held is live under another node (bounded: a node that
        // held nothing moves nothing).
        let mut takeover = None;
        while at.elapsed() < timing.lease * 20 {
            let moved = observer.owners().is_ok_and(|rows| {
                held_before.iter().all(|p| {
                    rows.iter().any(|r| {
                        r.partition == *p && r.live && r.owner.as_deref() != Some(name.as_str())
                    })
                })
            });
            if moved {
                takeover = Some(at.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Past the lease in any case, then bring it back.
        let past = timing.lease + timing.heartbeat;
        if at.elapsed() < past {
            std::thread::sleep(past - at.elapsed());
        }
        match kind {
            "kill" => nodes[i].child = Some(spawn(&name)),
            "pause" => {
                signal(nodes[i].child.as_ref().expect("running"), "CONT");
                nodes[i].paused = false;
            }
            _ => net.expect("cuts only with a network").heal(i),
        }
        eprintln!(
            "  fault {}/{cycles}: {kind} {name}, partitions moved in {takeover:?}",
            cycle + 1
        );
        faults.push(Fault {
            kind,
            node: name,
            takeover,
        });
    }
    faults
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    /// Commands whose submit returned a ticket.
    pub accepted: u64,
    /// Commands refused `Full` at submit (nothing stored).
    pub refused_full: u64,
    /// Submits whose outcome was unknown (error) and that landed anyway.
    pub unknown_landed: u64,
    /// Rows applied.
    pub applied: u64,
    /// Accepted commands with no applied row.
    pub lost: u64,
    /// Machines whose stored total or sequence shows a command applied twice (or lost).
    pub mismatched: Vec<String>,
    /// Machines whose applied rows' sequences do not rise with submission order.
    pub out_of_order: Vec<String>,
    /// Rows no submitter sent.
    pub foreign: u64,
    /// Tickets whose answer differs from the stored row.
    pub wrong_answers: u64,
    /// Applied rows by the node that recorded them.
    pub per_node: BTreeMap<String, u64>,
}

impl Report {
    /// Whether every property held.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.mismatched.is_empty()
            && self.out_of_order.is_empty()
            && self.foreign == 0
            && self.wrong_answers == 0
    }
}

/// Waits until no command is pending (at most `limit`); returns whether it got there.
pub fn drain(inbox: &Inbox, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if inbox.depth().is_ok_and(|d| d.is_empty()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Reads the database and checks the history against what the load sent.
pub fn check(config: &Config, log: &LoadLog, machines: usize) -> Report {
    let mut report = Report {
        accepted: log.accepted.load(Ordering::Relaxed),
        refused_full: log.refused.load(Ordering::Relaxed),
        ..Report::default()
    };
    let mut client = config.connect(postgres::NoTls).expect("connect");
    let rows = client
        .query(
            &format!(
                "SELECT key, machine, id, status, seq, decided_by FROM \"{SCHEMA}\".fsm_snapshots_inbox ORDER BY id"
            ),
            &[],
        )
        .expect("read the inbox");
    let sent = log.sent.lock().expect("not poisoned");
    let mut applied: HashMap<String, Vec<(i64, i64, u64)>> = HashMap::new();
    let mut by_key: HashMap<String, (Option<String>, Option<i64>)> = HashMap::new();
    for r in &rows {
        let key: String = r.get(0);
        let machine: String = r.get(1);
        let id: i64 = r.get(2);
        let status: Option<String> = r.get(3);
        let seq: Option<i64> = r.get(4);
        let node: Option<String> = r.get(5);
        by_key.insert(key.clone(), (status.clone(), seq));
        let Some(s) = sent.get(&key) else {
            report.foreign += 1;
            continue;
        };
        if s.ticket.is_none() {
            report.unknown_landed += 1;
        }
        if status.as_deref() == Some("applied") {
            report.applied += 1;
            *report.per_node.entry(node.unwrap_or_default()).or_default() += 1;
            applied
                .entry(machine)
                .or_default()
                .push((id, seq.unwrap_or(0), s.amount));
        }
    }
    let answers_until = Instant::now() + Duration::from_secs(60);
    for (key, s) in sent.iter() {
        let landed = by_key.get(key);
        let is_applied = landed.is_some_and(|(st, _)| st.as_deref() == Some("applied"));
        if s.ticket.is_some() && !is_applied {
            report.lost += 1;
        }
        if let (Some(t), Some((st, seq))) = (&s.ticket, landed) {
            // Every decision is in the database by now; the answers thread hands them out
            // within a poll. One bound for all of them, so a stuck thread fails the check
            // rather than hanging it.
            let left = answers_until.saturating_duration_since(Instant::now());
            match t.wait(left) {
                Ok(d) => {
                    if Some(d.status.as_str()) != st.as_deref()
                        || d.seq.map(|x| x as i64) != *seq
                        || d.status != Status::Applied
                    {
                        report.wrong_answers += 1;
                    }
                }
                Err(_) => report.wrong_answers += 1,
            }
        }
    }
    let observer = open_store(config, "checker", Claim::Nothing, Timing::default());
    let codec = Codec::<Account>::new(1);
    for i in 0..machines {
        let id = account(i);
        let mut rows = applied.remove(id.as_str()).unwrap_or_default();
        rows.sort_by_key(|r| r.0);
        let seqs: Vec<i64> = rows.iter().map(|r| r.1).collect();
        if seqs.windows(2).any(|w| w[0] >= w[1]) {
            report.out_of_order.push(id.to_string());
        }
        let expected_total: u64 = rows.iter().map(|r| r.2).sum();
        let stored = observer.load(&id, &codec).expect("a readable snapshot");
        let (total, seq) = stored.map_or((0, 0), |(m, seq)| (m.total(), seq));
        if total != expected_total || seq != rows.len() as u64 {
            report.mismatched.push(format!(
                "{id}: stored total {total} at seq {seq}, applied rows sum to {expected_total} over {} commands",
                rows.len()
            ));
        }
    }
    report
}

/// Starts a node process from `command` (which runs [`run_node`]) and waits for its
/// `ready`; its further output is read and dropped.
pub fn spawn_node(mut command: std::process::Command) -> Child {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn a node process");
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if line == "ready" {
                let _ = tx.send(());
            }
        }
    });
    // A node that cannot start within a minute on a loaded machine is a failure to report.
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the node process never said ready");
    child
}

/// A nemesis run's settings.
#[derive(Clone, Debug)]
pub struct Run {
    /// Node processes.
    pub nodes: usize,
    /// Accounts.
    pub machines: usize,
    /// Submitting threads.
    pub threads: usize,
    /// Commands per submit statement.
    pub batch: usize,
    /// Faults to inject.
    pub cycles: usize,
    /// The nemesis's seed.
    pub seed: u64,
    /// The nodes' lease and heartbeat.
    pub timing: Timing,
}

/// What a run saw.
pub struct RunReport {
    /// The checker's findings.
    pub report: Report,
    /// The faults injected.
    pub faults: Vec<Fault>,
    /// From the first submit to the last command decided.
    pub elapsed: Duration,
    /// Whether every accepted command was decided before the checker ran.
    pub drained: bool,
    /// Notifications the load's inbox missed (answers found by polling).
    pub polled: u64,
    /// What the load sent, to check the database again.
    pub log: LoadLog,
}

/// Starts the nodes, runs the load under the nemesis, lets every accepted command be
/// decided, stops the nodes, and checks the database.
pub fn orchestrate(
    config: &Config,
    run: &Run,
    spawn: &dyn Fn(&str) -> Child,
    net: Option<&dyn Cut>,
) -> RunReport {
    create_tables(config);
    let mut nodes: Vec<NodeProc> = (1..=run.nodes)
        .map(|i| {
            let name = format!("n{i}");
            NodeProc {
                child: Some(spawn(&name)),
                name,
                paused: false,
            }
        })
        .collect();
    let inbox = Inbox::builder(config.clone())
        .schema(SCHEMA)
        .poll(Duration::from_millis(250))
        .open()
        .expect("open the inbox");
    let log = LoadLog::default();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let mut rng = fastrand::Rng::with_seed(run.seed);
    let faults = std::thread::scope(|s| {
        s.spawn(|| load(&inbox, run.machines, run.threads, run.batch, &stop, &log));
        std::thread::sleep(run.timing.lease);
        let faults = nemesis(
            config, &mut nodes, spawn, net, run.cycles, run.timing, &mut rng,
        );
        stop.store(true, Ordering::Relaxed);
        faults
    });
    eprintln!("  load stopped; waiting until every accepted command is decided");
    let drained = drain(&inbox, Duration::from_secs(120));
    eprintln!("  drained: {drained}; checking the database");
    let elapsed = start.elapsed();
    for n in &mut nodes {
        if let Some(c) = &mut n.child {
            if n.paused {
                signal(c, "CONT");
            }
            signal(c, "KILL");
            let _ = c.wait();
        }
    }
    let report = check(config, &log, run.machines);
    RunReport {
        report,
        faults,
        elapsed,
        drained,
        polled: inbox.stats().polled,
        log,
    }
}

/// A way to cut node `i` (0-based) off the database and to heal it.
pub trait Cut: Sync {
    /// Cuts node `i` off.
    fn cut(&self, i: usize);
    /// Lets node `i` reach the database again.
    fn heal(&self, i: usize);
}

impl Cut for Network {
    fn cut(&self, i: usize) {
        Network::cut(self, i);
    }
    fn heal(&self, i: usize) {
        Network::heal(self, i);
    }
}

/// The fallback where network namespaces cannot be made: a TCP proxy per node between it
/// and the database; a cut closes the node's connections and refuses new ones until healed.
/// Coarser than a link taken down (the node is told at once, where a real partition leaves
/// it hanging), so the namespaces are preferred.
pub struct Proxies {
    proxies: Vec<Proxy>,
}

struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxies {
    /// One proxy per node on 127.0.0.1, each forwarding to `upstream`.
    pub fn start(nodes: usize, upstream: std::net::SocketAddr) -> std::io::Result<Proxies> {
        let mut proxies = vec![];
        for _ in 0..nodes {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let port = listener.local_addr()?.port();
            let cut = Arc::new(AtomicBool::new(false));
            let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
            let (c, o) = (cut.clone(), open.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if c.load(Ordering::Acquire) {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = std::net::TcpStream::connect(upstream) else {
                        continue;
                    };
                    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                        continue;
                    };
                    {
                        let mut open = o.lock().expect("not poisoned");
                        open.extend(client.try_clone().ok());
                        open.extend(server.try_clone().ok());
                    }
                    let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                            let _ = from.shutdown(std::net::Shutdown::Both);
                        });
                    };
                    pipe(client, server);
                    pipe(s2, c2);
                }
            });
            proxies.push(Proxy { port, cut, open });
        }
        Ok(Proxies { proxies })
    }

    /// The port node `i` (1-based, as named) connects to.
    pub fn port(&self, i: usize) -> u16 {
        self.proxies[i - 1].port
    }
}

impl Cut for Proxies {
    fn cut(&self, i: usize) {
        let p = &self.proxies[i];
        p.cut.store(true, Ordering::Release);
        for s in p.open.lock().expect("not poisoned").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
    fn heal(&self, i: usize) {
        self.proxies[i].cut.store(false, Ordering::Release);
    }
}

/// Node `i`'s own network namespace, linked to the host's by a veth pair: the database is
/// reached at the host's end of the link, and a cut takes that end down (the node's packets
/// go nowhere, its connections hang, nothing tells it). Made with `ip netns` and `ip link`,
/// which need root; removed on drop.
pub struct Network {
    tag: String,
    octet: u32,
    nodes: usize,
    /// The claim on the second octet for this run: two runs at once (two copies of the test
    /// suite) must not route the same subnet over two links.
    claim: std::path::PathBuf,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Network {
    /// Makes a namespace and a link for each of `nodes` nodes (numbered from 1).
    pub fn create(nodes: usize) -> Result<Network, String> {
        let pid = std::process::id();
        let (octet, claim) = claim_octet(pid)?;
        let net = Network {
            tag: format!("f{}", pid % 100_000),
            octet,
            nodes,
            claim,
        };
        for i in 1..=nodes {
            let (ns, host, inside) = net.names(i);
            // Leftovers of an earlier run with the same pid would collide.
            let _ = ip(&["netns", "del", &ns]);
            let _ = ip(&["link", "del", &host]);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &host, "type", "veth", "peer", "name", &inside,
            ])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/30", net.gateway(i)),
                "dev",
                &host,
            ])?;
            ip(&["link", "set", &host, "up"])?;
            let node = format!("10.{}.{i}.2/30", net.octet);
            ip(&[
                "netns", "exec", &ns, "ip", "addr", "add", &node, "dev", &inside,
            ])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", &inside, "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn names(&self, i: usize) -> (String, String, String) {
        (
            format!("{}n{i}", self.tag),
            format!("{}h{i}", self.tag),
            format!("{}c{i}", self.tag),
        )
    }

    /// The host's end of node `i`'s link: where it reaches the database.
    pub fn gateway(&self, i: usize) -> String {
        format!("10.{}.{i}.1", self.octet)
    }

    /// The server's `listen_addresses`: every gateway.
    pub fn listen(&self) -> String {
        (1..=self.nodes)
            .map(|i| self.gateway(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes' network, for the server's client rule.
    pub fn allow(&self) -> String {
        format!("10.{}.0.0/16", self.octet)
    }

    /// `program` run inside node `i`'s namespace.
    pub fn command(&self, i: usize, program: &std::path::Path) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.names(i).0]);
        c.arg(program);
        c
    }

    /// Takes node `i`'s link down (0-based, as the nemesis counts).
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.names(i + 1).1, "down"]).expect("cut the link");
    }

    /// Brings node `i`'s link back (0-based).
    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &self.names(i + 1).1, "up"]).expect("heal the link");
    }
}

/// A second octet in 10.200-249.x.x that no other run holds and no interface uses: a claim
/// file named after it, created exclusively and holding this process's id (a claim whose
/// process is gone is taken over), removed when the network is dropped; and no address of
/// the host in it already (a link left behind by a run that was killed).
fn claim_octet(pid: u32) -> Result<(u32, std::path::PathBuf), String> {
    let addresses = std::process::Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    let create = |path: &std::path::Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, pid.to_string().as_bytes()))
    };
    for k in 0..50 {
        let octet = 200 + (pid + k) % 50;
        if addresses.contains(&format!(" 10.{octet}.")) {
            continue;
        }
        let path = std::env::temp_dir().join(format!("fsm-cluster-net-10.{octet}.claim"));
        if create(&path).is_ok() {
            return Ok((octet, path));
        }
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        let alive = !holder.is_empty()
            && std::path::Path::new(&format!("/proc/{}", holder.trim())).exists();
        if !alive && std::fs::remove_file(&path).is_ok() && create(&path).is_ok() {
            return Ok((octet, path));
        }
    }
    Err("every subnet of 10.200-249.x.x is taken by another run or a leftover link".into())
}

impl Drop for Network {
    fn drop(&mut self) {
        for i in 1..=self.nodes {
            let (ns, host, _) = self.names(i);
            let _ = ip(&["link", "del", &host]);
            let _ = ip(&["netns", "del", &ns]);
        }
        let _ = std::fs::remove_file(&self.claim);
    }
}

#[cfg(test)]
mod claim_tests {
    use super::claim_octet;

    #[test]
    fn runs_that_start_from_the_same_subnet_get_different_ones_and_a_dead_claim_is_taken_over() {
        let base = std::process::id();
        let (a, first) = claim_octet(base).unwrap();
        let (b, second) = claim_octet(base).unwrap();
        assert_ne!(a, b, "the second claim skips the first's subnet");
        // The first claim's process is gone (no process has this id): taken over.
        std::fs::write(&first, "4000000000").unwrap();
        let (c, third) = claim_octet(base).unwrap();
        assert_eq!(c, a);
        assert_eq!(third, first);
        assert_eq!(
            std::fs::read_to_string(&third).unwrap(),
            base.to_string(),
            "the claim now names this process"
        );
        for path in [first, second] {
            let _ = std::fs::remove_file(path);
        }
    }
}
