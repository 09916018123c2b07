//! The running daemon: [`Daemon::start`] builds every stage from a validated
//! [`Config`] (see [`start`] for the order) and [`Daemon::shutdown`] tears
//! down in a fixed order: undeclare subscribers (stop intake), let workers
//! drain their queues within the drain timeout, answer anything left with
//! `shutting_down` (generations end `cancelled`), let delivery threads send
//! what is queued, close the zenoh session, drop the sessions. This is the
//! library's entry point; supervision (systemd) wraps it from above.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::Config;
use crate::ctx::{Ctx, Sched};
use crate::error::{ErrorCode, Rejection};
use crate::infer::engine::EngineError;
use crate::infer::runtime::{self, OrtLoadError};
use crate::io::{
    commands, describe, egress, fleet, ingress, metrics, ros2, tokens, zenoh as zconf,
};
use crate::llm::Finish;
use crate::obs::batch::{BatchSnapshot, DecodeSnapshot};
use crate::obs::{MetricsSnapshot, PipelineSnapshot};
use crate::worker::Worker;

mod start;

/// How long teardown lets workers finish queued jobs.
pub const DEFAULT_DRAIN_TIMEOUT: Duration =
    Duration::from_millis(crate::config::DEFAULT_DRAIN_TIMEOUT_MS);

#[derive(thiserror::Error, Debug)]
pub enum StartError {
    #[error(transparent)]
    Ort(#[from] OrtLoadError),
    #[error(transparent)]
    Engine(#[from] EngineError),
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
    /// A `[[pipeline.tool]]` entry or its schema is unusable.
    #[error("{0}")]
    Tools(String),
    #[error("ROS 2: {0}")]
    Ros2(String),
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

/// A running daemon. Dropping it without [`Daemon::shutdown`] aborts workers.
pub struct Daemon {
    ctx: Arc<Ctx>,
    subscribers: Vec<zenoh::pubsub::Subscriber<()>>,
    gen_entities: Vec<commands::Entities>,
    threads: Vec<JoinHandle<()>>,
    deliverers: Option<tokens::Deliverers>,
    exports: Option<metrics::Exports>,
    fleet: Option<fleet::Entities>,
    ros2: Option<ros2::Entities>,
    describe: Option<zenoh::query::Queryable<()>>,
}

async fn open_session(config: &Config) -> Result<zenoh::Session, StartError> {
    let zc = zconf::zenoh_config(&config.zenoh)
        .and_then(|zc| zconf::bound_rx(zc, &config.limits))
        .and_then(|zc| fleet::lease(zc, &config.fleet))
        .map_err(StartError::Zenoh)?;
    let session = zenoh::open(zc.clone())
        .await
        .map_err(|e| StartError::Zenoh(crate::logging::strip_source_locations(&e.to_string())))?;
    crate::logging::log_zenoh_session(&session, &zc).await;
    Ok(session)
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
        // Tool schemas first: a bad schema is reported in milliseconds,
        // not after minutes of model loading.
        let tool_sets = start::tool_sets(&config)?;
        let (env, _) = runtime::environment(config.runtime.onnxruntime.as_deref())?;
        let session = open_session(&config).await?;
        let mut prog = start::progressing(&config, observe);
        let (sched, parkers) = Sched::new(&config);
        let mut workers: Vec<Worker> = parkers
            .into_iter()
            .enumerate()
            .map(|(id, parker)| Worker {
                id,
                runners: Vec::new(),
                ocr: Vec::new(),
                llms: Vec::new(),
                parker,
                policy: config.workers[id].policy,
                cpus: config.workers[id].cpus.clone(),
            })
            .collect();
        let tensors = start::tensor_pipes(&env, &config, &mut workers, &mut prog)?;
        let gens = start::gen_pipes(&env, &config, &mut workers, &mut prog, tool_sets)?;
        if config.runtime.mlockall {
            start::lock_memory()?;
        }
        let specs: Vec<_> = tensors.iter().map(|t| &t.spec).collect();
        let ros = ros2::declare_outputs(&session, &config, &specs).map_err(StartError::Ros2)?;
        let ctx = Arc::new(start::context(config, (tensors, gens), session, sched, ros));
        let threads = start::spawn_workers(workers, &ctx)?;
        Daemon::open_intake(ctx, threads).await
    }

    /// Delivery threads, subscribers, queryables and exports: intake last.
    async fn open_intake(
        ctx: Arc<Ctx>,
        threads: Vec<JoinHandle<()>>,
    ) -> Result<Daemon, StartError> {
        let mut d = Daemon {
            ctx: ctx.clone(),
            subscribers: Vec::new(),
            gen_entities: Vec::new(),
            threads,
            deliverers: None,
            exports: None,
            fleet: None,
            ros2: None,
            describe: None,
        };
        let zerr = |e: zenoh::Error| StartError::Zenoh(e.to_string());
        d.deliverers = Some(
            tokens::Deliverers::start(&ctx)
                .map_err(|e| StartError::Worker(format!("cannot spawn delivery thread: {e}")))?,
        );
        d.fleet = fleet::start(&ctx).map_err(StartError::Zenoh)?;
        // Chain stages have no zenoh input: their head's worker feeds them.
        for pi in (0..ctx.tensors.len()).filter(|&pi| !ctx.tensors[pi].cfg.is_chained()) {
            d.subscribers
                .push(ingress::subscribe(&ctx, pi).map_err(zerr)?);
        }
        for gi in 0..ctx.gens.len() {
            d.gen_entities
                .push(commands::declare(&ctx, gi).map_err(zerr)?);
        }
        d.ros2 = Some(ros2::open(&ctx).map_err(zerr)?);
        d.describe = Some(describe::declare(&ctx).map_err(zerr)?);
        d.exports = Some(metrics::start(&ctx).await.map_err(StartError::Metrics)?);
        tracing::info!(
            pipelines = ctx.tensors.len(),
            generators = ctx.gens.len(),
            workers = ctx.config.workers.len(),
            zid = %ctx.session.zid(),
            "reflexd ready"
        );
        Ok(d)
    }

    /// Counters per tensor pipeline, in config order.
    pub fn stats(&self) -> Vec<PipelineSnapshot> {
        let mut all = self.metrics().pipelines;
        all.truncate(self.ctx.tensors.len());
        all
    }

    /// Batching counters of every batched tensor pipeline (batch-size
    /// histogram, time spent waiting for batches to fill), config order.
    pub fn batch_stats(&self) -> Vec<BatchSnapshot> {
        metrics::batch_stats(&self.ctx)
    }

    /// Counters per generation pipeline, in config order.
    pub fn generation_stats(&self) -> Vec<PipelineSnapshot> {
        let mut all = self.metrics().pipelines;
        all.drain(..self.ctx.tensors.len());
        all
    }

    /// Everything the metrics exporters publish.
    pub fn metrics(&self) -> MetricsSnapshot {
        metrics::snapshot(&self.ctx)
    }

    /// Where the Prometheus endpoint listens, when enabled.
    pub fn prometheus_addr(&self) -> Option<std::net::SocketAddr> {
        self.exports.as_ref().and_then(|e| e.prometheus)
    }

    /// Decode counters per generation pipeline (continuous batching: the
    /// decode batch-size histogram and aggregate decode tokens/s), config
    /// order. Per-stream tokens/s is in each final message's timing.
    pub fn decode_stats(&self) -> Vec<DecodeSnapshot> {
        metrics::decode_stats(&self.ctx)
    }

    /// Generations currently registered per generation pipeline.
    pub fn live_generations(&self) -> Vec<usize> {
        self.ctx.gens.iter().map(|g| g.registry.live()).collect()
    }

    pub fn zenoh_session(&self) -> &zenoh::Session {
        &self.ctx.session
    }

    /// The validated config the daemon runs with.
    pub fn config(&self) -> &Config {
        &self.ctx.config
    }

    /// The worker stuck longest inside one model run, if longer than
    /// `max_run` (the watchdog's health check).
    pub fn stuck_worker(&self, max_run: Duration) -> Option<crate::obs::health::Stuck> {
        self.ctx.progress.stuck(max_run)
    }

    /// The first worker whose thread died (a panic outside its per-job
    /// guard), if any: the daemon can no longer serve its levels.
    pub fn dead_worker(&self) -> Option<usize> {
        self.ctx.progress.dead()
    }

    /// Logs one summary line per pipeline and error code whose failures
    /// were rate-limited since the last summary.
    pub fn flush_logs(&self) {
        self.ctx.flush_logs();
    }

    /// Graceful teardown in the documented order.
    pub async fn shutdown(mut self, drain_timeout: Duration) {
        self.gen_entities.clear();
        self.fleet = None;
        if let Some(r) = &mut self.ros2 {
            r.subscribers.clear();
        }
        // Metrics stay readable while draining; the liveliness token goes
        // with them just before the session closes.
        let exports = self.exports.take();
        for sub in self.subscribers.drain(..) {
            if let Err(e) = sub.undeclare().await {
                tracing::warn!(error = %e, "undeclare subscriber failed");
            }
        }
        self.ctx.sched.stop();
        let threads = std::mem::take(&mut self.threads);
        let sched = self.ctx.sched.clone();
        let mut joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        if tokio::time::timeout(drain_timeout, &mut joined)
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain_timeout,
                "drain timeout: stopping workers after their current job"
            );
            sched.abort();
            // A job inside a model run cannot be cut short: its answer
            // goes out before the session closes, unless the run is stuck
            // (longer than max_run_ms, the watchdog's threshold too).
            let grace = self.ctx.config.service.max_run;
            if tokio::time::timeout(grace, &mut joined).await.is_err() {
                tracing::error!(
                    ?grace,
                    "a worker is still inside one model run: its request gets no answer"
                );
            }
        }
        self.answer_leftovers();
        if let Some(d) = self.deliverers.take() {
            d.stop(drain_timeout).await;
        }
        if let Some(e) = exports {
            e.close().await;
        }
        // Out of the ROS graph once nothing more will be published.
        drop(self.ros2.take());
        drop(self.describe.take());
        if let Err(e) = self.ctx.session.close().await {
            tracing::warn!(error = %e, "closing zenoh session failed");
        }
        tracing::info!("reflexd stopped");
    }

    /// Everything still queued once workers stopped gets its one outcome.
    fn answer_leftovers(&self) {
        let ctx = &self.ctx;
        let drained = ctx.sched.drain();
        for job in drained.jobs {
            let rej = Rejection::new(
                ErrorCode::ShuttingDown,
                "the daemon stopped before this job ran",
            );
            egress::fail(ctx, &job, &rej);
        }
        let batched = drained.gen_batches.into_iter().flat_map(|b| b.members);
        let joiners: Vec<_> = ctx.gens.iter().flat_map(|gp| gp.drain_joiners()).collect();
        for g in drained.gens.into_iter().chain(batched).chain(joiners) {
            tokens::finish(ctx, g, Finish::Cancelled);
        }
        // Open speech segments end with the daemon (docs/answers.md).
        crate::worker::close_streams(ctx);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.ctx.sched.abort();
        }
    }
}
