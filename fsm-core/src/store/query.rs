//! Queries by state: which machines a store holds, how many are in each state, and which are
//! in one state, in pages.
//!
//! Every snapshot a [`Codec`](super::Codec) writes records its state's name in the envelope
//! (the state section, [`Snapshot::state`]), so a store answers these from what it keeps
//! beside each machine (the file store's index, a column in SQLite and PostgreSQL) without
//! decoding a payload. Pages are in id order and continue *after* the last id of the page
//! before (keyset paging), so paging through a store that is being written never returns an
//! id twice and never skips one that was there, and in the asked state, throughout.

use std::collections::BTreeMap;

use super::{MachineId, SnapshotStore, StoreError};

/// The most ids one page holds; a larger limit is cut to it.
pub const MAX_PAGE: usize = 10_000;

/// Which machines a [`ListQuery`] selects by state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StateFilter<'a> {
    /// Every stored machine.
    #[default]
    Any,
    /// The machines whose newest snapshot records this state.
    In(&'a str),
    /// The machines whose newest snapshot records no state name: written before snapshots
    /// recorded one. A kernel decodes these to answer by state.
    Unrecorded,
}

impl StateFilter<'_> {
    /// Whether a machine whose snapshot records `state` is selected.
    pub fn matches(&self, state: Option<&str>) -> bool {
        match self {
            StateFilter::Any => true,
            StateFilter::In(wanted) => state == Some(*wanted),
            StateFilter::Unrecorded => state.is_none(),
        }
    }
}

/// One page of a listing: which machines, in id order, from where, how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListQuery<'a> {
    /// Which machines, by state.
    pub state: StateFilter<'a>,
    /// Only ids after this one (the last id of the page before); `None`: from the first.
    pub after: Option<&'a MachineId>,
    /// At most this many ids (1 to [`MAX_PAGE`]).
    pub limit: usize,
}

impl<'a> ListQuery<'a> {
    /// The first page of every machine, up to `limit` ids.
    pub fn all(limit: usize) -> Self {
        ListQuery {
            state: StateFilter::Any,
            after: None,
            limit,
        }
    }

    /// The first page of the machines in `state`, up to `limit` ids.
    pub fn in_state(state: &'a str, limit: usize) -> Self {
        ListQuery {
            state: StateFilter::In(state),
            after: None,
            limit,
        }
    }

    /// The same query, continuing after `id`.
    pub fn after(self, id: &'a MachineId) -> Self {
        ListQuery {
            after: Some(id),
            ..self
        }
    }

    /// The limit a store applies: `limit`, raised to 1 and cut to [`MAX_PAGE`].
    pub fn page_size(&self) -> usize {
        self.limit.clamp(1, MAX_PAGE)
    }

    /// Whether `id` comes after this query's cursor.
    pub fn is_after(&self, id: &MachineId) -> bool {
        self.after.is_none_or(|after| id.as_str() > after.as_str())
    }
}

/// The answer to a [`ListQuery`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The ids, ascending (by their bytes).
    pub ids: Vec<MachineId>,
    /// Whether more ids may follow: ask again with [`Page::next`].
    pub more: bool,
}

impl Page {
    /// Where the next page starts (the last id of this one), if more may follow.
    pub fn next(&self) -> Option<&MachineId> {
        self.ids.last().filter(|_| self.more)
    }

    /// A page of the `limit` smallest of `ids` (unsorted, each once); `more` if some were
    /// left out.
    pub fn of(ids: impl IntoIterator<Item = MachineId>, limit: usize) -> Page {
        let mut smallest = Smallest::new(limit);
        for id in ids {
            smallest.offer_owned(id);
        }
        smallest.into_page()
    }
}

/// Keeps the `limit` smallest ids offered (and whether more were), cloning only those that
/// enter: how a store without an ordered index makes a page in one pass over what it holds.
#[derive(Debug)]
pub struct Smallest {
    limit: usize,
    heap: std::collections::BinaryHeap<MachineId>,
    more: bool,
}

impl Smallest {
    /// Keeps up to `limit` ids (at least 1).
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Smallest {
            limit,
            heap: std::collections::BinaryHeap::with_capacity(limit.min(1024) + 1),
            more: false,
        }
    }

    /// Whether `id` would be kept: fewer than `limit` are, or it is smaller than the largest.
    fn wants(&self, id: &MachineId) -> bool {
        self.heap.len() < self.limit || self.heap.peek().is_some_and(|top| id < top)
    }

    fn keep(&mut self, id: MachineId) {
        if self.heap.len() == self.limit {
            self.heap.pop();
            self.more = true;
        }
        self.heap.push(id);
    }

    /// Offers `id`, cloned if it is kept.
    pub fn offer(&mut self, id: &MachineId) {
        if self.wants(id) {
            self.keep(id.clone());
        } else {
            self.more = true;
        }
    }

    /// Offers an owned `id`.
    pub fn offer_owned(&mut self, id: MachineId) {
        if self.wants(&id) {
            self.keep(id);
        } else {
            self.more = true;
        }
    }

    /// The page: what was kept, ascending; `more` if anything was left out.
    pub fn into_page(self) -> Page {
        Page {
            ids: self.heap.into_sorted_vec(),
            more: self.more,
        }
    }
}

/// How many stored machines are in each state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Per state name, the machines whose newest snapshot records it.
    pub states: BTreeMap<String, u64>,
    /// Machines whose newest snapshot records no state name (written before snapshots
    /// recorded one).
    pub unrecorded: u64,
    /// Machines whose newest snapshot the store knows to be corrupt (it cannot say their
    /// state). Stores that learn of damage only when reading count these as their recorded
    /// state.
    pub unreadable: u64,
}

impl StateCounts {
    /// Every machine counted.
    pub fn total(&self) -> u64 {
        self.states.values().sum::<u64>() + self.unrecorded + self.unreadable
    }

    /// Counts one machine whose snapshot records `state`.
    pub fn add(&mut self, state: Option<&str>) {
        match state {
            Some(state) => match self.states.get_mut(state) {
                Some(n) => *n += 1,
                None => {
                    self.states.insert(state.to_owned(), 1);
                }
            },
            None => self.unrecorded += 1,
        }
    }

    /// The machines in `state`.
    pub fn get(&self, state: &str) -> u64 {
        self.states.get(state).copied().unwrap_or(0)
    }
}

/// A listing done the slow way, for stores that keep no index: every id, every snapshot
/// read (its envelope, not its payload). The default of [`SnapshotStore::list`].
pub fn list_by_reading<S: SnapshotStore + ?Sized>(
    store: &S,
    query: &ListQuery<'_>,
) -> Result<Page, StoreError> {
    let mut found = Vec::new();
    for id in store.ids()? {
        if !query.is_after(&id) {
            continue;
        }
        if query.state != StateFilter::Any {
            let state = match store.get(&id) {
                Ok(snapshot) => snapshot.state().map(str::to_owned),
                // Gone or damaged since `ids`: not in any state.
                Err(StoreError::NotFound { .. } | StoreError::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            };
            if !query.state.matches(state.as_deref()) {
                continue;
            }
        }
        found.push(id);
    }
    Ok(Page::of(found, query.page_size()))
}

/// Counts done the slow way, reading every snapshot's envelope. The default of
/// [`SnapshotStore::count_states`].
pub fn count_by_reading<S: SnapshotStore + ?Sized>(store: &S) -> Result<StateCounts, StoreError> {
    let mut counts = StateCounts::default();
    for id in store.ids()? {
        match store.get(&id) {
            Ok(snapshot) => counts.add(snapshot.state()),
            Err(StoreError::NotFound { .. }) => {}
            Err(StoreError::Corrupt { .. }) => counts.unreadable += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(counts)
}
