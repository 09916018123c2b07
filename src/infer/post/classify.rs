//! Classifier outputs → the k best classes with their labels. The scores of
//! one frame arrive as a flat slice (`[1, C]` or `[C]`); an optional
//! softmax turns logits into probabilities first.

use serde::Serialize;

use super::PostError;
pub use crate::config::answer::{ClassConfig, RawClassify};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassScore {
    pub class_id: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub score: f32,
}

fn softmax(values: &[f32]) -> Vec<f32> {
    let max = values
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = values.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().filter(|v| !v.is_nan()).sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The best `cfg.top_k` classes of one frame, best first (ties: lower class
/// id first). NaN scores are never reported.
pub fn top_k(values: &[f32], cfg: &ClassConfig) -> Result<Vec<ClassScore>, PostError> {
    if values.is_empty() {
        return Err(PostError::BadOutput("classifier output is empty".into()));
    }
    if let Some(labels) = &cfg.labels
        && labels.len() != values.len()
    {
        return Err(PostError::BadOutput(format!(
            "the classifier scores {} classes but the labels file names {}",
            values.len(),
            labels.len()
        )));
    }
    let probs;
    let scores = if cfg.softmax {
        probs = softmax(values);
        &probs[..]
    } else {
        values
    };
    let mut idx: Vec<usize> = (0..scores.len()).filter(|&i| !scores[i].is_nan()).collect();
    let k = cfg.top_k.min(idx.len());
    let by_score = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, by_score);
        idx.truncate(k);
    }
    idx.sort_by(by_score);
    Ok(idx
        .into_iter()
        .take(k)
        .filter(|&i| cfg.min_score.is_none_or(|m| scores[i] >= m))
        .map(|i| ClassScore {
            class_id: i,
            label: cfg.labels.as_ref().map(|l| l[i].clone()),
            score: scores[i],
        })
        .collect())
}
