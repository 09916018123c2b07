//! In-process model chains (docs/models.md, "Chains"): what one stage hands
//! the next on the same worker, and the stages that read crops. A chain's
//! head runs like any pipeline; its result becomes a [`Handoff`]: its
//! output tensors (for a stage fed by name, `feed`), or the regions its
//! answer found with the frame they lie in (for stages fed with crops),
//! plus the answer so far and per-stage timing. Each stage runs on its own
//! session (the worker's runner for that pipeline); the worker walks the
//! chain under the head's deadline and publishes the last stage's result.
//! Nothing here touches zenoh or the scheduler.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use crate::config::AnswerKind;
use crate::error::{ErrorCode, Rejection};
use crate::infer::post::{self, Answer, AnswerInput, Detections};
use crate::infer::pre::{self, Rgb8};
use crate::infer::run::{self, Item, Runner};
use crate::infer::spec::Spec;
use crate::tensor::Tensor;
use crate::wire::image::Frame;

/// Where one stage's time went (µs), as the final answer reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StageTiming {
    pub pipeline: String,
    /// Frame decoding and pre-processing, or preparing crops.
    pub pre_us: u64,
    /// Inside the model runs.
    pub inference_us: u64,
    /// Answer stage (decoding outputs, NMS, …).
    pub post_us: u64,
    /// Model runs (one per batch of crops).
    pub runs: u32,
    /// Rows run (frames or crops).
    pub rows: u32,
}

/// Regions an earlier stage found, in the frame they lie in.
pub struct Regions {
    /// The key of the answer's list of region objects (`detections`).
    pub list: &'static str,
    /// The frame at full resolution.
    pub image: Rgb8,
    /// Axis-aligned boxes `[x1, y1, x2, y2]` in `image` pixels, one per
    /// entry of the answer's list, in order.
    pub boxes: Vec<[f32; 4]>,
}

/// What a stage hands the next.
pub struct Handoff {
    /// The answer so far (a JSON object), if the stage before had one.
    pub answer: Option<Value>,
    pub regions: Option<Regions>,
    /// The published outputs of the stage before (for `feed`).
    pub tensors: Vec<Tensor>,
    pub stages: Vec<StageTiming>,
}

fn internal(msg: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::InternalError, msg)
}

/// The regions of a detect answer, with the frame decoded once at full
/// resolution for the crops.
pub fn detect_regions(d: &Detections, frame: &Frame) -> Result<Regions, Rejection> {
    let image = Rgb8::from_input(&frame.input())?;
    Ok(Regions {
        list: "detections",
        image,
        boxes: d
            .detections
            .iter()
            .map(|x| [x.bbox.x1, x.bbox.y1, x.bbox.x2, x.bbox.y2])
            .collect(),
    })
}

/// A stage's inputs from the stage before's outputs, renamed by `feed`
/// (model input ← output); validated against the stage like a message.
pub fn fed_tensors(
    feed: &BTreeMap<String, String>,
    before: &[Tensor],
    spec: &Spec,
) -> Result<Vec<Tensor>, Rejection> {
    let mut out = Vec::with_capacity(feed.len());
    for (input, output) in feed {
        let t = before.iter().find(|t| t.name == *output).ok_or_else(|| {
            internal(format!(
                "the stage before did not publish `{output}` (feed {input} = {output:?})"
            ))
        })?;
        let mut t = t.clone();
        t.name = input.clone();
        out.push(t);
    }
    spec.validate(&out)?;
    Ok(out)
}

/// The pixel rectangle a box covers (outward to whole pixels).
fn pixel_rect(b: &[f32; 4]) -> (u32, u32, u32, u32) {
    let f = |v: f32| if v.is_finite() { v.max(0.0) } else { 0.0 };
    (
        f(b[0]).floor() as u32,
        f(b[1]).floor() as u32,
        f(b[2]).ceil() as u32,
        f(b[3]).ceil() as u32,
    )
}

/// Classifies the crop of every region, `per_run` crops per model run,
/// and adds each result to its region's object as `classes`.
pub fn classify_crops(
    runner: &mut Runner,
    spec: &Spec,
    h: &mut Handoff,
    per_run: usize,
    timing: &mut StageTiming,
) -> Result<(), Rejection> {
    let binding = spec
        .answer
        .as_ref()
        .filter(|b| matches!(b.config.kind, AnswerKind::Classify(_)))
        .ok_or_else(|| internal("a crops stage without a classify answer"))?;
    let regions = h
        .regions
        .as_ref()
        .ok_or_else(|| internal("no regions were handed over"))?;
    let start = Instant::now();
    let crops: Vec<Rgb8> = regions
        .boxes
        .iter()
        .map(|b| {
            let (x0, y0, x1, y1) = pixel_rect(b);
            regions.image.crop(x0, y0, x1, y1)
        })
        .collect();
    timing.pre_us += start.elapsed().as_micros() as u64;
    let mut classes = Vec::with_capacity(crops.len());
    for chunk in crops.chunks(per_run.max(1)) {
        let t = Instant::now();
        let inputs: Vec<_> = chunk.iter().map(Rgb8::input).collect();
        let pre = runner
            .pre
            .as_mut()
            .ok_or_else(|| internal("no pre-processor"))?;
        let prepared = pre::prepare(pre, &inputs).map_err(internal)?;
        if let Some(e) = prepared.results.iter().find_map(|r| r.as_ref().err()) {
            return Err(Rejection::from(e.clone()));
        }
        timing.pre_us += t.elapsed().as_micros() as u64;
        let mut items: Vec<Item> = (0..chunk.len())
            .map(|_| Item {
                tensors: &[],
                state: None,
            })
            .collect();
        let t = Instant::now();
        let ran = run::run_with(runner, spec, &mut items, Some(prepared.value))
            .map_err(|e| Rejection::new(ErrorCode::InferenceFailed, e))?;
        timing.inference_us += t.elapsed().as_micros() as u64;
        timing.runs += 1;
        timing.rows += chunk.len() as u32;
        let t = Instant::now();
        for i in 0..chunk.len() {
            let outputs = ran
                .outputs(spec, i)
                .map_err(|e| Rejection::new(ErrorCode::InferenceFailed, e))?;
            let none = AnswerInput {
                transform: None,
                stream: None,
                ts_us: None,
                now_us: 0,
            };
            match post::answer(binding, &outputs, none) {
                Ok(Answer::Classify { classes: c }) => classes.push(c),
                Ok(_) => return Err(internal("classify answer expected")),
                Err(e) => return Err(Rejection::new(e.error_code(), e.to_string())),
            }
        }
        timing.post_us += t.elapsed().as_micros() as u64;
    }
    merge(h, regions_list(h)?, "classes", classes)
}

fn regions_list(h: &Handoff) -> Result<&'static str, Rejection> {
    h.regions
        .as_ref()
        .map(|r| r.list)
        .ok_or_else(|| internal("no regions were handed over"))
}

/// Sets `key` on each region object of the answer, in order.
fn merge<T: Serialize>(
    h: &mut Handoff,
    list: &str,
    key: &str,
    values: Vec<T>,
) -> Result<(), Rejection> {
    let objs = h
        .answer
        .as_mut()
        .and_then(|a| a.get_mut(list))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| internal(format!("the answer has no `{list}` list")))?;
    if objs.len() != values.len() {
        return Err(internal(format!(
            "{} regions but {} results",
            objs.len(),
            values.len()
        )));
    }
    for (obj, v) in objs.iter_mut().zip(values) {
        let v = serde_json::to_value(v).map_err(|e| internal(e.to_string()))?;
        if let Some(o) = obj.as_object_mut() {
            o.insert(key.to_string(), v);
        }
    }
    Ok(())
}
