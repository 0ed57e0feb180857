//! The torrent registry's error kernel under kill -9: a child process runs the registry over
//! SQLite and is SIGKILLed while it downloads; the parent then reads the store on its own.
//! Checked: every torrent's root hash is intact, no torrent has fewer pieces done than the
//! child had reported done (read from its kernel, so durable) before it was killed, and a new
//! process resumes every torrent from its stored peers to seeding, with every root hash
//! still intact. Also checked in the run: stalls and resumes, corrupt pieces, worker restarts,
//! evictions.
//!
//! `FSM_TORRENT_KILLS` sets how many times the child is killed (default 3); `FSM_KILL_SEED`
//! replays a run.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fsm_examples::torrent::{self, SwarmConfig, Torrent, PIECES};

const TORRENTS: usize = 300;

fn config() -> SwarmConfig {
    SwarmConfig {
        torrents: TORRENTS,
        peers: 20,
        // Slow enough that a kill lands mid-download.
        fetch_delay: Duration::from_millis(2),
        idle: Duration::from_millis(300),
        ..SwarmConfig::default()
    }
}

/// The table's rules on one torrent, with plain `apply`: a corrupt piece is not counted, the
/// last piece raises `Complete` (one command, two transitions), losing the last peer raises
/// `Stall`, and a peer's sign of life brings a stalled torrent back.
fn machine_rules() {
    use fsm_core::StateMachine;
    use fsm_examples::torrent::{piece_hash, root_of, Swarm};
    let root = root_of("t-rules");
    let mut t = Torrent::New;
    let added = t
        .apply(Swarm::Add {
            root: root.clone(),
            peer: "p-a".into(),
        })
        .unwrap();
    assert_eq!(added.effects.len(), usize::from(torrent::WINDOW));
    assert_eq!(added.effects.timers().len(), 1, "the peer's timer is armed");
    let piece = |n: u8, hash: u64| Swarm::Piece {
        n,
        peer: "p-a".into(),
        hash,
    };
    t.apply(piece(0, piece_hash(&root, 0) ^ 1)).unwrap();
    assert_eq!(t.pieces_done(), 0, "a corrupt piece is not counted");
    for n in 0..PIECES - 1 {
        t.apply(piece(n, piece_hash(&root, n))).unwrap();
    }
    assert_eq!(t.pieces_done(), u32::from(PIECES) - 1);
    let last = t
        .apply(piece(PIECES - 1, piece_hash(&root, PIECES - 1)))
        .unwrap();
    assert!(matches!(t, Torrent::Seeding { .. }), "{t:?}");
    assert_eq!(last.raised.len(), 1, "Complete was raised and applied");

    let mut t = Torrent::New;
    t.apply(Swarm::Add {
        root: root.clone(),
        peer: "p-a".into(),
    })
    .unwrap();
    t.apply(Swarm::PeerLost { peer: "p-a".into() }).unwrap();
    assert!(matches!(t, Torrent::Stalled { .. }), "{t:?}");
    let back = t.apply(Swarm::PeerUp { peer: "p-b".into() }).unwrap();
    assert!(
        matches!(t, Torrent::Fetching { .. }) && back.effects.len() == usize::from(torrent::WINDOW)
    );
    assert_eq!(t.root(), Some(root.as_str()));
    // A root hash that is not one is refused.
    let r = Torrent::New
        .apply(Swarm::Add {
            root: "abc".into(),
            peer: "p-a".into(),
        })
        .unwrap_err();
    assert!(r.to_string().contains("64 hex digits"), "{r}");
    println!("torrent: the table's rules hold on one torrent");
}

fn main() {
    if let Some(dir) = std::env::var_os("FSM_TORRENT_CHILD") {
        let mut out = std::io::stdout();
        let r = torrent::run_swarm(dir.as_ref(), &config(), &mut out).expect("the swarm runs");
        println!(
            "report seeding={} stalled={} corrupt={} restarts={} resident_high={} resident_end={}",
            r.seeding, r.stalled, r.corrupt, r.restarts, r.resident_high, r.resident_end
        );
        return;
    }
    machine_rules();
    let kills: usize = std::env::var("FSM_TORRENT_KILLS").map_or(3, |v| v.parse().unwrap());
    let seed: u64 =
        std::env::var("FSM_KILL_SEED").map_or_else(|_| fastrand::u64(..), |v| v.parse().unwrap());
    println!("torrent: {kills} kills, FSM_KILL_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let started = Instant::now();
    // The most pieces each torrent was reported done with, by any child.
    let mut reported: HashMap<String, u32> = HashMap::new();
    for kill in 0..=kills {
        let last = kill == kills;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("FSM_TORRENT_CHILD", dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill once the pieces reported done pass a random point of the download, 10 to 15%
        // further each time, so the last child still has more than half to do (and its peer
        // worker crashes and its stalls happen there too).
        let total = TORRENTS as u32 * u32::from(PIECES);
        let target = total * (kill as u32 + 1) * rng.u32(10..=15) / 100;
        let mut seen = 0;
        // A child first reports where every torrent stands; only what follows is progress.
        let mut first = std::collections::HashSet::new();
        let mut report = None;
        loop {
            let line = match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("the child went silent"),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut words = line.split(' ');
            match (words.next(), words.next(), words.next()) {
                (Some("progress"), Some(id), Some(n)) => {
                    let n: u32 = n.parse().unwrap();
                    let best = reported.entry(id.to_owned()).or_default();
                    *best = (*best).max(n);
                    if !first.insert(id.to_owned()) {
                        seen += 1;
                    }
                }
                (Some("seeding"), Some(id), None) => {
                    reported.insert(id.to_owned(), u32::from(PIECES));
                    seen += 1;
                }
                (Some("report"), ..) => report = Some(line.clone()),
                _ => {}
            }
            if !last && reported.values().sum::<u32>() >= target {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        let status = child.wait().unwrap();
        if !last {
            // A child that ended on its own before the kill failed (it printed why): the
            // download cannot be done by then.
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "child {kill} ended by itself ({status}) before it was killed"
            );
        }
        let stored = torrent::stored(dir).unwrap();
        assert_eq!(
            stored.len(),
            TORRENTS,
            "every torrent added is in the store"
        );
        let mut done = 0;
        for (id, t) in &stored {
            assert_eq!(
                t.root(),
                Some(torrent::root_of(id.as_str()).as_str()),
                "{id}: root hash lost or changed"
            );
            let had = reported.get(id.as_str()).copied().unwrap_or(0);
            assert!(
                t.pieces_done() >= had,
                "{id}: {} pieces stored, {had} reported done before the kill",
                t.pieces_done()
            );
            done += t.pieces_done();
        }
        println!(
            "  child {kill}: {} after {seen} updates; {done} of {} pieces stored",
            if last { "finished" } else { "killed" },
            TORRENTS * usize::from(PIECES)
        );
        if last {
            assert!(status.success(), "the last child failed");
            let report = report.expect("the last child reports");
            println!("  {report}");
            assert!(stored
                .iter()
                .all(|(_, t)| matches!(t, Torrent::Seeding { .. })));
            let field = |name: &str| -> u64 {
                report
                    .split(' ')
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))
                    .and_then(|v| v.parse().ok())
                    .unwrap()
            };
            assert_eq!(field("seeding"), TORRENTS as u64);
            assert!(field("restarts") > 0, "the worker never crashed: {report}");
            assert!(field("corrupt") > 0, "no corrupt piece was tried: {report}");
            assert!(
                field("stalled") > 0,
                "no torrent stalled and resumed: {report}"
            );
            assert!(
                field("resident_end") < TORRENTS as u64,
                "nothing was evicted: {report}"
            );
        }
    }
    println!(
        "torrent: {kills} SIGKILLs, every root hash intact, no piece reported done was lost, every torrent seeding at the end; {:.1?}",
        started.elapsed()
    );
}
