//! A worker's session for one generation pipeline and the model runs that
//! advance a generation: the chunked prefill and one decode step per turn.
//! The KV cache stays in runtime values: each step's `present.*` outputs are
//! moved, not copied, into the next step's `past_key_values.*` inputs.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ort::memory::Allocator;
use ort::session::Session;
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType};

use super::sampling;
use super::tools::{Committed, ToolError};
use super::{Finish, Generation, LlmShared, StepOutput};
use crate::config::{GeneratorConfig, RuntimeConfig};
use crate::infer::engine::{self, EngineError, SessionSpec};
use crate::wire::command::{self, CommandLimits};

/// A worker's session for one generation pipeline.
pub struct LlmModel {
    pub session: Session,
    pub shared: Arc<LlmShared>,
    /// Most prompt tokens per prefill turn.
    pub prefill_chunk: usize,
}

pub(super) fn i64_tensor(shape: [usize; 2], data: Vec<i64>) -> Result<DynValue, String> {
    OrtTensor::from_array((shape, data))
        .map(|t| t.into_dyn())
        .map_err(|e| e.to_string())
}

impl LlmModel {
    /// Sets up an empty KV cache (first turn; the prompt was tokenized
    /// and bounded at intake).
    fn start(&self, g: &mut Generation) -> Result<(), String> {
        let gen_cfg = &self.shared.generation;
        g.started = Some(Instant::now());
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
pub(super) fn take_token(sh: &LlmShared, g: &mut Generation, logits: &mut [f32]) -> StepOutput {
    let gen_cfg = &sh.generation;
    crate::fault::at(crate::fault::Stage::Sample, Some(&g.cmd.id));
    if let Err(e) = tools_mask(g, logits) {
        return tool_failed(g, e);
    }
    let token = sampling::sample(logits, &g.history, &g.cmd.sampling, &mut g.rng);
    g.history.push(token);
    let call = match tools_commit(g, token) {
        Ok(c) => c,
        Err(e) => return tool_failed(g, e),
    };
    if gen_cfg.stop_token_ids.contains(&token) {
        g.finished = Some(Finish::Stop);
        return StepOutput { token: None };
    }
    g.tokens.push(token);
    g.next_input = Some(token);
    crate::fault::at(crate::fault::Stage::Detok, Some(&g.cmd.id));
    let piece = g.detok.push(token, |ids| sh.decode(ids));
    if call == Committed::Call {
        g.finished = Some(Finish::ToolCall);
    } else if piece.stopped {
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

/// The tool hook before sampling: with tools enabled, every token the
/// grammar does not allow next gets -inf (computed in place, no waiting).
fn tools_mask(g: &mut Generation, logits: &mut [f32]) -> Result<(), ToolError> {
    match g.tools.as_deref_mut() {
        Some(run) => run.mask(logits),
        None => Ok(()),
    }
}

/// The tool hook after sampling: advances the grammar; a closed call is
/// gated here and waits in the run for egress.
fn tools_commit(g: &mut Generation, token: u32) -> Result<Committed, ToolError> {
    match g.tools.as_deref_mut() {
        Some(run) => run.commit(&g.cmd.id, token, Instant::now()),
        None => Ok(Committed::Continue),
    }
}

fn tool_failed(g: &mut Generation, e: ToolError) -> StepOutput {
    g.error = Some(e.rejection());
    g.finished = Some(Finish::Error);
    StepOutput { token: None }
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
            max_messages: 1,
            default_deadline: Duration::from_secs(60),
        },
    )
    .expect("the warm-up command is valid");
    let ids = shared
        .prompt_ids(&cmd.messages, shared.generation.context_length)
        .map_err(|r| EngineError::Interface {
            pipeline: cfg.name.clone(),
            reason: format!("warm-up prompt: {r}"),
        })?;
    let mut g = Generation::new(
        0,
        0,
        cmd,
        Arc::new(AtomicBool::new(false)),
        Instant::now(),
        0,
        ids,
    );
    model
        .step(&mut g)
        .map_err(|reason| EngineError::Interface {
            pipeline: cfg.name.clone(),
            reason: format!("warm-up generation step failed: {reason}"),
        })?;
    Ok((model, m.provider))
}
