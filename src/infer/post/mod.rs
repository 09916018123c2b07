//! Answers: pure functions from a model's output tensors to what a robot
//! wants (detections in source pixels, top-k classes, speech start/end
//! events), with serde result structs whose JSON is documented in
//! docs/answers.md. The worker calls them after `session.run` with the
//! output values as `&[f32]` plus the shape, and, for images, the
//! pre-processing [`crate::infer::pre::Transform`]. Only the VAD tracker
//! keeps state (one per stream).

mod answer;
mod bind;
mod classify;
mod detect;
#[cfg(test)]
mod tests;
mod vad;

pub use crate::config::answer::AnswerConfigError;
pub use crate::config::labels::{LabelError, load_labels, parse_labels};
pub use answer::{Answer, AnswerInput, StreamAnswer, answer, float_view, request_values};
pub use bind::{AnswerBinding, bind};
pub use classify::{ClassConfig, ClassScore, RawClassify, top_k};
pub use detect::{
    BBox, DetectConfig, Detection, Detections, RawDetect, YoloLayout, decode_yolo, iou, nms,
};
pub use vad::{RawVad, VadAnswer, VadConfig, VadEvent, VadTracker};

/// A model output that does not fit the configured answer stage.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PostError {
    /// Rank, layout or class count does not match the config (error code
    /// `bad_output`: a model/config mismatch, not a client error).
    #[error("{0}")]
    BadOutput(String),
}

impl PostError {
    pub fn code(&self) -> &'static str {
        self.error_code().code()
    }

    pub fn error_code(&self) -> crate::error::ErrorCode {
        crate::error::ErrorCode::BadOutput
    }
}
