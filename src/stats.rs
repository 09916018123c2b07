//! Counters every stage bumps on the hot path (relaxed atomics, no locks):
//! per pipeline, how many requests arrived and how each one ended. Tests read
//! them to check that no request was lost; `Daemon::stats` snapshots them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::error::ErrorCode;

#[derive(Default)]
pub struct PipelineStats {
    /// Messages that reached the subscriber callback.
    pub received: AtomicU64,
    /// Predictions published (generation pipelines: answers finished).
    pub ok: AtomicU64,
    /// Generation pipelines: tokens streamed.
    pub tokens: AtomicU64,
    /// Final error outcomes, indexed by [`ErrorCode::index`].
    pub errors: [AtomicU64; ErrorCode::ALL.len()],
}

impl PipelineStats {
    pub fn error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Relaxed);
    }
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct PipelineSnapshot {
    pub name: String,
    pub provider: String,
    pub received: u64,
    pub ok: u64,
    pub tokens: u64,
    /// Non-zero error counts by code.
    pub errors: std::collections::BTreeMap<&'static str, u64>,
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

pub fn snapshot(name: &str, provider: &str, s: &PipelineStats) -> PipelineSnapshot {
    PipelineSnapshot {
        name: name.to_string(),
        provider: provider.to_string(),
        received: s.received.load(Relaxed),
        ok: s.ok.load(Relaxed),
        tokens: s.tokens.load(Relaxed),
        errors: ErrorCode::ALL
            .iter()
            .map(|c| (c.code(), s.errors[c.index()].load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect(),
    }
}
