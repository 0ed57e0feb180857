//! Commands that talk to a running kernel's admin endpoint.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::Status;

/// Whether `target` names an admin endpoint (a socket file, or a host:port) rather than a
/// store.
pub(crate) fn is_socket(target: &str) -> bool {
    std::fs::metadata(target).is_ok_and(|m| m.file_type().is_socket())
        || target.parse::<SocketAddr>().is_ok()
}

struct Admin {
    reader: BufReader<Box<dyn Read>>,
    writer: Box<dyn Write>,
    target: String,
}

impl Admin {
    fn connect(target: &str) -> Result<Admin, String> {
        let (reader, writer): (Box<dyn Read>, Box<dyn Write>) = if let Ok(addr) =
            target.parse::<SocketAddr>()
        {
            let stream =
                TcpStream::connect(addr).map_err(|e| format!("cannot connect to {target}: {e}"))?;
            (
                Box::new(stream.try_clone().map_err(|e| e.to_string())?),
                Box::new(stream),
            )
        } else {
            let stream = UnixStream::connect(target).map_err(|e| {
                    format!("cannot connect to the admin socket {target}: {e} (is the kernel serving it? see Kernel::serve_admin)")
                })?;
            (
                Box::new(stream.try_clone().map_err(|e| e.to_string())?),
                Box::new(stream),
            )
        };
        Ok(Admin {
            reader: BufReader::new(reader),
            writer,
            target: target.to_owned(),
        })
    }

    fn send(&mut self, request: &Value) -> Result<(), String> {
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(|e| format!("{}: {e}", self.target))
    }

    /// The next line, as JSON; `None` when the endpoint closed the connection.
    fn next(&mut self) -> Result<Option<Value>, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => serde_json::from_str(&line)
                .map(Some)
                .map_err(|e| format!("{}: not a JSON answer ({e}): {line}", self.target)),
            Err(e) => Err(format!("{}: {e}", self.target)),
        }
    }

    /// Sends `request` and returns its `ok` payload, or the endpoint's error as text.
    fn ask(&mut self, request: Value) -> Result<Value, String> {
        self.send(&request)?;
        let answer = self
            .next()?
            .ok_or_else(|| format!("{} closed the connection", self.target))?;
        if let Some(ok) = answer.get("ok") {
            return Ok(ok.clone());
        }
        Err(match answer.get("error") {
            Some(e) => format!(
                "{}: {}",
                e["kind"].as_str().unwrap_or("error"),
                e["message"].as_str().unwrap_or("")
            ),
            None => format!("unexpected answer {answer}"),
        })
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
    fn request(&self, op: &str) -> Value {
        let mut r = json!({ "op": op });
        for (key, value) in [
            ("machine", &self.machine),
            ("state", &self.state),
            ("event", &self.event),
            ("outcome", &self.outcome),
        ] {
            if let Some(v) = value {
                r[key] = json!(v);
            }
        }
        if let Some(ms) = self.since_ms {
            r["since_ms"] = json!(ms);
        }
        r
    }
}

fn entry_line(e: &Value) -> String {
    format!(
        "{:>12.3} ms  {:<20} {} --{}--> {}  {}  (end to end {:.0} us)",
        e["at_ms"].as_f64().unwrap_or(0.0),
        e["machine"].as_str().unwrap_or("?"),
        e["from"].as_str().unwrap_or("?"),
        e["event"].as_str().unwrap_or("?"),
        e["to"].as_str().unwrap_or("-"),
        e["outcome"].as_str().unwrap_or("?"),
        e["end_to_end_us"].as_f64().unwrap_or(0.0),
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
    let mut request = filter.request("trace");
    if let Some(n) = limit {
        request["limit"] = json!(n);
    }
    let mut shown = 0;
    for e in admin.ask(request)?.as_array().into_iter().flatten() {
        shown += 1;
        if json_lines {
            writeln!(out, "{e}").map_err(io)?;
        } else {
            writeln!(out, "{}", entry_line(e)).map_err(io)?;
        }
    }
    // Say when the ring no longer holds all of what was asked for (a kernel without the
    // request answers an error, and then nothing is said).
    if let Ok(window) = admin.ask(json!({"op": "trace_window"})) {
        let since = window["complete_since_ms"].as_f64();
        let asked_from = filter.since_ms.unwrap_or(0.0);
        if let Some(since) = since.filter(|s| asked_from < *s) {
            let _ = writeln!(
                err,
                "fsm: {}the trace ring keeps the last {} decisions of each shard and has overwritten {} since the kernel started: decisions before {:.3} s (kernel time) are gone, so older matches may be missing",
                if shown == 0 { "nothing matched; " } else { "" },
                window["capacity"],
                window["overwritten"],
                since / 1000.0
            );
        }
    }
    if !follow {
        return Ok(Status::Ok);
    }
    let mut request = filter.request("watch");
    if let Some(n) = max_per_sec {
        request["max_per_sec"] = json!(n);
    }
    admin.ask(request)?;
    out.flush().map_err(io)?;
    while let Some(message) = admin.next()? {
        if json_lines {
            writeln!(out, "{message}").map_err(io)?;
        } else if let Some(e) = message.get("entry") {
            writeln!(out, "{}", entry_line(e)).map_err(io)?;
        } else if let Some(n) = message.get("dropped") {
            writeln!(
                out,
                "... {n} not shown ({} over the limit of {} a second, {} gone from the ring before they were read)",
                message["rate_limited"], message["max_per_sec"], message["overrun"]
            )
            .map_err(io)?;
        }
        out.flush().map_err(io)?;
    }
    Ok(Status::Ok)
}

pub(crate) fn show(socket: &str, id: &str, out: &mut dyn Write) -> Result<Status, String> {
    let shown = Admin::connect(socket)?.ask(json!({"op": "show", "machine": id}))?;
    writeln!(
        out,
        "{id}: {} (durable sequence {})\n{}",
        shown["state"].as_str().unwrap_or("?"),
        shown["seq"]
            .as_u64()
            .map_or_else(|| "none: never stored".to_owned(), |s| s.to_string()),
        shown["value"].as_str().unwrap_or("")
    )
    .map_err(io)?;
    let empty = Vec::new();
    write_owed(out, shown["owed"].as_array().unwrap_or(&empty))?;
    write_timers(out, shown["timers"].as_array().unwrap_or(&empty))?;
    write_keys(out, shown["keys"].as_array().unwrap_or(&empty))?;
    Ok(Status::Ok)
}

/// A machine's armed timers, one line each (nothing when none is armed).
pub(crate) fn write_timers(out: &mut dyn Write, timers: &[Value]) -> Result<(), String> {
    if timers.is_empty() {
        return Ok(());
    }
    writeln!(out, "{} timer(s) armed:", timers.len()).map_err(io)?;
    for t in timers {
        let event = t["event"]
            .as_str()
            .map_or_else(String::new, |e| format!(", fires `{e}`"));
        writeln!(
            out,
            "  {} at {} (armed for {} ms){event}",
            t["kind"].as_str().unwrap_or("?"),
            crate::offline::wall(t["deadline_ms"].as_u64().unwrap_or(0)),
            t["after_ms"]
        )
        .map_err(io)?;
    }
    Ok(())
}

/// The idempotency keys a machine remembers, oldest first (nothing when it remembers none).
pub(crate) fn write_keys(out: &mut dyn Write, keys: &[Value]) -> Result<(), String> {
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
        let transition = k["transition"]
            .as_str()
            .map_or_else(String::new, |t| format!(": {t}"));
        writeln!(
            out,
            "  {} in sequence {}{transition}",
            k["key"].as_str().unwrap_or("?"),
            k["seq"]
        )
        .map_err(io)?;
    }
    Ok(())
}

/// The effects a machine owes, one line each (nothing when it owes none).
pub(crate) fn write_owed(out: &mut dyn Write, owed: &[Value]) -> Result<(), String> {
    if owed.is_empty() {
        return Ok(());
    }
    writeln!(out, "owes {} effect(s), oldest first:", owed.len()).map_err(io)?;
    for o in owed {
        let next = match (o["running"].as_bool(), o["next_attempt_ms"].as_u64()) {
            (Some(true), _) => "running now".to_owned(),
            (_, Some(at)) => format!("next attempt at {}", crate::offline::wall(at)),
            _ => "next attempt at once".to_owned(),
        };
        writeln!(
            out,
            "  {}  {} failed attempt(s), {next}, owed since {}",
            o["key"].as_str().unwrap_or("?"),
            o["attempts"],
            crate::offline::wall(o["owed_since_ms"].as_u64().unwrap_or(0))
        )
        .map_err(io)?;
    }
    Ok(())
}

pub(crate) fn quarantined(socket: &str, out: &mut dyn Write) -> Result<Status, String> {
    let list = Admin::connect(socket)?.ask(json!({"op": "quarantined"}))?;
    let list = list.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        writeln!(out, "no machine is quarantined").map_err(io)?;
    }
    for q in &list {
        writeln!(
            out,
            "{}: {}",
            q["machine"].as_str().unwrap_or("?"),
            q["cause"].as_str().unwrap_or("?")
        )
        .map_err(io)?;
    }
    Ok(Status::Ok)
}

pub(crate) fn escalations(socket: &str, out: &mut dyn Write) -> Result<Status, String> {
    let list = Admin::connect(socket)?.ask(json!({"op": "escalations"}))?;
    let list = list.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        writeln!(out, "no worker escalated").map_err(io)?;
    }
    for e in &list {
        writeln!(
            out,
            "worker {} at {:.0} ms: more than {} restarts in {:.0} ms; last failure: {}",
            e["worker"],
            e["at_ms"].as_f64().unwrap_or(0.0),
            e["max_restarts"],
            e["within_ms"].as_f64().unwrap_or(0.0),
            e["failure"].as_str().unwrap_or("?")
        )
        .map_err(io)?;
    }
    Ok(Status::Ok)
}

pub(crate) fn release(socket: &str, id: &str, out: &mut dyn Write) -> Result<Status, String> {
    let answer = Admin::connect(socket)?.ask(json!({"op": "release", "machine": id}))?;
    if answer["released"] == true {
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
    let answer = Admin::connect(socket)?.ask(json!({"op": "restart_worker", "worker": worker}))?;
    if answer["restarted"] == true {
        writeln!(out, "worker {worker} restarted").map_err(io)?;
        Ok(Status::Ok)
    } else {
        writeln!(out, "there is no worker {worker}").map_err(io)?;
        Ok(Status::Found)
    }
}

pub(crate) fn metrics(socket: &str, out: &mut dyn Write) -> Result<Status, String> {
    let m = Admin::connect(socket)?.ask(json!({"op": "metrics"}))?;
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
    let mut before = admin.ask(json!({"op": "metrics"}))?;
    loop {
        std::thread::sleep(interval);
        let now = admin.ask(json!({"op": "metrics"}))?;
        let since = before["uptime_ms"].as_f64().unwrap_or(0.0);
        let recent = admin.ask(json!({"op": "trace", "since_ms": since}))?;
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

fn count(v: &Value, name: &str) -> u64 {
    v["counts"][name].as_u64().unwrap_or(0)
}

/// One frame of `fsm top` from two metric samples and the trace between them.
pub(crate) fn frame(before: &Value, now: &Value, recent: &Value, width: usize) -> String {
    let mut s = String::new();
    let seconds = ((now["uptime_ms"].as_f64().unwrap_or(0.0)
        - before["uptime_ms"].as_f64().unwrap_or(0.0))
        / 1000.0)
        .max(1e-9);
    let total = &now["total"];
    s.push_str(&format!(
        "fsm top: {}   up {:.1} s   store reopens {}   interval {:.2} s\n\n",
        now["machine"].as_str().unwrap_or("?"),
        now["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        now["store_reopens"],
        seconds
    ));
    let empty = Vec::new();
    let old_shards = before["shards"].as_array().unwrap_or(&empty);
    let rows = now["shards"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .enumerate();
    let mut cells = Vec::new();
    for (i, shard) in rows.chain(std::iter::once((usize::MAX, total))) {
        let old = if i == usize::MAX {
            &before["total"]
        } else {
            old_shards.get(i).unwrap_or(&Value::Null)
        };
        let rate =
            count(shard, "committed").saturating_sub(count(old, "committed")) as f64 / seconds;
        cells.push(vec![
            if i == usize::MAX {
                "all".to_owned()
            } else {
                i.to_string()
            },
            count(shard, "queued").to_string(),
            shard["high_water"].to_string(),
            shard["resident"].to_string(),
            format!("{rate:.0}"),
            count(shard, "committed").to_string(),
            count(shard, "rejected").to_string(),
            format!(
                "{:.0}",
                shard["end_to_end"]["p50_us"].as_f64().unwrap_or(0.0)
            ),
            format!(
                "{:.0}",
                shard["end_to_end"]["p99_us"].as_f64().unwrap_or(0.0)
            ),
            shard["quarantined"].to_string(),
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
        total["persist"]["p99_us"].as_f64().unwrap_or(0.0),
        total["wait"]["p99_us"].as_f64().unwrap_or(0.0),
        total["batch"]["p50"],
        count(total, "timers_fired"),
        count(total, "not_stored"),
        count(total, "outcome_unknown"),
    ));
    s.push_str(&format!(
        "effects owed {}   oldest owed {}\n",
        count(total, "owed"),
        total["oldest_owed_ms"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |ms| format!("{:.1} s", ms / 1000.0)),
    ));
    let workers = now["workers"].as_array().unwrap_or(&empty);
    if !workers.is_empty() {
        let cells: Vec<Vec<String>> = workers
            .iter()
            .map(|w| {
                [
                    "worker",
                    "effects",
                    "errors",
                    "retries",
                    "given_up",
                    "panics",
                    "restarts",
                    "parked",
                    "escalated",
                ]
                .iter()
                .map(|k| w[*k].to_string())
                .collect()
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
    for e in recent.as_array().unwrap_or(&empty) {
        *by_machine
            .entry(e["machine"].as_str().unwrap_or("?"))
            .or_default() += 1;
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
