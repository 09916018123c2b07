//! Turns a checked frame into interleaved 8-bit pixels for the resizer: raw
//! RGB/BGR/mono frames are borrowed as they are (row step kept), JPEG and
//! PNG are decoded and YUV 4:2:2 is converted into the worker's scratch
//! buffer. Runs on the worker thread.

use std::io::Cursor;

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

use crate::wire::image::{Encoding, ImageError, ImageInput, MAX_SIDE};

/// Which source channel holds what; channels past the first 3 (alpha) and
/// past the first 1 for gray (gray+alpha PNG) are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrcOrder {
    Rgb,
    Bgr,
    Gray,
}

/// Interleaved u8 pixels: `height` rows of `stride` bytes, each starting
/// with `width * channels` bytes of pixels.
#[derive(Clone, Copy, Debug)]
pub struct Pixels<'a> {
    pub data: &'a [u8],
    pub width: u32,
    pub height: u32,
    pub stride: usize,
    pub channels: usize,
    pub order: SrcOrder,
}

impl Pixels<'_> {
    pub fn row(&self, y: usize) -> &[u8] {
        let start = y * self.stride;
        &self.data[start..start + self.width as usize * self.channels]
    }
}

/// Interleaved pixels of `input`, decoding into `scratch` when needed.
/// `gray` asks JPEG to decode luma only (the model wants one channel).
pub fn source<'a>(
    input: &ImageInput<'a>,
    gray: bool,
    scratch: &'a mut Vec<u8>,
) -> Result<Pixels<'a>, ImageError> {
    let d = input.desc;
    let raw = |channels: usize, order| Pixels {
        data: input.data,
        width: d.width,
        height: d.height,
        stride: d.step as usize,
        channels,
        order,
    };
    Ok(match d.encoding {
        Encoding::Rgb8 => raw(3, SrcOrder::Rgb),
        Encoding::Bgr8 => raw(3, SrcOrder::Bgr),
        Encoding::Rgba8 => raw(4, SrcOrder::Rgb),
        Encoding::Bgra8 => raw(4, SrcOrder::Bgr),
        Encoding::Mono8 => raw(1, SrcOrder::Gray),
        Encoding::Yuyv | Encoding::Uyvy => {
            yuv422_to_rgb(input, scratch);
            Pixels {
                data: scratch,
                width: d.width,
                height: d.height,
                stride: d.width as usize * 3,
                channels: 3,
                order: SrcOrder::Rgb,
            }
        }
        Encoding::Jpeg => decode_jpeg(input.data, gray, scratch)?,
        Encoding::Png => decode_png(input.data, scratch)?,
    })
}

fn decode_jpeg<'a>(
    data: &[u8],
    gray: bool,
    out: &'a mut Vec<u8>,
) -> Result<Pixels<'a>, ImageError> {
    let corrupt = |e: zune_jpeg::errors::DecodeErrors| {
        ImageError::Corrupt(format!("JPEG does not decode: {e:?}"))
    };
    let (space, channels, order) = if gray {
        (ColorSpace::Luma, 1, SrcOrder::Gray)
    } else {
        (ColorSpace::RGB, 3, SrcOrder::Rgb)
    };
    // Strict: a truncated or damaged frame is an error, not a grey smear.
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(MAX_SIDE as usize)
        .set_max_height(MAX_SIDE as usize)
        .jpeg_set_out_colorspace(space);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(data), options);
    dec.decode_headers().map_err(corrupt)?;
    let (w, h) = dec
        .dimensions()
        .ok_or_else(|| ImageError::Corrupt("JPEG header has no frame size".into()))?;
    let size = dec
        .output_buffer_size()
        .ok_or_else(|| ImageError::Corrupt("JPEG frame size overflows".into()))?;
    out.clear();
    out.resize(size, 0);
    dec.decode_into(out).map_err(corrupt)?;
    Ok(Pixels {
        data: out,
        width: w as u32,
        height: h as u32,
        stride: w * channels,
        channels,
        order,
    })
}

fn decode_png<'a>(data: &[u8], out: &'a mut Vec<u8>) -> Result<Pixels<'a>, ImageError> {
    let corrupt = |e: png::DecodingError| ImageError::Corrupt(format!("PNG does not decode: {e}"));
    let mut dec = png::Decoder::new(Cursor::new(data));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().map_err(corrupt)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| ImageError::Corrupt("PNG frame size overflows".into()))?;
    out.clear();
    out.resize(size, 0);
    let info = reader.next_frame(out).map_err(corrupt)?;
    let (channels, order) = match info.color_type {
        png::ColorType::Grayscale => (1, SrcOrder::Gray),
        png::ColorType::GrayscaleAlpha => (2, SrcOrder::Gray),
        png::ColorType::Rgb => (3, SrcOrder::Rgb),
        png::ColorType::Rgba => (4, SrcOrder::Rgb),
        png::ColorType::Indexed => {
            return Err(ImageError::Corrupt("PNG palette was not expanded".into()));
        }
    };
    Ok(Pixels {
        data: out,
        width: info.width,
        height: info.height,
        stride: info.line_size,
        channels,
        order,
    })
}

// BT.601 limited range in 20-bit fixed point, the constants OpenCV's
// COLOR_YUV2RGB_YUYV/UYVY use, so both give the same bytes.
const SHIFT: i32 = 20;
const CY: i32 = 1_220_542;
const CVR: i32 = 1_673_527;
const CVG: i32 = -852_492;
const CUG: i32 = -409_993;
const CUB: i32 = 2_116_026;

/// Full-resolution YUV 4:2:2 → packed RGB. This is the one colour
/// conversion done before resizing: chroma is shared by pixel pairs, so
/// resizing the packed bytes directly would mix luma and chroma.
fn yuv422_to_rgb(input: &ImageInput<'_>, out: &mut Vec<u8>) {
    let d = input.desc;
    let (w, h) = (d.width as usize, d.height as usize);
    // Byte offsets of Y0, U, Y1, V inside a 4-byte macropixel.
    let (y0, u, y1, v) = if d.encoding == Encoding::Yuyv {
        (0, 1, 2, 3)
    } else {
        (1, 0, 3, 2)
    };
    out.clear();
    out.resize(w * h * 3, 0);
    let round = 1 << (SHIFT - 1);
    for (row, dst) in out.chunks_exact_mut(w * 3).enumerate() {
        let src = &input.data[row * d.step as usize..][..w * 2];
        for (m, px) in src.chunks_exact(4).zip(dst.chunks_exact_mut(6)) {
            let (cu, cv) = (m[u] as i32 - 128, m[v] as i32 - 128);
            let ruv = round + CVR * cv;
            let guv = round + CVG * cv + CUG * cu;
            let buv = round + CUB * cu;
            for (k, yy) in [m[y0], m[y1]].into_iter().enumerate() {
                let y = (yy as i32 - 16).max(0) * CY;
                px[k * 3] = ((y + ruv) >> SHIFT).clamp(0, 255) as u8;
                px[k * 3 + 1] = ((y + guv) >> SHIFT).clamp(0, 255) as u8;
                px[k * 3 + 2] = ((y + buv) >> SHIFT).clamp(0, 255) as u8;
            }
        }
    }
}
