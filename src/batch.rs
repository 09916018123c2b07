//! Dynamic batching helpers, between the scheduler (which hands a worker a
//! batch of jobs of one pipeline) and the engine (one `Session::run` for all
//! of them): how a model's batch axes are detected at start-up, how the
//! jobs' tensors are concatenated along them and how the outputs are split
//! back per request. Also the batching metrics ([`BatchStats`]), kept apart
//! from `stats.rs` and exposed through `Daemon::batch_stats`. Nothing here
//! blocks or allocates beyond the tensors it builds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::config::PipelineConfig;
use crate::engine::{self, Model, Port};
use crate::pipeline::{Spec, StreamState, apply_context};
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

/// One job of a batch: its message tensors and, for a stateful pipeline,
/// its stream's carried state.
pub struct BatchItem<'a> {
    pub tensors: &'a [Tensor],
    pub state: Option<&'a mut StreamState>,
}

/// Rows a job contributes: the leading dimension of its client inputs,
/// which must agree.
pub fn rows(spec: &Spec, tensors: &[Tensor]) -> Result<usize, String> {
    let mut n = None;
    for want in &spec.client_inputs {
        let t = tensors
            .iter()
            .find(|t| t.name == want.name)
            .ok_or_else(|| format!("missing tensor `{}`", want.name))?;
        let r = *t.shape.first().ok_or("scalar client input")?;
        if *n.get_or_insert(r) != r {
            return Err(format!(
                "client inputs disagree on the batch dimension ({r} vs {})",
                n.unwrap_or(0)
            ));
        }
    }
    n.ok_or_else(|| "pipeline has no client inputs to batch".to_string())
}

/// Runs several jobs of one pipeline as one `Session::run`: client inputs
/// (with carried context) are concatenated along axis 0, carried state
/// along its batch axis, constants passed once; outputs are split back in
/// item order. State and context are committed only if the run succeeds,
/// for every item at once. Items must agree on all non-batch dimensions.
pub fn run_batch(
    model: &mut Model,
    p: &PipelineConfig,
    spec: &Spec,
    items: &mut [BatchItem],
) -> Result<Vec<Vec<Tensor>>, String> {
    let axes = spec
        .batch
        .as_ref()
        .ok_or("pipeline is not batched (max_batch = 1)")?;
    let counts = items
        .iter()
        .map(|it| rows(spec, it.tensors))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tails: Vec<Vec<(String, Vec<u8>)>> = items.iter().map(|_| Vec::new()).collect();
    let mut values: Vec<(String, ort::value::DynTensor)> =
        Vec::with_capacity(spec.model_inputs.len());
    for want in &spec.client_inputs {
        let ctx = p.context.iter().find(|c| c.input == want.name);
        let mut parts = Vec::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            let t = it
                .tensors
                .iter()
                .find(|t| t.name == want.name)
                .ok_or_else(|| format!("missing tensor `{}`", want.name))?;
            match (ctx, it.state.as_deref()) {
                (Some(c), Some(st)) => {
                    let (input, tail) = apply_context(t, c.keep, st.context.get(&c.input));
                    tails[i].push((c.input.clone(), tail));
                    parts.push(std::borrow::Cow::Owned(input));
                }
                _ => parts.push(std::borrow::Cow::Borrowed(t)),
            }
        }
        let refs: Vec<&Tensor> = parts.iter().map(|c| c.as_ref()).collect();
        values.push((want.name.clone(), engine::to_ort(&concat(&refs, 0)?)?));
    }
    for (name, c) in &p.constants {
        let t = Tensor {
            name: name.clone(),
            dtype: c.dtype,
            shape: c.shape.clone(),
            data: c.bytes.clone(),
        };
        values.push((name.clone(), engine::to_ort(&t)?));
    }
    for (j, b) in p.state.iter().enumerate() {
        let parts = items
            .iter()
            .map(|it| {
                let st = it
                    .state
                    .as_deref()
                    .ok_or("stateful pipeline item without state")?;
                st.state
                    .iter()
                    .find(|s| s.name == b.input)
                    .ok_or_else(|| format!("no carried state `{}`", b.input))
            })
            .collect::<Result<Vec<_>, String>>()?;
        values.push((
            b.input.clone(),
            engine::to_ort(&concat(&parts, axes.state[j])?)?,
        ));
    }
    let outputs = model
        .session
        .run(
            values
                .iter()
                .map(|(n, v)| (n.as_str(), v))
                .collect::<Vec<_>>(),
        )
        .map_err(|e| e.to_string())?;
    let get = |name: &str| {
        outputs
            .get(name)
            .ok_or_else(|| format!("model did not return output `{name}`"))
            .and_then(|v| engine::from_ort(name, v))
    };
    // Split everything before committing anything.
    let mut new_state: Vec<Vec<Tensor>> = items.iter().map(|_| Vec::new()).collect();
    for (j, b) in p.state.iter().enumerate() {
        let mut t = get(&b.output)?;
        t.name = b.input.clone();
        for (i, piece) in split(&t, axes.state[j], &counts)?.into_iter().enumerate() {
            new_state[i].push(piece);
        }
    }
    let mut per_item: Vec<Vec<Tensor>> = items.iter().map(|_| Vec::new()).collect();
    for (k, name) in spec.publish.iter().enumerate() {
        for (i, piece) in split(&get(name)?, axes.publish[k], &counts)?
            .into_iter()
            .enumerate()
        {
            per_item[i].push(piece);
        }
    }
    for ((it, tail), fresh) in items.iter_mut().zip(tails).zip(new_state) {
        if let Some(st) = it.state.as_deref_mut() {
            st.context.extend(tail);
            for t in fresh {
                if let Some(slot) = st.state.iter_mut().find(|s| s.name == t.name) {
                    *slot = t;
                }
            }
        }
    }
    Ok(per_item)
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
