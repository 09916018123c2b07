//! The ROS 2 messages reflexd reads and writes, hand-written as serde structs
//! in wire order (field order *is* the CDR layout). Ingress decodes
//! [`Image`], [`CompressedImage`], [`StringMsg`] and [`Float32MultiArray`];
//! egress encodes [`StringMsg`], [`Image`] (masks) and
//! [`Detection2DArray`](super::vision::Detection2DArray). Images borrow their
//! pixel bytes from the payload (`serde_bytes` over cdr-encoding's borrowed
//! byte sequences), so decoding a camera frame copies no pixels;
//! `float32[] data` goes through [`super::cdr`]'s bulk reader instead of
//! serde's element-at-a-time path.

use serde::{Deserialize, Serialize};

use super::cdr::{self, Body, Writer};
use super::error::{DecodeError, EncodeError};

/// `builtin_interfaces/msg/Time`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Time {
    pub sec: i32,
    pub nanosec: u32,
}

impl Time {
    /// Converts nanoseconds since the UNIX epoch (what rmw_zenoh puts in the
    /// attachment) into a stamp; saturates outside the `i32` seconds range.
    pub fn from_unix_nanos(ns: i64) -> Time {
        let sec = ns.div_euclid(1_000_000_000);
        Time {
            sec: sec.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            nanosec: ns.rem_euclid(1_000_000_000) as u32,
        }
    }

    pub fn to_unix_nanos(self) -> i64 {
        self.sec as i64 * 1_000_000_000 + self.nanosec as i64
    }
}

/// `std_msgs/msg/Header`: copied from an input to every output derived from it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub stamp: Time,
    pub frame_id: String,
}

/// `std_msgs/msg/String`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct StringMsg {
    pub data: String,
}

impl StringMsg {
    pub const TYPE: &'static str = "std_msgs/msg/String";

    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        cdr::decode(Self::TYPE, payload)
    }

    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        cdr::encode(Self::TYPE, self)
    }
}

/// `sensor_msgs/msg/Image`, with the pixels borrowed from the payload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Image<'a> {
    pub header: Header,
    pub height: u32,
    pub width: u32,
    /// e.g. `rgb8`, `bgr8`, `mono8`, `16UC1` (sensor_msgs `image_encodings.hpp`).
    pub encoding: String,
    /// Byte order of multi-byte pixel values (0 little, else big).
    pub is_bigendian: u8,
    /// Bytes per row, padding included.
    pub step: u32,
    #[serde(borrow, with = "serde_bytes")]
    pub data: &'a [u8],
}

/// Bytes per pixel of the encodings whose layout is fixed, `None` for the rest
/// (Bayer and YUV variants are checked by the image stage, not here).
pub fn bytes_per_pixel(encoding: &str) -> Option<u32> {
    Some(match encoding {
        "mono8" | "8UC1" | "8SC1" => 1,
        "mono16" | "16UC1" | "16SC1" | "8UC2" | "8SC2" => 2,
        "rgb8" | "bgr8" | "8UC3" | "8SC3" => 3,
        "rgba8" | "bgra8" | "8UC4" | "8SC4" | "32FC1" | "32SC1" | "16UC2" | "16SC2" => 4,
        "rgb16" | "bgr16" | "16UC3" | "16SC3" => 6,
        "rgba16" | "bgra16" | "16UC4" | "16SC4" | "32FC2" | "32SC2" | "64FC1" => 8,
        "32FC3" | "32SC3" => 12,
        "32FC4" | "32SC4" | "64FC2" => 16,
        "64FC3" => 24,
        "64FC4" => 32,
        _ => return None,
    })
}

impl<'a> Image<'a> {
    pub const TYPE: &'static str = "sensor_msgs/msg/Image";

    /// Decodes and checks that `step * height` bytes are present and that
    /// rows are wide enough for `width` pixels of a known encoding.
    pub fn decode(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let img: Image<'a> = cdr::decode(Self::TYPE, payload)?;
        img.check_geometry()?;
        Ok(img)
    }

    fn check_geometry(&self) -> Result<(), DecodeError> {
        let invalid = |reason: String| DecodeError::Invalid {
            ty: Self::TYPE,
            reason,
        };
        let need = self.step as u64 * self.height as u64;
        if (self.data.len() as u64) < need {
            return Err(invalid(format!(
                "data has {} bytes but step {} × height {} needs {need}",
                self.data.len(),
                self.step,
                self.height
            )));
        }
        if let Some(bpp) = bytes_per_pixel(&self.encoding) {
            let row = self.width as u64 * bpp as u64;
            if (self.step as u64) < row {
                return Err(invalid(format!(
                    "step {} is smaller than width {} × {bpp} bytes per {} pixel",
                    self.step, self.width, self.encoding
                )));
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let hint = 64 + self.header.frame_id.len() + self.data.len();
        cdr::encode_with_capacity(Self::TYPE, self, hint)
    }
}

/// `sensor_msgs/msg/CompressedImage`, with the file bytes borrowed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct CompressedImage<'a> {
    pub header: Header,
    /// `jpeg`, `png`, or image_transport's `rgb8; jpeg compressed bgr8` form.
    pub format: String,
    #[serde(borrow, with = "serde_bytes")]
    pub data: &'a [u8],
}

impl<'a> CompressedImage<'a> {
    pub const TYPE: &'static str = "sensor_msgs/msg/CompressedImage";

    pub fn decode(payload: &'a [u8]) -> Result<Self, DecodeError> {
        cdr::decode(Self::TYPE, payload)
    }

    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let hint = 64 + self.format.len() + self.data.len();
        cdr::encode_with_capacity(Self::TYPE, self, hint)
    }
}

/// `std_msgs/msg/MultiArrayDimension`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct MultiArrayDimension {
    pub label: String,
    pub size: u32,
    pub stride: u32,
}

/// `std_msgs/msg/MultiArrayLayout`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct MultiArrayLayout {
    pub dim: Vec<MultiArrayDimension>,
    pub data_offset: u32,
}

/// `std_msgs/msg/Float32MultiArray`: a generic tensor (shape in `layout.dim`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Float32MultiArray {
    pub layout: MultiArrayLayout,
    pub data: Vec<f32>,
}

impl Float32MultiArray {
    pub const TYPE: &'static str = "std_msgs/msg/Float32MultiArray";

    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let body = Body::parse(Self::TYPE, payload)?;
        let (layout, used) = body.decode_prefix::<MultiArrayLayout>()?;
        let (data, _) = body.f32_seq("data", used)?;
        Ok(Float32MultiArray { layout, data })
    }

    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        Ok(Writer::new(Self::TYPE, 64 + 4 * self.data.len())
            .prefix(&self.layout)?
            .f32_seq(&self.data)?
            .finish())
    }

    /// The tensor shape from `layout.dim` sizes, checked against the data
    /// length (`data_offset` elements are skipped, per the message comment).
    pub fn shape(&self) -> Result<Vec<usize>, DecodeError> {
        let invalid = |reason: String| DecodeError::Invalid {
            ty: Self::TYPE,
            reason,
        };
        let dims: Vec<usize> = self.layout.dim.iter().map(|d| d.size as usize).collect();
        let elems = dims
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(*d))
            .ok_or_else(|| invalid("layout dimensions overflow".into()))?;
        let offset = self.layout.data_offset as usize;
        let have = self.data.len().saturating_sub(offset);
        if dims.is_empty() {
            return Ok(vec![have]);
        }
        if elems > have {
            return Err(invalid(format!(
                "layout {dims:?} needs {elems} elements after data_offset {offset}, data has {have}"
            )));
        }
        Ok(dims)
    }
}
