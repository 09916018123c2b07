//! Observation, a leaf of the crate: counters, histograms and health stamps
//! every stage bumps, and the snapshot types the exporters read. Metrics core: the counters and latency histograms every stage bumps on the
//! hot path (relaxed atomics and the lock-free [`hist::Histogram`]; no lock,
//! no allocation, nothing held across a model run). Ingress counts arrivals
//! and rejections, the scheduler's outcomes (busy, superseded) are counted
//! where they are reported, workers record queue wait, inference time and
//! end-to-end latency and their own busy time, generation egress records
//! TTFT/TPOT and token counts. [`MetricsSnapshot`] is the read side:
//! `Daemon::stats`, the Prometheus endpoint, the zenoh `<node>/metrics`
//! JSON and `reflexd top` all read the same snapshot.

pub mod batch;
pub mod health;
pub mod hist;
pub mod process;
pub mod ratelimit;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
pub use hist::{HistSnapshot, Histogram};

/// Counters and histograms of one pipeline (tensor or generation).
pub struct PipelineStats {
    /// Messages that reached the subscriber callback.
    pub received: AtomicU64,
    /// Predictions published (generation: answers finished by stop/length/
    /// cancel).
    pub ok: AtomicU64,
    /// Generation pipelines: tokens streamed.
    pub tokens: AtomicU64,
    /// Results that finished after their deadline (published flagged
    /// `late`, or dropped as `deadline_exceeded` with `late = "drop"`);
    /// jobs dropped before they could start are not counted here.
    pub late: AtomicU64,
    /// Final error outcomes, indexed by [`ErrorCode::index`].
    pub errors: [AtomicU64; ErrorCode::ALL.len()],
    /// Receipt to start of the model run (generation: to the first step),
    /// for every job a worker took.
    pub queue_wait: Histogram,
    /// One model run (generation: one prefill chunk or decode step).
    pub inference: Histogram,
    /// Receipt to publication, for successful requests (generation: receipt
    /// to the final message of a generation that did not fail; failed ones
    /// are in [`GenStats::failed`]).
    pub e2e: Histogram,
    pub generation: GenStats,
    /// `metrics.histograms`: when false histograms are not recorded (the
    /// counters always are; tests and the overhead benchmark compare both).
    histograms: bool,
}

/// Error codes that can end a generation after it was accepted: the
/// OpenTelemetry `error.type` values of a failed generation's duration.
/// Any other code is recorded as [`OTHER_ERROR`].
pub const GEN_FAILURES: [ErrorCode; 4] = [
    ErrorCode::DeadlineExceeded,
    ErrorCode::InferenceFailed,
    ErrorCode::InternalError,
    ErrorCode::SlowConsumer,
];
/// OpenTelemetry's fallback `error.type` value.
pub const OTHER_ERROR: &str = "_OTHER";

/// What only generation pipelines record.
#[derive(Default)]
pub struct GenStats {
    /// Receipt to the final message of failed generations, per
    /// [`GEN_FAILURES`] entry, then one for any other code.
    pub failed: [Histogram; GEN_FAILURES.len() + 1],
    /// Receipt to the first generated token.
    pub ttft: Histogram,
    /// Per generation with two tokens or more: time after the first token
    /// divided by the tokens after it.
    pub tpot: Histogram,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Tokens after each generation's first one and the time they took, for
    /// the decode rate.
    pub decode_tokens: AtomicU64,
    pub decode_us: AtomicU64,
}

impl Default for PipelineStats {
    fn default() -> Self {
        PipelineStats::new(true)
    }
}

impl PipelineStats {
    pub fn new(histograms: bool) -> Self {
        PipelineStats {
            received: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            late: AtomicU64::new(0),
            errors: Default::default(),
            queue_wait: Histogram::default(),
            inference: Histogram::default(),
            e2e: Histogram::default(),
            generation: GenStats::default(),
            histograms,
        }
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Relaxed);
    }

    /// Records into `h` if histograms are enabled.
    #[inline]
    pub fn time(&self, h: &Histogram, d: Duration) {
        if self.histograms {
            h.record_duration(d);
        }
    }
}

impl GenStats {
    /// Where a generation that failed with `code` records its duration.
    pub fn failed_for(&self, code: ErrorCode) -> &Histogram {
        let i = GEN_FAILURES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(GEN_FAILURES.len());
        &self.failed[i]
    }
}

/// Busy time of one worker thread (model runs plus publishing).
#[derive(Default)]
pub struct WorkerStats {
    pub busy_us: AtomicU64,
    pub runs: AtomicU64,
}

impl WorkerStats {
    pub fn add(&self, d: Duration) {
        self.busy_us.fetch_add(d.as_micros() as u64, Relaxed);
        self.runs.fetch_add(1, Relaxed);
    }
}

/// Static description of a pipeline for its snapshot.
pub struct Labels<'a> {
    pub name: &'a str,
    /// `"tensor"` or `"generate"`.
    pub kind: &'static str,
    pub level: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PipelineSnapshot {
    pub name: String,
    pub kind: String,
    /// The pipeline's priority level (a generation command may run lower).
    pub level: String,
    /// Execution provider in use.
    pub provider: String,
    pub model: String,
    pub received: u64,
    pub ok: u64,
    pub tokens: u64,
    /// Results finished after their deadline (see [`PipelineStats::late`]).
    #[serde(default)]
    pub late: u64,
    /// Non-zero error counts by code.
    pub errors: BTreeMap<String, u64>,
    pub queue_wait: HistSnapshot,
    pub inference: HistSnapshot,
    pub e2e: HistSnapshot,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenSnapshot>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GenSnapshot {
    /// Generations registered right now (queued or running).
    pub live: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub ttft: HistSnapshot,
    pub tpot: HistSnapshot,
    /// Decode rate over every finished generation: tokens after the first
    /// divided by the time they took; `None` before any.
    pub decode_tokens_per_s: Option<f64>,
    /// Receipt to the final message of failed generations, by error code
    /// (`_OTHER` for a code outside [`GEN_FAILURES`]); only codes seen.
    #[serde(default)]
    pub failed: BTreeMap<String, HistSnapshot>,
}

impl PipelineSnapshot {
    pub fn error(&self, code: ErrorCode) -> u64 {
        self.errors.get(code.code()).copied().unwrap_or(0)
    }

    /// Requests that ended one way or another.
    pub fn finished(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }
}

fn gen_snapshot(g: &GenStats, live: u64) -> GenSnapshot {
    let us = g.decode_us.load(Relaxed);
    GenSnapshot {
        live,
        prompt_tokens: g.prompt_tokens.load(Relaxed),
        completion_tokens: g.completion_tokens.load(Relaxed),
        ttft: g.ttft.snapshot(),
        tpot: g.tpot.snapshot(),
        decode_tokens_per_s: (us > 0)
            .then(|| g.decode_tokens.load(Relaxed) as f64 * 1e6 / us as f64),
        failed: GEN_FAILURES
            .iter()
            .map(|c| c.code())
            .chain([OTHER_ERROR])
            .zip(&g.failed)
            .map(|(code, h)| (code.to_string(), h.snapshot()))
            .filter(|(_, h)| h.count > 0)
            .collect(),
    }
}

/// Reads one pipeline's counters; `live` is `Some` for generation pipelines.
pub fn snapshot(l: &Labels, s: &PipelineStats, live: Option<u64>) -> PipelineSnapshot {
    PipelineSnapshot {
        name: l.name.to_string(),
        kind: l.kind.to_string(),
        level: l.level.to_string(),
        provider: l.provider.to_string(),
        model: l.model.to_string(),
        received: s.received.load(Relaxed),
        ok: s.ok.load(Relaxed),
        tokens: s.tokens.load(Relaxed),
        late: s.late.load(Relaxed),
        errors: ErrorCode::ALL
            .iter()
            .map(|c| (c.code().to_string(), s.errors[c.index()].load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect(),
        queue_wait: s.queue_wait.snapshot(),
        inference: s.inference.snapshot(),
        e2e: s.e2e.snapshot(),
        generation: live.map(|n| gen_snapshot(&s.generation, n)),
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WorkerSnapshot {
    pub id: usize,
    pub levels: Vec<String>,
    pub busy_us: u64,
    pub runs: u64,
    /// busy time / uptime.
    pub utilisation: f64,
}

/// Everything the daemon reports, as published on `<node>/metrics`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MetricsSnapshot {
    pub node: String,
    pub zid: String,
    pub version: String,
    pub uptime_s: f64,
    /// Wall clock of the snapshot (ms since the Unix epoch).
    pub time_unix_ms: u64,
    /// Whether histograms are recorded (`metrics.histograms`).
    pub histograms: bool,
    /// Tensor pipelines then generation pipelines, in config order.
    pub pipelines: Vec<PipelineSnapshot>,
    pub workers: Vec<WorkerSnapshot>,
}

impl MetricsSnapshot {
    pub fn pipeline(&self, name: &str) -> Option<&PipelineSnapshot> {
        self.pipelines.iter().find(|p| p.name == name)
    }
}
