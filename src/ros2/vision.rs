//! `vision_msgs/msg/Detection2DArray` (vision_msgs 4.1.1, the Jazzy/Rolling
//! release) and the geometry_msgs types it embeds: what egress publishes for
//! detections and OCR lines (text in `hypothesis.class_id`). Written entirely
//! through serde; `[f64; 36]` needs serde-big-array because serde derives
//! arrays only up to 32 elements.

use serde::{Deserialize, Serialize};
use serde_big_array::BigArray;

use super::cdr;
use super::error::{DecodeError, EncodeError};
use super::msg::Header;

/// `geometry_msgs/msg/Point`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub z: f64,
}

/// `geometry_msgs/msg/Quaternion` (the .msg default is the identity, w = 1).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Quaternion {
    pub x: f64,
    pub y: f64,
    pub z: f64,
    pub w: f64,
}

impl Default for Quaternion {
    fn default() -> Self {
        Quaternion {
            x: 0.0,
            y: 0.0,
            z: 0.0,
            w: 1.0,
        }
    }
}

/// `geometry_msgs/msg/Pose`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Pose {
    pub position: Point,
    pub orientation: Quaternion,
}

/// `geometry_msgs/msg/PoseWithCovariance`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct PoseWithCovariance {
    pub pose: Pose,
    #[serde(with = "BigArray")]
    pub covariance: [f64; 36],
}

impl Default for PoseWithCovariance {
    fn default() -> Self {
        PoseWithCovariance {
            pose: Pose::default(),
            covariance: [0.0; 36],
        }
    }
}

/// `vision_msgs/msg/Point2D` (pixels; x right, y down).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Point2D {
    pub x: f64,
    pub y: f64,
}

/// `vision_msgs/msg/Pose2D` (theta in radians, counter-clockwise).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Pose2D {
    pub position: Point2D,
    pub theta: f64,
}

/// `vision_msgs/msg/BoundingBox2D`: centre pose and full size in pixels.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct BoundingBox2D {
    pub center: Pose2D,
    pub size_x: f64,
    pub size_y: f64,
}

impl BoundingBox2D {
    /// From an axis-aligned box given by its corners.
    pub fn from_corners(x0: f64, y0: f64, x1: f64, y1: f64) -> Self {
        BoundingBox2D {
            center: Pose2D {
                position: Point2D {
                    x: (x0 + x1) / 2.0,
                    y: (y0 + y1) / 2.0,
                },
                theta: 0.0,
            },
            size_x: (x1 - x0).abs(),
            size_y: (y1 - y0).abs(),
        }
    }
}

/// `vision_msgs/msg/ObjectHypothesis`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ObjectHypothesis {
    pub class_id: String,
    pub score: f64,
}

/// `vision_msgs/msg/ObjectHypothesisWithPose`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ObjectHypothesisWithPose {
    pub hypothesis: ObjectHypothesis,
    pub pose: PoseWithCovariance,
}

/// `vision_msgs/msg/Detection2D`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Detection2D {
    pub header: Header,
    pub results: Vec<ObjectHypothesisWithPose>,
    pub bbox: BoundingBox2D,
    pub id: String,
}

/// `vision_msgs/msg/Detection2DArray`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Detection2DArray {
    pub header: Header,
    pub detections: Vec<Detection2D>,
}

impl Detection2DArray {
    pub const TYPE: &'static str = "vision_msgs/msg/Detection2DArray";

    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        cdr::decode(Self::TYPE, payload)
    }

    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        cdr::encode(Self::TYPE, self)
    }
}
