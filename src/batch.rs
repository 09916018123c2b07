//! Dynamic batching helpers, between the scheduler (which hands a worker a
//! batch of jobs of one pipeline) and the engine (one `Session::run` for all
//! of them): how a model's batch axes are detected at start-up, how the
//! jobs' tensors are concatenated along them and how the outputs are split
//! back per request. Also the batching metrics ([`BatchStats`]), kept apart
//! from `stats.rs` and exposed through `Daemon::batch_stats`. Nothing here
//! blocks or allocates beyond the tensors it builds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::engine::Port;
use crate::wire::Tensor;

/// Where the batch dimension sits in each tensor a batched run touches.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchAxes {
    /// Per state binding (config order): the axis of the state input, also
    /// used for its output (Silero VAD: `state` [2,B,128] → axis 1).
    pub state: Vec<usize>,
    /// Per published output: its batch axis.
    pub publish: Vec<usize>,
}

/// The batch axis a declared shape implies: its first dynamic dimension.
/// Client inputs must have it at axis 0 (they are concatenated there).
pub fn first_dynamic(shape: &[i64]) -> Option<usize> {
    shape.iter().position(|&d| d < 0)
}

/// Why a model cannot be batched, or its batch axes. Inputs the client
/// sends must have a dynamic leading dimension; each state input needs a
/// dynamic dimension; an output declared without one is assumed batched on
/// axis 0 only if its rank is unknown (ORT reports every dim as dynamic
/// for shapes inferred at run time).
pub fn detect(
    client_inputs: &[Port],
    state_inputs: &[&Port],
    published: &[&Port],
) -> Result<BatchAxes, String> {
    for p in client_inputs {
        if p.shape.first().is_none_or(|&d| d >= 0) {
            return Err(format!(
                "input {p} has a fixed batch dimension (dynamic batching needs a dynamic leading dimension)"
            ));
        }
    }
    let state = state_inputs
        .iter()
        .map(|p| {
            first_dynamic(&p.shape)
                .ok_or_else(|| format!("state input {p} has no dynamic dimension to batch along"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let publish = published
        .iter()
        .map(|p| {
            first_dynamic(&p.shape)
                .ok_or_else(|| format!("output {p} has a fixed shape; it cannot carry a batch"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BatchAxes { state, publish })
}

/// Outer count, axis length and inner bytes of `t` around `axis`.
fn around(t: &Tensor, axis: usize) -> Result<(usize, usize, usize), String> {
    if axis >= t.shape.len() {
        return Err(format!(
            "tensor `{}` {:?} has no axis {axis}",
            t.name, t.shape
        ));
    }
    let outer: usize = t.shape[..axis].iter().product();
    let inner: usize = t.shape[axis + 1..].iter().product::<usize>() * t.dtype.size();
    Ok((outer, t.shape[axis], inner))
}

/// Concatenates tensors along `axis`; all other dimensions must agree.
pub fn concat(parts: &[&Tensor], axis: usize) -> Result<Tensor, String> {
    let first = parts.first().ok_or("nothing to concatenate")?;
    let mut shape = first.shape.clone();
    let mut total = 0;
    for t in parts {
        let same_rest = t.dtype == first.dtype
            && t.shape.len() == first.shape.len()
            && t.shape
                .iter()
                .zip(&first.shape)
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b);
        if !same_rest {
            return Err(format!(
                "tensor `{}`: cannot batch shape {:?} with {:?} along axis {axis}",
                t.name, t.shape, first.shape
            ));
        }
        total += around(t, axis)?.1;
    }
    let (outer, _, inner) = around(first, axis)?;
    shape[axis] = total;
    let mut data = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for t in parts {
            let (_, n, _) = around(t, axis)?;
            data.extend_from_slice(&t.data[o * n * inner..(o + 1) * n * inner]);
        }
    }
    Ok(Tensor {
        name: first.name.clone(),
        dtype: first.dtype,
        shape,
        data,
    })
}

/// Splits `t` along `axis` into pieces of `counts` rows (their sum must be
/// the axis length).
pub fn split(t: &Tensor, axis: usize, counts: &[usize]) -> Result<Vec<Tensor>, String> {
    let (outer, n, inner) = around(t, axis)?;
    if counts.iter().sum::<usize>() != n {
        return Err(format!(
            "output `{}` has {n} rows along axis {axis}; the batch sent {}",
            t.name,
            counts.iter().sum::<usize>()
        ));
    }
    let mut out = Vec::with_capacity(counts.len());
    let mut start = 0;
    for &c in counts {
        let mut data = Vec::with_capacity(outer * c * inner);
        for o in 0..outer {
            let base = (o * n + start) * inner;
            data.extend_from_slice(&t.data[base..base + c * inner]);
        }
        let mut shape = t.shape.clone();
        shape[axis] = c;
        out.push(Tensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape,
            data,
        });
        start += c;
    }
    Ok(out)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{f32_tensor, f32_values};

    #[test]
    fn concat_then_split_round_trips_on_a_middle_axis() {
        // Silero-like state [2,B,3]: B is axis 1.
        let a = f32_tensor("s", &[2, 1, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = f32_tensor(
            "s",
            &[2, 2, 3],
            &[
                7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0,
            ],
        );
        let c = concat(&[&a, &b], 1).unwrap();
        assert_eq!(c.shape, vec![2, 3, 3]);
        assert_eq!(
            f32_values(&c).unwrap(),
            vec![
                1.0, 2.0, 3.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 4.0, 5.0, 6.0, 13.0, 14.0, 15.0,
                16.0, 17.0, 18.0
            ]
        );
        let parts = split(&c, 1, &[1, 2]).unwrap();
        assert_eq!(parts[0], a);
        assert_eq!(parts[1], b);
    }

    #[test]
    fn mismatched_rest_dims_and_counts_are_errors() {
        let a = f32_tensor("x", &[1, 3], &[0.0; 3]);
        let b = f32_tensor("x", &[1, 4], &[0.0; 4]);
        assert!(concat(&[&a, &b], 0).is_err());
        assert!(split(&a, 0, &[2]).is_err());
    }

    #[test]
    fn fixed_leading_dimension_is_not_batchable() {
        let fixed = Port {
            name: "x".into(),
            dtype: crate::wire::Dtype::F32,
            shape: vec![1, 4],
        };
        assert!(detect(&[fixed], &[], &[]).is_err());
        let dynamic = Port {
            name: "x".into(),
            dtype: crate::wire::Dtype::F32,
            shape: vec![-1, 4],
        };
        let state = Port {
            name: "state".into(),
            dtype: crate::wire::Dtype::F32,
            shape: vec![2, -1, 128],
        };
        let axes = detect(std::slice::from_ref(&dynamic), &[&state], &[&dynamic]).unwrap();
        assert_eq!(axes.state, vec![1]);
        assert_eq!(axes.publish, vec![0]);
    }
}
