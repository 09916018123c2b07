//! Metrics exports: the read side of [`crate::obs`], beside the data flow
//! rather than on it. Nothing here runs on a worker: the snapshot is taken by
//! a tokio task (periodic zenoh publication on `<node>/metrics`), by zenoh's
//! queryable callback (a `get` on the same key) or by the Prometheus
//! responder ([`prom`]), each reading the hot-path atomics without a lock.
//! A liveliness token on `<node>/alive` lets other nodes see the daemon come
//! and go. Backpressure: metrics puts use `CongestionControl::Drop` at a low
//! priority (a stale snapshot is replaced by the next one); the Prometheus
//! responder serves at most [`prom::MAX_CONNECTIONS`] scrapes at a time.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use zenoh::Wait;
use zenoh::qos::{CongestionControl, Priority};

use super::{outcomes, prom};
use crate::ctx::Ctx;
use crate::obs::batch::{BatchSnapshot, DecodeSnapshot};
use crate::obs::{self, Labels, MetricsSnapshot, WorkerSnapshot};

/// Reads every counter and histogram of the daemon.
pub fn snapshot(ctx: &Ctx) -> MetricsSnapshot {
    let cfg = &ctx.config;
    let mut pipelines = Vec::with_capacity(ctx.tensors.len() + ctx.gens.len());
    for tp in &ctx.tensors {
        let l = Labels {
            name: &tp.cfg.name,
            kind: "tensor",
            level: &cfg.levels[tp.cfg.level],
            provider: tp.spec.provider,
            model: &tp.model_name,
        };
        pipelines.push(obs::snapshot(&l, &tp.stats, None));
    }
    for gp in &ctx.gens {
        let model = configured_model(&gp.cfg.model);
        let l = Labels {
            name: &gp.cfg.name,
            kind: "generate",
            level: &cfg.levels[gp.cfg.level],
            provider: gp.provider,
            model: &model,
        };
        let live = gp.registry.live() as u64;
        pipelines.push(obs::snapshot(&l, &gp.stats, Some(live)));
    }
    let uptime = ctx.started.elapsed();
    let workers = cfg
        .workers
        .iter()
        .enumerate()
        .map(|(id, w)| {
            let busy_us = ctx.workers[id]
                .busy_us
                .load(std::sync::atomic::Ordering::Relaxed);
            WorkerSnapshot {
                id,
                levels: w.levels.iter().map(|&l| cfg.levels[l].clone()).collect(),
                busy_us,
                runs: ctx.workers[id]
                    .runs
                    .load(std::sync::atomic::Ordering::Relaxed),
                utilisation: (busy_us as f64 / (uptime.as_micros().max(1) as f64)).min(1.0),
            }
        })
        .collect();
    MetricsSnapshot {
        node: cfg.metrics.node.clone(),
        zid: ctx.session.zid().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_s: uptime.as_secs_f64(),
        time_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        histograms: cfg.metrics.histograms,
        pipelines,
        workers,
    }
}

/// The model as the config names it (its file or directory name), not the
/// display name inside the model files: what an operator wrote, and stable
/// across re-conversions of the same model.
fn configured_model(path: &std::path::Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// What the Prometheus exposition needs besides a snapshot: per pipeline
/// (snapshot order) its possible outcomes and deadline-derived buckets.
pub fn layout(ctx: &Ctx) -> prom::Layout {
    let pipe =
        |outcomes: Vec<crate::error::ErrorCode>, deadline: std::time::Duration| prom::PipeLayout {
            outcomes: outcomes.into_iter().map(|c| c.code()).collect(),
            buckets_us: obs::hist::deadline_buckets(deadline.as_micros() as u64),
            deadline_s: deadline.as_secs_f64(),
        };
    let tensors = ctx
        .tensors
        .iter()
        .map(|tp| pipe(outcomes::tensor(&tp.cfg, &tp.spec), tp.cfg.deadline));
    let gens = ctx
        .gens
        .iter()
        .map(|gp| pipe(outcomes::generate(&gp.cfg), gp.cfg.deadline));
    prom::Layout {
        pipelines: tensors.chain(gens).collect(),
    }
}

/// The body of `GET /metrics`.
pub fn prometheus_text(ctx: &Ctx) -> String {
    prom::render::render(&snapshot(ctx), &layout(ctx), &obs::process::read())
}

/// Batching counters of every batched tensor pipeline, config order.
pub fn batch_stats(ctx: &Ctx) -> Vec<BatchSnapshot> {
    ctx.tensors
        .iter()
        .filter_map(|tp| tp.batch_stats.as_ref().map(|s| s.snapshot(&tp.cfg.name)))
        .collect()
}

/// Decode counters per generation pipeline, config order.
pub fn decode_stats(ctx: &Ctx) -> Vec<DecodeSnapshot> {
    ctx.gens
        .iter()
        .map(|gp| gp.decode_stats.snapshot(&gp.cfg.name))
        .collect()
}

pub fn snapshot_json(ctx: &Ctx) -> Vec<u8> {
    serde_json::to_vec(&snapshot(ctx)).expect("snapshot serializes")
}

/// The running exporters; dropping them stops every task and undeclares
/// the zenoh entities.
pub struct Exports {
    _queryable: zenoh::query::Queryable<()>,
    _alive: zenoh::liveliness::LivelinessToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where the Prometheus endpoint listens (the bound address, so a
    /// configured port 0 is reported as the real one).
    pub prometheus: Option<std::net::SocketAddr>,
}

impl Drop for Exports {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Exports {
    /// Stops every task and waits until each is gone, so the Prometheus
    /// listener is closed (and the liveliness token undeclared) when this
    /// returns; dropping only requests it.
    pub async fn close(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Declares the metrics queryable and liveliness token, starts the periodic
/// publication and binds the Prometheus endpoint if configured.
pub async fn start(ctx: &Arc<Ctx>) -> Result<Exports, String> {
    let m = &ctx.config.metrics;
    let key = m.metrics_key();
    let s2 = ctx.clone();
    let queryable = ctx
        .session
        .declare_queryable(key.clone())
        .callback(move |q| {
            if let Err(e) = q.reply(q.key_expr().clone(), snapshot_json(&s2)).wait() {
                tracing::debug!(error = %e, "cannot answer a metrics query");
            }
        })
        .await
        .map_err(|e| format!("declare queryable {key}: {e}"))?;
    let alive = ctx
        .session
        .liveliness()
        .declare_token(m.alive_key())
        .await
        .map_err(|e| format!("declare liveliness token {}: {e}", m.alive_key()))?;
    let mut tasks = Vec::new();
    if let Some(period) = m.publish_interval {
        let s2 = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let publisher = match s2
                .session
                .declare_publisher(key.clone())
                .congestion_control(CongestionControl::Drop)
                .priority(Priority::DataLow)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(%key, error = %e, "cannot declare the metrics publisher");
                    return;
                }
            };
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = publisher.put(snapshot_json(&s2)).await {
                    tracing::debug!(error = %e, "cannot publish metrics");
                }
            }
        }));
    }
    let mut prometheus = None;
    if let Some(addr) = m.prometheus {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("metrics.prometheus = \"{addr}\": cannot listen: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(addr = %bound, "Prometheus endpoint: GET /metrics, /healthz");
        prometheus = Some(bound);
        tasks.push(tokio::spawn(prom::serve(listener, ctx.clone())));
    }
    tracing::info!(key = %m.metrics_key(), alive = %m.alive_key(), "metrics on zenoh");
    Ok(Exports {
        _queryable: queryable,
        _alive: alive,
        tasks,
        prometheus,
    })
}
