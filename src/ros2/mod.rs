//! ROS 2 on zenoh, without a ROS install: everything a pipeline needs to read
//! and write ROS 2 topics, either natively through rmw_zenoh (typed keys, an
//! attachment on every sample, liveliness tokens for the ROS graph) or behind
//! zenoh-bridge-ros2dds (plain keys, raw CDR). In the data flow, ingress
//! decodes payloads with [`msg`] / [`vision`] and the attachment with
//! [`attachment`]; egress encodes with the same types and stamps each sample
//! with a [`publisher::PublisherState`]; the service declares the
//! [`liveliness`] tokens; [`config`] validates the `ros2 = {...}` table. This
//! module owns no zenoh entity and no thread: every function is pure or works
//! on values the caller passes in. Formats and sources: `docs/ros2.md`.

pub mod attachment;
pub mod cdr;
pub mod config;
pub mod error;
pub mod keyexpr;
pub mod liveliness;
pub mod msg;
pub mod publisher;
pub mod typehash;
pub mod types;
pub mod vision;

#[cfg(test)]
mod tests;

pub use attachment::{Attachment, AttachmentFormat};
pub use config::{Defaults, Flavour, RawRos2, Ros2Endpoint};
pub use error::{AttachmentError, DecodeError, EncodeError, TokenError};
pub use msg::{CompressedImage, Float32MultiArray, Header, Image, StringMsg, Time};
pub use publisher::PublisherState;
pub use types::RosType;
pub use vision::Detection2DArray;
