//! `[pipeline.ocr]`: a pipeline that reads text (docs/ocr.md). Its `model`
//! is the PP-OCR text detector; this table names the recogniser (`rec`),
//! the optional angle classifier (`cls`) and the chain's settings
//! ([`OcrParams`], every default rapidocr-onnxruntime 1.4.4's). The settings
//! live here, in the config layer, so a bad value fails at start-up with
//! the key named; `infer::ocr` runs the chain with them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::image::DEFAULT_MAX_PIXELS;

/// Which side `limit_side_len` constrains (rapidocr `limit_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitType {
    /// Scale up so the shorter side is at least `limit_side_len` (rapidocr's default).
    Min,
    /// Scale down so the longer side is at most `limit_side_len`.
    Max,
}

/// Detector settings; defaults are rapidocr 1.4.4's `config.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetParams {
    pub limit_side_len: u32,
    pub limit_type: LimitType,
    /// Probability above which a map pixel is text.
    pub thresh: f32,
    /// Minimum mean probability inside a box.
    pub box_thresh: f32,
    pub max_candidates: usize,
    pub unclip_ratio: f64,
    pub use_dilation: bool,
}

impl Default for DetParams {
    fn default() -> Self {
        DetParams {
            limit_side_len: 736,
            limit_type: LimitType::Min,
            thresh: 0.3,
            box_thresh: 0.5,
            max_candidates: 1000,
            unclip_ratio: 1.6,
            use_dilation: true,
        }
    }
}

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
    /// Larger frames are refused as bad images.
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
    pub fn validate(&self) -> Result<(), String> {
        if self.cls_batch == 0 || self.rec_batch == 0 {
            return Err("cls_batch and rec_batch must be at least 1".into());
        }
        if self.max_side_len < 32 || self.min_side_len == 0 || self.det.limit_side_len < 32 {
            return Err(
                "max_side_len and det.limit_side_len must be at least 32, min_side_len at least 1"
                    .into(),
            );
        }
        if self.det.unclip_ratio <= 0.0 || !self.det.unclip_ratio.is_finite() {
            return Err("det.unclip_ratio must be a positive number".into());
        }
        if self.max_pixels == 0 {
            return Err("max_pixels must be at least 1".into());
        }
        Ok(())
    }
}

/// The validated `[pipeline.ocr]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct OcrConfig {
    /// The text recogniser (CTC; its charset is the model's `character`
    /// metadata).
    pub rec: PathBuf,
    /// The angle classifier; without it the chain skips that step.
    pub cls: Option<PathBuf>,
    pub params: OcrParams,
}

impl OcrConfig {
    /// `rec` and `cls` are model paths (relative to the config file); every
    /// other key is an [`OcrParams`] field. `use_cls` defaults to whether
    /// `cls` is given; `max_pixels` to the image default (8 Mpx).
    pub fn from_raw(raw: &toml::Table, base: &Path) -> Result<OcrConfig, String> {
        let mut t = raw.clone();
        let mut path = |k: &str| -> Result<Option<PathBuf>, String> {
            match t.remove(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(super::resolve(base, Path::new(&s)))),
                Some(other) => Err(format!("ocr.{k} = {other}: expected a model path")),
            }
        };
        let rec = path("rec")?.ok_or(
            "ocr.rec: missing: the text recogniser model (e.g. ch_PP-OCRv4_rec_infer.onnx)",
        )?;
        let cls = path("cls")?;
        let use_cls_given = t.contains_key("use_cls");
        let max_pixels_given = t.contains_key("max_pixels");
        let mut params: OcrParams = t.try_into().map_err(|e: toml::de::Error| {
            format!("ocr: {}", e.to_string().trim().replace('\n', " "))
        })?;
        if !use_cls_given {
            params.use_cls = cls.is_some();
        } else if params.use_cls && cls.is_none() {
            return Err("ocr.use_cls = true needs ocr.cls (the angle classifier model)".into());
        }
        if !max_pixels_given {
            params.max_pixels = DEFAULT_MAX_PIXELS;
        }
        params.validate().map_err(|e| format!("ocr: {e}"))?;
        Ok(OcrConfig { rec, cls, params })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OcrConfig, String> {
        OcrConfig::from_raw(&text.parse::<toml::Table>().unwrap(), Path::new("/cfg"))
    }

    #[test]
    fn keys_map_onto_the_chain_settings() {
        let c =
            parse("rec = \"r.onnx\"\ncls = \"c.onnx\"\ntext_score = 0.7\n[det]\nthresh = 0.2\n")
                .unwrap();
        assert_eq!(c.rec, Path::new("/cfg/r.onnx"));
        assert_eq!(c.cls.as_deref(), Some(Path::new("/cfg/c.onnx")));
        assert!(c.params.use_cls);
        assert_eq!(c.params.text_score, 0.7);
        assert_eq!(c.params.det.thresh, 0.2);
        assert_eq!(c.params.max_pixels, DEFAULT_MAX_PIXELS);
        let no_cls = parse("rec = \"r.onnx\"").unwrap();
        assert!(!no_cls.params.use_cls);
    }

    #[test]
    fn bad_tables_name_the_key() {
        let e = parse("cls = \"c.onnx\"").unwrap_err();
        assert!(e.contains("ocr.rec"), "{e}");
        let e = parse("rec = \"r.onnx\"\nuse_cls = true").unwrap_err();
        assert!(e.contains("ocr.cls"), "{e}");
        let e = parse("rec = \"r.onnx\"\ntext_scroe = 0.5").unwrap_err();
        assert!(e.contains("text_scroe"), "{e}");
        let e = parse("rec = \"r.onnx\"\nrec_batch = 0").unwrap_err();
        assert!(e.contains("rec_batch"), "{e}");
    }
}
