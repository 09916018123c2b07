//! The tensor half of a worker's turn: one job, or a batch of one pipeline's
//! jobs, through the one run path (`infer::run`), then one reply per job,
//! encoded straight from the session's outputs. Jobs whose deadline passed
//! before they could start are answered `deadline_exceeded` instead.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::{Worker, micros};
use crate::config::{Late, NonFinite};
use crate::ctx::{Batch, Ctx, StreamSlot};
use crate::error::{ErrorCode, Rejection};
use crate::infer::{Item, Ran, Runner, Spec, StreamState};
use crate::io::egress::{self, Outbox};
use crate::job::Job;
use crate::obs::ratelimit::one_line;
use crate::tensor::{Dtype, Tensor};
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
    } else if let Some(rej) = non_finite(ctx, &member.1) {
        egress::fail(ctx, &member.1, &rej);
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

/// `non_finite` for a job whose float inputs hold NaN or infinity, unless
/// the pipeline allows them. Checked on the worker (a 1080p f32 frame is 25
/// MB: too much to scan in the zenoh callback), before the model runs.
fn non_finite(ctx: &Ctx, job: &Job) -> Option<Rejection> {
    let tp = &ctx.tensors[job.pipeline];
    if tp.cfg.non_finite == NonFinite::Allow {
        return None;
    }
    let t = job.tensors.iter().find(|t| !all_finite(t))?;
    Some(Rejection::new(
        ErrorCode::NonFinite,
        format!(
            "tensor `{}` holds NaN or infinity (non_finite = \"allow\" lets such input run)",
            t.name
        ),
    ))
}

fn all_finite(t: &Tensor) -> bool {
    let d = &t.data;
    match t.dtype {
        Dtype::F32 => d
            .chunks_exact(4)
            .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
        Dtype::F64 => d
            .chunks_exact(8)
            .all(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")).is_finite()),
        // Exponent all ones is infinity or NaN.
        Dtype::F16 => d
            .chunks_exact(2)
            .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 != 0x7c00),
        Dtype::Bf16 => d
            .chunks_exact(2)
            .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 != 0x7f80),
        _ => true,
    }
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
    let (live, bad): (Vec<Member>, Vec<Member>) = live
        .into_iter()
        .partition(|(_, job)| non_finite(ctx, job).is_none());
    for (slot, job) in &bad {
        if let Some(rej) = non_finite(ctx, job) {
            egress::fail(ctx, job, &rej);
        }
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
    // Each slot's state is only touched by the worker holding its ticket,
    // so these locks are uncontended.
    let mut guards: Vec<_> = group
        .iter()
        .map(|(slot, _)| {
            slot.as_ref()
                .map(|s| s.state.lock().unwrap_or_else(|e| e.into_inner()))
        })
        .collect();
    let started = ctx.sched.now();
    for (_, job) in group {
        tp.stats.time(&tp.stats.queue_wait, started - job.received);
    }
    let mut items = match items(ctx, pi, group, &mut guards, started) {
        Ok(items) => items,
        Err(rej) => {
            for (_, job) in group {
                egress::fail(ctx, job, &rej);
            }
            return;
        }
    };
    let mut answered = vec![false; group.len()];
    let call = Call {
        worker: w.id,
        group,
        started,
        fill,
    };
    let ran = panic::catch_unwind(AssertUnwindSafe(|| {
        run_and_reply(ctx, &call, (runner, outbox), &mut items, &mut answered)
    }));
    drop(items);
    let done = ctx.sched.now();
    if ran.is_err() {
        // Contained: the jobs not yet answered get internal_error, the
        // streams start over from zero state, the worker goes on.
        let rej = Rejection::new(
            ErrorCode::InternalError,
            "the daemon failed while serving this request (contained; the stream's state was reset)",
        );
        for ((_, job), _) in group.iter().zip(&answered).filter(|(_, a)| !**a) {
            egress::fail(ctx, job, &rej);
        }
        for g in guards.iter_mut().flatten() {
            **g = None;
        }
        tracing::error!(pipeline = %tp.cfg.name, batch = group.len(), "panic while serving a request; contained");
        return;
    }
    for g in guards.iter_mut().flatten() {
        if let Some(st) = g.as_mut() {
            st.last_used = done;
        }
    }
}

/// One session call's jobs and how they were collected.
struct Call<'a> {
    worker: usize,
    group: &'a [&'a Member],
    started: Instant,
    fill: Fill,
}

/// The session call and the replies, inside the caller's panic guard;
/// `answered[i]` is set once job `i` has its outcome.
fn run_and_reply(
    ctx: &Ctx,
    call: &Call,
    (runner, outbox): (&mut Runner, &mut Outbox),
    items: &mut [Item],
    answered: &mut [bool],
) {
    let Call {
        worker,
        group,
        started,
        fill,
    } = *call;
    let pi = group[0].1.pipeline;
    let tp = &ctx.tensors[pi];
    let run_order = ctx.order.fetch_add(1, Relaxed);
    for (_, job) in group {
        crate::fault::at(crate::fault::Stage::Run, job.meta.id.as_deref());
    }
    let running = ctx.progress.running(worker);
    let result = crate::infer::run::run(runner, &tp.spec, items);
    drop(running);
    let done = ctx.sched.now();
    if let Some(bs) = &tp.batch_stats {
        ctx.sched.note_batch_run(pi, done - started);
        bs.record(group.len(), fill.wait_us, fill.cut_by_deadline);
    }
    for _ in group {
        tp.stats.time(&tp.stats.inference, done - started);
    }
    let info = RunInfo {
        worker,
        run_order,
        started,
        done,
        batch: group.len(),
    };
    match result {
        Ok(ran) => {
            for (i, (_, job)) in group.iter().enumerate() {
                reply(ctx, outbox, job, &ran, i, &info);
                answered[i] = true;
            }
        }
        Err(e) => {
            let rej = Rejection::new(ErrorCode::InferenceFailed, one_line(&e));
            if tp.log.allow(rej.code) {
                tracing::warn!(pipeline = %tp.cfg.name, batch = group.len(), error = %rej.message, "model run failed");
            }
            for (i, (_, job)) in group.iter().enumerate() {
                egress::fail(ctx, job, &rej);
                answered[i] = true;
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
            if tp.log.allow(ErrorCode::InferenceFailed) {
                tracing::warn!(pipeline = %tp.cfg.name, error = %e, "cannot read model outputs");
            }
            return egress::fail(ctx, job, &Rejection::new(ErrorCode::InferenceFailed, e));
        }
    };
    // End-to-end is measured last, just before the message is built.
    let now = ctx.sched.now();
    let e2e = now - job.received;
    let late = now > job.deadline;
    if late {
        tp.stats.late.fetch_add(1, Relaxed);
        if tp.cfg.late == Late::Drop {
            let over = micros(now - job.deadline);
            let msg = format!(
                "finished {over} µs after its deadline; late = \"drop\" drops late results"
            );
            return egress::fail(ctx, job, &Rejection::new(ErrorCode::DeadlineExceeded, msg));
        }
    }
    tp.stats.time(&tp.stats.e2e, e2e);
    crate::fault::at(crate::fault::Stage::Encode, job.meta.id.as_deref());
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
        late,
    };
    let bytes = reply::encode_prediction(&meta, &outputs);
    let key = egress::output_key(&tp.cfg.output, &job.stream);
    // Counted before the put, so a client that has seen the prediction also
    // sees it counted.
    tp.stats.ok.fetch_add(1, Relaxed);
    if let Err(e) = outbox.put(&key, tp.cfg.level, bytes) {
        tp.stats.ok.fetch_sub(1, Relaxed);
        if tp.log.allow(ErrorCode::InferenceFailed) {
            tracing::warn!(pipeline = %tp.cfg.name, error = %e, "cannot publish prediction");
        }
        egress::fail(
            ctx,
            job,
            &Rejection::new(ErrorCode::InferenceFailed, format!("publish failed: {e}")),
        );
    } else {
        crate::io::ros2::publish_prediction(ctx, job, &outputs);
    }
}
