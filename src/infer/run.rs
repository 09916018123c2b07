//! The one run path of tensor pipelines, for one request or a batch of them:
//! it assembles the model's inputs from [`Feed`]s, runs the session once, and
//! commits carried state and context only when the run succeeded (a failed
//! frame leaves its stream as it was). Message tensors are written once into
//! the runtime's input values (with the carried context in front); a single
//! request's state is moved in and out as runtime values, a batch's is
//! gathered along its batch axis and split back. Outputs are read in place by
//! the caller ([`Ran::outputs`]) and encoded straight into replies.

use ort::logging::LogLevel;
use ort::session::{RunOptions, SessionInputValue, SessionOutputs};
use ort::value::DynValue;

use super::engine::{self, Model};
use super::spec::{Feed, Spec};
use super::state::StreamState;
use crate::config::PipelineConfig;
use crate::tensor::Tensor;
use crate::wire::reply::OutTensor;

/// A worker's session for one tensor pipeline, with its constants built
/// once as runtime values and its run options.
pub struct Runner {
    pub model: Model,
    constants: Vec<DynValue>,
    /// Runs log nothing inside ONNX Runtime: a failed run is reported (and
    /// rate-limited) by the worker, once, not by ORT's logger per frame.
    quiet: RunOptions,
    /// The same, and the CPU arena gives memory back after the run, if the
    /// session has an arena that can shrink (probed at warm-up).
    shrink: Option<RunOptions>,
    /// Input bytes of the warm-up run; runs with inputs over twice that
    /// give their memory back, so one large frame does not keep the arena
    /// (and RSS) at its size.
    usual_bytes: usize,
    /// This worker's pre-processor for the pipeline's image input (its
    /// buffers are reused from frame to frame).
    pub pre: Option<super::pre::Preprocessor>,
}

fn run_options(shrink: bool) -> Result<RunOptions, String> {
    let mut o = RunOptions::new().map_err(|e| e.to_string())?;
    o.set_log_level(LogLevel::Fatal)
        .map_err(|e| e.to_string())?;
    if shrink {
        o.set("memory.enable_memory_arena_shrinkage", "cpu:0")
            .map_err(|e| e.to_string())?;
    }
    Ok(o)
}

impl Runner {
    pub fn new(model: Model, p: &PipelineConfig) -> Result<Runner, String> {
        let constants = p
            .constants
            .values()
            .map(|c| engine::new_value(c.dtype, &c.shape, |b| b.copy_from_slice(&c.bytes)))
            .collect::<Result<_, _>>()?;
        Ok(Runner {
            model,
            constants,
            quiet: run_options(false)?,
            shrink: Some(run_options(true)?),
            usual_bytes: usize::MAX / 4,
            pre: None,
        })
    }

    /// Turns arena shrinking off (the session's allocator is not an arena
    /// that can shrink; large runs then only trim the C heap).
    pub fn no_shrink(&mut self) {
        self.shrink = None;
    }

    /// Sets the input size runs are compared with to decide whether the
    /// arena shrinks afterwards (the warm-up input's).
    pub fn set_usual_bytes(&mut self, bytes: usize) {
        self.usual_bytes = bytes.max(1);
    }
}

/// One request of a run: its message tensors and, for a stateful pipeline,
/// its stream's carried state.
pub struct Item<'a> {
    pub tensors: &'a [Tensor],
    pub state: Option<&'a mut StreamState>,
}

/// A finished run: the session's outputs and how rows map to requests.
pub struct Ran<'s> {
    outputs: SessionOutputs<'s>,
    /// Rows each request contributed, for a batch; `None` for one request.
    rows: Option<Vec<usize>>,
}

/// Rows a request contributes: the leading dimension of its client inputs,
/// which must agree.
fn rows(spec: &Spec, tensors: &[Tensor]) -> Result<usize, String> {
    let image = spec.image.as_ref().map(|b| b.input);
    // A frame is one row of the image input.
    let mut n = image.map(|_| 1);
    for (k, want) in spec.client_inputs.iter().enumerate() {
        if Some(k) == image {
            continue;
        }
        let t = find(tensors, &want.name)?;
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

fn find<'t>(tensors: &'t [Tensor], name: &str) -> Result<&'t Tensor, String> {
    tensors
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| format!("missing tensor `{name}`"))
}

/// Context tails produced by a run, committed only if it succeeds:
/// (request, context binding, tail bytes).
type Tails = Vec<(usize, usize, Vec<u8>)>;

/// One client input for every request, concatenated along axis 0, each
/// request's rows preceded by its carried context (`keep` elements per row)
/// when the input carries context. Writes the new tails to `tails`.
fn gather_client(
    items: &[Item],
    name: &str,
    context: Option<(usize, usize)>,
    tails: &mut Tails,
) -> Result<DynValue, String> {
    let first = find(items[0].tensors, name)?;
    let dtype = first.dtype;
    let es = dtype.size();
    let mut shape = first.shape.clone();
    let mut total = 0;
    for it in items {
        let t = find(it.tensors, name)?;
        if t.dtype != dtype || t.shape.len() != shape.len() || t.shape[1..] != shape[1..] {
            return Err(format!(
                "tensor `{name}`: cannot batch shape {:?} with {:?}",
                t.shape, first.shape
            ));
        }
        total += t.shape[0];
    }
    shape[0] = total;
    let keep = context.map_or(0, |(_, k)| k);
    let last = *shape.last().ok_or("scalar input")?;
    if let Some(l) = shape.last_mut() {
        *l += keep;
    }
    let width = (last + keep) * es;
    let mut new_tails: Tails = Vec::new();
    let v = engine::new_value(dtype, &shape, |buf| {
        let mut row_at = 0;
        for (i, it) in items.iter().enumerate() {
            let t = find(it.tensors, name).expect("checked above");
            let n_rows = t.elements() / last.max(1);
            let carried = match (context, it.state.as_deref()) {
                (Some((k, _)), Some(st)) => st.context[k].as_deref(),
                _ => None,
            };
            let carried = carried.filter(|c| c.len() == n_rows * keep * es);
            for r in 0..n_rows {
                let dst = &mut buf[(row_at + r) * width..(row_at + r + 1) * width];
                let (head, body) = dst.split_at_mut(keep * es);
                match carried {
                    Some(c) => head.copy_from_slice(&c[r * keep * es..(r + 1) * keep * es]),
                    None => head.fill(0),
                }
                body.copy_from_slice(&t.data[r * last * es..(r + 1) * last * es]);
            }
            if let Some((k, _)) = context {
                let mut tail = Vec::with_capacity(n_rows * keep * es);
                for r in 0..n_rows {
                    let end = (row_at + r + 1) * width;
                    tail.extend_from_slice(&buf[end - keep * es..end]);
                }
                new_tails.push((i, k, tail));
            }
            row_at += n_rows;
        }
    })?;
    tails.extend(new_tails);
    Ok(v)
}

/// Carried state `j` of every request, concatenated along `axis`.
fn gather_state(items: &[Item], j: usize, axis: usize) -> Result<DynValue, String> {
    let mut parts = Vec::with_capacity(items.len());
    for it in items {
        let st = it
            .state
            .as_deref()
            .ok_or("stateful pipeline item without state")?;
        parts.push(engine::value_bytes("state", &st.values[j])?);
    }
    let (dtype, shape0, _) = parts[0];
    let dims = |s: &[i64]| s.iter().map(|&d| d.max(0) as usize).collect::<Vec<_>>();
    let mut shape = dims(shape0);
    shape[axis] = parts.iter().map(|(_, s, _)| s[axis].max(0) as usize).sum();
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product::<usize>() * dtype.size();
    engine::new_value(dtype, &shape, |buf| {
        let mut at = 0;
        for o in 0..outer {
            for (_, s, data) in &parts {
                let n = s[axis].max(0) as usize * inner;
                buf[at..at + n].copy_from_slice(&data[o * n..(o + 1) * n]);
                at += n;
            }
        }
    })
}

/// Runs `items` (one request, or a batch of one pipeline) as one session
/// call. State and context are committed for every item only if the run
/// succeeds.
pub fn run<'s>(runner: &'s mut Runner, spec: &Spec, items: &mut [Item]) -> Result<Ran<'s>, String> {
    run_with(runner, spec, items, None)
}

/// [`run`], with the image input already written (one row per item, see
/// `infer::pre::prepare`); without it the image input is read from the
/// items' tensors like any other (warm-up).
pub fn run_with<'s>(
    runner: &'s mut Runner,
    spec: &Spec,
    items: &mut [Item],
    mut image: Option<DynValue>,
) -> Result<Ran<'s>, String> {
    let single = items.len() == 1;
    let counts = if single {
        None
    } else {
        Some(
            items
                .iter()
                .map(|it| rows(spec, it.tensors))
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    let mut tails = Tails::new();
    // Per request: a full batch of usual frames is not a large input.
    let largest = items
        .iter()
        .map(|it| it.tensors.iter().map(|t| t.data.len()).sum::<usize>())
        .max()
        .unwrap_or(0);
    let large = largest > 2 * runner.usual_bytes;
    let opts = match (&runner.shrink, large) {
        (Some(shrink), true) => shrink,
        _ => &runner.quiet,
    };
    let outputs = {
        let mut inputs: Vec<SessionInputValue> = Vec::with_capacity(spec.feeds.len());
        for feed in &spec.feeds {
            inputs.push(match feed {
                Feed::Client { input, .. }
                    if image.is_some() && spec.image.as_ref().map(|b| b.input) == Some(*input) =>
                {
                    image.take().expect("checked").into()
                }
                Feed::Client { input, context } => {
                    let name = &spec.client_inputs[*input].name;
                    gather_client(items, name, *context, &mut tails)?.into()
                }
                Feed::Constant(i) => (&runner.constants[*i]).into(),
                Feed::State(j) if single => {
                    let st = items[0]
                        .state
                        .as_deref()
                        .ok_or("stateful pipeline without state")?;
                    (&st.values[*j]).into()
                }
                Feed::State(j) => {
                    let axes = spec.batch.as_ref().ok_or("batch without batch axes")?;
                    gather_state(items, *j, axes.state[*j])?.into()
                }
            });
        }
        runner
            .model
            .session
            .run_with_options(&inputs[..], opts)
            .map_err(|e| e.to_string())?
    };
    if large {
        // Freed buffers of a large run go back to the OS instead of
        // staying in the process heap (RSS) until the next large frame.
        // SAFETY: plain call into glibc, no pointers.
        unsafe {
            libc::malloc_trim(0);
        }
    }
    let mut ran = Ran {
        outputs,
        rows: counts,
    };
    ran.commit_state(spec, items, tails)?;
    Ok(ran)
}

impl Ran<'_> {
    /// Moves (one request) or splits (a batch) the state outputs into the
    /// streams, and stores the new context tails. Everything is checked
    /// before anything is committed.
    fn commit_state(
        &mut self,
        spec: &Spec,
        items: &mut [Item],
        tails: Tails,
    ) -> Result<(), String> {
        let names = &spec.state_outputs;
        let mut fresh: Vec<Vec<DynValue>> = items.iter().map(|_| Vec::new()).collect();
        for (j, out) in names.iter().enumerate() {
            match &self.rows {
                None => {
                    let v = self
                        .outputs
                        .remove(out.as_str())
                        .ok_or_else(|| format!("model did not return state output `{out}`"))?;
                    fresh[0].push(v);
                }
                Some(counts) => {
                    let axes = spec.batch.as_ref().ok_or("batch without batch axes")?;
                    let v = self
                        .outputs
                        .get(out.as_str())
                        .ok_or_else(|| format!("model did not return state output `{out}`"))?;
                    for (i, piece) in split_value(v, axes.state[j], counts)?
                        .into_iter()
                        .enumerate()
                    {
                        fresh[i].push(piece);
                    }
                }
            }
        }
        for (it, values) in items.iter_mut().zip(fresh) {
            if let Some(st) = it.state.as_deref_mut()
                && !values.is_empty()
            {
                st.values = values;
            }
        }
        for (i, k, tail) in tails {
            if let Some(st) = items[i].state.as_deref_mut() {
                st.context[k] = Some(tail);
            }
        }
        Ok(())
    }

    /// Request `i`'s published outputs, read in place from the session's
    /// output memory (cut to its rows for a batch).
    pub fn outputs<'a>(&'a self, spec: &'a Spec, i: usize) -> Result<Vec<OutTensor<'a>>, String> {
        let mut start = 0;
        let rows = self.rows.as_ref().map(|counts| {
            start = counts[..i].iter().sum();
            counts[i]
        });
        spec.publish
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let v = self
                    .outputs
                    .get(name.as_str())
                    .ok_or_else(|| format!("model did not return output `{name}`"))?;
                let (dtype, shape, data) = engine::value_bytes(name, v)?;
                let rows = match (rows, spec.batch.as_ref()) {
                    (Some(n), Some(axes)) => Some((axes.publish[k], start, n)),
                    _ => None,
                };
                Ok(OutTensor {
                    name,
                    dtype,
                    shape,
                    data,
                    rows,
                })
            })
            .collect()
    }

    /// Request `i`'s published outputs as owned tensors (warm-up checks,
    /// tests).
    pub fn tensors(&self, spec: &Spec, i: usize) -> Result<Vec<Tensor>, String> {
        Ok(self
            .outputs(spec, i)?
            .iter()
            .map(OutTensor::to_tensor)
            .collect())
    }
}

/// Splits a runtime value along `axis` into new values of `counts` rows.
fn split_value(v: &DynValue, axis: usize, counts: &[usize]) -> Result<Vec<DynValue>, String> {
    let (dtype, shape, data) = engine::value_bytes("state", v)?;
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    if axis >= dims.len() || counts.iter().sum::<usize>() != dims[axis] {
        return Err(format!(
            "state output {dims:?} does not split into {counts:?} along axis {axis}"
        ));
    }
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product::<usize>() * dtype.size();
    let n = dims[axis];
    let mut out = Vec::with_capacity(counts.len());
    let mut start = 0;
    for &c in counts {
        let mut shape = dims.clone();
        shape[axis] = c;
        out.push(engine::new_value(dtype, &shape, |buf| {
            for o in 0..outer {
                let src = (o * n + start) * inner;
                buf[o * c * inner..(o + 1) * c * inner]
                    .copy_from_slice(&data[src..src + c * inner]);
            }
        })?);
        start += c;
    }
    Ok(out)
}
