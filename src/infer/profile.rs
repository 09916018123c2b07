//! TensorRT optimisation profiles derived from a tensor pipeline's warm-up
//! shapes. TensorRT builds an engine for a range of input shapes; without an
//! explicit range ONNX Runtime takes it from the tensors it has seen and
//! rebuilds the engine (minutes on a Jetson) whenever a larger one arrives —
//! on the hot path. Here the range is every shape the daemon itself will
//! feed each model input: the client inputs' `warmup` min/opt/max, with
//! carried context appended, constants and carried state as configured, and
//! for a batched pipeline the batch axis from 1 row (min) to `max_batch` rows
//! (opt and max). The warm-up runs ([`super::warm`]) then exercise the ends
//! of that range before intake opens.

use super::spec::{Feed, Spec, WarmPoint};
use crate::config::PipelineConfig;

/// Shapes of every dynamic model input at the profile's three points.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub min: Vec<(String, Vec<usize>)>,
    pub opt: Vec<(String, Vec<usize>)>,
    pub max: Vec<(String, Vec<usize>)>,
}

/// ORT's profile syntax: `name:d0xd1x…,name2:…`.
fn ort_shapes(shapes: &[(String, Vec<usize>)]) -> String {
    shapes
        .iter()
        .map(|(n, s)| {
            let dims: Vec<String> = s.iter().map(usize::to_string).collect();
            format!("{n}:{}", dims.join("x"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Profile {
    pub fn ort_min(&self) -> String {
        ort_shapes(&self.min)
    }
    pub fn ort_opt(&self) -> String {
        ort_shapes(&self.opt)
    }
    pub fn ort_max(&self) -> String {
        ort_shapes(&self.max)
    }
}

/// The profile for `p`'s model, or `None` when every model input has a
/// fixed shape (TensorRT then needs none). Fails when an input name cannot
/// be written in ORT's profile syntax.
pub fn derive(p: &PipelineConfig, spec: &Spec) -> Result<Option<Profile>, String> {
    let dynamic: Vec<usize> = (0..spec.model_inputs.len())
        .filter(|&i| spec.model_inputs[i].shape.iter().any(|&d| d < 0))
        .collect();
    if dynamic.is_empty() {
        return Ok(None);
    }
    for &i in &dynamic {
        let name = &spec.model_inputs[i].name;
        if name.contains([',', ':', '\0']) || name.is_empty() {
            return Err(format!(
                "model input {name:?} cannot be named in a TensorRT profile (ONNX Runtime's syntax splits on ',' and ':'); set warmup_profile = false to let ONNX Runtime derive shapes at run time"
            ));
        }
    }
    let rows = p.batch.as_ref().map_or(1, |b| b.max_batch);
    let at = |point, rows| {
        let shapes = fed_shapes(p, spec, point, rows);
        dynamic
            .iter()
            .map(|&i| (spec.model_inputs[i].name.clone(), shapes[i].clone()))
            .collect()
    };
    Ok(Some(Profile {
        min: at(WarmPoint::Min, 1),
        opt: at(WarmPoint::Opt, rows),
        max: at(WarmPoint::Max, rows),
    }))
}

/// The shape of every model input (model order) in a run of `rows` rows
/// whose client inputs take their `point` warm-up shapes.
fn fed_shapes(p: &PipelineConfig, spec: &Spec, point: WarmPoint, rows: usize) -> Vec<Vec<usize>> {
    let client = spec.warmup_shapes(p, point);
    let constants: Vec<&crate::config::Constant> = p.constants.values().collect();
    spec.feeds
        .iter()
        .map(|feed| match feed {
            Feed::Client { input, context } => {
                let mut s = client[*input].clone();
                if let (Some((_, keep)), Some(last)) = (context, s.last_mut()) {
                    *last += keep;
                }
                // Rows are concatenated along axis 0 (`super::batch`).
                if let Some(lead) = s.first_mut() {
                    *lead *= rows;
                }
                s
            }
            Feed::Constant(i) => constants[*i].shape.clone(),
            Feed::State(j) => {
                let mut s = spec.state_init[*j].1.clone();
                if let Some(axis) = spec.batch.as_ref().map(|b| b.state[*j]) {
                    s[axis] *= rows;
                }
                s
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::infer::Port;
    use crate::infer::spec::ModelPorts;
    use crate::tensor::Dtype;

    fn port(name: &str, shape: &[i64]) -> Port {
        Port {
            name: name.into(),
            dtype: Dtype::F32,
            shape: shape.to_vec(),
        }
    }

    fn pipeline(extra: &str) -> PipelineConfig {
        let text = format!(
            "[[pipeline]]\nname = \"p\"\nmodel = \"m.onnx\"\ninput = \"in/*\"\noutput = \"out\"\n{extra}\n"
        );
        Config::from_toml(&text, Path::new("/"))
            .unwrap()
            .pipelines
            .remove(0)
    }

    fn spec(p: &PipelineConfig, inputs: &[Port], outputs: &[Port]) -> Spec {
        Spec::from_ports(p, &ModelPorts { inputs, outputs }, "tensorrt").unwrap()
    }

    #[test]
    fn static_models_need_no_profile() {
        let p = pipeline("");
        let s = spec(&p, &[port("x", &[1, 4])], &[port("y", &[1, 4])]);
        assert_eq!(derive(&p, &s).unwrap(), None);
    }

    #[test]
    fn warmup_range_and_batch_rows_make_min_opt_max() {
        let p = pipeline(
            "max_batch = 4\nwarmup = { x = { min = [1, 3, 160, 320], opt = [1, 3, 160, 640], max = [1, 3, 320, 640] } }",
        );
        let s = spec(&p, &[port("x", &[-1, 3, -1, -1])], &[port("y", &[-1, 10])]);
        let prof = derive(&p, &s).unwrap().unwrap();
        assert_eq!(prof.ort_min(), "x:1x3x160x320");
        assert_eq!(prof.ort_opt(), "x:4x3x160x640");
        assert_eq!(prof.ort_max(), "x:4x3x320x640");
    }

    #[test]
    fn context_state_and_constants_are_fed_shapes() {
        // A VAD-like stream: 512 new samples + 64 carried, a [2,?,128]
        // state, a scalar constant (static: not in the profile).
        let p = pipeline(
            "overflow = \"latest\"\nstate = [{ input = \"state\", output = \"stateN\" }]\ncontext = [{ input = \"input\", keep = 64 }]\nconstants.sr = { dtype = \"f32\", shape = [1], data = [16000] }\nwarmup = { input = [1, 512] }",
        );
        let inputs = [
            port("input", &[-1, -1]),
            port("state", &[2, -1, 128]),
            port("sr", &[1]),
        ];
        let outputs = [port("out", &[-1, 1]), port("stateN", &[2, -1, 128])];
        let s = spec(&p, &inputs, &outputs);
        let prof = derive(&p, &s).unwrap().unwrap();
        assert_eq!(prof.ort_min(), "input:1x576,state:2x1x128");
        assert_eq!(prof.min, prof.max, "one warm-up shape: one point");
    }

    #[test]
    fn an_input_name_ort_cannot_parse_is_refused_with_the_way_out() {
        let p = pipeline("warmup = { \"a:0\" = [1, 4] }");
        let s = spec(&p, &[port("a:0", &[-1, 4])], &[port("y", &[-1, 4])]);
        let e = derive(&p, &s).unwrap_err();
        assert!(e.contains("warmup_profile = false"), "{e}");
    }
}
