//! reflexd: a real-time inference daemon. Data flows one way:
//! `io::ingress` (zenoh subscriber callbacks: decode, validate) → `sched`
//! (bounded lock-free priority queues) → `worker` threads (`infer`: ONNX
//! Runtime sessions; [`llm`]: generation steps) → `io::egress` / `io::tokens`
//! (zenoh publishers). [`daemon`] builds the stages from a [`Config`] and owns
//! start-up and teardown; [`supervise`] reports to systemd; [`wire`] defines
//! the message formats; [`ros2`] the ROS 2 formats (CDR, rmw_zenoh keys,
//! attachments, graph tokens).
//!
//! Layers, lowest first (a module imports only lower layers; enforced by
//! `tests/architecture.rs`): `error`, `fault`, `tensor`, `logging` → `ros2` →
//! `obs`, `config` → `wire` → `sched` → `job` → `infer` → `llm` → `ctx` → `io` → `worker` →
//! `daemon` → `supervise` → `check`, `client`, `ops`.

pub mod check;
pub mod client;
pub mod config;
pub(crate) mod ctx;
pub mod daemon;
pub mod error;
pub mod fault;
pub mod infer;
pub(crate) mod io;
pub(crate) mod job;
pub mod llm;
pub mod logging;
pub mod obs;
pub mod ops;
pub mod ros2;
// Public only so that benches/sched.rs can drive the scheduler alone.
#[doc(hidden)]
pub mod sched;
pub mod supervise;
pub mod tensor;
pub mod wire;
pub(crate) mod worker;

pub use config::Config;
pub use daemon::Daemon;
pub use supervise::run;
