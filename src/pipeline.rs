//! Tensor pipelines: what a message must contain for a given model, and how a
//! job's tensors become one `Session::run`. [`Spec`] is derived once at start-up
//! from the config and the model's declared ports; ingress uses it to validate
//! in the zenoh callback, workers use it with a per-stream [`StreamState`] to
//! add constants, carried state (an output fed back as the next input) and
//! carried context (the tail of the previous input prepended to the next).

use std::collections::HashMap;
use std::time::Instant;

use crate::batch::{self, BatchAxes};
pub use crate::batch::{BatchItem, run_batch};
use crate::config::{InputFormat, PipelineConfig};
use crate::engine::{self, EngineError, Model, Port};
use crate::error::{ErrorCode, Rejection};
use crate::wire::{Dtype, Tensor};

/// The interface of one pipeline, fixed at start-up.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Inputs a message must carry, with the shape the client sends (a
    /// context-carried input is `keep` shorter on its last axis).
    pub client_inputs: Vec<Port>,
    /// Model outputs published in predictions.
    pub publish: Vec<String>,
    /// Initial value of each state input (zeros), by input name.
    pub state_init: Vec<Tensor>,
    pub provider: &'static str,
    pub model_inputs: Vec<Port>,
    pub model_outputs: Vec<Port>,
    /// Batch axes when the pipeline batches (`max_batch > 1`); start-up
    /// fails if the config asks for batching and the model cannot batch.
    pub batch: Option<BatchAxes>,
}

fn iface(p: &PipelineConfig, reason: String) -> EngineError {
    EngineError::Interface {
        pipeline: p.name.clone(),
        reason,
    }
}

impl Spec {
    /// Checks the config's bindings against the model and derives the spec.
    pub fn new(p: &PipelineConfig, model: &Model) -> Result<Spec, EngineError> {
        let find_in = |name: &str, what: &str| {
            model.inputs.iter().find(|i| i.name == name).ok_or_else(|| {
                iface(
                    p,
                    format!(
                        "{what} `{name}` is not a model input; inputs are: {}",
                        list(&model.inputs)
                    ),
                )
            })
        };
        let find_out = |name: &str, what: &str| {
            model
                .outputs
                .iter()
                .find(|o| o.name == name)
                .ok_or_else(|| {
                    iface(
                        p,
                        format!(
                            "{what} `{name}` is not a model output; outputs are: {}",
                            list(&model.outputs)
                        ),
                    )
                })
        };
        for (name, c) in &p.constants {
            let port = find_in(name, "constant")?;
            if port.dtype != c.dtype {
                return Err(iface(
                    p,
                    format!(
                        "constant `{name}` is {} but the model takes {}",
                        c.dtype.name(),
                        port.dtype.name()
                    ),
                ));
            }
        }
        let mut state_init = Vec::new();
        for s in &p.state {
            let i = find_in(&s.input, "state input")?;
            let o = find_out(&s.output, "state output")?;
            if i.dtype != o.dtype {
                return Err(iface(
                    p,
                    format!(
                        "state `{}` ({}) and `{}` ({}) differ in dtype",
                        s.input,
                        i.dtype.name(),
                        s.output,
                        o.dtype.name()
                    ),
                ));
            }
            let shape: Vec<usize> = i
                .shape
                .iter()
                .map(|&d| if d < 0 { 1 } else { d as usize })
                .collect();
            let n: usize = shape.iter().product::<usize>() * i.dtype.size();
            state_init.push(Tensor {
                name: s.input.clone(),
                dtype: i.dtype,
                shape,
                data: vec![0; n],
            });
        }
        let mut client_inputs = Vec::new();
        for inp in &model.inputs {
            if p.constants.contains_key(&inp.name) || p.state.iter().any(|s| s.input == inp.name) {
                continue;
            }
            let mut port = inp.clone();
            if let Some(c) = p.context.iter().find(|c| c.input == inp.name) {
                let last = port
                    .shape
                    .last_mut()
                    .ok_or_else(|| iface(p, format!("context input `{}` is a scalar", inp.name)))?;
                if *last >= 0 {
                    if *last <= c.keep as i64 {
                        return Err(iface(
                            p,
                            format!(
                                "context keep = {} leaves nothing of `{}` (last dim {})",
                                c.keep, inp.name, last
                            ),
                        ));
                    }
                    *last -= c.keep as i64;
                }
            }
            client_inputs.push(port);
        }
        for c in &p.context {
            find_in(&c.input, "context input")?;
        }
        if let InputFormat::Raw {
            tensor,
            dtype,
            shape,
        } = &p.format
        {
            if client_inputs.len() != 1 || client_inputs[0].name != *tensor {
                return Err(iface(
                    p,
                    format!(
                        "format = \"raw\" carries one tensor `{tensor}`, but the messages must supply: {}",
                        list(&client_inputs)
                    ),
                ));
            }
            let want = &client_inputs[0];
            if want.dtype != *dtype || !shape_fits(&want.shape, shape) {
                return Err(iface(
                    p,
                    format!(
                        "raw tensor {} {:?} does not fit the model input {want}",
                        dtype.name(),
                        shape
                    ),
                ));
            }
        }
        let publish: Vec<String> = match &p.publish {
            Some(names) => {
                for n in names {
                    find_out(n, "published output")?;
                }
                names.clone()
            }
            None => model
                .outputs
                .iter()
                .filter(|o| !p.state.iter().any(|s| s.output == o.name))
                .map(|o| o.name.clone())
                .collect(),
        };
        let batch = match &p.batch {
            None => None,
            Some(b) => {
                let states: Vec<&Port> = p
                    .state
                    .iter()
                    .map(|s| find_in(&s.input, "state input"))
                    .collect::<Result<_, _>>()?;
                let published: Vec<&Port> = publish
                    .iter()
                    .map(|n| find_out(n, "published output"))
                    .collect::<Result<_, _>>()?;
                let axes = batch::detect(&client_inputs, &states, &published).map_err(|why| {
                    iface(
                        p,
                        format!(
                            "max_batch = {} but the model cannot be batched: {why}; remove max_batch (or set it to 1) for this model",
                            b.max_batch
                        ),
                    )
                })?;
                Some(axes)
            }
        };
        Ok(Spec {
            client_inputs,
            publish,
            state_init,
            batch,
            provider: model.provider,
            model_inputs: model.inputs.clone(),
            model_outputs: model.outputs.clone(),
        })
    }

    /// Validates a decoded message against the client inputs. Runs in the
    /// zenoh callback: no allocation beyond the error message.
    pub fn validate(&self, tensors: &[Tensor]) -> Result<(), Rejection> {
        for want in &self.client_inputs {
            let Some(t) = tensors.iter().find(|t| t.name == want.name) else {
                return Err(Rejection::new(
                    ErrorCode::MissingTensor,
                    format!(
                        "missing tensor `{}`; this pipeline takes {}",
                        want.name,
                        list(&self.client_inputs)
                    ),
                ));
            };
            if t.dtype != want.dtype {
                return Err(Rejection::new(
                    ErrorCode::WrongDtype,
                    format!("tensor `{}` is {}; expected {want}", t.name, t.dtype.name()),
                ));
            }
            if !shape_fits(&want.shape, &t.shape) {
                return Err(Rejection::new(
                    ErrorCode::WrongShape,
                    format!(
                        "tensor `{}` has shape {:?}; expected {want}",
                        t.name, t.shape
                    ),
                ));
            }
        }
        if let Some(extra) = tensors
            .iter()
            .find(|t| !self.client_inputs.iter().any(|w| w.name == t.name))
        {
            return Err(Rejection::new(
                ErrorCode::UnexpectedTensor,
                format!(
                    "unexpected tensor `{}`; this pipeline takes {}",
                    extra.name,
                    list(&self.client_inputs)
                ),
            ));
        }
        Ok(())
    }

    /// Zero-filled inputs for the warm-up run.
    pub fn warmup_inputs(&self, p: &PipelineConfig) -> Vec<Tensor> {
        self.client_inputs
            .iter()
            .map(|port| {
                let shape = match (&p.format, p.warmup.get(&port.name)) {
                    (InputFormat::Raw { shape, .. }, _) => shape.clone(),
                    (_, Some(s)) => s.clone(),
                    _ => port
                        .shape
                        .iter()
                        .map(|&d| if d < 0 { 1 } else { d as usize })
                        .collect(),
                };
                let n = shape.iter().product::<usize>() * port.dtype.size();
                Tensor {
                    name: port.name.clone(),
                    dtype: port.dtype,
                    shape,
                    data: vec![0; n],
                }
            })
            .collect()
    }
}

fn list(ports: &[Port]) -> String {
    ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn shape_fits(want: &[i64], got: &[usize]) -> bool {
    want.len() == got.len()
        && want
            .iter()
            .zip(got)
            .all(|(&w, &g)| g > 0 && (w < 0 || w as usize == g))
}

/// What a stateful stream carries from one frame to the next.
pub struct StreamState {
    pub state: Vec<Tensor>,
    /// Per context input: the last `keep` elements of each row.
    pub context: HashMap<String, Vec<u8>>,
    pub last_used: Instant,
}

impl StreamState {
    pub fn new(spec: &Spec) -> StreamState {
        StreamState {
            state: spec.state_init.clone(),
            context: HashMap::new(),
            last_used: Instant::now(),
        }
    }
}

/// Prepends the carried context to `t` along its last axis; returns the
/// model input and the tail to carry next. Rows are all leading dimensions
/// flattened. A missing or differently-shaped carry starts from zeros.
pub(crate) fn apply_context(
    t: &Tensor,
    keep: usize,
    carried: Option<&Vec<u8>>,
) -> (Tensor, Vec<u8>) {
    let es = t.dtype.size();
    let last = *t.shape.last().unwrap_or(&1);
    let rows = t.elements() / last.max(1);
    let zeros;
    let carried = match carried {
        Some(c) if c.len() == rows * keep * es => c,
        _ => {
            zeros = vec![0; rows * keep * es];
            &zeros
        }
    };
    let width = keep + last;
    let mut data = Vec::with_capacity(rows * width * es);
    for r in 0..rows {
        data.extend_from_slice(&carried[r * keep * es..(r + 1) * keep * es]);
        data.extend_from_slice(&t.data[r * last * es..(r + 1) * last * es]);
    }
    let mut tail = Vec::with_capacity(rows * keep * es);
    for r in 0..rows {
        tail.extend_from_slice(&data[(r * width + width - keep) * es..(r + 1) * width * es]);
    }
    let mut shape = t.shape.clone();
    if let Some(l) = shape.last_mut() {
        *l = width;
    }
    let input = Tensor {
        name: t.name.clone(),
        dtype: t.dtype,
        shape,
        data,
    };
    (input, tail)
}

/// Runs one job: assemble inputs (message tensors, constants, carried state
/// and context), `Session::run`, feed state outputs back, return the
/// published outputs. `state` is `None` for stateless pipelines.
pub fn run(
    model: &mut Model,
    p: &PipelineConfig,
    spec: &Spec,
    tensors: &[Tensor],
    state: Option<&mut StreamState>,
) -> Result<Vec<Tensor>, String> {
    let mut values: Vec<(String, ort::value::DynTensor)> =
        Vec::with_capacity(spec.model_inputs.len());
    // New context tails are committed only if the run succeeds, so a failed
    // frame leaves the stream exactly as it was.
    let mut tails = Vec::new();
    for t in tensors {
        let v = match (
            p.context.iter().find(|c| c.input == t.name),
            state.as_deref(),
        ) {
            (Some(c), Some(st)) => {
                let (input, tail) = apply_context(t, c.keep, st.context.get(&c.input));
                tails.push((c.input.clone(), tail));
                engine::to_ort(&input)?
            }
            _ => engine::to_ort(t)?,
        };
        values.push((t.name.clone(), v));
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
    if let Some(st) = state.as_deref() {
        for t in &st.state {
            values.push((t.name.clone(), engine::to_ort(t)?));
        }
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
    if let Some(st) = state {
        st.context.extend(tails);
        for b in &p.state {
            let v = outputs
                .get(&b.output)
                .ok_or_else(|| format!("model did not return state output `{}`", b.output))?;
            let t = engine::from_ort(&b.input, v)?;
            if let Some(slot) = st.state.iter_mut().find(|s| s.name == b.input) {
                *slot = t;
            }
        }
    }
    spec.publish
        .iter()
        .map(|name| {
            let v = outputs
                .get(name)
                .ok_or_else(|| format!("model did not return output `{name}`"))?;
            engine::from_ort(name, v)
        })
        .collect()
}

/// Dtype of a named client input, for the raw decoder.
pub fn client_dtype(spec: &Spec, name: &str) -> Option<Dtype> {
    spec.client_inputs
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::f32_tensor;

    #[test]
    fn context_is_prepended_and_tail_carried() {
        let (a, carried) = apply_context(&f32_tensor("x", &[1, 3], &[1.0, 2.0, 3.0]), 2, None);
        assert_eq!(
            crate::wire::f32_values(&a).unwrap(),
            vec![0.0, 0.0, 1.0, 2.0, 3.0]
        );
        let (b, _) = apply_context(
            &f32_tensor("x", &[1, 3], &[4.0, 5.0, 6.0]),
            2,
            Some(&carried),
        );
        assert_eq!(
            crate::wire::f32_values(&b).unwrap(),
            vec![2.0, 3.0, 4.0, 5.0, 6.0]
        );
        assert_eq!(b.shape, vec![1, 5]);
    }

    #[test]
    fn dynamic_dims_accept_any_positive_size() {
        assert!(shape_fits(&[-1, 4], &[3, 4]));
        assert!(!shape_fits(&[-1, 4], &[3, 5]));
        assert!(!shape_fits(&[-1, 4], &[0, 4]));
        assert!(!shape_fits(&[4], &[1, 4]));
    }
}
