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
}

/// Keys every pipeline kind has.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawTensorPipeline {
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
    /// `[pipeline.pre]`, the image stage; parsed by `crate::infer::pre`
    /// (a higher layer) once the model is known.
    pub pre: Option<toml::Table>,
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
    pub ros2: Option<super::ros2::RawGenerateRos2>,
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
