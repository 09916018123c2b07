//! Pixels into the OCR chain: the borrowed camera frame the caller hands in,
//! its conversion to the packed BGR image every stage works on (PP-OCR's
//! models were trained on OpenCV's BGR order), rapidocr's global size limits
//! and letterbox, and the two image primitives the stages share: an
//! OpenCV-style bilinear resize (fast_image_resize's fixed-kernel
//! `Interpolation` mode, which is what `cv2.resize` does, not the
//! anti-aliased convolution) and `(x/255 − 0.5)/0.5` normalisation into NCHW.

use fast_image_resize as fir;
use image::RgbImage;

use super::{OcrError, OcrParams};

/// Channel layout of a [`Frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    Rgb8,
    Bgr8,
    Mono8,
}

impl PixelFormat {
    pub fn channels(self) -> usize {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
            PixelFormat::Mono8 => 1,
        }
    }
}

/// A borrowed 8-bit image: `height` rows of `stride` bytes, each starting
/// with `width` pixels in `format` (trailing row padding is ignored).
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub data: &'a [u8],
    pub width: u32,
    pub height: u32,
    pub stride: usize,
    pub format: PixelFormat,
}

impl<'a> Frame<'a> {
    /// A frame whose rows are packed (no padding).
    pub fn packed(data: &'a [u8], width: u32, height: u32, format: PixelFormat) -> Self {
        Frame {
            data,
            width,
            height,
            stride: width as usize * format.channels(),
            format,
        }
    }

    /// Checks sizes against the buffer and `max_pixels`; never panics.
    pub fn validate(&self, max_pixels: u64) -> Result<(), OcrError> {
        let bad = |m: String| Err(OcrError::BadImage(m));
        if self.width == 0 || self.height == 0 {
            return bad(format!("zero size {}x{}", self.width, self.height));
        }
        let pixels = u64::from(self.width) * u64::from(self.height);
        if pixels > max_pixels {
            return bad(format!(
                "{}x{} = {pixels} pixels exceeds the limit of {max_pixels}",
                self.width, self.height
            ));
        }
        let row = self.width as usize * self.format.channels();
        if self.stride < row {
            return bad(format!(
                "row stride {} is less than width × channels = {row}",
                self.stride
            ));
        }
        let need = self.stride * (self.height as usize - 1) + row;
        if self.data.len() < need {
            return bad(format!(
                "{} bytes for a {}x{} {:?} frame with stride {}: needs {need}",
                self.data.len(),
                self.width,
                self.height,
                self.format,
                self.stride
            ));
        }
        Ok(())
    }

    /// Packed BGR copy (stored in an `RgbImage`, whose channel names lie:
    /// byte 0 is blue). Call [`Frame::validate`] first.
    pub(crate) fn to_bgr(self) -> RgbImage {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut out = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            let row = &self.data[y * self.stride..][..w * self.format.channels()];
            match self.format {
                PixelFormat::Bgr8 => out.extend_from_slice(row),
                PixelFormat::Rgb8 => {
                    out.extend(row.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]))
                }
                PixelFormat::Mono8 => out.extend(row.iter().flat_map(|&g| [g, g, g])),
            }
        }
        RgbImage::from_raw(self.width, self.height, out).expect("buffer sized from the frame")
    }
}

/// The image the detector sees and crops are cut from, and how its
/// coordinates map back to the caller's frame.
pub(crate) struct Prepared {
    pub img: RgbImage,
    /// Source pixels per prepared pixel, horizontally and vertically.
    pub ratio: [f64; 2],
    /// Rows of black letterbox added above the image.
    pub pad_top: f64,
}

/// rapidocr's `RapidOCR.preprocess` + `maybe_add_letterbox`: frames whose
/// longer side exceeds `max_side_len` are shrunk, frames whose shorter side
/// is under `min_side_len` are enlarged (both to multiples of 32, as rapidocr
/// does), and short or very wide frames get black bands above and below so
/// the detector sees text at a usable scale.
pub(crate) fn prepare(
    resizer: &mut fir::Resizer,
    mut img: RgbImage,
    p: &OcrParams,
) -> Result<Prepared, OcrError> {
    let (w0, h0) = (f64::from(img.width()), f64::from(img.height()));
    let (w, h) = (img.width(), img.height());
    let scale = if w.max(h) > p.max_side_len {
        f64::from(p.max_side_len) / f64::from(w.max(h))
    } else if w.min(h) < p.min_side_len {
        f64::from(p.min_side_len) / f64::from(w.min(h))
    } else {
        1.0
    };
    if scale != 1.0 {
        let rw = round32((f64::from(w) * scale) as u32);
        let rh = round32((f64::from(h) * scale) as u32);
        if rw == 0 || rh == 0 {
            return Err(OcrError::BadImage(format!(
                "{w}x{h} cannot be scaled into the detector's limits (aspect ratio too extreme)"
            )));
        }
        img = resize(resizer, &img, rw, rh)?;
    }
    // rapidocr overwrites the first ratio if both limits apply; composing the
    // sizes directly maps boxes back correctly in that corner case too.
    let ratio = [w0 / f64::from(img.width()), h0 / f64::from(img.height())];
    let (w, h) = (img.width(), img.height());
    let too_wide = p.width_height_ratio > 0.0 && f64::from(w) / f64::from(h) > p.width_height_ratio;
    let mut pad_top = 0.0;
    if h <= p.min_height || too_wide {
        let by_ratio = if p.width_height_ratio > 0.0 {
            (f64::from(w) / p.width_height_ratio) as u32
        } else {
            0
        };
        let new_h = by_ratio.max(p.min_height) * 2;
        let pad = new_h.abs_diff(h) / 2;
        img = pad_vertically(&img, pad);
        pad_top = f64::from(pad);
    }
    Ok(Prepared {
        img,
        ratio,
        pad_top,
    })
}

/// `int(round(v / 32) * 32)` with Python's round-half-to-even.
pub(crate) fn round32(v: u32) -> u32 {
    ((f64::from(v) / 32.0).round_ties_even() * 32.0) as u32
}

fn pad_vertically(img: &RgbImage, pad: u32) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let mut out = RgbImage::new(w, h + 2 * pad);
    let row = w as usize * 3;
    let start = pad as usize * row;
    out.as_mut()[start..start + img.as_raw().len()].copy_from_slice(img.as_raw());
    out
}

/// OpenCV `INTER_LINEAR`-style resize of a 3-channel image.
pub(crate) fn resize(
    resizer: &mut fir::Resizer,
    src: &RgbImage,
    w: u32,
    h: u32,
) -> Result<RgbImage, OcrError> {
    if (w, h) == src.dimensions() {
        return Ok(src.clone());
    }
    let fail = |e: String| OcrError::BadImage(format!("resize to {w}x{h}: {e}"));
    let view = fir::images::ImageRef::new(
        src.width(),
        src.height(),
        src.as_raw(),
        fir::PixelType::U8x3,
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut dst = fir::images::Image::new(w, h, fir::PixelType::U8x3);
    let opts = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Interpolation(fir::FilterType::Bilinear));
    resizer
        .resize(&view, &mut dst, &opts)
        .map_err(|e| fail(e.to_string()))?;
    RgbImage::from_raw(w, h, dst.into_vec()).ok_or_else(|| fail("short buffer".into()))
}

/// `(x / 255 − 0.5) / 0.5` for every byte value.
pub(crate) fn norm_lut() -> [f32; 256] {
    std::array::from_fn(|i| (i as f32 / 255.0 - 0.5) / 0.5)
}

/// Writes `img` as three planes (stored channel order, i.e. B, G, R) into
/// `out`, a `[3, plane_h, plane_w]` block; columns beyond the image keep
/// whatever `out` held (zeros: the padding rapidocr uses).
pub(crate) fn write_planes(img: &RgbImage, lut: &[f32; 256], out: &mut [f32], plane_w: usize) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let plane = plane_w * h;
    let raw = img.as_raw();
    for y in 0..h {
        let src = &raw[y * w * 3..][..w * 3];
        for c in 0..3 {
            let dst = &mut out[c * plane + y * plane_w..][..w];
            for (d, px) in dst.iter_mut().zip(src.chunks_exact(3)) {
                *d = lut[px[c] as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let data = vec![0u8; 10];
        let cases = [
            Frame::packed(&data, 0, 5, PixelFormat::Bgr8),
            Frame::packed(&data, 4, 4, PixelFormat::Bgr8),
            Frame {
                data: &data,
                width: 4,
                height: 1,
                stride: 2,
                format: PixelFormat::Bgr8,
            },
        ];
        for f in cases {
            assert!(
                matches!(f.validate(1 << 30), Err(OcrError::BadImage(_))),
                "{f:?}"
            );
        }
        assert!(
            Frame::packed(&data, 10, 1, PixelFormat::Mono8)
                .validate(5)
                .is_err()
        );
    }

    #[test]
    fn rgb_stride_and_mono_convert_to_packed_bgr() {
        // 2x2 RGB with one byte of row padding.
        let data = [1, 2, 3, 4, 5, 6, 0, 7, 8, 9, 10, 11, 12, 0];
        let f = Frame {
            data: &data,
            width: 2,
            height: 2,
            stride: 7,
            format: PixelFormat::Rgb8,
        };
        f.validate(100).unwrap();
        assert_eq!(
            f.to_bgr().as_raw(),
            &[3, 2, 1, 6, 5, 4, 9, 8, 7, 12, 11, 10]
        );
        let g = Frame::packed(&[9, 8], 2, 1, PixelFormat::Mono8);
        assert_eq!(g.to_bgr().as_raw(), &[9, 9, 9, 8, 8, 8]);
    }

    #[test]
    fn round32_is_half_to_even_like_python() {
        assert_eq!(round32(48), 64); // 1.5 -> 2
        assert_eq!(round32(80), 64); // 2.5 -> 2
        assert_eq!(round32(81), 96);
        assert_eq!(round32(15), 0);
    }

    #[test]
    fn short_strip_gets_rapidocr_letterbox() {
        let img = RgbImage::from_pixel(420, 28, image::Rgb([255, 255, 255]));
        let p = prepare(&mut fir::Resizer::new(), img, &OcrParams::default()).unwrap();
        // min side 28 < 30: scaled by 30/28 to round32(450) x round32(30) = 448 x 32,
        // then h = 32 > 30 but 448/32 = 14 > 8: letterbox to max(448/8, 30)·2 = 112 rows.
        assert_eq!(p.img.dimensions(), (448, 112));
        assert_eq!(p.pad_top, 40.0);
        assert!((p.ratio[0] - 420.0 / 448.0).abs() < 1e-12);
        assert_eq!(p.img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(p.img.get_pixel(0, 50).0, [255, 255, 255]);
    }
}
