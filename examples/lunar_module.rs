//! A lunar module's descent: the error kernel is the altitude, the velocity vector and the
//! fuel, kept by a kernel over a mirror of two file stores. The autopilot flies it down;
//! three bad commands on the way are rejected with the invariant they would break (or the
//! guard that refuses them); halfway down the secondary's copy of the craft is damaged on
//! purpose, and the mirror repairs it from the primary when the craft is next read.
//!
//! Run with `cargo run --example lunar_module`.

use fsm_core::StateMachine;
use fsm_examples::lunar_module::{self, Lander};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("{}", Lander::TABLE.to_mermaid());
    let tmp = tempfile::tempdir()?;
    let mut log = Vec::new();
    let report = lunar_module::descend(tmp.path(), 20, &mut log)?;
    print!("{}", String::from_utf8_lossy(&log));
    println!(
        "descent: {} commands applied, {} refused by a guard; invariants that held by rejecting: {}",
        report.applied,
        report.refused,
        report
            .broken
            .iter()
            .map(|(i, n)| format!("`{}` x{n}", i.name()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("end: {}", report.end);
    println!(
        "mirror: {} repair(s); primary holds {}, secondary holds {}",
        report.repairs,
        report.sides[0]
            .as_ref()
            .map_or("nothing".into(), |l| l.to_string()),
        report.sides[1]
            .as_ref()
            .map_or("nothing".into(), |l| l.to_string()),
    );
    let landed = matches!(report.end, Lander::Landed { .. });
    let same = report.sides.iter().all(|s| s.as_ref() == Some(&report.end));
    println!("landed: {landed}; both sides hold the final state: {same}");
    if !landed || !same || report.repairs == 0 {
        return Err("the descent lost its kernel".into());
    }
    Ok(())
}
