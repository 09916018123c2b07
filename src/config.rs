//! Configuration: the first thing the daemon reads and the only place that
//! decides what runs. Stage one is a raw serde mirror of the TOML file with
//! unknown keys rejected; stage two ([`Config::from_raw`]) turns it into types
//! that cannot hold invalid values, and every error names the key, the value
//! and what is allowed. Nothing downstream re-validates.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::wire::Dtype;

/// Default upper bound on one message's payload (bytes).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 16 << 20;
/// Default upper bound on one tensor's element count.
pub const DEFAULT_MAX_ELEMENTS: usize = 4 << 20;
/// Default number of live streams a `latest` pipeline tracks.
pub const DEFAULT_MAX_STREAMS: usize = 64;
/// Default idle time after which a stream's carried state is reset.
pub const DEFAULT_IDLE_RESET: Duration = Duration::from_secs(2);

#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

// ---------------------------------------------------------------- stage one

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
    /// Most prompt tokens prefilled per scheduler turn.
    pub prefill_chunk: usize,
    /// Levels a command may ask for with `priority`: the pipeline's own and
    /// lower ones whose every worker also holds this model's session.
    pub allowed_levels: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WorkerConfig {
    /// Levels served (indices into `levels`, ascending = highest first).
    pub levels: Vec<usize>,
    /// OS nice value for the thread: a worker that serves only lower levels
    /// can be made to yield the CPU to the reserved ones.
    pub nice: Option<i32>,
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
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_elements: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// A newer frame of a stream replaces its unprocessed older frame.
    Latest,
    /// A full queue answers "busy".
    Reject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// A provider that cannot be used is a startup error.
    Error,
    /// A provider that cannot be used is skipped (logged) for the next one.
    Next,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Provider {
    TensorRt {
        device_id: i32,
        fp16: bool,
        engine_cache: Option<PathBuf>,
    },
    Cuda {
        device_id: i32,
    },
    Cpu,
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::TensorRt { .. } => "tensorrt",
            Provider::Cuda { .. } => "cuda",
            Provider::Cpu => "cpu",
        }
    }
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
    /// Shapes for the warm-up run of inputs with dynamic dimensions.
    pub warmup: BTreeMap<String, Vec<usize>>,
    pub constants: BTreeMap<String, Constant>,
    pub state: Vec<StateBinding>,
    pub context: Vec<ContextCarry>,
}

impl PipelineConfig {
    pub fn is_stateful(&self) -> bool {
        !self.state.is_empty() || !self.context.is_empty()
    }
}

impl Config {
    /// Reads and validates a config file. Relative paths inside it (models,
    /// zenoh file, ORT library) are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            source: Box::new(e),
        })?;
        Config::from_raw(raw, base)
    }

    pub fn from_raw(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
        let zenoh = zenoh_config(raw.zenoh, base)?;
        let runtime = runtime_config(&raw.runtime, base)?;
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

        let levels: Vec<String> = if raw.level.is_empty() {
            vec!["default".to_string()]
        } else {
            raw.level.into_iter().map(|l| l.name).collect()
        };
        let mut seen = HashSet::new();
        for (i, name) in levels.iter().enumerate() {
            if name.is_empty() || !seen.insert(name.as_str()) {
                return Err(invalid(format!(
                    "level[{i}].name = {name:?}: level names must be non-empty and unique"
                )));
            }
        }
        let level_index = |key: &str, name: &str| -> Result<usize, ConfigError> {
            levels.iter().position(|l| l == name).ok_or_else(|| {
                invalid(format!(
                    "{key} = {name:?}: no such priority level; defined levels are {levels:?}"
                ))
            })
        };

        let workers = if raw.worker.is_empty() {
            let n = positive("runtime.workers", raw.runtime.workers, 1)?;
            vec![
                WorkerConfig {
                    levels: (0..levels.len()).collect(),
                    nice: None,
                };
                n
            ]
        } else {
            if raw.runtime.workers.is_some() {
                return Err(invalid(
                    "runtime.workers: give either runtime.workers or [[worker]] tables, not both",
                ));
            }
            let mut workers = Vec::new();
            for (i, w) in raw.worker.iter().enumerate() {
                if w.levels.is_empty() {
                    return Err(invalid(format!(
                        "worker[{i}].levels = []: a worker must serve at least one level"
                    )));
                }
                let mut idx = w
                    .levels
                    .iter()
                    .map(|l| level_index(&format!("worker[{i}].levels"), l))
                    .collect::<Result<Vec<_>, _>>()?;
                idx.sort_unstable();
                idx.dedup();
                if let Some(n) = w.nice
                    && !(-20..=19).contains(&n)
                {
                    return Err(invalid(format!(
                        "worker[{i}].nice = {n}: expected -20 (highest) to 19 (lowest)"
                    )));
                }
                workers.push(WorkerConfig {
                    levels: idx,
                    nice: w.nice,
                });
            }
            workers
        };

        if raw.pipeline.is_empty() {
            return Err(invalid(
                "no [[pipeline]] defined: the daemon would have nothing to run",
            ));
        }
        let mut pipelines = Vec::new();
        let mut generators = Vec::new();
        let mut names = HashSet::new();
        for (i, p) in raw.pipeline.into_iter().enumerate() {
            match p.kind.as_deref().unwrap_or("tensor") {
                "tensor" => {}
                "generate" => {
                    let g = generator_config(i, p, base, &level_index, &levels)?;
                    if !names.insert(g.name.clone()) {
                        return Err(invalid(format!(
                            "pipeline[{i}].name = {:?}: pipeline names must be unique",
                            g.name
                        )));
                    }
                    if !workers.iter().any(|w| w.levels.contains(&g.level)) {
                        return Err(invalid(format!(
                            "pipeline[{i}].level = {:?}: no worker serves this level",
                            levels[g.level]
                        )));
                    }
                    let mut g = g;
                    // A worker serving a lowered level must hold this
                    // model's session too.
                    g.allowed_levels = (g.level..levels.len())
                        .filter(|&l| {
                            let mut serving =
                                workers.iter().filter(|w| w.levels.contains(&l)).peekable();
                            serving.peek().is_some() && serving.all(|w| w.levels.contains(&g.level))
                        })
                        .collect();
                    generators.push(g);
                    continue;
                }
                other => {
                    return Err(invalid(format!(
                        "pipeline[{i}].kind = {other:?}: expected \"tensor\" or \"generate\""
                    )));
                }
            }
            let pc = pipeline_config(i, p, base, &level_index, &levels)?;
            if !names.insert(pc.name.clone()) {
                return Err(invalid(format!(
                    "pipeline[{i}].name = {:?}: pipeline names must be unique",
                    pc.name
                )));
            }
            if !workers.iter().any(|w| w.levels.contains(&pc.level)) {
                return Err(invalid(format!(
                    "pipeline[{i}].level = {:?}: no worker serves this level",
                    levels[pc.level]
                )));
            }
            pipelines.push(pc);
        }

        Ok(Config {
            zenoh,
            runtime,
            limits,
            levels,
            workers,
            pipelines,
            generators,
        })
    }
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

fn zenoh_config(z: RawZenoh, base: &Path) -> Result<ZenohConfig, ConfigError> {
    if let Some(file) = z.config_file {
        if z.mode.is_some() || z.listen.is_some() || z.connect.is_some() || z.scouting.is_some() {
            return Err(invalid(
                "zenoh.config_file: when a zenoh JSON5 file is given, zenoh.mode/listen/connect/scouting must be set in that file instead",
            ));
        }
        return Ok(ZenohConfig::File(resolve(base, &file)));
    }
    let mode = match z.mode.as_deref().unwrap_or("peer") {
        "peer" => ZenohMode::Peer,
        "client" => ZenohMode::Client,
        "router" => ZenohMode::Router,
        other => {
            return Err(invalid(format!(
                "zenoh.mode = {other:?}: expected one of \"peer\", \"client\", \"router\""
            )));
        }
    };
    let listen = z.listen.unwrap_or_default();
    let connect = z.connect.unwrap_or_default();
    for (key, eps) in [("zenoh.listen", &listen), ("zenoh.connect", &connect)] {
        for ep in eps {
            if !ep.contains('/') {
                return Err(invalid(format!(
                    "{key} entry {ep:?}: expected a zenoh endpoint such as \"tcp/127.0.0.1:7447\""
                )));
            }
        }
    }
    if mode == ZenohMode::Client && connect.is_empty() {
        return Err(invalid(
            "zenoh.connect = []: client mode needs at least one router endpoint",
        ));
    }
    Ok(ZenohConfig::Inline {
        mode,
        listen,
        connect,
        scouting: z.scouting.unwrap_or(false),
    })
}

fn runtime_config(r: &RawRuntime, base: &Path) -> Result<RuntimeConfig, ConfigError> {
    Ok(RuntimeConfig {
        onnxruntime: r.onnxruntime.as_deref().map(|p| resolve(base, p)),
        intra_op_threads: positive("runtime.intra_op_threads", r.intra_op_threads, 1)?,
        intra_op_spinning: r.intra_op_spinning.unwrap_or(false),
        idle_spin: match r.idle_spin_us {
            Some(us) if us > 100_000 => {
                return Err(invalid(format!(
                    "runtime.idle_spin_us = {us}: at most 100000 (0.1 s); spinning longer only burns CPU"
                )));
            }
            us => Duration::from_micros(us.unwrap_or(0)),
        },
    })
}

fn key_expr_ok(key: &str) -> bool {
    zenoh::key_expr::keyexpr::new(key).is_ok()
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

fn pipeline_config(
    i: usize,
    p: RawPipeline,
    base: &Path,
    level_index: &dyn Fn(&str, &str) -> Result<usize, ConfigError>,
    levels: &[String],
) -> Result<PipelineConfig, ConfigError> {
    let at = |k: &str| format!("pipeline[{i}].{k}");
    for (k, set) in [
        ("cancel", p.cancel.is_some()),
        ("query", p.query.is_some()),
        ("max_generations", p.max_generations.is_some()),
        ("max_tokens", p.max_tokens.is_some()),
        ("default_max_tokens", p.default_max_tokens.is_some()),
        ("max_prompt_chars", p.max_prompt_chars.is_some()),
        ("prefill_chunk", p.prefill_chunk.is_some()),
    ] {
        if set {
            return Err(invalid(format!(
                "{}: only valid with kind = \"generate\"",
                at(k)
            )));
        }
    }
    if p.name.is_empty()
        || !p
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(format!(
            "{} = {:?}: use letters, digits, '_' or '-'",
            at("name"),
            p.name
        )));
    }
    for (k, v) in [("input", &p.input), ("output", &p.output)] {
        if !key_expr_ok(v) {
            return Err(invalid(format!(
                "{} = {v:?}: not a valid zenoh key expression (chunks separated by '/', wildcards `*` and `**` only as whole chunks, no leading or trailing '/')",
                at(k)
            )));
        }
    }
    if p.output.contains('*') {
        return Err(invalid(format!(
            "{} = {:?}: an output key cannot contain wildcards; the stream id is appended to it",
            at("output"),
            p.output
        )));
    }
    let error_key = p.error_key.unwrap_or_else(|| format!("{}/error", p.output));
    if !key_expr_ok(&error_key) || error_key.contains('*') {
        return Err(invalid(format!(
            "{} = {error_key:?}: not a valid zenoh key without wildcards",
            at("error_key")
        )));
    }
    let level = match &p.level {
        Some(l) => level_index(&at("level"), l)?,
        None => levels.len() - 1,
    };
    let deadline_ms = p.deadline_ms.unwrap_or(1000.0);
    if !(deadline_ms.is_finite() && deadline_ms > 0.0 && deadline_ms <= 3_600_000.0) {
        return Err(invalid(format!(
            "{} = {deadline_ms}: expected a latency budget in milliseconds, > 0 and at most one hour",
            at("deadline_ms")
        )));
    }
    let overflow = match p.overflow.as_deref().unwrap_or("reject") {
        "latest" => Overflow::Latest,
        "reject" => Overflow::Reject,
        other => {
            return Err(invalid(format!(
                "{} = {other:?}: expected \"latest\" (newest frame per stream wins) or \"reject\" (busy when full)",
                at("overflow")
            )));
        }
    };
    let fallback = match p.fallback.as_deref().unwrap_or("next") {
        "next" => Fallback::Next,
        "error" => Fallback::Error,
        other => {
            return Err(invalid(format!(
                "{} = {other:?}: expected \"next\" or \"error\"",
                at("fallback")
            )));
        }
    };
    let format = match p.format.as_deref().unwrap_or("safetensors") {
        "safetensors" => {
            if p.raw.is_some() {
                return Err(invalid(format!(
                    "{}: a [pipeline.raw] table needs format = \"raw\"",
                    at("raw")
                )));
            }
            InputFormat::Safetensors
        }
        "raw" => {
            let r = p.raw.ok_or_else(|| {
                invalid(format!(
                    "{}: format = \"raw\" needs a [pipeline.raw] table with tensor, dtype and shape",
                    at("raw")
                ))
            })?;
            InputFormat::Raw {
                dtype: dtype(&at("raw.dtype"), &r.dtype)?,
                shape: shape(&at("raw.shape"), &r.shape)?,
                tensor: r.tensor,
            }
        }
        other => {
            return Err(invalid(format!(
                "{} = {other:?}: expected \"safetensors\" or \"raw\"",
                at("format")
            )));
        }
    };
    let mut providers = Vec::new();
    for (j, rp) in p.provider.iter().enumerate() {
        let key = |k: &str| format!("pipeline[{i}].provider[{j}].{k}");
        let only = |allowed: &str, k: &str, set: bool| -> Result<(), ConfigError> {
            if set {
                Err(invalid(format!(
                    "{}: only valid for kind = {allowed}",
                    key(k)
                )))
            } else {
                Ok(())
            }
        };
        let prov = match rp.kind.as_str() {
            "tensorrt" => Provider::TensorRt {
                device_id: rp.device_id.unwrap_or(0),
                fp16: rp.fp16.unwrap_or(false),
                engine_cache: rp.engine_cache.as_deref().map(|e| resolve(base, e)),
            },
            "cuda" => {
                only("\"tensorrt\"", "fp16", rp.fp16.is_some())?;
                only("\"tensorrt\"", "engine_cache", rp.engine_cache.is_some())?;
                Provider::Cuda {
                    device_id: rp.device_id.unwrap_or(0),
                }
            }
            "cpu" => {
                only(
                    "\"tensorrt\" or \"cuda\"",
                    "device_id",
                    rp.device_id.is_some(),
                )?;
                only("\"tensorrt\"", "fp16", rp.fp16.is_some())?;
                only("\"tensorrt\"", "engine_cache", rp.engine_cache.is_some())?;
                Provider::Cpu
            }
            other => {
                return Err(invalid(format!(
                    "{} = {other:?}: expected \"tensorrt\", \"cuda\" or \"cpu\"",
                    key("kind")
                )));
            }
        };
        if let Provider::TensorRt { device_id, .. } | Provider::Cuda { device_id } = &prov
            && *device_id < 0
        {
            return Err(invalid(format!(
                "{} = {device_id}: must be >= 0",
                key("device_id")
            )));
        }
        if providers.iter().any(|q: &Provider| q.name() == prov.name()) {
            return Err(invalid(format!(
                "{} = {:?}: listed twice",
                key("kind"),
                prov.name()
            )));
        }
        providers.push(prov);
    }
    if providers.is_empty() {
        providers.push(Provider::Cpu);
    }
    let mut constants = BTreeMap::new();
    for (name, c) in p.constants {
        let key = format!("pipeline[{i}].constants.{name}");
        let dt = dtype(&format!("{key}.dtype"), &c.dtype)?;
        let shp = shape(&format!("{key}.shape"), &c.shape)?;
        let n: usize = shp.iter().product();
        if c.data.len() != n {
            return Err(invalid(format!(
                "{key}.data has {} values: shape {:?} needs {n}",
                c.data.len(),
                c.shape
            )));
        }
        let bytes = dt.encode_f64(&c.data).ok_or_else(|| {
            invalid(format!(
                "{key}.data: values cannot be represented as {}",
                dt.name()
            ))
        })?;
        constants.insert(
            name,
            Constant {
                dtype: dt,
                shape: shp,
                bytes,
            },
        );
    }
    let state: Vec<StateBinding> = p
        .state
        .into_iter()
        .map(|s| StateBinding {
            input: s.input,
            output: s.output,
        })
        .collect();
    let context: Vec<ContextCarry> = p
        .context
        .into_iter()
        .map(|c| ContextCarry {
            input: c.input,
            keep: c.keep,
        })
        .collect();
    for (j, c) in context.iter().enumerate() {
        if c.keep == 0 {
            return Err(invalid(format!(
                "pipeline[{i}].context[{j}].keep = 0: must be at least 1"
            )));
        }
    }
    let overflow_ok = overflow == Overflow::Latest || (state.is_empty() && context.is_empty());
    if !overflow_ok {
        return Err(invalid(format!(
            "{} = \"reject\": a stateful pipeline (state or context bindings) must use overflow = \"latest\", which runs each stream's frames one at a time in order",
            at("overflow")
        )));
    }
    if overflow == Overflow::Latest && p.queue_capacity.is_some() {
        return Err(invalid(format!(
            "{}: applies to overflow = \"reject\"; with \"latest\" each stream keeps one pending frame and max_streams bounds the queue",
            at("queue_capacity")
        )));
    }
    let queue_capacity = positive(&at("queue_capacity"), p.queue_capacity, 16)?;
    let max_streams = positive(&at("max_streams"), p.max_streams, DEFAULT_MAX_STREAMS)?;
    Ok(PipelineConfig {
        name: p.name,
        model: resolve(base, &p.model),
        input: p.input,
        output: p.output,
        error_key,
        level,
        deadline: Duration::from_secs_f64(deadline_ms / 1000.0),
        queue_capacity,
        overflow,
        max_streams,
        format,
        providers,
        fallback,
        publish: p.publish,
        idle_reset: p
            .idle_reset_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_IDLE_RESET),
        warmup: p
            .warmup
            .iter()
            .map(|(k, v)| Ok((k.clone(), shape(&format!("pipeline[{i}].warmup.{k}"), v)?)))
            .collect::<Result<_, ConfigError>>()?,
        constants,
        state,
        context,
    })
}

fn generator_config(
    i: usize,
    p: RawPipeline,
    base: &Path,
    level_index: &dyn Fn(&str, &str) -> Result<usize, ConfigError>,
    levels: &[String],
) -> Result<GeneratorConfig, ConfigError> {
    let at = |k: &str| format!("pipeline[{i}].{k}");
    for (k, set) in [
        ("overflow", p.overflow.is_some()),
        ("queue_capacity", p.queue_capacity.is_some()),
        ("max_streams", p.max_streams.is_some()),
        ("format", p.format.is_some()),
        ("raw", p.raw.is_some()),
        ("publish", p.publish.is_some()),
        ("idle_reset_ms", p.idle_reset_ms.is_some()),
        ("warmup", !p.warmup.is_empty()),
        ("constants", !p.constants.is_empty()),
        ("state", !p.state.is_empty()),
        ("context", !p.context.is_empty()),
    ] {
        if set {
            return Err(invalid(format!(
                "{}: only valid for tensor pipelines, not kind = \"generate\"",
                at(k)
            )));
        }
    }
    // Reuse the tensor validator for the shared keys (name, keys, level,
    // deadline, providers, fallback) on a copy stripped of generate keys.
    let (cancel, query) = (p.cancel.clone(), p.query.clone());
    let prefill_chunk = p.prefill_chunk;
    let (max_generations, max_tokens, default_max_tokens, max_prompt_chars) = (
        p.max_generations,
        p.max_tokens,
        p.default_max_tokens,
        p.max_prompt_chars,
    );
    let common = pipeline_config(
        i,
        RawPipeline {
            kind: None,
            cancel: None,
            query: None,
            max_generations: None,
            max_tokens: None,
            default_max_tokens: None,
            max_prompt_chars: None,
            prefill_chunk: None,
            deadline_ms: Some(p.deadline_ms.unwrap_or(60_000.0)),
            ..p
        },
        base,
        level_index,
        levels,
    )?;
    if common.input.contains('*') {
        return Err(invalid(format!(
            "{} = {:?}: a command topic cannot contain wildcards",
            at("input"),
            common.input
        )));
    }
    let key = |k: &str, v: Option<String>, default: String| -> Result<String, ConfigError> {
        let v = v.unwrap_or(default);
        if !key_expr_ok(&v) || v.contains('*') {
            return Err(invalid(format!(
                "{} = {v:?}: not a valid zenoh key without wildcards",
                at(k)
            )));
        }
        Ok(v)
    };
    let max_tokens = match max_tokens {
        Some(0) => {
            return Err(invalid(format!(
                "{} = 0: must be at least 1",
                at("max_tokens")
            )));
        }
        Some(n) => n,
        None => 1024,
    };
    let default_max_tokens = default_max_tokens.unwrap_or(max_tokens.min(256));
    if default_max_tokens == 0 || default_max_tokens > max_tokens {
        return Err(invalid(format!(
            "{} = {default_max_tokens}: expected 1..={max_tokens} (max_tokens)",
            at("default_max_tokens")
        )));
    }
    Ok(GeneratorConfig {
        cancel_key: key("cancel", cancel, format!("{}/cancel", common.input))?,
        query_key: key("query", query, format!("{}/query", common.input))?,
        name: common.name,
        model: common.model,
        input: common.input,
        output: common.output,
        error_key: common.error_key,
        level: common.level,
        deadline: common.deadline,
        providers: common.providers,
        fallback: common.fallback,
        max_generations: positive(&at("max_generations"), max_generations, 4)?,
        max_tokens,
        default_max_tokens,
        max_prompt_chars: positive(&at("max_prompt_chars"), max_prompt_chars, 16_384)?,
        prefill_chunk: positive(&at("prefill_chunk"), prefill_chunk, 64)?,
        allowed_levels: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[pipeline]]
        name = "a"
        model = "m.onnx"
        input = "in/*"
        output = "out"
    "#;

    fn err(text: &str) -> String {
        Config::from_toml(text, Path::new("/base"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(MINIMAL, Path::new("/base")).unwrap();
        assert_eq!(c.levels, vec!["default"]);
        assert_eq!(c.workers[0].levels, vec![0]);
        let p = &c.pipelines[0];
        assert_eq!(p.model, PathBuf::from("/base/m.onnx"));
        assert_eq!(p.error_key, "out/error");
        assert_eq!(p.providers, vec![Provider::Cpu]);
        assert_eq!(p.overflow, Overflow::Reject);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let e = err(&format!("{MINIMAL}\nbogus = 1\n"));
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn bad_enum_value_names_key_value_and_choices() {
        let e = err(&format!("{MINIMAL}\noverflow = \"drop\"\n"));
        assert!(
            e.contains("pipeline[0].overflow") && e.contains("drop") && e.contains("latest"),
            "{e}"
        );
    }

    #[test]
    fn unknown_level_is_rejected() {
        let e = err(&format!("{MINIMAL}\nlevel = \"urgent\"\n"));
        assert!(e.contains("urgent") && e.contains("default"), "{e}");
    }

    #[test]
    fn stateful_pipeline_needs_latest() {
        let e = err(&format!(
            "{MINIMAL}\n[[pipeline.state]]\ninput = \"s\"\noutput = \"s2\"\n"
        ));
        assert!(e.contains("stateful"), "{e}");
    }

    #[test]
    fn provider_options_are_checked_per_kind() {
        let e = err(&format!(
            "{MINIMAL}\n[[pipeline.provider]]\nkind = \"cpu\"\nfp16 = true\n"
        ));
        assert!(e.contains("provider[0].fp16"), "{e}");
        let e = err(&format!(
            "{MINIMAL}\n[[pipeline.provider]]\nkind = \"npu\"\n"
        ));
        assert!(e.contains("npu") && e.contains("tensorrt"), "{e}");
    }

    #[test]
    fn constant_data_must_match_shape() {
        let e = err(&format!(
            "{MINIMAL}\n[pipeline.constants.sr]\ndtype = \"i64\"\nshape = [2]\ndata = [16000]\n"
        ));
        assert!(e.contains("constants.sr.data"), "{e}");
    }

    #[test]
    fn invalid_key_expressions_are_rejected() {
        for bad in ["a/*x", "/a", "a//b", "a/"] {
            let e = err(&MINIMAL.replace("in/*", bad));
            assert!(
                e.contains("pipeline[0].input") && e.contains("key expression"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn generate_pipelines_are_split_out_and_checked() {
        let text = r#"
            [[pipeline]]
            name = "chat"
            kind = "generate"
            model = "llm"
            input = "llm/cmd"
            output = "llm/out"
            max_tokens = 64
        "#;
        let c = Config::from_toml(text, Path::new("/m")).unwrap();
        assert!(c.pipelines.is_empty());
        let g = &c.generators[0];
        assert_eq!(
            (g.cancel_key.as_str(), g.query_key.as_str()),
            ("llm/cmd/cancel", "llm/cmd/query")
        );
        assert_eq!((g.max_tokens, g.default_max_tokens), (64, 64));
        let e = err(&format!("{text}\noverflow = \"latest\"\n"));
        assert!(
            e.contains("pipeline[0].overflow") && e.contains("tensor pipelines"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}\nmax_tokens = 3\n"));
        assert!(
            e.contains("pipeline[0].max_tokens") && e.contains("generate"),
            "{e}"
        );
    }

    #[test]
    fn workers_reserve_levels() {
        let c = Config::from_toml(
            &format!(
                "[[level]]\nname = \"hi\"\n[[level]]\nname = \"lo\"\n[[worker]]\nlevels = [\"hi\"]\n[[worker]]\nlevels = [\"lo\", \"hi\"]\n{MINIMAL}"
            ),
            Path::new("/"),
        )
        .unwrap();
        let levels: Vec<_> = c.workers.iter().map(|w| w.levels.clone()).collect();
        assert_eq!(levels, vec![vec![0], vec![0, 1]]);
        assert_eq!(c.pipelines[0].level, 1, "default level is the lowest");
    }
}
