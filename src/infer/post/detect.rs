//! YOLO-family detector outputs → detections in source pixels: decode the
//! two common layouts, keep boxes over the confidence threshold, class-aware
//! greedy NMS, then undo the letterbox/resize with the pre-processing
//! transform and clip to the frame.

use serde::Serialize;

use super::PostError;
pub use crate::config::answer::{DetectConfig, RawDetect, YoloLayout};
use crate::infer::pre::Transform;

/// At most this many boxes enter NMS (the best-scoring ones), so a model
/// that fires everywhere costs a bounded O(n²), as in Ultralytics (`max_nms`).
pub const MAX_CANDIDATES: usize = 30_000;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BBox {
    fn from_center(cx: f32, cy: f32, w: f32, h: f32) -> BBox {
        BBox {
            x1: cx - w / 2.0,
            y1: cy - h / 2.0,
            x2: cx + w / 2.0,
            y2: cy + h / 2.0,
        }
    }

    pub fn area(&self) -> f32 {
        (self.x2 - self.x1).max(0.0) * (self.y2 - self.y1).max(0.0)
    }
}

/// Intersection over union; 0 for boxes without area.
pub fn iou(a: &BBox, b: &BBox) -> f32 {
    let w = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let h = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let inter = w * h;
    let union = a.area() + b.area() - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detection {
    pub class_id: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: BBox,
}

/// The detector answer for one frame.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detections {
    /// Source frame size the boxes refer to.
    pub width: u32,
    pub height: u32,
    pub detections: Vec<Detection>,
}

/// Greedy NMS over boxes sorted by nothing in particular: returns the
/// indices kept, best score first. Boxes of different classes never
/// suppress each other unless `class_agnostic`.
pub fn nms(
    boxes: &[BBox],
    scores: &[f32],
    classes: &[usize],
    iou_threshold: f32,
    class_agnostic: bool,
    max_keep: usize,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep.len() == max_keep {
            break;
        }
        let suppressed = keep.iter().any(|&k| {
            (class_agnostic || classes[k] == classes[i])
                && iou(&boxes[k], &boxes[i]) > iou_threshold
        });
        if !suppressed {
            keep.push(i);
        }
    }
    keep
}

struct Candidate {
    bbox: BBox,
    score: f32,
    class: usize,
}

/// (boxes N, attributes per box) from a `[1, A, B]` or `[A, B]` shape.
fn dims(layout: YoloLayout, shape: &[usize], len: usize) -> Result<(usize, usize), PostError> {
    let bad = |m: String| PostError::BadOutput(m);
    let (a, b) = match shape {
        [1, a, b] | [a, b] => (*a, *b),
        _ => {
            return Err(bad(format!(
                "detector output shape {shape:?}; expected [1, A, B]"
            )));
        }
    };
    if a * b != len {
        return Err(bad(format!(
            "detector output has {len} values for shape {shape:?}"
        )));
    }
    let (n, attrs, fixed) = match layout {
        YoloLayout::V8 => (b, a, 4),
        YoloLayout::V5 => (a, b, 5),
    };
    if attrs <= fixed {
        return Err(bad(format!(
            "detector output {shape:?} has {attrs} values per box; {layout:?} needs more than {fixed} (box{} + classes)",
            if fixed == 5 { ", objectness" } else { "" }
        )));
    }
    Ok((n, attrs))
}

fn candidates(
    values: &[f32],
    layout: YoloLayout,
    n: usize,
    attrs: usize,
    conf: f32,
) -> Vec<Candidate> {
    let at = |i: usize, a: usize| match layout {
        YoloLayout::V8 => values[a * n + i],
        YoloLayout::V5 => values[i * attrs + a],
    };
    let first_class = if layout == YoloLayout::V8 { 4 } else { 5 };
    let mut out = Vec::new();
    for i in 0..n {
        let obj = if layout == YoloLayout::V5 {
            at(i, 4)
        } else {
            1.0
        };
        if obj.is_nan() || obj < conf {
            continue;
        }
        let (mut class, mut best) = (0, f32::NEG_INFINITY);
        for a in first_class..attrs {
            let s = at(i, a);
            if s > best {
                (class, best) = (a - first_class, s);
            }
        }
        let score = obj * best;
        let bbox = BBox::from_center(at(i, 0), at(i, 1), at(i, 2), at(i, 3));
        let finite = [bbox.x1, bbox.y1, bbox.x2, bbox.y2]
            .iter()
            .all(|v| v.is_finite());
        if score >= conf && finite && bbox.area() > 0.0 {
            out.push(Candidate { bbox, score, class });
        }
    }
    out
}

/// Maps a model-input box to the source frame and clips it; `None` when
/// nothing of it lies inside the frame (a box in the letterbox margin).
fn to_source(b: &BBox, t: &Transform) -> Option<BBox> {
    let (x1, y1) = t.to_source(b.x1 as f64, b.y1 as f64);
    let (x2, y2) = t.to_source(b.x2 as f64, b.y2 as f64);
    let (w, h) = (t.src_width as f64, t.src_height as f64);
    let c = BBox {
        x1: x1.clamp(0.0, w) as f32,
        y1: y1.clamp(0.0, h) as f32,
        x2: x2.clamp(0.0, w) as f32,
        y2: y2.clamp(0.0, h) as f32,
    };
    (c.area() > 0.0).then_some(c)
}

/// Decodes one frame's detector output (`values` in row-major order of
/// `shape`). Boxes are in model-input pixels until mapped through
/// `transform` (the pre-processing geometry of this frame).
pub fn decode_yolo(
    values: &[f32],
    shape: &[usize],
    cfg: &DetectConfig,
    transform: &Transform,
) -> Result<Detections, PostError> {
    let (n, attrs) = dims(cfg.layout, shape, values.len())?;
    let classes = attrs - if cfg.layout == YoloLayout::V8 { 4 } else { 5 };
    if let Some(labels) = &cfg.labels
        && labels.len() != classes
    {
        return Err(PostError::BadOutput(format!(
            "the detector scores {classes} classes but the labels file names {}",
            labels.len()
        )));
    }
    let mut cands = candidates(values, cfg.layout, n, attrs, cfg.confidence);
    if cands.len() > MAX_CANDIDATES {
        cands.select_nth_unstable_by(MAX_CANDIDATES, |a, b| b.score.total_cmp(&a.score));
        cands.truncate(MAX_CANDIDATES);
    }
    let boxes: Vec<BBox> = cands.iter().map(|c| c.bbox).collect();
    let scores: Vec<f32> = cands.iter().map(|c| c.score).collect();
    let ids: Vec<usize> = cands.iter().map(|c| c.class).collect();
    let keep = nms(
        &boxes,
        &scores,
        &ids,
        cfg.iou,
        cfg.class_agnostic,
        cfg.max_detections,
    );
    let detections = keep
        .into_iter()
        .filter_map(|i| {
            let c = &cands[i];
            Some(Detection {
                class_id: c.class,
                label: cfg.labels.as_ref().map(|l| l[c.class].clone()),
                score: c.score,
                bbox: to_source(&c.bbox, transform)?,
            })
        })
        .collect();
    Ok(Detections {
        width: transform.src_width,
        height: transform.src_height,
        detections,
    })
}
