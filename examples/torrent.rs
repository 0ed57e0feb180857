//! A torrent client's registry: 2,000 torrents in one kernel over SQLite, each a machine whose
//! error kernel is its root hash, its known peers and the pieces done. Peers come and go (a
//! named timer per peer drops it when it falls silent; two peers of the pool vanish for a
//! while, so the torrents that knew only them stall and resume); the peer worker hands over
//! corrupt pieces (the root hash catches them) and crashes (its supervisor restarts it); idle
//! torrents are evicted from memory while their timers keep running.
//!
//! Run with `cargo run --release --example torrent` (`-- 500` for fewer torrents).

use fsm_core::StateMachine;
use fsm_examples::torrent::{self, SwarmConfig, Torrent};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("{}", Torrent::TABLE.to_mermaid());
    let torrents = std::env::args()
        .nth(1)
        .map_or(Ok(2_000), |n| n.parse())
        .map_err(|e| format!("the argument is a number of torrents: {e}"))?;
    let tmp = tempfile::tempdir()?;
    let config = SwarmConfig {
        torrents,
        ..SwarmConfig::default()
    };
    let mut progress = std::io::sink();
    let r = torrent::run_swarm(tmp.path(), &config, &mut progress)?;
    println!(
        "{} torrents seeding in {:.1?}: {} stalled when their peers vanished and resumed; {} corrupt pieces caught by the root hash; the peer worker crashed and was restarted {} times",
        r.seeding, r.elapsed, r.stalled, r.corrupt, r.restarts
    );
    println!(
        "kernel: {} commands committed, {} events raised by handlers, {} peer timeouts fired; at most {} torrents in memory, {} after the idle ones were evicted",
        r.committed, r.raised, r.timers_fired, r.resident_high, r.resident_end
    );
    let stored = torrent::stored(tmp.path())?;
    let intact = stored
        .iter()
        .all(|(id, t)| t.root() == Some(torrent::root_of(id.as_str()).as_str()));
    println!(
        "store: {} torrents, every root hash intact: {intact}",
        stored.len()
    );
    if r.seeding != torrents || !intact || r.restarts == 0 || r.stalled == 0 {
        return Err("the swarm did not run as it should".into());
    }
    Ok(())
}
