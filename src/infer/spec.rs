//! What a tensor pipeline's messages must contain for its model, and how each
//! model input is fed. [`Spec`] is derived once at start-up from the config
//! and the model's declared ports; ingress validates messages against it in
//! the zenoh callback, and the run path ([`super::run`]) follows its
//! [`Feed`]s to assemble every `Session::run`: message tensors (with carried
//! context), constants, and carried state (an output fed back as the next
//! input).

use super::batch::{self, BatchAxes};
use super::engine::{EngineError, Model, Port};
use crate::config::{InputFormat, PipelineConfig};
use crate::error::{ErrorCode, Rejection};
use crate::tensor::{Dtype, Tensor, shape_fits};

/// How one model input is fed, in model input order.
#[derive(Clone, Debug, PartialEq)]
pub enum Feed {
    /// From the message: client input `input`; `context` = (context
    /// binding index, elements kept) when the tail of the previous frame
    /// is prepended on the last axis.
    Client {
        input: usize,
        context: Option<(usize, usize)>,
    },
    /// A configured constant (index into the runner's constant values).
    Constant(usize),
    /// Carried state of binding `.0` (config order).
    State(usize),
}

/// The interface of one pipeline, fixed at start-up.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Inputs a message must carry, with the shape the client sends (a
    /// context-carried input is `keep` shorter on its last axis).
    pub client_inputs: Vec<Port>,
    /// Model outputs published in predictions.
    pub publish: Vec<String>,
    /// Dtype and initial (zero) shape of each state binding, config order.
    pub state_init: Vec<(Dtype, Vec<usize>)>,
    /// The output fed back by each state binding, config order.
    pub state_outputs: Vec<String>,
    /// One per model input, in model order.
    pub feeds: Vec<Feed>,
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

/// Which of an input's warm-up shapes (see [`crate::config::WarmupShape`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarmPoint {
    Min,
    Opt,
    Max,
}

/// A model's declared inputs and outputs, as a session (or an inspection
/// of the model file) reports them.
pub struct ModelPorts<'a> {
    pub inputs: &'a [Port],
    pub outputs: &'a [Port],
}

/// Looks ports up by name, with errors that list what exists.
struct Ports<'a> {
    p: &'a PipelineConfig,
    model: &'a ModelPorts<'a>,
}

impl<'a> Ports<'a> {
    fn input(&self, name: &str, what: &str) -> Result<&'a Port, EngineError> {
        let m = self.model;
        m.inputs.iter().find(|i| i.name == name).ok_or_else(|| {
            let msg = format!(
                "{what} `{name}` is not a model input; inputs are: {}",
                list(m.inputs)
            );
            iface(self.p, msg)
        })
    }

    fn output(&self, name: &str, what: &str) -> Result<&'a Port, EngineError> {
        let m = self.model;
        m.outputs.iter().find(|o| o.name == name).ok_or_else(|| {
            let msg = format!(
                "{what} `{name}` is not a model output; outputs are: {}",
                list(m.outputs)
            );
            iface(self.p, msg)
        })
    }
}

impl Spec {
    /// Checks the config's bindings against the model and derives the spec.
    pub fn new(p: &PipelineConfig, model: &Model) -> Result<Spec, EngineError> {
        let ports = ModelPorts {
            inputs: &model.inputs,
            outputs: &model.outputs,
        };
        Spec::from_ports(p, &ports, model.provider)
    }

    /// [`Spec::new`] from the ports alone (no session needed: the TensorRT
    /// profile is derived from an inspection before the real session exists).
    pub fn from_ports(
        p: &PipelineConfig,
        model: &ModelPorts,
        provider: &'static str,
    ) -> Result<Spec, EngineError> {
        let ports = Ports { p, model };
        check_constants(&ports)?;
        let state_init = state_bindings(&ports)?;
        let client_inputs = client_inputs(&ports)?;
        check_raw_format(p, &client_inputs)?;
        check_warmup(&ports, &client_inputs)?;
        let publish = published(&ports)?;
        let batch = batch_axes(&ports, &client_inputs, &publish)?;
        let feeds = feeds(p, model.inputs, &client_inputs);
        Ok(Spec {
            client_inputs,
            publish,
            state_init,
            state_outputs: p.state.iter().map(|s| s.output.clone()).collect(),
            feeds,
            batch,
            provider,
            model_inputs: model.inputs.to_vec(),
            model_outputs: model.outputs.to_vec(),
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

    /// Zero-filled inputs for the warm-up run (each input's `opt` shape).
    pub fn warmup_inputs(&self, p: &PipelineConfig) -> Vec<Tensor> {
        self.warmup_inputs_at(p, WarmPoint::Opt)
    }

    /// Zero-filled inputs at one end of the warm-up ranges.
    pub fn warmup_inputs_at(&self, p: &PipelineConfig, at: WarmPoint) -> Vec<Tensor> {
        self.warmup_shapes(p, at)
            .into_iter()
            .zip(&self.client_inputs)
            .map(|(shape, port)| Tensor::zeros(port.name.clone(), port.dtype, shape))
            .collect()
    }

    /// The shape of each client input (in order) at one warm-up point: the
    /// raw format's shape, the configured `warmup` entry, or the declared
    /// shape with dynamic dimensions as 1.
    pub fn warmup_shapes(&self, p: &PipelineConfig, at: WarmPoint) -> Vec<Vec<usize>> {
        self.client_inputs
            .iter()
            .map(|port| match (&p.format, p.warmup.get(&port.name)) {
                (InputFormat::Raw { shape, .. }, _) => shape.clone(),
                (_, Some(w)) => match at {
                    WarmPoint::Min => w.min.clone(),
                    WarmPoint::Opt => w.opt.clone(),
                    WarmPoint::Max => w.max.clone(),
                },
                _ => port
                    .shape
                    .iter()
                    .map(|&d| if d < 0 { 1 } else { d as usize })
                    .collect(),
            })
            .collect()
    }
}

/// Every `warmup` key names an input that messages carry, and its shapes
/// fit that input; a typo would otherwise warm up (and build a TensorRT
/// engine for) a default shape nobody sends.
fn check_warmup(ports: &Ports, client_inputs: &[Port]) -> Result<(), EngineError> {
    let p = ports.p;
    for (name, w) in &p.warmup {
        let Some(port) = client_inputs.iter().find(|c| c.name == *name) else {
            let why = if ports.model.inputs.iter().any(|i| i.name == *name) {
                format!(
                    "`{name}` is fed by the daemon (a constant or carried state), not by messages"
                )
            } else {
                format!("the model has no input `{name}`")
            };
            return Err(iface(
                p,
                format!(
                    "warmup.{name}: {why}; warm-up shapes are for the inputs a message carries: {}",
                    list(client_inputs)
                ),
            ));
        };
        for (end, shape) in [("min", &w.min), ("opt", &w.opt), ("max", &w.max)] {
            if !shape_fits(&port.shape, shape) {
                let which = if w.is_range() {
                    format!("warmup.{name}.{end}")
                } else {
                    format!("warmup.{name}")
                };
                return Err(iface(
                    p,
                    format!("{which} = {shape:?} does not fit the model input {port}"),
                ));
            }
        }
    }
    Ok(())
}

fn check_constants(ports: &Ports) -> Result<(), EngineError> {
    for (name, c) in &ports.p.constants {
        let port = ports.input(name, "constant")?;
        if port.dtype != c.dtype {
            return Err(iface(
                ports.p,
                format!(
                    "constant `{name}` is {} but the model takes {}",
                    c.dtype.name(),
                    port.dtype.name()
                ),
            ));
        }
    }
    Ok(())
}

/// Each state binding's dtype and zero shape (dynamic dims as 1).
fn state_bindings(ports: &Ports) -> Result<Vec<(Dtype, Vec<usize>)>, EngineError> {
    let mut init = Vec::new();
    for s in &ports.p.state {
        let i = ports.input(&s.input, "state input")?;
        let o = ports.output(&s.output, "state output")?;
        if i.dtype != o.dtype {
            return Err(iface(
                ports.p,
                format!(
                    "state `{}` ({}) and `{}` ({}) differ in dtype",
                    s.input,
                    i.dtype.name(),
                    s.output,
                    o.dtype.name()
                ),
            ));
        }
        let shape = i
            .shape
            .iter()
            .map(|&d| if d < 0 { 1 } else { d as usize })
            .collect();
        init.push((i.dtype, shape));
    }
    Ok(init)
}

/// The model inputs a message supplies: all but constants and state, with
/// a context input's last axis shortened by what the daemon carries.
fn client_inputs(ports: &Ports) -> Result<Vec<Port>, EngineError> {
    let p = ports.p;
    let mut out = Vec::new();
    for inp in ports.model.inputs {
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
        out.push(port);
    }
    for c in &p.context {
        ports.input(&c.input, "context input")?;
    }
    Ok(out)
}

fn check_raw_format(p: &PipelineConfig, client_inputs: &[Port]) -> Result<(), EngineError> {
    let InputFormat::Raw {
        tensor,
        dtype,
        shape,
    } = &p.format
    else {
        return Ok(());
    };
    if client_inputs.len() != 1 || client_inputs[0].name != *tensor {
        return Err(iface(
            p,
            format!(
                "format = \"raw\" carries one tensor `{tensor}`, but the messages must supply: {}",
                list(client_inputs)
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
    Ok(())
}

/// Outputs published: the configured list, or every output that is not a
/// state output.
fn published(ports: &Ports) -> Result<Vec<String>, EngineError> {
    let p = ports.p;
    Ok(match &p.publish {
        Some(names) => {
            for n in names {
                ports.output(n, "published output")?;
            }
            names.clone()
        }
        None => ports
            .model
            .outputs
            .iter()
            .filter(|o| !p.state.iter().any(|s| s.output == o.name))
            .map(|o| o.name.clone())
            .collect(),
    })
}

fn batch_axes(
    ports: &Ports,
    client_inputs: &[Port],
    publish: &[String],
) -> Result<Option<BatchAxes>, EngineError> {
    let p = ports.p;
    let Some(b) = &p.batch else { return Ok(None) };
    let states: Vec<&Port> = p
        .state
        .iter()
        .map(|s| ports.input(&s.input, "state input"))
        .collect::<Result<_, _>>()?;
    let published: Vec<&Port> = publish
        .iter()
        .map(|n| ports.output(n, "published output"))
        .collect::<Result<_, _>>()?;
    batch::detect(client_inputs, &states, &published)
        .map(Some)
        .map_err(|why| {
            iface(
                p,
                format!(
                    "max_batch = {} but the model cannot be batched: {why}; remove max_batch (or set it to 1) for this model",
                    b.max_batch
                ),
            )
        })
}

fn feeds(p: &PipelineConfig, model_inputs: &[Port], client_inputs: &[Port]) -> Vec<Feed> {
    let constants: Vec<&String> = p.constants.keys().collect();
    model_inputs
        .iter()
        .map(|inp| {
            if let Some(i) = constants.iter().position(|c| **c == inp.name) {
                Feed::Constant(i)
            } else if let Some(j) = p.state.iter().position(|s| s.input == inp.name) {
                Feed::State(j)
            } else {
                let input = client_inputs
                    .iter()
                    .position(|c| c.name == inp.name)
                    .expect("every other model input is a client input");
                let context = p
                    .context
                    .iter()
                    .position(|c| c.input == inp.name)
                    .map(|k| (k, p.context[k].keep));
                Feed::Client { input, context }
            }
        })
        .collect()
}

pub(crate) fn list(ports: &[Port]) -> String {
    ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_dims_accept_any_positive_size() {
        assert!(shape_fits(&[-1, 4], &[3, 4]));
        assert!(!shape_fits(&[-1, 4], &[3, 5]));
        assert!(!shape_fits(&[-1, 4], &[0, 4]));
        assert!(!shape_fits(&[4], &[1, 4]));
    }
}
