//! How reflexd appears in the ROS graph: the rmw_zenoh liveliness tokens it
//! declares, planned once from the config and the session's zid. One node
//! (`NN`) per domain it has rmw_zenoh topics in, then one `MS` token per
//! input and one `MP` token per topic it publishes on, in config order.
//! Node and entity ids are unique within the session, as rmw_zenoh's are.
//! A publisher's GID is derived from its `MP` token, so the plan must exist
//! before the publishers do. Topics behind zenoh-bridge-ros2dds get no
//! token: the bridge announces DDS entities itself.

use std::collections::BTreeSet;

use crate::config::Config;
use crate::config::ros2::PipelineRos2;
use crate::io::egress::Pipe;
use crate::ros2::liveliness::{EndpointInfo, EntityKind, NodeIdentity, Qos};
use crate::ros2::{Flavour, Ros2Endpoint, RosType};

/// Depth announced for prediction and error topics (rclcpp's default).
pub const OUTPUT_DEPTH: u32 = 10;

/// One planned endpoint token.
#[derive(Clone, Debug)]
pub struct Planned {
    pub pipe: Pipe,
    /// `input`, `output`, `tokens` or `error`.
    pub role: &'static str,
    pub token: String,
}

/// Every token reflexd declares, nodes first.
#[derive(Clone, Debug, Default)]
pub struct GraphPlan {
    pub nodes: Vec<String>,
    pub endpoints: Vec<Planned>,
}

impl GraphPlan {
    /// The token of `pipe`'s `role` topic, if it is an rmw_zenoh topic.
    pub fn token(&self, pipe: Pipe, role: &str) -> Option<&str> {
        self.endpoints
            .iter()
            .find(|p| p.pipe == pipe && p.role == role)
            .map(|p| p.token.as_str())
    }

    /// All tokens in declaration order.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .map(String::as_str)
            .chain(self.endpoints.iter().map(|p| p.token.as_str()))
    }
}

/// The pipelines' ROS tables, with their [`Pipe`], in config order.
pub fn pipes(config: &Config) -> impl Iterator<Item = (Pipe, &PipelineRos2)> {
    let t = config.pipelines.iter().enumerate();
    let g = config.generators.iter().enumerate();
    t.filter_map(|(i, p)| Some((Pipe::Tensor(i), p.ros2.as_ref()?)))
        .chain(g.filter_map(|(i, p)| Some((Pipe::Gen(i), p.ros2.as_ref()?))))
}

/// The QoS announced for an endpoint: camera frames are read like rclcpp's
/// `SensorDataQoS`; generation text is delivered without drops (announced
/// keep-all); everything else is rclcpp's default (reliable, keep-last 10).
fn qos(pipe: Pipe, role: &str, ty: RosType) -> Qos {
    use crate::ros2::liveliness::History;
    match (pipe, role, ty) {
        (_, "input", RosType::Image | RosType::CompressedImage) => Qos::sensor_data(),
        (Pipe::Gen(_), "output" | "tokens", _) => Qos {
            history: History::KeepAll,
            ..Qos::reliable(OUTPUT_DEPTH)
        },
        _ => Qos::reliable(OUTPUT_DEPTH),
    }
}

fn domain(e: &Ros2Endpoint) -> Option<u32> {
    match e.flavour {
        Flavour::RmwZenoh { domain } => Some(domain),
        Flavour::Bridge { .. } => None,
    }
}

/// Plans the tokens for `config` on a session with id `zid`.
pub fn plan(config: &Config, zid: &str) -> GraphPlan {
    let domains: BTreeSet<u32> = pipes(config)
        .flat_map(|(_, r)| r.endpoints().filter_map(|(_, e)| domain(e)))
        .collect();
    let node = |domain: u32, node_id: u64| NodeIdentity {
        domain,
        zid: zid.to_string(),
        node_id,
        enclave: "/".into(),
        namespace: config.ros2.namespace.clone(),
        name: config.ros2.name.clone(),
    };
    let ids: Vec<(u32, NodeIdentity)> = domains
        .iter()
        .enumerate()
        .map(|(i, &d)| (d, node(d, i as u64)))
        .collect();
    let mut next_id = ids.len() as u64;
    let mut endpoints = Vec::new();
    for (pipe, r) in pipes(config) {
        for (role, e) in r.endpoints() {
            let Some(d) = domain(e) else { continue };
            let (_, n) = ids.iter().find(|(x, _)| *x == d).expect("collected above");
            let kind = if role == "input" {
                EntityKind::Subscription
            } else {
                EntityKind::Publisher
            };
            let token = n.endpoint_token(&EndpointInfo {
                entity_id: next_id,
                kind,
                topic: &e.topic,
                type_name: &e.ty.dds_name(),
                type_hash: e.ty.type_hash(),
                qos: qos(pipe, role, e.ty),
            });
            next_id += 1;
            endpoints.push(Planned { pipe, role, token });
        }
    }
    GraphPlan {
        nodes: ids.iter().map(|(_, n)| n.node_token()).collect(),
        endpoints,
    }
}
