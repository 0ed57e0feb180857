//! The real `fsm` binary against a data directory the registrar's kernel wrote (clean, then
//! with a flipped bit and a torn log), a SQLite file, a PostgreSQL database, and a running
//! kernel's admin socket; plus the library entry with the registrar's decoder.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fsm_core::kernel::admin::AdminConfig;
use fsm_core::kernel::Kernel;
use fsm_core::store::{Codec, MachineId, SnapshotStoreExt};
use fsm_examples::registrar::{Order, OrderCmd};
use fsm_persist::SqliteStore;

fn fsm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fsm"))
        .args(args)
        .output()
        .expect("the fsm binary runs")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn order(i: usize) -> MachineId {
    MachineId::new(format!("order-{i:03}")).unwrap()
}

fn pay() -> OrderCmd {
    OrderCmd::Pay {
        cents: 1200,
        card_token: "tok_SECRET".into(),
    }
}

/// A registrar data directory: 40 orders submitted (compacted into snapshot files by a
/// reopen), then 10 of them paid (still in the log).
fn registrar_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let kernel = fsm_persist::file_kernel(dir.path(), |_| Order::Draft)
            .shards(2)
            .start()
            .unwrap();
        for i in 0..40 {
            let cmd = if round == 0 {
                OrderCmd::Submit {
                    domain: format!("d{i}.example"),
                }
            } else if i < 10 {
                pay()
            } else {
                continue;
            };
            kernel.submit(&order(i), cmd).unwrap().wait().unwrap();
        }
        kernel.wait_idle();
    }
    dir
}

fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

#[test]
fn verify_ls_export_and_compact_a_clean_data_directory() {
    let dir = registrar_dir();
    let path = dir.path().to_str().unwrap();
    assert!(
        !files_ending(dir.path(), ".log").is_empty(),
        "the paid orders are in the log"
    );

    let verified = fsm(&["verify", path]);
    let report = text(&verified);
    assert_eq!(verified.status.code(), Some(0), "{report}");
    assert!(report.contains("40 snapshot files"), "{report}");
    assert!(report.contains("10 snapshots"), "{report}");
    assert!(report.contains("40 machines: 40 verified"), "{report}");
    assert!(report.trim_end().ends_with("clean"), "{report}");

    let listed = text(&fsm(&["ls", path]));
    assert!(listed.contains("40 machines"), "{listed}");
    let line = listed.lines().find(|l| l.starts_with("order-003")).unwrap();
    assert!(
        line.contains("Order") && line.contains("log"),
        "paid: newest in the log: {line}"
    );
    let line = listed.lines().find(|l| l.starts_with("order-030")).unwrap();
    assert!(line.contains("file"), "{line}");

    let exported = fsm(&["export", "--json", path]);
    assert_eq!(exported.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = text(&exported)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40);
    assert_eq!(lines[3]["id"], "order-003");
    assert_eq!(lines[3]["machine"], "Order");
    assert_eq!(lines[3]["seq"], 2);
    assert!(lines[3]["payload_bytes"].as_u64().unwrap() > 2);
    assert_eq!(lines[3]["state_name"], "Paid");
    assert!(
        lines[3].get("payload_hex").is_none(),
        "the raw payload only with --reveal"
    );
    let revealed = text(&fsm(&["export", "--json", "--reveal", path]));
    let first: serde_json::Value = serde_json::from_str(revealed.lines().next().unwrap()).unwrap();
    assert!(first["payload_hex"].as_str().unwrap().len() > 2, "{first}");
    assert!(
        lines[3].get("state").is_none(),
        "the plain binary decodes no machine type"
    );

    let compacted = fsm(&["compact", path]);
    assert_eq!(compacted.status.code(), Some(0), "{}", text(&compacted));
    assert!(
        files_ending(dir.path(), ".log").is_empty(),
        "the log was folded into the files"
    );
    assert_eq!(fsm(&["verify", path]).status.code(), Some(0));
}

#[test]
fn verify_reports_a_flipped_bit_and_a_torn_log_and_fails() {
    let dir = registrar_dir();
    let path = dir.path().to_str().unwrap();
    // A flipped bit in an order that lives only in its file.
    let victim = dir.path().join("order-030.snap");
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&victim, &bytes).unwrap();
    // A torn log: its last record loses its last bytes.
    let log = files_ending(dir.path(), ".log").pop().unwrap();
    let len = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 7)
        .unwrap();

    let verified = fsm(&["verify", path]);
    let report = text(&verified);
    assert_eq!(
        verified.status.code(),
        Some(1),
        "damage is exit status 1: {report}"
    );
    assert!(report.contains("DAMAGED order-030.snap"), "{report}");
    let log_name = log.file_name().unwrap().to_string_lossy().into_owned();
    assert!(report.contains(&format!("DAMAGED {log_name}")), "{report}");
    assert!(report.contains("without a valid snapshot"), "{report}");
    assert!(report.trim_end().ends_with("DAMAGE FOUND"), "{report}");
    // Verifying changed nothing: the damage is still there to repair.
    assert_eq!(std::fs::read(&victim).unwrap(), bytes);
    assert_eq!(std::fs::metadata(&log).unwrap().len(), len - 7);

    let listed = text(&fsm(&["ls", path]));
    let line = listed.lines().find(|l| l.starts_with("order-030")).unwrap();
    assert!(line.contains("DAMAGED"), "{line}");
    let exported = fsm(&["export", "--json", path]);
    assert_eq!(exported.status.code(), Some(1));
    assert!(text(&exported).contains("\"damaged\""));
}

#[test]
fn a_service_binary_decodes_its_own_machine_type() {
    let dir = registrar_dir();
    let path = dir.path().to_str().unwrap();
    let decoder = fsm_cli::decoder(Codec::<Order>::new(1));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = fsm_cli::run_from(
        Some(&*decoder),
        ["fsm", "show", path, "order-003"],
        &mut out,
        &mut err,
    );
    let shown = String::from_utf8(out).unwrap();
    assert_eq!(status, fsm_cli::Status::Ok, "{shown}");
    assert!(shown.contains("state Paid"), "{shown}");
    assert!(shown.contains("d3.example"), "{shown}");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    fsm_cli::run_from(
        Some(&*decoder),
        ["fsm", "export", "--json", path],
        &mut out,
        &mut err,
    );
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["state"]["Paid"]["domain"], "d0.example", "{first}");
    assert_eq!(first["state"]["Paid"]["cents"], 1200, "{first}");
    // The plain binary says what it cannot do.
    let plain = text(&fsm(&["show", path, "order-003"]));
    assert!(plain.contains("decodes no `Order`"), "{plain}");
}

#[test]
fn sqlite_and_postgres_stores_are_verified_and_listed_too() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.sqlite");
    {
        let store = SqliteStore::open(&file).unwrap();
        let codec = Codec::<Order>::new(1);
        for i in 0..5 {
            store.save(&order(i), None, &Order::Draft, &codec).unwrap();
        }
    }
    let path = file.to_str().unwrap();
    let verified = fsm(&["verify", path]);
    assert_eq!(verified.status.code(), Some(0), "{}", text(&verified));
    assert!(text(&verified).contains("5 machines: 5 verified"));
    assert!(text(&fsm(&["ls", path])).contains("5 machines"));
    let compact = fsm(&["compact", path]);
    assert_eq!(compact.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&compact.stderr).contains("file store"));

    let Some(server) = fsm_persist::postgres::TestServer::shared() else {
        eprintln!(
            "SKIPPED: the PostgreSQL half of this test (no server binaries; CI installs them)"
        );
        return;
    };
    let store = fsm_persist::postgres::PostgresStore::builder(server.config())
        .schema("cli_ls")
        .open()
        .unwrap();
    let codec = Codec::<Order>::new(1);
    for i in 0..3 {
        store.save(&order(i), None, &Order::Draft, &codec).unwrap();
    }
    let url = format!(
        "postgresql://{}@{}/postgres",
        fsm_persist::postgres::TEST_USER,
        server
            .socket_dir()
            .display()
            .to_string()
            .replace('/', "%2F")
    );
    let verified = fsm(&["verify", &url, "--schema", "cli_ls"]);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}{}",
        text(&verified),
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(
        text(&verified).contains("3 machines: 3 verified"),
        "{}",
        text(&verified)
    );
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_online_commands_read_a_running_kernel() {
    let data = tempfile::tempdir().unwrap();
    let kernel: Kernel<Order> = fsm_persist::file_kernel(data.path(), |_| Order::Draft)
        .shards(2)
        .start()
        .unwrap();
    let socket = data.path().with_extension("sock");
    let _admin = kernel.serve_admin(AdminConfig::unix(&socket)).unwrap();
    let s = socket.to_str().unwrap();
    for i in 0..6 {
        let cmd = OrderCmd::Submit {
            domain: format!("d{i}.example"),
        };
        kernel.submit(&order(i), cmd).unwrap().wait().unwrap();
    }
    kernel.submit(&order(1), pay()).unwrap().wait().unwrap();

    // `top --once`: one frame from two samples an interval apart; commands keep arriving.
    let busy = std::thread::scope(|scope| {
        let k = &kernel;
        let feeder = scope.spawn(move || {
            // The first cancel commits, the 199 after it are refused (the order is over).
            for _ in 0..200 {
                let _ = k.submit(&order(5), OrderCmd::Cancel).map(|t| t.wait());
            }
        });
        let frame = fsm(&["top", s, "--once", "--interval-ms", "200"]);
        feeder.join().unwrap();
        frame
    });
    let frame = text(&busy);
    assert_eq!(busy.status.code(), Some(0), "{frame}");
    assert!(frame.starts_with("fsm top: Order"), "{frame}");
    assert!(
        frame.contains("commits/s") && frame.contains("p99 us"),
        "{frame}"
    );
    assert!(frame.lines().any(|l| l.starts_with("all ")), "{frame}");
    assert!(frame.contains("busiest machines"), "{frame}");

    let traced = text(&fsm(&["trace", s, "--machine", "order-001"]));
    let lines: Vec<&str> = traced.lines().collect();
    assert_eq!(lines.len(), 2, "{traced}");
    assert!(
        lines[1].contains("--Pay--> Paid") && lines[1].contains("committed"),
        "{traced}"
    );
    let json_lines = text(&fsm(&["trace", s, "--event", "Pay", "--json"]));
    let entry: serde_json::Value =
        serde_json::from_str(json_lines.lines().next().unwrap()).unwrap();
    assert_eq!(entry["machine"], "order-001");

    let shown = text(&fsm(&["show", s, "order-001"]));
    assert!(
        shown.starts_with("order-001: Paid (durable sequence 2)"),
        "{shown}"
    );
    assert!(shown.contains("d1.example"), "{shown}");

    assert!(text(&fsm(&["quarantined", s])).contains("no machine is quarantined"));
    assert!(text(&fsm(&["escalations", s])).contains("no worker escalated"));
    let release = fsm(&["release", s, "order-001"]);
    assert_eq!(release.status.code(), Some(1), "nothing to release");
    let restart = fsm(&["restart-worker", s, "3"]);
    assert_eq!(restart.status.code(), Some(1), "there are no workers");
    let metrics: serde_json::Value = serde_json::from_slice(&fsm(&["metrics", s]).stdout).unwrap();
    assert_eq!(metrics["machine"], "Order");

    // `trace --follow` streams what happens after it started.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_fsm"))
        .args(["trace", s, "--machine", "order-004", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.contains("--Submit--> Submitted"),
        "the trace so far comes first: {first}"
    );
    // Only once the CLI says it follows is a new decision sure to be streamed: a client
    // that is connected may not have asked to watch yet (a loaded machine showed it).
    let mut told = BufReader::new(follower.stderr.take().unwrap()).lines();
    let following = told
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.starts_with("fsm: following"));
    assert_eq!(
        following.as_deref(),
        Some("fsm: following Order's decisions as they happen, at most 1000 a second (interrupt to stop)")
    );
    kernel.submit(&order(4), pay()).unwrap().wait().unwrap();
    let next = lines.next().unwrap().unwrap();
    assert!(next.contains("--Pay--> Paid"), "{next}");
    follower.kill().unwrap();
    follower.wait().unwrap();
    // The kernel's counts are exactly its commands': the admin traffic changed nothing.
    kernel.wait_idle();
    let counts = kernel.metrics().total.counts;
    assert_eq!(
        counts.committed,
        6 + 1 + 1 + 1,
        "submits, a pay, a cancel, a pay"
    );
    assert_eq!(counts.rejected, 199);
    assert_eq!(counts.submitted, 208);
}

#[test]
fn bad_arguments_and_unreachable_targets_are_errors_with_a_reason() {
    let nowhere = fsm(&["top", "/nonexistent/admin.sock", "--once"]);
    assert_eq!(nowhere.status.code(), Some(2));
    let err = String::from_utf8_lossy(&nowhere.stderr);
    assert!(err.contains("cannot connect to the admin socket"), "{err}");
    let unknown = fsm(&["frobnicate"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unrecognized subcommand"));
    let missing = fsm(&["verify", "/nonexistent/store"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("a store is a file store's directory")
    );
    let help = fsm(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help).contains("verify"));
}

/// A registrar whose registry is down: every registration fails and waits an hour for its
/// retry, so what the orders owe stays owed.
struct RegistryDown;

impl fsm_core::kernel::EffectWorker<Order> for RegistryDown {
    fn run(
        &mut self,
        _: &fsm_core::kernel::EffectCtx,
        _: &fsm_examples::registrar::OrderEffect,
    ) -> Result<Option<OrderCmd>, fsm_core::kernel::EffectError> {
        Err("the registry is down".into())
    }
}

#[test]
fn what_a_machine_owes_is_shown_online_and_offline() {
    let data = tempfile::tempdir().unwrap();
    let hour = Duration::from_secs(3600);
    let kernel: Kernel<Order> = fsm_persist::file_kernel(data.path(), |_| Order::Draft)
        .shards(1)
        .effects(1, |_| RegistryDown)
        .retry(fsm_core::kernel::RetryPolicy::new(hour, 1, hour, 3).unwrap())
        .start()
        .unwrap();
    let socket = data.path().with_extension("sock");
    let _admin = kernel.serve_admin(AdminConfig::unix(&socket)).unwrap();
    let s = socket.to_str().unwrap();
    let submit = OrderCmd::Submit {
        domain: "owed.example".into(),
    };
    kernel.submit(&order(0), submit).unwrap().wait().unwrap();
    kernel.submit(&order(0), pay()).unwrap().wait().unwrap();
    kernel.wait_idle();
    wait_for("the first attempt failed", || {
        kernel.owed(&order(0)).unwrap()[0].attempts == 1
    });

    let shown = text(&fsm(&["show", s, "order-000"]));
    assert!(shown.contains("owes 1 effect(s)"), "{shown}");
    assert!(
        shown.contains("order-000/2/0  1 failed attempt(s), next attempt at 20"),
        "{shown}"
    );
    let frame = text(&fsm(&["top", s, "--once", "--interval-ms", "20"]));
    assert!(frame.contains("effects owed 1"), "{frame}");
    assert!(frame.contains("retries"), "{frame}");
    drop(_admin);
    drop(kernel);

    // Offline, from the store: the same effect, not running.
    let dir = data.path().to_str().unwrap();
    let shown = text(&fsm(&["show", dir, "order-000"]));
    assert!(
        shown.contains("order-000/2/0  1 failed attempt(s), next attempt at 20"),
        "{shown}"
    );
    let export = fsm(&["export", dir, "--json"]);
    let exported = text(&export);
    assert!(
        !exported.is_empty(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(exported.lines().next().unwrap()).unwrap();
    assert_eq!(line["owed"][0]["key"], "order-000/2/0");
    assert_eq!(line["owed"][0]["attempts"], 1);
    assert_eq!(line["owed"][0]["running"], false);
}

#[test]
fn submit_puts_a_command_through_a_clusters_inbox_and_inbox_shows_what_is_pending() {
    use fsm_examples::cluster::Account;
    use fsm_persist::postgres::{NodeBuilder, Ownership, PostgresStore, TestServer, TEST_USER};
    let Some(server) = TestServer::shared() else {
        eprintln!(
            "SKIPPED: the cluster half of the CLI tests (no server binaries; CI installs them)"
        );
        return;
    };
    let store = std::sync::Arc::new(
        PostgresStore::builder(server.config())
            .schema("cli_cluster")
            .ownership(
                Ownership::new("cli-node")
                    .partitions(4)
                    .heartbeat(Some(std::time::Duration::from_millis(200)))
                    // Long: nothing here waits for a lease to run out.
                    .lease(std::time::Duration::from_secs(30)),
            )
            .open()
            .unwrap(),
    );
    let kernel =
        fsm_core::kernel::Kernel::builder_shared(store.clone(), |_| Account::Open { total: 0 })
            .codec(Codec::new(1))
            .start()
            .unwrap();
    let node = NodeBuilder::new()
        .poll(std::time::Duration::from_millis(200))
        .start(kernel, store)
        .unwrap();
    let url = format!(
        "postgresql://{TEST_USER}@{}/postgres",
        server
            .socket_dir()
            .display()
            .to_string()
            .replace('/', "%2F")
    );
    let submit = |event: &str, key: &str| {
        fsm(&[
            "submit",
            &url,
            "acct-cli",
            event,
            "--key",
            key,
            "--wait-ms",
            "60000",
            "--schema",
            "cli_cluster",
        ])
    };
    let applied = submit(r#"{"Add":{"amount":5}}"#, "cli-1");
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    let out = text(&applied);
    assert!(
        out.contains("accepted: machine acct-cli key cli-1"),
        "{out}"
    );
    assert!(
        out.contains("applied: Open --Add--> Open (seq 1) [node cli-node]"),
        "{out}"
    );
    let id = MachineId::new("acct-cli").unwrap();
    assert_eq!(node.kernel().state(&id).unwrap().0.total(), 5);
    // An event of another build: decided, not applied (exit 1), and said why.
    let unknown = submit(r#"{"Refund":{"amount":5}}"#, "cli-2");
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(text(&unknown).contains("undecodable"), "{}", text(&unknown));
    // Not JSON: refused before anything is stored (exit 2).
    let bad = submit("{oops", "cli-3");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not JSON"));
    let pending = fsm(&["inbox", &url, "--schema", "cli_cluster"]);
    assert_eq!(pending.status.code(), Some(0));
    assert!(
        text(&pending).contains("0 pending in 0 of 4 partitions"),
        "{}",
        text(&pending)
    );
}

#[test]
fn the_rough_edges_are_gone() {
    // Every subcommand's help has examples.
    for sub in [
        "top",
        "trace",
        "show",
        "quarantined",
        "escalations",
        "release",
        "restart-worker",
        "metrics",
        "verify",
        "ls",
        "states",
        "export",
        "compact",
        "submit",
        "inbox",
        "ui",
    ] {
        let help = fsm(&[sub, "--help"]);
        assert_eq!(help.status.code(), Some(0), "{sub}");
        assert!(text(&help).contains("Example"), "{sub}: {}", text(&help));
    }

    // A reader that goes away ends the command quietly: exit 0, nothing on stderr.
    let dir = registrar_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fsm"))
        .args(["export", "--json", dir.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the pipe is closed before the first line is written
    let done = child.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&done.stderr), "");

    // A kernel with a small trace ring, run past it.
    let data = tempfile::tempdir().unwrap();
    let kernel: Kernel<Order> = fsm_persist::file_kernel(data.path(), Order::initial_state)
        .shards(1)
        .trace_capacity(16)
        .start()
        .unwrap();
    let socket = data.path().with_extension("sock");
    let _admin = kernel.serve_admin(AdminConfig::unix(&socket)).unwrap();
    let s = socket.to_str().unwrap();
    for i in 0..40 {
        let cmd = OrderCmd::Submit {
            domain: format!("d{i}.example"),
        };
        kernel.submit(&order(i), cmd).unwrap().wait().unwrap();
    }

    // No such machine: not found, exit 1, online and offline alike.
    let missing = fsm(&["show", s, "no-such"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("not_found: no machine `no-such`"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    assert_eq!(
        fsm(&["show", dir.path().to_str().unwrap(), "no-such"])
            .status
            .code(),
        Some(1)
    );

    // The first order's decision was overwritten: the trace says so instead of nothing.
    let gone = fsm(&["trace", s, "--machine", "order-000"]);
    assert_eq!(gone.status.code(), Some(0));
    assert_eq!(text(&gone), "");
    let note = String::from_utf8_lossy(&gone.stderr);
    assert!(
        note.contains("nothing matched")
            && note.contains("keeps the last 16 decisions")
            && note.contains("has overwritten 24"),
        "{note}"
    );
    // A recent one is there; the note still says that older matches may be gone.
    let recent = fsm(&["trace", s, "--machine", "order-039"]);
    assert_eq!(text(&recent).lines().count(), 1, "{}", text(&recent));
    let note = String::from_utf8_lossy(&recent.stderr);
    assert!(
        note.contains("older matches may be missing") && !note.contains("nothing matched"),
        "{note}"
    );
    // Asked only for what the ring still holds: nothing to say.
    let since = fsm(&["trace", s, "--since-ms", "1e9"]);
    assert_eq!(String::from_utf8_lossy(&since.stderr), "");

    // `top --once` into a pipe: whole headers, columns aligned under them.
    let frame = text(&fsm(&["top", s, "--once", "--interval-ms", "20"]));
    let header = frame
        .lines()
        .find(|l| l.starts_with("shard"))
        .unwrap_or_else(|| panic!("{frame}"));
    assert!(header.ends_with("quarantined"), "{frame}");
    let all = frame.lines().find(|l| l.starts_with("all")).unwrap();
    assert_eq!(
        all.len(),
        header.len(),
        "right-aligned under the header:\n{frame}"
    );
}

mod trial {
    use fsm_core::{Effects, Event, Refusal, StateMachine};
    use serde::{Deserialize, Serialize};
    use std::time::Duration;

    #[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[fsm(event = Cmd)]
    pub(crate) enum Trial {
        #[fsm(
            initial,
            state_timeout(min = 30 => Expire),
            on(Start => Open, with = start),
            on(Expire => Over, plain)
        )]
        Open,
        #[fsm(terminal)]
        Over,
    }

    #[derive(Event, Debug, Clone, Serialize, Deserialize)]
    pub(crate) enum Cmd {
        Start,
        Remind,
        Expire,
    }

    fn start(_: trial::Open, _: cmd::Start, fx: &mut Effects<()>) -> Result<trial::Open, Refusal> {
        fx.start_timer("remind", Duration::from_secs(3600), Cmd::Remind);
        Ok(trial::Open)
    }
}

#[test]
fn show_and_export_print_armed_timers_and_remembered_keys() {
    use fsm_core::kernel::{IdempotencyKey, Request};
    let data = tempfile::tempdir().unwrap();
    let kernel = fsm_persist::file_kernel(data.path(), trial::Trial::initial_state)
        .start()
        .unwrap();
    let socket = data.path().with_extension("sock");
    let admin = kernel.serve_admin(AdminConfig::unix(&socket)).unwrap();
    let id = MachineId::new("trial-1").unwrap();
    let start = Request::new(trial::Cmd::Start).with_key(IdempotencyKey::new("start-1").unwrap());
    kernel.submit(&id, start).unwrap().wait().unwrap();

    let online = text(&fsm(&["show", socket.to_str().unwrap(), "trial-1"]));
    assert!(online.contains("2 timer(s) armed:"), "{online}");
    assert!(
        online.contains("state timeout at")
            && online.contains("(armed for 1800000 ms), fires `Expire`"),
        "{online}"
    );
    assert!(
        online.contains("timer `remind` at")
            && online.contains("(armed for 3600000 ms), fires `Remind`"),
        "{online}"
    );
    assert!(
        online.contains("remembers 1 idempotency key(s)")
            && online.contains("start-1 in sequence 1: Open --Start--> Open"),
        "{online}"
    );
    drop(admin);
    drop(kernel);

    // Offline, from the directory: the same timers and key, without the machine's types.
    let dir = data.path().to_str().unwrap();
    let offline = text(&fsm(&["show", dir, "trial-1"]));
    assert!(offline.contains("2 timer(s) armed:"), "{offline}");
    assert!(offline.contains("timer `remind` at"), "{offline}");
    assert!(offline.contains("start-1 in sequence 1"), "{offline}");
    let exported = text(&fsm(&["export", "--json", dir]));
    let line: serde_json::Value = serde_json::from_str(exported.lines().next().unwrap()).unwrap();
    assert_eq!(line["timers"].as_array().unwrap().len(), 2, "{line}");
    assert_eq!(line["keys"][0]["key"], "start-1", "{line}");
    assert_eq!(line["keys"][0]["seq"], 1, "{line}");
}

/// The `state  machines` rows of `fsm states` output, as pairs.
fn state_rows(out: &str) -> Vec<(String, u64)> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let (name, n) = l.rsplit_once(char::is_whitespace)?;
            Some((name.trim().to_owned(), n.parse().ok()?))
        })
        .collect()
}

#[test]
fn machines_by_state_online_and_offline_on_every_store() {
    // 40 orders, 10 of them paid (those in the log).
    let dir = registrar_dir();
    let path = dir.path().to_str().unwrap();
    let counted = fsm(&["states", path]);
    assert_eq!(counted.status.code(), Some(0));
    assert_eq!(
        state_rows(&text(&counted)),
        [
            ("Paid".to_owned(), 10),
            ("Submitted".to_owned(), 30),
            ("total".to_owned(), 40)
        ],
        "{}",
        text(&counted)
    );
    // The service's own binary lists every declared state, empty ones too.
    let decoder = fsm_cli::decoder(Codec::<Order>::new(1));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    fsm_cli::run_from(Some(&*decoder), ["fsm", "states", path], &mut out, &mut err);
    let typed = String::from_utf8(out).unwrap();
    let rows = state_rows(&typed);
    assert_eq!(rows.first(), Some(&("Draft".to_owned(), 0)), "{typed}");
    assert!(rows.contains(&("Cancelled".to_owned(), 0)), "{typed}");
    assert!(rows.contains(&("Paid".to_owned(), 10)), "{typed}");

    let paid = fsm(&["ls", path, "--state", "Paid"]);
    let listed = text(&paid);
    assert!(listed.contains("10 machines"), "{listed}");
    assert!(
        listed
            .lines()
            .skip(1)
            .take(10)
            .all(|l| l.contains(" Paid ")),
        "{listed}"
    );
    assert!(listed.contains("order-009"), "{listed}");
    assert!(!listed.contains("order-010"), "{listed}");
    let cut = fsm(&[
        "ls",
        path,
        "--state",
        "Paid",
        "--limit",
        "3",
        "--after",
        "order-001",
    ]);
    let listed = text(&cut);
    assert!(
        listed.contains("order-002") && listed.contains("order-004"),
        "{listed}"
    );
    assert!(
        !listed.contains("order-005") && !listed.contains("order-001"),
        "{listed}"
    );
    assert!(
        String::from_utf8_lossy(&cut.stderr).contains("--state Paid --after order-004"),
        "{}",
        String::from_utf8_lossy(&cut.stderr)
    );

    // SQLite answers from its index.
    let db = tempfile::tempdir().unwrap();
    let file = db.path().join("orders.sqlite");
    {
        let store = SqliteStore::open(&file).unwrap();
        let codec = Codec::<Order>::new(1);
        for i in 0..6 {
            let order_state = if i % 3 == 0 {
                Order::Cancelled
            } else {
                Order::Draft
            };
            store.save(&order(i), None, &order_state, &codec).unwrap();
        }
    }
    let sqlite = file.to_str().unwrap();
    assert_eq!(
        state_rows(&text(&fsm(&["states", sqlite]))),
        [
            ("Cancelled".to_owned(), 2),
            ("Draft".to_owned(), 4),
            ("total".to_owned(), 6)
        ]
    );
    let listed = text(&fsm(&["ls", sqlite, "--state", "Cancelled"]));
    assert!(
        listed.contains("order-000") && listed.contains("order-003"),
        "{listed}"
    );
    assert!(listed.contains("2 machines"), "{listed}");

    // A running kernel: counts of every declared state, ids one per line.
    let data = tempfile::tempdir().unwrap();
    let kernel: Kernel<Order> = fsm_persist::file_kernel(data.path(), Order::initial_state)
        .shards(2)
        .start()
        .unwrap();
    let socket = data.path().with_extension("sock");
    let _admin = kernel.serve_admin(AdminConfig::unix(&socket)).unwrap();
    let s = socket.to_str().unwrap();
    for i in 0..5 {
        let cmd = OrderCmd::Submit {
            domain: format!("d{i}.example"),
        };
        kernel.submit(&order(i), cmd).unwrap().wait().unwrap();
    }
    kernel.submit(&order(2), pay()).unwrap().wait().unwrap();
    let live = text(&fsm(&["states", s]));
    let rows = state_rows(&live);
    assert_eq!(rows.first(), Some(&("Draft".to_owned(), 0)), "{live}");
    assert!(rows.contains(&("Submitted".to_owned(), 4)), "{live}");
    assert!(rows.contains(&("Paid".to_owned(), 1)), "{live}");
    assert!(rows.contains(&("total".to_owned(), 5)), "{live}");
    let ids = text(&fsm(&["ls", s, "--state", "Submitted"]));
    assert_eq!(
        ids.lines().collect::<Vec<_>>(),
        ["order-000", "order-001", "order-003", "order-004"]
    );
    let first = fsm(&["ls", s, "--limit", "2"]);
    assert_eq!(
        text(&first).lines().collect::<Vec<_>>(),
        ["order-000", "order-001"]
    );
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("--after order-001"),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    // PostgreSQL answers from its index.
    let Some(server) = fsm_persist::postgres::TestServer::shared() else {
        eprintln!(
            "SKIPPED: the PostgreSQL part of this test (no server binaries; CI installs them)"
        );
        return;
    };
    let store = fsm_persist::postgres::PostgresStore::builder(server.config())
        .schema("cli_states")
        .open()
        .unwrap();
    let codec = Codec::<Order>::new(1);
    for i in 0..4 {
        let order_state = if i == 1 {
            Order::Cancelled
        } else {
            Order::Draft
        };
        store.save(&order(i), None, &order_state, &codec).unwrap();
    }
    let url = format!(
        "postgresql://{}@{}/postgres",
        fsm_persist::postgres::TEST_USER,
        server
            .socket_dir()
            .display()
            .to_string()
            .replace('/', "%2F")
    );
    let counted = fsm(&["states", &url, "--schema", "cli_states"]);
    assert_eq!(
        state_rows(&text(&counted)),
        [
            ("Cancelled".to_owned(), 1),
            ("Draft".to_owned(), 3),
            ("total".to_owned(), 4)
        ],
        "{}{}",
        text(&counted),
        String::from_utf8_lossy(&counted.stderr)
    );
    let listed = text(&fsm(&[
        "ls",
        &url,
        "--schema",
        "cli_states",
        "--state",
        "Draft",
        "--limit",
        "2",
    ]));
    assert!(
        listed.contains("order-000") && listed.contains("order-002"),
        "{listed}"
    );
    assert!(
        !listed.contains("order-003") && !listed.contains("order-001"),
        "{listed}"
    );
}

mod sealed {
    use fsm_core::store::{Codec, Keyring, MachineId};
    use fsm_core::{Event, StateMachine};
    use serde::{Deserialize, Serialize};

    #[derive(StateMachine, Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[fsm(event = Cmd)]
    pub(crate) enum Account {
        #[fsm(initial, on(Open => Active, with = open))]
        New,
        #[fsm(on(Close => Closed, plain))]
        Active {
            holder: String,
            #[fsm(sensitive)]
            card: String,
        },
        #[fsm(terminal)]
        Closed,
    }

    #[derive(Event, Debug, Clone, Serialize, Deserialize)]
    pub(crate) enum Cmd {
        Open {
            #[fsm(sensitive)]
            card: String,
        },
        Close,
    }

    fn open(
        _: account::New,
        e: cmd::Open,
        _: &mut fsm_core::Effects<()>,
    ) -> Result<account::Active, fsm_core::Refusal> {
        Ok(account::Active {
            holder: "Ada".into(),
            card: e.card,
        })
    }

    pub(crate) const CARD: &str = "5500-0000-0000-0004";

    /// A data directory whose accounts' cards are sealed under `keys`.
    pub(crate) fn accounts(keys: &Keyring) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fsm_persist::file_kernel(dir.path(), Account::initial_state)
            .codec(Codec::new(1).sealed(keys.clone()))
            .start()
            .unwrap();
        for i in 0..3 {
            let id = MachineId::new(format!("acct-{i}")).unwrap();
            kernel
                .submit(&id, Cmd::Open { card: CARD.into() })
                .unwrap()
                .wait()
                .unwrap();
        }
        kernel.wait_idle();
        dir
    }

    pub(crate) fn run(codec: Codec<Account>, args: &[&str]) -> (fsm_cli::Status, String, String) {
        let decoder = fsm_cli::decoder(codec);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut all = vec!["fsm"];
        all.extend_from_slice(args);
        let status = fsm_cli::run_from(Some(&*decoder), all, &mut out, &mut err);
        (
            status,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }
}

#[test]
fn sealed_fields_are_redacted_without_the_key_and_revealed_only_with_it() {
    use fsm_core::store::{Codec, Keyring};
    use sealed::{run, CARD};
    let keys = Keyring::new(3, Keyring::generate_key());
    let dir = sealed::accounts(&keys);
    let path = dir.path().to_str().unwrap();
    let mut disk = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        disk.extend(std::fs::read(entry.unwrap().path()).unwrap_or_default());
    }
    assert!(
        !disk.windows(CARD.len()).any(|w| w == CARD.as_bytes()),
        "the card is on disk"
    );

    // The plain binary: no card anywhere, even asked to reveal the raw payload.
    for args in [
        vec!["export", "--json", path],
        vec!["export", "--json", "--reveal", path],
        vec!["show", path, "acct-1"],
        vec!["ls", path],
    ] {
        let o = fsm(&args);
        let all = format!("{}{}", text(&o), String::from_utf8_lossy(&o.stderr));
        assert!(!all.contains(CARD), "{args:?}: {all}");
        assert!(!all.contains(&hex_of(CARD)), "{args:?}: {all}");
    }
    let exported: serde_json::Value = serde_json::from_str(
        text(&fsm(&["export", "--json", path]))
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(exported["sealed_key"], 3, "{exported}");
    assert_eq!(exported["state_name"], "Active", "{exported}");

    // The service's binary without the keyring: the rest of the machine, the card redacted;
    // --reveal refused, saying what it needs.
    let (status, shown, _) = run(Codec::new(1), &["show", path, "acct-1"]);
    assert_eq!(status, fsm_cli::Status::Ok);
    assert!(
        shown.contains("holder: \"Ada\"") && shown.contains("card: <redacted>"),
        "{shown}"
    );
    let (_, exported, _) = run(Codec::new(1), &["export", "--json", path]);
    let first: serde_json::Value = serde_json::from_str(exported.lines().next().unwrap()).unwrap();
    assert_eq!(first["state"]["Active"]["card"], "<redacted>", "{first}");
    assert_eq!(first["state"]["Active"]["holder"], "Ada", "{first}");
    let (status, out, err) = run(Codec::new(1), &["show", path, "acct-1", "--reveal"]);
    assert_eq!(status, fsm_cli::Status::Error, "{out}");
    assert!(err.contains("keyring"), "{err}");
    assert!(!out.contains(CARD) && !err.contains(CARD));

    // With the keyring: revealed on request only.
    let (_, shown, _) = run(
        Codec::new(1).sealed(keys.clone()),
        &["show", path, "acct-1"],
    );
    assert!(!shown.contains(CARD), "{shown}");
    let (status, shown, _) = run(
        Codec::new(1).sealed(keys.clone()),
        &["show", path, "acct-1", "--reveal"],
    );
    assert_eq!(status, fsm_cli::Status::Ok);
    assert!(shown.contains(CARD), "{shown}");
    let (_, exported, _) = run(
        Codec::new(1).sealed(keys),
        &["export", "--json", "--reveal", path],
    );
    let first: serde_json::Value = serde_json::from_str(exported.lines().next().unwrap()).unwrap();
    assert_eq!(first["state"]["Active"]["card"], CARD, "{first}");
    // A socket never reveals.
    let refused = fsm(&["show", "/nonexistent/admin.sock", "acct-1", "--reveal"]);
    assert_ne!(refused.status.code(), Some(0));
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
