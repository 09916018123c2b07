//! `vision_msgs/msg/Detection2DArray` (vision_msgs 4.1.1, the Jazzy/Rolling
//! release) and the geometry_msgs types it embeds: what egress publishes for
//! detections and OCR lines (text in `hypothesis.class_id`). Written entirely
//! through serde; `[f64; 36]` needs serde-big-array because serde derives
//! arrays only up to 32 elements.

use serde::{Deserialize, Serialize};
use serde_big_array::BigArray;
use serde_json::Value;

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

/// Why an answer cannot be a `Detection2DArray`.
pub type AnswerError = String;

fn num(v: &Value, key: &str) -> Result<f64, AnswerError> {
    v.get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("`{key}` is missing or not a number"))
}

fn hypothesis(class_id: String, score: f64) -> ObjectHypothesisWithPose {
    ObjectHypothesisWithPose {
        hypothesis: ObjectHypothesis { class_id, score },
        pose: PoseWithCovariance::default(),
    }
}

/// A class as `class_id`: its label when the answer has one, else its index.
fn class_name(v: &Value) -> String {
    match v.get("label").and_then(Value::as_str) {
        Some(l) => l.to_string(),
        None => v.get("class_id").map(Value::to_string).unwrap_or_default(),
    }
}

/// One detector box (`{"box": {"x1",..}, "label", "score"}`); the classes a
/// following crops stage added, if any, are its hypotheses, best first.
fn detection(d: &Value) -> Result<(Vec<ObjectHypothesisWithPose>, BoundingBox2D), AnswerError> {
    let b = d.get("box").ok_or("a detection has no `box`")?;
    let bbox =
        BoundingBox2D::from_corners(num(b, "x1")?, num(b, "y1")?, num(b, "x2")?, num(b, "y2")?);
    let mut results = vec![hypothesis(class_name(d), num(d, "score")?)];
    if let Some(classes) = d.get("classes").and_then(Value::as_array) {
        results = classes
            .iter()
            .map(|c| Ok(hypothesis(class_name(c), num(c, "score")?)))
            .collect::<Result<_, AnswerError>>()?;
    }
    Ok((results, bbox))
}

/// One OCR line (`{"text", "confidence", "box": [[x, y]; 4]}`, corners
/// clockwise from the text's top left): an oriented box whose `theta` is
/// the baseline's angle in image coordinates (x right, y down), the text
/// as the hypothesis.
fn text_line(l: &Value) -> Result<(Vec<ObjectHypothesisWithPose>, BoundingBox2D), AnswerError> {
    let text = l
        .get("text")
        .and_then(Value::as_str)
        .ok_or("a text line has no `text`")?;
    let corners: Vec<(f64, f64)> = l
        .get("box")
        .and_then(Value::as_array)
        .filter(|c| c.len() == 4)
        .ok_or("a text line's `box` is not four corners")?
        .iter()
        .map(|p| match p.as_array().map(|p| p.as_slice()) {
            Some([x, y]) => x.as_f64().zip(y.as_f64()),
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or("a text line's corner is not [x, y]")?;
    let (cx, cy) = corners
        .iter()
        .fold((0.0, 0.0), |(x, y), p| (x + p.0 / 4.0, y + p.1 / 4.0));
    let side = |a: (f64, f64), b: (f64, f64)| (b.0 - a.0).hypot(b.1 - a.1);
    let bbox = BoundingBox2D {
        center: Pose2D {
            position: Point2D { x: cx, y: cy },
            theta: (corners[1].1 - corners[0].1).atan2(corners[1].0 - corners[0].0),
        },
        size_x: side(corners[0], corners[1]),
        size_y: side(corners[0], corners[3]),
    };
    let results = vec![hypothesis(text.to_string(), num(l, "confidence")?)];
    Ok((results, bbox))
}

impl Detection2DArray {
    /// A reflexd answer (docs/answers.md, docs/ocr.md) as ROS detections:
    /// OCR `lines` (text in the hypothesis `class_id`) or detector
    /// `detections` (label, else class index), each with `header` and its
    /// index as `id`.
    pub fn from_answer(answer: &Value, header: &Header) -> Result<Self, AnswerError> {
        let (items, one): (_, fn(&Value) -> Result<_, AnswerError>) =
            if let Some(lines) = answer.get("lines").and_then(Value::as_array) {
                (lines, text_line)
            } else if let Some(dets) = answer.get("detections").and_then(Value::as_array) {
                (dets, detection)
            } else {
                return Err("the answer has neither OCR `lines` nor `detections`".into());
            };
        let detections = items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (results, bbox) = one(v)?;
                Ok(Detection2D {
                    header: header.clone(),
                    results,
                    bbox,
                    id: i.to_string(),
                })
            })
            .collect::<Result<_, AnswerError>>()?;
        Ok(Detection2DArray {
            header: header.clone(),
            detections,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ocr_lines_become_oriented_boxes_with_the_text_as_class() {
        let a = json!({"kind": "ocr", "width": 640, "height": 480, "boxes": 1, "lines": [
            {"text": "STOP", "confidence": 0.99,
             "box": [[10.0, 20.0], [110.0, 20.0], [110.0, 50.0], [10.0, 50.0]]},
            {"text": "tilted", "confidence": 0.5,
             "box": [[0.0, 0.0], [30.0, 40.0], [22.0, 46.0], [-8.0, 6.0]]}]});
        let h = Header {
            frame_id: "cam".into(),
            ..Header::default()
        };
        let d = Detection2DArray::from_answer(&a, &h).unwrap();
        assert_eq!(d.header.frame_id, "cam");
        let first = &d.detections[0];
        assert_eq!(first.results[0].hypothesis.class_id, "STOP");
        assert_eq!(first.results[0].hypothesis.score, 0.99);
        assert_eq!(first.bbox.center.position, Point2D { x: 60.0, y: 35.0 });
        assert_eq!((first.bbox.size_x, first.bbox.size_y), (100.0, 30.0));
        assert_eq!(first.bbox.center.theta, 0.0);
        assert_eq!(
            (first.id.as_str(), first.header.frame_id.as_str()),
            ("0", "cam")
        );
        let tilted = &d.detections[1].bbox;
        assert!((tilted.size_x - 50.0).abs() < 1e-9 && (tilted.size_y - 10.0).abs() < 1e-9);
        assert!((tilted.center.theta - (40.0f64).atan2(30.0)).abs() < 1e-12);
    }

    #[test]
    fn detections_keep_labels_scores_and_crop_classes() {
        let a = json!({"width": 100, "height": 100, "detections": [
            {"class_id": 0, "label": "person", "score": 0.9,
             "box": {"x1": 10.0, "y1": 20.0, "x2": 30.0, "y2": 60.0}},
            {"class_id": 3, "score": 0.4, "box": {"x1": 0.0, "y1": 0.0, "x2": 2.0, "y2": 2.0},
             "classes": [{"class_id": 7, "label": "cat", "score": 0.7},
                         {"class_id": 8, "score": 0.2}]}]});
        let d = Detection2DArray::from_answer(&a, &Header::default()).unwrap();
        let p = &d.detections[0];
        assert_eq!(p.results[0].hypothesis.class_id, "person");
        assert_eq!(p.bbox, BoundingBox2D::from_corners(10.0, 20.0, 30.0, 60.0));
        let classes: Vec<&str> = d.detections[1]
            .results
            .iter()
            .map(|r| r.hypothesis.class_id.as_str())
            .collect();
        assert_eq!(classes, ["cat", "8"]);
        let back = Detection2DArray::decode(&d.encode().unwrap()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn other_answers_are_refused_with_the_reason() {
        for (a, needle) in [
            (
                json!({"classes": []}),
                "neither OCR `lines` nor `detections`",
            ),
            (
                json!({"lines": [{"text": "x", "confidence": 1.0, "box": [[0, 0]]}]}),
                "four corners",
            ),
            (json!({"detections": [{"score": 1.0}]}), "no `box`"),
            (json!({"lines": [{"confidence": 1.0}]}), "no `text`"),
        ] {
            let e = Detection2DArray::from_answer(&a, &Header::default()).unwrap_err();
            assert!(e.contains(needle), "{a}: {e}");
        }
    }
}
