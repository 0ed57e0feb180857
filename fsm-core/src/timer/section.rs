//! The timers section of a snapshot: a machine's armed timers with their deadlines, in a
//! layout of its own (a version byte first), checked against the machine's table on the way
//! in.

use std::borrow::Cow;

use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;

use super::rules::{Armed, Timers};
use super::{check_name, millis_ceil, TimerKind, MAX_TIMER_DURATION};
use crate::kernel::section::{counted, varint};
use crate::kernel::SectionError;
use crate::store::Section;
use crate::table::{StateId, Table};

/// The timers section's layout version this build writes and reads.
pub(crate) const SECTION_VERSION: u8 = 1;
/// Armed timers a section may hold, whatever the kernel's bound: more is corruption.
const SECTION_MAX_TIMERS: usize = 4096;

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(crate) struct StoredTimer {
    /// 0 state timeout, 1 event timeout, 2 named, 3 a superstate's timeout.
    pub(crate) kind: u8,
    pub(crate) name: Option<String>,
    pub(crate) instance: u64,
    pub(crate) deadline: u64,
    pub(crate) after: u64,
    pub(crate) event: Option<Vec<u8>>,
}

/// The timers section of a snapshot: its layout version, the next instance number, then every
/// armed timer, in postcard's format for `(u8, u64, Vec<StoredTimer>)` (what
/// [`decode_section`] reads with postcard), written by hand: it is written with every commit
/// of a machine with timers, and a generic serializer costs several times as much here.
pub(crate) fn encode_section(timers: &Timers<Box<[u8]>>) -> Vec<u8> {
    let size = 12
        + timers
            .armed
            .iter()
            .map(|a| {
                32 + a.event.as_ref().map_or(0, |e| e.len())
                    + match &a.kind {
                        TimerKind::Named(n) | TimerKind::Superstate(n) => n.len(),
                        _ => 0,
                    }
            })
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.push(SECTION_VERSION);
    varint(&mut out, timers.next);
    varint(&mut out, timers.armed.len() as u64);
    for a in &timers.armed {
        match &a.kind {
            TimerKind::State => out.extend_from_slice(&[0, 0]),
            TimerKind::Event => out.extend_from_slice(&[1, 0]),
            TimerKind::Named(n) => {
                out.extend_from_slice(&[2, 1]);
                counted(&mut out, n.as_bytes());
            }
            TimerKind::Superstate(n) => {
                out.extend_from_slice(&[3, 1]);
                counted(&mut out, n.as_bytes());
            }
        }
        varint(&mut out, a.instance);
        varint(&mut out, a.deadline);
        varint(&mut out, a.after);
        match &a.event {
            None => out.push(0),
            Some(e) => {
                out.push(1);
                counted(&mut out, e);
            }
        }
    }
    out
}

/// Decodes a timers section written for a machine with `table` that is now in `state`,
/// checking everything against them: a section that does not fit is corrupt.
pub(crate) fn decode_section(
    bytes: &[u8],
    table: &Table,
    state: StateId,
) -> Result<Timers<Box<[u8]>>, SectionError> {
    let (next, stored): (u64, Vec<StoredTimer>) =
        crate::kernel::section::decode_versioned(Section::Timers, bytes, SECTION_VERSION)?;
    let invalid = |problem: String| SectionError::invalid(Section::Timers, problem);
    if stored.len() > SECTION_MAX_TIMERS {
        return Err(invalid(format!(
            "{} armed timers, more than any machine holds",
            stored.len()
        )));
    }
    let mut timers = Timers {
        next,
        armed: Vec::with_capacity(stored.len()),
    };
    for s in stored {
        let kind = match (s.kind, s.name) {
            (0, None) => TimerKind::State,
            (1, None) => TimerKind::Event,
            (2, Some(name)) => {
                check_name(&name).map_err(|e| invalid(e.to_string()))?;
                TimerKind::Named(Cow::Owned(name))
            }
            (3, Some(name)) => {
                // Only a superstate the machine is inside, which declares a timeout.
                let inside = table
                    .ancestors(state)
                    .filter_map(|a| table.superstates().get(a))
                    .find(|s| s.name() == name);
                match inside {
                    Some(s) if s.state_timeout().is_some() => {
                        TimerKind::Superstate(Cow::Borrowed(s.name()))
                    }
                    _ => {
                        return Err(invalid(format!(
                            "a timeout of superstate `{name}` armed in state `{}`, which is not inside such a superstate with a timeout",
                            table.state_name(state)
                        )))
                    }
                }
            }
            (k, _) => return Err(invalid(format!("unknown timer kind {k}"))),
        };
        if s.instance >= next {
            return Err(invalid(format!(
                "{kind}: instance {} not below the next, {next}",
                s.instance
            )));
        }
        if s.after == 0 || s.after > millis_ceil(MAX_TIMER_DURATION) {
            return Err(invalid(format!("{kind}: duration of {} ms", s.after)));
        }
        match (&kind, &s.event) {
            (TimerKind::State, None) => {
                let declared = table.state(state).and_then(|m| m.state_timeout());
                if declared.is_none() {
                    return Err(invalid(format!(
                        "a state timeout armed in state `{}`, which declares none",
                        table.state_name(state)
                    )));
                }
            }
            (TimerKind::State, Some(_)) | (TimerKind::Superstate(_), Some(_)) => {
                return Err(invalid(format!("{kind} with an event")))
            }
            (TimerKind::Superstate(_), None) => {}
            (_, None) => return Err(invalid(format!("{kind} without its event"))),
            _ => {}
        }
        if timers.get(&kind).is_some() {
            return Err(invalid(format!("{kind} armed twice")));
        }
        timers.armed.push(Armed {
            kind,
            instance: s.instance,
            deadline: s.deadline,
            after: s.after,
            event: s.event.map(Vec::into_boxed_slice),
        });
    }
    Ok(timers)
}
