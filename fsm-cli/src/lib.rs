//! `fsm`, the operator's tool: a running kernel seen through its admin socket
//! (`fsm_core::kernel::admin`), and stores checked, listed, exported and compacted offline.
//!
//! ```text
//! fsm top /run/orders/admin.sock            live view: shards, queues, throughput, latency
//! fsm trace SOCKET --machine order-7 -f     one machine's decisions, as they happen
//! fsm show SOCKET order-7                   its state now (sensitive fields redacted)
//! fsm quarantined SOCKET / fsm release SOCKET order-7
//! fsm verify /var/lib/orders                every snapshot and log record checked (exit 1 on damage)
//! fsm ls orders.sqlite                      machines, types, schema versions, sequences, sizes
//! fsm export --json postgres://host/db      envelopes as JSON lines
//! fsm compact /var/lib/orders               fold the log into the snapshot files
//! fsm submit postgres://host/db order-7 '{"Pay":{"cents":500}}' --key pay-7 --wait-ms 5000
//!                                           a command through a cluster's inbox
//! fsm inbox postgres://host/db              a cluster's pending commands per partition
//! fsm ui SOCKET                             a live inspector in the browser
//! ```
//!
//! A store is a directory (the file store), a file (SQLite), or a `postgres://` URL. The
//! binary decodes no machine type: `show` and `export` on a store print envelopes. A service
//! ships its own binary that also prints states, with one call:
//!
//! ```no_run
//! # use fsm_core::kernel::Durable;
//! # fn demo<Order: Durable + fsm_core::Redact>() -> std::process::ExitCode {
//! use fsm_core::store::Codec;
//! // fn main() -> ExitCode {
//! fsm_cli::run(Codec::<Order>::new(1))
//! // }
//! # }
//! ```
//!
//! Exit status: 0 done (also when the reader of the output went away, as `fsm ls | head`
//! does), 1 damage found (`verify`), no such machine (`show`) or nothing done (`release` of a
//! machine that was not quarantined), 2 an error (bad arguments, unreachable socket or
//! store).

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fsm_core::kernel::Durable;
use fsm_core::store::{Codec, Snapshot};
use fsm_core::{Redact, Redacted};
use serde_json::Value;

mod cluster;
mod offline;
mod online;
mod ui;

pub use ui::{UiConfig, UiServer};

/// Decodes a machine type's snapshots for `show` and `export` on a store.
pub trait Decode {
    /// The machine type it decodes (envelopes of other types are shown undecoded).
    fn machine(&self) -> &'static str;
    /// The state's name and its value printed with sensitive fields redacted (read without
    /// opening sealed fields: no key needed).
    fn describe(&self, snapshot: &Snapshot) -> Result<(&'static str, String), String>;
    /// The state as JSON with each sensitive field's value replaced by `"<redacted>"` (no
    /// key needed).
    fn to_json(&self, snapshot: &Snapshot) -> Result<Value, String>;
    /// The state as JSON in full, sensitive fields too (`--reveal`): needs the key of sealed
    /// fields.
    fn reveal(&self, snapshot: &Snapshot) -> Result<Value, String> {
        let _ = snapshot;
        Err("this binary cannot reveal sensitive fields".into())
    }
    /// The states the machine type declares, in declaration order (`states` lists them all,
    /// with 0 where no machine is).
    fn states(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

struct Typed<M: Durable>(Codec<M>);

/// `value` (a state as serde writes it) with the fields `names` replaced by `"<redacted>"`:
/// in the variant's object (`{"Variant": {"card": ..}}`), or by position in its array for a
/// tuple variant. A shape it does not recognize (custom serde attributes) is replaced whole:
/// never shown in clear by mistake.
fn redact_json(value: Value, names: &[&str]) -> Value {
    if names.is_empty() {
        return value;
    }
    let hidden = || Value::String("<redacted>".into());
    let Value::Object(mut outer) = value else {
        return hidden();
    };
    if outer.len() != 1 {
        return hidden();
    }
    let Some(inner) = outer.values_mut().next() else {
        return hidden();
    };
    let mut replaced = 0;
    match inner {
        Value::Object(fields) => {
            for name in names {
                if let Some(v) = fields.get_mut(*name) {
                    *v = hidden();
                    replaced += 1;
                }
            }
        }
        Value::Array(items) => {
            for name in names {
                if let Some(v) = name.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    *v = hidden();
                    replaced += 1;
                }
            }
        }
        // A newtype variant: its one field is the value.
        other if names.len() == 1 && names[0] == "0" => {
            *other = hidden();
            replaced += 1;
        }
        _ => {}
    }
    if replaced != names.len() {
        return hidden();
    }
    Value::Object(outer)
}

impl<M: Durable + Redact> Decode for Typed<M> {
    fn machine(&self) -> &'static str {
        M::TABLE.machine()
    }

    fn describe(&self, snapshot: &Snapshot) -> Result<(&'static str, String), String> {
        let m = self
            .0
            .decode_redacted(snapshot)
            .map_err(|e| e.to_string())?;
        Ok((m.state_name(), format!("{:?}", Redacted(&m))))
    }

    fn to_json(&self, snapshot: &Snapshot) -> Result<Value, String> {
        let mut m = self
            .0
            .decode_redacted(snapshot)
            .map_err(|e| e.to_string())?;
        let names = Codec::<M>::sensitive_fields(&mut m);
        let value = serde_json::to_value(&m).map_err(|e| e.to_string())?;
        Ok(redact_json(value, &names))
    }

    fn reveal(&self, snapshot: &Snapshot) -> Result<Value, String> {
        if snapshot.sealed().is_some() && !self.0.is_sealing() {
            return Err(
                "its sensitive fields are sealed and this binary's codec has no keyring: build it with Codec::sealed(keyring) to reveal them"
                    .into(),
            );
        }
        let m = self.0.decode(snapshot).map_err(|e| e.to_string())?;
        serde_json::to_value(&m).map_err(|e| e.to_string())
    }

    fn states(&self) -> Vec<&'static str> {
        M::TABLE.states().iter().map(|s| s.name()).collect()
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "fsm",
    version,
    about = "Inspect a running fsm kernel through its admin socket; verify, list, export and compact stores offline",
    after_help = "A SOCKET is an admin socket path (or a loopback host:port). A STORE is a file store's directory, a SQLite file, or a postgres:// URL (with --schema)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A live view of a running kernel: shards, queue depths, throughput, latency percentiles,
    /// worker restarts, the busiest machines.
    #[command(
        after_help = "Examples:\n  fsm top /run/orders/admin.sock\n  fsm top /run/orders/admin.sock --once --interval-ms 500"
    )]
    Top {
        socket: String,
        /// Refresh interval, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Print one frame (two samples an interval apart) and exit.
        #[arg(long)]
        once: bool,
    },
    /// The kernel's recent decisions, oldest first; with --follow, new ones as they happen.
    #[command(
        after_help = "Examples:\n  fsm trace /run/orders/admin.sock --machine order-7\n  fsm trace /run/orders/admin.sock --outcome rejected --limit 20\n  fsm trace /run/orders/admin.sock --state Paid -f --max-per-sec 100"
    )]
    Trace {
        socket: String,
        #[arg(long)]
        machine: Option<String>,
        /// Decisions that left or entered this state.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        event: Option<String>,
        /// committed, duplicate, rejected, deferred, dumped, delegated, expired, not_stored,
        /// outcome_unknown, unavailable or fenced.
        #[arg(long)]
        outcome: Option<String>,
        /// Only decisions this many milliseconds after the kernel started, or later.
        #[arg(long)]
        since_ms: Option<f64>,
        /// At most this many (the newest).
        #[arg(long)]
        limit: Option<usize>,
        /// Keep streaming new decisions (until interrupted). A line on stderr says when the
        /// stream is attached: every decision after it is shown.
        #[arg(long, short = 'f')]
        follow: bool,
        /// With --follow: at most this many entries a second (the kernel says how many it
        /// dropped).
        #[arg(long)]
        max_per_sec: Option<u32>,
        /// Print the JSON lines as they come.
        #[arg(long)]
        json: bool,
    },
    /// One machine: its live state from a running kernel (SOCKET), or as stored (STORE).
    #[command(
        after_help = "Exit status 1 when no such machine is stored.\n\nExamples:\n  fsm show /run/orders/admin.sock order-7\n  fsm show /var/lib/orders order-7\n  orders-fsm show /var/lib/orders order-7 --reveal   (a service's own binary, with its keyring)"
    )]
    Show {
        target: String,
        id: String,
        /// Print sensitive fields too, from a store, with a service's own binary (its codec's
        /// keyring opens sealed fields). Never over a socket: they do not leave the process.
        #[arg(long)]
        reveal: bool,
    },
    /// Quarantined machines and why.
    #[command(after_help = "Example:\n  fsm quarantined /run/orders/admin.sock")]
    Quarantined { socket: String },
    /// Effect workers that exceeded their restart intensity.
    #[command(after_help = "Example:\n  fsm escalations /run/orders/admin.sock")]
    Escalations { socket: String },
    /// Lifts a machine's quarantine after its snapshot was repaired.
    #[command(
        after_help = "Exit status 1 when the machine was not quarantined.\n\nExample:\n  fsm release /run/orders/admin.sock order-7"
    )]
    Release { socket: String, id: String },
    /// Restarts an escalated effect worker.
    #[command(after_help = "Example:\n  fsm restart-worker /run/orders/admin.sock 0")]
    RestartWorker { socket: String, worker: usize },
    /// The kernel's metrics as JSON.
    #[command(after_help = "Example:\n  fsm metrics /run/orders/admin.sock | jq .total.counts")]
    Metrics { socket: String },
    /// Checks every snapshot and log record of a store, like fsck; exit status 1 on damage.
    #[command(
        after_help = "Examples:\n  fsm verify /var/lib/orders\n  fsm verify orders.sqlite\n  fsm verify postgres://fsm@db/orders --schema fsm"
    )]
    Verify {
        store: String,
        /// PostgreSQL schema.
        #[arg(long, default_value = "public")]
        schema: String,
    },
    /// Stored machines in id order: from a running kernel (SOCKET), one id per line; from a
    /// store (STORE), with each one's state, type, schema version, sequence and size.
    #[command(
        after_help = "Examples:\n  fsm ls /run/orders/admin.sock --state PastDue\n  fsm ls /run/orders/admin.sock --limit 100 --after order-7\n  fsm ls /var/lib/orders --state PastDue\n  fsm ls orders.sqlite | head"
    )]
    Ls {
        target: String,
        /// Only the machines in this state.
        #[arg(long)]
        state: Option<String>,
        /// Only ids after this one (where a listing cut by --limit stopped).
        #[arg(long)]
        after: Option<String>,
        /// At most this many (a note on standard error says where to go on).
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value = "public")]
        schema: String,
    },
    /// How many stored machines are in each state, from a running kernel (SOCKET) or a store
    /// (STORE).
    #[command(
        after_help = "Examples:\n  fsm states /run/orders/admin.sock\n  fsm states /var/lib/orders\n  fsm states postgres://fsm@db/orders --schema fsm"
    )]
    States {
        target: String,
        #[arg(long, default_value = "public")]
        schema: String,
    },
    /// Each machine's newest envelope as a JSON line.
    #[command(after_help = "Example:\n  fsm export --json /var/lib/orders > orders.jsonl")]
    Export {
        store: String,
        /// JSON lines (the only format).
        #[arg(long, required = true)]
        json: bool,
        #[arg(long, default_value = "public")]
        schema: String,
        /// Sensitive fields in clear (a service's own binary, with its keyring); without it they
        /// are `"<redacted>"`.
        #[arg(long)]
        reveal: bool,
    },
    /// Folds a file store's log into its snapshot files (as opening it does).
    #[command(
        after_help = "Example (the store must not be open elsewhere):\n  fsm compact /var/lib/orders"
    )]
    Compact { store: String },
    /// Submits a command to a cluster's inbox (PostgreSQL): the machine's owner applies it.
    /// Prints `accepted` once it is durable; with --wait-ms, the decision too (exit 1 if it
    /// was not applied, or not decided in time).
    #[command(
        after_help = "Example:\n  fsm submit postgres://fsm@db/orders order-7 '{\"Pay\":{\"cents\":500}}' --key pay-7 --wait-ms 5000"
    )]
    Submit {
        /// The cluster's database, a postgres:// URL.
        store: String,
        /// The machine id.
        machine: String,
        /// The event, as JSON in the machine's event type (serde's form, e.g.
        /// `{"Pay":{"cents":500}}` or `"Cancel"`).
        event: String,
        /// The idempotency key: submitting again with it is the same command.
        #[arg(long)]
        key: String,
        /// Expire the command if no owner took it within this many milliseconds.
        #[arg(long)]
        ttl_ms: Option<u64>,
        /// Wait this long for the decision.
        #[arg(long)]
        wait_ms: Option<u64>,
        #[arg(long, default_value = "public")]
        schema: String,
        /// The snapshot table the inbox belongs to.
        #[arg(long, default_value = "fsm_snapshots")]
        table: String,
    },
    /// A live inspector in the browser: the statechart with the machines in each state and
    /// each transition's rate, the trace as it happens, one machine's history, queues,
    /// latencies, quarantined machines and escalated workers. Read-only.
    #[command(
        after_help = "Open the address it prints. It listens on loopback unless --allow-remote; the page, its script and its styles are in the binary.

Examples:
  fsm ui /run/orders/admin.sock
  fsm ui /run/orders/admin.sock --listen 127.0.0.1:0"
    )]
    Ui {
        socket: String,
        /// Where to listen (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:7171")]
        listen: std::net::SocketAddr,
        /// Listen on an address other than loopback (put your own access control in front).
        #[arg(long)]
        allow_remote: bool,
    },
    /// A cluster's pending commands per partition, and how long the oldest has waited.
    #[command(after_help = "Example:\n  fsm inbox postgres://fsm@db/orders --schema fsm")]
    Inbox {
        store: String,
        #[arg(long, default_value = "public")]
        schema: String,
        #[arg(long, default_value = "fsm_snapshots")]
        table: String,
    },
}

/// What `ls` lists: which state, from where, how many.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub(crate) state: Option<String>,
    pub(crate) after: Option<String>,
    pub(crate) limit: Option<usize>,
}

impl Listing {
    /// The note that says where a listing cut by `--limit` after `last` goes on.
    pub(crate) fn go_on(&self, target: &str, last: &str) -> String {
        let state = self
            .state
            .as_deref()
            .map(|s| format!(" --state {s}"))
            .unwrap_or_default();
        format!("more after {last}: fsm ls {target}{state} --after {last}")
    }
}

/// The exit status of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done.
    Ok,
    /// Damage found, or nothing to do.
    Found,
    /// An error.
    Error,
}

impl From<Status> for ExitCode {
    fn from(s: Status) -> ExitCode {
        ExitCode::from(match s {
            Status::Ok => 0,
            Status::Found => 1,
            Status::Error => 2,
        })
    }
}

/// A [`Decode`] for machine type `M`, for [`run_from`].
pub fn decoder<M: Durable + Redact>(codec: Codec<M>) -> Box<dyn Decode> {
    Box::new(Typed(codec))
}

/// Runs `fsm` with this process's arguments, decoding no machine type.
pub fn run_untyped() -> ExitCode {
    run_from(
        None,
        std::env::args_os(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    )
    .into()
}

/// Runs `fsm` with this process's arguments; `show` and `export` on a store decode snapshots
/// of `M` with `codec` and print real states.
pub fn run<M: Durable + Redact>(codec: Codec<M>) -> ExitCode {
    let typed = Typed(codec);
    run_from(
        Some(&typed),
        std::env::args_os(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    )
    .into()
}

/// Runs `fsm` with `args` (the first is the program name), writing to `out` and `err`.
pub fn run_from<I, T>(
    decode: Option<&dyn Decode>,
    args: I,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Status
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let text = e.render().to_string();
            let help = matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            );
            let _ = if help {
                out.write_all(text.as_bytes())
            } else {
                err.write_all(text.as_bytes())
            };
            return if help { Status::Ok } else { Status::Error };
        }
    };
    // A reader that went away (`fsm ls | head`) ends the command quietly: what it wanted
    // was written.
    let mut guarded = PipeGuard {
        inner: out,
        closed: false,
    };
    let out: &mut dyn Write = &mut guarded;
    let result = match cli.command {
        Command::Top {
            socket,
            interval_ms,
            once,
        } => online::top(&socket, interval_ms, once, out),
        Command::Trace {
            socket,
            machine,
            state,
            event,
            outcome,
            since_ms,
            limit,
            follow,
            max_per_sec,
            json,
        } => {
            let filter = online::Filter {
                machine,
                state,
                event,
                outcome,
                since_ms,
            };
            let options = online::TraceOptions {
                limit,
                follow,
                max_per_sec,
                json_lines: json,
            };
            online::trace(&socket, &filter, &options, out, err)
        }
        Command::Show { target, id, reveal } => {
            if online::is_socket(&target) {
                if reveal {
                    Err("--reveal reads a store with the service's own binary: sensitive fields never leave the running kernel".to_owned())
                } else {
                    online::show(&target, &id, out)
                }
            } else {
                offline::show(&target, &id, decode, reveal, out)
            }
        }
        Command::Quarantined { socket } => online::quarantined(&socket, out),
        Command::Escalations { socket } => online::escalations(&socket, out),
        Command::Release { socket, id } => online::release(&socket, &id, out),
        Command::RestartWorker { socket, worker } => online::restart_worker(&socket, worker, out),
        Command::Metrics { socket } => online::metrics(&socket, out),
        Command::Verify { store, schema } => offline::verify(&store, &schema, out),
        Command::Ls {
            target,
            state,
            after,
            limit,
            schema,
        } => {
            let page = Listing {
                state,
                after,
                limit,
            };
            if online::is_socket(&target) {
                online::ls(&target, &page, out, err)
            } else {
                offline::ls(&target, &schema, &page, out, err)
            }
        }
        Command::States { target, schema } => {
            if online::is_socket(&target) {
                online::states(&target, out)
            } else {
                offline::states(&target, &schema, decode, out)
            }
        }
        Command::Export {
            store,
            json: _,
            schema,
            reveal,
        } => offline::export(&store, &schema, decode, reveal, out),
        Command::Compact { store } => offline::compact(&store, out),
        Command::Submit {
            store,
            machine,
            event,
            key,
            ttl_ms,
            wait_ms,
            schema,
            table,
        } => cluster::submit(
            &store, &schema, &table, &machine, &event, &key, ttl_ms, wait_ms, out,
        ),
        Command::Inbox {
            store,
            schema,
            table,
        } => cluster::depth(&store, &schema, &table, out),
        Command::Ui {
            socket,
            listen,
            allow_remote,
        } => ui::run(
            ui::UiConfig {
                socket,
                listen,
                allow_remote,
            },
            out,
        ),
    };
    if guarded.closed {
        return Status::Ok;
    }
    match result {
        Ok(status) => status,
        Err(message) if message.starts_with("not_found:") => {
            let _ = writeln!(err, "fsm: {message}");
            Status::Found
        }
        Err(message) => {
            let _ = writeln!(err, "fsm: {message}");
            Status::Error
        }
    }
}

/// Standard output that notes a closed pipe, so the command stops without an error message.
struct PipeGuard<'a> {
    inner: &'a mut dyn Write,
    closed: bool,
}

impl PipeGuard<'_> {
    fn note(&mut self, e: std::io::Error) -> std::io::Error {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            self.closed = true;
        }
        e
    }
}

impl Write for PipeGuard<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf).map_err(|e| self.note(e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().map_err(|e| self.note(e))
    }
}
