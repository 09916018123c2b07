//! Joining a running batch (continuous batching of generations, used by
//! `llm::batch::DecodeSlots`): a member that becomes ready while its batch
//! runs waits in a bounded queue and is merged at the batch's next step; a
//! batch with no members left retires. One `active` flag says whether a
//! batch exists (queued or running): the joiner that sets it starts a batch,
//! and a retiring batch clears it and then looks for joiners that arrived
//! meanwhile, so every joiner is taken by exactly one batch and never waits
//! in the queue with no batch to take it (checked by `loom`, see
//! `sched::loom`). Generic over the member type so that the same code runs
//! under the model checker.

use super::sync::{AtomicBool, AtomicUsize, Queue, fence};
use std::sync::atomic::Ordering::SeqCst;

pub struct JoinQueue<T> {
    max: usize,
    /// Members waiting for the batch's next step (bounded: a place is
    /// reserved in `taken` before pushing).
    joiners: Queue<T>,
    /// True while a batch exists (queued or running).
    active: AtomicBool,
    /// Members plus joiners: places taken in the batch.
    taken: AtomicUsize,
}

impl<T> JoinQueue<T> {
    pub fn new(max: usize) -> JoinQueue<T> {
        JoinQueue {
            max,
            joiners: Queue::new(max.max(1)),
            active: AtomicBool::new(false),
            taken: AtomicUsize::new(0),
        }
    }

    /// Most members of one batch.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Hands `t` to the batch. `Ok(true)`: no batch existed, the caller
    /// starts one ([`Self::take`] into it, and [`Self::retire`] it if that
    /// took nothing: another batch may have taken `t` first). `Ok(false)`:
    /// the existing batch takes it at its next step. `Err(t)`: the batch
    /// is full.
    pub fn join(&self, t: T) -> Result<bool, T> {
        if self.taken.fetch_add(1, SeqCst) >= self.max {
            self.taken.fetch_sub(1, SeqCst);
            return Err(t);
        }
        if let Err(t) = self.joiners.push(t) {
            // Unreachable: capacity is max and a place was reserved.
            self.taken.fetch_sub(1, SeqCst);
            return Err(t);
        }
        // The push must be visible to a batch that clears `active` and
        // then looks at the queue (see `retire`).
        fence(SeqCst);
        Ok(!self.active.swap(true, SeqCst))
    }

    /// Moves every waiting joiner into the batch with `add` (at the start
    /// of a step); returns how many.
    pub fn take(&self, mut add: impl FnMut(T)) -> usize {
        let mut n = 0;
        while let Some(t) = self.joiners.pop() {
            add(t);
            n += 1;
        }
        n
    }

    /// `n` members left the batch for good.
    pub fn left(&self, n: usize) {
        self.taken.fetch_sub(n, SeqCst);
    }

    /// The batch has no members: retire it, unless joiners arrived and no
    /// other batch was started for them; then they are merged with `add`
    /// and `true` says to keep the batch going.
    pub fn retire(&self, mut add: impl FnMut(T)) -> bool {
        loop {
            self.active.swap(false, SeqCst);
            // Pairs with the fence in `join`: either that joiner sees
            // `active` false and starts a batch, or this sees its push.
            fence(SeqCst);
            if self.joiners.is_empty() || self.active.swap(true, SeqCst) {
                return false;
            }
            // Active again. If a batch started and retired in between took
            // the joiners, let go once more (a joiner that saw this batch
            // active meanwhile is then seen by the next turn).
            if self.take(&mut add) > 0 {
                return true;
            }
        }
    }

    /// Everything still waiting to join (teardown).
    pub fn drain(&self) -> Vec<T> {
        std::iter::from_fn(|| self.joiners.pop()).collect()
    }
}
