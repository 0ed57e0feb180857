//! The cluster under a nemesis, as separate processes: three nodes over one PostgreSQL server
//! started by the test, submitting clients, and a nemesis that SIGKILLs nodes (restarting
//! them) and SIGSTOPs them past their lease (resuming them), cycle after cycle. A checker then
//! reads the database: every accepted command applied exactly once, in per-machine submission
//! order; every answer a client got matches the stored history; nothing applied that no
//! client sent.
//!
//! `FSM_NEMESIS_CYCLES` sets the faults (default 24); `FSM_NEMESIS_SEED` replays a run.
//!
//! With root (as in CI), each node runs in a network namespace of its own, reaching the
//! database over TCP on a veth pair, and the nemesis also cuts a node off by taking its link
//! down. Where namespaces cannot be made the test says so loudly and cuts through a TCP proxy
//! per node instead (`FSM_NEMESIS_PROXY=1` forces that); in CI (`CI` set) missing namespaces
//! are a failure.
#![allow(missing_docs)]

use std::process::Command;

use fsm_examples::cluster::{self, Cut, Network, Proxies, Run, Timing};
use fsm_persist::postgres::{Config, Listen, TestServer, TEST_USER};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Ok(name) = std::env::var("FSM_NEMESIS_NODE") {
        let config: Config = std::env::var("FSM_NEMESIS_URL")
            .expect("the node's database")
            .parse()
            .expect("a connection string");
        cluster::run_node(&config, &name, Timing::default());
    }
    // libtest's arguments (--list, filters) are not ours: answer a listing with nothing.
    if args.iter().any(|a| a == "--list") {
        return;
    }
    // Namespaces, or (said loudly) proxies; `FSM_NEMESIS_PROXY=1` forces the proxies.
    let forced = std::env::var_os("FSM_NEMESIS_PROXY").is_some();
    let net = if forced {
        Err("FSM_NEMESIS_PROXY is set".to_owned())
    } else {
        Network::create(3)
    };
    let net = match net {
        Ok(net) => Some(net),
        Err(why) => {
            assert!(
                forced || std::env::var_os("CI").is_none(),
                "CI must cut the network with namespaces, and cannot make them: {why}"
            );
            eprintln!(
                "\n==================== NO NETWORK NAMESPACES ====================\n\
                 cluster_nemesis: network namespaces cannot be made here ({why}).\n\
                 Falling back to a TCP proxy per node: a cut closes the node's\n\
                 connections and refuses new ones, which a node notices at once,\n\
                 where a real partition leaves it hanging. Run as root (CI does) for\n\
                 cuts by namespace.\n\
                 ===============================================================\n"
            );
            None
        }
    };
    let listen = net.as_ref().map_or(Listen::Tcp, |n| Listen::Addresses {
        listen: n.listen(),
        allow: n.allow(),
    });
    let Some(server) = TestServer::start_or_skip_with("cluster_nemesis", listen) else {
        return;
    };
    let proxies = match &net {
        Some(_) => None,
        None => Some(
            Proxies::start(3, ([127, 0, 0, 1], server.port()).into()).expect("start the proxies"),
        ),
    };
    let cutter: &dyn Cut = match (&net, &proxies) {
        (Some(n), _) => n,
        (None, Some(p)) => p,
        (None, None) => unreachable!("one of the two is made above"),
    };
    let cycles: usize = std::env::var("FSM_NEMESIS_CYCLES").map_or(24, |v| v.parse().unwrap());
    let seed: u64 = std::env::var("FSM_NEMESIS_SEED")
        .map_or_else(|_| fastrand::u64(..), |v| v.parse().unwrap());
    println!(
        "cluster_nemesis: {cycles} faults ({}), FSM_NEMESIS_SEED={seed}",
        if net.is_some() {
            "kill, pause, cut by namespace"
        } else {
            "kill, pause, cut by proxy"
        }
    );
    let config = server.config();
    let exe = std::env::current_exe().unwrap();
    let spawn = |name: &str| {
        let mut c;
        let url;
        match &net {
            Some(net) => {
                let i: usize = name.trim_start_matches('n').parse().unwrap();
                c = net.command(i, &exe);
                url = cluster::config_string(&server.tcp_config(&net.gateway(i)));
            }
            None => {
                let i: usize = name.trim_start_matches('n').parse().unwrap();
                // A config of its own: `Config::port` adds a port, it does not replace one.
                let mut via = Config::new();
                via.host("127.0.0.1")
                    .port(proxies.as_ref().expect("made above").port(i))
                    .user(TEST_USER)
                    .dbname("postgres");
                c = Command::new(&exe);
                url = cluster::config_string(&via);
            }
        }
        c.env("FSM_NEMESIS_NODE", name).env("FSM_NEMESIS_URL", url);
        cluster::spawn_node(c)
    };
    let run = Run {
        nodes: 3,
        machines: 60,
        threads: 3,
        batch: 10,
        cycles,
        seed,
        timing: Timing::default(),
    };
    let r = cluster::orchestrate(&config, &run, &spawn, Some(cutter));
    let rep = &r.report;
    for f in &r.faults {
        println!("  {} {}: takeover {:?}", f.kind, f.node, f.takeover);
    }
    println!(
        "accepted {}, applied {}, lost {}, per node {:?}, {:.1} s",
        rep.accepted,
        rep.applied,
        rep.lost,
        rep.per_node,
        r.elapsed.as_secs_f64()
    );
    assert!(
        r.drained,
        "commands were still pending two minutes after the load stopped"
    );
    assert!(rep.accepted > 0, "the load submitted nothing");
    assert!(
        rep.ok(),
        "the history does not check out (seed {seed}): {rep:#?}"
    );
    assert!(
        r.faults.iter().any(|f| f.takeover.is_some()),
        "no fault moved a partition: the nemesis tested nothing"
    );
    {
        assert!(
            r.faults
                .iter()
                .any(|f| f.kind == "cut" && f.takeover.is_some()),
            "no network cut moved a partition"
        );
    }
    // The checker can fail: a decided command made pending again is found lost (and its
    // machine's snapshot no longer matches its applied rows), a row nobody sent is found.
    let mut db = config.connect(postgres::NoTls).unwrap();
    db.batch_execute(&format!(
        "UPDATE {s}.fsm_snapshots_idone
         SET slots = slots[2:], statuses = statuses[2:], seqs = seqs[2:],
             transitions = transitions[2:], details = details[2:], epochs = epochs[2:]
         WHERE id = (SELECT min(id) FROM {s}.fsm_snapshots_idone);
         WITH b AS (
             INSERT INTO {s}.fsm_snapshots_ibatch (n, partitions, machines, keys, events, open)
             VALUES (1, '{{0}}', '{{acct-0}}', '{{never-sent}}', '{{\"{{}}\"}}', false)
             RETURNING id
         )
         INSERT INTO {s}.fsm_snapshots_idone (batch, slots, statuses, seqs, transitions, details, epochs, decided_by)
         SELECT id, '{{1}}', '{{applied}}', '{{1}}', '{{NULL}}', '{{NULL}}', '{{1}}', 'nobody' FROM b;",
        s = cluster::SCHEMA
    ))
    .unwrap();
    let tampered = cluster::check(&config, &r.log, run.machines);
    assert_eq!(tampered.lost, 1, "{tampered:#?}");
    assert_eq!(tampered.foreign, 1, "{tampered:#?}");
    assert_eq!(tampered.mismatched.len(), 1, "{tampered:#?}");
    println!("test result: ok. 1 passed; 0 failed; 0 ignored");
}
