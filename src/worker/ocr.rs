//! OCR pipelines on the worker (`[pipeline.ocr]`, docs/ocr.md): the job's
//! checked frame goes through this worker's PP-OCR chain (detector →
//! crops → angle classifier → recogniser, three sessions, under the job's
//! deadline) in place of the one-model run, and the text lines go out as
//! the pipeline's answer message with the chain's per-stage timing. A frame
//! that cannot be read is answered on the error key with the image codes
//! (`corrupt_image`, `bad_image`); a panic is contained like any job's.

use std::panic::{self, AssertUnwindSafe};

use serde::Serialize;

use super::tensor::{Body, RunInfo, publish};
use super::{Worker, micros};
use crate::ctx::Ctx;
use crate::error::{ErrorCode, Rejection};
use crate::infer::chain::StageTiming;
use crate::infer::ocr::{self, OcrChain, OcrError, OcrOutput, PixelFormat, TextLine};
use crate::infer::pre::Rgb8;
use crate::io::egress::{self, Outbox};
use crate::job::Job;
use crate::wire::image::{Encoding, Frame};

/// The answer object of an OCR pipeline (docs/ocr.md, "In the daemon").
#[derive(Serialize)]
struct OcrAnswer<'a> {
    kind: &'static str,
    /// Frame size the boxes refer to.
    width: u32,
    height: u32,
    lines: &'a [TextLine],
    boxes: usize,
}

/// Reads the text of one job's frame and publishes it (or its error).
pub(super) fn serve(w: &mut Worker, ctx: &Ctx, outbox: &mut Outbox, job: &Job, run_order: u64) {
    let pi = job.pipeline;
    let tp = &ctx.tensors[pi];
    let started = ctx.sched.now();
    tp.stats.time(&tp.stats.queue_wait, started - job.received);
    let Some(chain) = w.ocr.get_mut(pi).and_then(Option::as_mut) else {
        // Start-up gives every worker serving the level a chain.
        let rej = Rejection::new(
            ErrorCode::InternalError,
            "worker has no OCR chain for this pipeline",
        );
        return egress::fail(ctx, job, &rej);
    };
    let running = ctx.progress.running(w.id);
    let read = panic::catch_unwind(AssertUnwindSafe(|| {
        crate::fault::at(crate::fault::Stage::Run, job.meta.id.as_deref());
        read_text(chain, job)
    }));
    drop(running);
    let done = ctx.sched.now();
    let out = match read {
        Ok(Ok(out)) => out,
        Ok(Err(rej)) => {
            if rej.code == ErrorCode::InferenceFailed && tp.log.allow(rej.code) {
                tracing::warn!(pipeline = %tp.cfg.name, error = %rej.message, "OCR chain failed");
            }
            return egress::fail(ctx, job, &rej);
        }
        Err(_) => {
            tracing::error!(pipeline = %tp.cfg.name, "panic while reading text; contained");
            let rej = Rejection::new(
                ErrorCode::InternalError,
                "the daemon failed while serving this request (contained)",
            );
            return egress::fail(ctx, job, &rej);
        }
    };
    let t = &out.timing;
    let inference_us = t.det.infer_us + t.cls.infer_us + t.rec.infer_us;
    tp.stats.time(
        &tp.stats.inference,
        std::time::Duration::from_micros(inference_us),
    );
    let (width, height) = job
        .image
        .as_ref()
        .map_or((0, 0), |f| (f.desc.width, f.desc.height));
    let answer = OcrAnswer {
        kind: "ocr",
        width,
        height,
        lines: &out.lines,
        boxes: out.boxes,
    };
    let (answer, stages) = match (
        serde_json::to_string(&answer),
        serde_json::to_string(&stages(&out, &tp.cfg.name)),
    ) {
        (Ok(a), Ok(s)) => (a, s),
        (Err(e), _) | (_, Err(e)) => {
            let rej = Rejection::new(ErrorCode::InternalError, e.to_string());
            return egress::fail(ctx, job, &rej);
        }
    };
    let info = RunInfo {
        worker: w.id,
        run_order,
        started,
        run_started: started,
        done,
        batch: 1,
        pre_us: t.prepare_us,
    };
    let body = Body {
        tensors: None,
        answer: Some(&answer),
        stages: Some(&stages),
        inference_us,
    };
    publish(ctx, outbox, job, &info, &body);
}

/// The chain's three stages in the shape every chain's timing has
/// (`<pipeline>.det`, `.cls`, `.rec`); crops count as the classifier's
/// (or, without it, the recogniser's) preparation.
fn stages(out: &OcrOutput, name: &str) -> Vec<StageTiming> {
    let t = &out.timing;
    let stage = |s: &str, pre_us: u64, st: &ocr::StageTiming, rows: usize| StageTiming {
        pipeline: format!("{name}.{s}"),
        pre_us,
        inference_us: st.infer_us,
        post_us: st.us.saturating_sub(st.infer_us),
        runs: st.runs,
        rows: rows as u32,
    };
    let mut v = vec![stage("det", t.prepare_us, &t.det, 1)];
    let cls_ran = t.cls.runs > 0;
    if cls_ran {
        v.push(stage("cls", t.crop_us, &t.cls, out.boxes));
    }
    let rec_pre = if cls_ran { 0 } else { t.crop_us };
    v.push(stage("rec", rec_pre, &t.rec, out.boxes));
    v
}

/// The frame as the chain takes it (packed 8-bit pixels are borrowed as
/// they are; other encodings are decoded to RGB first), then the chain.
fn read_text(chain: &mut OcrChain, job: &Job) -> Result<OcrOutput, Rejection> {
    let frame: &Frame = job
        .image
        .as_ref()
        .ok_or_else(|| Rejection::new(ErrorCode::InternalError, "an OCR job carries no frame"))?;
    let d = frame.desc;
    let direct = match d.encoding {
        Encoding::Rgb8 => Some(PixelFormat::Rgb8),
        Encoding::Bgr8 => Some(PixelFormat::Bgr8),
        Encoding::Mono8 => Some(PixelFormat::Mono8),
        _ => None,
    };
    let decoded;
    let f = match direct {
        Some(format) => ocr::Frame {
            data: &frame.data,
            width: d.width,
            height: d.height,
            stride: d.step as usize,
            format,
        },
        None => {
            decoded = Rgb8::from_input(&frame.input())?;
            ocr::Frame::packed(
                &decoded.data,
                decoded.width,
                decoded.height,
                PixelFormat::Rgb8,
            )
        }
    };
    chain
        .run_until(&f, Some(job.deadline))
        .map_err(|e| rejection(e, job.received, job.deadline))
}

fn rejection(e: OcrError, received: std::time::Instant, deadline: std::time::Instant) -> Rejection {
    let code = match &e {
        OcrError::BadImage(_) => ErrorCode::BadImage,
        OcrError::Deadline { .. } => ErrorCode::DeadlineExceeded,
        OcrError::Config(_) => ErrorCode::InternalError,
        OcrError::Model { .. } | OcrError::Inference { .. } => ErrorCode::InferenceFailed,
    };
    let msg = match &e {
        OcrError::Deadline { .. } => format!(
            "{e} (budget {} µs)",
            micros(deadline.saturating_duration_since(received))
        ),
        _ => e.to_string(),
    };
    Rejection::new(code, msg)
}
