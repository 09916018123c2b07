//! Stage one of the configuration: a serde mirror of the TOML file. Every
//! table denies unknown fields, so a typo is an error naming the key, never a
//! silently ignored setting. Nothing here is validated; see the parent module.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub zenoh: RawZenoh,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub level: Vec<RawLevel>,
    #[serde(default)]
    pub worker: Vec<RawWorker>,
    #[serde(default)]
    pub pipeline: Vec<RawPipeline>,
    #[serde(default)]
    pub service: RawService,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub fleet: super::fleet::RawFleet,
    #[serde(default)]
    pub ros2: super::ros2::RawRos2Node,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub drain_timeout_ms: Option<u64>,
    pub max_run_ms: Option<u64>,
    pub status_interval_ms: Option<u64>,
    pub model_load_timeout_s: Option<u64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub node: Option<String>,
    pub prometheus: Option<String>,
    pub publish_interval_ms: Option<u64>,
    pub histograms: Option<bool>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawZenoh {
    pub mode: Option<String>,
    pub listen: Option<Vec<String>>,
    pub connect: Option<Vec<String>>,
    pub scouting: Option<bool>,
    pub config_file: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub onnxruntime: Option<PathBuf>,
    pub workers: Option<usize>,
    pub intra_op_threads: Option<usize>,
    pub intra_op_spinning: Option<bool>,
    pub idle_spin_us: Option<u64>,
    pub mlockall: Option<bool>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_payload_bytes: Option<usize>,
    pub max_elements: Option<usize>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawLevel {
    pub name: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawWorker {
    pub levels: Vec<String>,
    pub nice: Option<i32>,
    pub sched_fifo: Option<i32>,
    pub sched_idle: Option<bool>,
    pub cpus: Option<Vec<usize>>,
}

/// One `[[pipeline]]` table. `kind` selects which keys exist at all, so a
/// tensor key on a generation pipeline (or the reverse) is an unknown key,
/// not a combination to check later. `kind` defaults to `"tensor"`.
#[derive(Debug)]
pub enum RawPipeline {
    Tensor(Box<RawTensorPipeline>),
    Generate(Box<RawGeneratePipeline>),
}

impl<'de> Deserialize<'de> for RawPipeline {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let name = match table.get("name") {
            Some(toml::Value::String(n)) => format!("pipeline {n:?}"),
            _ => "pipeline".to_string(),
        };
        let kind = match table.remove("kind") {
            None => "tensor".to_string(),
            Some(toml::Value::String(k)) => k,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "{name}: kind = {other}: expected \"tensor\" or \"generate\""
                )));
            }
        };
        let wrap = |e: toml::de::Error| {
            D::Error::custom(format!(
                "{name} (kind = {kind:?}): {}",
                e.to_string().trim().replace('\n', " ")
            ))
        };
        match kind.as_str() {
            "tensor" => table
                .try_into()
                .map(|p| RawPipeline::Tensor(Box::new(p)))
                .map_err(wrap),
            "generate" => table
                .try_into()
                .map(|p| RawPipeline::Generate(Box::new(p)))
                .map_err(wrap),
            other => Err(D::Error::custom(format!(
                "{name}: kind = {other:?}: expected \"tensor\" or \"generate\""
            ))),
        }
    }
}

/// What happens to a prediction that finishes after its deadline.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Late {
    /// Published, flagged `late = "true"`.
    #[default]
    Publish,
    /// Not published: the client gets `deadline_exceeded`.
    Drop,
}

/// What happens to float inputs holding NaN or infinity.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NonFinite {
    /// Refused with `non_finite` before the model runs.
    #[default]
    Reject,
    /// Run as they are.
    Allow,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    /// A newer frame of a stream replaces its unprocessed older frame.
    Latest,
    /// A full queue answers "busy".
    #[default]
    Reject,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// A provider that cannot be used is a startup error.
    Error,
    /// A provider that cannot be used is skipped (logged) for the next one.
    #[default]
    Next,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RawFormat {
    #[default]
    Safetensors,
    Raw,
    /// Camera frames (docs/images.md), with a `[pipeline.pre]` table.
    Image,
}

/// Keys every pipeline kind has.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawTensorPipeline {
    pub name: String,
    pub model: PathBuf,
    /// Required unless `after` makes this pipeline a chain stage.
    pub input: Option<String>,
    pub output: Option<String>,
    pub error_key: Option<String>,
    pub level: Option<String>,
    pub deadline_ms: Option<f64>,
    #[serde(default)]
    pub provider: Vec<RawProvider>,
    #[serde(default)]
    pub fallback: Fallback,
    pub queue_capacity: Option<usize>,
    #[serde(default)]
    pub overflow: Overflow,
    pub max_streams: Option<usize>,
    #[serde(default)]
    pub format: RawFormat,
    pub raw: Option<RawRawFormat>,
    pub publish: Option<Vec<String>>,
    pub idle_reset_ms: Option<u64>,
    /// Input name → a shape or a `{ min, opt, max }` range (validated in
    /// stage two, `warmup.rs`, for messages that name the entry).
    #[serde(default)]
    pub warmup: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub constants: BTreeMap<String, RawConstant>,
    #[serde(default)]
    pub state: Vec<RawStateBinding>,
    #[serde(default)]
    pub context: Vec<RawContext>,
    pub max_batch: Option<usize>,
    pub max_queue_delay_us: Option<u64>,
    pub preferred_batch_sizes: Option<Vec<usize>>,
    #[serde(default)]
    pub late: Late,
    #[serde(default)]
    pub non_finite: NonFinite,
    pub max_elements: Option<usize>,
    /// Image pre-processing (`format = "image"`, or a chain stage fed with
    /// crops).
    pub pre: Option<crate::config::image::RawPre>,
    /// Answer stage: detections, classes, speech events (docs/answers.md).
    pub answer: Option<crate::config::answer::RawAnswer>,
    /// Text reading: recogniser, angle classifier, chain settings (docs/ocr.md).
    pub ocr: Option<toml::Table>,
    /// Chain stage: the pipeline whose result feeds this one in-process.
    pub after: Option<String>,
    /// Chain stage fed with tensors: model input ← output of `after`.
    pub feed: Option<BTreeMap<String, String>>,
    pub offload: Option<super::fleet::RawOffload>,
    pub ros2: Option<super::ros2::RawTensorRos2>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawGeneratePipeline {
    pub name: String,
    pub model: PathBuf,
    pub input: String,
    pub output: String,
    pub error_key: Option<String>,
    pub level: Option<String>,
    pub deadline_ms: Option<f64>,
    #[serde(default)]
    pub provider: Vec<RawProvider>,
    #[serde(default)]
    pub fallback: Fallback,
    pub cancel: Option<String>,
    pub query: Option<String>,
    pub max_generations: Option<usize>,
    pub max_tokens: Option<u32>,
    pub default_max_tokens: Option<u32>,
    pub max_prompt_chars: Option<usize>,
    pub max_prompt_tokens: Option<usize>,
    pub max_messages: Option<usize>,
    pub prefill_chunk: Option<usize>,
    pub max_batch: Option<usize>,
    pub max_unsent: Option<usize>,
    pub speculation: Option<String>,
    pub draft_tokens: Option<usize>,
    pub draft_model: Option<PathBuf>,
    pub prefix_cache_tokens: Option<usize>,
    /// Most tool calls in one plan (default and ceiling of a command's
    /// `max_steps`).
    pub max_tool_steps: Option<u32>,
    /// `[[pipeline.tool]]`: what the model may ask the robot to do.
    #[serde(default)]
    pub tool: Vec<RawTool>,
    pub offload: Option<super::fleet::RawOffload>,
    pub ros2: Option<super::ros2::RawGenerateRos2>,
}

/// One `[[pipeline.tool]]` entry as written in the config file. Stage two
/// (schema files, grammar) is `llm::tools::ToolSet::load`, run at start-up
/// and by `reflexd check`: it needs the grammar engine, which lives above
/// the config layer.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    /// What the model writes as `"name"`: `[A-Za-z_][A-Za-z0-9_]*`.
    pub name: String,
    /// Shown to the model in the system prompt.
    pub description: String,
    /// JSON Schema of the arguments (a file; relative to the config file).
    pub schema: PathBuf,
    /// Zenoh key where an admitted call is published (no wildcards).
    pub key: String,
    /// Sustained calls per second (default 1).
    pub rate_per_s: Option<f64>,
    /// Calls allowed back to back (default 1).
    pub burst: Option<u32>,
    /// Validate and report calls but never publish them (default false).
    pub dry_run: Option<bool>,
}

/// One execution provider, by `kind`.
#[derive(Deserialize, Debug)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RawProvider {
    Tensorrt(RawTensorRt),
    Cuda(RawCuda),
    Cpu(RawCpu),
}

/// `kind = "tensorrt"`; see `provider.rs` for what each key becomes.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTensorRt {
    pub device_id: Option<i32>,
    pub fp16: Option<bool>,
    pub int8: Option<bool>,
    pub int8_calibration_table: Option<String>,
    pub int8_use_native_calibration_table: Option<bool>,
    pub dla_core: Option<i64>,
    pub max_workspace_mb: Option<u64>,
    pub engine_cache: Option<PathBuf>,
    pub timing_cache: Option<PathBuf>,
    pub warmup_profile: Option<bool>,
}

/// `kind = "cuda"`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCuda {
    pub device_id: Option<i32>,
    pub memory_limit_mb: Option<u64>,
    pub arena_extend_strategy: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawCpu {}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawRawFormat {
    pub tensor: String,
    pub dtype: String,
    pub shape: Vec<i64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawConstant {
    pub dtype: String,
    pub shape: Vec<i64>,
    pub data: Vec<f64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawStateBinding {
    pub input: String,
    pub output: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawContext {
    pub input: String,
    pub keep: usize,
}
