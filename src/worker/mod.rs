//! Worker threads: the middle of the data flow. Each worker is a dedicated OS
//! thread that owns its own sessions (`Session::run` takes `&mut self`),
//! takes the highest-priority work it serves from the scheduler, checks the
//! deadline, runs the model and hands the outcome to `io`: predictions are
//! published from the worker with `CongestionControl::Drop` (never waits),
//! generation messages go into per-generation outboxes drained by delivery
//! threads. [`tensor`] serves tensor jobs and batches, [`ocr`] reads the text
//! in an OCR pipeline's frames, [`generate`] advances generations one model
//! run per turn.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::config::ThreadPolicy;
use crate::ctx::{Ctx, Work};
use crate::infer::Runner;
use crate::infer::ocr::OcrChain;
use crate::io::egress::Outbox;
use crate::llm::LlmModel;
use crate::sched::Parker;

mod answer;
mod chain;
mod generate;
mod ocr;
mod os;
mod tensor;

pub use answer::close_streams;
pub use os::{apply_affinity, apply_policy};

pub struct Worker {
    pub id: usize,
    /// Indexed by tensor pipeline; `None` for pipelines whose level this
    /// worker does not serve.
    pub runners: Vec<Option<Runner>>,
    /// Indexed like `runners`: the chain of an OCR pipeline this worker
    /// serves (its `runners` entry is `None`).
    pub ocr: Vec<Option<Box<OcrChain>>>,
    /// Indexed by generation pipeline, like `runners`.
    pub llms: Vec<Option<LlmModel>>,
    pub parker: Parker,
    pub policy: ThreadPolicy,
    /// CPU affinity (empty: inherited).
    pub cpus: Vec<usize>,
}

fn micros(d: std::time::Duration) -> u64 {
    d.as_micros() as u64
}

/// The request id of a tensor job, for fault injection outside the per-job
/// guard.
fn job_id(work: &Work) -> Option<&str> {
    match work {
        Work::Job(j) | Work::Stream(_, j) => j.meta.id.as_deref(),
        _ => None,
    }
}

/// The worker's loop: until the scheduler stops and its levels are drained.
/// Each job is served under its own panic guard (see [`tensor`] and
/// [`generate`]); if the thread dies anyway, `_alive` marks it dead and the
/// supervisor stops the watchdog and exits non-zero.
pub fn run(mut w: Worker, ctx: Arc<Ctx>) {
    let _alive = ctx.progress.alive(w.id);
    let mut outbox = Outbox::new(ctx.session.clone());
    while let Some(work) = ctx.sched.next(w.id, &w.parker) {
        crate::fault::at(crate::fault::Stage::Die, job_id(&work));
        let t = Instant::now();
        // A tensor job's run start is numbered when the worker takes it:
        // what this worker runs next is decided here, and decoding or
        // pre-processing a frame must not let a job that arrives meanwhile
        // look as if it had waited behind this one.
        let taken = || ctx.order.fetch_add(1, Relaxed);
        match work {
            Work::Job(j) => tensor::serve(&mut w, &ctx, &mut outbox, (j, None), taken()),
            Work::Stream(s, j) => tensor::serve(&mut w, &ctx, &mut outbox, (j, Some(s)), taken()),
            Work::Batch(b) => tensor::serve_batch(&mut w, &ctx, &mut outbox, b, taken()),
            Work::Gen(g) => generate::step_generation(&mut w, &ctx, g),
            Work::GenBatch(b) => generate::step_decode_batch(&mut w, &ctx, b),
        }
        ctx.workers[w.id].add(t.elapsed());
    }
    tracing::debug!(worker = w.id, "worker stopped");
}
