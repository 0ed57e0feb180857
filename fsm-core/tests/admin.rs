//! The admin endpoint over a real Unix socket: every request, malformed and oversized ones, a
//! client that never reads, more clients than allowed, a socket path that exists, the created
//! socket's permissions, the watch stream and its rate limit; and the kernel's counts stay
//! exact throughout.
#![cfg(feature = "admin")]
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use fsm_core::kernel::admin::proto::{self, Reply};
use fsm_core::kernel::admin::{AdminConfig, AdminError};
use fsm_core::kernel::{EffectCtx, EffectError, EffectWorker, Kernel};
use fsm_core::store::{Format, MachineId, MemoryStore, Snapshot, SnapshotStore};
use fsm_core::{Effects, Event, Handler, Refusal, StateMachine};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = Cmd, effect = Charge)]
pub enum Account {
    #[fsm(initial, on(Open => Active))]
    New,
    #[fsm(on(Pay => Active), on(Close => Closed))]
    Active {
        balance: u64,
        #[fsm(sensitive)]
        card: String,
    },
    #[fsm(terminal)]
    Closed,
}

#[derive(Event, Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Open { card: String },
    Pay { cents: u64 },
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Charge(u64);

impl Handler<cmd::Open, account::Active> for account::New {
    fn handle(
        _: account::New,
        e: cmd::Open,
        _: &mut Effects<Charge>,
    ) -> Result<account::Active, Refusal> {
        Ok(account::Active {
            balance: 0,
            card: e.card,
        })
    }
}

impl Handler<cmd::Pay, account::Active> for account::Active {
    fn handle(
        s: account::ActiveRef<'_>,
        e: cmd::Pay,
        fx: &mut Effects<Charge>,
    ) -> Result<account::Active, Refusal> {
        fx.push(Charge(e.cents));
        Ok(account::Active {
            balance: s.balance + e.cents,
            card: s.card.clone(),
        })
    }
}

impl Handler<cmd::Close, account::Closed> for account::Active {
    fn handle(
        _: account::ActiveRef<'_>,
        _: cmd::Close,
        _: &mut Effects<Charge>,
    ) -> Result<account::Closed, Refusal> {
        Ok(account::Closed)
    }
}

/// Crashes on every charge of 13 cents: with an intensity of no restarts, the first
/// escalates (a declined card, an `Err`, would be a failure, not a crash).
struct Biller;

impl EffectWorker<Account> for Biller {
    fn run(&mut self, _: &EffectCtx, effect: &Charge) -> Result<Option<Cmd>, EffectError> {
        assert!(effect.0 != 13, "the card was declined");
        Ok(None)
    }
}

fn id(s: &str) -> MachineId {
    MachineId::new(s).unwrap()
}

fn kernel(store: MemoryStore) -> Kernel<Account> {
    Kernel::builder(store, |_| Account::New)
        .shards(2)
        // At most once: these tests read the endpoint, not the outbox (whose settling writes
        // would move every sequence they check).
        .effects_at_most_once(1, |_| Biller)
        .restart_intensity(0, Duration::from_secs(3600))
        .start()
        .unwrap()
}

/// One connection: requests in, answers out, line by line.
struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        // Generous: the answer is there long before; this only stops a broken test hanging.
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn line(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("every answer is JSON")),
        }
    }

    fn ask(&mut self, request: Value) -> Value {
        let mut text = request.to_string();
        text.push('\n');
        self.send_raw(text.as_bytes());
        self.line().expect("an answer")
    }

    fn ok(&mut self, request: Value) -> Value {
        let answer = self.ask(request.clone());
        answer
            .get("ok")
            .cloned()
            .unwrap_or_else(|| panic!("{request} answered {answer}"))
    }
}

fn error_kind(answer: &Value) -> &str {
    answer["error"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {answer}"))
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_request_is_answered_from_the_running_kernel_and_secrets_stay_inside() {
    let store = MemoryStore::new();
    // A machine whose stored bytes are garbage: quarantined at start.
    store
        .put(
            &id("broken"),
            None,
            &Snapshot::new("Account", 1, 1, Format::Postcard, b"\xff\xff").unwrap(),
        )
        .unwrap();
    let k = kernel(store);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let server = k.serve_admin(AdminConfig::unix(&path)).unwrap();
    assert_eq!(server.address(), path.display().to_string());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is for its owner only");

    for m in ["a", "b"] {
        k.submit(
            &id(m),
            Cmd::Open {
                card: "4111-SECRET".into(),
            },
        )
        .unwrap()
        .wait()
        .unwrap();
    }
    k.submit(&id("a"), Cmd::Pay { cents: 500 })
        .unwrap()
        .wait()
        .unwrap();
    assert!(k
        .submit(&id("a"), Cmd::Open { card: "x".into() })
        .unwrap()
        .wait()
        .is_err());
    // The biller declines 13 cents and, allowed no restart, escalates.
    k.submit(&id("b"), Cmd::Pay { cents: 13 })
        .unwrap()
        .wait()
        .unwrap();
    k.wait_idle();

    let mut c = Client::connect(&path);
    let metrics = c.ok(json!({"op": "metrics"}));
    let kernel_counts = k.metrics().total.counts;
    assert_eq!(metrics["machine"], "Account");
    assert_eq!(
        metrics["total"]["counts"]["committed"],
        kernel_counts.committed
    );
    assert_eq!(
        metrics["total"]["counts"]["rejected"],
        kernel_counts.rejected
    );
    assert_eq!(metrics["total"]["counts"]["committed"], 4);
    assert_eq!(metrics["shards"].as_array().unwrap().len(), 2);
    assert!(metrics["total"]["end_to_end"]["p99_us"].as_f64().unwrap() > 0.0);

    let trace = c.ok(json!({"op": "trace", "machine": "a"}));
    let events: Vec<&str> = trace
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["Open", "Pay", "Open"]);
    let rejected = c.ok(json!({"op": "trace", "outcome": "rejected"}));
    assert_eq!(rejected.as_array().unwrap().len(), 1);
    let last = c.ok(json!({"op": "trace", "limit": 1}));
    assert_eq!(last.as_array().unwrap().len(), 1);

    let shown = c.ok(json!({"op": "show", "machine": "a"}));
    assert_eq!(shown["state"], "Active");
    assert_eq!(shown["seq"], 2);
    let value = shown["value"].as_str().unwrap();
    assert!(value.contains("balance: 500"), "{value}");
    assert!(
        !value.contains("SECRET"),
        "a sensitive field left the process: {value}"
    );
    assert!(value.contains("<redacted>"), "{value}");

    let quarantined = c.ok(json!({"op": "quarantined"}));
    assert_eq!(quarantined[0]["machine"], "broken");
    let cause = quarantined[0]["cause"].as_str().unwrap();
    assert_eq!(cause, k.quarantined()[0].cause.to_string());

    eventually("the biller escalates", || !k.escalations().is_empty());
    let escalations = c.ok(json!({"op": "escalations"}));
    assert_eq!(escalations[0]["worker"], 0);
    assert!(escalations[0]["failure"]
        .as_str()
        .unwrap()
        .contains("declined"));
    assert_eq!(
        c.ok(json!({"op": "restart_worker", "worker": 0}))["restarted"],
        true
    );
    assert_eq!(
        c.ok(json!({"op": "restart_worker", "worker": 9}))["restarted"],
        false
    );
    eventually("the worker takes commands again", || {
        k.submit(&id("b"), Cmd::Pay { cents: 1 })
            .map(|t| t.wait().is_ok())
            .unwrap_or(false)
    });

    assert_eq!(
        c.ok(json!({"op": "release", "machine": "broken"}))["released"],
        true
    );
    assert_eq!(
        c.ok(json!({"op": "release", "machine": "broken"}))["released"],
        false
    );
    // A machine nothing is stored for does not exist yet: `not_found`, as documented.
    let missing = c.ask(json!({"op": "show", "machine": "never-seen"}));
    assert_eq!(error_kind(&missing), "not_found", "{missing}");
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("never-seen"),
        "{missing}"
    );
    // What the trace ring still holds: nothing overwritten yet.
    let window = c.ok(json!({"op": "trace_window"}));
    assert_eq!(window["overwritten"], 0, "{window}");
    assert!(window["complete_since_ms"].is_null(), "{window}");
    assert!(window["capacity"].as_u64().unwrap() > 0, "{window}");
    assert_eq!(server.clients(), 1);
    drop(server);
    assert!(
        !path.exists(),
        "the socket is removed when the endpoint stops"
    );
}

#[test]
fn bad_requests_get_typed_errors_and_the_kernel_keeps_counting() {
    let k = kernel(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let _server = k
        .serve_admin(AdminConfig::unix(&path).max_line(1024))
        .unwrap();
    let mut c = Client::connect(&path);
    for (request, kind, says) in [
        ("{not json", "bad_request", "key must be a string"),
        ("[1, 2]", "bad_request", ""),
        (r#"{"op": "format_disk"}"#, "bad_request", "unknown variant"),
        (
            r#"{"op": "trace", "colour": "red"}"#,
            "bad_request",
            "unknown field",
        ),
        (
            r#"{"op": "trace", "outcome": "won"}"#,
            "bad_request",
            "committed",
        ),
        (
            r#"{"op": "trace", "since_ms": -1}"#,
            "bad_request",
            "since_ms",
        ),
        (
            r#"{"op": "show", "machine": "../etc"}"#,
            "bad_request",
            "machine",
        ),
        (r#"{"op": "show"}"#, "bad_request", "missing field"),
        (
            r#"{"op": "restart_worker", "worker": "one"}"#,
            "bad_request",
            "invalid type",
        ),
    ] {
        c.send_raw(format!("{request}\n").as_bytes());
        let answer = c.line().expect("an answer");
        assert_eq!(error_kind(&answer), kind, "{request}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{request}: {message}");
        // The connection still serves, and so does the kernel.
        k.submit(&id("a"), Cmd::Open { card: "c".into() })
            .unwrap()
            .wait()
            .ok();
        assert!(c.ok(json!({"op": "metrics"}))["total"].is_object());
    }
    // Blank lines are ignored.
    c.send_raw(b"\n\n");
    assert!(c.ok(json!({"op": "metrics"}))["uptime_ms"].is_number());

    // A huge line: refused by its length, without reading it all, and the connection closed.
    let mut big = Client::connect(&path);
    big.send_raw(&vec![b'x'; 4096]);
    let answer = big.line().expect("an answer before closing");
    assert_eq!(error_kind(&answer), "too_long");
    assert!(big.line().is_none(), "closed after a line over the limit");

    // The kernel's counts are exact: one Open committed, the rest rejected (already open).
    k.wait_idle();
    let counts = k.metrics().total.counts;
    assert_eq!(counts.committed, 1);
    assert_eq!(counts.rejected, 8);
    assert_eq!(counts.submitted, 9);
}

#[test]
fn a_client_that_never_reads_does_not_slow_the_kernel_and_is_dropped() {
    let k = kernel(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let server = k
        .serve_admin(
            AdminConfig::unix(&path)
                .timeout(Duration::from_secs(2))
                .max_per_sec(1_000_000),
        )
        .unwrap();
    // A watcher that never reads: its socket buffer fills, the endpoint's writes stall.
    let mut stuck = UnixStream::connect(&path).unwrap();
    stuck.write_all(b"{\"op\":\"watch\"}\n").unwrap();
    eventually("the watcher is connected", || server.clients() == 1);
    k.submit(&id("m"), Cmd::Open { card: "c".into() })
        .unwrap()
        .wait()
        .unwrap();
    // Many commands, each traced and matching the watch: the kernel decides all of them.
    let mut tickets = Vec::new();
    for i in 0..20_000u64 {
        tickets.push(k.submit(&id("m"), Cmd::Pay { cents: i % 7 }).unwrap());
    }
    for t in tickets {
        t.wait().unwrap();
    }
    k.wait_idle();
    assert_eq!(k.metrics().total.counts.committed, 20_001);
    // The endpoint gives up on the stuck client once a write has waited its timeout.
    eventually("the stuck watcher is dropped", || server.clients() == 0);
    // It had been sent something before its buffer filled.
    let mut some = [0u8; 16];
    assert!(stuck.read(&mut some).unwrap() > 0);
    // And the endpoint serves others.
    assert!(Client::connect(&path).ok(json!({"op": "metrics"}))["total"].is_object());
}

#[test]
fn clients_beyond_the_limit_are_told_busy_and_a_silent_one_times_out() {
    let k = kernel(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    // The limit: a timeout far beyond the test, so that however loaded the machine, the two
    // clients are still connected when the third arrives.
    let path = dir.path().join("busy.sock");
    let server = k
        .serve_admin(
            AdminConfig::unix(&path)
                .max_clients(2)
                .timeout(Duration::from_secs(3600)),
        )
        .unwrap();
    let mut first = Client::connect(&path);
    let mut second = Client::connect(&path);
    first.ok(json!({"op": "metrics"}));
    second.ok(json!({"op": "metrics"}));
    let mut third = Client::connect(&path);
    let answer = third.line().expect("told why");
    assert_eq!(error_kind(&answer), "busy");
    assert!(third.line().is_none());
    drop((first, second));
    eventually("both clients gone", || server.clients() == 0);
    // Now there is room again.
    Client::connect(&path).ok(json!({"op": "metrics"}));

    // A client that sends nothing is told so and dropped, after at least 300 ms of silence
    // (a lower bound: the test waits as long as it takes).
    let path = dir.path().join("silent.sock");
    let server = k
        .serve_admin(AdminConfig::unix(&path).timeout(Duration::from_millis(300)))
        .unwrap();
    let mut silent = Client::connect(&path);
    let answer = silent.line().expect("told why");
    assert_eq!(error_kind(&answer), "timeout");
    assert!(silent.line().is_none());
    eventually("the silent client dropped", || server.clients() == 0);
}

#[test]
fn many_clients_at_once_all_get_their_answers() {
    let k = kernel(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let _server = k
        .serve_admin(AdminConfig::unix(&path).max_clients(16))
        .unwrap();
    k.submit(&id("m"), Cmd::Open { card: "c".into() })
        .unwrap()
        .wait()
        .unwrap();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&path);
                for _ in 0..50 {
                    assert_eq!(
                        c.ok(json!({"op": "show", "machine": "m"}))["state"],
                        "Active"
                    );
                    assert_eq!(
                        c.ok(json!({"op": "metrics"}))["total"]["counts"]["committed"],
                        1
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn the_socket_path_must_be_free_or_a_stale_socket_of_a_dead_server() {
    let k = kernel(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"precious").unwrap();
    let err = k.serve_admin(AdminConfig::unix(&file)).unwrap_err();
    assert!(matches!(err, AdminError::PathExists(_)), "{err}");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious", "untouched");

    let path = dir.path().join("admin.sock");
    let live = k.serve_admin(AdminConfig::unix(&path)).unwrap();
    let err = k.serve_admin(AdminConfig::unix(&path)).unwrap_err();
    assert!(matches!(err, AdminError::InUse(_)), "{err}");
    drop(live);

    // A socket left by a process that died: nobody listens, so it is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let _server = k.serve_admin(AdminConfig::unix(&stale)).unwrap();
    Client::connect(&stale).ok(json!({"op": "metrics"}));
}

#[test]
fn tcp_is_loopback_only_unless_asked() {
    let k = kernel(MemoryStore::new());
    let err = k
        .serve_admin(AdminConfig::tcp("0.0.0.0:0".parse().unwrap()))
        .unwrap_err();
    assert!(matches!(err, AdminError::Remote(_)), "{err}");
    let server = k
        .serve_admin(AdminConfig::tcp("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let mut stream = std::net::TcpStream::connect(server.address()).unwrap();
    stream.write_all(b"{\"op\":\"metrics\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    let answer: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(answer["ok"]["machine"], "Account");
}

#[test]
fn watch_streams_matching_decisions_and_says_how_many_it_dropped() {
    let k = kernel(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let _server = k.serve_admin(AdminConfig::unix(&path)).unwrap();
    let mut w = Client::connect(&path);
    let started =
        w.ask(json!({"op": "watch", "machine": "watched", "event": "Pay", "max_per_sec": 5}));
    assert_eq!(started["ok"]["max_per_sec"], 5);
    for m in ["watched", "other"] {
        k.submit(&id(m), Cmd::Open { card: "c".into() })
            .unwrap()
            .wait()
            .unwrap();
    }
    for i in 0..100u64 {
        for m in ["watched", "other"] {
            // Even amounts: the biller declines only 13.
            k.submit(&id(m), Cmd::Pay { cents: 2 * i })
                .unwrap()
                .wait()
                .unwrap();
        }
    }
    // Every matching decision is either sent or counted as dropped: 100 in all.
    let (mut entries, mut dropped) = (Vec::new(), 0u64);
    while entries.len() as u64 + dropped < 100 {
        let message = w.line().expect("the stream goes on");
        if let Some(entry) = message.get("entry") {
            assert_eq!(entry["machine"], "watched");
            assert_eq!(entry["event"], "Pay");
            entries.push(entry["to"].clone());
        } else {
            dropped += message["dropped"]
                .as_u64()
                .expect("an entry or a drop count");
            assert_eq!(message["max_per_sec"], 5);
        }
    }
    assert_eq!(entries.len() as u64 + dropped, 100);
    assert!(dropped > 0, "100 decisions at once exceed 5 a second");
    assert!(!entries.is_empty());
    k.wait_idle();
    assert_eq!(k.metrics().total.counts.committed, 202);
}

/// Sends `request` as the typed protocol writes it, reads the answer as the typed protocol
/// reads it, and checks that the answer holds exactly the fields of its type (written back,
/// it is the same JSON): what the endpoint sends and what a client reads cannot drift apart.
fn typed<T>(c: &mut Client, request: &proto::Request) -> Reply<T>
where
    T: serde::de::DeserializeOwned + Serialize,
{
    let answer = c.ask(serde_json::to_value(request).unwrap());
    let read: Reply<T> = serde_json::from_value(answer.clone())
        .unwrap_or_else(|e| panic!("{request:?} answered {answer}, which does not read: {e}"));
    assert_eq!(
        serde_json::to_value(&read).unwrap(),
        answer,
        "{request:?}: the answer has fields its type does not"
    );
    read
}

fn ok_of<T: std::fmt::Debug>(reply: Reply<T>) -> T {
    match reply {
        Reply::Ok(t) => t,
        Reply::Error(f) => panic!("failed: {f}"),
    }
}

#[test]
fn every_request_and_answer_goes_through_the_typed_protocol() {
    let k = kernel(MemoryStore::new());
    k.submit(
        &id("a-1"),
        Cmd::Open {
            card: "4111".into(),
        },
    )
    .unwrap()
    .wait()
    .unwrap();
    k.submit(&id("a-1"), Cmd::Pay { cents: 5 })
        .unwrap()
        .wait()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let _server = k.serve_admin(AdminConfig::unix(&socket)).unwrap();
    let mut c = Client::connect(&socket);

    let hello: proto::Hello = ok_of(typed(&mut c, &proto::Request::Hello));
    assert_eq!(
        (hello.protocol, hello.machine.as_str()),
        (proto::PROTOCOL, "Account")
    );

    let table: proto::Table = ok_of(typed(&mut c, &proto::Request::Table));
    assert_eq!(
        (table.machine.as_str(), table.initial.as_str()),
        ("Account", "New")
    );
    let names: Vec<(&str, bool)> = table
        .states
        .iter()
        .map(|s| (s.name.as_str(), s.terminal))
        .collect();
    assert_eq!(names, [("New", false), ("Active", false), ("Closed", true)]);
    let edges: Vec<(&str, &str, &str)> = table
        .transitions
        .iter()
        .map(|t| (t.from.as_str(), t.event.as_str(), t.to.as_str()))
        .collect();
    assert_eq!(
        edges,
        [
            ("New", "Open", "Active"),
            ("Active", "Pay", "Active"),
            ("Active", "Close", "Closed")
        ]
    );

    let m: proto::Metrics = ok_of(typed(&mut c, &proto::Request::Metrics));
    assert_eq!(m.total.counts.committed, 2);
    assert_eq!(m.shards.len(), 2);
    assert_eq!(m.workers.len(), 1);

    let entries: Vec<proto::Entry> = ok_of(typed(
        &mut c,
        &proto::Request::Trace {
            machine: Some("a-1".into()),
            state: None,
            event: None,
            outcome: Some("committed".into()),
            since_ms: None,
            limit: Some(10),
        },
    ));
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].outcome, proto::Outcome::Committed);
    assert_eq!(entries[1].to.as_deref(), Some("Active"));

    let window: proto::TraceWindow = ok_of(typed(&mut c, &proto::Request::TraceWindow));
    assert_eq!(window.overwritten, 0);

    let shown: proto::Show = ok_of(typed(
        &mut c,
        &proto::Request::Show {
            machine: "a-1".into(),
        },
    ));
    assert_eq!((shown.state.as_str(), shown.seq), ("Active", Some(2)));
    assert!(!shown.value.contains("4111"), "{}", shown.value);

    match typed::<proto::Show>(
        &mut c,
        &proto::Request::Show {
            machine: "nobody".into(),
        },
    ) {
        Reply::Error(f) => assert_eq!(f.kind, proto::FailureKind::NotFound, "{f}"),
        Reply::Ok(s) => panic!("{s:?}"),
    }

    // Queries by state: a second machine, still New, and one that never was.
    k.submit(&id("a-0"), Cmd::Pay { cents: 1 })
        .unwrap()
        .wait()
        .unwrap_err();
    k.submit(&id("a-2"), Cmd::Open { card: "5".into() })
        .unwrap()
        .wait()
        .unwrap();
    let states: proto::States = ok_of(typed(&mut c, &proto::Request::States));
    let declared: Vec<(&str, u64, bool)> = states
        .states
        .iter()
        .map(|s| (s.state.as_str(), s.machines, s.declared))
        .collect();
    assert_eq!(
        declared,
        [("New", 0, true), ("Active", 2, true), ("Closed", 0, true)],
        "every declared state in declaration order, with its stored machines"
    );
    assert_eq!((states.total, states.unreadable), (2, 0));
    let page: proto::Machines = ok_of(typed(
        &mut c,
        &proto::Request::Machines {
            state: Some("Active".into()),
            after: None,
            limit: Some(1),
        },
    ));
    assert_eq!(page.ids, ["a-1"]);
    assert_eq!(page.next.as_deref(), Some("a-1"));
    let rest: proto::Machines = ok_of(typed(
        &mut c,
        &proto::Request::Machines {
            state: Some("Active".into()),
            after: page.next,
            limit: Some(1),
        },
    ));
    assert_eq!(
        (rest.ids.as_slice(), rest.next),
        (&["a-2".to_owned()][..], None)
    );
    let none: proto::Machines = ok_of(typed(
        &mut c,
        &proto::Request::Machines {
            state: Some("Closed".into()),
            after: None,
            limit: None,
        },
    ));
    assert!(none.ids.is_empty() && none.next.is_none(), "{none:?}");
    match typed::<proto::Machines>(
        &mut c,
        &proto::Request::Machines {
            state: None,
            after: Some("../etc".into()),
            limit: None,
        },
    ) {
        Reply::Error(f) => assert_eq!(f.kind, proto::FailureKind::BadRequest, "{f}"),
        Reply::Ok(m) => panic!("{m:?}"),
    }

    let q: Vec<proto::QuarantinedMachine> = ok_of(typed(&mut c, &proto::Request::Quarantined));
    assert!(q.is_empty());
    let e: Vec<proto::Escalated> = ok_of(typed(&mut c, &proto::Request::Escalations));
    assert!(e.is_empty());
    let r: proto::Restarted = ok_of(typed(&mut c, &proto::Request::RestartWorker { worker: 7 }));
    assert!(!r.restarted);
    let r: proto::Released = ok_of(typed(
        &mut c,
        &proto::Request::Release {
            machine: "a-1".into(),
        },
    ));
    assert!(!r.released);

    // A bad request is a typed failure too.
    match typed::<proto::Metrics>(
        &mut c,
        &proto::Request::Trace {
            machine: None,
            state: None,
            event: None,
            outcome: Some("exploded".into()),
            since_ms: None,
            limit: None,
        },
    ) {
        Reply::Error(f) => {
            assert_eq!(f.kind, proto::FailureKind::BadRequest);
            assert!(f.message.contains("not_stored"), "names the outcomes: {f}");
        }
        Reply::Ok(m) => panic!("{m:?}"),
    }

    // A watch: its first answer, then a decision as a typed message.
    let mut w = Client::connect(&socket);
    let watching: proto::Watching = ok_of(typed(
        &mut w,
        &proto::Request::Watch {
            machine: Some("a-1".into()),
            state: None,
            event: None,
            outcome: None,
            since_ms: None,
            max_per_sec: None,
        },
    ));
    assert_eq!(watching.watching, "Account");
    k.submit(&id("a-1"), Cmd::Pay { cents: 1 })
        .unwrap()
        .wait()
        .unwrap();
    let line = w.line().expect("a decision");
    match serde_json::from_value::<proto::WatchMessage>(line.clone()).unwrap() {
        proto::WatchMessage::Entry { entry } => {
            assert_eq!(
                (entry.event.as_str(), entry.outcome),
                ("Pay", proto::Outcome::Committed)
            )
        }
        other => panic!("{other:?} from {line}"),
    }
}

#[test]
fn one_set_of_outcome_names_serves_counts_traces_and_metrics() {
    let k = kernel(MemoryStore::new());
    k.submit(&id("b-1"), Cmd::Open { card: "1".into() })
        .unwrap()
        .wait()
        .unwrap();
    let _ = k
        .submit(&id("b-1"), Cmd::Open { card: "2".into() })
        .unwrap()
        .wait();
    let counts = k.metrics().total.counts;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let _server = k.serve_admin(AdminConfig::unix(&socket)).unwrap();
    let mut c = Client::connect(&socket);
    let wire = c.ok(json!({"op": "metrics"}))["total"]["counts"].clone();
    // Every outcome the metrics label has is a field of the protocol's counts, equal to it.
    for (name, count) in counts.by_outcome() {
        assert_eq!(wire[name], count, "{name} in {wire}");
    }
    // Every outcome a trace entry or a filter names is one of them.
    for name in [
        "committed",
        "duplicate",
        "rejected",
        "dumped",
        "delegated",
        "expired",
        "not_stored",
        "outcome_unknown",
        "unavailable",
        "fenced",
    ] {
        assert!(
            counts.by_outcome().iter().any(|(n, _)| *n == name),
            "{name}"
        );
        let traced = c.ask(json!({"op": "trace", "outcome": name}));
        assert!(traced.get("ok").is_some(), "{name}: {traced}");
    }
    assert_eq!(wire["committed"], 1);
    assert_eq!(wire["rejected"], 1);
}
