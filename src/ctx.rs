//! The daemon's context: built once at start-up, read by every top-level
//! stage (ingress and egress in `io`, the workers), immutable afterwards
//! except for counters and queues. One record per pipeline ([`TensorPipe`],
//! [`GenPipe`]) holds its config, interface, counters and queues, so a stage
//! reaches everything about a pipeline through one index. It sits below the
//! stages that use it and knows none of them.

pub mod ros;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use crate::config::{Config, GeneratorConfig, PipelineConfig};
use crate::infer::{Spec, StreamState};
use crate::job::Job;
use crate::llm::registry::Registry;
use crate::llm::tools::PipeTools;
use crate::llm::{DecodeBatch, DecodeSlots, Generation, LlmShared};
use crate::obs::batch::{BatchStats, DecodeStats};
use crate::obs::health::Progress;
use crate::obs::ratelimit::LogLimiter;
use crate::obs::{PipelineStats, WorkerStats};
use crate::sched::{self, Scheduler};
use crate::wire::command::CommandLimits;

/// What the daemon's scheduler carries.
pub struct Kinds;

impl sched::Kinds for Kinds {
    type Job = Job;
    type Gen = Generation;
    type GenBatch = DecodeBatch;
    type State = StreamState;
}

pub type Sched = Scheduler<Kinds>;
pub type Work = sched::Work<Kinds>;
pub type StreamSlot = sched::StreamSlot<Kinds>;
pub type Batch = sched::Batch<Kinds>;

/// Where a generation's messages go (delivered by `io`, off the workers).
pub enum Delivery {
    /// Published on `<output>/<id>`.
    Topic(String),
    /// Replies to a zenoh `get`; the query is answered when dropped.
    Query(zenoh::query::Query),
    /// A prompt that came on a ROS 2 topic: published on `<output>/<id>`
    /// and on the pipeline's ROS 2 answer and token topics.
    Ros2(String),
}

/// Everything about one tensor pipeline.
pub struct TensorPipe {
    pub cfg: PipelineConfig,
    pub spec: Spec,
    /// Model file name, as reported in predictions and metrics.
    pub model_name: String,
    pub stats: PipelineStats,
    /// Batching counters (`None` when not batched).
    pub batch_stats: Option<BatchStats>,
    /// Reply metadata that never changes, pre-serialised per worker
    /// (pipeline, model, provider, worker), indexed by worker id.
    pub fixed_meta: Vec<String>,
    /// Repeated failure logs, rate-limited per code.
    pub log: LogLimiter,
}

/// Everything about one generation pipeline.
pub struct GenPipe {
    pub cfg: GeneratorConfig,
    pub llm: Arc<LlmShared>,
    pub limits: CommandLimits,
    /// Most prompt tokens after templating (configured or derived from the
    /// model's context and `max_tokens`).
    pub max_prompt_tokens: usize,
    pub provider: &'static str,
    pub registry: Registry<Delivery>,
    /// Continuous batching, per priority level (`None` for levels the
    /// pipeline cannot run at, or all when `max_batch = 1`).
    pub decode: Vec<Option<DecodeSlots>>,
    pub decode_stats: DecodeStats,
    pub stats: PipelineStats,
    /// Repeated failure logs, rate-limited per code.
    pub log: LogLimiter,
    /// `[[pipeline.tool]]`: grammar compiler, gate and rate limiters
    /// (`None` when the pipeline offers no tools).
    pub tools: Option<PipeTools>,
}

impl GenPipe {
    /// The decode batch of `level`, if this pipeline batches.
    pub fn decode_slots(&self, level: usize) -> Option<&DecodeSlots> {
        self.decode.get(level).and_then(|s| s.as_ref())
    }

    /// Generations waiting to join a decode batch (teardown).
    pub fn drain_joiners(&self) -> impl Iterator<Item = Box<Generation>> + '_ {
        self.decode.iter().flatten().flat_map(|s| s.drain())
    }
}

impl Ctx {
    /// Reports every suppressed failure count (periodic log summary).
    pub fn flush_logs(&self) {
        for tp in &self.tensors {
            tp.log.flush();
        }
        for gp in &self.gens {
            gp.log.flush();
        }
    }
}

pub struct Ctx {
    pub config: Config,
    pub tensors: Vec<TensorPipe>,
    pub gens: Vec<GenPipe>,
    pub session: zenoh::Session,
    pub sched: Arc<Sched>,
    /// One counter for two events, message receipt and run start, so a
    /// prediction's `recv_order`/`run_order` show exactly which jobs started
    /// between its arrival and its run.
    pub order: AtomicU64,
    /// Per-worker "model run started at" stamps, read by the watchdog.
    pub progress: Progress,
    /// Busy time per worker, indexed by worker id.
    pub workers: Vec<WorkerStats>,
    /// When the daemon finished loading (uptime and utilisation base).
    pub started: Instant,
    /// The fleet side (`io::fleet`: offload routes and their targets), set
    /// once when intake opens; type-erased because it lives above `ctx`.
    pub fleet: std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
    /// ROS 2 topics reflexd publishes on, per pipeline.
    pub ros2: ros::RosOut,
}
