//! What producers observe of their commands (refusals from submit calls, outcomes from
//! tickets), tallied into the queue's own `Counts` so it compares with the metrics directly.

use fsm_core::queue::{Counts, Outcome, SubmitError};

use crate::light::Cmd;

/// Counts one command the queue kept, by its outcome.
pub(crate) fn outcome(seen: &mut Counts, outcome: &Outcome) {
    seen.submitted += 1;
    match outcome {
        Outcome::Applied(_) => seen.applied += 1,
        Outcome::Rejected(_) => seen.rejected += 1,
        Outcome::Dumped(_) => seen.dumped += 1,
        Outcome::Delegated(_) => seen.delegated += 1,
        Outcome::Expired => seen.expired += 1,
        Outcome::Closed => seen.closed += 1,
        other => panic!("unexpected outcome {other:?}"),
    }
}

/// Counts one command the queue did not keep, by the submit error.
pub(crate) fn refusal(seen: &mut Counts, error: &SubmitError<Cmd>) {
    seen.submitted += 1;
    match error {
        SubmitError::Full(_) => seen.full += 1,
        SubmitError::Dumped(_) => seen.dumped += 1,
        SubmitError::Delegated => seen.delegated += 1,
        SubmitError::Expired(_) => seen.expired += 1,
        SubmitError::Closed(_) => seen.closed += 1,
        other => panic!("unexpected refusal {other:?}"),
    }
}

/// Adds `more` into `seen`, field by field.
pub(crate) fn add(seen: &mut Counts, more: &Counts) {
    seen.submitted += more.submitted;
    seen.applied += more.applied;
    seen.rejected += more.rejected;
    seen.dumped += more.dumped;
    seen.delegated += more.delegated;
    seen.expired += more.expired;
    seen.closed += more.closed;
    seen.full += more.full;
    seen.queued += more.queued;
    seen.deferred += more.deferred;
}
