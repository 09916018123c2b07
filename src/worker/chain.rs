//! Walking an in-process chain on the worker that ran its head: each
//! following stage runs at once on this worker, on its own session (the
//! worker holds one per pipeline it serves; a stage has its head's level),
//! under the head's deadline, checked before every stage. No zenoh round
//! trip and no queueing in between: the chain is one request to its client
//! and holds its worker for all its stages (give it a level of its own if
//! that matters; docs/models.md). The last stage publishes on the head's
//! output key, with every stage's timing in `stages`.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::answer::{Extra, answer_json};
use super::tensor::{Body, RunInfo, publish};
use super::{Worker, micros};
use crate::config::{InputFormat, Link, LinkFeed, Outputs};
use crate::ctx::Ctx;
use crate::error::{ErrorCode, Rejection};
use crate::infer::chain::{Handoff, StageTiming, classify_crops, fed_tensors};
use crate::infer::run::{self, Item};
use crate::io::egress::{self, Outbox};
use crate::job::Job;
use crate::wire::reply::OutTensor;

/// Where the head's run left the job: its queue wait and run order.
pub(super) struct HeadRun {
    pub started: Instant,
    pub run_order: u64,
}

/// Runs the stages after the head for one job and publishes the result,
/// or its failure, inside a panic guard of its own.
pub(super) fn continue_chain(
    w: &mut Worker,
    ctx: &Ctx,
    outbox: &mut Outbox,
    job: &Job,
    (h, head): (Handoff, HeadRun),
) {
    let walked = panic::catch_unwind(AssertUnwindSafe(|| walk(w, ctx, outbox, job, h, &head)));
    match walked {
        Ok(Ok(())) => {}
        Ok(Err(rej)) => {
            let tp = &ctx.tensors[job.pipeline];
            if tp.log.allow(rej.code) {
                tracing::warn!(pipeline = %tp.cfg.name, error = %rej, "chain stage failed");
            }
            egress::fail(ctx, job, &rej);
        }
        Err(_) => {
            let rej = Rejection::new(
                ErrorCode::InternalError,
                "the daemon failed while running a chain stage (contained)",
            );
            tracing::error!(pipeline = %ctx.tensors[job.pipeline].cfg.name, "panic in a chain stage; contained");
            egress::fail(ctx, job, &rej);
        }
    }
}

fn walk(
    w: &mut Worker,
    ctx: &Ctx,
    outbox: &mut Outbox,
    job: &Job,
    mut h: Handoff,
    head: &HeadRun,
) -> Result<(), Rejection> {
    let mut at = ctx.tensors[job.pipeline].cfg.next;
    while let Some(si) = at {
        let st = &ctx.tensors[si];
        let now = ctx.sched.now();
        if now > job.deadline {
            return Err(Rejection::new(
                ErrorCode::DeadlineExceeded,
                format!(
                    "the budget passed {} µs before chain stage {:?} could start",
                    micros(now - job.deadline),
                    st.cfg.name
                ),
            ));
        }
        st.stats.received.fetch_add(1, Relaxed);
        let mut timing = StageTiming {
            pipeline: st.cfg.name.clone(),
            ..StageTiming::default()
        };
        let InputFormat::Chained(Link { feed, .. }) = &st.cfg.format else {
            return Err(internal("a chain's next pipeline is not a stage"));
        };
        let runner = w.runners[si]
            .as_mut()
            .ok_or_else(|| internal("worker has no session for this chain stage"))?;
        let running = ctx.progress.running(w.id);
        match feed {
            LinkFeed::Tensors(map) => {
                let tensors = fed_tensors(map, &h.tensors, &st.spec)?;
                let mut items = [Item {
                    tensors: &tensors,
                    state: None,
                }];
                let t = Instant::now();
                let ran = run::run(runner, &st.spec, &mut items)
                    .map_err(|e| Rejection::new(ErrorCode::InferenceFailed, e))?;
                timing.inference_us = micros(t.elapsed());
                (timing.runs, timing.rows) = (1, 1);
                let outputs = ran
                    .outputs(&st.spec, 0)
                    .map_err(|e| Rejection::new(ErrorCode::InferenceFailed, e))?;
                drop(running);
                if st.cfg.next.is_none() {
                    h.stages.push(timing);
                    return finish_tensors(ctx, outbox, (si, job), &outputs, &h, head, w.id);
                }
                h.tensors = outputs.iter().map(OutTensor::to_tensor).collect();
            }
            LinkFeed::Crops(_) => {
                let per_run = st.cfg.batch.as_ref().map_or(1, |b| b.max_batch);
                classify_crops(runner, &st.spec, &mut h, per_run, &mut timing)?;
                drop(running);
            }
        }
        st.stats.time(
            &st.stats.inference,
            std::time::Duration::from_micros(timing.inference_us),
        );
        st.stats.ok.fetch_add(1, Relaxed);
        h.stages.push(timing);
        at = st.cfg.next;
    }
    finish_answer(ctx, outbox, job, &h, head, w.id)
}

fn internal(msg: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::InternalError, msg)
}

fn stages_json(h: &Handoff) -> Result<String, Rejection> {
    serde_json::to_string(&h.stages).map_err(|e| internal(e.to_string()))
}

fn run_info(h: &Handoff, head: &HeadRun, worker: usize) -> RunInfo {
    let now = Instant::now();
    RunInfo {
        worker,
        run_order: head.run_order,
        started: head.started,
        run_started: now,
        done: now,
        batch: 1,
        pre_us: h.stages.iter().map(|s| s.pre_us).sum(),
    }
}

/// Publishes the answer a chain of crops stages built.
fn finish_answer(
    ctx: &Ctx,
    outbox: &mut Outbox,
    job: &Job,
    h: &Handoff,
    head: &HeadRun,
    worker: usize,
) -> Result<(), Rejection> {
    let answer = h
        .answer
        .as_ref()
        .ok_or_else(|| internal("the chain produced no answer"))?
        .to_string();
    let stages = stages_json(h)?;
    let body = Body {
        tensors: None,
        answer: Some(&answer),
        stages: Some(&stages),
        inference_us: h.stages.iter().map(|s| s.inference_us).sum(),
    };
    publish(ctx, outbox, job, &run_info(h, head, worker), &body);
    Ok(())
}

/// Publishes the last stage's outputs of a chain fed with tensors, with
/// its own answer stage if it has one.
fn finish_tensors(
    ctx: &Ctx,
    outbox: &mut Outbox,
    (si, job): (usize, &Job),
    outputs: &[OutTensor],
    h: &Handoff,
    head: &HeadRun,
    worker: usize,
) -> Result<(), Rejection> {
    let st = &ctx.tensors[si];
    let mode = st
        .spec
        .answer
        .as_ref()
        .map_or(Outputs::Tensors, |b| b.config.outputs);
    let answer = match mode {
        Outputs::Tensors => None,
        _ => {
            let none = Extra {
                transform: None,
                state: None,
            };
            Some(answer_json(ctx, (si, job), outputs, none)?)
        }
    };
    st.stats.ok.fetch_add(1, Relaxed);
    let stages = stages_json(h)?;
    let body = Body {
        tensors: (mode != Outputs::Answer).then_some(outputs),
        answer: answer.as_deref(),
        stages: Some(&stages),
        inference_us: h.stages.iter().map(|s| s.inference_us).sum(),
    };
    publish(ctx, outbox, job, &run_info(h, head, worker), &body);
    Ok(())
}
