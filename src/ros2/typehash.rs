//! RIHS01 type hashes (REP-2011), the last chunk of every rmw_zenoh key:
//! SHA-256 over the JSON type description with default values removed,
//! serialised exactly as `rosidl_generator_type_description.calculate_type_hash`
//! does (`json.dumps` with `", "`/`": "` separators, fields in declaration
//! order, referenced types sorted by name). Computed from the field tables
//! below instead of pasted, so adding a message type means adding its fields;
//! the tests pin the results to the hashes ROS ships.

use std::collections::BTreeSet;
use std::io;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// `type_description_interfaces/msg/FieldType` ids used by our messages.
mod id {
    pub const NESTED: u8 = 1;
    pub const UINT8: u8 = 3;
    pub const INT32: u8 = 6;
    pub const UINT32: u8 = 7;
    pub const FLOAT: u8 = 10;
    pub const DOUBLE: u8 = 11;
    pub const STRING: u8 = 17;
    /// Added to a base id for a fixed-size array.
    pub const ARRAY: u8 = 48;
    /// Added to a base id for an unbounded sequence.
    pub const SEQUENCE: u8 = 144;
}

/// One field of a message definition.
#[derive(Clone, Copy, Debug)]
pub struct FieldDesc {
    pub name: &'static str,
    pub type_id: u8,
    pub capacity: u32,
    pub nested: &'static str,
}

const fn prim(name: &'static str, type_id: u8) -> FieldDesc {
    FieldDesc {
        name,
        type_id,
        capacity: 0,
        nested: "",
    }
}

const fn nested(name: &'static str, ty: &'static str) -> FieldDesc {
    FieldDesc {
        name,
        type_id: id::NESTED,
        capacity: 0,
        nested: ty,
    }
}

const fn seq_of(mut f: FieldDesc) -> FieldDesc {
    f.type_id += id::SEQUENCE;
    f
}

const fn array_of(mut f: FieldDesc, n: u32) -> FieldDesc {
    f.type_id += id::ARRAY;
    f.capacity = n;
    f
}

/// A message type and its fields in declaration order.
pub struct TypeDesc {
    pub name: &'static str,
    pub fields: &'static [FieldDesc],
}

const TIME: &str = "builtin_interfaces/msg/Time";
const HEADER: &str = "std_msgs/msg/Header";

/// Every type reflexd speaks and every type they reference.
pub static TYPES: &[TypeDesc] = &[
    TypeDesc {
        name: TIME,
        fields: &[prim("sec", id::INT32), prim("nanosec", id::UINT32)],
    },
    TypeDesc {
        name: HEADER,
        fields: &[nested("stamp", TIME), prim("frame_id", id::STRING)],
    },
    TypeDesc {
        name: "std_msgs/msg/String",
        fields: &[prim("data", id::STRING)],
    },
    TypeDesc {
        name: "sensor_msgs/msg/Image",
        fields: &[
            nested("header", HEADER),
            prim("height", id::UINT32),
            prim("width", id::UINT32),
            prim("encoding", id::STRING),
            prim("is_bigendian", id::UINT8),
            prim("step", id::UINT32),
            seq_of(prim("data", id::UINT8)),
        ],
    },
    TypeDesc {
        name: "sensor_msgs/msg/CompressedImage",
        fields: &[
            nested("header", HEADER),
            prim("format", id::STRING),
            seq_of(prim("data", id::UINT8)),
        ],
    },
    TypeDesc {
        name: "std_msgs/msg/MultiArrayDimension",
        fields: &[
            prim("label", id::STRING),
            prim("size", id::UINT32),
            prim("stride", id::UINT32),
        ],
    },
    TypeDesc {
        name: "std_msgs/msg/MultiArrayLayout",
        fields: &[
            seq_of(nested("dim", "std_msgs/msg/MultiArrayDimension")),
            prim("data_offset", id::UINT32),
        ],
    },
    TypeDesc {
        name: "std_msgs/msg/Float32MultiArray",
        fields: &[
            nested("layout", "std_msgs/msg/MultiArrayLayout"),
            seq_of(prim("data", id::FLOAT)),
        ],
    },
    TypeDesc {
        name: "geometry_msgs/msg/Point",
        fields: &[
            prim("x", id::DOUBLE),
            prim("y", id::DOUBLE),
            prim("z", id::DOUBLE),
        ],
    },
    TypeDesc {
        name: "geometry_msgs/msg/Quaternion",
        fields: &[
            prim("x", id::DOUBLE),
            prim("y", id::DOUBLE),
            prim("z", id::DOUBLE),
            prim("w", id::DOUBLE),
        ],
    },
    TypeDesc {
        name: "geometry_msgs/msg/Pose",
        fields: &[
            nested("position", "geometry_msgs/msg/Point"),
            nested("orientation", "geometry_msgs/msg/Quaternion"),
        ],
    },
    TypeDesc {
        name: "geometry_msgs/msg/PoseWithCovariance",
        fields: &[
            nested("pose", "geometry_msgs/msg/Pose"),
            array_of(prim("covariance", id::DOUBLE), 36),
        ],
    },
    TypeDesc {
        name: "vision_msgs/msg/Point2D",
        fields: &[prim("x", id::DOUBLE), prim("y", id::DOUBLE)],
    },
    TypeDesc {
        name: "vision_msgs/msg/Pose2D",
        fields: &[
            nested("position", "vision_msgs/msg/Point2D"),
            prim("theta", id::DOUBLE),
        ],
    },
    TypeDesc {
        name: "vision_msgs/msg/BoundingBox2D",
        fields: &[
            nested("center", "vision_msgs/msg/Pose2D"),
            prim("size_x", id::DOUBLE),
            prim("size_y", id::DOUBLE),
        ],
    },
    TypeDesc {
        name: "vision_msgs/msg/ObjectHypothesis",
        fields: &[prim("class_id", id::STRING), prim("score", id::DOUBLE)],
    },
    TypeDesc {
        name: "vision_msgs/msg/ObjectHypothesisWithPose",
        fields: &[
            nested("hypothesis", "vision_msgs/msg/ObjectHypothesis"),
            nested("pose", "geometry_msgs/msg/PoseWithCovariance"),
        ],
    },
    TypeDesc {
        name: "vision_msgs/msg/Detection2D",
        fields: &[
            nested("header", HEADER),
            seq_of(nested(
                "results",
                "vision_msgs/msg/ObjectHypothesisWithPose",
            )),
            nested("bbox", "vision_msgs/msg/BoundingBox2D"),
            prim("id", id::STRING),
        ],
    },
    TypeDesc {
        name: "vision_msgs/msg/Detection2DArray",
        fields: &[
            nested("header", HEADER),
            seq_of(nested("detections", "vision_msgs/msg/Detection2D")),
        ],
    },
];

fn find(name: &str) -> Option<&'static TypeDesc> {
    TYPES.iter().find(|t| t.name == name)
}

#[derive(Serialize)]
struct JsonFieldType<'a> {
    type_id: u8,
    capacity: u32,
    string_capacity: u32,
    nested_type_name: &'a str,
}

#[derive(Serialize)]
struct JsonField<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    ty: JsonFieldType<'a>,
}

#[derive(Serialize)]
struct JsonType<'a> {
    type_name: &'a str,
    fields: Vec<JsonField<'a>>,
}

#[derive(Serialize)]
struct JsonFull<'a> {
    type_description: JsonType<'a>,
    referenced_type_descriptions: Vec<JsonType<'a>>,
}

fn json_type(t: &TypeDesc) -> JsonType<'_> {
    JsonType {
        type_name: t.name,
        fields: t
            .fields
            .iter()
            .map(|f| JsonField {
                name: f.name,
                ty: JsonFieldType {
                    type_id: f.type_id,
                    capacity: f.capacity,
                    string_capacity: 0,
                    nested_type_name: f.nested,
                },
            })
            .collect(),
    }
}

/// Python's `json.dumps(separators=(', ', ': '))` layout.
struct PySeparators;

impl serde_json::ser::Formatter for PySeparators {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// The hashed JSON text of `name`'s full type description, or `None` if the
/// type (or one it references) is not in [`TYPES`].
pub fn hashable_json(name: &str) -> Option<String> {
    let top = find(name)?;
    let mut refs = BTreeSet::new();
    let mut queue: Vec<&str> = top.fields.iter().map(|f| f.nested).collect();
    while let Some(n) = queue.pop() {
        if !n.is_empty() && refs.insert(n) {
            queue.extend(find(n)?.fields.iter().map(|f| f.nested));
        }
    }
    let full = JsonFull {
        type_description: json_type(top),
        referenced_type_descriptions: refs
            .iter()
            .map(|n| find(n).map(json_type))
            .collect::<Option<Vec<_>>>()?,
    };
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PySeparators);
    full.serialize(&mut ser).ok()?;
    String::from_utf8(out).ok()
}

/// `RIHS01_<64 hex>` for a type in [`TYPES`].
pub fn rihs01(name: &str) -> Option<String> {
    let digest = Sha256::digest(hashable_json(name)?.as_bytes());
    let mut s = String::with_capacity(7 + 64);
    s.push_str("RIHS01_");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    Some(s)
}

/// True if `s` has RIHS01's shape (`RIHS01_` + 64 lowercase hex digits).
pub fn is_rihs01(s: &str) -> bool {
    s.strip_prefix("RIHS01_").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}
