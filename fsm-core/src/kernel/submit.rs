//! Submitting to a kernel from any thread: the path of `KernelHandle::submit`,
//! `try_submit`, `submit_async` and `submit_batch`.

use crate::sync::Recover;
use std::sync::atomic::Ordering;

use super::inbox::{Admitted, Cmd, Refusal, Room};
use super::{Answer, CommandError, Durable, Inner, Request, SubmitError};
use crate::queue::{Overload, Ticket};
use crate::store::MachineId;

pub(super) fn enqueue<M: Durable>(
    inner: &Inner<M>,
    id: &MachineId,
    request: Request<M::Event>,
    room: Room,
) -> Result<Ticket<Answer>, SubmitError<M::Event>> {
    let shard = inner.shard_of(id);
    if let Some(worker) = inner.escalated_worker(id) {
        let mut stats = inner.stats[shard].lock().recover();
        stats.counts.submitted += 1;
        stats.counts.escalated += 1;
        return Err(SubmitError::Escalated { request, worker });
    }
    let (ticket, reply) = Ticket::new(|| Err(CommandError::Closed));
    let cmd = Cmd {
        id: id.clone(),
        request,
        enqueued: 0,
        reply: Some(reply),
        fire: None,
        settles: None,
    };
    inner.quiet.more(shard, 1);
    let result = inner.inboxes[shard].submit(
        cmd,
        inner.config.capacity,
        inner.config.overload,
        &inner.config.clock,
        room,
        || inner.intake_open.load(Ordering::Acquire),
        || inner.stamp(),
    );
    let (refusal, cmd) = match result {
        Ok(Admitted::Queued) => return Ok(ticket),
        Ok(Admitted::Evicted) => {
            inner.quiet.done(shard, 1);
            return Ok(ticket);
        }
        Err(refused) => refused,
    };
    inner.quiet.done(shard, 1);
    // Refused: the ticket is not handed out; the request goes back to the caller.
    drop(ticket);
    let Cmd { id, request, .. } = cmd;
    Err(match refusal {
        Refusal::Full if inner.config.overload == Overload::Delegate => match &inner.overflow {
            Some(sink) => {
                match sink.delegate((id, request.event), &crate::queue::DelegateCause::QueueFull) {
                    Ok(()) => {
                        inner.inboxes[shard].count_delegated();
                        SubmitError::Delegated
                    }
                    Err((_, event)) => SubmitError::Full(Request {
                        event,
                        key: request.key,
                        deadline: request.deadline,
                    }),
                }
            }
            None => SubmitError::Full(request),
        },
        refusal => refusal.into_error(request),
    })
}

/// Submits without blocking the executor: while the inbox is full under back-pressure, waits
/// (as a future) until the shard takes work, up to the request's deadline.
#[cfg(feature = "tokio")]
pub(super) async fn enqueue_async<M: Durable>(
    inner: &Inner<M>,
    id: &MachineId,
    mut request: Request<M::Event>,
) -> Result<Ticket<Answer>, SubmitError<M::Event>> {
    let inbox = &inner.inboxes[inner.shard_of(id)];
    loop {
        // Registered before trying, so room made in between is not missed.
        let mut notified = std::pin::pin!(inbox.room_async().notified());
        notified.as_mut().enable();
        let deadline = request.deadline;
        match enqueue(inner, id, request, Room::Poll) {
            Err(SubmitError::Full(back)) if inner.config.overload == Overload::Backpressure => {
                request = back;
            }
            other => return other,
        }
        match deadline {
            None => notified.await,
            Some(at) => {
                let left = at.saturating_duration_since(inner.config.clock.now());
                if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                    // One more try: it counts the refusal and answers `Expired`.
                    return enqueue(inner, id, request, Room::Refuse).map_err(|e| match e {
                        SubmitError::Full(r) => SubmitError::Expired(r),
                        e => e,
                    });
                }
            }
        }
    }
}
