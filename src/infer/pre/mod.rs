//! Image pre-processing: a camera frame (raw pixels with a row step, or a
//! JPEG/PNG file) becomes the model's input tensor on the worker thread.
//! Data flow: the zenoh callback parses the attachment
//! ([`parse_image_attachment`]) and runs the cheap [`check_image`] (sizes,
//! limits, file header; no pixel work); the worker then calls
//! [`Preprocessor::run`]: decode (JPEG/PNG/YUV only) → SIMD resize with
//! `fast_image_resize` (skipped when the frame already has the size) → one
//! pass doing channel order, gray, normalisation, layout and dtype. The
//! returned [`Transform`] maps model-input coordinates back to source
//! pixels for the answer stage.

mod bind;
mod convert;
mod decode;
mod feed;
mod geometry;
mod packed;
#[cfg(test)]
mod tests;

use fast_image_resize as fir;

// The config types live in `crate::config::image` and the message format in
// `crate::wire::image` (lower layers: config validation and ingress read
// them); re-exported so the pre-processing API is one module.
pub use crate::config::image::{
    ColorOrder, Interpolation, Layout, Normalize, OutDtype, PreConfig, PreConfigError, PreSpec,
    RawPre, ResizeMode,
};
pub use crate::wire::image::{
    DEFAULT_MAX_PIXELS, Encoding, Frame, IMAGE_ERROR_CODES, ImageClaim, ImageDesc, ImageError,
    ImageHeader, ImageInput, ImageLimits, KEYS, MAX_ATTACHMENT_LEN, MAX_ID_LEN, MAX_SIDE,
    PartialMeta, check_image, compressed_dims, encode_image_attachment, parse_image_attachment,
};
pub use bind::{ImageBinding, bind};
pub use feed::{Prepared, prepare};
pub use geometry::{Plan, Rect, Transform, Window, plan};
pub use packed::Rgb8;

use decode::Pixels;

/// One pipeline's pre-processing state on one worker: the config and the
/// buffers reused from frame to frame (no allocation once warm, except
/// when a frame is larger than any before).
pub struct Preprocessor {
    cfg: PreConfig,
    resizer: fir::Resizer,
    decoded: Vec<u8>,
    compact: Vec<u8>,
    resized: Vec<u8>,
    scratch: convert::Scratch,
}

impl Preprocessor {
    pub fn new(cfg: PreConfig) -> Preprocessor {
        Preprocessor {
            cfg,
            resizer: fir::Resizer::new(),
            decoded: Vec::new(),
            compact: Vec::new(),
            resized: Vec::new(),
            scratch: convert::Scratch::default(),
        }
    }

    pub fn config(&self) -> &PreConfig {
        &self.cfg
    }

    /// Shape of the tensor [`Preprocessor::run`] writes (batch 1).
    pub fn output_shape(&self) -> [usize; 4] {
        self.cfg.shape()
    }

    /// Bytes [`Preprocessor::run`] writes: little-endian elements of
    /// `config().dtype`.
    pub fn output_bytes(&self) -> usize {
        self.cfg.output_bytes()
    }

    /// Pre-processes a checked frame into `out` (exactly
    /// [`Preprocessor::output_bytes`] long) and returns the geometry.
    pub fn run(&mut self, input: &ImageInput<'_>, out: &mut [u8]) -> Result<Transform, ImageError> {
        if out.len() != self.cfg.output_bytes() {
            return Err(ImageError::BadImage(format!(
                "output buffer has {} bytes; the model input needs {}",
                out.len(),
                self.cfg.output_bytes()
            )));
        }
        let Preprocessor {
            cfg,
            resizer,
            decoded,
            compact,
            resized,
            scratch,
        } = self;
        let src = decode::source(input, cfg.color == ColorOrder::Gray, decoded)?;
        let plan = geometry::plan(cfg.resize, (src.width, src.height), (cfg.width, cfg.height));
        let pixels = if plan.is_identity() {
            src
        } else {
            resize(resizer, cfg.interpolation, &src, &plan, compact, resized)?
        };
        let pad = match cfg.resize {
            ResizeMode::Letterbox { pad } => pad,
            _ => 0,
        };
        convert::write(&pixels, plan.content, pad, cfg, scratch, out);
        Ok(plan.transform)
    }
}

fn algorithm(i: Interpolation) -> fir::ResizeAlg {
    match i {
        Interpolation::Nearest => fir::ResizeAlg::Nearest,
        Interpolation::Bilinear => fir::ResizeAlg::Interpolation(fir::FilterType::Bilinear),
        Interpolation::Antialias => fir::ResizeAlg::Convolution(fir::FilterType::Bilinear),
    }
}

/// Resizes `plan.window` of `src` to the content size into `out`. Rows with
/// a step that is a whole number of pixels are read in place (the padding
/// is outside the crop window); other steps are compacted first.
fn resize<'a>(
    resizer: &mut fir::Resizer,
    interpolation: Interpolation,
    src: &Pixels<'_>,
    plan: &Plan,
    compact: &mut Vec<u8>,
    out: &'a mut Vec<u8>,
) -> Result<Pixels<'a>, ImageError> {
    let ch = src.channels;
    let pixel_type = match ch {
        1 => fir::PixelType::U8,
        2 => fir::PixelType::U8x2,
        3 => fir::PixelType::U8x3,
        _ => fir::PixelType::U8x4,
    };
    let (data, row_pixels) = if src.stride.is_multiple_of(ch) {
        (src.data, src.stride / ch)
    } else {
        compact.clear();
        for y in 0..src.height as usize {
            compact.extend_from_slice(src.row(y));
        }
        (&compact[..], src.width as usize)
    };
    let internal = |e: String| ImageError::BadImage(format!("resize: {e}"));
    let used = row_pixels * ch * src.height as usize;
    let src_img =
        fir::images::ImageRef::new(row_pixels as u32, src.height, &data[..used], pixel_type)
            .map_err(|e| internal(e.to_string()))?;
    let (w, h) = (plan.content.width, plan.content.height);
    out.clear();
    out.resize(w as usize * h as usize * ch, 0);
    let mut dst = fir::images::Image::from_slice_u8(w, h, out, pixel_type)
        .map_err(|e| internal(e.to_string()))?;
    let win = plan.window;
    let options = fir::ResizeOptions::new()
        .resize_alg(algorithm(interpolation))
        .crop(win.left, win.top, win.width, win.height)
        .use_alpha(false);
    resizer
        .resize(&src_img, &mut dst, &options)
        .map_err(|e| internal(e.to_string()))?;
    drop(dst);
    Ok(Pixels {
        data: out,
        width: w,
        height: h,
        stride: w as usize * ch,
        channels: ch,
        order: src.order,
    })
}
