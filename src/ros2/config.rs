//! The config-facing description of a ROS 2 endpoint, mounted by the config
//! module (`src/config/ros2.rs`) in a pipeline's `[pipeline.ros2]` table:
//! `input = { topic = "/camera/image_raw", type = "sensor_msgs/msg/Image",
//! domain = 0, flavour = "rmw_zenoh" }` or, behind zenoh-bridge-ros2dds,
//! `{ topic = "/camera/image_raw", type = "sensor_msgs/msg/Image",
//! flavour = "bridge", namespace = "/bot1" }`. Stage one ([`RawRos2`]) is
//! the serde mirror with unknown keys rejected; stage two ([`Ros2Endpoint`])
//! cannot hold an invalid topic, type, domain or flavour, and knows its
//! zenoh key. Errors are plain strings naming the key: this layer sits below
//! the config module, which wraps them into its own error type.

use serde::Deserialize;

use super::keyexpr::{self, bridge_key, rmw_zenoh_key, rmw_zenoh_subscribe_key};
use super::types::RosType;

/// Highest ROS domain id (REP / rmw: 0–232).
pub const MAX_DOMAIN_ID: u32 = 232;

#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawRos2 {
    pub topic: String,
    /// Required unless the place the table is mounted implies one
    /// (generation answers, token chunks and error topics are strings).
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    pub domain: Option<u32>,
    pub flavour: Option<String>,
    pub namespace: Option<String>,
    /// `std_msgs/msg/String` outputs only: `"text"` or `"json"`; checked by
    /// the mounting config, which knows what the topic carries.
    pub format: Option<String>,
}

/// What the mounting config supplies for keys a table leaves out.
#[derive(Clone, Copy, Debug, Default)]
pub struct Defaults {
    /// `[ros2] domain`, the daemon-wide default.
    pub domain: u32,
    /// The type implied by the table's place, if only one makes sense.
    pub ty: Option<RosType>,
}

/// How the ROS 2 graph is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// Native rmw_zenoh (Jazzy, Kilted, Rolling; Humble via its rmw_zenoh
    /// backport): typed keys, attachments, liveliness tokens.
    RmwZenoh { domain: u32 },
    /// zenoh-bridge-ros2dds in front of a DDS graph: plain keys, raw CDR.
    Bridge { namespace: Option<String> },
}

/// A validated ROS 2 endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ros2Endpoint {
    /// Fully qualified ROS name, e.g. `/camera/image_raw`.
    pub topic: String,
    pub ty: RosType,
    pub flavour: Flavour,
}

/// A configuration error: the message names the key, the value and what is
/// allowed.
pub type ConfigError = String;

fn invalid(msg: String) -> ConfigError {
    msg
}

impl Ros2Endpoint {
    /// Validates `raw`; `at` is the key path of the table (e.g.
    /// `pipeline "cam": ros2.input`) used to name the offending key in
    /// errors.
    pub fn from_raw(raw: &RawRos2, at: &str, defaults: Defaults) -> Result<Self, ConfigError> {
        let topic = keyexpr::full_topic_name(&raw.topic)
            .map_err(|e| invalid(format!("{at}.topic = {:?}: {e}", raw.topic)))?;
        let ty = match (&raw.type_name, defaults.ty) {
            (Some(name), _) => RosType::parse(name).ok_or_else(|| {
                let allowed: Vec<&str> = RosType::ALL.iter().map(|t| t.name()).collect();
                invalid(format!(
                    "{at}.type = {name:?}: unsupported message type; supported: {}",
                    allowed.join(", ")
                ))
            })?,
            (None, Some(ty)) => ty,
            (None, None) => {
                return Err(invalid(format!(
                    "{at}.type: missing; name the message type, e.g. type = \"sensor_msgs/msg/Image\""
                )));
            }
        };
        let flavour = match raw.flavour.as_deref().unwrap_or("rmw_zenoh") {
            "rmw_zenoh" => Flavour::RmwZenoh {
                domain: Self::domain(raw, at, defaults.domain)?,
            },
            "bridge" => Flavour::Bridge {
                namespace: Self::namespace(raw, at)?,
            },
            other => {
                return Err(invalid(format!(
                    "{at}.flavour = {other:?}: use \"rmw_zenoh\" (ROS 2 nodes running rmw_zenoh_cpp) or \"bridge\" (zenoh-bridge-ros2dds)"
                )));
            }
        };
        if matches!(flavour, Flavour::RmwZenoh { .. }) && raw.namespace.is_some() {
            return Err(invalid(format!(
                "{at}.namespace: only valid with flavour = \"bridge\" (with rmw_zenoh, put the namespace in the topic name)"
            )));
        }
        Ok(Ros2Endpoint { topic, ty, flavour })
    }

    fn domain(raw: &RawRos2, at: &str, default: u32) -> Result<u32, ConfigError> {
        let d = raw.domain.unwrap_or(default);
        if d > MAX_DOMAIN_ID {
            return Err(invalid(format!(
                "{at}.domain = {d}: a ROS domain id is 0..={MAX_DOMAIN_ID} (ROS_DOMAIN_ID)"
            )));
        }
        Ok(d)
    }

    fn namespace(raw: &RawRos2, at: &str) -> Result<Option<String>, ConfigError> {
        if let Some(d) = raw.domain {
            return Err(invalid(format!(
                "{at}.domain = {d}: only valid with flavour = \"rmw_zenoh\" (the bridge's own config picks the DDS domain)"
            )));
        }
        match &raw.namespace {
            None => Ok(None),
            Some(ns) => keyexpr::bridge_namespace(ns)
                .map_err(|e| invalid(format!("{at}.namespace = {ns:?}: {e}"))),
        }
    }

    /// The exact key samples are published on.
    pub fn publish_key(&self) -> String {
        match &self.flavour {
            Flavour::RmwZenoh { domain } => rmw_zenoh_key(*domain, &self.topic, self.ty),
            Flavour::Bridge { namespace } => bridge_key(namespace.as_deref(), &self.topic),
        }
    }

    /// The key (possibly with a `*` type-hash chunk) to subscribe to.
    pub fn subscribe_key(&self) -> String {
        match &self.flavour {
            Flavour::RmwZenoh { domain } => rmw_zenoh_subscribe_key(*domain, &self.topic, self.ty),
            Flavour::Bridge { namespace } => bridge_key(namespace.as_deref(), &self.topic),
        }
    }

    /// rmw_zenoh wants an attachment on every sample and liveliness tokens;
    /// the bridge wants neither.
    pub fn is_rmw_zenoh(&self) -> bool {
        matches!(self.flavour, Flavour::RmwZenoh { .. })
    }
}
