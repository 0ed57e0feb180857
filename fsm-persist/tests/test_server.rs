//! The throwaway PostgreSQL server never outlives the process that started it, however that
//! process ends: here by a signal to its whole process group, as a terminal's Ctrl-C,
//! `timeout` or a cancelled CI job sends.

#![cfg(feature = "postgres-server")]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fsm_persist::postgres::{find_binaries, required, TestServer};

const CHILD: &str = "FSM_TEST_SERVER_CHILD";
const TEST: &str = "a_server_stops_when_the_group_of_the_process_that_started_it_is_signalled";

#[test]
fn a_server_stops_when_the_group_of_the_process_that_started_it_is_signalled() {
    if std::env::var_os(CHILD).is_some() {
        // The child: start a server, say where it is, and wait to be killed.
        let server = TestServer::start().expect("the child starts a server");
        let pid = std::fs::read_to_string(server.socket_dir().join("data/postmaster.pid"))
            .expect("the server wrote its pid")
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        // Straight to the pipe: the test harness captures `println!`.
        let mut out = std::io::stdout();
        writeln!(
            out,
            "server-dir={} pid={pid}",
            server.socket_dir().display()
        )
        .unwrap();
        out.flush().unwrap();
        // Until killed, or until the parent is gone (its end of stdin closes): a parent
        // that failed early leaves nothing running.
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        drop(server);
        std::process::exit(0);
    }
    if find_binaries().is_none() {
        assert!(!required(), "PostgreSQL is required here but not installed");
        eprintln!(
            "\n==================== SKIPPED ====================\n\
             {TEST}: PostgreSQL server binaries are not installed here, so this test\n\
             DID NOT RUN. CI installs them and sets FSM_REQUIRE_POSTGRES=1.\n\
             =================================================\n"
        );
        return;
    }
    // The child in a group of its own, so that signalling its group spares this process.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--test-threads=1"])
        .env(CHILD, "1")
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The harness prints the test's name first, on the same line.
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.split_once("server-dir=").map(|(_, said)| said.to_owned()))
        .expect("the child said where its server is");
    let (dir, pid) = line.split_once(" pid=").unwrap();
    let (dir, pid): (PathBuf, i32) = (dir.into(), pid.parse().unwrap());
    assert!(alive(pid), "the server runs");
    assert!(
        signal("-TERM", &format!("-{}", child.id())),
        "the child's group is signalled"
    );
    child.wait().unwrap();
    // The watchdog stops the server and removes its directory once the child is gone; a
    // generous bound only decides when to give up.
    let start = Instant::now();
    while (alive(pid) || dir.exists()) && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let outlived = alive(pid) || dir.exists();
    if outlived {
        // Leave nothing behind for the next run before failing.
        signal("-QUIT", &pid.to_string());
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(
        !outlived,
        "the server (pid {pid}, {}) outlived its process group's signal",
        dir.display()
    );
}

/// Whether process `pid` runs (a zombie has ended).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

/// `kill SIGNAL -- TARGET` (a negative target is a process group): whether it succeeded.
fn signal(signal: &str, target: &str) -> bool {
    Command::new("kill")
        .args([signal, "--", target])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
