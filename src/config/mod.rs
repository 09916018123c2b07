//! Configuration: the first thing the daemon reads and the only place that
//! decides what runs. Stage one is a raw serde mirror of the TOML file with
//! unknown keys rejected; stage two ([`Config::from_raw`]) turns it into types
//! that cannot hold invalid values, and every error names the key, the value
//! and what is allowed. Nothing downstream re-validates.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::tensor::Dtype;
pub use answer::{AnswerConfig, AnswerKind, Outputs};
pub use image::PreSpec;

/// Default upper bound on one message's payload (bytes).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 16 << 20;
/// Default upper bound on one tensor's element count.
pub const DEFAULT_MAX_ELEMENTS: usize = 4 << 20;
/// Default number of live streams a `latest` pipeline tracks.
pub const DEFAULT_MAX_STREAMS: usize = 64;
/// Default idle time after which a stream's carried state is reset.
pub const DEFAULT_IDLE_RESET: Duration = Duration::from_secs(2);
/// Upper bound on `max_batch`: the batch-size histogram has one bucket per
/// size, and larger batches only add latency on the boards we target.
pub const MAX_BATCH_LIMIT: usize = 256;

/// Why a config was refused. Each variant's message is complete on its own
/// (path and cause); none has an error `source`, so a printer that walks
/// causes (`{e:#}` of anyhow) shows the OS or TOML error once, not twice.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("config file {path}: {cause}")]
    Parse {
        path: PathBuf,
        cause: Box<toml::de::Error>,
    },
    #[error("config: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

pub mod answer;
mod chain;
mod common;
pub mod fleet;
mod generate;
pub mod image;
pub mod labels;
pub mod metrics;
pub mod ocr;
mod provider;
mod raw;
pub mod ros2;
mod service;
mod session;
mod tensor;
#[cfg(test)]
mod tests;
mod thread_policy;
mod warmup;
mod workers;

pub use fleet::{FleetConfig, OffloadConfig, OffloadWhen};
pub use generate::{DEFAULT_MAX_MESSAGES, DEFAULT_MAX_UNSENT};
pub use metrics::MetricsConfig;
pub use provider::{ArenaStrategy, CudaOptions, Int8, Provider, TensorRtOptions};
pub use raw::*;
use service::service_config;
pub use service::*;
pub use thread_policy::ThreadPolicy;
pub use warmup::WarmupShape;

// ---------------------------------------------------------------- stage two

#[derive(Clone, Debug)]
pub struct Config {
    pub zenoh: ZenohConfig,
    pub runtime: RuntimeConfig,
    pub limits: Limits,
    /// Priority level names, highest first.
    pub levels: Vec<String>,
    pub workers: Vec<WorkerConfig>,
    /// Tensor pipelines (`kind = "tensor"`, the default).
    pub pipelines: Vec<PipelineConfig>,
    /// Generation pipelines (`kind = "generate"`).
    pub generators: Vec<GeneratorConfig>,
    /// Supervision: watchdog, status reports, drain (see [`crate::supervise`]).
    pub service: ServiceConfig,
    pub metrics: MetricsConfig,
    /// Offload between daemons (`[fleet]`, each pipeline's `offload`).
    pub fleet: FleetConfig,
    /// The ROS 2 node reflexd appears as (`[ros2]`).
    pub ros2: ros2::Ros2Node,
}

/// Where speculative decoding takes its drafts from.
#[derive(Clone, Debug, PartialEq)]
pub enum Speculation {
    Off,
    /// n-grams of the prompt and the text so far.
    PromptLookup,
    /// A smaller model of the same tokenizer (a converted model directory).
    Draft(PathBuf),
}

/// A generation pipeline: an LLM answering commands with streamed tokens.
#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    pub name: String,
    /// Directory with model.onnx, tokenizer.json and generation.json.
    pub model: PathBuf,
    /// Command topic (JSON commands).
    pub input: String,
    /// Token topics are `<output>/<id>`.
    pub output: String,
    pub error_key: String,
    pub cancel_key: String,
    pub query_key: String,
    pub level: usize,
    /// Default deadline of a generation (a command may set its own).
    pub deadline: Duration,
    pub providers: Vec<Provider>,
    pub fallback: Fallback,
    pub max_generations: usize,
    pub max_tokens: u32,
    pub default_max_tokens: u32,
    pub max_prompt_chars: usize,
    /// Most prompt tokens after chat templating; `None`: derived from the
    /// model's context and `max_tokens` at start-up.
    pub max_prompt_tokens: Option<usize>,
    /// Most messages in one command.
    pub max_messages: usize,
    /// Most prompt tokens prefilled per scheduler turn.
    pub prefill_chunk: usize,
    /// Most messages of one generation produced but not yet delivered to
    /// its client; past it the generation ends `slow_consumer`.
    pub max_unsent: usize,
    /// Continuous batching: most generations decoded together in one
    /// model run per step (1 = each generation steps alone).
    pub max_batch: usize,
    /// Speculative decoding of greedy requests.
    pub speculation: Speculation,
    /// Most draft tokens verified in one pass.
    pub draft_tokens: usize,
    /// Prompt-prefix KV each worker keeps for reuse, in tokens (0 = off).
    pub prefix_cache_tokens: usize,
    /// Levels a command may ask for with `priority`: the pipeline's own and
    /// lower ones whose every worker also holds this model's session.
    pub allowed_levels: Vec<usize>,
    /// `[[pipeline.tool]]` entries, schema paths made absolute (relative
    /// to the config file); validated at start-up by
    /// `llm::tools::ToolSet::load`.
    pub tools: Vec<RawTool>,
    /// Most tool calls in one plan (a command's `max_steps` ceiling).
    pub max_tool_steps: u32,
    /// Where commands go instead of (or besides) the local model.
    pub offload: Option<OffloadConfig>,
    /// ROS 2 topics (`[pipeline.ros2]`): prompts in, answers and tokens out.
    pub ros2: Option<ros2::PipelineRos2>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WorkerConfig {
    /// Levels served (indices into `levels`, ascending = highest first).
    pub levels: Vec<usize>,
    /// OS scheduling of the worker's thread.
    pub policy: ThreadPolicy,
    /// CPUs the worker thread may run on (`sched_setaffinity`); empty:
    /// inherited from the process.
    pub cpus: Vec<usize>,
}

#[derive(Clone, Debug)]
pub enum ZenohConfig {
    Inline {
        mode: ZenohMode,
        listen: Vec<String>,
        connect: Vec<String>,
        scouting: bool,
    },
    File(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZenohMode {
    Peer,
    Client,
    Router,
}

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub onnxruntime: Option<PathBuf>,
    pub intra_op_threads: usize,
    pub intra_op_spinning: bool,
    /// How long an idle worker polls its queues before parking.
    pub idle_spin: Duration,
    /// Lock all current and future memory (`mlockall`) once models are
    /// loaded, so a page fault never stalls a real-time worker.
    pub mlockall: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_elements: usize,
}

#[derive(Clone, Debug)]
pub enum InputFormat {
    Safetensors,
    /// Fixed-shape stream: the payload is the bytes of one tensor.
    Raw {
        tensor: String,
        dtype: Dtype,
        shape: Vec<usize>,
    },
    /// Camera frames (docs/images.md), pre-processed on the worker.
    Image(PreSpec),
    /// A chain stage: fed in-process by the pipeline before it.
    Chained(Link),
}

/// How a chain stage takes what the stage before it handed over
/// (docs/models.md, "Chains").
#[derive(Clone, Debug)]
pub struct Link {
    /// Index of the pipeline before this one.
    pub after: usize,
    pub feed: LinkFeed,
}

#[derive(Clone, Debug)]
pub enum LinkFeed {
    /// Model input ← output of the stage before (by name).
    Tensors(BTreeMap<String, String>),
    /// One row per region the stage before found, cut out of the frame:
    /// pre-processed by `[pipeline.pre]` when given, else by the answer
    /// kind's own preparation.
    Crops(Option<PreSpec>),
}

#[derive(Clone, Debug)]
pub struct Constant {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct StateBinding {
    pub input: String,
    pub output: String,
}

#[derive(Clone, Debug)]
pub struct ContextCarry {
    pub input: String,
    pub keep: usize,
}

#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub name: String,
    pub model: PathBuf,
    pub input: String,
    pub output: String,
    pub error_key: String,
    pub level: usize,
    pub deadline: Duration,
    pub queue_capacity: usize,
    pub overflow: Overflow,
    pub max_streams: usize,
    pub format: InputFormat,
    pub providers: Vec<Provider>,
    pub fallback: Fallback,
    pub publish: Option<Vec<String>>,
    pub idle_reset: Duration,
    /// Shapes for the warm-up runs of inputs with dynamic dimensions (and
    /// the TensorRT optimisation profile derived from them).
    pub warmup: BTreeMap<String, WarmupShape>,
    pub constants: BTreeMap<String, Constant>,
    pub state: Vec<StateBinding>,
    pub context: Vec<ContextCarry>,
    /// Dynamic batching; `None` runs every job alone (`max_batch = 1`).
    pub batch: Option<BatchConfig>,
    /// What happens to a result that finishes after its deadline.
    pub late: Late,
    /// What happens to float inputs holding NaN or infinity.
    pub non_finite: NonFinite,
    /// Most elements of one input tensor (`limits.max_elements` unless the
    /// pipeline sets its own, lower or higher).
    pub max_elements: usize,
    /// The answer stage (`[pipeline.answer]`), if any.
    pub answer: Option<AnswerConfig>,
    /// `[pipeline.ocr]`: the pipeline reads text (its `model` is the
    /// detector); the chain replaces the run and the answer stage.
    pub ocr: Option<ocr::OcrConfig>,
    /// In a chain: the stage this one hands its result to.
    pub next: Option<usize>,
    /// In a chain: the stage whose zenoh input starts it (itself when it
    /// is not a later stage).
    pub head: usize,
    /// Where requests go instead of (or besides) the local model.
    pub offload: Option<OffloadConfig>,
    /// ROS 2 topics (`[pipeline.ros2]`), next to the zenoh keys.
    pub ros2: Option<ros2::PipelineRos2>,
}

/// Longest a worker may hold a job while it waits for a batch to fill.
pub const MAX_QUEUE_DELAY_LIMIT: Duration = Duration::from_secs(1);

/// Dynamic batching of one tensor pipeline (`max_batch > 1`).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchConfig {
    /// Most jobs in one session call (>= 2).
    pub max_batch: usize,
    /// Longest the first job of a batch waits for more to arrive; never
    /// past any collected job's deadline.
    pub max_queue_delay: Duration,
    /// Sizes at which the worker stops waiting and runs at once if nothing
    /// more is queued; ascending, each in 2..=max_batch.
    pub preferred: Vec<usize>,
}

impl PipelineConfig {
    pub fn is_stateful(&self) -> bool {
        !self.state.is_empty() || !self.context.is_empty()
    }

    /// Whether its messages carry output tensors: not for an OCR pipeline
    /// or an answer stage with `outputs = "answer"`, whose message is the
    /// answer alone.
    pub fn publishes_tensors(&self) -> bool {
        self.ocr.is_none()
            && self
                .answer
                .as_ref()
                .is_none_or(|a| a.outputs != Outputs::Answer)
    }

    /// Fed in-process by another pipeline (no zenoh subscriber).
    pub fn is_chained(&self) -> bool {
        matches!(self.format, InputFormat::Chained(_))
    }

    /// The image pre-processing of the pipeline's input: frames from zenoh
    /// or crops from the stage before.
    pub fn pre(&self) -> Option<&PreSpec> {
        match &self.format {
            InputFormat::Image(p) => Some(p),
            InputFormat::Chained(Link {
                feed: LinkFeed::Crops(p),
                ..
            }) => p.as_ref(),
            _ => None,
        }
    }
}

impl Config {
    /// Reads and validates a config file. Relative paths inside it (models,
    /// zenoh file, ORT library) are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base).map_err(|e| match e {
            ConfigError::Parse { cause, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                cause,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            cause: Box::new(e),
        })?;
        Config::from_raw(raw, base)
    }

    pub fn from_raw(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
        let zenoh = session::zenoh_config(&raw.zenoh, base)?;
        let metrics = metrics::metrics_config(&raw.metrics)?;
        let runtime = session::runtime_config(&raw.runtime, base)?;
        let limits = Limits {
            max_payload_bytes: positive(
                "limits.max_payload_bytes",
                raw.limits.max_payload_bytes,
                DEFAULT_MAX_PAYLOAD_BYTES,
            )?,
            max_elements: positive(
                "limits.max_elements",
                raw.limits.max_elements,
                DEFAULT_MAX_ELEMENTS,
            )?,
        };
        let service = service_config(&raw.service)?;
        let ros2 = ros2::node(&raw.ros2)?;
        let levels = workers::levels(std::mem::take(&mut raw_levels(&raw)))?;
        let level_index = |key: &str, name: &str| -> Result<usize, ConfigError> {
            levels.iter().position(|l| l == name).ok_or_else(|| {
                invalid(format!(
                    "{key} = {name:?}: no such priority level; defined levels are {levels:?}"
                ))
            })
        };
        let workers = workers::workers(&raw, &level_index, levels.len())?;
        let (mut pipelines, mut generators) = pipelines(
            raw.pipeline,
            &limits,
            base,
            &level_index,
            (&levels, &workers),
            &ros2,
        )?;
        let mut fleet = fleet::fleet_config(&raw.fleet)?;
        fleet::split(&mut fleet, &metrics.node, &mut pipelines, &mut generators)?;
        Ok(Config {
            zenoh,
            runtime,
            limits,
            levels,
            workers,
            pipelines,
            generators,
            service,
            metrics,
            fleet,
            ros2,
        })
    }
}

fn raw_levels(raw: &RawConfig) -> Vec<RawLevel> {
    raw.level
        .iter()
        .map(|l| RawLevel {
            name: l.name.clone(),
        })
        .collect()
}

/// Validates every `[[pipeline]]`: unique names, a worker for each level,
/// and for generation pipelines the levels a command may lower itself to.
fn pipelines(
    raw: Vec<RawPipeline>,
    limits: &Limits,
    base: &Path,
    level_index: common::LevelIndex,
    (levels, workers): (&[String], &[WorkerConfig]),
    node: &ros2::Ros2Node,
) -> Result<(Vec<PipelineConfig>, Vec<GeneratorConfig>), ConfigError> {
    if raw.is_empty() {
        return Err(invalid(
            "no [[pipeline]] defined: the daemon would have nothing to run",
        ));
    }
    let (mut pipelines, mut generators) = (Vec::new(), Vec::new());
    let mut links = Vec::new();
    let mut names = HashSet::new();
    for p in raw {
        let name = match p {
            RawPipeline::Tensor(mut t) => {
                let r = t.ros2.take();
                let (mut pc, link) = tensor::tensor_config(*t, base, level_index, levels, limits)?;
                pc.ros2 = ros2::tensor(&pc, r, node)?;
                let name = pc.name.clone();
                pipelines.push(pc);
                links.push(link);
                name
            }
            RawPipeline::Generate(mut g) => {
                let r = g.ros2.take();
                let mut gc = generate::generator_config(*g, base, level_index, levels)?;
                gc.ros2 = ros2::generate(&gc, r, node)?;
                // A worker serving a lowered level must hold this model's
                // session too.
                gc.allowed_levels = (gc.level..levels.len())
                    .filter(|&l| {
                        let mut serving =
                            workers.iter().filter(|w| w.levels.contains(&l)).peekable();
                        serving.peek().is_some() && serving.all(|w| w.levels.contains(&gc.level))
                    })
                    .collect();
                let name = gc.name.clone();
                generators.push(gc);
                name
            }
        };
        if !names.insert(name.clone()) {
            return Err(invalid(format!(
                "pipeline {name:?}: pipeline names must be unique"
            )));
        }
    }
    chain::resolve(&mut pipelines, links)?;
    // Stages have their head's level by now.
    let levels_used = pipelines
        .iter()
        .map(|p| (&p.name, p.level))
        .chain(generators.iter().map(|g| (&g.name, g.level)));
    for (name, level) in levels_used {
        if !workers.iter().any(|w| w.levels.contains(&level)) {
            return Err(invalid(format!(
                "pipeline {name:?}: level = {:?}: no worker serves this level",
                levels[level]
            )));
        }
    }
    ros2::check_topics(
        pipelines
            .iter()
            .filter_map(|p| Some((p.name.as_str(), p.ros2.as_ref()?)))
            .chain(
                generators
                    .iter()
                    .filter_map(|g| Some((g.name.as_str(), g.ros2.as_ref()?))),
            ),
    )?;
    Ok((pipelines, generators))
}

fn positive(key: &str, v: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match v {
        None => Ok(default),
        Some(0) => Err(invalid(format!("{key} = 0: must be at least 1"))),
        Some(n) => Ok(n),
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn dtype(key: &str, s: &str) -> Result<Dtype, ConfigError> {
    Dtype::parse(s).ok_or_else(|| {
        invalid(format!(
            "{key} = {s:?}: unknown dtype; expected one of {}",
            Dtype::NAMES.join(", ")
        ))
    })
}

fn shape(key: &str, dims: &[i64]) -> Result<Vec<usize>, ConfigError> {
    dims.iter()
        .map(|&d| {
            usize::try_from(d)
                .ok()
                .filter(|&d| d > 0)
                .ok_or_else(|| invalid(format!("{key} = {dims:?}: every dimension must be > 0")))
        })
        .collect()
}
