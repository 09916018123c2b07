//! What `reflexd check` prints about a pipeline's pre- and post-processing
//! and its place in a chain: the resolved pre-processing (size from the
//! model, normalisation, layout, element type), the answer stage with the
//! output it reads, and what each chain stage takes from the one before.

use std::fmt::Write;

use crate::config::answer::YoloLayout;
use crate::config::image::{ColorOrder, Interpolation, Layout, PreConfig, ResizeMode};
use crate::config::ocr::{LimitType, OcrConfig};
use crate::config::{AnswerKind, Config, Link, LinkFeed, Outputs, PipelineConfig};
use crate::infer::Spec;
use crate::infer::engine::Port;
use crate::infer::warm::OcrStageInfo;

/// The `in:` line of a chain stage.
pub(super) fn link(config: &Config, p: &PipelineConfig, link: &Link) -> String {
    let before = &config.pipelines[link.after].name;
    match &link.feed {
        LinkFeed::Tensors(map) => {
            let pairs: Vec<String> = map
                .iter()
                .map(|(input, output)| format!("{input} ← {before}.{output}"))
                .collect();
            format!("chain stage after {before}: tensors {}", pairs.join(", "))
        }
        LinkFeed::Crops(_) => format!(
            "chain stage after {before}: one crop per region it found, up to {} per run (max_batch)",
            p.batch.as_ref().map_or(1, |b| b.max_batch)
        ),
    }
}

/// What goes out on the output key.
pub(super) fn published(p: &PipelineConfig) -> &'static str {
    if p.ocr.is_some() {
        return "answer: JSON text lines";
    }
    match p.answer.as_ref().map(|a| a.outputs) {
        None => "prediction: safetensors",
        Some(Outputs::Answer) => "answer: JSON",
        Some(Outputs::Tensors) => "prediction: safetensors (answer stage skipped)",
        Some(Outputs::Both) => "prediction: safetensors, answer JSON in metadata `answer`",
    }
}

/// The `pre:`, `answer:` and `chain:` lines.
pub(super) fn describe(out: &mut String, config: &Config, p: &PipelineConfig, spec: &Spec) {
    if let Some(b) = &spec.image {
        let port = &spec.client_inputs[b.input];
        let _ = writeln!(out, "  pre: {} → {}", pre_line(&b.pre), port.name);
        if !p.is_chained() {
            let _ = writeln!(
                out,
                "       frames up to {} pixels (pre.max_pixels)",
                b.pre.limits.max_pixels
            );
        }
    }
    if let Some(b) = &spec.answer {
        let tensor = &spec.publish[b.output];
        let port = spec.model_outputs.iter().find(|o| o.name == *tensor);
        let shown = port.map_or(tensor.clone(), |p| p.to_string());
        let _ = writeln!(out, "  answer: {} from {shown}", kind_line(&b.config.kind));
    }
    let me = config.pipelines.iter().position(|q| q.name == p.name);
    if me != Some(p.head) || p.next.is_some() {
        let names = chain_names(config, p.head);
        let _ = writeln!(
            out,
            "  chain: {} (one request, one deadline, on one worker)",
            names.join(" → ")
        );
    }
}

/// The lines of an OCR pipeline: how the chain prepares each frame, each
/// stage's model with its interface and settings, and the answer.
pub(super) fn describe_ocr(
    out: &mut String,
    o: &OcrConfig,
    stages: &[OcrStageInfo],
    charset: usize,
) {
    let q = &o.params;
    let _ = writeln!(
        out,
        "  pre: in the chain, as rapidocr: frame → BGR, long side ≤ {}, short side ≥ {}; det input short side {} {} (multiples of 32), bilinear, (pixel/255 − 0.5) / 0.5, nchw f32",
        q.max_side_len,
        q.min_side_len,
        match q.det.limit_type {
            LimitType::Min => "at least",
            LimitType::Max => "at most",
        },
        q.det.limit_side_len,
    );
    let _ = writeln!(
        out,
        "       frames up to {} pixels (ocr.max_pixels)",
        q.max_pixels
    );
    for st in stages {
        let ports = |v: &[Port]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "  {}: {} ({})",
            st.stage,
            st.model.display(),
            st.provider
        );
        let _ = writeln!(out, "       {} → {}", ports(&st.inputs), ports(&st.outputs));
        let what = match st.stage {
            "det" => format!(
                "DB boxes: thresh {}, box_thresh {}, unclip {}, at most {} candidates",
                q.det.thresh, q.det.box_thresh, q.det.unclip_ratio, q.det.max_candidates
            ),
            "cls" => format!(
                "crops 48x192 in batches of {}, turned 180° above {}",
                q.cls_batch, q.cls_thresh
            ),
            _ => format!(
                "crops 48 high in batches of {}; greedy CTC over {charset} characters (model metadata)",
                q.rec_batch
            ),
        };
        let _ = writeln!(out, "       {what}");
    }
    let _ = writeln!(
        out,
        "  answer: ocr: text lines (text, confidence, 4-corner box in frame pixels) and per-stage timing; lines below text_score {} dropped",
        q.text_score
    );
}

fn chain_names(config: &Config, head: usize) -> Vec<&str> {
    let mut names = Vec::new();
    let mut at = Some(head);
    while let Some(i) = at {
        names.push(config.pipelines[i].name.as_str());
        at = config.pipelines[i].next;
        if names.len() > config.pipelines.len() {
            break;
        }
    }
    names
}

fn pre_line(c: &PreConfig) -> String {
    let resize = match c.resize {
        ResizeMode::Stretch => "stretch".to_string(),
        ResizeMode::Letterbox { pad } => format!("letterbox (pad {pad})"),
        ResizeMode::CenterCrop { fraction } => format!("centre crop ({fraction})"),
    };
    let interp = match c.interpolation {
        Interpolation::Bilinear => "bilinear",
        Interpolation::Nearest => "nearest",
        Interpolation::Antialias => "antialias",
    };
    let color = match c.color {
        ColorOrder::Rgb => "rgb",
        ColorOrder::Bgr => "bgr",
        ColorOrder::Gray => "gray",
    };
    let layout = match c.layout {
        Layout::Nchw => "nchw",
        Layout::Nhwc => "nhwc",
    };
    let n = c.norm;
    let k = c.color.channels();
    format!(
        "{resize} to {}x{} {interp}, {color}, (pixel·{:.6} − {:?}) / {:?}, {layout} {}",
        c.width,
        c.height,
        n.scale,
        &n.mean[..k],
        &n.std[..k],
        c.dtype.name()
    )
}

fn kind_line(k: &AnswerKind) -> String {
    let labels = |l: &Option<Vec<String>>| {
        l.as_ref()
            .map_or(String::new(), |l| format!(", {} labels", l.len()))
    };
    match k {
        AnswerKind::Detect(c) => format!(
            "detect ({}): confidence ≥ {}, NMS iou {}{}, at most {}{}",
            match c.layout {
                YoloLayout::V8 => "yolov8 [1, 4+C, N]",
                YoloLayout::V5 => "yolov5 [1, N, 5+C]",
            },
            c.confidence,
            c.iou,
            if c.class_agnostic {
                " across classes"
            } else {
                ""
            },
            c.max_detections,
            labels(&c.labels)
        ),
        AnswerKind::Classify(c) => format!(
            "classify: top {}{}{}{}",
            c.top_k,
            if c.softmax { " after softmax" } else { "" },
            c.min_score
                .map_or(String::new(), |m| format!(", score ≥ {m}")),
            labels(&c.labels)
        ),
        AnswerKind::Vad(c) => format!(
            "vad: speech ≥ {}, silence < {}, min speech {} ms, min silence {} ms, pad {} ms, {} ms frames",
            c.threshold,
            c.neg_threshold,
            c.min_speech_us / 1000,
            c.min_silence_us / 1000,
            c.speech_pad_us / 1000,
            c.frame_us as f64 / 1000.0
        ),
    }
}
