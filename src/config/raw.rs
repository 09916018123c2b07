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

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    pub name: String,
    pub kind: Option<String>,
    pub cancel: Option<String>,
    pub query: Option<String>,
    pub max_generations: Option<usize>,
    pub max_tokens: Option<u32>,
    pub default_max_tokens: Option<u32>,
    pub max_prompt_chars: Option<usize>,
    pub prefill_chunk: Option<usize>,
    pub max_batch: Option<usize>,
    pub max_queue_delay_us: Option<u64>,
    pub preferred_batch_sizes: Option<Vec<usize>>,
    pub model: PathBuf,
    pub input: String,
    pub output: String,
    pub error_key: Option<String>,
    pub level: Option<String>,
    pub deadline_ms: Option<f64>,
    pub queue_capacity: Option<usize>,
    pub overflow: Option<String>,
    pub max_streams: Option<usize>,
    pub format: Option<String>,
    #[serde(default)]
    pub provider: Vec<RawProvider>,
    pub fallback: Option<String>,
    pub publish: Option<Vec<String>>,
    pub idle_reset_ms: Option<u64>,
    #[serde(default)]
    pub warmup: BTreeMap<String, Vec<i64>>,
    pub raw: Option<RawRawFormat>,
    #[serde(default)]
    pub constants: BTreeMap<String, RawConstant>,
    #[serde(default)]
    pub state: Vec<RawStateBinding>,
    #[serde(default)]
    pub context: Vec<RawContext>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: String,
    pub device_id: Option<i32>,
    pub fp16: Option<bool>,
    pub engine_cache: Option<PathBuf>,
}

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
