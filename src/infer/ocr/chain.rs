//! [`OcrChain`]: the three ONNX Runtime sessions (detector, optional angle
//! classifier, recogniser) and the run that threads one frame through them,
//! with a deadline checked before each stage and wall time per stage. The
//! sessions are the caller's to build (the daemon's engine applies its
//! provider chain) or [`OcrChain::load`] builds plain CPU ones.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fast_image_resize as fir;
use image::RgbImage;
use image::imageops;
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::det::{self, DetBox, ProbMap};
use super::frame::{self, Frame, norm_lut};
use super::rec::{self, CLS_W};
use super::{OcrError, OcrOutput, OcrParams, OcrTiming, StageTiming, TextLine};

/// Model files of the chain.
#[derive(Clone, Debug)]
pub struct OcrModels {
    pub det: PathBuf,
    pub cls: Option<PathBuf>,
    pub rec: PathBuf,
}

const DET: &str = "ch_PP-OCRv4_det_infer";
const CLS: &str = "ch_ppocr_mobile_v2.0_cls_infer";
const REC: &str = "ch_PP-OCRv4_rec_infer";

impl OcrModels {
    /// rapidocr-onnxruntime 1.4.4's models as shipped, in `dir`
    /// (scripts/provision.sh unpacks them into the cache's `models/`).
    pub fn rapidocr_in(dir: &Path) -> Self {
        Self::named(dir, ".onnx")
    }

    /// The same models after `models/ocr/fold_ppocr.py` (affine blocks and
    /// hard-swish folded; same outputs up to float rounding, ~25–30 % less
    /// time in ONNX Runtime). scripts/provision.sh writes them next to the
    /// originals.
    pub fn folded_in(dir: &Path) -> Self {
        Self::named(dir, ".folded.onnx")
    }

    fn named(dir: &Path, suffix: &str) -> Self {
        OcrModels {
            det: dir.join(format!("{DET}{suffix}")),
            cls: Some(dir.join(format!("{CLS}{suffix}"))),
            rec: dir.join(format!("{REC}{suffix}")),
        }
    }
}

/// Threading of the sessions [`OcrChain::load`] builds (each of the three
/// gets its own intra-op pool of this size).
#[derive(Clone, Copy, Debug)]
pub struct SessionOptions {
    pub intra_op_threads: usize,
    pub intra_op_spinning: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            intra_op_threads: 1,
            intra_op_spinning: false,
        }
    }
}

/// One model of the chain: a session taking one f32 NCHW input.
struct Stage {
    name: &'static str,
    session: Session,
    input: String,
}

impl Stage {
    fn new(name: &'static str, session: Session) -> Result<Self, OcrError> {
        let model_err = |reason: String| OcrError::Model {
            stage: name,
            reason,
        };
        let [input] = session.inputs() else {
            return Err(model_err(format!(
                "expected one input, the model has {}",
                session.inputs().len()
            )));
        };
        if session.outputs().is_empty() {
            return Err(model_err("the model has no outputs".into()));
        }
        Ok(Stage {
            name,
            input: input.name().to_string(),
            session,
        })
    }

    /// Runs the model on `[n, 3, h, w]` data and hands the first output
    /// (shape, values) to `f` while ORT still owns it.
    fn run<R>(
        &mut self,
        shape: [usize; 4],
        data: &[f32],
        timing: &mut StageTiming,
        f: impl FnOnce(&[i64], &[f32]) -> Result<R, OcrError>,
    ) -> Result<R, OcrError> {
        let stage = self.name;
        let fail = |e: String| OcrError::Inference { stage, reason: e };
        let tensor = TensorRef::from_array_view((shape, data)).map_err(|e| fail(e.to_string()))?;
        let t = Instant::now();
        let out = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| fail(e.to_string()))?;
        timing.infer_us += t.elapsed().as_micros() as u64;
        timing.runs += 1;
        let first = out
            .values()
            .next()
            .ok_or_else(|| fail("no output".into()))?;
        let (shape, values) = first
            .try_extract_tensor::<f32>()
            .map_err(|e| fail(format!("first output is not f32: {e}")))?;
        f(shape, values)
    }
}

/// The PP-OCR chain with its sessions; one per worker (`run` takes `&mut`).
pub struct OcrChain {
    det: Stage,
    cls: Option<Stage>,
    rec: Stage,
    charset: Vec<String>,
    params: OcrParams,
    resizer: fir::Resizer,
    lut: [f32; 256],
}

fn build_session(env: &Environment, path: &Path, o: &SessionOptions) -> Result<Session, String> {
    if !path.is_file() {
        return Err(format!("model file {} not found", path.display()));
    }
    let b = Session::builder(env).map_err(|e| e.to_string())?;
    // ORT_ENABLE_ALL, as rapidocr sets it (ort's `Level3` is ORT_ENABLE_LAYOUT).
    let b = b
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| e.to_string())?;
    let b = b
        .with_intra_threads(o.intra_op_threads)
        .map_err(|e| e.to_string())?;
    let b = b.with_inter_threads(1).map_err(|e| e.to_string())?;
    let mut b = b
        .with_intra_op_spinning(o.intra_op_spinning)
        .map_err(|e| e.to_string())?;
    b.commit_from_file(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

impl OcrChain {
    /// Wraps sessions built elsewhere. Reads the recogniser's charset from
    /// its `character` metadata and checks it matches the output width.
    pub fn new(
        det: Session,
        cls: Option<Session>,
        rec: Session,
        params: OcrParams,
    ) -> Result<Self, OcrError> {
        params.validate().map_err(OcrError::Config)?;
        if params.use_cls && cls.is_none() {
            return Err(OcrError::Config(
                "use_cls = true needs the angle classifier model".into(),
            ));
        }
        let rec_err = |reason: String| OcrError::Model {
            stage: "rec",
            reason,
        };
        let meta = rec.metadata().map_err(|e| rec_err(e.to_string()))?;
        let text = meta.custom("character").ok_or_else(|| {
            rec_err("no `character` metadata (the charset) in the recognition model".into())
        })?;
        let charset = rec::charset_from_metadata(&text);
        drop(meta);
        let classes = rec.outputs().first().and_then(|o| match o.dtype() {
            ort::value::ValueType::Tensor { shape, .. } => shape.last().copied(),
            _ => None,
        });
        if let Some(c) = classes.filter(|&c| c > 0)
            && c as usize != charset.len()
        {
            return Err(rec_err(format!(
                "output has {c} classes but the charset gives {} (blank + {} characters + space)",
                charset.len(),
                charset.len() - 2
            )));
        }
        Ok(OcrChain {
            det: Stage::new("det", det)?,
            cls: cls.map(|s| Stage::new("cls", s)).transpose()?,
            rec: Stage::new("rec", rec)?,
            charset,
            params,
            resizer: fir::Resizer::new(),
            lut: norm_lut(),
        })
    }

    /// Builds CPU sessions for `models` and wraps them.
    pub fn load(
        env: &Environment,
        models: &OcrModels,
        opts: &SessionOptions,
        params: OcrParams,
    ) -> Result<Self, OcrError> {
        let load = |stage: &'static str, p: &Path| {
            build_session(env, p, opts).map_err(|reason| OcrError::Model { stage, reason })
        };
        let det = load("det", &models.det)?;
        let cls = match (&models.cls, params.use_cls) {
            (Some(p), true) => Some(load("cls", p)?),
            _ => None,
        };
        let rec = load("rec", &models.rec)?;
        Self::new(det, cls, rec, params)
    }

    pub fn params(&self) -> &OcrParams {
        &self.params
    }

    /// Number of recogniser classes (blank + characters + space).
    pub fn charset_len(&self) -> usize {
        self.charset.len()
    }

    /// One run of every model on a blank input, so the first real frame does
    /// not pay for ORT's lazy allocations.
    pub fn warm_up(&mut self) -> Result<(), OcrError> {
        let mut t = StageTiming::default();
        let zeros = vec![0.0f32; 3 * 64 * 64];
        self.det
            .run([1, 3, 64, 64], &zeros, &mut t, |_, _| Ok(()))?;
        let zeros = vec![0.0f32; 3 * 48 * rec::REC_MIN_W as usize];
        if let Some(cls) = &mut self.cls {
            cls.run(
                [1, 3, 48, CLS_W as usize],
                &zeros[..3 * 48 * CLS_W as usize],
                &mut t,
                |_, _| Ok(()),
            )?;
        }
        self.rec.run(
            [1, 3, 48, rec::REC_MIN_W as usize],
            &zeros,
            &mut t,
            |_, _| Ok(()),
        )
    }

    /// Text lines in `frame`.
    pub fn run(&mut self, frame: &Frame) -> Result<OcrOutput, OcrError> {
        self.run_until(frame, None)
    }

    /// Like [`OcrChain::run`], but gives up with [`OcrError::Deadline`] when
    /// `deadline` has passed before a stage starts.
    pub fn run_until(
        &mut self,
        frame: &Frame,
        deadline: Option<Instant>,
    ) -> Result<OcrOutput, OcrError> {
        let start = Instant::now();
        let check = |stage| match deadline {
            Some(d) if Instant::now() > d => Err(OcrError::Deadline { stage }),
            _ => Ok(()),
        };
        let mut timing = OcrTiming::default();
        frame.validate(self.params.max_pixels)?;
        let prep = frame::prepare(&mut self.resizer, frame.to_bgr(), &self.params)?;
        timing.prepare_us = start.elapsed().as_micros() as u64;
        check("det")?;
        let boxes = self.detect(&prep.img, &mut timing.det)?;
        let t = Instant::now();
        let mut patches: Vec<RgbImage> = boxes
            .iter()
            .map(|b| super::crop::crop_quad(&prep.img, &b.quad))
            .collect();
        timing.crop_us = t.elapsed().as_micros() as u64;
        if self.params.use_cls && !patches.is_empty() {
            check("cls")?;
            self.classify(&mut patches, &mut timing.cls)?;
        }
        let texts = if patches.is_empty() {
            Vec::new()
        } else {
            check("rec")?;
            self.recognize(&patches, &mut timing.rec)?
        };
        let lines = boxes
            .iter()
            .zip(texts)
            .filter(|(_, (_, conf))| *conf >= self.params.text_score)
            .map(|(b, (text, confidence))| TextLine {
                text,
                confidence,
                quad: to_source(&b.quad, &prep, frame),
            })
            .collect();
        timing.total_us = start.elapsed().as_micros() as u64;
        Ok(OcrOutput {
            lines,
            boxes: boxes.len(),
            timing,
        })
    }

    fn detect(&mut self, img: &RgbImage, t: &mut StageTiming) -> Result<Vec<DetBox>, OcrError> {
        let start = Instant::now();
        let p = &self.params.det;
        let Some((w, h)) = det::input_size(img.width(), img.height(), p) else {
            return Ok(Vec::new());
        };
        let input = det::input_tensor(&mut self.resizer, img, (w, h))?;
        let (dw, dh) = img.dimensions();
        let boxes = self
            .det
            .run([1, 3, h as usize, w as usize], &input, t, |shape, v| {
                let (mh, mw) = match shape {
                    [_, _, mh, mw] | [_, mh, mw] if v.len() >= (*mh * *mw) as usize => {
                        (*mh as usize, *mw as usize)
                    }
                    _ => {
                        return Err(OcrError::Inference {
                            stage: "det",
                            reason: format!("unexpected probability map shape {shape:?}"),
                        });
                    }
                };
                let map = ProbMap {
                    data: &v[..mh * mw],
                    width: mw,
                    height: mh,
                };
                Ok(det::boxes_from_map(&map, p, dw, dh))
            })?;
        t.us = start.elapsed().as_micros() as u64;
        Ok(boxes)
    }

    /// Turns patches the classifier finds upside down (in place).
    fn classify(&mut self, patches: &mut [RgbImage], t: &mut StageTiming) -> Result<(), OcrError> {
        let start = Instant::now();
        let Some(cls) = &mut self.cls else {
            return Ok(());
        };
        let order = rec::by_aspect(patches);
        for chunk in order.chunks(self.params.cls_batch) {
            let batch: Vec<&RgbImage> = chunk.iter().map(|&i| &patches[i]).collect();
            let b = rec::make_batch(&mut self.resizer, &batch, CLS_W, &self.lut)?;
            let thresh = self.params.cls_thresh;
            let flips = cls.run(b.shape(), &b.data, t, |_, v| {
                rec::upside_down(v, b.n, thresh)
            })?;
            for (&i, flip) in chunk.iter().zip(flips) {
                if flip {
                    imageops::rotate180_in_place(&mut patches[i]);
                }
            }
        }
        t.us = start.elapsed().as_micros() as u64;
        Ok(())
    }

    /// Text and confidence per patch, in patch order.
    fn recognize(
        &mut self,
        patches: &[RgbImage],
        t: &mut StageTiming,
    ) -> Result<Vec<(String, f32)>, OcrError> {
        let start = Instant::now();
        let mut out = vec![(String::new(), 0.0f32); patches.len()];
        let order = rec::by_aspect(patches);
        for chunk in order.chunks(self.params.rec_batch) {
            let batch: Vec<&RgbImage> = chunk.iter().map(|&i| &patches[i]).collect();
            let width = rec::rec_width(&batch);
            let b = rec::make_batch(&mut self.resizer, &batch, width, &self.lut)?;
            let charset = &self.charset;
            let decoded = self.rec.run(b.shape(), &b.data, t, |shape, v| {
                let classes = shape.last().copied().unwrap_or(0) as usize;
                if classes != charset.len() || v.len() % (b.n * classes) != 0 {
                    return Err(OcrError::Inference {
                        stage: "rec",
                        reason: format!(
                            "output shape {shape:?} does not fit {} patches × {} classes",
                            b.n,
                            charset.len()
                        ),
                    });
                }
                let per = v.len() / b.n;
                Ok(v.chunks_exact(per)
                    .map(|row| rec::ctc_greedy(row, classes, charset))
                    .collect::<Vec<_>>())
            })?;
            for (&i, r) in chunk.iter().zip(decoded) {
                out[i] = r;
            }
        }
        t.us = start.elapsed().as_micros() as u64;
        Ok(out)
    }
}

/// Prepared-image corners back to the caller's pixels: remove the letterbox,
/// undo the size limits, clamp into the frame (rapidocr's `_get_origin_points`).
fn to_source(quad: &[[f64; 2]; 4], prep: &frame::Prepared, f: &Frame) -> [[f32; 2]; 4] {
    quad.map(|[x, y]| {
        let x = (x * prep.ratio[0]).clamp(0.0, f64::from(f.width));
        let y = ((y - prep.pad_top) * prep.ratio[1]).clamp(0.0, f64::from(f.height));
        [x as f32, y as f32]
    })
}
