//! Batching counters: how full dynamic batches of tensor pipelines were and
//! how long their first jobs waited ([`BatchStats`]), and how many
//! generations each continuous-batching decode step carried ([`DecodeStats`]).
//! Written by workers with relaxed atomics, read by the exporters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Batching counters of one tensor pipeline (relaxed atomics).
pub struct BatchStats {
    /// `sizes[n]`: session calls that carried `n` jobs (index 0 unused).
    pub sizes: Vec<AtomicU64>,
    /// Total time first jobs spent waiting for their batch to fill (µs).
    pub fill_wait_us: AtomicU64,
    /// Batches started before their fill delay ran out because a collected
    /// job's deadline was near.
    pub cut_by_deadline: AtomicU64,
}

impl BatchStats {
    pub fn new(max_batch: usize) -> BatchStats {
        BatchStats {
            sizes: (0..=max_batch).map(|_| AtomicU64::new(0)).collect(),
            fill_wait_us: AtomicU64::new(0),
            cut_by_deadline: AtomicU64::new(0),
        }
    }

    pub fn record(&self, size: usize, wait_us: u64, cut_by_deadline: bool) {
        if let Some(b) = self.sizes.get(size) {
            b.fetch_add(1, Relaxed);
        }
        self.fill_wait_us.fetch_add(wait_us, Relaxed);
        if cut_by_deadline {
            self.cut_by_deadline.fetch_add(1, Relaxed);
        }
    }

    pub fn snapshot(&self, pipeline: &str) -> BatchSnapshot {
        let sizes: Vec<u64> = self.sizes.iter().map(|a| a.load(Relaxed)).collect();
        let batches: u64 = sizes.iter().sum();
        let jobs: u64 = sizes.iter().enumerate().map(|(n, c)| n as u64 * c).sum();
        BatchSnapshot {
            pipeline: pipeline.to_string(),
            batches,
            jobs,
            sizes,
            fill_wait_us: self.fill_wait_us.load(Relaxed),
            cut_by_deadline: self.cut_by_deadline.load(Relaxed),
        }
    }
}

/// A copy of [`BatchStats`] for tests and metrics exporters.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct BatchSnapshot {
    pub pipeline: String,
    /// Session calls made.
    pub batches: u64,
    /// Jobs served by them.
    pub jobs: u64,
    /// Histogram: `sizes[n]` calls carried `n` jobs.
    pub sizes: Vec<u64>,
    pub fill_wait_us: u64,
    pub cut_by_deadline: u64,
}

impl BatchSnapshot {
    /// Largest batch size seen (0 if none ran).
    pub fn largest(&self) -> usize {
        self.sizes.iter().rposition(|&c| c > 0).unwrap_or(0)
    }
}

/// Decode counters of one generation pipeline (relaxed atomics).
pub struct DecodeStats {
    /// `sizes[n]`: decode steps that ran `n` generations together.
    pub sizes: Vec<AtomicU64>,
    /// Tokens produced by decode steps (prefill's first token excluded).
    pub tokens: AtomicU64,
    /// Wall time of those decode steps (µs).
    pub busy_us: AtomicU64,
}

impl DecodeStats {
    pub fn new(max_batch: usize) -> DecodeStats {
        DecodeStats {
            sizes: (0..=max_batch).map(|_| AtomicU64::new(0)).collect(),
            tokens: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
        }
    }

    pub fn record(&self, size: usize, tokens: usize, took: std::time::Duration) {
        if let Some(s) = self.sizes.get(size) {
            s.fetch_add(1, Relaxed);
        }
        self.tokens.fetch_add(tokens as u64, Relaxed);
        self.busy_us.fetch_add(took.as_micros() as u64, Relaxed);
    }

    pub fn snapshot(&self, pipeline: &str) -> DecodeSnapshot {
        let tokens = self.tokens.load(Relaxed);
        let busy_us = self.busy_us.load(Relaxed);
        DecodeSnapshot {
            pipeline: pipeline.to_string(),
            sizes: self.sizes.iter().map(|a| a.load(Relaxed)).collect(),
            tokens,
            busy_us,
            tokens_per_s: (busy_us > 0).then(|| tokens as f64 * 1e6 / busy_us as f64),
        }
    }
}

/// A copy of [`DecodeStats`]; per-stream tokens/s is in each generation's
/// final message (`timing.decode_tokens_per_s`).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct DecodeSnapshot {
    pub pipeline: String,
    /// Histogram: `sizes[n]` decode steps ran `n` generations together.
    pub sizes: Vec<u64>,
    pub tokens: u64,
    pub busy_us: u64,
    /// Aggregate decode tokens per second of step time.
    pub tokens_per_s: Option<f64>,
}

impl DecodeSnapshot {
    /// Largest decode batch seen (0 if none).
    pub fn largest(&self) -> usize {
        self.sizes.iter().rposition(|&c| c > 0).unwrap_or(0)
    }
}
