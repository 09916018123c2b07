//! Dynamic batching inside the scheduler: the batch ticket of a batched
//! pipeline, collecting its ready jobs, and the bounded wait for a batch to
//! fill (see the parent module's doc for the policy). Runs on the thread of
//! the worker that popped the ticket, or of the submitter; never locks.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use super::sync::{Parker, fence};
use super::{Batch, BatchQueue, DEADLINE_SLACK, Kinds, Member, Scheduler, Task, Ticket};

impl<K: Kinds> Scheduler<K> {
    /// Queues the pipeline's batch ticket unless one is queued or being
    /// collected; in that case wakes the worker waiting for the batch.
    pub(super) fn schedule_batch(&self, pipeline: usize) {
        let pq = &self.pipelines[pipeline];
        let Some(bq) = &pq.batch else { return };
        // Pairs with `release_batch` (a ticket handed back while this job
        // arrived) and with `fill` (a worker about to wait for this job).
        fence(SeqCst);
        if bq.ready.is_empty() {
            return;
        }
        if bq.scheduled.swap(true, SeqCst) {
            let f = bq.filler.load(SeqCst);
            if f > 0 {
                self.workers[f - 1].unparker.unpark();
            }
            return;
        }
        if self.levels[pq.level].push(Ticket::Batch(pipeline)).is_err() {
            // Unreachable by sizing (one batch ticket per pipeline).
            bq.scheduled.swap(false, SeqCst);
            tracing::error!(pipeline, "level queue full; batch ticket not queued");
            return;
        }
        self.wake(pq.level);
    }

    /// Takes one ready job of a batched pipeline (skipping stale stream
    /// tickets).
    pub(super) fn take_ready(&self, bq: &BatchQueue<K>) -> Option<Member<K>> {
        while let Some(t) = bq.ready.pop() {
            match t {
                Ticket::Job(job) => {
                    self.pipelines[job.pipeline()].queued.fetch_sub(1, SeqCst);
                    return Some((None, job));
                }
                Ticket::Stream(slot) => match slot.pending.pop() {
                    Some(job) => return Some((Some(slot), job)),
                    None => self.release(&slot),
                },
                Ticket::Gen(_) | Ticket::Batch(_) | Ticket::GenBatch(_) => {
                    unreachable!("ready queues hold only jobs and stream tickets")
                }
            }
        }
        None
    }

    /// Whether `worker` has other work at `level` (a batch's own level)
    /// or a level above it: then it does not wait for the batch to fill.
    fn other_pending(&self, worker: usize, level: usize) -> bool {
        self.workers[worker]
            .levels
            .iter()
            .any(|&l| l <= level && !self.levels[l].is_empty())
    }

    /// Waits for more jobs to join `b` (see the module doc for the bounds).
    pub(super) fn fill(&self, worker: usize, parker: &Parker, b: &mut Batch<K>) {
        let pq = &self.pipelines[b.pipeline];
        let Some(bq) = &pq.batch else { return };
        let cfg = &bq.cfg;
        let t0 = self.clock.now();
        let Some(oldest) = b.items.iter().map(|(_, j)| j.received()).min() else {
            return;
        };
        let until = oldest + cfg.max_queue_delay;
        let run = Duration::from_micros(bq.run_estimate_us.load(SeqCst));
        // Latest moment a job may still be held: its deadline minus the
        // last run time and minus a reserve for the wake-up — the larger
        // of DEADLINE_SLACK and a quarter of its budget, because a parked
        // thread on a loaded machine can take milliseconds to run again.
        let keep_for = |j: &K::Job| {
            let reserve = ((j.deadline() - j.received()) / 4).max(DEADLINE_SLACK);
            j.deadline().checked_sub(run + reserve)
        };
        let w = &self.workers[worker];
        loop {
            if b.items.len() >= cfg.max_batch {
                break;
            }
            if let Some(item) = self.take_ready(bq) {
                b.items.push(item);
                continue;
            }
            if cfg.preferred.contains(&b.items.len())
                || self.other_pending(worker, pq.level)
                || self.stopping.load(SeqCst)
            {
                break;
            }
            let keep = b
                .items
                .iter()
                .map(|(_, j)| keep_for(j).unwrap_or(t0))
                .min()
                .unwrap_or(t0);
            let limit = until.min(keep);
            let now = self.clock.now();
            if now >= limit {
                b.cut_by_deadline = keep < until;
                break;
            }
            w.filling.store(true, SeqCst);
            bq.filler.store(worker + 1, SeqCst);
            // Re-check after announcing (pairs with the fences in `wake`
            // and `schedule_batch`): a submit that missed the flags has
            // already pushed its job.
            fence(SeqCst);
            if bq.ready.is_empty() && !self.other_pending(worker, pq.level) {
                self.clock.park(parker, limit - now);
            }
            bq.filler.store(0, SeqCst);
            w.filling.store(false, SeqCst);
        }
        b.fill_wait = self.clock.now() - t0;
    }

    /// Hands a batched pipeline's ticket back after collecting.
    pub(super) fn release_batch(&self, pipeline: usize) {
        if let Some(bq) = &self.pipelines[pipeline].batch {
            bq.scheduled.swap(false, SeqCst);
            self.schedule_batch(pipeline);
        }
    }

    /// Records how long a batched run took; collecting workers keep that
    /// much time before the earliest deadline of a batch.
    pub fn note_batch_run(&self, pipeline: usize, took: Duration) {
        if let Some(bq) = &self.pipelines[pipeline].batch {
            bq.run_estimate_us.store(took.as_micros() as u64, SeqCst);
        }
    }
}
