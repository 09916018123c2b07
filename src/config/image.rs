//! `[pipeline.pre]`: how a frame becomes the model input. Two stages like the
//! daemon's config: [`RawPre`] mirrors the TOML (unknown keys are errors),
//! [`PreSpec::from_raw`] validates it alone, and [`PreSpec::resolve`] fixes
//! what comes from the model (input size, element type) once the model is
//! loaded, giving a [`PreConfig`] that cannot hold an invalid value. The
//! frame bounds ([`ImageLimits`], [`MAX_SIDE`]) live here too: the image
//! message check (`wire::image`) and the pre-processor (`infer::pre`) both
//! read them.

use serde::Deserialize;

/// Longest side accepted whatever the pixel limit: JPEG's own maximum is
/// 65 535, and a 40 000-pixel-wide camera frame is a bug, not a frame.
pub const MAX_SIDE: u32 = 32_768;
/// Default `max_pixels`: 8 Mpx covers 4K UHD (3840×2160).
pub const DEFAULT_MAX_PIXELS: u64 = 8 * 1024 * 1024;

/// Per-pipeline bounds on a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawPre {
    /// The model input the frame is written into; default: the model's only
    /// input that is not a constant or carried state.
    pub input: Option<String>,
    /// Channel order the model wants: "rgb" (default), "bgr", "gray".
    pub color: Option<String>,
    /// "stretch" (default), "letterbox", "crop" (centre crop).
    pub resize: Option<String>,
    /// "bilinear" (default, OpenCV INTER_LINEAR-like), "nearest",
    /// "antialias" (bilinear with a support widened when shrinking, like PIL).
    pub interpolation: Option<String>,
    /// Letterbox fill, a pixel value before normalisation (default 114).
    pub pad: Option<i64>,
    /// Centre crop: share of the shorter scaled side kept (default 1.0;
    /// 0.875 is the ImageNet "resize 256, crop 224").
    pub crop_fraction: Option<f64>,
    /// Model input size; default: from the model's input shape.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// `out = (pixel * scale - mean) / std`; default scale 1/255, mean 0, std 1.
    pub scale: Option<f64>,
    pub mean: Option<Vec<f64>>,
    pub std: Option<Vec<f64>>,
    /// "nchw" (default) or "nhwc".
    pub layout: Option<String>,
    /// "f32", "f16" or "u8"; default: the model input's element type.
    pub dtype: Option<String>,
    /// Largest frame accepted, in pixels (default 8 Mi).
    pub max_pixels: Option<u64>,
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("pre.{key}: {message}")]
pub struct PreConfigError {
    pub key: &'static str,
    pub message: String,
}

fn err(key: &'static str, message: impl Into<String>) -> PreConfigError {
    PreConfigError {
        key,
        message: message.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorOrder {
    Rgb,
    Bgr,
    Gray,
}

impl ColorOrder {
    pub fn channels(self) -> usize {
        if self == ColorOrder::Gray { 1 } else { 3 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ResizeMode {
    Stretch,
    Letterbox { pad: u8 },
    CenterCrop { fraction: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    Nearest,
    Bilinear,
    Antialias,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutDtype {
    F32,
    F16,
    U8,
}

impl OutDtype {
    /// Same names as `crate::tensor::Dtype::name`.
    pub fn name(self) -> &'static str {
        match self {
            OutDtype::F32 => "f32",
            OutDtype::F16 => "f16",
            OutDtype::U8 => "u8",
        }
    }

    pub fn parse(s: &str) -> Option<OutDtype> {
        [OutDtype::F32, OutDtype::F16, OutDtype::U8]
            .into_iter()
            .find(|d| d.name() == s)
    }

    pub fn size(self) -> usize {
        match self {
            OutDtype::F32 => 4,
            OutDtype::F16 => 2,
            OutDtype::U8 => 1,
        }
    }
}

/// `out[c] = (pixel[c] * scale - mean[c]) / std[c]`, per output channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    pub const IDENTITY: Normalize = Normalize {
        scale: 1.0,
        mean: [0.0; 3],
        std: [1.0; 3],
    };
}

/// Validated `[pipeline.pre]`, before the model is known.
#[derive(Clone, Debug, PartialEq)]
pub struct PreSpec {
    /// `pre.input`: the model input fed with the frame (`None`: the only one).
    pub input: Option<String>,
    pub color: ColorOrder,
    pub resize: ResizeMode,
    pub interpolation: Interpolation,
    pub size: Option<(u32, u32)>,
    pub norm: Normalize,
    pub layout: Layout,
    pub dtype: Option<OutDtype>,
    /// Whether scale/mean/std were given (they must not be for u8 output).
    norm_given: bool,
    pub limits: ImageLimits,
}

/// Everything the pre-processor needs, fixed for the pipeline's life.
#[derive(Clone, Debug, PartialEq)]
pub struct PreConfig {
    pub color: ColorOrder,
    pub resize: ResizeMode,
    pub interpolation: Interpolation,
    pub width: u32,
    pub height: u32,
    pub norm: Normalize,
    pub layout: Layout,
    pub dtype: OutDtype,
    pub limits: ImageLimits,
}

impl PreConfig {
    /// The model input shape this produces (batch 1).
    pub fn shape(&self) -> [usize; 4] {
        let (c, h, w) = (
            self.color.channels(),
            self.height as usize,
            self.width as usize,
        );
        match self.layout {
            Layout::Nchw => [1, c, h, w],
            Layout::Nhwc => [1, h, w, c],
        }
    }

    pub fn output_bytes(&self) -> usize {
        self.shape().iter().product::<usize>() * self.dtype.size()
    }
}

fn choice<T: Copy>(
    key: &'static str,
    value: Option<&str>,
    default: T,
    table: &[(&str, T)],
) -> Result<T, PreConfigError> {
    let Some(v) = value else { return Ok(default) };
    table
        .iter()
        .find(|(n, _)| *n == v)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            err(key, format!("{v:?} is not one of {}", names.join(", ")))
        })
}

fn per_channel(
    key: &'static str,
    values: Option<&[f64]>,
    channels: usize,
    default: f32,
    positive: bool,
) -> Result<[f32; 3], PreConfigError> {
    let Some(v) = values else {
        return Ok([default; 3]);
    };
    if v.len() != 1 && v.len() != channels {
        return Err(err(
            key,
            format!(
                "has {} values; give 1 or {channels} (one per channel)",
                v.len()
            ),
        ));
    }
    if let Some(bad) = v
        .iter()
        .find(|x| !x.is_finite() || (positive && **x <= 0.0))
    {
        let want = if positive { "finite and > 0" } else { "finite" };
        return Err(err(key, format!("value {bad} must be {want}")));
    }
    Ok(std::array::from_fn(|i| v[i.min(v.len() - 1)] as f32))
}

fn resize_mode(raw: &RawPre) -> Result<ResizeMode, PreConfigError> {
    let mode = choice(
        "resize",
        raw.resize.as_deref(),
        0,
        &[("stretch", 0), ("letterbox", 1), ("crop", 2)],
    )?;
    if raw.pad.is_some() && mode != 1 {
        return Err(err("pad", "only applies to resize = \"letterbox\""));
    }
    if raw.crop_fraction.is_some() && mode != 2 {
        return Err(err("crop_fraction", "only applies to resize = \"crop\""));
    }
    Ok(match mode {
        1 => ResizeMode::Letterbox {
            pad: match raw.pad {
                None => 114,
                Some(p) => u8::try_from(p)
                    .map_err(|_| err("pad", format!("{p} is not a pixel value 0..=255")))?,
            },
        },
        2 => {
            let fraction = raw.crop_fraction.unwrap_or(1.0);
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(err("crop_fraction", format!("{fraction} is not in (0, 1]")));
            }
            ResizeMode::CenterCrop { fraction }
        }
        _ => ResizeMode::Stretch,
    })
}

fn fixed_size(raw: &RawPre) -> Result<Option<(u32, u32)>, PreConfigError> {
    match (raw.width, raw.height) {
        (None, None) => Ok(None),
        (Some(w), Some(h)) => {
            for (key, v) in [("width", w), ("height", h)] {
                if v == 0 || v > MAX_SIDE {
                    return Err(err(key, format!("{v} is not in 1..={MAX_SIDE}")));
                }
            }
            Ok(Some((w, h)))
        }
        (Some(_), None) => Err(err("height", "missing: give width and height together")),
        (None, Some(_)) => Err(err("width", "missing: give width and height together")),
    }
}

fn normalize(raw: &RawPre, channels: usize) -> Result<Normalize, PreConfigError> {
    let scale = raw.scale.unwrap_or(1.0 / 255.0);
    if !(scale.is_finite() && scale > 0.0) {
        return Err(err("scale", format!("{scale} must be finite and > 0")));
    }
    Ok(Normalize {
        scale: scale as f32,
        mean: per_channel("mean", raw.mean.as_deref(), channels, 0.0, false)?,
        std: per_channel("std", raw.std.as_deref(), channels, 1.0, true)?,
    })
}

impl PreSpec {
    pub fn from_raw(raw: &RawPre) -> Result<PreSpec, PreConfigError> {
        use ColorOrder as C;
        let color = choice(
            "color",
            raw.color.as_deref(),
            C::Rgb,
            &[("rgb", C::Rgb), ("bgr", C::Bgr), ("gray", C::Gray)],
        )?;
        let interpolation = choice(
            "interpolation",
            raw.interpolation.as_deref(),
            Interpolation::Bilinear,
            &[
                ("bilinear", Interpolation::Bilinear),
                ("nearest", Interpolation::Nearest),
                ("antialias", Interpolation::Antialias),
            ],
        )?;
        let layout = choice(
            "layout",
            raw.layout.as_deref(),
            Layout::Nchw,
            &[("nchw", Layout::Nchw), ("nhwc", Layout::Nhwc)],
        )?;
        let dtype = match raw.dtype.as_deref() {
            None => None,
            Some(d) => Some(
                OutDtype::parse(d)
                    .ok_or_else(|| err("dtype", format!("{d:?} is not one of f32, f16, u8")))?,
            ),
        };
        let norm_given = raw.scale.is_some() || raw.mean.is_some() || raw.std.is_some();
        if dtype == Some(OutDtype::U8) && norm_given {
            return Err(err(
                "dtype",
                "u8 output takes pixels as they are; remove scale/mean/std",
            ));
        }
        let max_pixels = raw.max_pixels.unwrap_or(ImageLimits::default().max_pixels);
        if max_pixels == 0 {
            return Err(err("max_pixels", "must be at least 1"));
        }
        Ok(PreSpec {
            input: raw.input.clone(),
            color,
            resize: resize_mode(raw)?,
            interpolation,
            size: fixed_size(raw)?,
            norm: normalize(raw, color.channels())?,
            layout,
            dtype,
            norm_given,
            limits: ImageLimits { max_pixels },
        })
    }

    /// Input (width, height): the configured size, else the model's fixed
    /// one; both given must agree.
    fn model_size(
        &self,
        shape: &[i64],
        h_at: usize,
        w_at: usize,
    ) -> Result<(u32, u32), PreConfigError> {
        let (mh, mw) = (shape[h_at], shape[w_at]);
        let fixed = mh > 0 && mw > 0 && mh <= MAX_SIDE as i64 && mw <= MAX_SIDE as i64;
        match (self.size, fixed) {
            (Some((w, h)), _) if mh > 0 && mw > 0 && (w as i64, h as i64) != (mw, mh) => Err(err(
                "width",
                format!("{w}x{h} differs from the model input's {mw}x{mh}"),
            )),
            (Some(s), _) => Ok(s),
            (None, true) => Ok((mw as u32, mh as u32)),
            (None, false) => Err(err(
                "width",
                format!(
                    "the model input {shape:?} has no usable fixed size; set pre.width and pre.height"
                ),
            )),
        }
    }

    /// Fixes size and element type from the model input: `shape` as ONNX
    /// Runtime reports it (-1 for a dynamic dimension), `dtype` by name
    /// (`crate::tensor::Dtype::name`).
    pub fn resolve(&self, shape: &[i64], dtype: &str) -> Result<PreConfig, PreConfigError> {
        if shape.len() != 4 {
            return Err(err(
                "layout",
                format!("an image input needs a rank-4 model input; the model's is {shape:?}"),
            ));
        }
        let (c_at, h_at, w_at) = match self.layout {
            Layout::Nchw => (1, 2, 3),
            Layout::Nhwc => (3, 1, 2),
        };
        if shape[0] > 1 {
            return Err(err(
                "layout",
                format!(
                    "the model input {shape:?} has a fixed batch of {}; need 1 or dynamic",
                    shape[0]
                ),
            ));
        }
        let channels = self.color.channels() as i64;
        if shape[c_at] >= 0 && shape[c_at] != channels {
            return Err(err(
                "color",
                format!(
                    "{channels} channel(s) do not fit the model input {shape:?} ({:?} layout)",
                    self.layout
                ),
            ));
        }
        let (width, height) = self.model_size(shape, h_at, w_at)?;
        let model = OutDtype::parse(dtype).ok_or_else(|| {
            err(
                "dtype",
                format!("the model input is {dtype}; image inputs must be f32, f16 or u8"),
            )
        })?;
        if let Some(d) = self.dtype
            && d != model
        {
            return Err(err(
                "dtype",
                format!("{} differs from the model input's {dtype}", d.name()),
            ));
        }
        if model == OutDtype::U8 && self.norm_given {
            return Err(err(
                "dtype",
                "the model takes u8 pixels; remove scale/mean/std",
            ));
        }
        let norm = if model == OutDtype::U8 {
            Normalize::IDENTITY
        } else {
            self.norm
        };
        Ok(PreConfig {
            color: self.color,
            resize: self.resize,
            interpolation: self.interpolation,
            width,
            height,
            norm,
            layout: self.layout,
            dtype: model,
            limits: self.limits,
        })
    }
}
