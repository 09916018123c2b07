//! The fixed-priority scheduler between ingress and the workers, generic over
//! what it carries ([`Kinds`]: jobs, generations, decode batches, per-stream
//! state), so it knows no pipeline or model type. Each priority
//! level is one bounded lock-free queue (`crossbeam::ArrayQueue`); a worker
//! serves a configured subset of levels and always pops the highest non-empty
//! one, so a worker reserved for the top level never sits behind a long
//! lower-priority run. Idle workers park; submitters claim one idle worker
//! with a CAS and unpark it, and a worker passes a claim on when it spent
//! it on other work ([`idle`]: no lock, no timeout on the wake-up path).
//! The protocols are checked exhaustively with `loom` (`sched::loom`, run
//! by `scripts/loom.sh`) on this code, through the primitives of [`sync`].
//!
//! Backpressure: `reject` pipelines count queued jobs per pipeline and answer
//! `busy` beyond `queue_capacity`. `latest` pipelines keep one pending frame
//! per stream in a one-slot queue; `force_push` replaces an older frame, which
//! is handed back to the caller to report as `superseded`. A stream has at
//! most one ticket in a level queue and runs on one worker at a time, so its
//! frames stay in order and its carried state needs no lock contention. Level
//! queues are sized so tickets always fit.
//!
//! Dynamic batching (`max_batch > 1`): a batched pipeline's jobs (or stream
//! tickets) wait in the pipeline's own bounded ready queue, and the level
//! queue holds at most one batch ticket for the pipeline. The worker that
//! pops that ticket takes up to `max_batch` ready jobs, and if that is fewer
//! it waits for more — at most `max_queue_delay` after the oldest arrived,
//! never into the last quarter of a collected job's budget (nor past its
//! deadline minus the pipeline's last run time), and not at all while the
//! pipeline's level or a higher level it serves has other work. Then it
//! hands the ticket back, so another worker can collect the next batch
//! while this one runs.

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{BatchConfig, Config, Overflow};
use crate::error::{ErrorCode, Rejection};

mod batching;
mod clock;
mod idle;
pub mod join;
#[cfg(all(test, loom))]
mod loom;
mod streams;
mod sync;
#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(test)]
pub use clock::ManualClock;
pub use clock::{Clock, SystemClock};
pub use join::JoinQueue;
use sync::{AtomicBool, AtomicU64, AtomicUsize, Queue, RwLock};
pub use sync::{Parker, Unparker};

// Idle workers park without a timeout: every queued ticket wakes a parked
// worker or is taken by a running one, and `stop` unparks every worker
// (see `idle`).
/// Least kept between the end of a batch wait and a collected job's
/// deadline, on top of the pipeline's last run time (a quarter of the job's
/// budget is kept when that is more).
const DEADLINE_SLACK: Duration = Duration::from_micros(500);

/// A request the scheduler queues: which pipeline and stream it belongs to
/// and its time bounds.
pub trait Task: Send + 'static {
    fn pipeline(&self) -> usize;
    fn stream(&self) -> &Arc<str>;
    fn received(&self) -> Instant;
    fn deadline(&self) -> Instant;
    /// A level other than its pipeline's (an offloaded request at the
    /// requester's level); honoured for unbatched `reject` pipelines.
    fn level(&self) -> Option<usize> {
        None
    }
}

/// What the scheduler carries, named by its user: jobs of tensor
/// pipelines, generations, decode batches and the state a stream carries
/// between frames (held in the stream's slot, touched only by the worker
/// holding the stream's ticket).
pub trait Kinds: 'static {
    type Job: Task;
    type Gen: Send + 'static;
    type GenBatch: Send + 'static;
    type State: Send + 'static;
}

/// A stream of a `latest` pipeline: one pending frame and the state carried
/// between frames.
pub struct StreamSlot<K: Kinds> {
    pub pipeline: usize,
    pub stream: Arc<str>,
    pending: Queue<Box<K::Job>>,
    /// True while a ticket for this stream is queued or its job is running.
    scheduled: AtomicBool,
    /// Only the worker holding the stream's ticket touches this, so the lock
    /// is never contended (a std lock even under loom: not a protocol).
    pub state: Mutex<Option<K::State>>,
    /// Receipt of its latest frame, µs after the scheduler's epoch.
    last_seen: AtomicU64,
}

enum Ticket<K: Kinds> {
    Job(Box<K::Job>),
    Stream(Arc<StreamSlot<K>>),
    Gen(Box<K::Gen>),
    /// The right to collect a batch from pipeline `.0`'s ready queue.
    Batch(usize),
    /// A decode batch of generations (continuous batching).
    GenBatch(Box<K::GenBatch>),
}

/// Jobs of one batched pipeline collected for one session call, each with
/// its stream slot for `latest` pipelines (release every slot when done).
/// A job with its stream's slot (`latest` pipelines; release it when done).
pub type Member<K> = (Option<Arc<StreamSlot<K>>>, Box<<K as Kinds>::Job>);

pub struct Batch<K: Kinds> {
    pub pipeline: usize,
    pub items: Vec<Member<K>>,
    /// How long the worker waited for the batch to fill.
    pub fill_wait: Duration,
    /// The wait ended early to keep a collected job's deadline.
    pub cut_by_deadline: bool,
}

/// What a worker gets to run.
pub enum Work<K: Kinds> {
    Job(Box<K::Job>),
    /// A stream frame; call [`Scheduler::release`] with the slot when done.
    Stream(Arc<StreamSlot<K>>, Box<K::Job>),
    /// One step of a generation; [`Scheduler::requeue_gen`] it unless done.
    Gen(Box<K::Gen>),
    /// Jobs of a batched pipeline for one session call.
    Batch(Batch<K>),
    /// One decode step of every generation in the batch; requeue it with
    /// [`Scheduler::requeue_gen_batch`] unless it emptied.
    GenBatch(Box<K::GenBatch>),
}

/// Everything still queued when the scheduler is drained.
pub struct Drained<K: Kinds> {
    pub jobs: Vec<Box<K::Job>>,
    pub gens: Vec<Box<K::Gen>>,
    pub gen_batches: Vec<Box<K::GenBatch>>,
}

/// A generation the scheduler could not queue, with the reason.
pub type GenRefused<K> = (Rejection, Box<<K as Kinds>::Gen>);

/// Result of [`Scheduler::submit`].
pub enum Submitted<J> {
    Queued,
    /// Queued, and this older frame of the same stream was dropped.
    Replaced(Box<J>),
    Rejected(Rejection, Box<J>),
}

struct WorkerSlot {
    levels: Vec<usize>,
    idle: AtomicBool,
    /// Parked while waiting for a batch to fill: woken by new jobs of that
    /// pipeline and by work on a level it serves.
    filling: AtomicBool,
    unparker: Unparker,
}

/// The ready queue of a batched pipeline.
struct BatchQueue<K: Kinds> {
    cfg: BatchConfig,
    ready: Queue<Ticket<K>>,
    /// True while a batch ticket is queued or a worker is collecting.
    scheduled: AtomicBool,
    /// Worker id + 1 of the worker waiting for this batch to fill, or 0.
    filler: AtomicUsize,
    /// Last batched run time (µs), the margin kept before a deadline.
    run_estimate_us: AtomicU64,
}

struct PipelineQueue<K: Kinds> {
    overflow: Overflow,
    level: usize,
    capacity: usize,
    max_streams: usize,
    idle_reset: Duration,
    queued: AtomicUsize,
    /// Taken by submitters only, never by a worker (see `streams`).
    streams: RwLock<HashMap<Arc<str>, Arc<StreamSlot<K>>>>,
    batch: Option<BatchQueue<K>>,
}

pub struct Scheduler<K: Kinds> {
    levels: Vec<Queue<Ticket<K>>>,
    workers: Vec<WorkerSlot>,
    pipelines: Vec<PipelineQueue<K>>,
    stopping: AtomicBool,
    aborting: AtomicBool,
    idle_spin: Duration,
    clock: Arc<dyn Clock>,
    /// `clock.now()` at construction: stream stamps count from here.
    epoch: Instant,
}

impl<K: Kinds> Scheduler<K> {
    /// Builds the queues and one parker per worker (moved to its thread).
    pub fn new(cfg: &Config) -> (Arc<Scheduler<K>>, Vec<Parker>) {
        Scheduler::with_clock(cfg, Arc::new(SystemClock))
    }

    /// Like [`Scheduler::new`] with a given clock (tests drive batch-fill
    /// and stream eviction time by hand).
    pub fn with_clock(cfg: &Config, clock: Arc<dyn Clock>) -> (Arc<Scheduler<K>>, Vec<Parker>) {
        let mut level_cap = vec![0usize; cfg.levels.len()];
        let pipelines: Vec<PipelineQueue<K>> = cfg
            .pipelines
            .iter()
            .map(|p| {
                let cap = match p.overflow {
                    Overflow::Reject => p.queue_capacity,
                    Overflow::Latest => p.max_streams,
                };
                // A batched pipeline keeps its tickets in its own ready
                // queue and holds at most one batch ticket in the level.
                level_cap[p.level] += if p.batch.is_some() { 1 } else { cap };
                // Offloaded jobs may run at another level (Task::level).
                for l in crate::config::fleet::served_levels(cfg, p) {
                    level_cap[l] += cap;
                }
                PipelineQueue {
                    batch: p.batch.clone().map(|cfg| BatchQueue {
                        cfg,
                        ready: Queue::new(cap),
                        scheduled: AtomicBool::new(false),
                        filler: AtomicUsize::new(0),
                        run_estimate_us: AtomicU64::new(0),
                    }),
                    overflow: p.overflow,
                    level: p.level,
                    capacity: p.queue_capacity,
                    max_streams: p.max_streams,
                    idle_reset: p.idle_reset,
                    queued: AtomicUsize::new(0),
                    streams: RwLock::new(HashMap::new()),
                }
            })
            .collect();
        // Each live generation holds at most one ticket.
        for g in &cfg.generators {
            for &l in &g.allowed_levels {
                level_cap[l] += g.max_generations;
            }
        }
        let mut parkers = Vec::new();
        let workers = cfg
            .workers
            .iter()
            .map(|levels| {
                let parker = Parker::new();
                let unparker = parker.unparker().clone();
                parkers.push(parker);
                WorkerSlot {
                    levels: levels.levels.clone(),
                    idle: AtomicBool::new(false),
                    filling: AtomicBool::new(false),
                    unparker,
                }
            })
            .collect();
        let sched = Scheduler {
            levels: level_cap
                .into_iter()
                .map(|c| Queue::new(c.max(1)))
                .collect(),
            workers,
            pipelines,
            stopping: AtomicBool::new(false),
            aborting: AtomicBool::new(false),
            idle_spin: cfg.runtime.idle_spin,
            epoch: clock.now(),
            clock,
        };
        (Arc::new(sched), parkers)
    }

    /// The scheduler's clock: receipt stamps, deadline checks and batch
    /// waits all read it.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Queues a job without blocking. Called from the zenoh callback.
    pub fn submit(&self, job: Box<K::Job>) -> Submitted<K::Job> {
        let pq = &self.pipelines[job.pipeline()];
        if self.stopping.load(SeqCst) {
            return Submitted::Rejected(
                Rejection::new(ErrorCode::ShuttingDown, "the daemon is shutting down"),
                job,
            );
        }
        match pq.overflow {
            Overflow::Reject => {
                if pq.queued.fetch_add(1, SeqCst) >= pq.capacity {
                    pq.queued.fetch_sub(1, SeqCst);
                    let msg = format!("queue full ({} jobs waiting)", pq.capacity);
                    return Submitted::Rejected(Rejection::new(ErrorCode::Busy, msg), job);
                }
                let level = job.level().unwrap_or(pq.level);
                if let Some(bq) = &pq.batch {
                    let pipeline = job.pipeline();
                    if let Err(Ticket::Job(job)) = bq.ready.push(Ticket::Job(job)) {
                        // Unreachable: the ready queue holds queue_capacity.
                        pq.queued.fetch_sub(1, SeqCst);
                        return Submitted::Rejected(
                            Rejection::new(ErrorCode::Busy, "batch queue full"),
                            job,
                        );
                    }
                    self.schedule_batch(pipeline);
                    return Submitted::Queued;
                }
                if let Err(Ticket::Job(job)) = self.levels[level].push(Ticket::Job(job)) {
                    // Level queues are sized to the sum of their pipelines'
                    // capacities, so this is unreachable; answer busy anyway.
                    pq.queued.fetch_sub(1, SeqCst);
                    return Submitted::Rejected(
                        Rejection::new(ErrorCode::Busy, "level queue full"),
                        job,
                    );
                }
                self.wake(level);
                Submitted::Queued
            }
            Overflow::Latest => self.submit_latest(job),
        }
    }

    /// Queues a new generation at `level` (its first step is the prefill).
    pub fn submit_gen(&self, level: usize, g: Box<K::Gen>) -> Result<(), GenRefused<K>> {
        if self.stopping.load(SeqCst) {
            let r = Rejection::new(ErrorCode::ShuttingDown, "the daemon is shutting down");
            return Err((r, g));
        }
        self.requeue_gen(level, g)
    }

    /// Puts a generation back after a step, behind its level's other work,
    /// so generations at one level take turns.
    pub fn requeue_gen(&self, level: usize, g: Box<K::Gen>) -> Result<(), GenRefused<K>> {
        match self.levels[level].push(Ticket::Gen(g)) {
            Ok(()) => {
                self.wake(level);
                Ok(())
            }
            // Unreachable by sizing: level capacity includes max_generations.
            Err(Ticket::Gen(g)) => Err((Rejection::new(ErrorCode::Busy, "level queue full"), g)),
            Err(_) => unreachable!("push returns the ticket it was given"),
        }
    }

    /// Puts a decode batch back after a step. It takes the place of its
    /// members' own tickets, which level capacities already count.
    pub fn requeue_gen_batch(
        &self,
        level: usize,
        b: Box<K::GenBatch>,
    ) -> Result<(), Box<K::GenBatch>> {
        match self.levels[level].push(Ticket::GenBatch(b)) {
            Ok(()) => {
                self.wake(level);
                Ok(())
            }
            Err(Ticket::GenBatch(b)) => Err(b),
            Err(_) => unreachable!("push returns the ticket it was given"),
        }
    }

    fn pop(&self, worker: usize) -> Option<Work<K>> {
        for &level in &self.workers[worker].levels {
            while let Some(t) = self.levels[level].pop() {
                match t {
                    Ticket::Job(job) => {
                        self.pipelines[job.pipeline()].queued.fetch_sub(1, SeqCst);
                        return Some(Work::Job(job));
                    }
                    Ticket::Stream(slot) => match slot.pending.pop() {
                        Some(job) => return Some(Work::Stream(slot, job)),
                        None => self.release(&slot),
                    },
                    Ticket::Gen(g) => return Some(Work::Gen(g)),
                    Ticket::GenBatch(b) => return Some(Work::GenBatch(b)),
                    Ticket::Batch(pipeline) => {
                        let bq = self.pipelines[pipeline].batch.as_ref()?;
                        let mut items = Vec::with_capacity(bq.cfg.max_batch);
                        while items.len() < bq.cfg.max_batch {
                            match self.take_ready(bq) {
                                Some(item) => items.push(item),
                                None => break,
                            }
                        }
                        if items.is_empty() {
                            self.release_batch(pipeline);
                            continue;
                        }
                        return Some(Work::Batch(Batch {
                            pipeline,
                            items,
                            fill_wait: Duration::ZERO,
                            cut_by_deadline: false,
                        }));
                    }
                }
            }
        }
        None
    }

    /// The streams pipeline `pipeline` tracks (shutdown closes their
    /// per-stream answer state).
    pub fn stream_slots(&self, pipeline: usize) -> Vec<Arc<StreamSlot<K>>> {
        self.pipelines[pipeline]
            .streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Removes everything still queued (after workers have stopped).
    pub fn drain(&self) -> Drained<K> {
        let mut out = Drained {
            jobs: Vec::new(),
            gens: Vec::new(),
            gen_batches: Vec::new(),
        };
        for q in &self.levels {
            while let Some(t) = q.pop() {
                match t {
                    Ticket::Job(j) => out.jobs.push(j),
                    Ticket::Stream(s) => out.jobs.extend(s.pending.pop()),
                    Ticket::Gen(g) => out.gens.push(g),
                    Ticket::GenBatch(b) => out.gen_batches.push(b),
                    Ticket::Batch(_) => {}
                }
            }
        }
        for pq in &self.pipelines {
            if let Some(bq) = &pq.batch {
                while let Some((_, job)) = self.take_ready(bq) {
                    out.jobs.push(job);
                }
            }
            let streams = pq.streams.read().unwrap_or_else(|e| e.into_inner());
            for s in streams.values() {
                out.jobs.extend(s.pending.pop());
            }
        }
        out
    }
}
