//! The idempotency journal: the last N keys a machine applied, stored inside its snapshot so
//! that the key and the transition become durable in the same write.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::machine::Transition;
use crate::store::Section;
use crate::table::{EventId, StateId, Table};

use super::request::IdempotencyKey;
use super::section::{self, SectionError};

/// The journal layout version this build writes and reads.
pub(crate) const VERSION: u8 = 1;

/// One applied key: the transition it caused and the snapshot that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: IdempotencyKey,
    pub(crate) seq: u64,
    pub(crate) transition: Transition,
}

/// One entry as the journal section stores it.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredEntry<'a> {
    pub(crate) key: &'a str,
    pub(crate) seq: u64,
    pub(crate) from: u16,
    pub(crate) event: u16,
    pub(crate) to: u16,
}

/// The keys of the most recent keyed transitions, oldest first, at most `window` of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Journal {
    entries: VecDeque<Entry>,
}

impl Journal {
    /// The entries, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    pub(crate) fn find(&self, key: &IdempotencyKey) -> Option<&Entry> {
        // Newest first: a retry is most often of a recent command.
        self.entries.iter().rev().find(|e| &e.key == key)
    }

    pub(crate) fn record(&mut self, entry: Entry, window: usize) {
        if window == 0 {
            return;
        }
        while self.entries.len() >= window {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let stored: Vec<StoredEntry<'_>> = self
            .entries
            .iter()
            .map(|e| StoredEntry {
                key: e.key.as_str(),
                seq: e.seq,
                from: e.transition.from().index() as u16,
                event: e.transition.event().index() as u16,
                to: e.transition.to().index() as u16,
            })
            .collect();
        // Plain data of bounded size: serializing into a Vec cannot fail.
        postcard::to_allocvec(&(VERSION, stored)).unwrap_or_default()
    }

    /// Decodes a journal written for a machine with `table`, checking every key and every
    /// state and event id against it.
    pub(crate) fn decode(bytes: &[u8], table: &'static Table) -> Result<Journal, SectionError> {
        let stored: Vec<StoredEntry<'_>> =
            section::decode_versioned(Section::Journal, bytes, VERSION)?;
        let states = table.states().len();
        let events = table.events().len();
        let mut entries = VecDeque::with_capacity(stored.len());
        for e in stored {
            let key = IdempotencyKey::new(e.key)
                .map_err(|err| SectionError::invalid(Section::Journal, err.to_string()))?;
            if usize::from(e.from) >= states
                || usize::from(e.to) >= states
                || usize::from(e.event) >= events
            {
                return Err(SectionError::invalid(
                    Section::Journal,
                    format!(
                        "entry for key `{key}` names state or event ids outside the table of `{}`",
                        table.machine()
                    ),
                ));
            }
            let transition = Transition::new(
                table,
                StateId::new(e.from),
                EventId::new(e.event),
                StateId::new(e.to),
            );
            entries.push_back(Entry {
                key,
                seq: e.seq,
                transition,
            });
        }
        Ok(Journal { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{StateMeta, TransitionMeta};

    static TABLE: Table = Table::new(
        "T",
        &[StateMeta::new("A"), StateMeta::new("B").terminal()],
        &["Go"],
        &[TransitionMeta::new(0, 0, 1)],
        0,
    );

    fn entry(key: &str, seq: u64) -> Entry {
        Entry {
            key: IdempotencyKey::new(key).unwrap(),
            seq,
            transition: Transition::new(&TABLE, StateId::new(0), EventId::new(0), StateId::new(1)),
        }
    }

    #[test]
    fn the_journal_keeps_the_newest_window_and_round_trips() {
        let mut j = Journal::default();
        for i in 0..5 {
            j.record(entry(&format!("k{i}"), i), 3);
        }
        assert_eq!(j.len(), 3);
        assert!(j.find(&IdempotencyKey::new("k1").unwrap()).is_none());
        assert_eq!(j.find(&IdempotencyKey::new("k4").unwrap()).unwrap().seq, 4);
        let back = Journal::decode(&j.encode(), &TABLE).unwrap();
        assert_eq!(back, j);
    }

    #[test]
    fn a_journal_naming_ids_outside_the_table_is_refused() {
        let bad = postcard::to_allocvec(&(
            VERSION,
            vec![StoredEntry {
                key: "k",
                seq: 1,
                from: 0,
                event: 9,
                to: 1,
            }],
        ))
        .unwrap();
        assert!(Journal::decode(&bad, &TABLE)
            .unwrap_err()
            .to_string()
            .contains("outside"));
        assert!(Journal::decode(&[2, 0], &TABLE)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        assert!(Journal::decode(&[], &TABLE).is_err());
    }
}
