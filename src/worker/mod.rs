//! Worker threads: the middle of the data flow. Each worker is a dedicated OS
//! thread that owns its own ORT sessions (`Session::run` takes `&mut self`),
//! takes the highest-priority job it serves from the scheduler, checks the
//! deadline, runs the model and publishes the outcome itself, so no hand-off
//! queue sits between inference and zenoh. A batch of a dynamically batched
//! pipeline is one session call; each request still gets its own prediction
//! with its own ids, sequence number and timing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crossbeam::sync::Parker;

use crate::config::ThreadPolicy;
use crate::egress::{self, Outbox};
use crate::engine::Model;
use crate::error::{ErrorCode, Rejection};
use crate::llm::LlmModel;
use crate::pipeline::{self, BatchItem, StreamState};
use crate::scheduler::{Batch, Job, StreamSlot, Work};
use crate::service::Shared;
use crate::wire;
use crate::wire::Tensor;

mod generate;
use generate::{step_decode_batch, step_generation};

pub struct Worker {
    pub id: usize,
    /// Indexed by pipeline; `None` for pipelines whose level this worker
    /// does not serve.
    pub models: Vec<Option<Model>>,
    /// Indexed by generation pipeline, like `models`.
    pub gen_models: Vec<Option<LlmModel>>,
    pub parker: Parker,
    pub policy: ThreadPolicy,
    /// CPU affinity (empty: inherited).
    pub cpus: Vec<usize>,
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
        ThreadPolicy::Idle => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as above.
            (
                unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) },
                "SCHED_IDLE".to_string(),
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

/// Pins the calling thread to `cpus` (no-op when empty).
pub fn apply_affinity(cpus: &[usize]) -> Result<(), String> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET is bounds-checked by config
    // validation (every CPU < CPU_SETSIZE); pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = std::io::Error::last_os_error();
        let online = std::thread::available_parallelism().map_or(0, |n| n.get());
        Err(format!(
            "cannot pin to CPUs {cpus:?}: {e} (this machine has {online} CPU(s) available to the daemon; a systemd CPUAffinity= or cgroup cpuset may restrict them further)"
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
            other => {
                let t = Instant::now();
                match other {
                    Work::Gen(g) => step_generation(&mut w, &shared, g),
                    Work::Batch(b) => serve_batch(&mut w, &shared, &mut outbox, b),
                    Work::GenBatch(b) => step_decode_batch(&mut w, &shared, b),
                    Work::Job(_) | Work::Stream(..) => unreachable!("matched above"),
                }
                shared.worker_stats[w.id].add(t.elapsed());
                continue;
            }
        };
        let started = Instant::now();
        let st = &shared.stats[job.pipeline];
        st.time(&st.queue_wait, started - job.received);
        if started > job.deadline {
            too_late(&shared, &job, started);
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

/// Drops a job whose deadline passed before its run could start.
fn too_late(shared: &Shared, job: &Job, started: Instant) {
    let late = micros(started - job.deadline);
    fail(
        shared,
        job,
        &Rejection::new(
            ErrorCode::DeadlineExceeded,
            format!(
                "waited {} µs in queue; budget passed {late} µs before it could start",
                micros(started - job.received)
            ),
        ),
    );
}

/// Runs a batch: jobs past their deadline are dropped and reported, the
/// rest run as one session call per group of jobs whose non-batch
/// dimensions agree (usually one group), and each gets its own reply.
fn serve_batch(w: &mut Worker, shared: &Shared, outbox: &mut Outbox, b: Batch) {
    let pi = b.pipeline;
    let started = Instant::now();
    let (live, late): (Vec<_>, Vec<_>) = b
        .items
        .into_iter()
        .partition(|(_, job)| started <= job.deadline);
    for (slot, job) in &late {
        too_late(shared, job, started);
        if let Some(s) = slot {
            shared.scheduler.release(s);
        }
    }
    let spec = &shared.specs[pi];
    let signature = |job: &Job| -> Vec<Vec<usize>> {
        spec.client_inputs
            .iter()
            .map(|c| {
                job.tensors
                    .iter()
                    .find(|t| t.name == c.name)
                    .map(|t| t.shape.get(1..).unwrap_or_default().to_vec())
                    .unwrap_or_default()
            })
            .collect()
    };
    let mut groups: Vec<(Vec<Vec<usize>>, Vec<usize>)> = Vec::new();
    for (i, (_, job)) in live.iter().enumerate() {
        let sig = signature(job);
        match groups.iter_mut().find(|(s, _)| *s == sig) {
            Some((_, members)) => members.push(i),
            None => groups.push((sig, vec![i])),
        }
    }
    let mut fill_wait = Some(micros(b.fill_wait));
    for (_, members) in groups {
        let group: Vec<&(Option<Arc<StreamSlot>>, Box<Job>)> =
            members.iter().map(|&i| &live[i]).collect();
        let wait = fill_wait.take().unwrap_or(0);
        run_group(w, shared, outbox, &group, wait, b.cut_by_deadline);
    }
    for (slot, _) in &live {
        if let Some(s) = slot {
            shared.scheduler.release(s);
        }
    }
}

/// One session call for jobs of one pipeline with matching shapes.
fn run_group(
    w: &mut Worker,
    shared: &Shared,
    outbox: &mut Outbox,
    group: &[&(Option<Arc<StreamSlot>>, Box<Job>)],
    fill_wait_us: u64,
    cut_by_deadline: bool,
) {
    let pi = group[0].1.pipeline;
    let p = &shared.config.pipelines[pi];
    let spec = &shared.specs[pi];
    let Some(model) = w.models[pi].as_mut() else {
        let rej = Rejection::new(
            ErrorCode::InferenceFailed,
            "worker has no session for this pipeline",
        );
        for (_, job) in group {
            fail(shared, job, &rej);
        }
        return;
    };
    let run_order = shared.order.fetch_add(1, Relaxed);
    let started = Instant::now();
    let st = &shared.stats[pi];
    for (_, job) in group {
        st.time(&st.queue_wait, started - job.received);
    }
    // Each slot's state is only touched by the worker holding its ticket,
    // so these locks are uncontended.
    let mut guards: Vec<_> = group
        .iter()
        .map(|(slot, _)| {
            slot.as_ref()
                .map(|s| s.state.lock().unwrap_or_else(|e| e.into_inner()))
        })
        .collect();
    let mut items: Vec<BatchItem> = guards
        .iter_mut()
        .zip(group)
        .map(|(g, (_, job))| BatchItem {
            tensors: &job.tensors,
            state: g.as_mut().map(|g| {
                let st = g.get_or_insert_with(|| StreamState::new(spec));
                if started.duration_since(st.last_used) > p.idle_reset {
                    *st = StreamState::new(spec);
                }
                st.last_used = started;
                st
            }),
        })
        .collect();
    let running = shared.progress.running(w.id);
    let result = pipeline::run_batch(model, p, spec, &mut items);
    drop(running);
    drop(items);
    drop(guards);
    let done = Instant::now();
    shared.scheduler.note_batch_run(pi, done - started);
    if let Some(st) = &shared.batch_stats[pi] {
        st.record(group.len(), fill_wait_us, cut_by_deadline);
    }
    let info = RunInfo {
        run_order,
        started,
        done,
        batch: group.len(),
    };
    match result {
        Ok(per_job) => {
            for ((_, job), outputs) in group.iter().zip(per_job) {
                reply(w.id, shared, outbox, job, Ok(outputs), &info);
            }
        }
        Err(e) => {
            tracing::warn!(pipeline = %p.name, batch = group.len(), error = %e, "batched model run failed");
            for (_, job) in group {
                reply(w.id, shared, outbox, job, Err(e.clone()), &info);
            }
        }
    }
}

/// When and how a job's model run happened, for its reply's metadata.
#[derive(Clone, Copy)]
struct RunInfo {
    run_order: u64,
    started: Instant,
    done: Instant,
    /// Jobs in the session call (1 when not batched).
    batch: usize,
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
    let running = shared.progress.running(w.id);
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
    drop(running);
    let info = RunInfo {
        run_order,
        started,
        done: Instant::now(),
        batch: 1,
    };
    reply(w.id, shared, outbox, job, result, &info);
}

/// Publishes a job's prediction (or its error) with ids and timing.
fn reply(
    worker: usize,
    shared: &Shared,
    outbox: &mut Outbox,
    job: &Job,
    result: Result<Vec<Tensor>, String>,
    info: &RunInfo,
) {
    let pi = job.pipeline;
    let p = &shared.config.pipelines[pi];
    let spec = &shared.specs[pi];
    let RunInfo {
        run_order,
        started,
        done,
        batch,
    } = *info;
    let st = &shared.stats[pi];
    st.time(&st.inference, done - started);
    match result {
        Ok(outputs) => {
            let mut meta = HashMap::with_capacity(13);
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
            meta.insert("worker".to_string(), worker.to_string());
            if spec.batch.is_some() {
                meta.insert("batch".to_string(), batch.to_string());
            }
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
            match outbox.put(&key, p.level, bytes) {
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
