//! Answers: pure functions from a model's output tensors to what a robot
//! wants (detections in source pixels, top-k classes, speech start/end
//! events), with serde result structs whose JSON is documented in
//! docs/answers.md. The worker calls them after `session.run` with the
//! output values as `&[f32]` plus the shape, and, for images, the
//! pre-processing [`crate::infer::pre::Transform`]. Only the VAD tracker
//! keeps state (one per stream).

mod classify;
mod detect;
mod labels;
#[cfg(test)]
mod tests;
mod vad;

pub use classify::{ClassConfig, ClassScore, RawClassify, top_k};
pub use detect::{
    BBox, DetectConfig, Detection, Detections, RawDetect, YoloLayout, decode_yolo, iou, nms,
};
pub use labels::{LabelError, load_labels, parse_labels};
pub use vad::{RawVad, VadAnswer, VadConfig, VadEvent, VadTracker};

/// A model output that does not fit the configured answer stage.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PostError {
    /// Rank, layout or class count does not match the config
    /// (proposed code `bad_output`: a model/config mismatch, not a client error).
    #[error("{0}")]
    BadOutput(String),
}

impl PostError {
    pub fn code(&self) -> &'static str {
        "bad_output"
    }
}

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
