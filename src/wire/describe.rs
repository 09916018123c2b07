//! The description a daemon gives of itself on `<node>/describe` (a zenoh
//! queryable, docs/protocol.md § Discovery): every pipeline with the keys
//! and ROS 2 topics it reads and writes, its tensor signature, stages,
//! level, deadline and provider. JSON, built once a daemon is ready; read
//! by `reflexd describe`, which prints it like `ros2 topic list -t`.

use serde::{Deserialize, Serialize};

/// The whole reply.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Description {
    /// `metrics.node`: the key prefix of this daemon.
    pub node: String,
    pub zid: String,
    pub version: String,
    /// The ROS 2 node, when any pipeline has ROS 2 topics.
    pub ros2: Option<RosNode>,
    pub pipelines: Vec<PipelineInfo>,
}

/// The ROS 2 node reflexd announces.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RosNode {
    /// Fully qualified, e.g. `/reflexd`.
    pub name: String,
    /// rmw_zenoh domains it has topics in.
    pub domains: Vec<u32>,
}

/// One pipeline.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PipelineInfo {
    pub name: String,
    /// `tensor` or `generate`.
    pub kind: String,
    pub level: String,
    pub deadline_ms: f64,
    pub provider: String,
    pub model: String,
    /// zenoh keys, inputs first.
    pub keys: Vec<KeyInfo>,
    /// ROS 2 topics, inputs first.
    pub ros2: Vec<TopicInfo>,
    /// Model inputs a message carries and outputs a prediction publishes,
    /// as `name: dtype[dims]` (`?` for a dynamic dimension).
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Processing around the model: input stages (e.g. image
    /// pre-processing) and answer stages; empty when the model's tensors go
    /// in and out as they are.
    pub stages: Vec<String>,
    /// Most requests per model run (dynamic batching or continuous batching).
    pub max_batch: usize,
}

/// One zenoh key of a pipeline.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct KeyInfo {
    /// `input`, `output`, `error`, `cancel` or `query`.
    pub role: String,
    pub key: String,
    /// What travels on it, e.g. `safetensors`, `JSON command`.
    pub format: String,
}

/// One ROS 2 topic of a pipeline.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TopicInfo {
    /// `input`, `output`, `tokens` or `error`.
    pub role: String,
    pub topic: String,
    /// `pkg/msg/Name`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// `rmw_zenoh` or `bridge`.
    pub flavour: String,
    /// rmw_zenoh only.
    pub domain: Option<u32>,
    /// The zenoh key samples travel on (a subscription's may end in `*`).
    pub key: String,
}
