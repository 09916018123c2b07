//! The one run path of tensor pipelines, for one request or a batch of them:
//! it assembles the model's inputs from [`Feed`]s, runs the session once, and
//! commits carried state and context only when the run succeeded (a failed
//! frame leaves its stream as it was). Outputs are read in place by the
//! caller ([`Ran::outputs`]) and encoded straight into replies.
//!
//! Steady state costs no heap allocation here (issue 12): message tensors are
//! written once into input values the runner keeps between runs (with the
//! carried context in front) — the one copy of the input bytes; constants are
//! runtime values built once; a single request's state is moved in and out as
//! runtime values (a batch's is gathered along its batch axis and split
//! back); outputs that are not state are written into values pre-allocated
//! for the usual input shapes ([`super::prealloc`]); context tails reuse
//! their buffers.

use ort::logging::LogLevel;
use ort::session::{RunOptions, SessionInputValue, SessionOutputs};
use ort::value::DynValue;
use smallvec::SmallVec;

use super::engine::{self, Model};
use super::prealloc::{self, Prealloc};
use super::spec::{Feed, Spec};
use super::state::StreamState;
use crate::config::PipelineConfig;
use crate::tensor::Tensor;
use crate::wire::reply::OutTensor;

/// Room on the stack for a run's inputs, outputs and members; more spill to
/// the heap (batches, large models), which is allowed, just not per VAD
/// frame.
pub(crate) type Few<T> = SmallVec<[T; 6]>;

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
    /// Per model input: the value the last run's client tensor was written
    /// into, reused while the shape holds (never kept for a large run).
    inputs: Vec<Option<DynValue>>,
    /// Buffers of context tails that streams gave back, reused for the
    /// next tails.
    spare_tails: Vec<Vec<u8>>,
    /// Outputs written into values allocated once, for the usual shapes.
    prealloc: Prealloc,
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
        let n_inputs = model.inputs.len();
        Ok(Runner {
            model,
            constants,
            quiet: run_options(false)?,
            shrink: Some(run_options(true)?),
            usual_bytes: usize::MAX / 4,
            inputs: (0..n_inputs).map(|_| None).collect(),
            spare_tails: Vec::new(),
            prealloc: Prealloc::default(),
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
type Tails = Few<(usize, usize, Vec<u8>)>;

/// Where a client input is written: the runner's kept value for that model
/// input (reused when dtype and shape match) and its spare tail buffers.
struct Dest<'r> {
    kept: &'r mut Option<DynValue>,
    /// Keep the value for the next run (false for a large run).
    keep_value: bool,
    spare_tails: &'r mut Vec<Vec<u8>>,
}

/// The value of `dtype`/`shape` to write into: the kept one when it fits,
/// else a new one.
fn input_value<'d>(
    kept: &'d mut Option<DynValue>,
    dtype: crate::tensor::Dtype,
    shape: &[usize],
) -> Result<&'d mut DynValue, String> {
    let fits = kept.as_ref().is_some_and(|v| {
        engine::value_bytes("input", v).is_ok_and(|(d, s, _)| {
            d == dtype
                && s.len() == shape.len()
                && s.iter().zip(shape).all(|(&a, &b)| a == b as i64)
        })
    });
    if !fits {
        *kept = Some(engine::new_value(dtype, shape, |_| {})?);
    }
    Ok(kept.as_mut().expect("set above"))
}

/// One client input for every request, concatenated along axis 0, each
/// request's rows preceded by its carried context (`keep` elements per row)
/// when the input carries context. Writes the new tails to `tails`.
/// Returns the value when it is not kept for the next run.
fn gather_client(
    items: &[Item],
    name: &str,
    context: Option<(usize, usize)>,
    dest: Dest,
    tails: &mut Tails,
) -> Result<Option<DynValue>, String> {
    let first = find(items[0].tensors, name)?;
    let dtype = first.dtype;
    let es = dtype.size();
    let mut shape: Few<usize> = first.shape.iter().copied().collect();
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
    let value = input_value(dest.kept, dtype, &shape)?;
    let n = shape.iter().product::<usize>() * es;
    // SAFETY: a CPU tensor of this dtype and shape (checked or just made)
    // owns exactly `n` writable bytes; nothing else reads it during the fill.
    let buf = unsafe { engine::value_bytes_mut(value, n) };
    let mut row_at = 0;
    for (i, it) in items.iter().enumerate() {
        let t = find(it.tensors, name)?;
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
            let mut tail = dest.spare_tails.pop().unwrap_or_default();
            tail.clear();
            for r in 0..n_rows {
                let end = (row_at + r + 1) * width;
                tail.extend_from_slice(&buf[end - keep * es..end]);
            }
            tails.push((i, k, tail));
        }
        row_at += n_rows;
    }
    // A large frame's buffer is not kept alive between runs.
    Ok(if dest.keep_value {
        None
    } else {
        dest.kept.take()
    })
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

/// Writes every client input into its value (the runner's kept one, or a
/// new one for a large run) and gathers batched state; returns the batched
/// state values by model input.
fn prepare(
    runner: &mut Runner,
    spec: &Spec,
    items: &[Item],
    large: bool,
    tails: &mut Tails,
    skip: Option<usize>,
) -> Result<Few<Option<DynValue>>, String> {
    let single = items.len() == 1;
    let mut gathered: Few<Option<DynValue>> = Few::new();
    for (m, feed) in spec.feeds.iter().enumerate() {
        gathered.push(None);
        match feed {
            Feed::Client { input, .. } if skip == Some(*input) => {}
            Feed::Client { input, context } => {
                let name = &spec.client_inputs[*input].name;
                let dest = Dest {
                    kept: &mut runner.inputs[m],
                    keep_value: !large,
                    spare_tails: &mut runner.spare_tails,
                };
                gathered[m] = gather_client(items, name, *context, dest, tails)?;
            }
            Feed::State(j) if !single => {
                let axes = spec.batch.as_ref().ok_or("batch without batch axes")?;
                gathered[m] = Some(gather_state(items, *j, axes.state[*j])?);
            }
            Feed::State(_) | Feed::Constant(_) => {}
        }
    }
    Ok(gathered)
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
    // A pre-processed image input is already a runtime value (written by
    // `infer::pre`); the items' frame tensors are not gathered for it.
    let image_input = image.as_ref().and(spec.image.as_ref()).map(|b| b.input);
    let mut gathered = prepare(runner, spec, items, large, &mut tails, image_input)?;
    if let Some(input) = image_input {
        for (m, feed) in spec.feeds.iter().enumerate() {
            if matches!(feed, Feed::Client { input: i, .. } if *i == input) {
                gathered[m] = image.take();
            }
        }
    }
    let Runner {
        model,
        constants,
        quiet,
        shrink,
        inputs: kept,
        spare_tails,
        prealloc,
        ..
    } = runner;
    let mut inputs: Few<SessionInputValue> = Few::new();
    for (m, feed) in spec.feeds.iter().enumerate() {
        inputs.push(match feed {
            Feed::Client { .. } => gathered[m]
                .as_ref()
                .or(kept[m].as_ref())
                .ok_or("client input was not written")?
                .into(),
            Feed::Constant(i) => (&constants[*i]).into(),
            Feed::State(j) if single => {
                let st = items[0]
                    .state
                    .as_deref()
                    .ok_or("stateful pipeline without state")?;
                (&st.values[*j]).into()
            }
            Feed::State(_) => gathered[m].as_ref().ok_or("state was not gathered")?.into(),
        });
    }
    let outputs = match (shrink.as_ref(), large) {
        (Some(shrink), true) => prealloc::plain(&mut model.session, &inputs, shrink),
        _ => prealloc.run(&mut model.session, spec, &inputs, quiet, single),
    }?;
    drop(inputs);
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
    ran.commit_state(spec, items, tails, spare_tails)?;
    Ok(ran)
}

/// Spare tail buffers kept per runner at most (one per stream in flight is
/// plenty; the rest are freed).
const MAX_SPARE_TAILS: usize = 16;

impl Ran<'_> {
    /// Moves (one request) or splits (a batch) the state outputs into the
    /// streams, and stores the new context tails. Everything is checked
    /// before anything is committed.
    fn commit_state(
        &mut self,
        spec: &Spec,
        items: &mut [Item],
        tails: Tails,
        spare_tails: &mut Vec<Vec<u8>>,
    ) -> Result<(), String> {
        let names = &spec.state_outputs;
        match &self.rows {
            None => {
                let mut fresh: Few<DynValue> = Few::new();
                for out in names {
                    let v = self
                        .outputs
                        .remove(out.as_str())
                        .ok_or_else(|| format!("model did not return state output `{out}`"))?;
                    fresh.push(v);
                }
                if let Some(st) = items[0].state.as_deref_mut() {
                    for (slot, v) in st.values.iter_mut().zip(fresh) {
                        *slot = v;
                    }
                }
            }
            Some(counts) => {
                let mut fresh: Vec<Vec<DynValue>> = items.iter().map(|_| Vec::new()).collect();
                let axes = spec.batch.as_ref().ok_or("batch without batch axes")?;
                for (j, out) in names.iter().enumerate() {
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
                for (it, values) in items.iter_mut().zip(fresh) {
                    if let Some(st) = it.state.as_deref_mut()
                        && !values.is_empty()
                    {
                        st.values = values;
                    }
                }
            }
        }
        for (i, k, tail) in tails {
            if let Some(st) = items[i].state.as_deref_mut()
                && let Some(old) = st.context[k].replace(tail)
                && spare_tails.len() < MAX_SPARE_TAILS
            {
                spare_tails.push(old);
            }
        }
        Ok(())
    }

    /// Request `i`'s published outputs, read in place from the session's
    /// output memory (cut to its rows for a batch).
    pub fn outputs<'a>(&'a self, spec: &'a Spec, i: usize) -> Result<Few<OutTensor<'a>>, String> {
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
