//! `fsm ui`: a live inspector of a running kernel in the browser, served over HTTP from the
//! `fsm` binary itself, read-only, drawn from what the kernel's admin endpoint answers.
//!
//! What the page gets, and from where:
//! - `GET /`, `/app.js`, `/app.css`: the page, built into the binary (nothing is fetched from
//!   anywhere else);
//! - `GET /statechart.svg`: the machine type's statechart, laid out here from the `table`
//!   answer ([`layout`]);
//! - `GET /api/{op}?...`: one read-only admin request (`hello`, `table`, `metrics`, `trace`,
//!   `trace_window`, `show`, `states`, `machines`, `quarantined`, `escalations`), its query
//!   parameters as the request's fields, answered with the endpoint's own JSON reply;
//! - `GET /events?machine=&state=&event=&outcome=&rate=`: server-sent events: `entries`
//!   (decisions from one admin `watch` per page, with its filters, at most `rate` a second,
//!   sent in batches four times a second), `dropped` (what the watch's rate limit or the trace
//!   ring left out), `stats` (a [`Stats`] reading, once a second) and `error`.
//!
//! One poller serves every page: once a second, while a page is open, it asks `metrics`,
//! `quarantined` and `escalations`, and `states` no more often than keeps the store's count
//! under a twentieth of the time; per-transition rates are differences of the kernel's
//! committed-transition counts over the last minute. With no page open it asks nothing.
//!
//! It listens on loopback unless told otherwise, and answers only requests whose `Host` is
//! the address it listens on (a page on another site cannot reach it through a rebound DNS
//! name). It changes nothing in the kernel: releasing a machine or restarting a worker stays
//! with `fsm release` and `fsm restart-worker`.

pub(crate) mod layout;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, Request as HttpRequest, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use fsm_core::kernel::admin::proto::{self, Reply, Request};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::online::Admin;
use crate::Status;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The admin requests a page may make: those that change nothing.
const READ_ONLY: [&str; 10] = [
    "hello",
    "table",
    "metrics",
    "trace",
    "trace_window",
    "show",
    "states",
    "machines",
    "quarantined",
    "escalations",
];

/// Entries a second a page's watch asks for unless it says (`rate`), and the most it may.
const DEFAULT_RATE: u32 = 200;
const MAX_RATE: u32 = 1_000;
/// How often a page's batch of entries is sent.
const FLUSH: Duration = Duration::from_millis(250);
/// How often the poller reads the metrics.
const TICK: Duration = Duration::from_secs(1);
/// The window of the per-transition rates.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// How `fsm ui` serves.
#[derive(Clone, Debug)]
pub struct UiConfig {
    /// The admin endpoint: a socket path or a host:port.
    pub socket: String,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Whether an address other than loopback may be listened on.
    pub allow_remote: bool,
}

/// A running inspector; stops when dropped.
pub struct UiServer {
    addr: SocketAddr,
    machine: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl UiServer {
    /// Connects to the admin endpoint (failing here if it does not answer, or speaks another
    /// protocol), binds `config.listen`, and serves on a thread of its own.
    pub fn start(config: UiConfig) -> Result<UiServer, String> {
        if !config.listen.ip().is_loopback() && !config.allow_remote {
            return Err(format!(
                "{} is not a loopback address: the inspector shows every machine's state and trace to whoever reaches it; pass --allow-remote to listen there anyway (behind your own access control)",
                config.listen
            ));
        }
        let mut admin = Admin::connect(&config.socket)?;
        let hello: proto::Hello = admin.ask(&Request::Hello)?;
        let table: proto::Table = admin.ask(&Request::Table)?;
        let listener = TcpListener::bind(config.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let statechart = layout::svg(&table, &layout::layout(&table));
        let (stats_tx, _) = watch::channel(Arc::new(String::new()));
        let shared = Arc::new(Shared {
            socket: config.socket.clone(),
            addr,
            check_host: !config.allow_remote,
            statechart,
            requests: Mutex::new(Some(admin)),
            stats: stats_tx,
            stopping: AtomicBool::new(false),
            watches: std::sync::atomic::AtomicUsize::new(0),
            rounds: std::sync::atomic::AtomicU64::new(0),
        });
        let poller = {
            let shared = shared.clone();
            let transitions = table.transitions.len();
            std::thread::Builder::new()
                .name("fsm-ui-poller".into())
                .spawn(move || poll(&shared, transitions))
                .map_err(|e| e.to_string())?
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fsm-ui")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let app = router(shared.clone());
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fsm-ui-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stop_rx.await;
                        })
                        .await;
                });
                serving.stopping.store(true, Ordering::SeqCst);
                let _ = poller.join();
                // Open streams end with the runtime.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| e.to_string())?;
        Ok(UiServer {
            addr,
            machine: hello.machine,
            stop: Some(stop_tx),
            thread: Some(thread),
            shared,
        })
    }

    /// The address it listens on (the port chosen, when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The machine type of the kernel it shows.
    pub fn machine(&self) -> &str {
        &self.machine
    }

    /// Admin watches open now (one per open page).
    pub fn watches(&self) -> usize {
        self.shared.watches.load(Ordering::SeqCst)
    }

    /// Rounds the poller has been through, one a second, whether a page was open or not.
    pub fn poller_rounds(&self) -> u64 {
        self.shared.rounds.load(Ordering::SeqCst)
    }

    /// Serves until the process is stopped.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UiServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `fsm ui`: serves until interrupted.
pub(crate) fn run(config: UiConfig, out: &mut dyn Write) -> Result<Status, String> {
    let server = UiServer::start(config)?;
    writeln!(
        out,
        "fsm ui: the inspector of {} at http://{}/ (read-only; Ctrl-C stops it)",
        server.machine(),
        server.addr()
    )
    .and_then(|()| out.flush())
    .map_err(|e| e.to_string())?;
    server.wait();
    Ok(Status::Ok)
}

struct Shared {
    socket: String,
    addr: SocketAddr,
    check_host: bool,
    statechart: String,
    /// The connection page requests share (one request at a time; reconnected when broken).
    requests: Mutex<Option<Admin>>,
    /// The poller's newest reading, as JSON.
    stats: watch::Sender<Arc<String>>,
    stopping: AtomicBool,
    watches: std::sync::atomic::AtomicUsize,
    /// Rounds the poller has been through (asking or, with no page open, not).
    rounds: std::sync::atomic::AtomicU64,
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { page("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { page("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/statechart.svg", get(statechart))
        .route("/api/{op}", get(api))
        .route("/events", get(events))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            same_host,
        ))
        .with_state(shared)
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Refuses requests addressed to another host name than the one listened on: a page served
/// elsewhere cannot read the inspector through DNS rebinding.
async fn same_host(
    State(shared): State<Arc<Shared>>,
    request: HttpRequest,
    next: Next,
) -> Response {
    if shared.check_host {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let port = shared.addr.port();
        let allowed = [
            format!("{}", shared.addr),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ];
        if !allowed.iter().any(|a| a == host) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "fsm ui answers requests for {} only, not {host:?}",
                    shared.addr
                ),
            )
                .into_response();
        }
    }
    next.run(request).await
}

async fn statechart(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "image/svg+xml")],
        shared.statechart.clone(),
    )
        .into_response()
}

/// One read-only admin request, its fields from the query string.
async fn api(
    State(shared): State<Arc<Shared>>,
    Path(op): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let request = match request_of(&op, &params) {
        Ok(r) => r,
        Err(message) => return failure(StatusCode::BAD_REQUEST, "bad_request", &message),
    };
    let answer = tokio::task::spawn_blocking(move || ask(&shared, &request)).await;
    match answer {
        Ok(Ok(reply)) => {
            let status = match &reply {
                Reply::Ok(_) => StatusCode::OK,
                Reply::Error(f) if f.kind == proto::FailureKind::NotFound => StatusCode::NOT_FOUND,
                Reply::Error(f) if f.kind == proto::FailureKind::BadRequest => {
                    StatusCode::BAD_REQUEST
                }
                Reply::Error(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            json(status, &reply)
        }
        Ok(Err(message)) => failure(StatusCode::BAD_GATEWAY, "unreachable", &message),
        Err(e) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

/// The admin request `op` with `params` as its fields, checked by the protocol's own types.
fn request_of(op: &str, params: &HashMap<String, String>) -> Result<Request, String> {
    if !READ_ONLY.contains(&op) {
        return Err(format!(
            "{op:?} is not a request the inspector makes (it asks only: {})",
            READ_ONLY.join(", ")
        ));
    }
    let mut fields = serde_json::Map::new();
    fields.insert("op".into(), Value::String(op.into()));
    for (k, v) in params {
        if v.is_empty() {
            continue;
        }
        let value = match k.as_str() {
            "limit" => Value::from(
                v.parse::<u64>()
                    .map_err(|_| format!("limit must be a whole number, not {v:?}"))?,
            ),
            "since_ms" => Value::from(
                v.parse::<f64>()
                    .map_err(|_| format!("since_ms must be a number, not {v:?}"))?,
            ),
            _ => Value::String(v.clone()),
        };
        fields.insert(k.clone(), value);
    }
    serde_json::from_value(Value::Object(fields)).map_err(|e| format!("{op}: {e}"))
}

/// Asks on the shared connection, connecting (again) when there is none or it broke.
fn ask(shared: &Shared, request: &Request) -> Result<Reply<Value>, String> {
    let mut slot = shared.requests.lock().unwrap_or_else(|p| p.into_inner());
    for attempt in 0..2 {
        if slot.is_none() {
            *slot = Some(Admin::connect(&shared.socket)?);
        }
        let admin = slot.as_mut().expect("connected above");
        let answer = admin
            .send(request)
            .and_then(|()| admin.next::<Reply<Value>>());
        match answer {
            Ok(Some(reply)) => return Ok(reply),
            Ok(None) | Err(_) if attempt == 0 => *slot = None,
            Ok(None) => return Err(format!("{} closed the connection", shared.socket)),
            Err(e) => return Err(e),
        }
    }
    Err(format!("{} does not answer", shared.socket))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn failure(status: StatusCode, kind: &str, message: &str) -> Response {
    json(
        status,
        &serde_json::json!({"error": {"kind": kind, "message": message}}),
    )
}

/// What a page's watch asks for.
fn watch_request(params: &HashMap<String, String>) -> Result<Request, String> {
    let get = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
    let rate = match get("rate") {
        None => DEFAULT_RATE,
        Some(r) => r
            .parse::<u32>()
            .map_err(|_| format!("rate must be a whole number, not {r:?}"))?
            .clamp(1, MAX_RATE),
    };
    Ok(Request::Watch {
        machine: get("machine"),
        state: get("state"),
        event: get("event"),
        outcome: get("outcome"),
        since_ms: None,
        max_per_sec: Some(rate),
    })
}

/// What a page's watch thread hands the page's stream.
enum Watched {
    Message(proto::WatchMessage),
    Failed(String),
}

async fn events(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let request = match watch_request(&params) {
        Ok(r) => r,
        Err(message) => return failure(StatusCode::BAD_REQUEST, "bad_request", &message),
    };
    let with_stats = params.get("stats").map(String::as_str) != Some("0");
    let (watched_tx, mut watched_rx) = mpsc::channel::<Watched>(1024);
    {
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("fsm-ui-watch".into())
            .spawn(move || follow(&shared, &request, &watched_tx));
        if let Err(e) = spawned {
            return failure(StatusCode::SERVICE_UNAVAILABLE, "internal", &e.to_string());
        }
    }
    let mut stats = shared.stats.subscribe();
    let (out_tx, out_rx) = mpsc::channel::<Event>(16);
    tokio::spawn(async move {
        let mut batch: Vec<proto::Entry> = Vec::new();
        let mut tick = tokio::time::interval(FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if with_stats {
            let now = stats.borrow_and_update().clone();
            if !now.is_empty() && out_tx.send(stats_event(&now)).await.is_err() {
                return;
            }
        }
        loop {
            let event = tokio::select! {
                watched = watched_rx.recv() => match watched {
                    Some(Watched::Message(proto::WatchMessage::Entry { entry })) => {
                        batch.push(entry);
                        continue;
                    }
                    Some(Watched::Message(dropped @ proto::WatchMessage::Dropped { .. })) => {
                        data_event("dropped", &dropped)
                    }
                    Some(Watched::Failed(message)) => {
                        let _ = out_tx.send(data_event("error", &serde_json::json!({"message": message}))).await;
                        return;
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    if batch.is_empty() {
                        continue;
                    }
                    data_event("entries", &std::mem::take(&mut batch))
                }
                changed = stats.changed(), if with_stats => {
                    if changed.is_err() {
                        return;
                    }
                    let now = stats.borrow_and_update().clone();
                    stats_event(&now)
                }
            };
            if out_tx.send(event).await.is_err() {
                // The page went away: the watch thread sees its channel closed and ends.
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn data_event<T: Serialize>(name: &str, value: &T) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(value).unwrap_or_else(|_| "null".into()))
}

fn stats_event(json: &str) -> Event {
    Event::default().event("stats").data(json)
}

/// A page's admin watch, on a thread: lines to the page's stream until the page goes away
/// (noticed within a read timeout), the endpoint stops, or the server stops.
fn follow(shared: &Shared, request: &Request, tx: &mpsc::Sender<Watched>) {
    let fail = |message: String| {
        let _ = tx.blocking_send(Watched::Failed(message));
    };
    let mut admin = match Admin::connect(&shared.socket) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    if let Err(e) = admin.ask::<proto::Watching>(request) {
        return fail(e);
    }
    shared.watches.fetch_add(1, Ordering::SeqCst);
    let _open = Decrement(&shared.watches);
    if let Err(e) = admin.read_timeout(Some(Duration::from_millis(500))) {
        return fail(e);
    }
    let mut line = String::new();
    while !tx.is_closed() && !shared.stopping.load(Ordering::SeqCst) {
        match admin.read_line_into(&mut line) {
            Ok(false) => continue,
            Ok(true) => {
                let message = serde_json::from_str::<proto::WatchMessage>(&line);
                line.clear();
                match message {
                    Ok(m) => {
                        if tx.blocking_send(Watched::Message(m)).is_err() {
                            return;
                        }
                    }
                    Err(e) => return fail(format!("an answer this fsm does not read: {e}")),
                }
            }
            Err(e) => return fail(e),
        }
    }
}

struct Decrement<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One reading of the poller, as the page gets it in a `stats` event.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Stats {
    /// Milliseconds since the kernel started.
    uptime_ms: f64,
    /// The kernel's metrics, all shards.
    total: Option<proto::Shard>,
    /// Queue depth per shard.
    queued: Vec<u64>,
    /// Commands decided a second, over the last [`TICK`]s of the window.
    decided_per_sec: f64,
    /// Committed transitions a second per transition of the table, over the last minute (or
    /// since the page opened, when that is shorter).
    transition_rates: Vec<f64>,
    /// Committed transitions per transition of the table since the kernel started.
    transition_totals: Vec<u64>,
    /// Over how many seconds the rates are.
    rate_window_s: f64,
    /// Stored machines per state (the newest count; see `states_age_ms`).
    states: Option<proto::States>,
    /// How old the state counts are.
    states_age_ms: f64,
    /// How long the last count took the store.
    states_cost_ms: f64,
    workers: Vec<proto::Worker>,
    quarantined: Vec<proto::QuarantinedMachine>,
    escalations: Vec<proto::Escalated>,
    /// What the trace ring keeps.
    trace_window: Option<proto::TraceWindow>,
    /// Why a part is missing (the endpoint did not answer), if it is.
    error: Option<String>,
}

/// The poller: one connection, one reading a second while any page is open.
fn poll(shared: &Shared, transitions: usize) {
    let mut admin: Option<Admin> = None;
    let mut history: VecDeque<(Instant, Vec<u64>, u64)> = VecDeque::new();
    let mut states: Option<(Instant, proto::States, Duration)> = None;
    let mut next_states = Instant::now();
    while !shared.stopping.load(Ordering::SeqCst) {
        let started = Instant::now();
        if shared.stats.receiver_count() > 0 {
            let mut reading = Stats::default();
            match read(&mut admin, &shared.socket, &mut reading) {
                Ok(()) => {
                    if Instant::now() >= next_states {
                        let asked = Instant::now();
                        match ask_on(&mut admin, &shared.socket, &Request::States) {
                            Ok(s) => {
                                let took = asked.elapsed();
                                states = Some((Instant::now(), s, took));
                                // A count's cost stays under a twentieth of the time.
                                next_states = Instant::now() + (took * 20).max(TICK);
                            }
                            Err(e) => reading.error = Some(e),
                        }
                    }
                }
                Err(e) => {
                    admin = None;
                    reading.error = Some(e);
                }
            }
            if let Some((at, s, took)) = &states {
                reading.states = Some(s.clone());
                reading.states_age_ms = at.elapsed().as_secs_f64() * 1e3;
                reading.states_cost_ms = took.as_secs_f64() * 1e3;
            }
            rates(&mut history, &mut reading, transitions);
            let json = serde_json::to_string(&reading).unwrap_or_default();
            shared.stats.send_replace(Arc::new(json));
        } else {
            // Nobody looks: the rates start afresh when somebody does.
            history.clear();
        }
        shared.rounds.fetch_add(1, Ordering::SeqCst);
        let spent = started.elapsed();
        let mut rest = TICK.saturating_sub(spent);
        while rest > Duration::ZERO && !shared.stopping.load(Ordering::SeqCst) {
            let step = rest.min(Duration::from_millis(100));
            std::thread::sleep(step);
            rest = rest.saturating_sub(step);
        }
    }
}

fn ask_on<T: serde::de::DeserializeOwned>(
    admin: &mut Option<Admin>,
    socket: &str,
    request: &Request,
) -> Result<T, String> {
    if admin.is_none() {
        *admin = Some(Admin::connect(socket)?);
    }
    let result = admin.as_mut().expect("connected above").ask(request);
    if result.is_err() {
        *admin = None;
    }
    result
}

/// Metrics, quarantined machines, escalations and the trace window into `reading`.
fn read(admin: &mut Option<Admin>, socket: &str, reading: &mut Stats) -> Result<(), String> {
    let metrics: proto::Metrics = ask_on(admin, socket, &Request::Metrics)?;
    reading.uptime_ms = metrics.uptime_ms;
    reading.queued = metrics.shards.iter().map(|s| s.counts.queued).collect();
    reading.workers = metrics.workers;
    reading.total = Some(metrics.total);
    reading.quarantined = ask_on(admin, socket, &Request::Quarantined)?;
    reading.escalations = ask_on(admin, socket, &Request::Escalations)?;
    reading.trace_window = Some(ask_on(admin, socket, &Request::TraceWindow)?);
    Ok(())
}

/// Rates over the window: the difference between the newest reading and the oldest one
/// still inside it.
fn rates(
    history: &mut VecDeque<(Instant, Vec<u64>, u64)>,
    reading: &mut Stats,
    transitions: usize,
) {
    let Some(total) = &reading.total else {
        return;
    };
    let mut counts = total.transitions.clone();
    counts.resize(transitions, 0);
    let c = &total.counts;
    let decided = c.committed
        + c.duplicates
        + c.rejected
        + c.expired
        + c.dumped
        + c.delegated
        + c.not_stored
        + c.outcome_unknown
        + c.unavailable
        + c.fenced;
    let now = Instant::now();
    history.push_back((now, counts.clone(), decided));
    while history
        .front()
        .is_some_and(|(at, _, _)| now.duration_since(*at) > RATE_WINDOW)
    {
        history.pop_front();
    }
    reading.transition_totals = counts.clone();
    let Some((first, old, old_decided)) = history.front() else {
        return;
    };
    let span = now.duration_since(*first).as_secs_f64();
    reading.rate_window_s = span;
    if span <= 0.0 {
        reading.transition_rates = vec![0.0; transitions];
        return;
    }
    reading.transition_rates = counts
        .iter()
        .zip(old)
        .map(|(n, o)| n.saturating_sub(*o) as f64 / span)
        .collect();
    reading.decided_per_sec = decided.saturating_sub(*old_decided) as f64 / span;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn only_read_only_requests_pass_and_their_fields_are_typed() {
        assert_eq!(
            request_of("trace", &params(&[("machine", "order-7"), ("limit", "20")])).unwrap(),
            Request::Trace {
                machine: Some("order-7".into()),
                state: None,
                event: None,
                outcome: None,
                since_ms: None,
                limit: Some(20),
            }
        );
        assert_eq!(
            request_of("machines", &params(&[("state", "Paid"), ("after", "")])).unwrap(),
            Request::Machines {
                state: Some("Paid".into()),
                after: None,
                limit: None
            }
        );
        let e = request_of("release", &params(&[("machine", "order-7")])).unwrap_err();
        assert!(e.contains("not a request the inspector makes"), "{e}");
        assert!(request_of("watch", &params(&[])).is_err());
        let e = request_of("trace", &params(&[("limit", "many")])).unwrap_err();
        assert!(e.contains("limit must be a whole number"), "{e}");
        let e = request_of("show", &params(&[("machine", "a"), ("colour", "red")])).unwrap_err();
        assert!(e.contains("colour"), "an unknown field is named: {e}");
        let e = request_of("show", &params(&[])).unwrap_err();
        assert!(e.contains("machine"), "a missing field is named: {e}");
    }

    #[test]
    fn a_watch_rate_is_bounded() {
        let rate = |p: &[(&str, &str)]| match watch_request(&params(p)).unwrap() {
            Request::Watch { max_per_sec, .. } => max_per_sec,
            _ => unreachable!(),
        };
        assert_eq!(rate(&[]), Some(DEFAULT_RATE));
        assert_eq!(rate(&[("rate", "5")]), Some(5));
        assert_eq!(rate(&[("rate", "1000000")]), Some(MAX_RATE));
        assert_eq!(rate(&[("rate", "0")]), Some(1));
        assert!(watch_request(&params(&[("rate", "fast")])).is_err());
    }

    #[test]
    fn rates_are_differences_over_the_window() {
        let mut history = VecDeque::new();
        let total = |n: Vec<u64>, committed: u64| proto::Shard {
            transitions: n,
            counts: proto::Counts {
                committed,
                ..Default::default()
            },
            ..Default::default()
        };
        let earlier = Instant::now() - Duration::from_secs(10);
        history.push_back((earlier, vec![100, 0, 7], 100));
        let mut reading = Stats {
            total: Some(total(vec![150, 20], 170)),
            ..Default::default()
        };
        rates(&mut history, &mut reading, 3);
        let r = &reading.transition_rates;
        assert_eq!(r.len(), 3, "padded to the table's transitions");
        assert!((r[0] - 5.0).abs() < 0.1, "{r:?}");
        assert!((r[1] - 2.0).abs() < 0.1, "{r:?}");
        assert_eq!(r[2], 0.0, "a count never goes below its earlier reading");
        assert!((reading.decided_per_sec - 7.0).abs() < 0.1);
        assert!((reading.rate_window_s - 10.0).abs() < 0.5);
        assert_eq!(reading.transition_totals, vec![150, 20, 0]);

        // Readings older than the window leave it.
        history.push_front((Instant::now() - Duration::from_secs(120), vec![0, 0, 0], 0));
        rates(&mut history, &mut reading, 3);
        assert_eq!(history.len(), 3);
        assert_eq!(history.front().unwrap().0, earlier);
    }
}
