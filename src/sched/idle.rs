//! Parking and waking workers. A worker with nothing to do marks itself
//! idle, looks at its levels once more, and parks (no timeout). A submitter
//! pushes its ticket and claims one idle worker serving that level (CAS
//! idle true → false) and unparks it. A fence on each side makes sure that
//! either the submitter sees the worker idle or the worker's last look sees
//! the ticket.
//!
//! A claim can be spent on another ticket: the claimed worker may take a
//! higher level's ticket first, or take a ticket in its last look before
//! parking. So every worker that takes a ticket passes the wake-up on: if a
//! level it serves still has work, it claims an idle peer for it. Hence
//! every queued ticket is either taken by a running worker or wakes a
//! parked one; nothing waits for a timeout (checked exhaustively in
//! `sched::loom`). Shutdown needs no timeout either: [`Scheduler::stop`]
//! gives every worker a wake-up token, which a worker about to park
//! consumes at once.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Instant;

use super::sync::{Parker, fence};
use super::{Kinds, Scheduler, Work};

impl<K: Kinds> Scheduler<K> {
    /// Blocks the worker until there is work, or returns `None` once the
    /// scheduler is stopping and the worker's levels are empty (drained).
    pub fn next(&self, worker: usize, parker: &Parker) -> Option<Work<K>> {
        let w = &self.workers[worker];
        loop {
            if self.aborting.load(SeqCst) {
                return None;
            }
            if let Some(work) = self.pop(worker) {
                return Some(self.started(worker, parker, work));
            }
            if self.stopping.load(SeqCst) {
                // Drain: a ticket queued before `stop` may have come after
                // the look above; seeing the flag makes it visible now.
                // (Tickets queued later come from workers' own releases and
                // requeues, at levels they serve: they take them.)
                return self
                    .pop(worker)
                    .map(|work| self.started(worker, parker, work));
            }
            if let Some(work) = self.spin(worker, parker) {
                return Some(work);
            }
            w.idle.swap(true, SeqCst);
            // Pairs with the fence in `wake`: a submitter either sees this
            // worker idle and claims it, or this last look sees its ticket.
            fence(SeqCst);
            if let Some(work) = self.pop(worker) {
                // A claim that raced with the last look is taken back here
                // (and passed on by `started`); the swap also makes the
                // claimer's ticket visible to `pass_on`.
                w.idle.swap(false, SeqCst);
                return Some(self.started(worker, parker, work));
            }
            parker.park();
            w.idle.swap(false, SeqCst);
        }
    }

    /// A ticket was taken: pass the wake-up on, then let a batch fill and
    /// hand its ticket back.
    fn started(&self, worker: usize, parker: &Parker, mut work: Work<K>) -> Work<K> {
        self.pass_on(worker);
        if let Work::Batch(b) = &mut work {
            self.fill(worker, parker, b);
            self.release_batch(b.pipeline);
        }
        work
    }

    /// Optional busy-poll before parking: a futex wake-up costs tens of
    /// microseconds and a parked thread resumes on cold caches; polling
    /// briefly keeps a stream's next frame on a hot core. Real time, not
    /// the scheduler's clock: it bounds CPU spent, not a scheduling rule.
    /// The poll yields the CPU between looks: on a small board the worker
    /// shares its cores with zenoh's I/O threads, and a pure spin starved
    /// the very thread about to deliver the next frame (p99 0.5 → 2.3 ms on
    /// 2 cores). With nothing else runnable `sched_yield` returns at once.
    fn spin(&self, worker: usize, parker: &Parker) -> Option<Work<K>> {
        if self.idle_spin.is_zero() {
            return None;
        }
        let until = Instant::now() + self.idle_spin;
        while Instant::now() < until {
            if let Some(work) = self.pop(worker) {
                return Some(self.started(worker, parker, work));
            }
            std::thread::yield_now();
        }
        None
    }

    /// Wakes a peer for every level of `worker` that still has work: the
    /// claim that woke `worker` may have been meant for one of them.
    fn pass_on(&self, worker: usize) {
        for &level in &self.workers[worker].levels {
            if !self.levels[level].is_empty() {
                self.wake(level);
            }
        }
    }

    /// A ticket was queued at `level`: claim and unpark one idle worker
    /// serving it; with none idle, make workers filling a batch stop
    /// waiting (they run their batch and come back for this work).
    pub(super) fn wake(&self, level: usize) {
        // Pairs with the fence in `next` (and in `fill`): see there.
        fence(SeqCst);
        for w in &self.workers {
            if w.levels.contains(&level)
                && w.idle.compare_exchange(true, false, SeqCst, SeqCst).is_ok()
            {
                w.unparker.unpark();
                return;
            }
        }
        for w in &self.workers {
            if w.levels.contains(&level) && w.filling.load(SeqCst) {
                w.unparker.unpark();
            }
        }
    }

    /// Stops intake; workers drain their levels and then return `None`.
    /// Every worker gets a wake-up token, so one that is parked or about to
    /// park sees `stopping` at once.
    pub fn stop(&self) {
        self.stopping.store(true, SeqCst);
        for w in &self.workers {
            w.unparker.unpark();
        }
    }

    /// True once [`Scheduler::stop`] was called (shutdown has begun).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(SeqCst)
    }

    /// Stops workers after their current job, without draining.
    pub fn abort(&self) {
        self.aborting.store(true, SeqCst);
        self.stop();
    }
}
