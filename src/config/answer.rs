//! `[pipeline.answer]`: the answer stage of a tensor pipeline (docs/answers.md)
//! and, for in-process chains, what a stage does with what the stage before
//! it handed over. Like the rest of the config: raw serde mirrors with
//! unknown keys refused, then validated types. The table's `kind` selects
//! which keys exist; `outputs` and `tensor` are common to every kind. Labels
//! files are read here, so a missing file fails at start-up.

use std::path::Path;

use serde::Deserialize;

use super::labels::load_labels;

/// Raw-config error for an answer stage (`[pipeline.answer]`), naming the key.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("answer.{key}: {message}")]
pub struct AnswerConfigError {
    pub key: &'static str,
    pub message: String,
}

pub(crate) fn cfg_err(key: &'static str, message: impl Into<String>) -> AnswerConfigError {
    AnswerConfigError {
        key,
        message: message.into(),
    }
}

/// What a pipeline publishes per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Outputs {
    /// The answer as JSON (the default once an answer stage is configured).
    #[default]
    Answer,
    /// The raw output tensors only (the answer stage is skipped).
    Tensors,
    /// The tensors, with the answer's JSON in the prediction's metadata.
    Both,
}

/// `[pipeline.answer]` as written: `kind`, the common keys, and the kind's
/// own keys (checked by the kind's raw struct).
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub kind: String,
    pub outputs: Option<String>,
    pub tensor: Option<String>,
    pub rest: toml::Table,
}

impl<'de> Deserialize<'de> for RawAnswer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut t = toml::Table::deserialize(d)?;
        let mut text = |k: &str| -> Result<Option<String>, D::Error> {
            match t.remove(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(D::Error::custom(format!(
                    "answer.{k} = {other}: expected a string"
                ))),
            }
        };
        let kind = text("kind")?.ok_or_else(|| {
            D::Error::custom(format!(
                "[pipeline.answer] needs `kind` (one of {})",
                AnswerKind::NAMES.join(", ")
            ))
        })?;
        Ok(RawAnswer {
            outputs: text("outputs")?,
            tensor: text("tensor")?,
            kind,
            rest: t,
        })
    }
}

/// The validated answer stage.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerConfig {
    pub kind: AnswerKind,
    pub outputs: Outputs,
    /// The model output the answer reads (`None`: the only published one).
    pub tensor: Option<String>,
}

/// What the answer stage does.
#[derive(Clone, Debug, PartialEq)]
pub enum AnswerKind {
    /// YOLO-family boxes → detections (regions for a following stage).
    Detect(DetectConfig),
    /// Scores → top-k classes (of the frame, or of each region when the
    /// pipeline is a chain stage fed with crops).
    Classify(ClassConfig),
    /// Per-frame speech probability → speech start/end events per stream.
    Vad(VadConfig),
}

impl AnswerKind {
    pub const NAMES: [&'static str; 3] = ["detect", "classify", "vad"];

    pub fn name(&self) -> &'static str {
        match self {
            AnswerKind::Detect(_) => "detect",
            AnswerKind::Classify(_) => "classify",
            AnswerKind::Vad(_) => "vad",
        }
    }
}

fn kind_keys<T: serde::de::DeserializeOwned>(
    kind: &str,
    rest: &toml::Table,
) -> Result<T, AnswerConfigError> {
    rest.clone().try_into().map_err(|e: toml::de::Error| {
        cfg_err(
            "kind",
            format!("{kind:?}: {}", e.to_string().trim().replace('\n', " ")),
        )
    })
}

impl AnswerConfig {
    /// Validates the table; `base` resolves a labels file.
    pub fn from_raw(raw: &RawAnswer, base: &Path) -> Result<AnswerConfig, AnswerConfigError> {
        let outputs = match raw.outputs.as_deref() {
            None | Some("answer") => Outputs::Answer,
            Some("tensors") => Outputs::Tensors,
            Some("both") => Outputs::Both,
            Some(o) => {
                return Err(cfg_err(
                    "outputs",
                    format!("{o:?} is not one of answer, tensors, both"),
                ));
            }
        };
        let k = raw.kind.as_str();
        let kind = match k {
            "detect" => {
                AnswerKind::Detect(DetectConfig::from_raw(&kind_keys(k, &raw.rest)?, base)?)
            }
            "classify" => {
                AnswerKind::Classify(ClassConfig::from_raw(&kind_keys(k, &raw.rest)?, base)?)
            }
            "vad" => AnswerKind::Vad(VadConfig::from_raw(&kind_keys(k, &raw.rest)?)?),
            other => {
                return Err(cfg_err(
                    "kind",
                    format!("{other:?} is not one of {}", AnswerKind::NAMES.join(", ")),
                ));
            }
        };
        Ok(AnswerConfig {
            kind,
            outputs,
            tensor: raw.tensor.clone(),
        })
    }
}

// ------------------------------------------------------------- detect

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YoloLayout {
    /// `[1, 4+C, N]`: rows cx, cy, w, h, then C class scores (YOLOv8/v11).
    V8,
    /// `[1, N, 5+C]`: per box cx, cy, w, h, objectness, C class scores
    /// (YOLOv5/v7); score = objectness × class score.
    V5,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawDetect {
    /// "yolov8" (default) or "yolov5".
    pub layout: Option<String>,
    /// Minimum score kept (default 0.25).
    pub confidence: Option<f64>,
    /// NMS overlap threshold (default 0.45).
    pub iou: Option<f64>,
    /// Most detections per frame (default 100).
    pub max_detections: Option<usize>,
    /// Suppress overlapping boxes of different classes too (default false).
    pub class_agnostic: Option<bool>,
    /// Class names file, one per line (relative to the config file).
    pub labels: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DetectConfig {
    pub layout: YoloLayout,
    pub confidence: f32,
    pub iou: f32,
    pub max_detections: usize,
    pub class_agnostic: bool,
    pub labels: Option<Vec<String>>,
}

fn unit(key: &'static str, v: Option<f64>, default: f32) -> Result<f32, AnswerConfigError> {
    let v = v.unwrap_or(default as f64);
    if !(0.0..=1.0).contains(&v) {
        return Err(cfg_err(key, format!("{v} is not in [0, 1]")));
    }
    Ok(v as f32)
}

impl DetectConfig {
    /// Validates `raw`; a relative labels path is taken from `base` (the
    /// config file's directory).
    pub fn from_raw(raw: &RawDetect, base: &Path) -> Result<DetectConfig, AnswerConfigError> {
        let layout = match raw.layout.as_deref().unwrap_or("yolov8") {
            "yolov8" => YoloLayout::V8,
            "yolov5" => YoloLayout::V5,
            other => {
                return Err(cfg_err(
                    "layout",
                    format!("{other:?} is not one of yolov8, yolov5"),
                ));
            }
        };
        let max_detections = raw.max_detections.unwrap_or(100);
        if max_detections == 0 || max_detections > 10_000 {
            return Err(cfg_err(
                "max_detections",
                format!("{max_detections} is not in 1..=10000"),
            ));
        }
        let labels = match &raw.labels {
            None => None,
            Some(p) => {
                Some(load_labels(&base.join(p)).map_err(|e| cfg_err("labels", e.to_string()))?)
            }
        };
        Ok(DetectConfig {
            layout,
            confidence: unit("confidence", raw.confidence, 0.25)?,
            iou: unit("iou", raw.iou, 0.45)?,
            max_detections,
            class_agnostic: raw.class_agnostic.unwrap_or(false),
            labels,
        })
    }
}

/// Corners in pixels, `x1 <= x2`, `y1 <= y2`.

// ------------------------------------------------------------- classify

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawClassify {
    /// How many classes to report (default 5).
    pub top_k: Option<usize>,
    /// Apply softmax to the output first (for models that emit logits; default false).
    pub softmax: Option<bool>,
    /// Drop classes scoring below this (after softmax; default: keep all k).
    pub min_score: Option<f64>,
    /// Class names file, one per line (relative to the config file).
    pub labels: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClassConfig {
    pub top_k: usize,
    pub softmax: bool,
    pub min_score: Option<f32>,
    pub labels: Option<Vec<String>>,
}

impl ClassConfig {
    pub fn from_raw(raw: &RawClassify, base: &Path) -> Result<ClassConfig, AnswerConfigError> {
        let top_k = raw.top_k.unwrap_or(5);
        if top_k == 0 || top_k > 1000 {
            return Err(cfg_err("top_k", format!("{top_k} is not in 1..=1000")));
        }
        if let Some(m) = raw.min_score
            && !m.is_finite()
        {
            return Err(cfg_err("min_score", format!("{m} is not a finite number")));
        }
        let labels = match &raw.labels {
            None => None,
            Some(p) => {
                Some(load_labels(&base.join(p)).map_err(|e| cfg_err("labels", e.to_string()))?)
            }
        };
        Ok(ClassConfig {
            top_k,
            softmax: raw.softmax.unwrap_or(false),
            min_score: raw.min_score.map(|m| m as f32),
            labels,
        })
    }
}

// ------------------------------------------------------------- vad

fn frame_us(ms: Option<f64>) -> Result<u64, AnswerConfigError> {
    let ms = ms.unwrap_or(32.0);
    if !(ms.is_finite() && ms > 0.0 && ms <= 10_000.0) {
        return Err(cfg_err("frame_ms", format!("{ms} is not in (0, 10000]")));
    }
    Ok((ms * 1000.0).round() as u64)
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawVad {
    /// Speech starts at a probability ≥ this (default 0.5).
    pub threshold: Option<f64>,
    /// Silence is a probability < this (default max(threshold − 0.15, 0.01)).
    pub neg_threshold: Option<f64>,
    /// Shorter segments are dropped (default 250).
    pub min_speech_ms: Option<u64>,
    /// Silence needed to end a segment (default 100).
    pub min_silence_ms: Option<u64>,
    /// Widen each reported segment by this on both sides (default 30).
    pub speech_pad_ms: Option<u64>,
    /// Audio per frame, when a frame carries no `ts_us` (default 32: 512
    /// samples at 16 kHz, Silero VAD's chunk).
    pub frame_ms: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VadConfig {
    pub threshold: f32,
    pub neg_threshold: f32,
    pub min_speech_us: u64,
    pub min_silence_us: u64,
    pub speech_pad_us: u64,
    /// Audio per frame (µs).
    pub frame_us: u64,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig::from_raw(&RawVad::default()).expect("defaults are valid")
    }
}

impl VadConfig {
    pub fn from_raw(raw: &RawVad) -> Result<VadConfig, AnswerConfigError> {
        let threshold = raw.threshold.unwrap_or(0.5);
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(cfg_err(
                "threshold",
                format!("{threshold} is not in (0, 1]"),
            ));
        }
        let neg = raw.neg_threshold.unwrap_or((threshold - 0.15).max(0.01));
        if !(0.0..=threshold).contains(&neg) {
            return Err(cfg_err(
                "neg_threshold",
                format!("{neg} is not in [0, threshold = {threshold}]"),
            ));
        }
        let ms = |key: &'static str, v: Option<u64>, d: u64| -> Result<u64, AnswerConfigError> {
            let v = v.unwrap_or(d);
            if v > 60_000 {
                return Err(cfg_err(key, format!("{v} ms is over a minute")));
            }
            Ok(v * 1000)
        };
        Ok(VadConfig {
            threshold: threshold as f32,
            neg_threshold: neg as f32,
            min_speech_us: ms("min_speech_ms", raw.min_speech_ms, 250)?,
            min_silence_us: ms("min_silence_ms", raw.min_silence_ms, 100)?,
            speech_pad_us: ms("speech_pad_ms", raw.speech_pad_ms, 30)?,
            frame_us: frame_us(raw.frame_ms)?,
        })
    }
}
