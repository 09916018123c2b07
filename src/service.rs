//! The service: builds every stage from a validated [`Config`], reports ready,
//! and tears down in a fixed order. Start-up order: load ONNX Runtime, build
//! and warm up every session, open zenoh, start workers, declare subscribers
//! (intake opens last, so nothing arrives before a model is warm). Teardown
//! order: undeclare subscribers (stop intake), let workers drain their queues
//! within the drain timeout, answer anything left with `shutting_down`, close
//! the zenoh session, drop the ORT sessions.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::batch::{BatchSnapshot, BatchStats};
use crate::config::{Config, PipelineConfig, ZenohConfig, ZenohMode};
use crate::engine::{self, EngineError, Model};
use crate::error::{ErrorCode, Rejection};
use crate::health::Progress;
use crate::ingress;
use crate::llm::serve::{self as llm_serve, GenPipeline};
use crate::llm::{self, Finish, LlmShared, ModelFiles};
use crate::metrics;
use crate::ortlib::{self, OrtLoadError};
use crate::pipeline::{self, Spec, StreamState};
use crate::scheduler::Scheduler;
use crate::stats::{MetricsSnapshot, PipelineSnapshot, PipelineStats, WorkerStats};
use crate::worker::{self, Worker};

/// How long teardown lets workers finish queued jobs.
pub const DEFAULT_DRAIN_TIMEOUT: Duration =
    Duration::from_millis(crate::config::DEFAULT_DRAIN_TIMEOUT_MS);

#[derive(thiserror::Error, Debug)]
pub enum StartError {
    #[error(transparent)]
    Ort(#[from] OrtLoadError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(
        "pipeline {pipeline:?}: warm-up run failed: {reason} (set `warmup = {{ <input> = [shape] }}` for inputs with dynamic dimensions)"
    )]
    Warmup { pipeline: String, reason: String },
    #[error("zenoh: {0}")]
    Zenoh(String),
    #[error("{0}")]
    Worker(String),
    #[error(
        "runtime.mlockall = true: mlockall failed: {0} (needs CAP_IPC_LOCK, e.g. AmbientCapabilities=CAP_IPC_LOCK in the unit, or LimitMEMLOCK=infinity)"
    )]
    Mlock(String),
    #[error("metrics: {0}")]
    Metrics(String),
}

/// One step of start-up, reported before it begins (model loads and
/// TensorRT engine builds can take minutes; systemd hears about each).
#[derive(Debug)]
pub struct StartStep<'a> {
    /// 1-based index of this session load.
    pub index: usize,
    /// Session loads in all (one per pipeline per worker serving it).
    pub total: usize,
    pub pipeline: &'a str,
    pub worker: usize,
}

/// State every stage reads; built once, immutable afterwards except counters.
pub struct Shared {
    pub config: Config,
    pub specs: Vec<Spec>,
    pub model_names: Vec<String>,
    pub stats: Vec<PipelineStats>,
    /// Batching counters per tensor pipeline (`None` when not batched).
    pub batch_stats: Vec<Option<BatchStats>>,
    /// Generation pipelines, in `config.generators` order.
    pub gens: Vec<GenPipeline>,
    pub gen_stats: Vec<PipelineStats>,
    pub gen_providers: Vec<&'static str>,
    pub session: zenoh::Session,
    pub scheduler: Arc<Scheduler>,
    /// One counter for two events, message receipt and run start, so a
    /// prediction's `recv_order`/`run_order` show exactly which jobs started
    /// between its arrival and its run.
    pub order: AtomicU64,
    /// Per-worker "model run started at" stamps, read by the watchdog.
    pub progress: Progress,
    /// Busy time per worker, indexed by worker id.
    pub worker_stats: Vec<WorkerStats>,
    /// When the daemon finished loading (uptime and utilisation base).
    pub started: Instant,
}

/// Builds the zenoh configuration; scouting off unless asked for.
pub fn zenoh_config(z: &ZenohConfig) -> Result<zenoh::Config, String> {
    match z {
        ZenohConfig::File(path) => {
            zenoh::Config::from_file(path).map_err(|e| format!("{}: {e}", path.display()))
        }
        ZenohConfig::Inline {
            mode,
            listen,
            connect,
            scouting,
        } => {
            let mode = match mode {
                ZenohMode::Peer => "peer",
                ZenohMode::Client => "client",
                ZenohMode::Router => "router",
            };
            let json = serde_json::json!({
                "mode": mode,
                "listen": { "endpoints": listen },
                "connect": { "endpoints": connect },
                "scouting": {
                    "multicast": { "enabled": scouting },
                    "gossip": { "enabled": scouting },
                },
            });
            zenoh::Config::from_json5(&json.to_string()).map_err(|e| e.to_string())
        }
    }
}

/// Headroom above `limits.max_payload_bytes` for the zenoh receive bound: a
/// message's key, attachment and framing, so a payload just over the limit
/// still reaches ingress and is answered `payload_too_large`.
pub const RX_MESSAGE_SLACK: usize = 64 << 10;

/// Bounds zenoh's own reassembly of fragmented messages
/// (`transport/link/rx/max_message_size`, 1 GiB by default) to the payload
/// limit plus [`RX_MESSAGE_SLACK`], so a hostile publisher cannot make the
/// transport buffer a huge message before ingress sees its size. Larger
/// messages are dropped by zenoh (the link stays up). A zenoh config file
/// may set a lower bound, never a higher one.
pub fn bound_rx(
    mut zc: zenoh::Config,
    limits: &crate::config::Limits,
) -> Result<zenoh::Config, String> {
    const KEY: &str = "transport/link/rx/max_message_size";
    let want = limits.max_payload_bytes.saturating_add(RX_MESSAGE_SLACK);
    let current = zc
        .get_json(KEY)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    if want < current {
        zc.insert_json5(KEY, &want.to_string())
            .map_err(|e| format!("{KEY}: {e}"))?;
    }
    Ok(zc)
}

/// A loaded, warmed-up session for one pipeline plus its interface.
pub struct Loaded {
    pub model: Model,
    pub spec: Spec,
}

/// Builds one session for `p` and runs it once on zeros.
pub fn load_and_warm(
    env: &ort::environment::Environment,
    config: &Config,
    p: &PipelineConfig,
) -> Result<Loaded, StartError> {
    let mut model = engine::load(env, &p.into(), &config.runtime)?;
    let spec = Spec::new(p, &model)?;
    let mut st = p.is_stateful().then(|| StreamState::new(&spec));
    pipeline::run(&mut model, p, &spec, &spec.warmup_inputs(p), st.as_mut()).map_err(|reason| {
        StartError::Warmup {
            pipeline: p.name.clone(),
            reason,
        }
    })?;
    if let Some(b) = &p.batch {
        // A full batch too: proves the batch axes split back correctly
        // before the daemon reports ready, and pre-sizes ORT's buffers.
        let inputs = spec.warmup_inputs(p);
        let mut states: Vec<Option<StreamState>> = (0..b.max_batch)
            .map(|_| p.is_stateful().then(|| StreamState::new(&spec)))
            .collect();
        let mut items: Vec<pipeline::BatchItem> = states
            .iter_mut()
            .map(|st| pipeline::BatchItem {
                tensors: &inputs,
                state: st.as_mut(),
            })
            .collect();
        pipeline::run_batch(&mut model, p, &spec, &mut items).map_err(|reason| {
            StartError::Warmup {
                pipeline: p.name.clone(),
                reason: format!("batched warm-up (max_batch = {}): {reason}", b.max_batch),
            }
        })?;
    }
    Ok(Loaded { model, spec })
}

/// A running daemon. Dropping it without [`Daemon::shutdown`] aborts workers.
pub struct Daemon {
    shared: Arc<Shared>,
    subscribers: Vec<zenoh::pubsub::Subscriber<()>>,
    gen_entities: Vec<llm_serve::Entities>,
    threads: Vec<JoinHandle<()>>,
    exports: Option<metrics::Exports>,
}

impl Daemon {
    /// Starts every stage; returns once the daemon is serving.
    pub async fn start(config: Config) -> Result<Daemon, StartError> {
        Daemon::start_observed(config, &|_| {}).await
    }

    /// Like [`Daemon::start`], calling `observe` before each session load
    /// (the systemd notifier turns these into STATUS/EXTEND_TIMEOUT_USEC).
    pub async fn start_observed(
        config: Config,
        observe: &(dyn Fn(StartStep<'_>) + Send + Sync),
    ) -> Result<Daemon, StartError> {
        let (env, _) = ortlib::environment(config.runtime.onnxruntime.as_deref())?;
        let serving = |level: usize| -> Vec<usize> {
            (0..config.workers.len())
                .filter(|&w| config.workers[w].levels.contains(&level))
                .collect()
        };
        let total: usize = config
            .pipelines
            .iter()
            .map(|p| serving(p.level).len())
            .chain(config.generators.iter().map(|g| serving(g.level).len()))
            .sum();
        let mut index = 0;
        let mut step = |pipeline: &str, worker: usize| {
            index += 1;
            observe(StartStep {
                index,
                total,
                pipeline,
                worker,
            });
        };
        let (scheduler, parkers) = Scheduler::new(&config);
        let mut workers: Vec<Worker> = parkers
            .into_iter()
            .enumerate()
            .map(|(id, parker)| Worker {
                id,
                models: Vec::new(),
                gen_models: Vec::new(),
                parker,
                policy: config.workers[id].policy,
                cpus: config.workers[id].cpus.clone(),
            })
            .collect();
        let mut specs = Vec::new();
        for p in &config.pipelines {
            let mut spec = None;
            for (wi, w) in workers.iter_mut().enumerate() {
                if config.workers[wi].levels.contains(&p.level) {
                    step(&p.name, wi);
                    let loaded = load_and_warm(&env, &config, p)?;
                    spec.get_or_insert(loaded.spec);
                    w.models.push(Some(loaded.model));
                } else {
                    w.models.push(None);
                }
            }
            let spec = spec.expect("config validation guarantees a worker per level");
            tracing::info!(
                pipeline = %p.name,
                provider = spec.provider,
                inputs = ?spec.client_inputs.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                "pipeline ready"
            );
            specs.push(spec);
        }
        let mut gens = Vec::new();
        let mut gen_providers = Vec::new();
        for g in &config.generators {
            let files = ModelFiles::open(&g.model).map_err(|reason| EngineError::Interface {
                pipeline: g.name.clone(),
                reason: format!("cannot open the converted model directory: {reason}"),
            })?;
            let shared = Arc::new(LlmShared::new(&files).map_err(|reason| EngineError::Load {
                pipeline: g.name.clone(),
                path: files.tokenizer.display().to_string(),
                reason,
            })?);
            let mut provider = "";
            for (wi, w) in workers.iter_mut().enumerate() {
                if config.workers[wi].levels.contains(&g.level) {
                    step(&g.name, wi);
                    let (m, p) = llm::load(&env, g, &config.runtime, &shared, &files.onnx)?;
                    provider = p;
                    w.gen_models.push(Some(m));
                } else {
                    w.gen_models.push(None);
                }
            }
            tracing::info!(pipeline = %g.name, provider, model = %shared.generation.model_name, "generation pipeline ready");
            gen_providers.push(provider);
            gens.push(GenPipeline::new(g, shared));
        }
        if config.runtime.mlockall {
            lock_memory()?;
        }
        let zc = zenoh_config(&config.zenoh)
            .and_then(|zc| bound_rx(zc, &config.limits))
            .map_err(StartError::Zenoh)?;
        let session = zenoh::open(zc)
            .await
            .map_err(|e| StartError::Zenoh(e.to_string()))?;
        let shared = Arc::new(Shared {
            model_names: config
                .pipelines
                .iter()
                .map(|p| {
                    p.model
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .collect(),
            stats: config
                .pipelines
                .iter()
                .map(|_| PipelineStats::new(config.metrics.histograms))
                .collect(),
            batch_stats: config
                .pipelines
                .iter()
                .map(|p| p.batch.as_ref().map(|b| BatchStats::new(b.max_batch)))
                .collect(),
            gen_stats: config
                .generators
                .iter()
                .map(|_| PipelineStats::new(config.metrics.histograms))
                .collect(),
            worker_stats: config
                .workers
                .iter()
                .map(|_| WorkerStats::default())
                .collect(),
            started: Instant::now(),
            gens,
            gen_providers,
            specs,
            session,
            scheduler,
            order: AtomicU64::new(0),
            progress: Progress::new(config.workers.len()),
            config,
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for w in workers {
            let sh = shared.clone();
            let tx = tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("reflexd-w{}", w.id))
                .spawn(move || {
                    let setup = worker::apply_policy(w.policy)
                        .and_then(|()| worker::apply_affinity(&w.cpus));
                    let ok = setup.is_ok();
                    let _ = tx.send((w.id, setup));
                    if ok {
                        worker::run(w, sh);
                    }
                })
                .map_err(|e| StartError::Worker(format!("cannot spawn worker thread: {e}")))?;
            threads.push(t);
        }
        for _ in 0..threads.len() {
            let (id, r) = rx.recv().expect("every worker reports its setup");
            if let Err(e) = r {
                shared.scheduler.abort();
                return Err(StartError::Worker(format!("worker {id}: {e}")));
            }
        }
        let mut subscribers = Vec::new();
        for pi in 0..shared.config.pipelines.len() {
            let sub =
                ingress::subscribe(&shared, pi).map_err(|e| StartError::Zenoh(e.to_string()))?;
            subscribers.push(sub);
        }
        let mut gen_entities = Vec::new();
        for gi in 0..shared.config.generators.len() {
            let e =
                llm_serve::declare(&shared, gi).map_err(|e| StartError::Zenoh(e.to_string()))?;
            gen_entities.push(e);
        }
        let exports = metrics::start(&shared).await.map_err(StartError::Metrics)?;
        tracing::info!(
            pipelines = shared.config.pipelines.len(),
            generators = shared.config.generators.len(),
            workers = shared.config.workers.len(),
            zid = %shared.session.zid(),
            "reflexd ready"
        );
        Ok(Daemon {
            shared,
            subscribers,
            gen_entities,
            threads,
            exports: Some(exports),
        })
    }

    /// Counters per pipeline, in config order.
    pub fn stats(&self) -> Vec<PipelineSnapshot> {
        let mut all = self.metrics().pipelines;
        all.truncate(self.shared.config.pipelines.len());
        all
    }

    /// Batching counters of every batched tensor pipeline (batch-size
    /// histogram, time spent waiting for batches to fill), config order.
    pub fn batch_stats(&self) -> Vec<BatchSnapshot> {
        let sh = &self.shared;
        sh.config
            .pipelines
            .iter()
            .zip(&sh.batch_stats)
            .filter_map(|(p, s)| s.as_ref().map(|s| s.snapshot(&p.name)))
            .collect()
    }

    /// Counters per generation pipeline, in config order.
    pub fn generation_stats(&self) -> Vec<PipelineSnapshot> {
        let mut all = self.metrics().pipelines;
        all.drain(..self.shared.config.pipelines.len());
        all
    }

    /// Everything the metrics exporters publish.
    pub fn metrics(&self) -> MetricsSnapshot {
        metrics::snapshot(&self.shared)
    }

    /// Where the Prometheus endpoint listens, when enabled.
    pub fn prometheus_addr(&self) -> Option<std::net::SocketAddr> {
        self.exports.as_ref().and_then(|e| e.prometheus)
    }

    /// Decode counters per generation pipeline (continuous batching: the
    /// decode batch-size histogram and aggregate decode tokens/s), config
    /// order. Per-stream tokens/s is in each final message's timing.
    pub fn decode_stats(&self) -> Vec<crate::llm::batch::DecodeSnapshot> {
        let sh = &self.shared;
        sh.config
            .generators
            .iter()
            .zip(&sh.gens)
            .map(|(g, gp)| gp.decode_stats.snapshot(&g.name))
            .collect()
    }

    /// Generations currently registered per generation pipeline.
    pub fn live_generations(&self) -> Vec<usize> {
        self.shared.gens.iter().map(|g| g.live_count()).collect()
    }

    pub fn zenoh_session(&self) -> &zenoh::Session {
        &self.shared.session
    }

    /// The validated config the daemon runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The worker stuck longest inside one model run, if longer than
    /// `max_run` (the watchdog's health check).
    pub fn stuck_worker(&self, max_run: Duration) -> Option<crate::health::Stuck> {
        self.shared.progress.stuck(max_run)
    }

    /// Graceful teardown in the documented order.
    pub async fn shutdown(mut self, drain_timeout: Duration) {
        self.gen_entities.clear();
        // Metrics stay readable while draining; the liveliness token goes
        // with them just before the session closes.
        let exports = self.exports.take();
        for sub in self.subscribers.drain(..) {
            if let Err(e) = sub.undeclare().await {
                tracing::warn!(error = %e, "undeclare subscriber failed");
            }
        }
        self.shared.scheduler.stop();
        let threads = std::mem::take(&mut self.threads);
        let sched = self.shared.scheduler.clone();
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        if tokio::time::timeout(drain_timeout, joined).await.is_err() {
            tracing::warn!(
                ?drain_timeout,
                "drain timeout: stopping workers after their current job"
            );
            sched.abort();
        }
        let drained = self.shared.scheduler.drain();
        for job in drained.jobs {
            let rej = Rejection::new(
                ErrorCode::ShuttingDown,
                "the daemon stopped before this job ran",
            );
            worker::fail(&self.shared, &job, &rej);
        }
        let joiners = self.shared.gens.iter().flat_map(|gp| gp.drain_joiners());
        for g in drained.gens.into_iter().chain(joiners) {
            llm_serve::finish(&self.shared, g, Finish::Cancelled);
        }
        drop(exports);
        if let Err(e) = self.shared.session.close().await {
            tracing::warn!(error = %e, "closing zenoh session failed");
        }
        tracing::info!("reflexd stopped");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shared.scheduler.abort();
        }
    }
}

/// Locks the process's memory (models are loaded by now; MCL_FUTURE covers
/// later allocations such as thread stacks and output tensors).
fn lock_memory() -> Result<(), StartError> {
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

/// Runs the daemon until `shutdown` completes, then tears down within the
/// configured drain timeout. Under systemd (`NOTIFY_SOCKET` set) it reports
/// start-up progress, READY=1 once every session is warm, live status and
/// watchdog pings, and STOPPING=1 (see [`crate::systemd`]).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let notifier = crate::systemd::Notifier::from_env(&config.service);
    let daemon = match Daemon::start_observed(config, &|s| notifier.loading(&s)).await {
        Ok(d) => d,
        Err(e) => {
            notifier.start_failed(&e);
            return Err(e);
        }
    };
    notifier.supervise(&daemon, shutdown).await;
    let drain = daemon.config().service.drain_timeout;
    notifier.stopping(drain);
    daemon.shutdown(drain).await;
    Ok(())
}
