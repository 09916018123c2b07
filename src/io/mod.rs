//! The daemon's zenoh side, and the only place that talks to the network:
//! [`zenoh`] builds the session's configuration; [`ingress`] (tensor
//! messages) and [`commands`] (generation commands, cancels, queries) are the
//! subscriber callbacks that decode, validate and queue work without
//! blocking; [`egress`] publishes predictions and every failure; [`tokens`]
//! streams generation messages from per-generation outboxes on delivery
//! threads, so no worker ever waits for a client; [`metrics`] exports the
//! counters ([`prom`]: the Prometheus endpoint; [`outcomes`]: which
//! outcome series a pipeline can have); [`fleet`] offloads work to other
//! daemons and serves theirs; [`ros2`] does intake and publishing for ROS 2
//! topics (rmw_zenoh or zenoh-bridge-ros2dds) and announces the ROS node;
//! [`describe`] answers `<node>/describe`. Everything here reads the daemon
//! context ([`crate::ctx`]).

pub mod commands;
pub mod describe;
pub mod egress;
pub mod fleet;
pub mod ingress;
pub mod metrics;
pub mod outcomes;
pub mod prom;
pub mod ros2;
pub mod tokens;
pub mod zenoh;
