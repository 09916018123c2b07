//! A frame at full resolution as packed 8-bit RGB: what a chain keeps when
//! a later stage reads crops of the regions an earlier stage found (a
//! detector's boxes, text lines). Decoded once per frame on the worker,
//! only for chains that need it; crops are small copies of it.

use super::decode::{self, SrcOrder};
use crate::wire::image::{Encoding, ImageDesc, ImageError, ImageInput};

/// Packed RGB pixels, `width × 3` bytes per row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    pub data: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

impl Rgb8 {
    /// Decodes (JPEG/PNG/YUV) or converts any checked frame.
    pub fn from_input(input: &ImageInput<'_>) -> Result<Rgb8, ImageError> {
        let mut scratch = Vec::new();
        let px = decode::source(input, false, &mut scratch)?;
        let (w, h) = (px.width as usize, px.height as usize);
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            let row = px.row(y);
            for p in row.chunks_exact(px.channels) {
                let rgb = match (px.order, px.channels) {
                    (SrcOrder::Gray, _) => [p[0]; 3],
                    (SrcOrder::Rgb, _) => [p[0], p[1], p[2]],
                    (SrcOrder::Bgr, _) => [p[2], p[1], p[0]],
                };
                data.extend_from_slice(&rgb);
            }
        }
        Ok(Rgb8 {
            data,
            width: px.width,
            height: px.height,
        })
    }

    /// The pixels `[x0, x1) × [y0, y1)` (clipped to the image; at least one
    /// pixel when the image has any).
    pub fn crop(&self, x0: u32, y0: u32, x1: u32, y1: u32) -> Rgb8 {
        let x0 = x0.min(self.width.saturating_sub(1));
        let y0 = y0.min(self.height.saturating_sub(1));
        let x1 = x1.clamp(x0 + 1, self.width.max(1));
        let y1 = y1.clamp(y0 + 1, self.height.max(1));
        let row = self.width as usize * 3;
        let mut data = Vec::with_capacity((x1 - x0) as usize * (y1 - y0) as usize * 3);
        for y in y0..y1 {
            let start = y as usize * row + x0 as usize * 3;
            data.extend_from_slice(&self.data[start..start + (x1 - x0) as usize * 3]);
        }
        Rgb8 {
            data,
            width: x1 - x0,
            height: y1 - y0,
        }
    }

    /// The image as a pre-processor input.
    pub fn input(&self) -> ImageInput<'_> {
        ImageInput {
            desc: ImageDesc {
                encoding: Encoding::Rgb8,
                width: self.width,
                height: self.height,
                step: self.width * 3,
            },
            data: &self.data,
        }
    }
}
