//! Pixels in, answers out, on the worker: before a run, an image
//! pipeline's frames are decoded and pre-processed straight into the
//! runtime's input ([`prepare_frames`]); after it, a pipeline with an
//! answer stage turns its outputs into the answer message (or the answer
//! into a prediction's metadata, `outputs = "both"`), and a chain head
//! hands its result to the next stage instead of publishing ([`reply`]).
//! Per-stream answer state (VAD) lives in the stream's carried state:
//! closed with a `speech_end` when the stream is reset after being idle,
//! and when the daemon stops ([`close_streams`]).

use std::time::{SystemTime, UNIX_EPOCH};

use zenoh::Wait;

use super::micros;
use super::tensor::{Body, Frames, RunInfo, publish};
use crate::config::{InputFormat, Link, LinkFeed, Outputs};
use crate::ctx::Ctx;
use crate::error::{ErrorCode, Rejection};
use crate::infer::chain::{Handoff, StageTiming, detect_regions};
use crate::infer::post::{self, Answer, AnswerInput};
use crate::infer::pre::{self, Transform};
use crate::infer::{Ran, Runner, StreamState};
use crate::io::egress::{self, Outbox};
use crate::job::Job;
use crate::wire::image::ImageInput;
use crate::wire::reply::OutTensor;

type Member = crate::sched::Member<crate::ctx::Kinds>;

/// Wall clock in µs since the Unix epoch (the VAD stream clock's origin
/// for frames without `ts_us`).
pub(super) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Pre-processes the group's frames into one image input value. Jobs
/// whose frame fails (a JPEG that does not decode) are answered with the
/// frame's error code and left out; `None` when none is left.
pub(super) fn prepare_frames<'m>(
    ctx: &Ctx,
    runner: &mut Runner,
    group: &[&'m Member],
) -> Option<(Vec<&'m Member>, Frames)> {
    let mut kept: Vec<&Member> = group.to_vec();
    loop {
        let inputs: Vec<ImageInput> = kept
            .iter()
            .filter_map(|(_, job)| job.image.as_ref().map(|f| f.input()))
            .collect();
        let fail_all = |kept: &[&Member], rej: &Rejection| {
            for (_, job) in kept {
                egress::fail(ctx, job, rej);
            }
        };
        if inputs.len() != kept.len() {
            fail_all(&kept, &internal("an image pipeline's job carries no frame"));
            return None;
        }
        let Some(pre) = runner.pre.as_mut() else {
            fail_all(&kept, &internal("no pre-processor for this image pipeline"));
            return None;
        };
        let prepared = match pre::prepare(pre, &inputs) {
            Ok(p) => p,
            Err(e) => {
                fail_all(&kept, &internal(e));
                return None;
            }
        };
        if prepared.results.iter().all(Result::is_ok) {
            let transforms = prepared.results.into_iter().flatten().collect();
            let frames = Frames {
                value: Some(prepared.value),
                transforms,
                pre_us: prepared.us,
            };
            return Some((kept, frames));
        }
        // Answer the failed frames, then prepare the rest again (rare).
        let mut next = Vec::with_capacity(kept.len());
        for (m, r) in kept.iter().zip(&prepared.results) {
            match r {
                Ok(_) => next.push(*m),
                Err(e) => egress::fail(ctx, &m.1, &Rejection::from(e.clone())),
            }
        }
        if next.is_empty() {
            return None;
        }
        kept = next;
    }
}

fn internal(msg: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::InternalError, msg)
}

/// What a job's answer needs besides its outputs.
pub(super) struct Extra<'a> {
    /// The frame's geometry (image pipelines).
    pub transform: Option<&'a Transform>,
    /// The stream's carried state (`latest` pipelines).
    pub state: Option<&'a mut StreamState>,
}

/// Replies to job `i` of a run of a pipeline with an answer stage, or
/// hands its result on when the pipeline is the head of a chain.
pub(super) fn reply(
    ctx: &Ctx,
    outbox: &mut Outbox,
    (job, i): (&Job, usize),
    ran: &Ran,
    info: &RunInfo,
    extra: Extra,
) -> Option<Handoff> {
    let tp = &ctx.tensors[job.pipeline];
    let outputs = match ran.outputs(&tp.spec, i) {
        Ok(o) => o,
        Err(e) => {
            egress::fail(ctx, job, &Rejection::new(ErrorCode::InferenceFailed, e));
            return None;
        }
    };
    let inference_us = micros(info.done - info.run_started);
    let post_start = std::time::Instant::now();
    if let Some(next) = tp.cfg.next {
        let r = handoff(ctx, job, &outputs, extra, next);
        return match r {
            Ok(mut h) => {
                h.stages.push(StageTiming {
                    pipeline: tp.cfg.name.clone(),
                    pre_us: info.pre_us,
                    inference_us,
                    post_us: micros(post_start.elapsed()),
                    runs: 1,
                    rows: 1,
                });
                Some(h)
            }
            Err(rej) => {
                egress::fail(ctx, job, &rej);
                None
            }
        };
    }
    let outputs_mode = tp
        .spec
        .answer
        .as_ref()
        .map_or(Outputs::Tensors, |b| b.config.outputs);
    let answer = if outputs_mode == Outputs::Tensors {
        None
    } else {
        match answer_json(ctx, (job.pipeline, job), &outputs, extra) {
            Ok(a) => Some(a),
            Err(rej) => {
                egress::fail(ctx, job, &rej);
                return None;
            }
        }
    };
    let body = Body {
        tensors: (outputs_mode != Outputs::Answer).then_some(&outputs[..]),
        answer: answer.as_deref(),
        stages: None,
        inference_us,
    };
    publish(ctx, outbox, job, info, &body);
    None
}

/// Runs the answer stage and serialises the answer object.
pub(super) fn answer_json(
    ctx: &Ctx,
    (pi, job): (usize, &Job),
    outputs: &[OutTensor],
    extra: Extra,
) -> Result<String, Rejection> {
    let a = run_answer(ctx, (pi, job), outputs, extra)?;
    serde_json::to_string(&a).map_err(|e| internal(e.to_string()))
}

/// Pipeline `pi`'s answer stage on a job's outputs.
fn run_answer(
    ctx: &Ctx,
    (pi, job): (usize, &Job),
    outputs: &[OutTensor],
    extra: Extra,
) -> Result<Answer, Rejection> {
    let tp = &ctx.tensors[pi];
    let b = tp
        .spec
        .answer
        .as_ref()
        .ok_or_else(|| internal("no answer stage"))?;
    let input = AnswerInput {
        transform: extra.transform,
        stream: extra.state.and_then(|s| s.answer.as_mut()),
        ts_us: job.meta.ts_us,
        now_us: now_us(),
    };
    post::answer(b, outputs, input).map_err(|e| {
        if tp.log.allow(e.error_code()) {
            tracing::warn!(pipeline = %tp.cfg.name, error = %e, "answer stage failed");
        }
        Rejection::new(e.error_code(), e.to_string())
    })
}

/// What a chain head hands stage `next`.
fn handoff(
    ctx: &Ctx,
    job: &Job,
    outputs: &[OutTensor],
    extra: Extra,
    next: usize,
) -> Result<Handoff, Rejection> {
    let mut h = Handoff {
        answer: None,
        regions: None,
        tensors: Vec::new(),
        stages: Vec::new(),
    };
    match &ctx.tensors[next].cfg.format {
        InputFormat::Chained(Link {
            feed: LinkFeed::Tensors(_),
            ..
        }) => h.tensors = outputs.iter().map(OutTensor::to_tensor).collect(),
        InputFormat::Chained(Link {
            feed: LinkFeed::Crops(_),
            ..
        }) => {
            let a = run_answer(ctx, (job.pipeline, job), outputs, extra)?;
            let Answer::Detect(d) = &a else {
                return Err(internal("a crops stage follows a stage without regions"));
            };
            let frame = job
                .image
                .as_ref()
                .ok_or_else(|| internal("regions without a frame"))?;
            h.regions = Some(detect_regions(d, frame)?);
            h.answer = Some(serde_json::to_value(&a).map_err(|e| internal(e.to_string()))?);
        }
        _ => return Err(internal("the next stage is not a chain stage")),
    }
    Ok(h)
}

/// Closes the answer state of a stream being reset (idle) or dropped
/// (shutdown): a VAD segment still open gets its `speech_end`, published
/// as an answer message without a request (`"reason"` says why).
pub(super) fn close_stream(
    ctx: &Ctx,
    pi: usize,
    stream: &str,
    state: &mut StreamState,
    reason: &str,
) {
    let Some(sa) = state.answer.as_mut() else {
        return;
    };
    let Some(event) = sa.finish(now_us()) else {
        return;
    };
    let tp = &ctx.tensors[pi];
    let body = serde_json::json!({
        "pipeline": tp.cfg.name,
        "stream": stream,
        "reason": reason,
        "answer": {"kind": "vad", "speaking": false, "events": [event]},
    });
    let key = egress::output_key(&tp.cfg.output, stream);
    // Never waits, like every put of the daemon (see `io::egress`).
    if let Err(e) = ctx
        .session
        .put(key, body.to_string())
        .congestion_control(zenoh::qos::CongestionControl::Drop)
        .priority(egress::level_priority(tp.cfg.level))
        .wait()
    {
        tracing::warn!(pipeline = %tp.cfg.name, stream, error = %e, "cannot publish speech_end");
    }
}

/// Shutdown: closes every stream's open answer state (VAD segments get
/// their `speech_end`). Called once the workers have stopped.
pub fn close_streams(ctx: &Ctx) {
    for (pi, tp) in ctx.tensors.iter().enumerate() {
        let tracked = tp.spec.answer.as_ref().and_then(post::StreamAnswer::new);
        if tracked.is_none() {
            continue;
        }
        for slot in ctx.sched.stream_slots(pi) {
            // A worker still inside a run after the drain timeout holds its
            // stream's lock: skip that stream rather than wait for it.
            let Ok(mut st) = slot.state.try_lock() else {
                continue;
            };
            if let Some(st) = st.as_mut() {
                close_stream(ctx, pi, &slot.stream, st, "shutdown");
            }
        }
    }
}
