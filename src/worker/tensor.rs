//! The tensor half of a worker's turn: one job, or a batch of one pipeline's
//! jobs, through the one run path (`infer::run`), then one reply per job,
//! encoded straight from the session's outputs. Jobs whose deadline passed
//! before they could start are answered `deadline_exceeded` instead.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::{Worker, micros};
use crate::ctx::{Batch, Ctx, StreamSlot};
use crate::error::{ErrorCode, Rejection};
use crate::infer::{Item, Ran, Spec, StreamState};
use crate::io::egress::{self, Outbox};
use crate::job::Job;
use crate::wire::reply::{self, ReplyMeta};

type Member = crate::sched::Member<crate::ctx::Kinds>;

/// Serves one job (with its stream's slot for a `latest` pipeline).
pub(super) fn serve(
    w: &mut Worker,
    ctx: &Ctx,
    outbox: &mut Outbox,
    job: Box<Job>,
    slot: Option<Arc<StreamSlot>>,
) {
    let started = ctx.sched.now();
    let member = (slot, job);
    if started > member.1.deadline {
        too_late(ctx, &member.1, started);
    } else {
        run_group(w, ctx, outbox, &[&member], Fill::default());
    }
    if let Some(s) = &member.0 {
        ctx.sched.release(s);
    }
}

/// Answers a job whose deadline passed before its run could start.
fn too_late(ctx: &Ctx, job: &Job, started: Instant) {
    let st = &ctx.tensors[job.pipeline].stats;
    st.time(&st.queue_wait, started - job.received);
    let late = micros(started - job.deadline);
    egress::fail(
        ctx,
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

/// How a batch was collected, for the batching counters.
#[derive(Clone, Copy, Default)]
struct Fill {
    wait_us: u64,
    cut_by_deadline: bool,
}

/// Runs a batch: jobs past their deadline are dropped and reported, the
/// rest run as one session call per group of jobs whose non-batch
/// dimensions agree (usually one group), and each gets its own reply.
pub(super) fn serve_batch(w: &mut Worker, ctx: &Ctx, outbox: &mut Outbox, b: Batch) {
    let started = ctx.sched.now();
    let (live, late): (Vec<Member>, Vec<Member>) = b
        .items
        .into_iter()
        .partition(|(_, job)| started <= job.deadline);
    for (slot, job) in &late {
        too_late(ctx, job, started);
        if let Some(s) = slot {
            ctx.sched.release(s);
        }
    }
    let spec = &ctx.tensors[b.pipeline].spec;
    let mut groups: Vec<(Vec<&[usize]>, Vec<&Member>)> = Vec::new();
    for m in &live {
        let sig = signature(spec, &m.1);
        match groups.iter_mut().find(|(s, _)| *s == sig) {
            Some((_, members)) => members.push(m),
            None => groups.push((sig, vec![m])),
        }
    }
    let mut fill = Fill {
        wait_us: micros(b.fill_wait),
        cut_by_deadline: b.cut_by_deadline,
    };
    for (_, members) in &groups {
        run_group(w, ctx, outbox, members, fill);
        fill.wait_us = 0;
    }
    for (slot, _) in &live {
        if let Some(s) = slot {
            ctx.sched.release(s);
        }
    }
}

/// A job's shapes beyond the batch axis: jobs that agree run together.
fn signature<'a>(spec: &Spec, job: &'a Job) -> Vec<&'a [usize]> {
    spec.client_inputs
        .iter()
        .map(|c| {
            job.tensors
                .iter()
                .find(|t| t.name == c.name)
                .map(|t| t.shape.get(1..).unwrap_or_default())
                .unwrap_or_default()
        })
        .collect()
}

/// One session call for jobs of one pipeline with matching shapes, then a
/// reply for each.
fn run_group(w: &mut Worker, ctx: &Ctx, outbox: &mut Outbox, group: &[&Member], fill: Fill) {
    let pi = group[0].1.pipeline;
    let tp = &ctx.tensors[pi];
    let Some(runner) = w.runners[pi].as_mut() else {
        // The config validator guarantees a worker only serves levels it has
        // sessions for; reaching this is a bug, reported not hidden.
        let rej = Rejection::new(
            ErrorCode::InferenceFailed,
            "worker has no session for this pipeline",
        );
        for (_, job) in group {
            egress::fail(ctx, job, &rej);
        }
        return;
    };
    let run_order = ctx.order.fetch_add(1, Relaxed);
    let started = ctx.sched.now();
    for (_, job) in group {
        tp.stats.time(&tp.stats.queue_wait, started - job.received);
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
    let mut items = match items(ctx, pi, group, &mut guards, started) {
        Ok(items) => items,
        Err(rej) => {
            for (_, job) in group {
                egress::fail(ctx, job, &rej);
            }
            return;
        }
    };
    let running = ctx.progress.running(w.id);
    let result = crate::infer::run::run(runner, &tp.spec, &mut items);
    drop(running);
    let done = ctx.sched.now();
    drop(items);
    for g in guards.iter_mut().flatten() {
        if let Some(st) = g.as_mut() {
            st.last_used = done;
        }
    }
    if let Some(bs) = &tp.batch_stats {
        ctx.sched.note_batch_run(pi, done - started);
        bs.record(group.len(), fill.wait_us, fill.cut_by_deadline);
    }
    for _ in group {
        tp.stats.time(&tp.stats.inference, done - started);
    }
    let info = RunInfo {
        worker: w.id,
        run_order,
        started,
        done,
        batch: group.len(),
    };
    match result {
        Ok(ran) => {
            for (i, (_, job)) in group.iter().enumerate() {
                reply(ctx, outbox, job, &ran, i, &info);
            }
        }
        Err(e) => {
            tracing::warn!(pipeline = %tp.cfg.name, batch = group.len(), error = %e, "model run failed");
            let rej = Rejection::new(ErrorCode::InferenceFailed, e);
            for (_, job) in group {
                egress::fail(ctx, job, &rej);
            }
        }
    }
}

type Guard<'a> = Option<std::sync::MutexGuard<'a, Option<StreamState>>>;

/// The run's items: each job's tensors with its stream's state.
fn items<'a>(
    ctx: &Ctx,
    pi: usize,
    group: &'a [&Member],
    guards: &'a mut [Guard<'_>],
    now: Instant,
) -> Result<Vec<Item<'a>>, Rejection> {
    let mut items = Vec::with_capacity(group.len());
    for (g, (_, job)) in guards.iter_mut().zip(group) {
        let state = match g.as_mut() {
            None => None,
            Some(g) => Some(
                stream_state(ctx, pi, g, now)
                    .map_err(|e| Rejection::new(ErrorCode::InferenceFailed, e))?,
            ),
        };
        items.push(Item {
            tensors: &job.tensors,
            state,
        });
    }
    Ok(items)
}

/// The stream's carried state, created on its first frame and reset after
/// `idle_reset` without frames.
fn stream_state<'a>(
    ctx: &Ctx,
    pi: usize,
    slot: &'a mut Option<StreamState>,
    now: Instant,
) -> Result<&'a mut StreamState, String> {
    let tp = &ctx.tensors[pi];
    let fresh = || StreamState::new(&tp.spec, tp.cfg.context.len(), now);
    match slot {
        Some(st) if now.duration_since(st.last_used) <= tp.cfg.idle_reset => {}
        _ => *slot = Some(fresh()?),
    }
    Ok(slot.as_mut().expect("set above"))
}

/// When and how a job's model run happened, for its reply's metadata.
struct RunInfo {
    worker: usize,
    run_order: u64,
    started: Instant,
    done: Instant,
    /// Jobs in the session call (1 when not batched).
    batch: usize,
}

/// Publishes request `i`'s prediction with ids and timing.
fn reply(ctx: &Ctx, outbox: &mut Outbox, job: &Job, ran: &Ran, i: usize, info: &RunInfo) {
    let tp = &ctx.tensors[job.pipeline];
    let outputs = match ran.outputs(&tp.spec, i) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(pipeline = %tp.cfg.name, error = %e, "cannot read model outputs");
            return egress::fail(ctx, job, &Rejection::new(ErrorCode::InferenceFailed, e));
        }
    };
    // End-to-end is measured last, just before the message is built.
    let e2e = ctx.sched.now() - job.received;
    tp.stats.time(&tp.stats.e2e, e2e);
    let meta = ReplyMeta {
        fixed: &tp.fixed_meta[info.worker],
        id: job.meta.id.as_deref(),
        seq: job.meta.seq,
        ts_us: job.meta.ts_us,
        stream: &job.stream,
        batch: tp.spec.batch.as_ref().map(|_| info.batch),
        recv_order: job.recv_order,
        run_order: info.run_order,
        queue_us: micros(info.started - job.received),
        inference_us: micros(info.done - info.started),
        e2e_us: micros(e2e),
        late: info.done > job.deadline,
    };
    let bytes = reply::encode_prediction(&meta, &outputs);
    let key = egress::output_key(&tp.cfg.output, &job.stream);
    // Counted before the put, so a client that has seen the prediction also
    // sees it counted.
    tp.stats.ok.fetch_add(1, Relaxed);
    if let Err(e) = outbox.put(&key, tp.cfg.level, bytes) {
        tp.stats.ok.fetch_sub(1, Relaxed);
        tracing::warn!(pipeline = %tp.cfg.name, error = %e, "cannot publish prediction");
        egress::fail(
            ctx,
            job,
            &Rejection::new(ErrorCode::InferenceFailed, format!("publish failed: {e}")),
        );
    }
}
