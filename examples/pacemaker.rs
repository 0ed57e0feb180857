//! A pacemaker whose error kernel is the time of the last pulse and the pacing mode: the heart
//! beats, falls silent (the state timeout paces, every interval), and beats again. Then the
//! crash demo: the device runs in a child process that is killed with SIGKILL while it paces,
//! and a new process takes over from the store: it knows the last pulse, keeps pacing from the
//! stored deadline, and delivers no pace twice.
//!
//! Run with `cargo run --example pacemaker` (the interval is scaled down to 250 ms).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use fsm_core::kernel::{Request, Shutdown};
use fsm_core::StateMachine;
use fsm_examples::pacemaker::{self, Heart, Lead, Pacemaker, INTERVAL};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = std::env::var_os("FSM_PACEMAKER_CHILD") {
        let stdin = std::io::stdin().lock();
        return pacemaker::run_device(dir.as_ref(), stdin, std::io::stdout());
    }
    println!("{}", Pacemaker::TABLE.to_mermaid());
    let tmp = tempfile::tempdir()?;

    // 1. In one process: beats, silence, beats.
    let dir = tmp.path().join("demo");
    std::fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let lead_dir = dir.clone();
    let kernel = fsm_persist::file_kernel(dir.join("store"), |_| Pacemaker::new())
        .shards(1)
        // A pace is for this beat, never replayed after a restart: at most once.
        .effects_at_most_once(1, move |_| {
            Lead::open(&lead_dir, started).expect("the pace log opens")
        })
        .start()?;
    let id = pacemaker::device();
    let mut at = 0;
    let mut beat = |n: usize| -> Result<(), Box<dyn std::error::Error>> {
        for _ in 0..n {
            at += 1;
            kernel
                .submit(&id, Request::new(Heart::Pulse { at }))?
                .wait()?;
            std::thread::sleep(INTERVAL / 3);
        }
        Ok(())
    };
    beat(6)?;
    let silent = Instant::now();
    while pacemaker::paces(&dir).len() < 4 {
        std::thread::sleep(INTERVAL / 10);
    }
    let paced_after = silent.elapsed();
    beat(3)?;
    let (state, _) = kernel.state(&id)?;
    kernel.shutdown(Shutdown::Drain);
    println!(
        "one process: 9 beats sensed; 4 paces in the {paced_after:.2?} of silence (one per {INTERVAL:?}); now {} (last pulse {}, {} paces)",
        state.state_name(),
        state.last_pulse(),
        state.paced()
    );

    // 2. Across a crash: the device paces in a child, which is SIGKILLed and restarted.
    let dir = tmp.path().join("crash");
    std::fs::create_dir_all(&dir)?;
    let run =
        |pulses: u64, then: &dyn Fn(&std::path::Path)| -> Result<(), Box<dyn std::error::Error>> {
            let mut child = Command::new(std::env::current_exe()?)
                .env("FSM_PACEMAKER_CHILD", &dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let mut stdin = child.stdin.take().ok_or("no stdin")?;
            let mut acks = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
            for at in 1..=pulses {
                writeln!(stdin, "pulse {at}")?;
                stdin.flush()?;
                acks.next().ok_or("the device died")??;
            }
            then(&dir);
            child.kill()?; // SIGKILL
            child.wait()?;
            Ok(())
        };
    let wait_for = |n: usize| {
        move |dir: &std::path::Path| {
            while pacemaker::paces(dir).len() < n {
                std::thread::sleep(INTERVAL / 10);
            }
        }
    };
    run(5, &wait_for(2))?;
    let killed = pacemaker::stored(&dir).ok_or("nothing stored")?;
    let before = pacemaker::paces(&dir);
    run(0, &wait_for(before.len() + 2))?;
    let after = pacemaker::paces(&dir);
    let stored = pacemaker::stored(&dir).ok_or("nothing stored")?;
    let rising = after.windows(2).all(|w| w[0] < w[1]);
    println!(
        "across a SIGKILL: killed while {} (last pulse {}, {} paces); the next process kept pacing: paces {:?} (each once: {rising}); stored {} (last pulse {}, {} paces)",
        killed.state_name(),
        killed.last_pulse(),
        killed.paced(),
        after,
        stored.state_name(),
        stored.last_pulse(),
        stored.paced()
    );
    if !rising || stored.last_pulse() != 5 {
        return Err("the pacemaker lost its kernel across the crash".into());
    }
    Ok(())
}
