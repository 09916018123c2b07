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
use crate::infer::chain::Handoff;
use crate::infer::{Item, Ran, Runner, Spec, StreamState};
use crate::io::egress::{self, Outbox};
use crate::job::Job;
use crate::obs::ratelimit::one_line;
use crate::tensor::{Dtype, Tensor};
use crate::wire::answer::encode_answer;
use crate::wire::reply::{self, OutTensor, ReplyMeta};

/// A session call's members, on the stack for all but large batches (the
/// single-frame path allocates nothing here).
type Few<T> = smallvec::SmallVec<[T; 4]>;

type Member = crate::sched::Member<crate::ctx::Kinds>;

/// Serves one job (with its stream's slot for a `latest` pipeline);
/// `taken` is its run start in the daemon's event order.
pub(super) fn serve(
    w: &mut Worker,
    ctx: &Ctx,
    outbox: &mut Outbox,
    (job, slot): (Box<Job>, Option<Arc<StreamSlot>>),
    taken: u64,
) {
    let started = ctx.sched.now();
    let member = (slot, job);
    if started > member.1.deadline {
        too_late(ctx, &member.1, started);
    } else if let Some(rej) = non_finite(ctx, &member.1) {
        egress::fail(ctx, &member.1, &rej);
    } else if ctx.tensors[member.1.pipeline].cfg.ocr.is_some() {
        super::ocr::serve(w, ctx, outbox, &member.1, taken);
    } else {
        let fill = Fill {
            taken: Some(taken),
            ..Fill::default()
        };
        run_group(w, ctx, outbox, &[&member], fill);
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

/// How a call's jobs were collected: for the batching counters, and the
/// run start numbered when the worker took them (`None`: number it when
/// the call starts, as for a batch's later groups).
#[derive(Clone, Copy, Default)]
struct Fill {
    wait_us: u64,
    cut_by_deadline: bool,
    taken: Option<u64>,
}

/// Runs a batch: jobs past their deadline are dropped and reported, the
/// rest run as one session call per group of jobs whose non-batch
/// dimensions agree (usually one group), and each gets its own reply.
pub(super) fn serve_batch(w: &mut Worker, ctx: &Ctx, outbox: &mut Outbox, b: Batch, taken: u64) {
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
        taken: Some(taken),
    };
    for (_, members) in &groups {
        run_group(w, ctx, outbox, members, fill);
        fill.wait_us = 0;
        fill.taken = None;
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
    let started = ctx.sched.now();
    // Frames are decoded and pre-processed straight into the image input;
    // a frame that fails is answered here and left out of the run.
    let kept;
    let (group, frames) = if tp.spec.image.is_some() {
        match super::answer::prepare_frames(ctx, runner, group) {
            Some((g, f)) => {
                kept = g;
                (&kept[..], Some(f))
            }
            None => return,
        }
    } else {
        (group, None)
    };
    // Each slot's state is only touched by the worker holding its ticket,
    // so these locks are uncontended.
    let mut guards: Few<_> = group
        .iter()
        .map(|(slot, _)| {
            slot.as_ref()
                .map(|s| s.state.lock().unwrap_or_else(|e| e.into_inner()))
        })
        .collect();
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
    let mut answered: Few<bool> = smallvec::smallvec![false; group.len()];
    let call = Call {
        worker: w.id,
        group,
        started,
        fill,
    };
    let ran = panic::catch_unwind(AssertUnwindSafe(|| {
        run_and_reply(
            ctx,
            &call,
            (runner, outbox),
            &mut items,
            &mut answered,
            frames,
        )
    }));
    drop(items);
    let done = ctx.sched.now();
    if let Ok(handoffs) = ran {
        // Chains: the next stages run now, on this worker, each on its
        // own session (see `super::chain`).
        for (i, h, run_order) in handoffs {
            let head = super::chain::HeadRun { started, run_order };
            super::chain::continue_chain(w, ctx, outbox, &group[i].1, (h, head));
        }
    } else {
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

/// A group's frames, written into the image input.
pub(super) struct Frames {
    pub value: Option<ort::value::DynValue>,
    /// Per job of the (filtered) group.
    pub transforms: Vec<crate::infer::pre::Transform>,
    pub pre_us: u64,
}

/// One session call's jobs and how they were collected.
struct Call<'a> {
    worker: usize,
    group: &'a [&'a Member],
    started: Instant,
    fill: Fill,
}

/// The session call and the replies, inside the caller's panic guard;
/// `answered[i]` is set once job `i` has its outcome. Returns what chain
/// heads hand their next stage, by job index.
fn run_and_reply(
    ctx: &Ctx,
    call: &Call,
    (runner, outbox): (&mut Runner, &mut Outbox),
    items: &mut [Item],
    answered: &mut [bool],
    mut frames: Option<Frames>,
) -> Vec<(usize, Handoff, u64)> {
    let Call {
        worker,
        group,
        started,
        fill,
    } = *call;
    let pi = group[0].1.pipeline;
    let tp = &ctx.tensors[pi];
    let run_order = fill
        .taken
        .unwrap_or_else(|| ctx.order.fetch_add(1, Relaxed));
    for (_, job) in group {
        crate::fault::at(crate::fault::Stage::Run, job.meta.id.as_deref());
    }
    let running = ctx.progress.running(worker);
    let image = frames.as_mut().and_then(|f| f.value.take());
    let run_started = ctx.sched.now();
    let result = crate::infer::run::run_with(runner, &tp.spec, items, image);
    drop(running);
    let done = ctx.sched.now();
    if let Some(bs) = &tp.batch_stats {
        ctx.sched.note_batch_run(pi, done - run_started);
        bs.record(group.len(), fill.wait_us, fill.cut_by_deadline);
    }
    for _ in group {
        tp.stats.time(&tp.stats.inference, done - run_started);
    }
    let info = RunInfo {
        worker,
        run_order,
        started,
        run_started,
        done,
        batch: group.len(),
        pre_us: frames.as_ref().map_or(0, |f| f.pre_us),
    };
    let mut handoffs = Vec::new();
    match result {
        Ok(ran) => {
            let answers = tp.spec.answer.is_some() || tp.cfg.next.is_some();
            for (i, (_, job)) in group.iter().enumerate() {
                if answers {
                    let extra = super::answer::Extra {
                        transform: frames.as_ref().and_then(|f| f.transforms.get(i)),
                        state: items[i].state.as_deref_mut(),
                    };
                    let sent = super::answer::reply(ctx, outbox, (job, i), &ran, &info, extra);
                    if let Some(h) = sent {
                        handoffs.push((i, h, run_order));
                    }
                } else {
                    reply(ctx, outbox, job, &ran, i, &info);
                }
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
    handoffs
}

type Guard<'a> = Option<std::sync::MutexGuard<'a, Option<StreamState>>>;

/// The run's items: each job's tensors with its stream's state.
fn items<'a>(
    ctx: &Ctx,
    pi: usize,
    group: &'a [&Member],
    guards: &'a mut [Guard<'_>],
    now: Instant,
) -> Result<Few<Item<'a>>, Rejection> {
    let mut items = Few::with_capacity(group.len());
    for (g, (_, job)) in guards.iter_mut().zip(group) {
        let state = match g.as_mut() {
            None => None,
            Some(g) => Some(
                stream_state(ctx, pi, &job.stream, g, now)
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
    stream: &str,
    slot: &'a mut Option<StreamState>,
    now: Instant,
) -> Result<&'a mut StreamState, String> {
    let tp = &ctx.tensors[pi];
    let fresh = || StreamState::new(&tp.spec, tp.cfg.context.len(), now);
    match slot {
        Some(st) if now.duration_since(st.last_used) <= tp.cfg.idle_reset => {}
        _ => {
            if let Some(old) = slot.as_mut() {
                // An open speech segment ends where the stream went quiet.
                super::answer::close_stream(ctx, pi, stream, old, "idle");
            }
            *slot = Some(fresh()?)
        }
    }
    Ok(slot.as_mut().expect("set above"))
}

/// When and how a job's model run happened, for its reply's metadata.
pub(super) struct RunInfo {
    pub worker: usize,
    pub run_order: u64,
    /// When the worker took the job (its queue wait ends).
    pub started: Instant,
    /// When the session call began (after pre-processing).
    pub run_started: Instant,
    pub done: Instant,
    /// Jobs in the session call (1 when not batched).
    pub batch: usize,
    /// Pre-processing of the call's frames (µs; 0 without frames).
    pub pre_us: u64,
}

/// What a reply carries besides ids and timing.
pub(super) struct Body<'a> {
    /// Output tensors (a safetensors prediction), or none for an answer
    /// message.
    pub tensors: Option<&'a [OutTensor<'a>]>,
    /// The answer object (JSON text); with tensors it goes into metadata.
    pub answer: Option<&'a str>,
    /// A chain's per-stage timing (JSON array).
    pub stages: Option<&'a str>,
    /// Time in model runs (µs): the session call, or a chain's stages.
    pub inference_us: u64,
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
    let body = Body {
        tensors: Some(&outputs),
        answer: None,
        stages: None,
        inference_us: micros(info.done - info.run_started),
    };
    publish(ctx, outbox, job, info, &body);
}

/// Publishes a job's outcome on its pipeline's output key (late results
/// flagged, or dropped with `late = "drop"`), counted before the put.
pub(super) fn publish(ctx: &Ctx, outbox: &mut Outbox, job: &Job, info: &RunInfo, body: &Body) {
    let tp = &ctx.tensors[job.pipeline];
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
    let pre = (info.pre_us > 0).then(|| info.pre_us.to_string());
    let mut extra: Vec<(&str, &str)> = Vec::new();
    if let Some(p) = &pre {
        extra.push(("pre_us", p));
    }
    if body.tensors.is_some() {
        extra.extend(body.answer.map(|a| ("answer", a)));
        extra.extend(body.stages.map(|s| ("stages", s)));
    }
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
        inference_us: body.inference_us,
        e2e_us: micros(e2e),
        late,
        extra: &extra,
    };
    let bytes = match (body.tensors, body.answer) {
        (Some(outputs), _) => reply::encode_prediction(&meta, outputs),
        (None, Some(answer)) => encode_answer(&meta, body.stages, answer),
        (None, None) => reply::encode_prediction(&meta, &[]),
    };
    // Counted before the put, so a client that has seen the prediction also
    // sees it counted.
    tp.stats.ok.fetch_add(1, Relaxed);
    if let Err(e) = egress::deliver(outbox, job, &tp.cfg.output, tp.cfg.level, bytes) {
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
        let p = crate::io::ros2::Prediction {
            tensors: body.tensors,
            answer: body.answer,
        };
        crate::io::ros2::publish_prediction(ctx, job, p);
    }
}
