//! Commands that talk to a running kernel's admin endpoint.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use fsm_core::kernel::admin::proto::{self, Reply, Request};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Status;

/// Whether `target` names an admin endpoint (a socket file, or a host:port) rather than a
/// store.
pub(crate) fn is_socket(target: &str) -> bool {
    std::fs::metadata(target).is_ok_and(|m| m.file_type().is_socket())
        || target.parse::<SocketAddr>().is_ok()
}

/// A connection to an admin endpoint.
pub(crate) struct Admin {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: Box<dyn Write + Send>,
    /// The connection itself, for its read timeout.
    socket: Socket,
    target: String,
}

enum Socket {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Admin {
    /// Connects and checks that the endpoint speaks this build's protocol.
    pub(crate) fn connect(target: &str) -> Result<Admin, String> {
        let clone = |e: std::io::Error| format!("{target}: {e}");
        let (reader, writer, socket): (Box<dyn Read + Send>, Box<dyn Write + Send>, Socket) =
            if let Ok(addr) = target.parse::<SocketAddr>() {
                let stream = TcpStream::connect(addr)
                    .map_err(|e| format!("cannot connect to {target}: {e}"))?;
                (
                    Box::new(stream.try_clone().map_err(clone)?),
                    Box::new(stream.try_clone().map_err(clone)?),
                    Socket::Tcp(stream),
                )
            } else {
                let stream = UnixStream::connect(target).map_err(|e| {
                    format!("cannot connect to the admin socket {target}: {e} (is the kernel serving it? see Kernel::serve_admin)")
                })?;
                (
                    Box::new(stream.try_clone().map_err(clone)?),
                    Box::new(stream.try_clone().map_err(clone)?),
                    Socket::Unix(stream),
                )
            };
        let mut admin = Admin {
            reader: BufReader::new(reader),
            writer,
            socket,
            target: target.to_owned(),
        };
        let hello: proto::Hello = admin.ask(&Request::Hello)?;
        if hello.protocol != proto::PROTOCOL {
            return Err(format!(
                "{target} speaks admin protocol {}, this fsm speaks {}: use the fsm built with the kernel",
                hello.protocol,
                proto::PROTOCOL
            ));
        }
        Ok(admin)
    }

    /// How long a read waits before it fails with `TimedOut` or `WouldBlock` (`None`: for
    /// ever).
    pub(crate) fn read_timeout(&self, timeout: Option<Duration>) -> Result<(), String> {
        match &self.socket {
            Socket::Unix(s) => s.set_read_timeout(timeout),
            Socket::Tcp(s) => s.set_read_timeout(timeout),
        }
        .map_err(|e| format!("{}: {e}", self.target))
    }

    /// Appends what arrives up to the end of a line to `line`: `Ok(true)` with the line
    /// complete, `Ok(false)` when the read timed out first (the part read stays in `line`),
    /// an error when the endpoint closed the connection or failed.
    pub(crate) fn read_line_into(&mut self, line: &mut String) -> Result<bool, String> {
        match self.reader.read_line(line) {
            Ok(0) => Err(format!("{} closed the connection", self.target)),
            Ok(_) if line.ends_with('\n') => Ok(true),
            Ok(_) => Err(format!("{} closed the connection", self.target)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(format!("{}: {e}", self.target)),
        }
    }

    pub(crate) fn send(&mut self, request: &Request) -> Result<(), String> {
        let mut line = serde_json::to_string(request).map_err(|e| e.to_string())?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(|e| format!("{}: {e}", self.target))
    }

    /// The next line, as a `T`; `None` when the endpoint closed the connection.
    pub(crate) fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => serde_json::from_str(&line).map(Some).map_err(|e| {
                format!(
                    "{}: an answer this fsm does not read ({e}): {line}",
                    self.target
                )
            }),
            Err(e) => Err(format!("{}: {e}", self.target)),
        }
    }

    /// Sends `request` and returns its answer, or the endpoint's failure as text
    /// (`kind: message`).
    pub(crate) fn ask<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, String> {
        self.send(request)?;
        match self.next::<Reply<T>>()? {
            Some(Reply::Ok(answer)) => Ok(answer),
            Some(Reply::Error(failure)) => Err(failure.to_string()),
            None => Err(format!("{} closed the connection", self.target)),
        }
    }
}

fn io(e: std::io::Error) -> String {
    e.to_string()
}

/// The trace filter of `fsm trace`.
pub(crate) struct Filter {
    pub(crate) machine: Option<String>,
    pub(crate) state: Option<String>,
    pub(crate) event: Option<String>,
    pub(crate) outcome: Option<String>,
    pub(crate) since_ms: Option<f64>,
}

impl Filter {
    fn trace(&self, limit: Option<usize>) -> Request {
        Request::Trace {
            machine: self.machine.clone(),
            state: self.state.clone(),
            event: self.event.clone(),
            outcome: self.outcome.clone(),
            since_ms: self.since_ms,
            limit,
        }
    }

    fn watch(&self, max_per_sec: Option<u32>) -> Request {
        Request::Watch {
            machine: self.machine.clone(),
            state: self.state.clone(),
            event: self.event.clone(),
            outcome: self.outcome.clone(),
            since_ms: self.since_ms,
            max_per_sec,
        }
    }
}

/// A message as its JSON line.
fn json_line<T: Serialize>(message: &T) -> String {
    serde_json::to_string(message).unwrap_or_default()
}

fn entry_line(e: &proto::Entry) -> String {
    format!(
        "{:>12.3} ms  {:<20} {} --{}--> {}  {}  (end to end {:.0} us)",
        e.at_ms,
        e.machine,
        e.from,
        e.event,
        e.to.as_deref().unwrap_or("-"),
        e.outcome.name(),
        e.end_to_end_us,
    )
}

/// How `fsm trace` reads and prints.
pub(crate) struct TraceOptions {
    pub(crate) limit: Option<usize>,
    pub(crate) follow: bool,
    pub(crate) max_per_sec: Option<u32>,
    pub(crate) json_lines: bool,
}

pub(crate) fn trace(
    socket: &str,
    filter: &Filter,
    options: &TraceOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Status, String> {
    let &TraceOptions {
        limit,
        follow,
        max_per_sec,
        json_lines,
    } = options;
    let mut admin = Admin::connect(socket)?;
    let entries: Vec<proto::Entry> = admin.ask(&filter.trace(limit))?;
    for e in &entries {
        if json_lines {
            writeln!(out, "{}", json_line(e)).map_err(io)?;
        } else {
            writeln!(out, "{}", entry_line(e)).map_err(io)?;
        }
    }
    // Say when the ring no longer holds all of what was asked for.
    let window: proto::TraceWindow = admin.ask(&Request::TraceWindow)?;
    let asked_from = filter.since_ms.unwrap_or(0.0);
    if let Some(since) = window.complete_since_ms.filter(|s| asked_from < *s) {
        let _ = writeln!(
            err,
            "fsm: {}the trace ring keeps the last {} decisions of each shard and has overwritten {} since the kernel started: decisions before {:.3} s (kernel time) are gone, so older matches may be missing",
            if entries.is_empty() { "nothing matched; " } else { "" },
            window.capacity,
            window.overwritten,
            since / 1000.0
        );
    }
    if !follow {
        return Ok(Status::Ok);
    }
    let watching: proto::Watching = admin.ask(&filter.watch(max_per_sec))?;
    out.flush().map_err(io)?;
    // From here on every decision the filter matches is shown: a script that drives the
    // kernel can wait for this line before it acts.
    writeln!(
        err,
        "fsm: following {}'s decisions as they happen, at most {} a second (interrupt to stop)",
        watching.watching, watching.max_per_sec
    )
    .map_err(io)?;
    err.flush().map_err(io)?;
    while let Some(message) = admin.next::<proto::WatchMessage>()? {
        match &message {
            _ if json_lines => writeln!(out, "{}", json_line(&message)).map_err(io)?,
            proto::WatchMessage::Entry { entry } => {
                writeln!(out, "{}", entry_line(entry)).map_err(io)?
            }
            proto::WatchMessage::Dropped {
                dropped,
                rate_limited,
                overrun,
                max_per_sec,
            } => writeln!(
                out,
                "... {dropped} not shown ({rate_limited} over the limit of {max_per_sec} a second, {overrun} gone from the ring before they were read)"
            )
            .map_err(io)?,
        }
        out.flush().map_err(io)?;
    }
    Ok(Status::Ok)
}

pub(crate) fn show(socket: &str, id: &str, out: &mut dyn Write) -> Result<Status, String> {
    let shown: proto::Show = Admin::connect(socket)?.ask(&Request::Show {
        machine: id.to_owned(),
    })?;
    // `Cart (in Checkout)`, innermost superstate first.
    let within = if shown.superstates.is_empty() {
        String::new()
    } else {
        format!(" (in {})", shown.superstates.join(", in "))
    };
    writeln!(
        out,
        "{id}: {}{within} (durable sequence {})\n{}",
        shown.state,
        shown
            .seq
            .map_or_else(|| "none: never stored".to_owned(), |s| s.to_string()),
        shown.value
    )
    .map_err(io)?;
    write_owed(out, &shown.owed)?;
    write_timers(out, &shown.timers)?;
    write_keys(out, &shown.keys)?;
    Ok(Status::Ok)
}

/// A machine's armed timers, one line each (nothing when none is armed).
pub(crate) fn write_timers(out: &mut dyn Write, timers: &[proto::Timer]) -> Result<(), String> {
    if timers.is_empty() {
        return Ok(());
    }
    writeln!(out, "{} timer(s) armed:", timers.len()).map_err(io)?;
    for t in timers {
        let event = t
            .event
            .as_deref()
            .map_or_else(String::new, |e| format!(", fires `{e}`"));
        writeln!(
            out,
            "  {} at {} (armed for {} ms){event}",
            t.kind,
            crate::offline::wall(t.deadline_ms),
            t.after_ms
        )
        .map_err(io)?;
    }
    Ok(())
}

/// The idempotency keys a machine remembers, oldest first (nothing when it remembers none).
pub(crate) fn write_keys(out: &mut dyn Write, keys: &[proto::Key]) -> Result<(), String> {
    if keys.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "remembers {} idempotency key(s), oldest first (a retry with one gets its original answer):",
        keys.len()
    )
    .map_err(io)?;
    for k in keys {
        let transition = k
            .transition
            .as_deref()
            .map_or_else(String::new, |t| format!(": {t}"));
        writeln!(out, "  {} in sequence {}{transition}", k.key, k.seq).map_err(io)?;
    }
    Ok(())
}

/// The effects a machine owes, one line each (nothing when it owes none).
pub(crate) fn write_owed(out: &mut dyn Write, owed: &[proto::Owed]) -> Result<(), String> {
    if owed.is_empty() {
        return Ok(());
    }
    writeln!(out, "owes {} effect(s), oldest first:", owed.len()).map_err(io)?;
    for o in owed {
        let next = match (o.running, o.next_attempt_ms) {
            (true, _) => "running now".to_owned(),
            (_, Some(at)) => format!("next attempt at {}", crate::offline::wall(at)),
            _ => "next attempt at once".to_owned(),
        };
        writeln!(
            out,
            "  {}  {} failed attempt(s), {next}, owed since {}",
            o.key,
            o.attempts,
            crate::offline::wall(o.owed_since_ms)
        )
        .map_err(io)?;
    }
    Ok(())
}

pub(crate) fn states(socket: &str, out: &mut dyn Write) -> Result<Status, String> {
    let s: proto::States = Admin::connect(socket)?.ask(&Request::States)?;
    let rows: Vec<(String, u64)> = s
        .states
        .iter()
        .map(|c| {
            let name = if c.declared {
                c.state.clone()
            } else {
                format!("{} (not declared)", c.state)
            };
            (name, c.machines)
        })
        .collect();
    write_states(out, &rows, 0, s.unreadable, s.total)
}

/// The table `fsm states` prints, live or offline.
pub(crate) fn write_states(
    out: &mut dyn Write,
    states: &[(String, u64)],
    unrecorded: u64,
    unreadable: u64,
    total: u64,
) -> Result<Status, String> {
    let mut rows: Vec<Vec<String>> = states
        .iter()
        .map(|(s, n)| vec![s.clone(), n.to_string()])
        .collect();
    if unrecorded > 0 {
        rows.push(vec!["(state not recorded)".into(), unrecorded.to_string()]);
    }
    if unreadable > 0 {
        rows.push(vec!["(unreadable)".into(), unreadable.to_string()]);
    }
    rows.push(vec!["total".into(), total.to_string()]);
    out.write_all(table(&["state", "machines"], &rows, terminal_width()).as_bytes())
        .map_err(io)?;
    if unrecorded > 0 {
        writeln!(
            out,
            "{unrecorded} snapshots were written before snapshots recorded their state; a binary built with fsm_cli::run decodes them, and the next write of each records it"
        )
        .map_err(io)?;
    }
    Ok(Status::Ok)
}

/// Ids from a running kernel, one per line, page by page.
pub(crate) fn ls(
    socket: &str,
    listing: &crate::Listing,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Status, String> {
    let mut admin = Admin::connect(socket)?;
    let mut after = listing.after.clone();
    let mut left = listing.limit.unwrap_or(usize::MAX);
    while left > 0 {
        let page: proto::Machines = admin.ask(&Request::Machines {
            state: listing.state.clone(),
            after: after.clone(),
            limit: Some(left.min(1000)),
        })?;
        for id in &page.ids {
            writeln!(out, "{id}").map_err(io)?;
        }
        left -= page.ids.len().min(left);
        match page.next {
            Some(next) if left == 0 => {
                let _ = writeln!(err, "{}", listing.go_on(socket, &next));
                break;
            }
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(Status::Ok)
}

pub(crate) fn quarantined(socket: &str, out: &mut dyn Write) -> Result<Status, String> {
    let list: Vec<proto::QuarantinedMachine> =
        Admin::connect(socket)?.ask(&Request::Quarantined)?;
    if list.is_empty() {
        writeln!(out, "no machine is quarantined").map_err(io)?;
    }
    for q in &list {
        writeln!(out, "{}: {}", q.machine, q.cause).map_err(io)?;
    }
    Ok(Status::Ok)
}

pub(crate) fn escalations(socket: &str, out: &mut dyn Write) -> Result<Status, String> {
    let list: Vec<proto::Escalated> = Admin::connect(socket)?.ask(&Request::Escalations)?;
    if list.is_empty() {
        writeln!(out, "no worker escalated").map_err(io)?;
    }
    for e in &list {
        writeln!(
            out,
            "worker {} at {:.0} ms: more than {} restarts in {:.0} ms; last failure: {}",
            e.worker, e.at_ms, e.max_restarts, e.within_ms, e.failure
        )
        .map_err(io)?;
    }
    Ok(Status::Ok)
}

pub(crate) fn release(socket: &str, id: &str, out: &mut dyn Write) -> Result<Status, String> {
    let answer: proto::Released = Admin::connect(socket)?.ask(&Request::Release {
        machine: id.to_owned(),
    })?;
    if answer.released {
        writeln!(out, "{id} released: its next command loads it again").map_err(io)?;
        Ok(Status::Ok)
    } else {
        writeln!(out, "{id} was not quarantined").map_err(io)?;
        Ok(Status::Found)
    }
}

pub(crate) fn restart_worker(
    socket: &str,
    worker: usize,
    out: &mut dyn Write,
) -> Result<Status, String> {
    let answer: proto::Restarted =
        Admin::connect(socket)?.ask(&Request::RestartWorker { worker })?;
    if answer.restarted {
        writeln!(out, "worker {worker} restarted").map_err(io)?;
        Ok(Status::Ok)
    } else {
        writeln!(out, "there is no worker {worker}").map_err(io)?;
        Ok(Status::Found)
    }
}

pub(crate) fn metrics(socket: &str, out: &mut dyn Write) -> Result<Status, String> {
    let m: proto::Metrics = Admin::connect(socket)?.ask(&Request::Metrics)?;
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&m).map_err(|e| e.to_string())?
    )
    .map_err(io)?;
    Ok(Status::Ok)
}

/// `fsm top`: samples the metrics and the trace every interval and draws a frame.
pub(crate) fn top(
    socket: &str,
    interval_ms: u64,
    once: bool,
    out: &mut dyn Write,
) -> Result<Status, String> {
    let interval = Duration::from_millis(interval_ms.max(10));
    let mut admin = Admin::connect(socket)?;
    let mut before: proto::Metrics = admin.ask(&Request::Metrics)?;
    loop {
        std::thread::sleep(interval);
        let now: proto::Metrics = admin.ask(&Request::Metrics)?;
        let recent: Vec<proto::Entry> = admin.ask(&Request::Trace {
            machine: None,
            state: None,
            event: None,
            outcome: None,
            since_ms: Some(before.uptime_ms),
            limit: None,
        })?;
        let text = frame(&before, &now, &recent, terminal_width());
        if !once {
            // Clear the screen and go home (ANSI), then draw.
            write!(out, "\x1b[2J\x1b[H").map_err(io)?;
        }
        out.write_all(text.as_bytes()).map_err(io)?;
        out.flush().map_err(io)?;
        if once {
            return Ok(Status::Ok);
        }
        before = now;
    }
}

/// One frame of `fsm top` from two metric samples and the trace between them.
pub(crate) fn frame(
    before: &proto::Metrics,
    now: &proto::Metrics,
    recent: &[proto::Entry],
    width: usize,
) -> String {
    let mut s = String::new();
    let seconds = ((now.uptime_ms - before.uptime_ms) / 1000.0).max(1e-9);
    let total = &now.total;
    s.push_str(&format!(
        "fsm top: {}   up {:.1} s   store reopens {}   interval {:.2} s\n\n",
        now.machine,
        now.uptime_ms / 1000.0,
        now.store_reopens,
        seconds
    ));
    let none = proto::Shard::default();
    let rows = now.shards.iter().enumerate();
    let mut cells = Vec::new();
    for (i, shard) in rows.chain(std::iter::once((usize::MAX, total))) {
        let old = if i == usize::MAX {
            &before.total
        } else {
            before.shards.get(i).unwrap_or(&none)
        };
        let rate = shard.counts.committed.saturating_sub(old.counts.committed) as f64 / seconds;
        cells.push(vec![
            if i == usize::MAX {
                "all".to_owned()
            } else {
                i.to_string()
            },
            shard.counts.queued.to_string(),
            shard.high_water.to_string(),
            shard.resident.to_string(),
            format!("{rate:.0}"),
            shard.counts.committed.to_string(),
            shard.counts.rejected.to_string(),
            format!("{:.0}", shard.end_to_end.p50_us),
            format!("{:.0}", shard.end_to_end.p99_us),
            shard.quarantined.to_string(),
        ]);
    }
    s.push_str(&table(
        &[
            "shard",
            "queued",
            "peak",
            "resident",
            "commits/s",
            "committed",
            "rejected",
            "p50 us",
            "p99 us",
            "quarantined",
        ],
        &cells,
        width,
    ));
    s.push_str(&format!(
        "\npersist p99 {:.0} us   wait p99 {:.0} us   batch p50 {}   timers fired {}   not stored {}   unknown {}\n",
        total.persist.p99_us,
        total.wait.p99_us,
        total.batch.p50,
        total.counts.timers_fired,
        total.counts.not_stored,
        total.counts.outcome_unknown,
    ));
    s.push_str(&format!(
        "effects owed {}   oldest owed {}\n",
        total.counts.owed,
        total
            .oldest_owed_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{:.1} s", ms / 1000.0)),
    ));
    if !now.workers.is_empty() {
        let cells: Vec<Vec<String>> = now
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.worker.to_string(),
                    w.effects.to_string(),
                    w.errors.to_string(),
                    w.retries.to_string(),
                    w.given_up.to_string(),
                    w.panics.to_string(),
                    w.restarts.to_string(),
                    w.parked.to_string(),
                    w.escalated.to_string(),
                ]
            })
            .collect();
        s.push('\n');
        s.push_str(&table(
            &[
                "worker",
                "effects",
                "errors",
                "retries",
                "given up",
                "panics",
                "restarts",
                "waiting",
                "escalated",
            ],
            &cells,
            width,
        ));
    }
    let mut by_machine: BTreeMap<&str, u64> = BTreeMap::new();
    for e in recent {
        *by_machine.entry(e.machine.as_str()).or_default() += 1;
    }
    let mut busiest: Vec<(&str, u64)> = by_machine.into_iter().collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    s.push_str("\nbusiest machines this interval (commands decided)\n");
    if busiest.is_empty() {
        s.push_str("  none\n");
    }
    for (machine, n) in busiest.iter().take(5) {
        s.push_str(&format!("  {n:>7}  {machine}\n"));
    }
    s
}

/// The terminal's width in columns when standard output is one (`COLUMNS`, as shells export
/// it, else 80); unlimited when the output goes to a file or a pipe.
fn terminal_width() -> usize {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return usize::MAX;
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(80)
}

/// Rows under a header, each column as wide as its widest cell (the first aligned left, the
/// others right), two spaces apart. Columns that would pass `width` are left out, and a last
/// line says how many.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>], width: usize) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .chain(std::iter::once(header[c].chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut shown = 0;
    let mut used = 0;
    for (c, w) in widths.iter().enumerate() {
        let need = if c == 0 { *w } else { w + 2 };
        if c > 0 && used + need > width {
            break;
        }
        used += need;
        shown += 1;
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (c, cell) in cells.take(shown).enumerate() {
            if c == 0 {
                out.push_str(&format!("{cell:<w$}", w = widths[0]));
            } else {
                out.push_str(&format!("  {cell:>w$}", w = widths[c]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut s = line(&mut header.iter().copied());
    for r in rows {
        s.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    if shown < header.len() {
        s.push_str(&format!(
            "({} more columns do not fit the terminal: {})\n",
            header.len() - shown,
            header[shown..].join(", ")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_headers_are_whole() {
        let rows = vec![
            vec!["0".to_owned(), "12".to_owned(), "1234567".to_owned()],
            vec!["all".to_owned(), "3".to_owned(), "0".to_owned()],
        ];
        let t = table(&["shard", "queued", "quarantined"], &rows, usize::MAX);
        assert_eq!(
            t,
            "shard  queued  quarantined\n0          12      1234567\nall         3            0\n"
        );
    }

    #[test]
    fn columns_that_do_not_fit_are_left_out_and_named() {
        let rows = vec![vec!["0".to_owned(), "1".to_owned(), "2".to_owned()]];
        let t = table(&["shard", "queued", "quarantined"], &rows, 14);
        assert_eq!(
            t,
            "shard  queued\n0           1\n(1 more columns do not fit the terminal: quarantined)\n"
        );
    }
}
