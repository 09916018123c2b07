//! Worker threads: the middle of the data flow. Each worker is a dedicated OS
//! thread that owns its own ORT sessions (`Session::run` takes `&mut self`),
//! takes the highest-priority job it serves from the scheduler, checks the
//! deadline, runs the model and publishes the outcome itself, so no hand-off
//! queue sits between inference and zenoh.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crossbeam::sync::Parker;

use crate::config::ThreadPolicy;
use crate::egress::{self, Outbox};
use crate::engine::Model;
use crate::error::{ErrorCode, Rejection};
use crate::llm::serve as llm_serve;
use crate::llm::{Finish, Generation, LlmModel};
use crate::pipeline::{self, StreamState};
use crate::scheduler::{Job, Work};
use crate::service::Shared;
use crate::wire;

pub struct Worker {
    pub id: usize,
    /// Indexed by pipeline; `None` for pipelines whose level this worker
    /// does not serve.
    pub models: Vec<Option<Model>>,
    /// Indexed by generation pipeline, like `models`.
    pub gen_models: Vec<Option<LlmModel>>,
    pub parker: Parker,
    pub policy: ThreadPolicy,
}

/// Applies the OS scheduling policy to the calling thread (Linux: per
/// thread).
pub fn apply_policy(policy: ThreadPolicy) -> Result<(), String> {
    let (rc, what) = match policy {
        ThreadPolicy::Default => return Ok(()),
        // SAFETY: plain syscalls on the calling thread's own id.
        ThreadPolicy::Nice(n) => (
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, n)
            },
            format!("nice {n}"),
        ),
        ThreadPolicy::Fifo(p) => {
            let param = libc::sched_param { sched_priority: p };
            // SAFETY: pid 0 is the calling thread; `param` outlives the call.
            (
                unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) },
                format!("SCHED_FIFO priority {p}"),
            )
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = std::io::Error::last_os_error();
        Err(format!(
            "cannot set {what}: {e} (needs CAP_SYS_NICE, e.g. AmbientCapabilities=CAP_SYS_NICE in the unit, or an RLIMIT_RTPRIO)"
        ))
    }
}

fn micros(d: std::time::Duration) -> u64 {
    d.as_micros() as u64
}

/// Publishes the final error outcome of a job and counts it.
pub fn fail(shared: &Shared, job: &Job, rej: &Rejection) {
    let p = &shared.config.pipelines[job.pipeline];
    shared.stats[job.pipeline].error(rej.code);
    egress::publish_error(
        &shared.session,
        &p.error_key,
        &p.name,
        &job.stream,
        job.meta.id.as_deref(),
        job.meta.seq,
        rej,
    );
}

pub fn run(mut w: Worker, shared: Arc<Shared>) {
    let mut outbox = Outbox::new(shared.session.clone());
    while let Some(work) = shared.scheduler.next(w.id, &w.parker) {
        let (job, slot) = match work {
            Work::Job(j) => (j, None),
            Work::Stream(s, j) => (j, Some(s)),
            Work::Gen(g) => {
                let t = Instant::now();
                step_generation(&mut w, &shared, g);
                shared.worker_stats[w.id].add(t.elapsed());
                continue;
            }
        };
        let started = Instant::now();
        let st = &shared.stats[job.pipeline];
        st.time(&st.queue_wait, started - job.received);
        if started > job.deadline {
            let late = micros(started - job.deadline);
            fail(
                &shared,
                &job,
                &Rejection::new(
                    ErrorCode::DeadlineExceeded,
                    format!(
                        "waited {} µs in queue; budget passed {late} µs before it could start",
                        micros(started - job.received)
                    ),
                ),
            );
        } else {
            serve(&mut w, &shared, &mut outbox, &job, slot.as_deref(), started);
        }
        if let Some(s) = slot {
            shared.scheduler.release(&s);
        }
        shared.worker_stats[w.id].add(started.elapsed());
    }
    tracing::debug!(worker = w.id, "worker stopped");
}

/// Advances a generation by one model run and puts it back in its queue,
/// or ends it (cancelled, deadline, stop, length, error).
fn step_generation(w: &mut Worker, shared: &Shared, mut g: Box<Generation>) {
    if g.is_cancelled() {
        return llm_serve::finish(shared, g, Finish::Cancelled);
    }
    if Instant::now() > g.deadline {
        return llm_serve::finish(shared, g, Finish::Deadline);
    }
    let Some(model) = w.gen_models[g.pipeline].as_mut() else {
        g.error = Some(Rejection::new(
            ErrorCode::InferenceFailed,
            "worker has no session for this pipeline",
        ));
        return llm_serve::finish(shared, g, Finish::Error);
    };
    g.run_order = shared.order.fetch_add(1, Relaxed);
    let t = Instant::now();
    let step = model.step(&mut g);
    let st = &shared.gen_stats[g.pipeline];
    st.time(&st.inference, t.elapsed());
    match step {
        Ok(out) => {
            if let Some((token_id, text)) = out.token {
                llm_serve::publish_token(shared, &g, token_id, &text);
                if g.first_token.is_none() {
                    g.first_token = Some(Instant::now());
                }
            }
            match g.finished {
                Some(reason) => llm_serve::finish(shared, g, reason),
                None => {
                    if let Err((rej, mut g)) = shared.scheduler.requeue_gen(g) {
                        g.error = Some(rej);
                        llm_serve::finish(shared, g, Finish::Error);
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(id = %g.cmd.id, error = %e, "generation step failed");
            g.error = Some(Rejection::new(ErrorCode::InferenceFailed, e));
            llm_serve::finish(shared, g, Finish::Error);
        }
    }
}

fn serve(
    w: &mut Worker,
    shared: &Shared,
    outbox: &mut Outbox,
    job: &Job,
    slot: Option<&crate::scheduler::StreamSlot>,
    started: Instant,
) {
    let pi = job.pipeline;
    let p = &shared.config.pipelines[pi];
    let spec = &shared.specs[pi];
    let Some(model) = w.models[pi].as_mut() else {
        // The config validator guarantees a worker only serves levels it has
        // sessions for; reaching this is a bug, reported not hidden.
        fail(
            shared,
            job,
            &Rejection::new(
                ErrorCode::InferenceFailed,
                "worker has no session for this pipeline",
            ),
        );
        return;
    };
    let run_order = shared.order.fetch_add(1, Relaxed);
    let result = match slot {
        Some(slot) => {
            let mut guard = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            let st = guard.get_or_insert_with(|| StreamState::new(spec));
            if started.duration_since(st.last_used) > p.idle_reset {
                *st = StreamState::new(spec);
            }
            let r = pipeline::run(model, p, spec, &job.tensors, Some(st));
            st.last_used = Instant::now();
            r
        }
        None => pipeline::run(model, p, spec, &job.tensors, None),
    };
    let done = Instant::now();
    let st = &shared.stats[pi];
    st.time(&st.inference, done - started);
    match result {
        Ok(outputs) => {
            let mut meta = HashMap::with_capacity(12);
            if let Some(id) = &job.meta.id {
                meta.insert("id".to_string(), id.clone());
            }
            if let Some(seq) = job.meta.seq {
                meta.insert("seq".to_string(), seq.to_string());
            }
            if let Some(ts) = job.meta.ts_us {
                meta.insert("ts_us".to_string(), ts.to_string());
            }
            meta.insert("stream".to_string(), job.stream.to_string());
            meta.insert("pipeline".to_string(), p.name.clone());
            meta.insert("model".to_string(), shared.model_names[pi].clone());
            meta.insert("provider".to_string(), spec.provider.to_string());
            meta.insert("worker".to_string(), w.id.to_string());
            meta.insert("recv_order".to_string(), job.recv_order.to_string());
            meta.insert("run_order".to_string(), run_order.to_string());
            meta.insert(
                "queue_us".to_string(),
                micros(started - job.received).to_string(),
            );
            meta.insert(
                "inference_us".to_string(),
                micros(done - started).to_string(),
            );
            // End-to-end is measured last, just before the put.
            let e2e = job.received.elapsed();
            st.time(&st.e2e, e2e);
            let bytes = wire::encode_output(&outputs, {
                meta.insert("e2e_us".to_string(), micros(e2e).to_string());
                meta
            });
            let key = egress::output_key(&p.output, &job.stream);
            // Counted before the put, so a client that has seen the
            // prediction also sees it counted.
            shared.stats[pi].ok.fetch_add(1, Relaxed);
            match outbox.put(&key, bytes) {
                Ok(()) => {}
                Err(e) => {
                    shared.stats[pi].ok.fetch_sub(1, Relaxed);
                    tracing::warn!(pipeline = %p.name, error = %e, "cannot publish prediction");
                    fail(
                        shared,
                        job,
                        &Rejection::new(ErrorCode::InferenceFailed, format!("publish failed: {e}")),
                    );
                }
            }
        }
        Err(e) => {
            tracing::warn!(pipeline = %p.name, stream = %job.stream, error = %e, "model run failed");
            fail(shared, job, &Rejection::new(ErrorCode::InferenceFailed, e));
        }
    }
}
