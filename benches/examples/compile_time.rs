//! What a machine costs at compile time: generates machines of 10, 50 and 200 states (events
//! `Next`, `Prev` and `Cancel`: a ring each way plus a cancel from every state into a terminal
//! `Cancelled`, so 3N transitions) written with this crate's derive (`plain` transitions, no
//! handlers), with smlang and with rust-fsm, and the same two enums without any derive as the
//! baseline; then times a `cargo check` and a `cargo build` (dev profile) of each crate from a
//! clean state of that crate (no incremental cache), with its dependencies already built (what
//! a user pays for their own crate on every change of the machine); the faster of two runs.
//! `fsm_superstates` is the same machine with the states in superstates of ten (20 for 200
//! states), each declaring `Cancel` once instead of once per state: the same table after the
//! derive lowers the hierarchy.
//!
//! ```text
//! cargo run --release -p fsm-benches --example compile_time [-- 10,50,200]
//! ```
//!
//! Prints a table, and each derive's cost over the baseline per transition, so that growth
//! worse than linear shows.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const KINDS: [&str; 5] = ["baseline", "fsm", "fsm_superstates", "smlang", "rust_fsm"];

fn state(i: usize) -> String {
    format!("S{i}")
}

/// The source of one machine of `n` states.
fn source(kind: &str, n: usize) -> String {
    let mut s = String::new();
    let next = |i: usize| state((i + 1) % n);
    let prev = |i: usize| state((i + n - 1) % n);
    match kind {
        "baseline" => {
            s.push_str("#[derive(Debug, Clone, Copy, PartialEq, Eq)]\npub enum Machine {\n");
            for i in 0..n {
                let _ = writeln!(s, "    {},", state(i));
            }
            s.push_str("    Cancelled,\n}\n\n#[derive(Debug, Clone, Copy, PartialEq, Eq)]\npub enum Cmd { Next, Prev, Cancel }\n");
        }
        "fsm" => {
            s.push_str("use fsm_core::{Event, StateMachine};\n\n#[derive(StateMachine, Debug, Clone, Copy, PartialEq, Eq)]\n#[fsm(event = Cmd)]\npub enum Machine {\n");
            for i in 0..n {
                let initial = if i == 0 { "initial, " } else { "" };
                let _ = writeln!(
                    s,
                    "    #[fsm({initial}on(Next => {}, plain), on(Prev => {}, plain), on(Cancel => Cancelled, plain))]\n    {},",
                    next(i),
                    prev(i),
                    state(i)
                );
            }
            s.push_str("    #[fsm(terminal)]\n    Cancelled,\n}\n\n#[derive(Event, Debug, Clone, Copy, PartialEq, Eq)]\npub enum Cmd { Next, Prev, Cancel }\n");
        }
        "fsm_superstates" => {
            let groups = n.div_ceil(10);
            s.push_str("use fsm_core::{Event, StateMachine};\n\n#[derive(StateMachine, Debug, Clone, Copy, PartialEq, Eq)]\n#[fsm(\n    event = Cmd,\n");
            for g in 0..groups {
                let _ = writeln!(
                    s,
                    "    superstate(G{g}, initial = {}, on(Cancel => Cancelled, plain)),",
                    state(g * 10)
                );
            }
            s.push_str(")]\npub enum Machine {\n");
            for i in 0..n {
                let initial = if i == 0 { "initial, " } else { "" };
                let _ = writeln!(
                    s,
                    "    #[fsm({initial}parent = G{}, on(Next => {}, plain), on(Prev => {}, plain))]\n    {},",
                    i / 10,
                    next(i),
                    prev(i),
                    state(i)
                );
            }
            s.push_str("    #[fsm(terminal)]\n    Cancelled,\n}\n\n#[derive(Event, Debug, Clone, Copy, PartialEq, Eq)]\npub enum Cmd { Next, Prev, Cancel }\n");
        }
        "smlang" => {
            s.push_str("use smlang::statemachine;\n\nstatemachine! {\n    transitions: {\n");
            for i in 0..n {
                let star = if i == 0 { "*" } else { "" };
                let _ = writeln!(s, "        {star}{} + Next = {},", state(i), next(i));
                let _ = writeln!(s, "        {} + Prev = {},", state(i), prev(i));
                let _ = writeln!(s, "        {} + Cancel = Cancelled,", state(i));
            }
            s.push_str(
                "    },\n}\n\npub struct Context;\nimpl StateMachineContext for Context {}\n",
            );
        }
        "rust_fsm" => {
            s.push_str("use rust_fsm::*;\n\nstate_machine! {\n    pub machine(S0)\n\n");
            for i in 0..n {
                let _ = writeln!(
                    s,
                    "    {} => {{ Next => {}, Prev => {}, Cancel => Cancelled }},",
                    state(i),
                    next(i),
                    prev(i)
                );
            }
            s.push_str("}\n");
        }
        other => unreachable!("unknown kind {other}"),
    }
    s
}

fn member(kind: &str, n: usize) -> String {
    format!("m_{kind}_{n}")
}

fn run(dir: &Path, target: &Path, args: &[&str]) -> Result<Duration, String> {
    let started = Instant::now();
    let out = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        // Cold means cold: no incremental cache of an earlier build of the crate.
        .env("CARGO_INCREMENTAL", "0")
        .output()
        .map_err(|e| format!("cargo did not start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(started.elapsed())
}

fn main() -> Result<(), String> {
    let sizes: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "10,50,200".into())
        .split(',')
        .map(|n| n.trim().parse().map_err(|e| format!("bad size {n:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let root: PathBuf =
        std::env::temp_dir().join(format!("fsm-compile-time-{}", std::process::id()));
    let core = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fsm-core")
        .canonicalize()
        .map_err(|e| format!("fsm-core not found: {e}"))?;
    let mut members = Vec::new();
    for &n in &sizes {
        for kind in KINDS {
            let name = member(kind, n);
            let dir = root.join(&name);
            std::fs::create_dir_all(dir.join("src")).map_err(|e| e.to_string())?;
            let deps = match kind {
                "baseline" => String::new(),
                "fsm" | "fsm_superstates" => {
                    format!("fsm-core = {{ path = {:?} }}\n", core.display().to_string())
                }
                "smlang" => "smlang = \"0.8\"\n".to_owned(),
                _ => "rust-fsm = \"0.8\"\n".to_owned(),
            };
            std::fs::write(
                dir.join("Cargo.toml"),
                format!("[package]\nname = \"{name}\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n[dependencies]\n{deps}"),
            )
            .map_err(|e| e.to_string())?;
            std::fs::write(dir.join("src/lib.rs"), source(kind, n)).map_err(|e| e.to_string())?;
            members.push(name);
        }
    }
    let list: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    std::fs::write(
        root.join("Cargo.toml"),
        format!(
            "[workspace]\nresolver = \"2\"\nmembers = [{}]\n",
            list.join(", ")
        ),
    )
    .map_err(|e| e.to_string())?;
    let target = root.join("target");
    eprintln!("building the dependencies once in {} ...", root.display());
    run(&root, &target, &["check", "--workspace", "--quiet"])?;
    run(&root, &target, &["build", "--workspace", "--quiet"])?;

    println!("| states | transitions | crate | cargo check | cargo build |");
    println!("| --- | --- | --- | --- | --- |");
    let mut results = Vec::new();
    for &n in &sizes {
        for kind in KINDS {
            let name = member(kind, n);
            // The faster of two runs of each, from a clean state of the crate each time.
            let mut times = [Duration::MAX; 2];
            for _ in 0..2 {
                for (i, cmd) in ["check", "build"].into_iter().enumerate() {
                    run(&root, &target, &["clean", "-p", &name, "--quiet"])?;
                    times[i] = times[i].min(run(&root, &target, &[cmd, "-p", &name, "--quiet"])?);
                }
            }
            println!(
                "| {n} | {} | {kind} | {:.2} s | {:.2} s |",
                3 * n,
                times[0].as_secs_f64(),
                times[1].as_secs_f64()
            );
            results.push((n, kind, times));
        }
    }
    println!("\nover the baseline, per transition (check / build):");
    for &n in &sizes {
        let base = results
            .iter()
            .find(|(m, k, _)| *m == n && *k == "baseline")
            .map(|r| r.2)
            .unwrap_or_default();
        for kind in &KINDS[1..] {
            if let Some((_, _, t)) = results.iter().find(|(m, k, _)| *m == n && k == kind) {
                let per =
                    |i: usize| (t[i].as_secs_f64() - base[i].as_secs_f64()) * 1e3 / (3 * n) as f64;
                println!("  {n} states, {kind}: {:.2} ms / {:.2} ms", per(0), per(1));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
