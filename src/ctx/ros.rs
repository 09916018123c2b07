//! The ROS 2 side of the daemon context: per pipeline, the ROS topics it
//! publishes on, each with its declared zenoh publisher and its attachment
//! state (GID and sequence numbers). `io::ros2` declares them before the
//! context is built (their GIDs derive from the liveliness tokens it plans),
//! so a worker, an ingress callback or a delivery thread reaches a topic by
//! the pipeline's index, without a lookup or a lock.

use crate::config::ros2::Ros2Out;
use crate::ros2::PublisherState;

/// One ROS topic reflexd publishes on.
pub struct RosTopic {
    pub out: Ros2Out,
    pub publisher: zenoh::pubsub::Publisher<'static>,
    /// GID and sequence counter of rmw_zenoh attachments; `None` behind
    /// zenoh-bridge-ros2dds, which carries no attachment.
    pub state: Option<PublisherState>,
}

/// A pipeline's ROS topics (all `None` when it has no `[pipeline.ros2]`).
#[derive(Default)]
pub struct RosPipe {
    pub output: Option<RosTopic>,
    pub tokens: Option<RosTopic>,
    pub error: Option<RosTopic>,
}

/// Every pipeline's ROS topics, indexed like `Ctx::tensors` / `Ctx::gens`,
/// and the liveliness tokens that announce them (declared when intake
/// opens, in this order: nodes first).
#[derive(Default)]
pub struct RosOut {
    pub tensors: Vec<RosPipe>,
    pub gens: Vec<RosPipe>,
    pub graph: Vec<String>,
}
