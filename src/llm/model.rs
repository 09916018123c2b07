//! A worker's session for one generation pipeline: the session, its
//! forward-pass binding ([`Forward`]), the worker's prefix cache, the
//! optional draft model, the sampler's scratch memory, the measured cost of
//! a verify pass, and the CPU clocks of the threads that run it. Built and
//! warmed up by [`load`] at start-up: one short generation, the chat
//! template's prefix computed into the prefix cache, and the first
//! measurement of a plain step against a verify pass. The steps themselves
//! are in `llm::decode`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ort::session::Session;

use super::draft::Draft;
use super::forward::{Forward, Pass};
use super::kv::{KvCache, KvShape};
use super::prefix::PrefixCache;
use super::sampling::Scratch;
use super::spec::{SpecConfig, SpecMode, StepCosts};
use super::{Generation, LlmShared};
use crate::config::{GeneratorConfig, RuntimeConfig, Speculation};
use crate::infer::engine::{self, EngineError, SessionSpec};
use crate::obs::cost::{CpuClock, PoolThreads};
use crate::wire::command::{self, CommandLimits};

/// A worker's session for one generation pipeline.
pub struct LlmModel {
    /// Declared before the session: the binding is released first.
    pub(super) fwd: Forward,
    pub(super) draft: Option<Draft>,
    pub session: Session,
    pub shared: Arc<LlmShared>,
    /// Most prompt tokens per prefill turn.
    pub prefill_chunk: usize,
    pub(super) kv_shape: KvShape,
    pub(super) spec_cfg: SpecConfig,
    pub(super) costs: StepCosts,
    pub(super) prefix: PrefixCache,
    pub(super) scratch: Scratch,
    /// CPU clocks of the threads that run this session's steps.
    pub clock: CpuClock,
}

impl LlmModel {
    /// Speculation settings in force (`Off` when the pipeline has none).
    pub fn speculation(&self) -> &SpecConfig {
        &self.spec_cfg
    }

    /// Prefix cache hits and lookups of this worker.
    pub fn prefix_stats(&self) -> (u64, u64) {
        (self.prefix.hits, self.prefix.lookups)
    }

    /// Runs the template's prefix (bos, system turn, user prefix) and
    /// stores its KV in the prefix cache, so the first request finds it.
    fn warm_prefix(&mut self) -> Result<usize, String> {
        if !self.prefix.enabled() {
            return Ok(0);
        }
        let t = &self.shared.generation.chat_template;
        let mut text = t.bos.clone();
        if !t.default_system.is_empty() {
            text.push_str(&t.system_prefix);
            text.push_str(&t.default_system);
            text.push_str(&t.system_suffix);
        }
        text.push_str(&t.user_prefix);
        let ids = self.shared.encode(&text)?;
        if ids.is_empty() {
            return Ok(0);
        }
        let kv = KvCache::new(self.kv_shape, 1, ids.len())?;
        for start in (0..ids.len()).step_by(self.prefill_chunk) {
            let end = (start + self.prefill_chunk).min(ids.len());
            let p = Pass {
                tokens: &ids[start..end],
                past: &[start],
                keep: 1,
            };
            self.fwd.run(&mut self.session, &kv, &p)?;
        }
        self.prefix.insert(&ids, &kv, 0)?;
        Ok(ids.len())
    }

    /// Times a plain step and a verify pass of `max_draft` tokens on `g`
    /// (a warm-up generation past its prefill), so the first requests'
    /// speculation decisions start from a measurement.
    fn measure_costs(&mut self, g: &Generation) -> Result<(), String> {
        let k = self.spec_cfg.max_draft;
        let kv = g.kv.as_ref().ok_or("warm-up generation has no cache")?;
        let t = g.next_input.unwrap_or(0);
        let tokens = vec![t; k + 1];
        if g.past_len + k + 1 > kv.cap {
            return Ok(());
        }
        for _ in 0..2 {
            let p = Pass {
                tokens: &tokens[..1],
                past: &[g.past_len],
                keep: 1,
            };
            let t0 = Instant::now();
            self.fwd.run(&mut self.session, kv, &p)?;
            self.costs.record_plain(t0.elapsed().as_nanos() as f64);
            let p = Pass {
                tokens: &tokens,
                past: &[g.past_len],
                keep: k + 1,
            };
            let t0 = Instant::now();
            self.fwd.run(&mut self.session, kv, &p)?;
            self.costs.record_verify(k, t0.elapsed().as_nanos() as f64);
        }
        Ok(())
    }
}

/// Whether the model takes `num_logits_to_keep`: declared in
/// generation.json's `onnx.optional_inputs` (older conversions do not).
fn declares_keep(shared: &LlmShared) -> bool {
    shared
        .generation
        .onnx
        .optional_inputs
        .contains_key("num_logits_to_keep")
}

fn spec_config(cfg: &GeneratorConfig) -> SpecConfig {
    SpecConfig {
        mode: match cfg.speculation {
            Speculation::Off => SpecMode::Off,
            Speculation::PromptLookup => SpecMode::PromptLookup,
            Speculation::Draft(_) => SpecMode::Draft,
        },
        max_draft: cfg.draft_tokens,
        ..SpecConfig::default()
    }
}

/// A session of `onnx` with the pipeline's providers whose intra-op
/// threads report their CPU clocks.
pub(super) fn session(
    env: &ort::environment::Environment,
    cfg: &GeneratorConfig,
    rt: &RuntimeConfig,
    onnx: &Path,
) -> Result<(Session, &'static str, CpuClock), EngineError> {
    let pool = PoolThreads::default();
    let spec = SessionSpec {
        name: &cfg.name,
        model: onnx,
        providers: &cfg.providers,
        fallback: cfg.fallback,
        pool: Some(pool.clone()),
    };
    let m = engine::load(env, &spec, rt)?;
    Ok((m.session, m.provider, pool.clock()))
}

/// Builds and warms up a worker's session for generation pipeline `cfg`.
pub fn load(
    env: &ort::environment::Environment,
    cfg: &GeneratorConfig,
    rt: &RuntimeConfig,
    shared: &Arc<LlmShared>,
    onnx: &Path,
) -> Result<(LlmModel, &'static str), EngineError> {
    let err = |reason: String| EngineError::Interface {
        pipeline: cfg.name.clone(),
        reason,
    };
    let (session, provider, clock) = session(env, cfg, rt, onnx)?;
    let g = &shared.generation;
    let fwd =
        Forward::new(&session, g.num_layers, g.vocab_size, declares_keep(shared)).map_err(err)?;
    let draft = match &cfg.speculation {
        Speculation::Draft(dir) => Some(Draft::load(env, cfg, rt, shared, dir)?),
        _ => None,
    };
    let spec_cfg = spec_config(cfg);
    let mut model = LlmModel {
        fwd,
        draft,
        session,
        shared: shared.clone(),
        prefill_chunk: cfg.prefill_chunk,
        kv_shape: KvShape {
            layers: g.num_layers,
            heads: g.num_key_value_heads,
            head_dim: g.head_dim,
        },
        costs: StepCosts::new(spec_cfg.max_draft),
        spec_cfg,
        prefix: PrefixCache::new(cfg.prefix_cache_tokens),
        scratch: Scratch::default(),
        clock,
    };
    warm_up(&mut model).map_err(err)?;
    Ok((model, provider))
}

/// The first runs: the template prefix, a short generation (which finds
/// that prefix cached), and the cost of a verify pass.
fn warm_up(model: &mut LlmModel) -> Result<(), String> {
    let cached = model
        .warm_prefix()
        .map_err(|e| format!("warm-up of the prefix cache failed: {e}"))?;
    let max_tokens = model.spec_cfg.max_draft as u32 + 2;
    let cmd = command::parse(
        format!(r#"{{"id":"warmup","prompt":"Hi","max_tokens":{max_tokens}}}"#).as_bytes(),
        &CommandLimits {
            max_tokens,
            default_max_tokens: 1,
            max_prompt_chars: 16,
            max_messages: 1,
            default_deadline: Duration::from_secs(60),
        },
    )
    .map_err(|r| format!("warm-up command: {r}"))?;
    let ids = model
        .shared
        .prompt_ids(&cmd.messages, model.shared.generation.context_length)
        .map_err(|r| format!("warm-up prompt: {r}"))?;
    let mut g = Generation::new(
        0,
        0,
        cmd,
        Arc::new(AtomicBool::new(false)),
        Instant::now(),
        0,
        ids,
    );
    while g.next_input.is_none() && g.finished.is_none() {
        model
            .step(&mut g, usize::MAX)
            .map_err(|e| format!("warm-up generation step failed: {e}"))?;
    }
    if model.spec_cfg.mode != SpecMode::Off && g.finished.is_none() {
        model.measure_costs(&g)?;
    }
    tracing::debug!(
        cached,
        prefix_hit = g.cached_tokens,
        plain_ms = model.costs.plain_ns() / 1e6,
        verify_ratio = model.costs.ratio(model.spec_cfg.max_draft),
        logits_to_keep = model.fwd.has_keep(),
        pool_threads = model.clock.pool_threads(),
        "generation session warmed up"
    );
    Ok(())
}
