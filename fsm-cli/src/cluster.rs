//! The cluster's inbox from the command line: submit a command to any machine of a cluster
//! (the CLI owns no partition; the machine's owner decides it), and see what is pending.

use std::io::Write;
use std::time::Duration;

use fsm_core::kernel::IdempotencyKey;
use fsm_core::store::MachineId;
use fsm_persist::postgres::{Inbox, InboxCommand, InboxError};

use crate::Status;

fn open(url: &str, schema: &str, table: &str) -> Result<Inbox, String> {
    let config: postgres::Config = url.parse().map_err(|e| format!("{url}: {e}"))?;
    Inbox::builder(config)
        .schema(schema)
        .table(table)
        .poll(Duration::from_millis(250))
        .open()
        .map_err(|e| e.to_string())
}

/// `fsm submit URL MACHINE EVENT_JSON --key K [--wait-ms N]`: accepted once this prints
/// `accepted`; with a wait, the decision too. Exit 0 when accepted (and, with a wait,
/// applied), 1 when decided otherwise or not decided in time, 2 on an error.
#[allow(clippy::too_many_arguments)] // one per command-line option
pub(crate) fn submit(
    url: &str,
    schema: &str,
    table: &str,
    machine: &str,
    event: &str,
    key: &str,
    ttl_ms: Option<u64>,
    wait_ms: Option<u64>,
    out: &mut dyn Write,
) -> Result<Status, String> {
    let machine = MachineId::new(machine).map_err(|e| e.to_string())?;
    let key = IdempotencyKey::new(key).map_err(|e| e.to_string())?;
    let mut command =
        InboxCommand::json(machine.clone(), key.clone(), event).map_err(|e| e.to_string())?;
    if let Some(ms) = ttl_ms {
        command = command.ttl(Duration::from_millis(ms));
    }
    let inbox = open(url, schema, table)?;
    let ticket = inbox.submit(command).map_err(|e| e.to_string())?;
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(|e| e.to_string());
    w(
        out,
        format!(
            "accepted: machine {machine} key {key} (inbox row {}, partition {})",
            ticket.row(),
            inbox.partition_of(&machine)
        ),
    )?;
    let Some(ms) = wait_ms else {
        return Ok(Status::Ok);
    };
    match ticket.wait(Duration::from_millis(ms)) {
        Ok(d) => {
            let mut line = format!("{}", d.status);
            if let Some(t) = &d.transition {
                line.push_str(&format!(": {t}"));
            }
            if let Some(seq) = d.seq {
                line.push_str(&format!(" (seq {seq})"));
            }
            if let Some(detail) = &d.detail {
                line.push_str(&format!("; {detail}"));
            }
            if let Some(node) = &d.node {
                line.push_str(&format!(" [node {node}]"));
            }
            w(out, line)?;
            Ok(if d.is_applied() {
                Status::Ok
            } else {
                Status::Found
            })
        }
        Err(InboxError::Timeout(_)) => {
            w(
                out,
                format!("not decided within {ms} ms; it stays accepted (`fsm submit` again with the same key to wait)"),
            )?;
            Ok(Status::Found)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `fsm inbox URL`: pending commands per partition and the oldest's age.
pub(crate) fn depth(
    url: &str,
    schema: &str,
    table: &str,
    out: &mut dyn Write,
) -> Result<Status, String> {
    let inbox = open(url, schema, table)?;
    let depth = inbox.depth().map_err(|e| e.to_string())?;
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(|e| e.to_string());
    let total: u64 = depth.iter().map(|d| d.pending).sum();
    w(
        out,
        format!(
            "{total} pending in {} of {} partitions",
            depth.len(),
            inbox.partitions()
        ),
    )?;
    for d in &depth {
        w(
            out,
            format!(
                "partition {:>4}: {:>7} pending, oldest {:.1} s",
                d.partition,
                d.pending,
                d.oldest.as_secs_f64()
            ),
        )?;
    }
    Ok(Status::Ok)
}
