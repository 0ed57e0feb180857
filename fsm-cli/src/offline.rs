//! Commands on a store at rest: a file store's directory, a SQLite file, a PostgreSQL URL.

use std::io::Write;
use std::path::{Path, PathBuf};

use fsm_core::kernel::admin::{key_proto, owed_proto, timer_proto};
use fsm_core::kernel::{keys_in, owed_in, timers_in};
use fsm_core::store::{
    sealed_key, Limits, ListQuery, MachineId, Snapshot, SnapshotStore, StateCounts, StateFilter,
    StoreError, MAX_PAGE,
};
use fsm_persist::inspect::{self, Header, Source};
use fsm_persist::{FileStore, SqliteStore};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::{Decode, Status};

enum Store {
    Dir(PathBuf),
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

impl Store {
    fn parse(target: &str, schema: &str) -> Result<Store, String> {
        if target.starts_with("postgres://") || target.starts_with("postgresql://") {
            return Ok(Store::Postgres {
                url: target.to_owned(),
                schema: schema.to_owned(),
            });
        }
        let path = Path::new(target);
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(Store::Dir(path.to_path_buf())),
            Ok(m) if m.is_file() => Ok(Store::Sqlite(path.to_path_buf())),
            Ok(_) => Err(format!("{target} is neither a directory (a file store) nor a file (SQLite)")),
            Err(e) => Err(format!("{target}: {e} (a store is a file store's directory, a SQLite file, or a postgres:// URL)")),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Store::Dir(_) => "file store",
            Store::Sqlite(_) => "SQLite",
            Store::Postgres { .. } => "PostgreSQL",
        }
    }

    fn open(&self) -> Result<Box<dyn SnapshotStore>, String> {
        match self {
            Store::Dir(dir) => FileStore::open(dir)
                .map(|s| Box::new(s) as Box<dyn SnapshotStore>)
                .map_err(|e| e.to_string()),
            Store::Sqlite(path) => SqliteStore::open(path)
                .map(|s| Box::new(s) as Box<dyn SnapshotStore>)
                .map_err(|e| e.to_string()),
            Store::Postgres { url, schema } => {
                let config: postgres::Config = url.parse().map_err(|e| format!("{url}: {e}"))?;
                fsm_persist::postgres::PostgresStore::builder(config)
                    .schema(schema.clone())
                    .open()
                    .map(|s| Box::new(s) as Box<dyn SnapshotStore>)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

fn io(e: std::io::Error) -> String {
    e.to_string()
}

/// One machine's newest snapshot, for `ls`, `export` and `show`.
struct Row {
    id: MachineId,
    source: String,
    size: u64,
    verdict: Result<(Header, Snapshot), String>,
}

/// Every machine's newest snapshot (in id order), with a progress bar on long stores.
fn rows(store: &Store) -> Result<Vec<Row>, String> {
    match store {
        Store::Dir(dir) => {
            let mut progress = None;
            let found = inspect::inspect(dir, &Limits::DEFAULT, |done, total| {
                progress
                    .get_or_insert_with(|| bar(total, "reading"))
                    .set_position(done);
            })
            .map_err(|e| format!("{}: {e}", dir.display()))?;
            if let Some(p) = progress {
                p.finish_and_clear();
            }
            let mut rows = Vec::new();
            for (id, f) in found.newest() {
                let verdict = match &f.verdict {
                    Ok(h) => match inspect::read(dir, f, &Limits::DEFAULT).map_err(io)? {
                        Ok(snapshot) => Ok((h.clone(), snapshot)),
                        Err(problem) => Err(problem.to_string()),
                    },
                    Err(problem) => Err(problem.to_string()),
                };
                rows.push(Row {
                    id,
                    source: match f.source {
                        Source::File => "file".to_owned(),
                        Source::Log(n) => format!("log {n}"),
                        _ => "?".to_owned(),
                    },
                    size: f.size,
                    verdict,
                });
            }
            Ok(rows)
        }
        _ => {
            let opened = store.open()?;
            let mut ids = opened.ids().map_err(|e| e.to_string())?;
            ids.sort();
            let progress = bar(ids.len() as u64, "reading");
            let mut rows = Vec::new();
            for id in ids {
                rows.extend(read_row(store, &*opened, id)?);
                progress.inc(1);
            }
            progress.finish_and_clear();
            Ok(rows)
        }
    }
}

pub(crate) fn verify(target: &str, schema: &str, out: &mut dyn Write) -> Result<Status, String> {
    let store = Store::parse(target, schema)?;
    writeln!(out, "fsm verify: {target} ({})", store.kind()).map_err(io)?;
    let damaged = match &store {
        Store::Dir(dir) => {
            let mut progress = None;
            let found = inspect::inspect(dir, &Limits::DEFAULT, |done, total| {
                progress
                    .get_or_insert_with(|| bar(total, "verifying"))
                    .set_position(done);
            })
            .map_err(|e| format!("{}: {e}", dir.display()))?;
            if let Some(p) = progress {
                p.finish_and_clear();
            }
            let files = found
                .found
                .iter()
                .filter(|f| f.source == Source::File)
                .count();
            let records: usize = found.segments.iter().map(|s| s.records).sum();
            let in_log: usize = found.segments.iter().map(|s| s.snapshots).sum();
            writeln!(
                out,
                "  {files} snapshot files; {} log segments with {records} records holding {in_log} snapshots; {} stray temp files; {} foreign files",
                found.segments.len(),
                found.stray_temps.len(),
                found.foreign.len()
            )
            .map_err(io)?;
            for f in found.corrupt() {
                let place = match f.source {
                    Source::File => format!("{}.snap", f.id),
                    Source::Log(n) => format!("a snapshot of {} in log segment {n}", f.id),
                    _ => f.id.to_string(),
                };
                if let Err(problem) = &f.verdict {
                    writeln!(out, "  DAMAGED {place}: {problem}").map_err(io)?;
                }
            }
            for s in found.segments.iter().filter(|s| s.torn_bytes > 0) {
                writeln!(
                    out,
                    "  DAMAGED {}: {} bytes after its last valid record do not form one (a batch torn by a crash, or damaged since; recovery drops them)",
                    s.name, s.torn_bytes
                )
                .map_err(io)?;
            }
            for t in &found.stray_temps {
                writeln!(
                    out,
                    "  note: {t} is the temp file of an interrupted write (recovery removes it)"
                )
                .map_err(io)?;
            }
            for f in &found.foreign {
                writeln!(out, "  note: {f} is not a file of the store (left alone)").map_err(io)?;
            }
            let machines = found.newest();
            let bad = machines.values().filter(|f| f.verdict.is_err()).count();
            writeln!(
                out,
                "  {} machines: {} verified, {bad} without a valid snapshot",
                machines.len(),
                machines.len() - bad
            )
            .map_err(io)?;
            found.is_damaged()
        }
        _ => {
            let rows = rows(&store)?;
            let bad: Vec<&Row> = rows.iter().filter(|r| r.verdict.is_err()).collect();
            for r in &bad {
                if let Err(problem) = &r.verdict {
                    writeln!(out, "  DAMAGED {}: {problem}", r.id).map_err(io)?;
                }
            }
            writeln!(
                out,
                "  {} machines: {} verified, {} damaged",
                rows.len(),
                rows.len() - bad.len(),
                bad.len()
            )
            .map_err(io)?;
            !bad.is_empty()
        }
    };
    writeln!(out, "{}", if damaged { "DAMAGE FOUND" } else { "clean" }).map_err(io)?;
    Ok(if damaged { Status::Found } else { Status::Ok })
}

pub(crate) fn ls(
    target: &str,
    schema: &str,
    listing: &crate::Listing,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Status, String> {
    let store = Store::parse(target, schema)?;
    let after = listing
        .after
        .as_deref()
        .map(MachineId::new)
        .transpose()
        .map_err(|e| format!("--after: {e}"))?;
    let rows = match (&store, &listing.state) {
        // A database answers from its index: only the machines in the state are read.
        (Store::Sqlite(_) | Store::Postgres { .. }, Some(state)) => rows_in(
            &store,
            StateFilter::In(state),
            after.as_ref(),
            listing.limit,
        )?,
        _ => {
            let wanted = |r: &Row| match (&listing.state, &r.verdict) {
                (None, _) => true,
                (Some(state), Ok((h, _))) => h.state.as_deref() == Some(state.as_str()),
                (Some(_), Err(_)) => false,
            };
            rows(&store)?
                .into_iter()
                .filter(|r| after.as_ref().is_none_or(|a| r.id.as_str() > a.as_str()))
                .filter(wanted)
                .collect()
        }
    };
    let limit = listing.limit.unwrap_or(usize::MAX);
    let shown = &rows[..rows.len().min(limit)];
    let table_rows: Vec<Vec<String>> = shown
        .iter()
        .map(|r| match &r.verdict {
            Ok((h, _)) => vec![
                r.id.to_string(),
                h.state.clone().unwrap_or_else(|| "?".into()),
                h.machine.clone(),
                h.schema_version.to_string(),
                h.seq.to_string(),
                r.size.to_string(),
                r.source.clone(),
            ],
            Err(problem) => vec![
                r.id.to_string(),
                "DAMAGED".into(),
                problem.clone(),
                String::new(),
                String::new(),
                r.size.to_string(),
                r.source.clone(),
            ],
        })
        .collect();
    out.write_all(
        crate::online::table(
            &[
                "machine", "state", "type", "schema", "sequence", "bytes", "where",
            ],
            &table_rows,
            usize::MAX,
        )
        .as_bytes(),
    )
    .map_err(io)?;
    writeln!(out, "{} machines", shown.len()).map_err(io)?;
    if rows.len() > shown.len() {
        if let Some(last) = shown.last() {
            let _ = writeln!(err, "{}", listing.go_on(target, last.id.as_str()));
        }
    }
    Ok(Status::Ok)
}

/// The machines a database lists in `state` (from its index), after `after`, at most
/// `limit` of them and one more (so the caller knows more follow), read.
fn rows_in(
    store: &Store,
    state: StateFilter<'_>,
    after: Option<&MachineId>,
    limit: Option<usize>,
) -> Result<Vec<Row>, String> {
    let opened = store.open()?;
    let mut ids = Vec::new();
    let mut cursor = after.cloned();
    let want = limit.map_or(usize::MAX, |l| l.saturating_add(1));
    while ids.len() < want {
        let query = ListQuery {
            state,
            after: cursor.as_ref(),
            limit: (want - ids.len()).min(MAX_PAGE),
        };
        let page = opened.list(&query).map_err(|e| e.to_string())?;
        ids.extend(page.ids.iter().cloned());
        match page.next() {
            Some(next) => cursor = Some(next.clone()),
            None => break,
        }
    }
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        rows.extend(read_row(store, &*opened, id)?);
    }
    Ok(rows)
}

/// Machine `id` of an opened database, as a row (`None`: gone since it was listed).
fn read_row(
    store: &Store,
    opened: &dyn SnapshotStore,
    id: MachineId,
) -> Result<Option<Row>, String> {
    let verdict = match opened.get(&id) {
        Ok(s) => Ok((inspect::header(&s), s)),
        Err(e @ StoreError::Corrupt { .. }) => Err(e.to_string()),
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let size = verdict.as_ref().map_or(0, |(_, s)| s.len() as u64);
    Ok(Some(Row {
        id,
        source: store.kind().to_owned(),
        size,
        verdict,
    }))
}

/// Machines per state. A database counts from its index; a file store's snapshots are read
/// (not their payloads). Snapshots that record no state are decoded when this binary decodes
/// their type, and counted as such otherwise.
pub(crate) fn states(
    target: &str,
    schema: &str,
    decode: Option<&dyn Decode>,
    out: &mut dyn Write,
) -> Result<Status, String> {
    let store = Store::parse(target, schema)?;
    let mut counts = StateCounts::default();
    let place = |counts: &mut StateCounts, snapshot: &Snapshot| match snapshot.state() {
        Some(state) => counts.add(Some(state)),
        None => match decode.filter(|d| d.machine() == snapshot.machine()) {
            Some(d) => match d.describe(snapshot) {
                Ok((state, _)) => counts.add(Some(state)),
                Err(_) => counts.unreadable += 1,
            },
            None => counts.unrecorded += 1,
        },
    };
    match &store {
        Store::Dir(_) => {
            for r in rows(&store)? {
                match &r.verdict {
                    Ok((_, snapshot)) => place(&mut counts, snapshot),
                    Err(_) => counts.unreadable += 1,
                }
            }
        }
        _ => {
            let opened = store.open()?;
            counts = opened.count_states().map_err(|e| e.to_string())?;
            if counts.unrecorded > 0 && decode.is_some() {
                counts.unrecorded = 0;
                for r in rows_in(&store, StateFilter::Unrecorded, None, None)? {
                    match &r.verdict {
                        Ok((_, snapshot)) => place(&mut counts, snapshot),
                        Err(_) => counts.unreadable += 1,
                    }
                }
            }
        }
    }
    let total = counts.total();
    let declared = decode.map(|d| d.states()).unwrap_or_default();
    let mut rows: Vec<(String, u64)> = declared
        .iter()
        .map(|s| (s.to_string(), counts.states.remove(*s).unwrap_or(0)))
        .collect();
    let undeclared = if declared.is_empty() {
        ""
    } else {
        " (not declared)"
    };
    rows.extend(
        counts
            .states
            .into_iter()
            .map(|(s, n)| (format!("{s}{undeclared}"), n)),
    );
    crate::online::write_states(out, &rows, counts.unrecorded, counts.unreadable, total)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Wall-clock milliseconds since the UNIX epoch, as `2026-12-04T17:03:09.120Z`.
pub(crate) fn wall(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

pub(crate) fn export(
    target: &str,
    schema: &str,
    decode: Option<&dyn Decode>,
    reveal: bool,
    out: &mut dyn Write,
) -> Result<Status, String> {
    let store = Store::parse(target, schema)?;
    let mut damaged = false;
    for r in rows(&store)? {
        let line = match &r.verdict {
            Ok((h, snapshot)) => {
                let mut line = json!({
                    "id": r.id.as_str(),
                    "machine": h.machine,
                    "schema_version": h.schema_version,
                    "seq": h.seq,
                    "format": format!("{:?}", h.format),
                    "bytes": r.size,
                    "payload_bytes": snapshot.payload().len(),
                });
                if let Some(state) = &h.state {
                    line["state_name"] = json!(state);
                }
                if let Some(sealed) = snapshot.sealed() {
                    line["sealed_key"] = match sealed_key(sealed) {
                        Ok((key, _)) => json!(key),
                        Err(e) => json!(e.to_string()),
                    };
                }
                // The payload may hold sensitive fields in clear (written before sealing, or
                // without it): only on request.
                if reveal {
                    line["payload_hex"] = json!(hex(snapshot.payload()));
                }
                if let Some(d) = decode.filter(|d| d.machine() == h.machine) {
                    let state = if reveal {
                        d.reveal(snapshot)
                    } else {
                        d.to_json(snapshot)
                    };
                    match state {
                        Ok(state) => line["state"] = state,
                        Err(e) => line["decode_error"] = json!(e),
                    }
                }
                match timers_in(snapshot) {
                    Ok(timers) if timers.is_empty() => {}
                    Ok(timers) => line["timers"] = to_json(timers.iter().map(timer_proto)),
                    Err(e) => line["timers_error"] = json!(e.to_string()),
                }
                match keys_in(snapshot) {
                    Ok(keys) if keys.is_empty() => {}
                    Ok(keys) => line["keys"] = to_json(keys.iter().map(key_proto)),
                    Err(e) => line["keys_error"] = json!(e.to_string()),
                }
                match owed_in(snapshot, &r.id) {
                    Ok(owed) if owed.is_empty() => {}
                    Ok(owed) => line["owed"] = to_json(owed.iter().map(owed_proto)),
                    Err(e) => line["owed_error"] = json!(e.to_string()),
                }
                line
            }
            Err(problem) => {
                damaged = true;
                json!({"id": r.id.as_str(), "damaged": problem})
            }
        };
        writeln!(out, "{line}").map_err(io)?;
    }
    Ok(if damaged { Status::Found } else { Status::Ok })
}

pub(crate) fn show(
    target: &str,
    id: &str,
    decode: Option<&dyn Decode>,
    reveal: bool,
    out: &mut dyn Write,
) -> Result<Status, String> {
    let store = Store::parse(target, "public")?;
    let id = MachineId::new(id).map_err(|e| e.to_string())?;
    let rows = rows(&store)?;
    let Some(r) = rows.into_iter().find(|r| r.id == id) else {
        writeln!(out, "{id}: nothing stored").map_err(io)?;
        return Ok(Status::Found);
    };
    match &r.verdict {
        Ok((h, snapshot)) => {
            writeln!(
                out,
                "{id}: {} schema {} sequence {} ({} bytes, {})",
                h.machine, h.schema_version, h.seq, r.size, r.source
            )
            .map_err(io)?;
            match decode.filter(|d| d.machine() == h.machine) {
                Some(d) if reveal => match d.reveal(snapshot) {
                    Ok(value) => writeln!(out, "{value:#}").map_err(io)?,
                    Err(e) => return Err(format!("cannot reveal {id}: {e}")),
                },
                Some(d) => match d.describe(snapshot) {
                    Ok((state, value)) => writeln!(out, "state {state}\n{value}").map_err(io)?,
                    Err(e) => {
                        writeln!(out, "does not decode as {}: {e}", d.machine()).map_err(io)?
                    }
                },
                None if reveal => {
                    return Err(format!(
                        "--reveal needs a binary that decodes `{}` (fsm_cli::run with its codec)",
                        h.machine
                    ))
                }
                None => writeln!(
                    out,
                    "{} payload bytes (this binary decodes no `{}`: see fsm_cli::run)",
                    snapshot.payload().len(),
                    h.machine
                )
                .map_err(io)?,
            }
            match owed_in(snapshot, &id) {
                Ok(owed) => {
                    let owed: Vec<_> = owed.iter().map(owed_proto).collect();
                    crate::online::write_owed(out, &owed)?;
                }
                Err(e) => writeln!(out, "its outbox does not decode: {e}").map_err(io)?,
            }
            match timers_in(snapshot) {
                Ok(timers) => {
                    let timers: Vec<_> = timers.iter().map(timer_proto).collect();
                    crate::online::write_timers(out, &timers)?;
                }
                Err(e) => writeln!(out, "its timers do not decode: {e}").map_err(io)?,
            }
            match keys_in(snapshot) {
                Ok(keys) => {
                    let keys: Vec<_> = keys.iter().map(key_proto).collect();
                    crate::online::write_keys(out, &keys)?;
                }
                Err(e) => writeln!(out, "its idempotency keys do not decode: {e}").map_err(io)?,
            }
            Ok(Status::Ok)
        }
        Err(problem) => {
            writeln!(out, "{id}: DAMAGED: {problem}").map_err(io)?;
            Ok(Status::Found)
        }
    }
}

/// Protocol messages as a JSON array, as `export` writes them.
fn to_json<T: serde::Serialize>(items: impl Iterator<Item = T>) -> serde_json::Value {
    serde_json::to_value(items.collect::<Vec<T>>()).unwrap_or_default()
}

pub(crate) fn compact(target: &str, out: &mut dyn Write) -> Result<Status, String> {
    match Store::parse(target, "public")? {
        Store::Dir(dir) => {
            let store = FileStore::open(&dir).map_err(|e| e.to_string())?;
            let recovery = store.recovery().clone();
            store.checkpoint().map_err(|e| e.to_string())?;
            writeln!(
                out,
                "{}: compacted; {} machines, {} log segments folded ({} snapshots taken from the log), {} torn bytes dropped, {} stray temp files removed, {} corrupt files kept for repair",
                dir.display(),
                recovery.machines,
                recovery.wal_segments,
                recovery.wal_snapshots_applied,
                recovery.wal_torn_bytes,
                recovery.stray_temps_removed,
                recovery.corrupt.len()
            )
            .map_err(io)?;
            Ok(Status::Ok)
        }
        other => Err(format!(
            "compact is for the file store; {} compacts its own log (SQLite checkpoints its WAL, PostgreSQL vacuums)",
            other.kind()
        )),
    }
}
