//! Latest-wins streams (`overflow = "latest"`): each stream of a pipeline
//! has one slot with a one-frame pending queue (a new frame replaces an
//! older one, handed back as superseded) and a `scheduled` flag, so a
//! stream has at most one ticket queued or running and its carried state
//! is only touched by the worker holding that ticket. Called from the zenoh
//! callback (submit) and from workers (release).
//!
//! The per-pipeline stream map is an `RwLock`, taken only by submitters —
//! never by a worker (`drain` runs after the workers stopped). A submit holds
//! the read lock while it puts its frame into the slot, and a new stream
//! takes the write lock, evicting a quiet stream when the map is full; so an
//! eviction never removes a slot that a frame is being put into, and one
//! stream never has two slots (two workers on one stateful stream).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Instant;

use super::sync::{AtomicBool, AtomicU64, Queue, fence};
use super::{Kinds, PipelineQueue, Scheduler, StreamSlot, Submitted, Task, Ticket};
use crate::error::{ErrorCode, Rejection};

impl<K: Kinds> StreamSlot<K> {
    fn new(pipeline: usize, stream: Arc<str>, seen: u64) -> StreamSlot<K> {
        StreamSlot {
            pipeline,
            stream,
            pending: Queue::new(1),
            scheduled: AtomicBool::new(false),
            state: std::sync::Mutex::new(None),
            last_seen: AtomicU64::new(seen),
        }
    }

    /// No frame pending, no ticket queued or running, and quiet for longer
    /// than `idle_us`. Called under the map's write lock, when no frame can
    /// be put in: a worker can still take the last frame and release the
    /// slot, so `pending` is read before `scheduled` — once the frame is
    /// seen taken, its holder's `scheduled` is seen too, until it releases.
    fn evictable(&self, now: u64, idle_us: u64) -> bool {
        self.pending.is_empty()
            && !self.scheduled.load(SeqCst)
            && now.saturating_sub(self.last_seen.load(Relaxed)) > idle_us
    }
}

type StreamMap<K> = HashMap<Arc<str>, Arc<StreamSlot<K>>>;

impl<K: Kinds> Scheduler<K> {
    /// Microseconds from the scheduler's start to `t` (a slot's
    /// `last_seen`, so that it fits an atomic).
    fn stamp(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Puts a frame of a `latest` pipeline into its stream's slot.
    pub(super) fn submit_latest(&self, job: Box<K::Job>) -> Submitted<K::Job> {
        let pq = &self.pipelines[job.pipeline()];
        {
            // Held until the frame is in: see the module doc.
            let map = pq.streams.read().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = map.get(job.stream()) {
                return self.put_frame(slot, job);
            }
        }
        let mut map = pq.streams.write().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = map.get(job.stream()) {
            return self.put_frame(slot, job);
        }
        if map.len() >= pq.max_streams && !self.evict_one(pq, &mut map) {
            let msg = format!(
                "pipeline already tracks {} live streams (max_streams)",
                pq.max_streams
            );
            return Submitted::Rejected(Rejection::new(ErrorCode::TooManyStreams, msg), job);
        }
        let now = self.stamp(self.clock.now());
        let slot = Arc::new(StreamSlot::new(job.pipeline(), job.stream().clone(), now));
        map.insert(job.stream().clone(), slot.clone());
        self.put_frame(&slot, job)
    }

    fn put_frame(&self, slot: &Arc<StreamSlot<K>>, job: Box<K::Job>) -> Submitted<K::Job> {
        // Relaxed: written under the map's read lock, read by eviction
        // under its write lock, which orders them.
        slot.last_seen.store(self.stamp(job.received()), Relaxed);
        let replaced = slot.pending.force_push(job);
        self.schedule(slot);
        match replaced {
            Some(old) => Submitted::Replaced(old),
            None => Submitted::Queued,
        }
    }

    /// Forgets one stream that has been quiet longer than its state would
    /// be kept anyway; false if none is.
    fn evict_one(&self, pq: &PipelineQueue<K>, map: &mut StreamMap<K>) -> bool {
        let now = self.stamp(self.clock.now());
        let idle_us = pq.idle_reset.as_micros() as u64;
        let victim = map
            .iter()
            .find(|(_, s)| s.evictable(now, idle_us))
            .map(|(k, _)| k.clone());
        victim.and_then(|k| map.remove(&k)).is_some()
    }

    /// Queues the stream's ticket unless one is already queued or running.
    pub(super) fn schedule(&self, slot: &Arc<StreamSlot<K>>) {
        // Pairs with `release`: a frame put in while the ticket's holder
        // was releasing is seen by one of the two, which queues the ticket.
        fence(SeqCst);
        if slot.pending.is_empty() || slot.scheduled.swap(true, SeqCst) {
            return;
        }
        let pq = &self.pipelines[slot.pipeline];
        let level = pq.level;
        let queue = match &pq.batch {
            Some(bq) => &bq.ready,
            None => &self.levels[level],
        };
        if queue.push(Ticket::Stream(slot.clone())).is_err() {
            // Unreachable by sizing (one ticket per stream, streams bounded);
            // the frame stays pending and is picked up by the next submit.
            slot.scheduled.swap(false, SeqCst);
            tracing::error!(stream = %slot.stream, "level queue full; stream ticket not queued");
            return;
        }
        if pq.batch.is_some() {
            self.schedule_batch(slot.pipeline);
        } else {
            self.wake(level);
        }
    }

    /// A worker finished the stream's frame: reschedule if another arrived.
    pub fn release(&self, slot: &Arc<StreamSlot<K>>) {
        slot.scheduled.swap(false, SeqCst);
        self.schedule(slot);
    }

    /// The current slot of a stream (tests check that it is unique).
    #[cfg(test)]
    pub(super) fn slot_of(&self, pipeline: usize, stream: &str) -> Option<Arc<StreamSlot<K>>> {
        let map = self.pipelines[pipeline].streams.read();
        map.unwrap_or_else(|e| e.into_inner()).get(stream).cloned()
    }
}
