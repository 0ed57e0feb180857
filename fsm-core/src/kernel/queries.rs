//! Queries by state on a running kernel: how many machines are in each state, and which are
//! in one, in pages; answered by the store (see [`crate::store`]'s queries), with the
//! machines whose snapshots predate state names decoded by the kernel's codec.

use super::{Durable, KernelHandle};
use crate::store::{
    ListQuery, MachineId, Page, SnapshotStore, StateCounts, StateFilter, StoreError, MAX_PAGE,
};

impl<M: Durable> KernelHandle<M> {
    /// How many machines are in each state, as the store holds them: committed states, not
    /// a change still being written. Every state `M` declares is present (with 0 if no
    /// machine is in it); a store shared with other machine types also counts theirs.
    ///
    /// Answered from what the store keeps beside each machine, without decoding payloads,
    /// except for machines whose newest snapshot was written before snapshots recorded their
    /// state's name: those are read and decoded here (a cost that ends as they are written
    /// again), and counted `unreadable` if they do not decode.
    pub fn count_states(&self) -> Result<StateCounts, StoreError> {
        let store = self.inner.store.current().1;
        let mut counts = store.count_states()?;
        for state in M::TABLE.states() {
            counts.states.entry(state.name().to_owned()).or_insert(0);
        }
        if counts.unrecorded > 0 {
            counts.unrecorded = 0;
            self.each_unrecorded(&*store, None, None, |_, state| match state {
                Some(state) => *counts.states.entry(state.to_owned()).or_insert(0) += 1,
                None => counts.unreadable += 1,
            })?;
        }
        Ok(counts)
    }

    /// One page of the stored machines' ids, in id order, selected by state (see
    /// [`SnapshotStore::list`]): `kernel.machines(&ListQuery::in_state("PastDue", 100))`,
    /// then `.after(page.next())` for the next page. Machines whose snapshots predate state
    /// names are decoded to place them, as for [`KernelHandle::count_states`].
    pub fn machines(&self, query: &ListQuery<'_>) -> Result<Page, StoreError> {
        let store = self.inner.store.current().1;
        let page = store.list(query)?;
        let StateFilter::In(wanted) = query.state else {
            return Ok(page);
        };
        // The recorded page is complete up to its last id if it was cut, so unrecorded
        // machines beyond that cannot belong on this page.
        let bound = page.next().cloned();
        let mut found = page.ids;
        self.each_unrecorded(&*store, query.after, bound.as_ref(), |id, state| {
            if state == Some(wanted) {
                found.push(id.clone());
            }
        })?;
        let limit = query.page_size();
        let mut merged = Page::of(found, limit);
        merged.more |= page.more;
        Ok(merged)
    }

    /// Calls `each` with every machine (after `after`, up to `until`) whose newest snapshot
    /// records no state name, and the state it decodes to (`None`: it does not decode).
    fn each_unrecorded(
        &self,
        store: &dyn SnapshotStore,
        after: Option<&MachineId>,
        until: Option<&MachineId>,
        mut each: impl FnMut(&MachineId, Option<&str>),
    ) -> Result<(), StoreError> {
        let mut after = after.cloned();
        loop {
            let query = ListQuery {
                state: StateFilter::Unrecorded,
                after: after.as_ref(),
                limit: MAX_PAGE,
            };
            let page = store.list(&query)?;
            for id in &page.ids {
                if until.is_some_and(|u| id > u) {
                    return Ok(());
                }
                let decoded = match store.get(id) {
                    Ok(snapshot) => self.inner.codec.decode(&snapshot).ok(),
                    // Gone since it was listed.
                    Err(StoreError::NotFound { .. }) => continue,
                    Err(StoreError::Corrupt { .. }) => None,
                    Err(e) => return Err(e),
                };
                each(id, decoded.as_ref().map(|m| m.state_name()));
            }
            match page.next() {
                Some(next) => after = Some(next.clone()),
                None => return Ok(()),
            }
        }
    }
}
