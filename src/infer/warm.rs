//! Loading a tensor pipeline's session and warming it up before intake
//! opens: one run on zeros (and, for a batched pipeline, one full batch, which
//! proves the batch axes split back correctly and pre-sizes the runtime's
//! buffers; for a warm-up range, runs at its min and max shapes, which a
//! TensorRT engine was built for). Start-up and `reflexd check` both come
//! through here; OCR pipelines load their three sessions through
//! [`load_ocr`].

use std::time::Instant;

use ort::environment::Environment;

use super::engine::{self, EngineError, Port};
use super::ocr::OcrChain;
use super::profile;
use super::run::{self, Item, Runner};
use super::spec::{ModelPorts, Spec, WarmPoint};
use super::state::StreamState;
use crate::config::{PipelineConfig, RuntimeConfig};

/// A loaded, warmed-up session for one pipeline plus its interface.
pub struct Loaded {
    pub runner: Runner,
    pub spec: Spec,
}

fn warm_err(p: &PipelineConfig, reason: String) -> EngineError {
    EngineError::Warmup {
        pipeline: p.name.clone(),
        reason,
    }
}

/// Builds one session for `p` and runs it on zeros: at the warm-up shapes,
/// with a full batch when it batches, and at both ends of any warm-up range
/// (the shapes a TensorRT profile was built for).
pub fn load_and_warm(
    env: &Environment,
    rt: &RuntimeConfig,
    p: &PipelineConfig,
) -> Result<Loaded, EngineError> {
    let derive = |inputs: &[Port], outputs: &[Port]| {
        let ports = ModelPorts { inputs, outputs };
        let spec = Spec::from_ports(p, &ports, "tensorrt").map_err(|e| e.to_string())?;
        profile::derive(p, &spec)
    };
    let model = engine::load_with(env, &p.into(), rt, Some(&derive))?;
    let spec = Spec::new(p, &model)?;
    let mut runner = Runner::new(model, p).map_err(|e| warm_err(p, e))?;
    runner.pre = (spec.image.as_ref()).map(|b| super::pre::Preprocessor::new(b.pre.clone()));
    for (point, rows) in warm_runs(p) {
        let inputs = spec.warmup_inputs_at(p, point);
        warm_once(&mut runner, &spec, p, &inputs, rows).map_err(|e| {
            let what = match (point, rows) {
                (WarmPoint::Opt, 1) => e,
                (WarmPoint::Opt, n) => format!("batched warm-up (max_batch = {n}): {e}"),
                (WarmPoint::Min, _) => format!("warm-up at the warmup min shapes: {e}"),
                (WarmPoint::Max, n) => format!("warm-up at the warmup max shapes, {n} row(s): {e}"),
            };
            warm_err(p, what)
        })?;
    }
    let inputs = spec.warmup_inputs(p);
    probe_shrink(&mut runner, &spec, p, &inputs)?;
    runner.set_usual_bytes(inputs.iter().map(|t| t.data.len()).sum());
    Ok(Loaded { runner, spec })
}

/// Which warm-up runs a pipeline gets: (shapes, rows).
fn warm_runs(p: &PipelineConfig) -> Vec<(WarmPoint, usize)> {
    let rows = p.batch.as_ref().map_or(1, |b| b.max_batch);
    let mut runs = vec![(WarmPoint::Opt, 1)];
    if rows > 1 {
        runs.push((WarmPoint::Opt, rows));
    }
    if p.warmup.values().any(|w| w.is_range()) {
        runs.push((WarmPoint::Min, 1));
        runs.push((WarmPoint::Max, rows));
    }
    runs
}

/// One run of `rows` identical rows; every row's outputs must split back.
fn warm_once(
    runner: &mut Runner,
    spec: &Spec,
    p: &PipelineConfig,
    inputs: &[crate::tensor::Tensor],
    rows: usize,
) -> Result<(), String> {
    let mut states = (0..rows)
        .map(|_| {
            p.is_stateful()
                .then(|| StreamState::new(spec, p.context.len(), Instant::now()))
                .transpose()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut items: Vec<Item> = states
        .iter_mut()
        .map(|st| Item {
            tensors: inputs,
            state: st.as_mut(),
        })
        .collect();
    let ran = run::run(runner, spec, &mut items)?;
    for i in 0..rows {
        ran.outputs(spec, i)?;
    }
    Ok(())
}

/// One warm-up run as a "large" run: if the session's CPU allocator cannot
/// shrink (ORT refuses the run option when it is no arena), large runs only
/// trim the C heap.
fn probe_shrink(
    runner: &mut Runner,
    spec: &Spec,
    p: &PipelineConfig,
    inputs: &[crate::tensor::Tensor],
) -> Result<(), EngineError> {
    runner.set_usual_bytes(0);
    let mut state = p
        .is_stateful()
        .then(|| StreamState::new(spec, p.context.len(), Instant::now()))
        .transpose()
        .map_err(|e| warm_err(p, e))?;
    let mut items = [Item {
        tensors: inputs,
        state: state.as_mut(),
    }];
    let failed = run::run(runner, spec, &mut items).err();
    if let Some(e) = failed {
        tracing::debug!(pipeline = %p.name, reason = %e, "arena shrinking unavailable; large runs trim the heap only");
        runner.no_shrink();
    }
    Ok(())
}

/// One model of an OCR chain as loaded: what `reflexd check` shows.
pub struct OcrStageInfo {
    /// "det", "cls" or "rec".
    pub stage: &'static str,
    pub model: std::path::PathBuf,
    pub provider: &'static str,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
}

/// An OCR pipeline's chain (`[pipeline.ocr]`): detector, optional angle
/// classifier and recogniser, each built with the pipeline's provider
/// chain, checked (the recogniser's charset against its output width) and
/// run once on blank input. The spec comes from the detector (the frame
/// limit ingress checks is the pipeline's).
pub fn load_ocr(
    env: &Environment,
    rt: &RuntimeConfig,
    p: &PipelineConfig,
) -> Result<(OcrChain, Spec), EngineError> {
    load_ocr_stages(env, rt, p).map(|(chain, spec, _)| (chain, spec))
}

/// [`load_ocr`], also returning each stage's model interface in chain
/// order (det, cls if used, rec).
pub fn load_ocr_stages(
    env: &Environment,
    rt: &RuntimeConfig,
    p: &PipelineConfig,
) -> Result<(OcrChain, Spec, Vec<OcrStageInfo>), EngineError> {
    let Some(o) = &p.ocr else {
        return Err(warm_err(p, "not an OCR pipeline".into()));
    };
    let mut stages = Vec::new();
    let mut keep = |stage: &'static str, model: &std::path::Path, m: engine::Model| {
        stages.push(OcrStageInfo {
            stage,
            model: model.to_path_buf(),
            provider: m.provider,
            inputs: m.inputs,
            outputs: m.outputs,
        });
        m.session
    };
    let det = engine::load(env, &p.into(), rt)?;
    let spec = Spec::new(p, &det)?;
    let det = keep("det", &p.model, det);
    let load = |model: &std::path::Path| {
        let s = engine::SessionSpec { model, ..p.into() };
        engine::load(env, &s, rt)
    };
    let cls = match (&o.cls, o.params.use_cls) {
        (Some(path), true) => Some(keep("cls", path, load(path)?)),
        _ => None,
    };
    let rec = keep("rec", &o.rec, load(&o.rec)?);
    let mut chain =
        OcrChain::new(det, cls, rec, o.params.clone()).map_err(|e| EngineError::Interface {
            pipeline: p.name.clone(),
            reason: e.to_string(),
        })?;
    chain.warm_up().map_err(|e| warm_err(p, e.to_string()))?;
    Ok((chain, spec, stages))
}
