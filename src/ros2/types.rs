//! The message types a pipeline may name in its `ros2 = { type = ... }`
//! table, with the three spellings each needs: the ROS name users write
//! (`sensor_msgs/msg/Image`), the DDS name rmw_zenoh puts in keys and tokens
//! (`sensor_msgs::msg::dds_::Image_`) and the RIHS01 hash that ends every
//! rmw_zenoh key.

use std::sync::OnceLock;

use super::typehash;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RosType {
    String,
    Image,
    CompressedImage,
    Float32MultiArray,
    Detection2DArray,
}

impl RosType {
    pub const ALL: [RosType; 5] = [
        RosType::String,
        RosType::Image,
        RosType::CompressedImage,
        RosType::Float32MultiArray,
        RosType::Detection2DArray,
    ];

    /// The ROS 2 interface name, `pkg/msg/Name`.
    pub fn name(self) -> &'static str {
        match self {
            RosType::String => "std_msgs/msg/String",
            RosType::Image => "sensor_msgs/msg/Image",
            RosType::CompressedImage => "sensor_msgs/msg/CompressedImage",
            RosType::Float32MultiArray => "std_msgs/msg/Float32MultiArray",
            RosType::Detection2DArray => "vision_msgs/msg/Detection2DArray",
        }
    }

    /// Whether the type carries a camera frame (raw or compressed).
    pub fn is_image(self) -> bool {
        matches!(self, RosType::Image | RosType::CompressedImage)
    }

    /// Accepts `pkg/msg/Name` and the short `pkg/Name` that `ros2 topic pub`
    /// also takes.
    pub fn parse(s: &str) -> Option<RosType> {
        RosType::ALL.into_iter().find(|t| {
            let full = t.name();
            s == full || s == full.replacen("/msg/", "/", 1)
        })
    }

    /// The DDS type name rmw_zenoh uses in keys and liveliness tokens.
    pub fn dds_name(self) -> String {
        let (pkg, rest) = self.name().split_once("/msg/").expect("pkg/msg/Name");
        format!("{pkg}::msg::dds_::{rest}_")
    }

    /// `RIHS01_<hex>`, computed once from the type description.
    pub fn type_hash(self) -> &'static str {
        static HASHES: [OnceLock<String>; 5] = [const { OnceLock::new() }; 5];
        let i = RosType::ALL
            .iter()
            .position(|t| *t == self)
            .expect("in ALL");
        HASHES[i].get_or_init(|| {
            typehash::rihs01(self.name()).expect("every RosType has a type description")
        })
    }
}

impl std::fmt::Display for RosType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
