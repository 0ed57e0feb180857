//! The pacemaker's error kernel under kill -9: a child process runs the device over a file
//! store; the parent feeds it pulses, falls silent so it paces, and SIGKILLs it at a random
//! moment, again and again. Checked at the end: the stored last pulse is never older than the
//! last pulse the device acknowledged (nothing acknowledged lost), no pace is delivered twice
//! (the pace log's numbers rise strictly), pacing resumes after every restart (the armed
//! timeout is in the snapshot), and the stored pace count covers every pace delivered.
//!
//! `FSM_PACEMAKER_CYCLES` sets the cycles (default 12); `FSM_KILL_SEED` replays a run.
#![allow(missing_docs)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fsm_examples::pacemaker::{self, INTERVAL};

fn main() {
    if let Some(dir) = std::env::var_os("FSM_PACEMAKER_CHILD") {
        let stdin = std::io::stdin().lock();
        pacemaker::run_device(dir.as_ref(), stdin, std::io::stdout()).expect("the device runs");
        return;
    }
    let cycles: usize = std::env::var("FSM_PACEMAKER_CYCLES").map_or(12, |v| v.parse().unwrap());
    let seed: u64 =
        std::env::var("FSM_KILL_SEED").map_or_else(|_| fastrand::u64(..), |v| v.parse().unwrap());
    println!("pacemaker: {cycles} cycles, FSM_KILL_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let started = Instant::now();
    let (mut acked_last, mut sent_last, mut at) = (0u64, 0u64, 0u64);
    for cycle in 0..=cycles {
        let last = cycle == cycles;
        let (mut child, answers) = spawn(dir.as_os_str());
        let stdin = child.stdin.as_mut().unwrap();
        // A few beats, a tenth of an interval apart: the device senses.
        for _ in 0..rng.usize(0..6) {
            at += 1;
            sent_last = at;
            let _ = writeln!(stdin, "pulse {at}").and_then(|()| stdin.flush());
            std::thread::sleep(INTERVAL / 10);
        }
        // Then silence: the device paces, and is killed (or, the last time, left to pace a
        // while and stopped).
        let before = pacemaker::paces(dir).len();
        if last {
            // Liveness, not a margin: wait until it has paced three times since it started.
            while pacemaker::paces(dir).len() < before + 3 {
                assert!(
                    started.elapsed() < Duration::from_secs(300),
                    "the device stopped pacing"
                );
                std::thread::sleep(INTERVAL / 5);
            }
            drop(child.stdin.take());
            assert!(child.wait().unwrap().success(), "the last device failed");
        } else {
            std::thread::sleep(Duration::from_millis(
                rng.u64(0..(3 * INTERVAL.as_millis() as u64)),
            ));
            child.kill().unwrap(); // SIGKILL
            let status = child.wait().unwrap();
            // A device that ended by itself before the kill failed (it printed why).
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "the device ended by itself: {status}"
            );
        }
        for line in answers {
            let mut parts = line.split(' ');
            if let (Some("ack"), Some(a)) = (parts.next(), parts.next()) {
                acked_last = acked_last.max(a.parse().unwrap());
            }
        }
        let stored = pacemaker::stored(dir);
        let stored_pulse = stored.as_ref().map_or(0, pacemaker::Pacemaker::last_pulse);
        assert!(
            stored_pulse >= acked_last && stored_pulse <= sent_last,
            "cycle {cycle}: stored last pulse {stored_pulse}, acknowledged {acked_last}, sent {sent_last} (seed {seed})"
        );
    }
    let paces = pacemaker::paces(dir);
    assert!(
        paces.windows(2).all(|w| w[0] < w[1]),
        "a pace delivered twice or out of order: {paces:?} (seed {seed})"
    );
    let stored = pacemaker::stored(dir).expect("the device is stored");
    let delivered = paces.len() as u64;
    assert!(
        paces.last().copied().unwrap_or(0) <= stored.paced(),
        "the pace log is ahead of the stored count (seed {seed})"
    );
    println!(
        "pacemaker: {cycles} SIGKILLs; last pulse {} kept (acknowledged {acked_last}); {delivered} paces delivered, numbered 1..{} without a repeat ({} committed just before a kill and not delivered: effects run at most once); {:.1?}",
        stored.last_pulse(),
        stored.paced(),
        stored.paced() - delivered,
        started.elapsed()
    );
}

fn spawn(dir: &OsStr) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("FSM_PACEMAKER_CHILD", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}
