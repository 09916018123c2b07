//! One request's answer from its model outputs: picks the output the
//! binding names, views it as f32 (in place when it already is), and runs
//! the configured kind. The result serialises to the `answer` object of
//! docs/answers.md (tagged with its `kind`). VAD keeps a [`StreamAnswer`]
//! per stream, in the stream's carried state.

use std::borrow::Cow;

use serde::Serialize;

use super::bind::AnswerBinding;
use super::{
    ClassScore, Detections, PostError, VadAnswer, VadEvent, VadTracker, decode_yolo, top_k,
};
use crate::config::AnswerKind;
use crate::infer::pre::Transform;
use crate::tensor::Dtype;
use crate::wire::reply::OutTensor;

/// What one request's answer stage found.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    Detect(Detections),
    Classify { classes: Vec<ClassScore> },
    Vad(VadAnswer),
}

/// Per-stream answer state: the speech tracker and the stream's clock for
/// frames that carry no timestamp.
#[derive(Clone, Debug)]
pub struct StreamAnswer {
    vad: VadTracker,
    frame_us: u64,
    /// Start of the next frame when it carries no `ts_us`.
    next_us: Option<u64>,
}

impl StreamAnswer {
    /// State for a new stream, if the answer kind keeps any.
    pub fn new(b: &AnswerBinding) -> Option<StreamAnswer> {
        match &b.config.kind {
            AnswerKind::Vad(c) => Some(StreamAnswer {
                vad: VadTracker::new(*c),
                frame_us: c.frame_us,
                next_us: None,
            }),
            _ => None,
        }
    }

    /// Feeds one frame's probability. Its start is `ts_us` when the client
    /// sent one, else the end of the previous frame (the first frame starts
    /// at `now_us`).
    pub fn push(&mut self, probability: f32, ts_us: Option<u64>, now_us: u64) -> VadAnswer {
        let start = ts_us.or(self.next_us).unwrap_or(now_us);
        self.next_us = Some(start.saturating_add(self.frame_us));
        self.vad.push(probability, start, self.frame_us)
    }

    /// Ends the stream (idle reset, shutdown): the closing `speech_end` of
    /// an open segment, if any, ending at the end of the stream's last
    /// frame when its trailing silence had not begun (in the stream's own
    /// clock; `now_us` only if it never had a frame).
    pub fn finish(&mut self, now_us: u64) -> Option<VadEvent> {
        self.vad.finish(self.next_us.unwrap_or(now_us))
    }
}

/// `bytes` of `dtype` as f32 values: borrowed when they are f32 and
/// aligned (runtime outputs are), converted otherwise (f16).
pub fn float_view(dtype: Dtype, bytes: &[u8]) -> Result<Cow<'_, [f32]>, PostError> {
    match dtype {
        Dtype::F32 => {
            // SAFETY: every bit pattern is a valid f32; align_to only
            // yields the aligned middle part.
            let (head, mid, tail) = unsafe { bytes.align_to::<f32>() };
            if head.is_empty() && tail.is_empty() && cfg!(target_endian = "little") {
                Ok(Cow::Borrowed(mid))
            } else {
                Ok(Cow::Owned(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ))
            }
        }
        Dtype::F16 => Ok(Cow::Owned(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        )),
        other => Err(PostError::BadOutput(format!(
            "answer stages read f32 or f16 outputs, not {}",
            other.name()
        ))),
    }
}

/// The part of a (possibly batched) output that belongs to one request:
/// its shape and values.
pub fn request_values<'a>(out: &OutTensor<'a>) -> Result<(Vec<usize>, Cow<'a, [f32]>), PostError> {
    if out.rows.is_some() {
        let t = out.to_tensor();
        let v = float_view(t.dtype, &t.data)?.into_owned();
        return Ok((t.shape, Cow::Owned(v)));
    }
    let shape = out.shape.iter().map(|&d| d.max(0) as usize).collect();
    Ok((shape, float_view(out.dtype, out.data)?))
}

/// Everything an answer needs besides the outputs.
pub struct AnswerInput<'a> {
    /// The frame's geometry (image pipelines).
    pub transform: Option<&'a Transform>,
    /// The stream's answer state (VAD).
    pub stream: Option<&'a mut StreamAnswer>,
    pub ts_us: Option<u64>,
    /// Wall clock, µs since the Unix epoch.
    pub now_us: u64,
}

/// Runs the answer stage on one request's outputs.
pub fn answer(
    b: &AnswerBinding,
    outputs: &[OutTensor<'_>],
    input: AnswerInput<'_>,
) -> Result<Answer, PostError> {
    let out = outputs
        .get(b.output)
        .ok_or_else(|| PostError::BadOutput("the answer's output is missing".into()))?;
    let (shape, values) = request_values(out)?;
    match &b.config.kind {
        AnswerKind::Detect(c) => {
            let t = input.transform.ok_or_else(|| {
                PostError::BadOutput("a detect answer needs the frame's geometry".into())
            })?;
            Ok(Answer::Detect(decode_yolo(&values, &shape, c, t)?))
        }
        AnswerKind::Classify(c) => Ok(Answer::Classify {
            classes: top_k(&values, c)?,
        }),
        AnswerKind::Vad(_) => {
            let p = *values.first().ok_or_else(|| {
                PostError::BadOutput(format!("VAD output `{}` is empty", out.name))
            })?;
            if values.len() != 1 {
                return Err(PostError::BadOutput(format!(
                    "VAD output `{}` has {} values per frame; expected one speech probability",
                    out.name,
                    values.len()
                )));
            }
            let st = input.stream.ok_or_else(|| {
                PostError::BadOutput("a VAD answer needs its stream's state".into())
            })?;
            Ok(Answer::Vad(st.push(p, input.ts_us, input.now_us)))
        }
    }
}
