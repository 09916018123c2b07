//! Generation pipelines: tokenization → prefill → decode steps → output
//! decoding. A [`Generation`] is the state of one request (tokens, KV cache,
//! sampler, detokenizer, timing); the scheduler queues it like any job, and a
//! worker advances it by exactly one model run per turn ([`LlmModel::step`]),
//! then puts it back, so higher-priority work waits at most one step and
//! generations at one level interleave round-robin. The KV cache stays in
//! ORT-owned values: each step's `present.*` outputs are moved, not copied,
//! into the next step's `past_key_values.*` inputs.

pub mod batch;
pub mod command;
pub mod detok;
pub mod sampling;
pub mod serve;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ort::memory::Allocator;
use ort::session::Session;
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType};
use serde::Deserialize;

use crate::config::{GeneratorConfig, RuntimeConfig};
use crate::engine::{self, EngineError, SessionSpec};
use crate::error::{ErrorCode, Rejection};
use command::{Command, CommandLimits, Message};
use detok::Detokenizer;
use sampling::Rng;

/// `generation.json` written by `models/llm/convert_gguf.py`.
#[derive(Deserialize, Debug, Clone)]
pub struct GenerationFile {
    pub model_name: String,
    pub stop_token_ids: Vec<u32>,
    pub context_length: usize,
    pub num_layers: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub chat_template: ChatTemplate,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ChatTemplate {
    #[serde(default)]
    pub bos: String,
    #[serde(default)]
    pub default_system: String,
    pub system_prefix: String,
    pub system_suffix: String,
    pub user_prefix: String,
    pub user_suffix: String,
    pub assistant_prefix: String,
    pub assistant_suffix: String,
    pub generation_prompt: String,
}

impl ChatTemplate {
    /// Renders messages the way the model was trained to read them.
    pub fn render(&self, messages: &[Message]) -> String {
        let mut s = self.bos.clone();
        if messages.first().is_none_or(|m| m.role != "system") && !self.default_system.is_empty() {
            s.push_str(&self.system_prefix);
            s.push_str(&self.default_system);
            s.push_str(&self.system_suffix);
        }
        for m in messages {
            let (pre, suf) = match m.role.as_str() {
                "system" => (&self.system_prefix, &self.system_suffix),
                "assistant" => (&self.assistant_prefix, &self.assistant_suffix),
                _ => (&self.user_prefix, &self.user_suffix),
            };
            s.push_str(pre);
            s.push_str(&m.content);
            s.push_str(suf);
        }
        s.push_str(&self.generation_prompt);
        s
    }
}

/// Files of a converted model directory.
pub struct ModelFiles {
    pub onnx: PathBuf,
    pub tokenizer: PathBuf,
    pub generation: GenerationFile,
}

impl ModelFiles {
    pub fn open(dir: &Path) -> Result<ModelFiles, String> {
        let gen_path = dir.join("generation.json");
        let text = std::fs::read_to_string(&gen_path)
            .map_err(|e| format!("{}: {e}", gen_path.display()))?;
        let generation: GenerationFile =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", gen_path.display()))?;
        let onnx = dir.join("model.onnx");
        let tokenizer = dir.join("tokenizer.json");
        for p in [&onnx, &tokenizer] {
            if !p.is_file() {
                return Err(format!("{} not found", p.display()));
            }
        }
        Ok(ModelFiles {
            onnx,
            tokenizer,
            generation,
        })
    }
}

/// Shared, immutable parts of a generation pipeline.
pub struct LlmShared {
    pub tokenizer: tokenizers::Tokenizer,
    pub generation: GenerationFile,
    past_key_names: Vec<String>,
    past_value_names: Vec<String>,
    present_key_names: Vec<String>,
    present_value_names: Vec<String>,
}

impl LlmShared {
    pub fn new(files: &ModelFiles) -> Result<LlmShared, String> {
        let tokenizer = tokenizers::Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| format!("{}: {e}", files.tokenizer.display()))?;
        let n = files.generation.num_layers;
        Ok(LlmShared {
            tokenizer,
            generation: files.generation.clone(),
            past_key_names: (0..n).map(|i| format!("past_key_values.{i}.key")).collect(),
            past_value_names: (0..n)
                .map(|i| format!("past_key_values.{i}.value"))
                .collect(),
            present_key_names: (0..n).map(|i| format!("present.{i}.key")).collect(),
            present_value_names: (0..n).map(|i| format!("present.{i}.value")).collect(),
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    Deadline,
    Cancelled,
    Error,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Deadline => "deadline",
            Finish::Cancelled => "cancelled",
            Finish::Error => "error",
        }
    }
}

/// The state of one request, moved between the scheduler and workers.
pub struct Generation {
    pub pipeline: usize,
    pub level: usize,
    pub cmd: Command,
    pub cancel: Arc<AtomicBool>,
    pub received: Instant,
    pub deadline: Instant,
    /// Where tokens go: the pub/sub topic or a zenoh query.
    pub sink: serve::Sink,
    prompt_tokens: usize,
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// Prompt + generated ids, for the repetition penalty.
    history: Vec<u32>,
    past: Vec<DynValue>,
    past_len: usize,
    next_input: Option<u32>,
    /// Prompt ids and how many of them the KV cache already holds: the
    /// prefill runs in chunks so one turn never takes the whole prompt.
    prompt: Vec<u32>,
    prefilled: usize,
    rng: Rng,
    detok: Detokenizer,
    pub started: Option<Instant>,
    pub first_token: Option<Instant>,
    pub finished: Option<Finish>,
    pub error: Option<Rejection>,
    /// Daemon event order of the latest step (see `Shared::order`).
    pub run_order: u64,
}

/// What one step produced.
pub struct StepOutput {
    /// The token sampled this step and the text it releases.
    pub token: Option<(u32, String)>,
}

impl Generation {
    pub fn new(
        pipeline: usize,
        level: usize,
        cmd: Command,
        cancel: Arc<AtomicBool>,
        received: Instant,
        sink: serve::Sink,
    ) -> Generation {
        let seed = cmd.sampling.seed;
        let stops = cmd.stop.clone();
        Generation {
            pipeline,
            level,
            deadline: received + cmd.deadline,
            cmd,
            cancel,
            received,
            sink,
            prompt_tokens: 0,
            tokens: Vec::new(),
            history: Vec::new(),
            past: Vec::new(),
            past_len: 0,
            next_input: None,
            prompt: Vec::new(),
            prefilled: 0,
            rng: Rng::new(seed),
            detok: Detokenizer::new(stops),
            started: None,
            first_token: None,
            finished: None,
            error: None,
            run_order: 0,
        }
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    pub fn text(&self) -> &str {
        self.detok.text()
    }

    /// Text held back by the detokenizer, released when generation ends.
    pub fn flush(&mut self) -> String {
        self.detok.finish()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Relaxed)
    }

    /// Prefill done and not finished: its next step is a decode step, the
    /// kind that can join a decode batch.
    pub fn is_decoding(&self) -> bool {
        self.next_input.is_some() && self.finished.is_none()
    }
}

/// A worker's session for one generation pipeline.
pub struct LlmModel {
    pub session: Session,
    pub shared: Arc<LlmShared>,
    /// Most prompt tokens per prefill turn.
    pub prefill_chunk: usize,
}

fn i64_tensor(shape: [usize; 2], data: Vec<i64>) -> Result<DynValue, String> {
    OrtTensor::from_array((shape, data))
        .map(|t| t.into_dyn())
        .map_err(|e| e.to_string())
}

impl LlmModel {
    /// Tokenizes the prompt and sets up an empty KV cache (first turn).
    fn start(&self, g: &mut Generation) -> Result<(), String> {
        let sh = &self.shared;
        let gen_cfg = &sh.generation;
        g.started = Some(Instant::now());
        let text = gen_cfg.chat_template.render(&g.cmd.messages);
        let ids = sh.encode(&text)?;
        g.prompt_tokens = ids.len();
        if ids.is_empty() || ids.len() + 1 >= gen_cfg.context_length {
            g.finished = Some(Finish::Error);
            g.error = Some(Rejection::new(
                ErrorCode::PromptTooLong,
                format!(
                    "prompt is {} tokens; the model context is {}",
                    ids.len(),
                    gen_cfg.context_length
                ),
            ));
            return Ok(());
        }
        g.history.extend_from_slice(&ids);
        g.prompt = ids;
        let empty = [1usize, gen_cfg.num_key_value_heads, 0, gen_cfg.head_dim];
        g.past = (0..2 * gen_cfg.num_layers)
            .map(|_| {
                ort::value::DynTensor::new(&Allocator::default(), TensorElementType::Float32, empty)
                    .map(|t| t.into_dyn())
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// One session run with the KV cache moved in and out: `past` (key,
    /// value per layer) becomes the `past_key_values.*` inputs and is
    /// refilled from `present.*`, without copying. `ids_mask_pos` are
    /// `input_ids`, `attention_mask`, `position_ids`. On failure `past` is
    /// left empty (the cache went into the failed run).
    pub(crate) fn run_kv(
        &mut self,
        ids_mask_pos: [DynValue; 3],
        past: &mut Vec<DynValue>,
    ) -> Result<ort::session::SessionOutputs<'_>, String> {
        let sh = self.shared.clone();
        let layers = sh.generation.num_layers;
        let [ids, mask, pos] = ids_mask_pos;
        let mut inputs: Vec<(&str, ort::session::SessionInputValue)> =
            Vec::with_capacity(3 + past.len());
        inputs.push(("input_ids", ids.into()));
        inputs.push(("attention_mask", mask.into()));
        inputs.push(("position_ids", pos.into()));
        let mut kv = std::mem::take(past).into_iter();
        for i in 0..layers {
            let k = kv.next().ok_or("missing past key")?;
            let v = kv.next().ok_or("missing past value")?;
            inputs.push((sh.past_key_names[i].as_str(), k.into()));
            inputs.push((sh.past_value_names[i].as_str(), v.into()));
        }
        let mut out = self.session.run(inputs).map_err(|e| e.to_string())?;
        for i in 0..layers {
            let k = out
                .remove(&sh.present_key_names[i])
                .ok_or("missing present key")?;
            let v = out
                .remove(&sh.present_value_names[i])
                .ok_or("missing present value")?;
            past.push(k);
            past.push(v);
        }
        Ok(out)
    }

    /// One model run: the prefill on the first call, one decode step after.
    /// Sets `g.finished` when the generation ends.
    pub fn step(&mut self, g: &mut Generation) -> Result<StepOutput, String> {
        let sh = self.shared.clone();
        if g.started.is_none() {
            self.start(g)?;
            if g.finished.is_some() {
                return Ok(StepOutput { token: None });
            }
        }
        let ids: Vec<u32> = match g.next_input {
            None => {
                let end = (g.prefilled + self.prefill_chunk).min(g.prompt.len());
                let chunk = g.prompt[g.prefilled..end].to_vec();
                g.prefilled = end;
                chunk
            }
            Some(t) => vec![t],
        };
        let last_chunk = g.next_input.is_some() || g.prefilled == g.prompt.len();
        let s = ids.len();
        let total = g.past_len + s;
        let input_ids = i64_tensor([1, s], ids.iter().map(|&i| i as i64).collect())?;
        let mask = i64_tensor([1, total], vec![1; total])?;
        let pos = i64_tensor([1, s], (g.past_len as i64..total as i64).collect())?;
        let out = self.run_kv([input_ids, mask, pos], &mut g.past)?;
        g.past_len = total;
        if !last_chunk {
            // More prompt to prefill: no token yet, back to the queue.
            return Ok(StepOutput { token: None });
        }
        let logits = out.get("logits").ok_or("model returned no logits")?;
        let (shape, data) = logits
            .try_extract_tensor::<f32>()
            .map_err(|e| e.to_string())?;
        let vocab = *shape.last().ok_or("logits have no shape")? as usize;
        let mut last = data[data.len() - vocab..].to_vec();
        drop(out);
        Ok(take_token(&sh, g, &mut last))
    }
}

/// Samples the next token from the last position's logits, updates the
/// generation (history, detokenizer, end conditions) and returns what to
/// stream. Shared by the single and the batched decode step.
fn take_token(sh: &LlmShared, g: &mut Generation, logits: &mut [f32]) -> StepOutput {
    let gen_cfg = &sh.generation;
    let token = sampling::sample(logits, &g.history, &g.cmd.sampling, &mut g.rng);
    g.history.push(token);
    if gen_cfg.stop_token_ids.contains(&token) {
        g.finished = Some(Finish::Stop);
        return StepOutput { token: None };
    }
    g.tokens.push(token);
    g.next_input = Some(token);
    let piece = g.detok.push(token, |ids| sh.decode(ids));
    if piece.stopped {
        g.finished = Some(Finish::Stop);
    } else if g.tokens.len() >= g.cmd.max_tokens as usize
        || g.past_len + 1 >= gen_cfg.context_length
    {
        g.finished = Some(Finish::Length);
    }
    StepOutput {
        token: Some((token, piece.text)),
    }
}

/// Builds and warms up a worker's session for generation pipeline `cfg`.
pub fn load(
    env: &ort::environment::Environment,
    cfg: &GeneratorConfig,
    rt: &RuntimeConfig,
    shared: &Arc<LlmShared>,
    onnx: &Path,
) -> Result<(LlmModel, &'static str), EngineError> {
    let spec = SessionSpec {
        name: &cfg.name,
        model: onnx,
        providers: &cfg.providers,
        fallback: cfg.fallback,
    };
    let m = engine::load(env, &spec, rt)?;
    let mut model = LlmModel {
        session: m.session,
        shared: shared.clone(),
        prefill_chunk: cfg.prefill_chunk,
    };
    // Warm-up: one short prefill, so the first real request does not pay
    // for ORT's first-run allocations.
    let cmd = command::parse(
        br#"{"id":"warmup","prompt":"Hi","max_tokens":1}"#,
        &CommandLimits {
            max_tokens: 1,
            default_max_tokens: 1,
            max_prompt_chars: 16,
            default_deadline: Duration::from_secs(60),
        },
    )
    .expect("the warm-up command is valid");
    let mut g = Generation::new(
        0,
        0,
        cmd,
        Arc::new(AtomicBool::new(false)),
        Instant::now(),
        serve::Sink::None,
    );
    model
        .step(&mut g)
        .map_err(|reason| EngineError::Interface {
            pipeline: cfg.name.clone(),
            reason: format!("warm-up generation step failed: {reason}"),
        })?;
    Ok((model, m.provider))
}

/// Timing of a finished generation, in milliseconds (see docs/protocol.md).
#[derive(serde::Serialize, Debug, Clone, Copy)]
pub struct Timing {
    pub queue_ms: f64,
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub total_ms: f64,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn timing(g: &Generation, now: Instant) -> Timing {
    let queue = g
        .started
        .map(|s| s - g.received)
        .unwrap_or(now - g.received);
    let total = now - g.received;
    let ttft = g.first_token.map(|f| f - g.received);
    let n = g.tokens.len();
    let tpot = ttft
        .filter(|_| n > 1)
        .map(|t| ms(total - t) / (n - 1) as f64);
    let prefill = match (g.started, g.first_token) {
        (Some(s), Some(f)) if f > s => Some(g.prompt_tokens as f64 / (f - s).as_secs_f64()),
        _ => None,
    };
    Timing {
        queue_ms: ms(queue),
        ttft_ms: ttft.map(ms),
        tpot_ms: tpot,
        total_ms: ms(total),
        prefill_tokens_per_s: prefill,
        decode_tokens_per_s: tpot.filter(|t| *t > 0.0).map(|t| 1000.0 / t),
    }
}
