//! Group commit: writes that arrive while another is under way wait, and the next writer
//! writes all of them at once, so several threads committing together pay one sync, not one
//! each. The file store's log lanes and the SQLite store both commit through it.
//!
//! A store with one writer (SQLite) also *gathers*: the thread that is about to write waits,
//! for a bounded time, until every thread of the previous group has queued again. Without it,
//! two kernel shards take turns, each commit carrying one shard's batch, so each sync is paid
//! for half the work it could carry and two shards commit less than one (measured 0.63x);
//! with it, the shards' batches meet in one transaction again.

use crate::sync::Recover;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use fsm_core::store::StoreError;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// A queue of writes in which whoever finds no write under way writes everything waiting.
pub(crate) struct GroupCommit<W, R> {
    queue: Mutex<Queue<W, R>>,
    /// Signalled when a group's write ends.
    written: Condvar,
    /// Signalled when work is queued while a writer gathers.
    arrived: Condvar,
    /// Whether a writer waits for the previous group's threads, and for at most what share of
    /// the previous write's duration.
    gather: Option<Gather>,
}

/// How long a writer may wait for the previous group's other threads: `1/divisor` of the
/// previous write's duration, and never more than `most`. A thread that does not come back in
/// time (it has nothing more to write) is not waited for again until it writes again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gather {
    pub(crate) divisor: u32,
    pub(crate) most: Duration,
}

struct Queue<W, R> {
    waiting: Vec<(u64, W)>,
    /// The thread that queued each waiting work, in the same order.
    waiting_from: Vec<ThreadId>,
    /// Results their writers have not collected yet, by ticket.
    done: HashMap<u64, R>,
    next_ticket: u64,
    writing: bool,
    /// A writer is waiting for the previous group's threads to queue.
    gathering: bool,
    /// The threads whose work the previous group wrote.
    last_members: Vec<ThreadId>,
    /// How long the previous group's write took.
    last_write: Duration,
}

impl<W, R> Default for GroupCommit<W, R> {
    fn default() -> Self {
        GroupCommit {
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                waiting_from: Vec::new(),
                done: HashMap::new(),
                next_ticket: 0,
                writing: false,
                gathering: false,
                last_members: Vec::new(),
                last_write: Duration::ZERO,
            }),
            written: Condvar::new(),
            arrived: Condvar::new(),
            gather: None,
        }
    }
}

impl<W, R> GroupCommit<W, R> {
    /// A group commit whose writer gathers the previous group's threads first (see the
    /// module's documentation).
    #[cfg(any(feature = "sqlite", test))]
    pub(crate) fn gathering(gather: Gather) -> Self {
        GroupCommit {
            gather: Some(gather),
            ..GroupCommit::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue<W, R>> {
        // Every critical section leaves the queue consistent.
        self.queue.lock().recover()
    }

    /// Queues `work` and returns its result. If no write is under way this thread writes: it
    /// calls `write` once with every queued work, its own among them, in arrival order, and
    /// `write` returns one result per ticket. Otherwise it waits, and its work is written by
    /// the writer that takes it (or by itself, once the current write ends).
    pub(crate) fn commit(&self, work: W, write: impl FnOnce(Vec<(u64, W)>) -> Vec<(u64, R)>) -> R {
        let mut queue = self.lock();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push((ticket, work));
        queue.waiting_from.push(std::thread::current().id());
        if queue.gathering {
            self.arrived.notify_one();
        }
        let mut write = Some(write);
        loop {
            if let Some(result) = queue.done.remove(&ticket) {
                return result;
            }
            if queue.writing {
                queue = self.written.wait(queue).recover();
                continue;
            }
            // No write under way and no result yet: this thread's work is still waiting (a
            // writer takes results out in the same critical section that ends its write), so
            // this thread writes, at most once.
            queue.writing = true;
            queue = self.gather(queue);
            let group = std::mem::take(&mut queue.waiting);
            let members = std::mem::take(&mut queue.waiting_from);
            drop(queue);
            let write = write.take().expect("a thread writes at most once");
            let started = Instant::now();
            let results = write(group);
            let took = started.elapsed();
            queue = self.lock();
            queue.writing = false;
            queue.last_write = took;
            queue.last_members = members;
            queue.done.extend(results);
            self.written.notify_all();
        }
    }

    /// Waits, if this group commit gathers, until every thread of the previous group has
    /// queued again or the wait's bound has passed.
    fn gather<'a>(&self, mut queue: MutexGuard<'a, Queue<W, R>>) -> MutexGuard<'a, Queue<W, R>> {
        let Some(gather) = self.gather else {
            return queue;
        };
        let limit = (queue.last_write / gather.divisor.max(1)).min(gather.most);
        let deadline = Instant::now() + limit;
        queue.gathering = true;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let q = &*queue;
            if q.last_members.iter().all(|m| q.waiting_from.contains(m)) || left.is_zero() {
                break;
            }
            queue = self.arrived.wait_timeout(queue, left).recover().0;
        }
        queue.gathering = false;
        queue
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    #[cfg(test)]
    fn is_writing(&self) -> bool {
        self.lock().writing
    }
}

/// The same error again, for each of several batches or reads that one failure ended (a
/// `StoreError` is not `Clone`): a backend's error as it is, any other as a backend error of
/// `backend_name` that says what it was.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn copy_error(e: &StoreError, backend_name: &'static str) -> StoreError {
    match e {
        StoreError::Backend {
            backend,
            message,
            outcome_unknown,
        } => StoreError::Backend {
            backend,
            message: message.clone(),
            outcome_unknown: *outcome_unknown,
        },
        other => StoreError::Backend {
            backend: backend_name,
            message: other.to_string(),
            outcome_unknown: other.is_outcome_unknown(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{Gather, GroupCommit};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[test]
    fn alone_a_writer_writes_its_own_work() {
        let group: GroupCommit<u32, u32> = GroupCommit::default();
        let out = group.commit(7, |works| {
            assert_eq!(works.len(), 1);
            works.into_iter().map(|(t, w)| (t, w * 2)).collect()
        });
        assert_eq!(out, 14);
    }

    #[test]
    fn writes_that_arrive_during_a_write_are_written_together_once_it_ends() {
        let group: Arc<GroupCommit<u32, u32>> = Arc::new(GroupCommit::default());
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let record = |sizes: &Arc<Mutex<Vec<usize>>>, works: Vec<(u64, u32)>| {
            sizes.lock().unwrap().push(works.len());
            works.into_iter().map(|(t, w)| (t, w + 100)).collect()
        };
        let first = {
            let (group, sizes) = (group.clone(), sizes.clone());
            let held = group.clone();
            std::thread::spawn(move || {
                group.commit(1, |works| {
                    // The first write holds on until two more writes are queued behind it.
                    while held.waiting() < 2 {
                        std::thread::yield_now();
                    }
                    record(&sizes, works)
                })
            })
        };
        // The others start once the first is inside its write.
        while !group.is_writing() {
            std::thread::yield_now();
        }
        let others: Vec<_> = [2, 3]
            .into_iter()
            .map(|w| {
                let (group, sizes) = (group.clone(), sizes.clone());
                std::thread::spawn(move || group.commit(w, |works| record(&sizes, works)))
            })
            .collect();
        let mut results = vec![first.join().unwrap()];
        results.extend(others.into_iter().map(|t| t.join().unwrap()));
        assert_eq!(
            results,
            vec![101, 102, 103],
            "each writer gets its own result"
        );
        assert_eq!(
            *sizes.lock().unwrap(),
            vec![1, 2],
            "the two late writes were one group"
        );
    }

    #[test]
    fn a_gathering_writer_waits_for_the_previous_groups_threads_so_their_work_meets() {
        // Two threads commit one after the other, each write taking a few milliseconds (a
        // sync) and each thread a millisecond between its commits. Without gathering they take turns, one batch a group; gathering, the writer
        // waits (at most as long as the previous write took) for the other thread's next
        // batch, so most groups carry both.
        let group: Arc<GroupCommit<u32, u32>> = Arc::new(GroupCommit::gathering(Gather {
            divisor: 1,
            most: Duration::from_secs(1),
        }));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let (group, sizes) = (group.clone(), sizes.clone());
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let got = group.commit(t * 1000 + i, |works| {
                            sizes.lock().unwrap().push(works.len());
                            std::thread::sleep(Duration::from_millis(5));
                            works
                        });
                        assert_eq!(got, t * 1000 + i);
                        // Deciding the next batch, shorter than a write.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 200);
        // Taking turns would be 200 groups; meeting every time, 100.
        assert!(
            sizes.len() <= 150,
            "{} groups for 200 batches: the threads did not meet",
            sizes.len()
        );
    }

    #[test]
    fn every_writer_of_many_gets_its_own_result_and_groups_cover_every_write() {
        let group: Arc<GroupCommit<(usize, usize), (usize, usize)>> =
            Arc::new(GroupCommit::default());
        let written = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (group, written) = (group.clone(), written.clone());
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let got = group.commit((t, i), |works| {
                            written.fetch_add(works.len(), Ordering::SeqCst);
                            works
                        });
                        assert_eq!(got, (t, i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(written.load(Ordering::SeqCst), 8 * 200);
    }
}
