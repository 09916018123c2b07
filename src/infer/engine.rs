//! The engine owns ONNX Runtime sessions: it builds one per (worker, pipeline)
//! at start-up with the configured execution-provider chain, describes their
//! inputs and outputs ([`Port`]), and moves bytes between tensors and runtime
//! values. Everything above it (the run path, the LLM, warm-up) builds
//! sessions here. Nothing here touches zenoh or blocks on I/O after start-up.

use std::path::Path;

use ort::environment::Environment;
use ort::ep::{self as ort_ep, ExecutionProvider};
use ort::memory::Allocator;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{DynTensor, DynValue, TensorElementType, ValueType};

use super::ep;
use super::profile::Profile;
use crate::config::{Fallback, PipelineConfig, Provider, RuntimeConfig};
use crate::tensor::{Dtype, Tensor};

#[derive(thiserror::Error, Debug)]
pub enum EngineError {
    #[error("pipeline {pipeline:?}: model file {path} not found")]
    ModelMissing { pipeline: String, path: String },
    #[error(
        "pipeline {pipeline:?}: execution provider {provider} unusable ({reason}) and fallback = \"error\""
    )]
    ProviderUnusable {
        pipeline: String,
        provider: &'static str,
        reason: String,
    },
    #[error("pipeline {pipeline:?}: cannot load model {path}: {reason}")]
    Load {
        pipeline: String,
        path: String,
        reason: String,
    },
    #[error("pipeline {pipeline:?}: {reason}")]
    Interface { pipeline: String, reason: String },
    #[error(
        "pipeline {pipeline:?}: warm-up run failed: {reason} (set `warmup = {{ <input> = [shape] }}` for inputs with dynamic dimensions)"
    )]
    Warmup { pipeline: String, reason: String },
}

/// A model input or output as the session declares it; `-1` marks a dynamic
/// dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<i64>,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| if *d < 0 { "?".into() } else { d.to_string() })
            .collect();
        write!(
            f,
            "{}: {}[{}]",
            self.name,
            self.dtype.name(),
            dims.join(",")
        )
    }
}

/// A session ready to run, with the provider that was actually registered.
pub struct Model {
    pub session: Session,
    pub provider: &'static str,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
}

pub fn dtype_of(t: TensorElementType) -> Option<Dtype> {
    Some(match t {
        TensorElementType::Float32 => Dtype::F32,
        TensorElementType::Float64 => Dtype::F64,
        TensorElementType::Float16 => Dtype::F16,
        TensorElementType::Bfloat16 => Dtype::Bf16,
        TensorElementType::Int8 => Dtype::I8,
        TensorElementType::Int16 => Dtype::I16,
        TensorElementType::Int32 => Dtype::I32,
        TensorElementType::Int64 => Dtype::I64,
        TensorElementType::Uint8 => Dtype::U8,
        TensorElementType::Uint16 => Dtype::U16,
        TensorElementType::Uint32 => Dtype::U32,
        TensorElementType::Uint64 => Dtype::U64,
        TensorElementType::Bool => Dtype::Bool,
        _ => return None,
    })
}

pub fn element_type(d: Dtype) -> TensorElementType {
    match d {
        Dtype::F32 => TensorElementType::Float32,
        Dtype::F64 => TensorElementType::Float64,
        Dtype::F16 => TensorElementType::Float16,
        Dtype::Bf16 => TensorElementType::Bfloat16,
        Dtype::I8 => TensorElementType::Int8,
        Dtype::I16 => TensorElementType::Int16,
        Dtype::I32 => TensorElementType::Int32,
        Dtype::I64 => TensorElementType::Int64,
        Dtype::U8 => TensorElementType::Uint8,
        Dtype::U16 => TensorElementType::Uint16,
        Dtype::U32 => TensorElementType::Uint32,
        Dtype::U64 => TensorElementType::Uint64,
        Dtype::Bool => TensorElementType::Bool,
    }
}

fn port(name: &str, ty: &ValueType) -> Result<Port, String> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => Ok(Port {
            name: name.to_string(),
            dtype: dtype_of(*ty)
                .ok_or_else(|| format!("`{name}` has unsupported element type {ty:?}"))?,
            shape: shape.iter().copied().collect(),
        }),
        other => Err(format!("`{name}` is not a tensor ({other:?})")),
    }
}

/// Whether the loaded ONNX Runtime was built with this provider at all.
pub fn provider_compiled_in(p: &Provider) -> Result<bool, String> {
    let r = match p {
        Provider::TensorRt(_) => ort_ep::TensorRT::is_available(),
        Provider::Cuda(_) => ort_ep::CUDA::is_available(),
        Provider::Cpu => return Ok(true),
    };
    r.map_err(|e| e.to_string())
}

fn base_builder(env: &Environment, rt: &RuntimeConfig) -> Result<SessionBuilder, String> {
    let b = Session::builder(env).map_err(|e| e.to_string())?;
    let b = b
        // `All` (ORT_ENABLE_ALL): ort's `Level3` is ORT_ENABLE_LAYOUT, which
        // skips the CPU layout transforms (NCHWc) convolution models gain from.
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| e.to_string())?;
    let b = b
        .with_intra_threads(rt.intra_op_threads)
        .map_err(|e| e.to_string())?;
    let b = b.with_inter_threads(1).map_err(|e| e.to_string())?;
    b.with_intra_op_spinning(rt.intra_op_spinning)
        .map_err(|e| e.to_string())
}

/// What [`load`] needs of a pipeline of either kind.
pub struct SessionSpec<'a> {
    pub name: &'a str,
    pub model: &'a Path,
    pub providers: &'a [Provider],
    pub fallback: Fallback,
}

impl<'a> From<&'a PipelineConfig> for SessionSpec<'a> {
    fn from(p: &'a PipelineConfig) -> Self {
        SessionSpec {
            name: &p.name,
            model: &p.model,
            providers: &p.providers,
            fallback: p.fallback,
        }
    }
}

/// Derives the TensorRT optimisation profile from the model's declared
/// inputs and outputs (see [`super::profile`]).
pub type ProfileFn<'a> = &'a dyn Fn(&[Port], &[Port]) -> Result<Option<Profile>, String>;

/// Builds a session for `pipeline`, walking its provider list in order. With
/// `fallback = "next"` an unusable provider is logged and skipped; with
/// `"error"` it fails start-up. Providers after the chosen one stay
/// registered, so ORT can place nodes the first one rejects.
pub fn load(
    env: &Environment,
    pipeline: &SessionSpec,
    rt: &RuntimeConfig,
) -> Result<Model, EngineError> {
    load_with(env, pipeline, rt, None)
}

/// [`load`], with a TensorRT optimisation profile from `profile` whenever
/// the TensorRT provider is tried (the model's ports are read first from a
/// CPU inspection session; nothing of this runs when TensorRT is not in
/// the loaded library).
pub fn load_with(
    env: &Environment,
    pipeline: &SessionSpec,
    rt: &RuntimeConfig,
    profile: Option<ProfileFn>,
) -> Result<Model, EngineError> {
    let path = pipeline.model;
    if !Path::new(path).is_file() {
        return Err(EngineError::ModelMissing {
            pipeline: pipeline.name.to_string(),
            path: path.display().to_string(),
        });
    }
    let load_err = |reason: String| EngineError::Load {
        pipeline: pipeline.name.to_string(),
        path: path.display().to_string(),
        reason,
    };
    let mut last_reason = String::new();
    for (i, provider) in pipeline.providers.iter().enumerate() {
        let attempt = (|| -> Result<Session, String> {
            if !provider_compiled_in(provider)? {
                return Err("not compiled into the loaded ONNX Runtime library".into());
            }
            let trt = trt_profile(env, pipeline, &pipeline.providers[i..], profile)?;
            let eps: Vec<_> = pipeline.providers[i..]
                .iter()
                .map(|p| ep::dispatch(p, trt.as_ref()))
                .collect();
            let b = base_builder(env, rt)?;
            let mut b = b.with_execution_providers(eps).map_err(|e| e.to_string())?;
            b.commit_from_file(path).map_err(|e| e.to_string())
        })();
        match attempt {
            Ok(session) => {
                if i > 0 {
                    tracing::warn!(pipeline = %pipeline.name, provider = provider.name(), "using fallback execution provider");
                } else {
                    tracing::info!(pipeline = %pipeline.name, provider = provider.name(), "execution provider");
                }
                let (inputs, outputs) = ports(&session).map_err(load_err)?;
                return Ok(Model {
                    session,
                    provider: provider.name(),
                    inputs,
                    outputs,
                });
            }
            Err(reason) => {
                let is_model_problem = matches!(provider, Provider::Cpu);
                if is_model_problem {
                    return Err(load_err(reason));
                }
                if pipeline.fallback == Fallback::Error {
                    return Err(EngineError::ProviderUnusable {
                        pipeline: pipeline.name.to_string(),
                        provider: provider.name(),
                        reason,
                    });
                }
                tracing::warn!(pipeline = %pipeline.name, provider = provider.name(), %reason, "execution provider unusable; trying the next one");
                last_reason = reason;
            }
        }
    }
    Err(EngineError::Load {
        pipeline: pipeline.name.to_string(),
        path: path.display().to_string(),
        reason: format!(
            "no configured execution provider could be used; last error: {last_reason}"
        ),
    })
}

/// The profile for a chain that registers TensorRT with `warmup_profile`
/// on, if the caller can derive one.
fn trt_profile(
    env: &Environment,
    pipeline: &SessionSpec,
    chain: &[Provider],
    profile: Option<ProfileFn>,
) -> Result<Option<Profile>, String> {
    let wanted = chain
        .iter()
        .any(|p| matches!(p, Provider::TensorRt(t) if t.warmup_profile));
    let Some(derive) = profile.filter(|_| wanted) else {
        return Ok(None);
    };
    let (inputs, outputs) = inspect(env, pipeline.model)?;
    let prof = derive(&inputs, &outputs)?;
    if let Some(p) = &prof {
        tracing::info!(pipeline = %pipeline.name, min = %p.ort_min(), opt = %p.ort_opt(), max = %p.ort_max(), "TensorRT optimisation profile from the warm-up shapes");
    }
    Ok(prof)
}

/// A model's declared inputs and outputs, read with a plain CPU session
/// that is dropped at once (no graph optimisation, no provider).
pub fn inspect(env: &Environment, model: &Path) -> Result<(Vec<Port>, Vec<Port>), String> {
    let b = Session::builder(env).map_err(|e| e.to_string())?;
    let mut b = b
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(|e| e.to_string())?;
    let session = b.commit_from_file(model).map_err(|e| e.to_string())?;
    ports(&session)
}

fn ports(session: &Session) -> Result<(Vec<Port>, Vec<Port>), String> {
    let inputs = session
        .inputs()
        .iter()
        .map(|o| port(o.name(), o.dtype()))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = session
        .outputs()
        .iter()
        .map(|o| port(o.name(), o.dtype()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((inputs, outputs))
}

/// A new runtime-owned CPU tensor of `dtype` and `shape`, filled by
/// `fill` with its bytes (the one copy of incoming data).
pub fn new_value(
    dtype: Dtype,
    shape: &[usize],
    fill: impl FnOnce(&mut [u8]),
) -> Result<DynValue, String> {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let mut v = DynTensor::new(&Allocator::default(), element_type(dtype), dims)
        .map_err(|e| e.to_string())?;
    let n = shape.iter().product::<usize>() * dtype.size();
    if n > 0 {
        // SAFETY: the tensor was just allocated on the CPU allocator with this
        // element type and shape, so it owns exactly `n` writable bytes.
        let buf = unsafe { std::slice::from_raw_parts_mut(v.data_ptr_mut().cast::<u8>(), n) };
        fill(buf);
    }
    Ok(v.into_dyn())
}

/// Copies a tensor into a runtime-owned CPU value.
pub fn to_value(t: &Tensor) -> Result<DynValue, String> {
    let want = t.elements() * t.dtype.size();
    if t.data.len() != want {
        return Err(format!(
            "tensor `{}` has {} bytes, shape needs {want}",
            t.name,
            t.data.len()
        ));
    }
    new_value(t.dtype, &t.shape, |buf| buf.copy_from_slice(&t.data))
}

/// A CPU tensor value's element type, shape and bytes, read in place.
pub fn value_bytes<'v>(
    name: &str,
    v: &'v DynValue,
) -> Result<(Dtype, &'v [i64], &'v [u8]), String> {
    let (dtype, shape) = match v.dtype() {
        ValueType::Tensor { ty, shape, .. } => (
            dtype_of(*ty).ok_or_else(|| format!("`{name}` has unsupported type {ty:?}"))?,
            &shape[..],
        ),
        other => return Err(format!("`{name}` is not a tensor ({other:?})")),
    };
    let n: usize = shape.iter().map(|&d| d.max(0) as usize).product::<usize>() * dtype.size();
    if n == 0 {
        return Ok((dtype, shape, &[]));
    }
    let t = v
        .view()
        .downcast::<ort::value::DynTensorValueType>()
        .map_err(|e| e.to_string())?;
    let ptr = t.data_ptr().cast::<u8>();
    // SAFETY: CPU execution providers return CPU tensors; the byte count
    // comes from the value's own shape and element type, and the bytes live
    // as long as the value.
    Ok((dtype, shape, unsafe { std::slice::from_raw_parts(ptr, n) }))
}

/// Copies a runtime value into a tensor named `name`.
pub fn to_tensor(name: &str, v: &DynValue) -> Result<Tensor, String> {
    let (dtype, shape, data) = value_bytes(name, v)?;
    Ok(Tensor::new(
        name,
        dtype,
        shape.iter().map(|&d| d.max(0) as usize).collect(),
        data.to_vec(),
    ))
}
