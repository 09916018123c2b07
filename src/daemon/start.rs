//! Start-up, in order: load ONNX Runtime, open the zenoh session (a port
//! clash is reported before minutes of model loading), build and warm up
//! every session for every worker that serves its level, build the context,
//! start the workers, then open intake (subscribers and queryables) last, so
//! nothing arrives before a model is warm.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use ort::environment::Environment;

use super::{StartError, StartStep};
use crate::config::{Config, GeneratorConfig};
use crate::ctx::ros::RosOut;
use crate::ctx::{Ctx, GenPipe, Sched, TensorPipe};
use crate::infer::engine::EngineError;
use crate::infer::warm::{load_and_warm, load_ocr};
use crate::llm::registry::Registry;
use crate::llm::tools::run::ModelVocab;
use crate::llm::tools::{PipeTools, ToolSet};
use crate::llm::{self, DecodeSlots, LlmShared, ModelFiles};
use crate::obs::batch::{BatchStats, DecodeStats};
use crate::obs::health::Progress;
use crate::obs::{PipelineStats, WorkerStats};
use crate::wire::command::CommandLimits;
use crate::wire::reply::fixed_meta;
use crate::worker::{self, Worker};

/// Reports each session load before it begins.
pub(super) struct Progressing<'a> {
    observe: &'a (dyn Fn(StartStep<'_>) + Send + Sync),
    index: usize,
    total: usize,
}

impl Progressing<'_> {
    fn step(&mut self, pipeline: &str, worker: usize) {
        self.index += 1;
        (self.observe)(StartStep {
            index: self.index,
            total: self.total,
            pipeline,
            worker,
        });
    }
}

fn serving(config: &Config, level: usize) -> Vec<usize> {
    (0..config.workers.len())
        .filter(|&w| config.workers[w].levels.contains(&level))
        .collect()
}

pub(super) fn progressing<'a>(
    config: &Config,
    observe: &'a (dyn Fn(StartStep<'_>) + Send + Sync),
) -> Progressing<'a> {
    let total = config
        .pipelines
        .iter()
        .map(|p| serving(config, p.level).len())
        .chain(
            config
                .generators
                .iter()
                .map(|g| serving(config, g.level).len()),
        )
        .sum();
    Progressing {
        observe,
        index: 0,
        total,
    }
}

/// Loads every tensor pipeline's session on each worker that serves it.
pub(super) fn tensor_pipes(
    env: &Environment,
    config: &Config,
    workers: &mut [Worker],
    prog: &mut Progressing,
) -> Result<Vec<TensorPipe>, StartError> {
    let mut pipes = Vec::new();
    for p in &config.pipelines {
        let mut spec = None;
        for w in workers.iter_mut() {
            if config.workers[w.id].levels.contains(&p.level) {
                prog.step(&p.name, w.id);
                if p.ocr.is_some() {
                    let (chain, s) = load_ocr(env, &config.runtime, p)?;
                    spec.get_or_insert(s);
                    w.runners.push(None);
                    w.ocr.push(Some(Box::new(chain)));
                    continue;
                }
                let loaded = load_and_warm(env, &config.runtime, p)?;
                spec.get_or_insert(loaded.spec);
                w.runners.push(Some(loaded.runner));
            } else {
                w.runners.push(None);
            }
            w.ocr.push(None);
        }
        let spec = spec.expect("config validation guarantees a worker per level");
        // An OCR spec's bound input is a placeholder size (the chain sizes
        // each frame itself): the detector's own input is the truth.
        let inputs = if p.ocr.is_some() {
            &spec.model_inputs
        } else {
            &spec.client_inputs
        };
        tracing::info!(
            pipeline = %p.name,
            provider = spec.provider,
            inputs = ?inputs.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            "pipeline ready"
        );
        let model_name = p
            .model
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fixed = (0..config.workers.len())
            .map(|w| {
                fixed_meta(&[
                    ("pipeline", &p.name),
                    ("model", &model_name),
                    ("provider", spec.provider),
                    ("worker", &w.to_string()),
                ])
            })
            .collect();
        pipes.push(TensorPipe {
            stats: PipelineStats::new(config.metrics.histograms),
            batch_stats: p.batch.as_ref().map(|b| BatchStats::new(b.max_batch)),
            fixed_meta: fixed,
            log: crate::obs::ratelimit::LogLimiter::new(&p.name),
            cfg: p.clone(),
            spec,
            model_name,
        });
    }
    Ok(pipes)
}

/// Stage two of every `[[pipeline.tool]]`: schema files read and compiled
/// (validator and grammar); one entry per generation pipeline.
pub(super) fn tool_sets(config: &Config) -> Result<Vec<Option<Arc<ToolSet>>>, StartError> {
    config
        .generators
        .iter()
        .map(|g| {
            if g.tools.is_empty() {
                return Ok(None);
            }
            ToolSet::load(&g.name, &g.tools, Path::new(""))
                .map(|s| Some(Arc::new(s)))
                .map_err(|e| StartError::Tools(e.to_string()))
        })
        .collect()
}

/// The pipeline's tools over the model's vocabulary (~0.3 s: every
/// token's bytes into llguidance's trie).
fn pipe_tools(
    g: &GeneratorConfig,
    set: Option<Arc<ToolSet>>,
    files: &ModelFiles,
    shared: &LlmShared,
) -> Result<Option<PipeTools>, StartError> {
    let Some(set) = set else { return Ok(None) };
    let vocab = ModelVocab {
        tokenizer_json: &files.tokenizer,
        tokenizer: shared.tokenizer.clone(),
        stop_ids: &shared.generation.stop_token_ids,
        logits_width: shared.generation.vocab_size,
    };
    PipeTools::new(set, vocab, g.max_tool_steps)
        .map(Some)
        .map_err(|e| StartError::Tools(format!("pipeline {:?}: {e}", g.name)))
}

/// Loads every generation pipeline's session on each worker that serves it.
pub(super) fn gen_pipes(
    env: &Environment,
    config: &Config,
    workers: &mut [Worker],
    prog: &mut Progressing,
    tool_sets: Vec<Option<Arc<ToolSet>>>,
) -> Result<Vec<GenPipe>, StartError> {
    let mut pipes = Vec::new();
    for (g, set) in config.generators.iter().zip(tool_sets) {
        let files = ModelFiles::open(&g.model).map_err(|reason| EngineError::Interface {
            pipeline: g.name.clone(),
            reason: format!("cannot open the converted model directory: {reason}"),
        })?;
        let shared = Arc::new(LlmShared::new(&files).map_err(|reason| EngineError::Load {
            pipeline: g.name.clone(),
            path: files.tokenizer.display().to_string(),
            reason,
        })?);
        let tools = pipe_tools(g, set, &files, &shared)?;
        let mut provider = "";
        for w in workers.iter_mut() {
            if config.workers[w.id].levels.contains(&g.level) {
                prog.step(&g.name, w.id);
                let (m, p) = llm::load(env, g, &config.runtime, &shared, &files.onnx)?;
                provider = p;
                w.llms.push(Some(m));
            } else {
                w.llms.push(None);
            }
        }
        tracing::info!(pipeline = %g.name, provider, model = %shared.generation.model_name, "generation pipeline ready");
        let mut pipe = gen_pipe(config, g, shared, provider);
        pipe.tools = tools;
        pipes.push(pipe);
    }
    Ok(pipes)
}

fn gen_pipe(
    config: &Config,
    g: &GeneratorConfig,
    llm: Arc<LlmShared>,
    provider: &'static str,
) -> GenPipe {
    let top = g.allowed_levels.iter().copied().max().unwrap_or(g.level);
    GenPipe {
        limits: CommandLimits {
            max_tokens: g.max_tokens,
            default_max_tokens: g.default_max_tokens,
            max_prompt_chars: g.max_prompt_chars,
            max_messages: g.max_messages,
            default_deadline: g.deadline,
        },
        max_prompt_tokens: g
            .max_prompt_tokens
            .unwrap_or_else(|| llm.default_max_prompt_tokens(g.max_tokens)),
        registry: Registry::new(g.max_generations, g.max_unsent),
        decode: (0..=top)
            .map(|l| {
                (g.max_batch > 1 && g.allowed_levels.contains(&l))
                    .then(|| DecodeSlots::new(g.max_batch))
            })
            .collect(),
        decode_stats: DecodeStats::new(g.max_batch),
        stats: PipelineStats::new(config.metrics.histograms),
        log: crate::obs::ratelimit::LogLimiter::new(&g.name),
        cfg: g.clone(),
        llm,
        provider,
        tools: None,
    }
}

/// The context every stage reads.
pub(super) fn context(
    config: Config,
    (tensors, gens): (Vec<TensorPipe>, Vec<GenPipe>),
    session: zenoh::Session,
    sched: Arc<Sched>,
    ros2: RosOut,
) -> Ctx {
    Ctx {
        workers: config
            .workers
            .iter()
            .map(|_| WorkerStats::default())
            .collect(),
        progress: Progress::new(config.workers.len()),
        order: AtomicU64::new(0),
        started: Instant::now(),
        fleet: std::sync::OnceLock::new(),
        config,
        tensors,
        gens,
        session,
        sched,
        ros2,
    }
}

/// Starts one thread per worker; each applies its OS policy first and
/// reports whether that worked before taking work.
pub(super) fn spawn_workers(
    workers: Vec<Worker>,
    ctx: &Arc<Ctx>,
) -> Result<Vec<std::thread::JoinHandle<()>>, StartError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    for w in workers {
        let c = ctx.clone();
        let tx = tx.clone();
        let t = std::thread::Builder::new()
            .name(format!("reflexd-w{}", w.id))
            .spawn(move || {
                let setup =
                    worker::apply_policy(w.policy).and_then(|()| worker::apply_affinity(&w.cpus));
                let ok = setup.is_ok();
                let _ = tx.send((w.id, setup));
                if ok {
                    worker::run(w, c);
                }
            })
            .map_err(|e| StartError::Worker(format!("cannot spawn worker thread: {e}")))?;
        threads.push(t);
    }
    for _ in 0..threads.len() {
        let (id, r) = rx.recv().expect("every worker reports its setup");
        if let Err(e) = r {
            ctx.sched.abort();
            return Err(StartError::Worker(format!("worker {id}: {e}")));
        }
    }
    Ok(threads)
}

/// Locks the process's memory (models are loaded by now; MCL_FUTURE covers
/// later allocations such as thread stacks and output tensors).
pub(super) fn lock_memory() -> Result<(), StartError> {
    // SAFETY: plain syscall without pointers.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } == 0 {
        tracing::info!("memory locked (mlockall)");
        Ok(())
    } else {
        Err(StartError::Mlock(
            std::io::Error::last_os_error().to_string(),
        ))
    }
}
