//! What a frame claims to be, and the cheap check that it is: the zenoh
//! callback calls [`check_image`] (sizes and, for JPEG/PNG, the file header
//! only; no pixel is decoded there), the worker then pre-processes the
//! checked [`ImageDesc`].

use std::io::Cursor;

use super::error::{ImageError, bad};
pub use crate::config::image::{DEFAULT_MAX_PIXELS, ImageLimits, MAX_SIDE};

/// Pixel layouts reflexd accepts. Names follow ROS 2 `sensor_msgs/Image`
/// (`image_encodings.h`), plus `jpeg`/`png` for compressed frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Rgb8,
    Bgr8,
    Rgba8,
    Bgra8,
    Mono8,
    /// YUV 4:2:2, bytes Y0 U Y1 V (ROS `yuv422_yuy2`).
    Yuyv,
    /// YUV 4:2:2, bytes U Y0 V Y1 (ROS `yuv422`).
    Uyvy,
    Jpeg,
    Png,
}

impl Encoding {
    pub const NAMES: [&'static str; 9] = [
        "rgb8", "bgr8", "rgba8", "bgra8", "mono8", "yuyv", "uyvy", "jpeg", "png",
    ];
    const ALL: [Encoding; 9] = [
        Encoding::Rgb8,
        Encoding::Bgr8,
        Encoding::Rgba8,
        Encoding::Bgra8,
        Encoding::Mono8,
        Encoding::Yuyv,
        Encoding::Uyvy,
        Encoding::Jpeg,
        Encoding::Png,
    ];

    /// Parses a canonical name or a ROS 2 alias (`yuv422_yuy2`, `yuv422`,
    /// `8UC1`, `8UC3`), case-insensitively.
    pub fn parse(s: &str) -> Option<Encoding> {
        let s = s.to_ascii_lowercase();
        let alias = match s.as_str() {
            "yuv422_yuy2" | "yuy2" => Some(Encoding::Yuyv),
            "yuv422" => Some(Encoding::Uyvy),
            "8uc1" => Some(Encoding::Mono8),
            "8uc3" => Some(Encoding::Bgr8),
            "jpg" => Some(Encoding::Jpeg),
            _ => None,
        };
        alias.or_else(|| {
            Encoding::NAMES
                .iter()
                .position(|n| *n == s)
                .map(|i| Encoding::ALL[i])
        })
    }

    pub fn name(self) -> &'static str {
        Encoding::NAMES[Encoding::ALL
            .iter()
            .position(|e| *e == self)
            .expect("in ALL")]
    }

    /// Bytes per pixel of an uncompressed encoding; `None` for JPEG/PNG.
    pub fn bytes_per_pixel(self) -> Option<u32> {
        match self {
            Encoding::Rgb8 | Encoding::Bgr8 => Some(3),
            Encoding::Rgba8 | Encoding::Bgra8 => Some(4),
            Encoding::Mono8 => Some(1),
            Encoding::Yuyv | Encoding::Uyvy => Some(2),
            Encoding::Jpeg | Encoding::Png => None,
        }
    }

    pub fn is_compressed(self) -> bool {
        self.bytes_per_pixel().is_none()
    }
}

/// A frame's description after [`check_image`]: dimensions are real (read
/// from the file header for JPEG/PNG), `step` is the row pitch in bytes
/// (0 for compressed frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageDesc {
    pub encoding: Encoding,
    pub width: u32,
    pub height: u32,
    pub step: u32,
}

/// A checked frame and its bytes, as the worker receives it.
#[derive(Clone, Copy, Debug)]
pub struct ImageInput<'a> {
    pub desc: ImageDesc,
    pub data: &'a [u8],
}

/// What a message says about its frame (from the attachment or a ROS 2
/// header). Width and height are required for uncompressed encodings;
/// for JPEG/PNG they are optional and, if given, must match the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageClaim {
    pub encoding: Encoding,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub step: Option<u32>,
}

fn check_dims(width: u32, height: u32, limits: &ImageLimits) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(bad(format!(
            "image is {width}x{height}: both sides must be at least 1"
        )));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(bad(format!(
            "image is {width}x{height}: no side may exceed {MAX_SIDE} pixels"
        )));
    }
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

/// The cheap check for the zenoh callback: dimensions, limits and byte
/// counts for raw frames; for JPEG/PNG the file header is parsed (no pixel
/// data) so an oversized or non-image payload is refused before it queues.
pub fn check_image(
    claim: &ImageClaim,
    data: &[u8],
    limits: &ImageLimits,
) -> Result<ImageDesc, ImageError> {
    let Some(bpp) = claim.encoding.bytes_per_pixel() else {
        return check_compressed(claim, data, limits);
    };
    let name = claim.encoding.name();
    let (Some(width), Some(height)) = (claim.width, claim.height) else {
        return Err(bad(format!("{name} image needs `width` and `height`")));
    };
    check_dims(width, height, limits)?;
    if bpp == 2 && width % 2 == 1 {
        return Err(bad(format!(
            "{name} image width {width} is odd; 4:2:2 needs pairs of pixels"
        )));
    }
    let row = width * bpp; // ≤ 32768 × 4: no overflow
    let step = claim.step.unwrap_or(row);
    if step < row {
        return Err(bad(format!(
            "step {step} is shorter than one {name} row of {width} pixels ({row} bytes)"
        )));
    }
    let want = step as u64 * height as u64;
    if data.len() as u64 != want {
        return Err(bad(format!(
            "{name} {width}x{height} with step {step} needs {want} bytes; the payload has {}",
            data.len()
        )));
    }
    Ok(ImageDesc {
        encoding: claim.encoding,
        width,
        height,
        step,
    })
}

fn check_compressed(
    claim: &ImageClaim,
    data: &[u8],
    limits: &ImageLimits,
) -> Result<ImageDesc, ImageError> {
    if data.is_empty() {
        return Err(ImageError::Corrupt(format!(
            "empty {} payload",
            claim.encoding.name()
        )));
    }
    let (width, height) = compressed_dims(claim.encoding, data)?;
    for (key, said, real) in [
        ("width", claim.width, width),
        ("height", claim.height, height),
    ] {
        if let Some(said) = said
            && said != real
        {
            return Err(bad(format!(
                "attachment says {key} = {said} but the {} file is {width}x{height}",
                claim.encoding.name()
            )));
        }
    }
    check_dims(width, height, limits)?;
    Ok(ImageDesc {
        encoding: claim.encoding,
        width,
        height,
        step: 0,
    })
}

/// Width and height from a JPEG/PNG header, without decoding pixels.
pub fn compressed_dims(encoding: Encoding, data: &[u8]) -> Result<(u32, u32), ImageError> {
    match encoding {
        Encoding::Jpeg => {
            let mut dec = zune_jpeg::JpegDecoder::new(zune_core::bytestream::ZCursor::new(data));
            dec.decode_headers()
                .map_err(|e| ImageError::Corrupt(format!("not a readable JPEG: {e:?}")))?;
            let (w, h) = dec
                .dimensions()
                .ok_or_else(|| ImageError::Corrupt("JPEG header has no frame size".into()))?;
            Ok((w as u32, h as u32))
        }
        Encoding::Png => {
            let mut dec = png::Decoder::new(Cursor::new(data));
            let info = dec
                .read_header_info()
                .map_err(|e| ImageError::Corrupt(format!("not a readable PNG: {e}")))?;
            Ok((info.width, info.height))
        }
        other => Err(bad(format!(
            "{} is not a compressed encoding",
            other.name()
        ))),
    }
}
