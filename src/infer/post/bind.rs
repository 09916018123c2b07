//! Binds a pipeline's answer stage to its model at start-up: the output the
//! answer reads (the configured `answer.tensor`, else the only published
//! output), its element type, and, when the model declares a fixed shape,
//! the class count against the labels file, so a mismatch fails `check`
//! rather than every frame.

use crate::config::{AnswerConfig, AnswerKind, PipelineConfig};
use crate::infer::engine::Port;
use crate::tensor::Dtype;

/// The answer stage with the output it reads.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerBinding {
    pub config: AnswerConfig,
    /// Index into the spec's published outputs.
    pub output: usize,
}

pub fn bind(
    p: &PipelineConfig,
    publish: &[String],
    outputs: &[Port],
) -> Result<Option<AnswerBinding>, String> {
    let Some(cfg) = &p.answer else {
        return Ok(None);
    };
    let output = match &cfg.tensor {
        Some(name) => publish.iter().position(|n| n == name).ok_or_else(|| {
            format!(
                "answer.tensor = {name:?} is not a published model output; published: {}",
                publish.join(", ")
            )
        })?,
        None if publish.len() == 1 => 0,
        None => {
            return Err(format!(
                "the model publishes {} outputs ({}): set answer.tensor to the one the {} answer reads",
                publish.len(),
                publish.join(", "),
                cfg.kind.name()
            ));
        }
    };
    let port = outputs
        .iter()
        .find(|o| o.name == publish[output])
        .ok_or_else(|| format!("output `{}` is not a model output", publish[output]))?;
    if !matches!(port.dtype, Dtype::F32 | Dtype::F16) {
        return Err(format!(
            "the {} answer reads float scores, but output {port} is {}",
            cfg.kind.name(),
            port.dtype.name()
        ));
    }
    check_classes(&cfg.kind, port)?;
    Ok(Some(AnswerBinding {
        config: cfg.clone(),
        output,
    }))
}

/// Class count of a fixed-shape output against the labels file.
fn check_classes(kind: &AnswerKind, port: &Port) -> Result<(), String> {
    let fixed = |d: Option<&i64>| d.copied().filter(|&d| d > 0).map(|d| d as usize);
    let (classes, labels) = match kind {
        AnswerKind::Detect(c) => {
            let (attrs, first_class) = match c.layout {
                crate::config::answer::YoloLayout::V8 => (port.shape.iter().rev().nth(1), 4),
                crate::config::answer::YoloLayout::V5 => (port.shape.last(), 5),
            };
            let classes = fixed(attrs).map(|a| a.saturating_sub(first_class));
            if classes == Some(0) {
                return Err(format!(
                    "output {port} has no class scores for the {:?} layout",
                    c.layout
                ));
            }
            (classes, c.labels.as_ref())
        }
        AnswerKind::Classify(c) => (fixed(port.shape.last()), c.labels.as_ref()),
        AnswerKind::Vad(_) => return Ok(()),
    };
    match (classes, labels) {
        (Some(n), Some(l)) if n != l.len() => Err(format!(
            "output {port} scores {n} classes but the labels file names {}",
            l.len()
        )),
        _ => Ok(()),
    }
}
