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
pub use det::{DetParams, LimitType};
pub use frame::{Frame, PixelFormat};

/// Chain settings; every default is rapidocr 1.4.4's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OcrParams {
    /// Frames whose longer side exceeds this are shrunk first.
    pub max_side_len: u32,
    /// Frames whose shorter side is under this are enlarged first.
    pub min_side_len: u32,
    /// Frames this short or less get letterboxed above and below.
    pub min_height: u32,
    /// Frames wider than this many heights get letterboxed (≤ 0: never).
    pub width_height_ratio: f64,
    pub det: DetParams,
    /// Run the angle classifier (needs its model).
    pub use_cls: bool,
    /// Probability above which a patch classified "180" is turned.
    pub cls_thresh: f32,
    pub cls_batch: usize,
    pub rec_batch: usize,
    /// Lines whose recognition confidence is below this are dropped.
    pub text_score: f32,
    /// Larger frames are refused with [`OcrError::BadImage`].
    pub max_pixels: u64,
}

impl Default for OcrParams {
    fn default() -> Self {
        OcrParams {
            max_side_len: 2000,
            min_side_len: 30,
            min_height: 30,
            width_height_ratio: 8.0,
            det: DetParams::default(),
            use_cls: true,
            cls_thresh: 0.9,
            cls_batch: 6,
            rec_batch: 6,
            text_score: 0.5,
            max_pixels: 8192 * 8192,
        }
    }
}

impl OcrParams {
    /// Rejects settings that cannot work (zero batch sizes, ...).
    pub fn validate(&self) -> Result<(), OcrError> {
        let bad = |m: &str| Err(OcrError::Config(m.to_string()));
        if self.cls_batch == 0 || self.rec_batch == 0 {
            return bad("cls_batch and rec_batch must be at least 1");
        }
        if self.max_side_len < 32 || self.min_side_len == 0 || self.det.limit_side_len < 32 {
            return bad(
                "max_side_len and det.limit_side_len must be at least 32, min_side_len at least 1",
            );
        }
        if self.det.unclip_ratio <= 0.0 || !self.det.unclip_ratio.is_finite() {
            return bad("det.unclip_ratio must be a positive number");
        }
        Ok(())
    }
}

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
