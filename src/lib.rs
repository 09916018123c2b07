//! reflexd: a real-time inference daemon. Data flows one way:
//! [`ingress`] (zenoh subscriber callbacks: decode, validate) →
//! [`scheduler`] (bounded lock-free priority queues) → [`worker`] threads
//! ([`pipeline`] + [`engine`]: ONNX Runtime sessions) → [`egress`] (zenoh
//! publishers). [`service`] wires the stages from a [`config::Config`] and owns
//! start-up and teardown; [`wire`] defines the message formats.

pub mod batch;
pub mod check;
pub mod client;
pub mod config;
pub mod egress;
pub mod engine;
pub mod error;
pub mod health;
pub mod ingress;
pub mod llm;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod ortlib;
pub mod pipeline;
pub mod ros2;
pub mod scheduler;
pub mod service;
pub mod stats;
pub mod systemd;
pub mod wire;
pub mod worker;

pub use config::Config;
pub use service::{Daemon, run};
