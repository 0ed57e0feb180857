//! A cluster you can start: a throwaway PostgreSQL (or `--url`), three node processes, and a
//! load that submits through the inbox while a nemesis SIGKILLs one node and pauses another
//! (SIGSTOP) past its lease, in turn. At the end a checker reads the database and prints the
//! commands accepted, applied exactly once, lost (0), the takeover times and each node's
//! share.
//!
//! ```text
//! cargo run --example cluster                       # throwaway server, 6 faults
//! cargo run --example cluster -- --faults 20 --url "host=/run/postgresql user=fsm dbname=fsm"
//! ```
//!
//! Every node is this same program, started as `cluster node NAME URL`.

use std::process::Command;

use fsm_examples::cluster::{self, Run, Timing};
use fsm_persist::postgres::{Config, TestServer};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("node") {
        let config: Config = args[3].parse().expect("a connection string");
        cluster::run_node(&config, &args[2], Timing::default());
    }
    let mut faults = 6;
    let mut url = None;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--faults" => {
                faults = args[i + 1].parse().expect("--faults N");
                i += 1;
            }
            "--url" => {
                url = Some(args[i + 1].clone());
                i += 1;
            }
            other => {
                eprintln!("unknown argument {other:?}; use --faults N, --url CONNECTION");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    let server;
    let config: Config = match url {
        Some(u) => u.parse().expect("--url: a PostgreSQL connection string"),
        None => {
            server = TestServer::start().unwrap_or_else(|e| {
                eprintln!("cannot start a throwaway PostgreSQL ({e}); pass --url");
                std::process::exit(1)
            });
            server.config()
        }
    };
    let url = cluster::config_string(&config);
    let exe = std::env::current_exe().expect("this program's path");
    let spawn = |name: &str| {
        let mut c = Command::new(&exe);
        c.args(["node", name, &url]);
        cluster::spawn_node(c)
    };
    let run = Run {
        nodes: 3,
        machines: 200,
        threads: 4,
        batch: 20,
        cycles: faults,
        seed: fastrand::u64(..),
        timing: Timing::default(),
    };
    println!(
        "cluster: 3 nodes, {} partitions, lease {:?}; {} faults (seed {})",
        cluster::PARTITIONS,
        run.timing.lease,
        run.cycles,
        run.seed
    );
    let r = cluster::orchestrate(&config, &run, &spawn, None);
    let rep = &r.report;
    for f in &r.faults {
        match f.takeover {
            Some(t) => println!(
                "  {} {}: its partitions moved in {:.2} s",
                f.kind,
                f.node,
                t.as_secs_f64()
            ),
            None => println!(
                "  {} {}: its partitions did not all move (it held none, or none were free)",
                f.kind, f.node
            ),
        }
    }
    let secs = r.elapsed.as_secs_f64();
    for (node, n) in &rep.per_node {
        println!(
            "  node {node}: {n} commands applied ({:.0}/s over the run)",
            *n as f64 / secs
        );
    }
    println!(
        "accepted {}, applied exactly once {}, lost {}, applied twice or missing in a snapshot {}, out of order {}, never sent {}, wrong answers {}; refused Full {}, unknown submits that landed {}; answers found by polling {}; {:.1} s",
        rep.accepted,
        rep.applied,
        rep.lost,
        rep.mismatched.len(),
        rep.out_of_order.len(),
        rep.foreign,
        rep.wrong_answers,
        rep.refused_full,
        rep.unknown_landed,
        r.polled,
        secs
    );
    if !r.drained || !rep.ok() {
        eprintln!("the cluster lost or repeated commands: {rep:#?}");
        std::process::exit(1);
    }
    println!("every accepted command applied exactly once");
}
