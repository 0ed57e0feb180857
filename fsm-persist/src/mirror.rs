//! The mirrored store: the error kernel kept twice.

use crate::sync::Recover;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use fsm_core::store::{
    check_batch, check_put, Capabilities, ListQuery, MachineId, Page, Put, Snapshot, SnapshotStore,
    StateFilter, StoreError,
};

/// One of the two stores of a [`MirroredStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The first store given.
    Primary,
    /// The second store given.
    Secondary,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Primary => 0,
            Side::Secondary => 1,
        }
    }

    const BOTH: [Side; 2] = [Side::Primary, Side::Secondary];
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Primary => "primary",
            Side::Secondary => "secondary",
        })
    }
}

/// Whether both copies are being kept.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MirrorStatus {
    /// The last operation on each side succeeded.
    Healthy,
    /// The last operation on `side` failed; the mirror serves from the other side and
    /// repairs this one when it works again.
    Degraded {
        /// The failing side.
        side: Side,
        /// Its last error.
        cause: String,
    },
    /// Both sides failed their last operation.
    Down {
        /// The primary's last error.
        primary: String,
        /// The secondary's last error.
        secondary: String,
    },
}

/// Counters of a [`MirroredStore`], readable at any time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorCounts {
    /// Operations that found one side failing and were served by the other.
    pub degraded: u64,
    /// Stale, missing or corrupt copies rewritten from the newer side.
    pub repairs: u64,
    /// Failures per side (primary, secondary).
    pub failures: [u64; 2],
}

#[derive(Default)]
struct State {
    last_error: [Option<String>; 2],
    counts: MirrorCounts,
}

/// A [`SnapshotStore`] that writes through two stores and reads the newest valid copy.
///
/// - **Writes** go to both sides, each with its own compare-and-set (so a side that missed
///   writes while it was down is brought forward by the next one), after checking the
///   writer's expected sequence against the newer of the two. A write succeeds if at least
///   one side took it; the other side is then reported as degraded.
/// - **Reads** read both sides, return the newest copy that verifies, and rewrite the other
///   side if it is stale, missing or corrupt (a repair, counted).
/// - When one side fails, the store keeps serving from the other and
///   [`status`](MirroredStore::status) says [`MirrorStatus::Degraded`]; only when both fail
///   does a call fail.
///
/// Calls are serialized by one lock, so the two sides never disagree about who wrote last.
pub struct MirroredStore {
    sides: [Box<dyn SnapshotStore>; 2],
    write: Mutex<()>,
    state: Mutex<State>,
}

impl fmt::Debug for MirroredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MirroredStore")
            .field("primary", &self.sides[0].capabilities().backend)
            .field("secondary", &self.sides[1].capabilities().backend)
            .field("status", &self.status())
            .finish()
    }
}

enum Read {
    Found(Snapshot),
    Missing,
    Corrupt(StoreError),
    Failed(StoreError),
}

impl MirroredStore {
    /// A mirror of `primary` and `secondary`.
    pub fn new(
        primary: impl SnapshotStore + 'static,
        secondary: impl SnapshotStore + 'static,
    ) -> Self {
        MirroredStore {
            sides: [Box::new(primary), Box::new(secondary)],
            write: Mutex::new(()),
            state: Mutex::new(State::default()),
        }
    }

    /// One side's store.
    pub fn side(&self, side: Side) -> &dyn SnapshotStore {
        &*self.sides[side.index()]
    }

    /// Healthy, degraded (which side, why) or down.
    pub fn status(&self) -> MirrorStatus {
        let state = self.state();
        match &state.last_error {
            [None, None] => MirrorStatus::Healthy,
            [Some(cause), None] => MirrorStatus::Degraded {
                side: Side::Primary,
                cause: cause.clone(),
            },
            [None, Some(cause)] => MirrorStatus::Degraded {
                side: Side::Secondary,
                cause: cause.clone(),
            },
            [Some(primary), Some(secondary)] => MirrorStatus::Down {
                primary: primary.clone(),
                secondary: secondary.clone(),
            },
        }
    }

    /// Degraded operations, repairs and failures so far.
    pub fn counts(&self) -> MirrorCounts {
        self.state().counts
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().recover()
    }

    fn serialize(&self) -> MutexGuard<'_, ()> {
        self.write.lock().recover()
    }

    fn failed(&self, side: Side, error: &StoreError) {
        let mut state = self.state();
        state.last_error[side.index()] = Some(error.to_string());
        state.counts.failures[side.index()] += 1;
    }

    fn worked(&self, side: Side) {
        self.state().last_error[side.index()] = None;
    }

    fn degraded(&self) {
        self.state().counts.degraded += 1;
    }

    fn read(&self, side: Side, id: &MachineId) -> Read {
        match self.sides[side.index()].get(id) {
            Ok(s) => {
                self.worked(side);
                Read::Found(s)
            }
            Err(StoreError::NotFound { .. }) => {
                self.worked(side);
                Read::Missing
            }
            Err(e @ StoreError::Corrupt { .. }) => {
                self.worked(side);
                Read::Corrupt(e)
            }
            Err(e) => {
                self.failed(side, &e);
                Read::Failed(e)
            }
        }
    }

    /// The sequence a side holds for compare-and-set: a corrupt copy counts as none.
    fn side_sequence(&self, side: Side, id: &MachineId) -> Result<Option<u64>, StoreError> {
        match self.sides[side.index()].sequence(id) {
            Ok(seq) => Ok(seq),
            Err(StoreError::Corrupt { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Rewrites `side`'s copy of `id` with `newer`.
    fn repair(&self, side: Side, id: &MachineId, newer: &Snapshot) {
        let result = self
            .side_sequence(side, id)
            .and_then(|seq| self.sides[side.index()].put(id, seq, newer));
        match result {
            Ok(()) => {
                self.worked(side);
                self.state().counts.repairs += 1;
            }
            Err(e) => self.failed(side, &e),
        }
    }

    /// Both sides' sequences for `ids`; a side whose read fails is `None` (and degraded).
    fn sequences(&self, ids: &[&MachineId]) -> Result<[Option<Vec<Option<u64>>>; 2], StoreError> {
        let mut out: [Option<Vec<Option<u64>>>; 2] = [None, None];
        let mut last_error = None;
        for side in Side::BOTH {
            match ids.iter().map(|id| self.side_sequence(side, id)).collect() {
                Ok(seqs) => out[side.index()] = Some(seqs),
                Err(e) => {
                    self.failed(side, &e);
                    last_error = Some(e);
                }
            }
        }
        match (out[0].is_none() && out[1].is_none(), last_error) {
            (true, Some(e)) => Err(e),
            _ => Ok(out),
        }
    }

    /// Applies `write` to each side whose sequences are known; Ok if at least one side took
    /// it. Of two errors, one with an unknown outcome is reported.
    fn write_both(
        &self,
        known: &[Option<Vec<Option<u64>>>; 2],
        write: impl Fn(&dyn SnapshotStore, &[Option<u64>]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut errors = Vec::new();
        for side in Side::BOTH {
            let Some(seqs) = &known[side.index()] else {
                continue;
            };
            match write(&*self.sides[side.index()], seqs) {
                Ok(()) => self.worked(side),
                Err(e) => {
                    self.failed(side, &e);
                    errors.push(e);
                }
            }
        }
        let took = known.iter().filter(|k| k.is_some()).count() - errors.len();
        if took > 0 {
            if took < 2 {
                self.degraded();
            }
            return Ok(());
        }
        errors.sort_by_key(|e| !e.is_outcome_unknown());
        Err(errors
            .into_iter()
            .next()
            .expect("no side took the write, so one failed"))
    }
}

fn newest(a: Option<Option<u64>>, b: Option<Option<u64>>) -> Option<u64> {
    a.flatten().max(b.flatten())
}

impl SnapshotStore for MirroredStore {
    fn put(
        &self,
        id: &MachineId,
        expected: Option<u64>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        let _serial = self.serialize();
        let known = self.sequences(&[id])?;
        let current = newest(
            known[0].as_ref().map(|s| s[0]),
            known[1].as_ref().map(|s| s[0]),
        );
        check_put(id, expected, snapshot, current)?;
        self.write_both(&known, |store, seqs| store.put(id, seqs[0], snapshot))
    }

    fn put_many(&self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        check_batch(batch)?;
        let _serial = self.serialize();
        let ids: Vec<&MachineId> = batch.iter().map(|p| p.id).collect();
        let known = self.sequences(&ids)?;
        for (i, put) in batch.iter().enumerate() {
            put.check(newest(
                known[0].as_ref().map(|s| s[i]),
                known[1].as_ref().map(|s| s[i]),
            ))?;
        }
        self.write_both(&known, |store, seqs| {
            let side_batch: Vec<Put<'_>> = batch
                .iter()
                .zip(seqs)
                .map(|(p, seq)| Put::new(p.id, *seq, p.snapshot))
                .collect();
            store.put_many(&side_batch)
        })
    }

    fn get(&self, id: &MachineId) -> Result<Snapshot, StoreError> {
        let _serial = self.serialize();
        let reads = [self.read(Side::Primary, id), self.read(Side::Secondary, id)];
        let best = Side::BOTH
            .into_iter()
            .filter_map(|side| match &reads[side.index()] {
                Read::Found(s) => Some((side, s.seq())),
                _ => None,
            })
            .max_by_key(|&(_, seq)| seq);
        if let Some((winner, seq)) = best {
            let other = match winner {
                Side::Primary => Side::Secondary,
                Side::Secondary => Side::Primary,
            };
            let Read::Found(newer) = &reads[winner.index()] else {
                unreachable!("the winner was found")
            };
            match &reads[other.index()] {
                Read::Found(s) if s.seq() == seq => {}
                Read::Found(_) | Read::Missing | Read::Corrupt(_) => self.repair(other, id, newer),
                Read::Failed(_) => self.degraded(),
            }
            return Ok(newer.clone());
        }
        let [a, b] = reads;
        match (a, b) {
            (Read::Missing, Read::Missing) => Err(StoreError::NotFound { id: id.clone() }),
            (Read::Corrupt(e), _) | (_, Read::Corrupt(e)) => Err(e),
            (Read::Failed(e), _) | (_, Read::Failed(e)) => Err(e),
            (Read::Found(_), _) | (_, Read::Found(_)) => unreachable!("handled above"),
        }
    }

    fn sequence(&self, id: &MachineId) -> Result<Option<u64>, StoreError> {
        let known = self.sequences(&[id])?;
        Ok(newest(
            known[0].as_ref().map(|s| s[0]),
            known[1].as_ref().map(|s| s[0]),
        ))
    }

    fn ids(&self) -> Result<Vec<MachineId>, StoreError> {
        let mut all = BTreeSet::new();
        let mut answered = false;
        let mut first_error = None;
        for side in Side::BOTH {
            match self.sides[side.index()].ids() {
                Ok(ids) => {
                    answered = true;
                    all.extend(ids);
                }
                Err(e) => {
                    self.failed(side, &e);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if !answered => Err(e),
            _ => Ok(all.into_iter().collect()),
        }
    }

    /// Each side's page from its own index, merged: an id is listed in a state only if the
    /// side holding its newest snapshot lists it there (a side that fell behind does not
    /// speak for it). A side that fails is left out, as for [`ids`](SnapshotStore::ids).
    fn list(&self, query: &ListQuery<'_>) -> Result<Page, StoreError> {
        let limit = query.page_size();
        let mut after = query.after.cloned();
        loop {
            let q = ListQuery {
                after: after.as_ref(),
                ..*query
            };
            let mut pages: [Option<Page>; 2] = [None, None];
            let mut first_error = None;
            for side in Side::BOTH {
                match self.sides[side.index()].list(&q) {
                    Ok(page) => pages[side.index()] = Some(page),
                    Err(e) => {
                        self.failed(side, &e);
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let (None, None, Some(e)) = (&pages[0], &pages[1], first_error) {
                return Err(e);
            }
            // Below the first id where a side's page was cut, both pages are complete.
            let boundary = pages
                .iter()
                .flatten()
                .filter_map(|p| p.next())
                .min()
                .cloned();
            let within = |id: &MachineId| boundary.as_ref().is_none_or(|b| id <= b);
            let listed: [BTreeSet<&MachineId>; 2] = [0, 1].map(|i| {
                pages[i]
                    .iter()
                    .flat_map(|p| &p.ids)
                    .filter(|id| within(id))
                    .collect()
            });
            let candidates: Vec<&MachineId> = listed[0].union(&listed[1]).copied().collect();
            let mut ids: Vec<MachineId> = if query.state == StateFilter::Any {
                candidates.into_iter().cloned().collect()
            } else {
                let known = self.sequences(&candidates)?;
                candidates
                    .iter()
                    .enumerate()
                    .filter(|&(i, id)| {
                        let seq = |side: usize| known[side].as_ref().and_then(|s| s[i]);
                        let newest = seq(0).max(seq(1));
                        (0..2).any(|side| seq(side) == newest && listed[side].contains(id))
                    })
                    .map(|(_, id)| (*id).clone())
                    .collect()
            };
            let cut = ids.len() > limit;
            ids.truncate(limit);
            let more = cut || boundary.is_some();
            if ids.is_empty() && more {
                // Every candidate of this stretch was stale: go on after it.
                after = boundary;
                continue;
            }
            return Ok(Page { ids, more });
        }
    }

    fn capabilities(&self) -> Capabilities {
        let durable = self.sides.iter().all(|s| s.capabilities().durable);
        Capabilities::new("mirrored", durable)
    }

    /// A machine is the mirror's to write only if it is both sides'; the epoch changes when
    /// either side's does.
    fn owner_epoch(&self, id: &MachineId) -> Result<u64, StoreError> {
        let mut epoch = 0;
        for side in &self.sides {
            epoch = epoch.max(side.owner_epoch(id)?);
        }
        Ok(epoch)
    }
}
