//! The PP-OCR chain, pixels in, text lines out, in one worker call: a camera
//! frame ([`Frame`]) goes through the text detector (DB post-processing in
//! [`det`]), every box is cut out upright ([`crop`]), optionally turned by
//! the angle classifier, and read by the recogniser in aspect-sorted batches
//! with greedy CTC decoding ([`rec`]); each model runs on its own ONNX
//! Runtime session owned by [`OcrChain`]. The result ([`OcrOutput`]) is
//! text, confidence and a four-point box in the caller's pixels per line,
//! plus per-stage timing. Every step reproduces rapidocr-onnxruntime 1.4.4's
//! Python pipeline (the reference the integration test checks against);
//! defaults are its `config.yaml`. JSON schema: docs/ocr.md.

mod chain;
pub mod crop;
pub mod det;
pub mod frame;
pub mod geometry;
pub mod rec;

use serde::{Deserialize, Serialize};

pub use chain::{OcrChain, OcrModels, SessionOptions};
// The settings live in the config layer (validated with the rest of the
// config); the chain reads them from there.
pub use crate::config::ocr::{DetParams, LimitType, OcrParams};
pub use frame::{Frame, PixelFormat};

/// One recognised line of text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextLine {
    pub text: String,
    /// Mean per-character probability (rapidocr's score), 0..1.
    pub confidence: f32,
    /// Corners `[top-left, top-right, bottom-right, bottom-left]` as `[x, y]`
    /// in the caller's frame pixels.
    #[serde(rename = "box")]
    pub quad: [[f32; 2]; 4],
}

/// Wall time of one stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    /// Whole stage: pre-processing, model runs, post-processing.
    pub us: u64,
    /// Inside `Session::run` only.
    pub infer_us: u64,
    /// Number of model runs (batches).
    pub runs: u32,
}

/// Where the time of one [`OcrChain::run`] went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OcrTiming {
    /// Frame conversion, size limits and letterbox.
    pub prepare_us: u64,
    pub det: StageTiming,
    /// Perspective crops of every box.
    pub crop_us: u64,
    pub cls: StageTiming,
    pub rec: StageTiming,
    pub total_us: u64,
}

/// What [`OcrChain::run`] returns (serialised as documented in docs/ocr.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OcrOutput {
    /// Lines in reading order (top to bottom, left to right).
    pub lines: Vec<TextLine>,
    /// Boxes the detector found (lines below `text_score` are not in `lines`).
    pub boxes: usize,
    pub timing: OcrTiming,
}

#[derive(thiserror::Error, Debug)]
pub enum OcrError {
    #[error("bad image: {0}")]
    BadImage(String),
    #[error("OCR settings: {0}")]
    Config(String),
    #[error("OCR {stage} model: {reason}")]
    Model { stage: &'static str, reason: String },
    #[error("OCR {stage} inference failed: {reason}")]
    Inference { stage: &'static str, reason: String },
    #[error("deadline passed before the OCR {stage} stage")]
    Deadline { stage: &'static str },
}
