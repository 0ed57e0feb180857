//! Group commit: writes that arrive while another is under way wait, and the next writer
//! writes all of them at once, so several threads committing together pay one sync, not one
//! each. The file store's log lanes and the SQLite store both commit through it.

use crate::sync::Recover;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};

/// A queue of writes in which whoever finds no write under way writes everything waiting.
pub(crate) struct GroupCommit<W, R> {
    queue: Mutex<Queue<W, R>>,
    /// Signalled when a group's write ends.
    written: Condvar,
}

struct Queue<W, R> {
    waiting: Vec<(u64, W)>,
    /// Results their writers have not collected yet, by ticket.
    done: HashMap<u64, R>,
    next_ticket: u64,
    writing: bool,
}

impl<W, R> Default for GroupCommit<W, R> {
    fn default() -> Self {
        GroupCommit {
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                done: HashMap::new(),
                next_ticket: 0,
                writing: false,
            }),
            written: Condvar::new(),
        }
    }
}

impl<W, R> GroupCommit<W, R> {
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
            let group = std::mem::take(&mut queue.waiting);
            drop(queue);
            let write = write.take().expect("a thread writes at most once");
            let results = write(group);
            queue = self.lock();
            queue.writing = false;
            queue.done.extend(results);
            self.written.notify_all();
        }
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

#[cfg(test)]
mod tests {
    use super::GroupCommit;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

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
