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

use crate::config::{Config, PipelineConfig, ZenohConfig, ZenohMode};
use crate::engine::{self, EngineError, Model};
use crate::error::{ErrorCode, Rejection};
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
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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
    #[error("metrics: {0}")]
    Metrics(String),
}

/// State every stage reads; built once, immutable afterwards except counters.
pub struct Shared {
    pub config: Config,
    pub specs: Vec<Spec>,
    pub model_names: Vec<String>,
    pub stats: Vec<PipelineStats>,
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
        let (env, _) = ortlib::environment(config.runtime.onnxruntime.as_deref())?;
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
            })
            .collect();
        let mut specs = Vec::new();
        for p in &config.pipelines {
            let mut spec = None;
            for (wi, w) in workers.iter_mut().enumerate() {
                if config.workers[wi].levels.contains(&p.level) {
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
        let zc = zenoh_config(&config.zenoh).map_err(StartError::Zenoh)?;
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
                    let setup = worker::apply_policy(w.policy);
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

    /// Generations currently registered per generation pipeline.
    pub fn live_generations(&self) -> Vec<usize> {
        self.shared.gens.iter().map(|g| g.live_count()).collect()
    }

    pub fn zenoh_session(&self) -> &zenoh::Session {
        &self.shared.session
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
        for g in drained.gens {
            llm_serve::finish(&self.shared, g, Finish::Cancelled);
        }
        self.gen_entities.clear();
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

/// Runs the daemon until `shutdown` completes, then tears down.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let daemon = Daemon::start(config).await?;
    shutdown.await;
    daemon.shutdown(DEFAULT_DRAIN_TIMEOUT).await;
    Ok(())
}
