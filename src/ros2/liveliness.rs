//! rmw_zenoh graph tokens. `ros2 node list` / `ros2 topic list` see only what
//! is announced as liveliness tokens under `@ros2_lv/<domain>/**`
//! (rmw_zenoh `liveliness_utils.cpp`, design.md "Graph Cache"):
//!
//! ```text
//! node:     @ros2_lv/<domain>/<zid>/<nid>/<nid>/NN/<enclave>/<ns>/<node>
//! endpoint: @ros2_lv/<domain>/<zid>/<nid>/<eid>/MP|MS|SS|SC/<enclave>/<ns>/<node>/<topic>/<type>/<hash>/<qos>
//! ```
//!
//! Names have every `/` replaced by `%` (so `/` alone becomes `%`). The QoS
//! chunk is `R:D:H,depth:DLs,DLns:LSs,LSns:LIV,LEs,LEns`, each value left
//! empty when it equals rmw_zenoh's default. [`parse_token`] follows
//! `Entity::make` / `keyexpr_to_qos` so tests can check that what we declare
//! is what rmw_zenoh's graph cache will read back.

use super::error::TokenError;

pub const ADMIN_SPACE: &str = "@ros2_lv";

/// rmw_zenoh's default history depth (`RMW_ZENOH_DEFAULT_HISTORY_DEPTH`).
pub const DEFAULT_DEPTH: u32 = 42;

/// `/` → `%`, as rmw_zenoh's `mangle_name`.
pub fn mangle(name: &str) -> String {
    name.replace('/', "%")
}

/// `%` → `/`, as rmw_zenoh's `demangle_name`.
pub fn demangle(chunk: &str) -> String {
    chunk.replace('%', "/")
}

/// What a token announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntityKind {
    Node,
    Publisher,
    Subscription,
    Service,
    Client,
}

impl EntityKind {
    pub fn code(self) -> &'static str {
        match self {
            EntityKind::Node => "NN",
            EntityKind::Publisher => "MP",
            EntityKind::Subscription => "MS",
            EntityKind::Service => "SS",
            EntityKind::Client => "SC",
        }
    }

    fn from_code(s: &str) -> Option<Self> {
        [
            EntityKind::Node,
            EntityKind::Publisher,
            EntityKind::Subscription,
            EntityKind::Service,
            EntityKind::Client,
        ]
        .into_iter()
        .find(|k| k.code() == s)
    }
}

/// The node that owns the endpoints (one per daemon).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    pub domain: u32,
    /// `session.zid().to_string()`.
    pub zid: String,
    /// Decimal id, unique within the session.
    pub node_id: u64,
    /// Security enclave; `/` when unused.
    pub enclave: String,
    /// Node namespace, `/` for the root.
    pub namespace: String,
    pub name: String,
}

impl NodeIdentity {
    fn prefix(&self, entity_id: u64, kind: EntityKind) -> String {
        format!(
            "{ADMIN_SPACE}/{}/{}/{}/{entity_id}/{}/{}/{}/{}",
            self.domain,
            self.zid,
            self.node_id,
            kind.code(),
            mangle(&self.enclave),
            mangle(&self.namespace),
            mangle(&self.name)
        )
    }

    /// The `NN` token (its entity id is the node id).
    pub fn node_token(&self) -> String {
        self.prefix(self.node_id, EntityKind::Node)
    }

    /// An `MP`/`MS`/`SS`/`SC` token. `ty` is the DDS type name
    /// (`sensor_msgs::msg::dds_::Image_`), `hash` the `RIHS01_…` string.
    pub fn endpoint_token(&self, ep: &EndpointInfo<'_>) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.prefix(ep.entity_id, ep.kind),
            mangle(ep.topic),
            mangle(ep.type_name),
            mangle(ep.type_hash),
            ep.qos.to_chunk()
        )
    }
}

/// One endpoint for [`NodeIdentity::endpoint_token`].
#[derive(Clone, Debug)]
pub struct EndpointInfo<'a> {
    /// Decimal id, unique within the session (distinct from the node id).
    pub entity_id: u64,
    pub kind: EntityKind,
    /// Fully qualified topic name.
    pub topic: &'a str,
    pub type_name: &'a str,
    pub type_hash: &'a str,
    pub qos: Qos,
}

macro_rules! rmw_policy {
    ($name:ident { $($variant:ident = $code:literal),* $(,)? }) => {
        /// An rmw QoS policy with its `rmw_qos_*_policy_e` value.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),* }

        impl $name {
            pub fn code(self) -> u8 {
                match self { $($name::$variant => $code),* }
            }
            fn from_code(c: u8) -> Option<Self> {
                match c { $($code => Some($name::$variant),)* _ => None }
            }
        }
    };
}

rmw_policy!(Reliability { SystemDefault = 0, Reliable = 1, BestEffort = 2, Unknown = 3, BestAvailable = 4 });
rmw_policy!(Durability { SystemDefault = 0, TransientLocal = 1, Volatile = 2, Unknown = 3, BestAvailable = 4 });
rmw_policy!(History { SystemDefault = 0, KeepLast = 1, KeepAll = 2, Unknown = 3 });
rmw_policy!(Liveliness { SystemDefault = 0, Automatic = 1, ManualByTopic = 3, Unknown = 4, BestAvailable = 5 });

/// `sec`/`nsec` of an rmw duration; `None` parts are rmw_zenoh's default
/// (infinite).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RmwDuration {
    pub sec: Option<u64>,
    pub nsec: Option<u64>,
}

/// The QoS profile carried in an endpoint token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Qos {
    pub reliability: Reliability,
    pub durability: Durability,
    pub history: History,
    pub depth: u32,
    pub deadline: RmwDuration,
    pub lifespan: RmwDuration,
    pub liveliness: Liveliness,
    pub lease: RmwDuration,
}

impl Default for Qos {
    /// rmw_zenoh's defaults: reliable, volatile, keep-last 42, infinite.
    fn default() -> Self {
        Qos {
            reliability: Reliability::Reliable,
            durability: Durability::Volatile,
            history: History::KeepLast,
            depth: DEFAULT_DEPTH,
            deadline: RmwDuration::default(),
            lifespan: RmwDuration::default(),
            liveliness: Liveliness::Automatic,
            lease: RmwDuration::default(),
        }
    }
}

fn opt<T: PartialEq + ToString>(v: T, default: T) -> String {
    if v == default {
        String::new()
    } else {
        v.to_string()
    }
}

fn dur(d: RmwDuration) -> String {
    let s = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    format!("{},{}", s(d.sec), s(d.nsec))
}

impl Qos {
    /// rclcpp's default publisher/subscription profile: reliable, keep-last 10.
    pub fn reliable(depth: u32) -> Qos {
        Qos {
            depth,
            ..Qos::default()
        }
    }

    /// rclcpp's `SensorDataQoS`: best effort, keep-last 5.
    pub fn sensor_data() -> Qos {
        Qos {
            reliability: Reliability::BestEffort,
            depth: 5,
            ..Qos::default()
        }
    }

    /// The token chunk (`qos_to_keyexpr`).
    pub fn to_chunk(&self) -> String {
        let d = Qos::default();
        format!(
            "{}:{}:{},{}:{}:{}:{},{}",
            opt(self.reliability.code(), d.reliability.code()),
            opt(self.durability.code(), d.durability.code()),
            opt(self.history.code(), d.history.code()),
            opt(self.depth, d.depth),
            dur(self.deadline),
            dur(self.lifespan),
            opt(self.liveliness.code(), d.liveliness.code()),
            dur(self.lease),
        )
    }

    /// Parses a QoS chunk the way `keyexpr_to_qos` does: at least 6
    /// `:`-parts, the history/deadline/lifespan parts with 2 `,`-values and
    /// the liveliness part with 3; empty values take the default.
    pub fn parse_chunk(s: &str) -> Result<Qos, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() < 6 {
            return Err(format!("QoS {s:?} has {} ':'-parts, need 6", parts.len()));
        }
        let sub = |i: usize, n: usize| -> Result<Vec<&str>, String> {
            let v: Vec<&str> = parts[i].split(',').collect();
            if v.len() < n {
                return Err(format!("QoS part {:?} needs {n} ','-values", parts[i]));
            }
            Ok(v)
        };
        let (hist, dl, ls, lv) = (sub(2, 2)?, sub(3, 2)?, sub(4, 2)?, sub(5, 3)?);
        let d = Qos::default();
        Ok(Qos {
            reliability: policy(parts[0], d.reliability, Reliability::from_code)?,
            durability: policy(parts[1], d.durability, Durability::from_code)?,
            history: policy(hist[0], d.history, History::from_code)?,
            depth: number(hist[1])?.map_or(Ok(d.depth), |n| {
                u32::try_from(n).map_err(|_| format!("depth {n} out of range"))
            })?,
            deadline: duration(&dl)?,
            lifespan: duration(&ls)?,
            liveliness: policy(lv[0], d.liveliness, Liveliness::from_code)?,
            lease: duration(&lv[1..])?,
        })
    }
}

fn number(s: &str) -> Result<Option<u64>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("QoS value {s:?} is not a decimal number"));
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("QoS value {s:?} overflows"))
}

fn policy<T>(s: &str, default: T, from: fn(u8) -> Option<T>) -> Result<T, String> {
    match number(s)? {
        None => Ok(default),
        Some(n) => u8::try_from(n)
            .ok()
            .and_then(from)
            .ok_or_else(|| format!("QoS policy value {n} is not defined")),
    }
}

fn duration(v: &[&str]) -> Result<RmwDuration, String> {
    Ok(RmwDuration {
        sec: number(v[0])?,
        nsec: number(v[1])?,
    })
}

/// A token read back from a key expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedToken {
    pub domain: u32,
    pub zid: String,
    pub node_id: String,
    pub entity_id: String,
    pub kind: EntityKind,
    pub enclave: String,
    pub namespace: String,
    pub node_name: String,
    /// `None` for `NN` tokens.
    pub topic: Option<ParsedTopic>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedTopic {
    pub name: String,
    pub type_name: String,
    pub type_hash: String,
    pub qos: Qos,
}

/// Parses a liveliness key expression with rmw_zenoh's rules: `/`-chunks, at
/// least 9 (13 for endpoints), none empty, admin space `@ros2_lv`, a known
/// entity code, a numeric domain, a valid QoS chunk.
pub fn parse_token(token: &str) -> Result<ParsedToken, TokenError> {
    let err = |reason: String| TokenError {
        token: token.to_string(),
        reason,
    };
    let parts: Vec<&str> = token.split('/').collect();
    if parts.len() < 9 {
        return Err(err(format!("{} chunks, need at least 9", parts.len())));
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err("empty chunk".into()));
    }
    if parts[0] != ADMIN_SPACE {
        return Err(err(format!(
            "admin space {:?} is not {ADMIN_SPACE:?}",
            parts[0]
        )));
    }
    let kind = EntityKind::from_code(parts[5])
        .ok_or_else(|| err(format!("unknown entity {:?}", parts[5])))?;
    let domain = parts[1]
        .parse()
        .map_err(|_| err(format!("domain {:?} is not a number", parts[1])))?;
    let topic = if kind == EntityKind::Node {
        None
    } else {
        if parts.len() < 13 {
            return Err(err(format!("{} chunks, an endpoint needs 13", parts.len())));
        }
        Some(ParsedTopic {
            name: demangle(parts[9]),
            type_name: demangle(parts[10]),
            type_hash: demangle(parts[11]),
            qos: Qos::parse_chunk(parts[12]).map_err(err)?,
        })
    };
    Ok(ParsedToken {
        domain,
        zid: parts[2].to_string(),
        node_id: parts[3].to_string(),
        entity_id: parts[4].to_string(),
        kind,
        enclave: demangle(parts[6]),
        namespace: demangle(parts[7]),
        node_name: demangle(parts[8]),
        topic,
    })
}
