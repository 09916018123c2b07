//! Frames straight into the runtime's input: one runtime value for the
//! image input of a run, each request's row written in place by the
//! pre-processor (no intermediate tensor). A frame that fails to decode
//! leaves a zero row and its error; the worker answers it and, if other
//! requests of the batch remain, prepares those again without it (a
//! failure is rare, so the common path decodes each frame once).

use std::time::Instant;

use ort::value::DynValue;

use super::{ImageError, ImageInput, Preprocessor, Transform};
use crate::infer::engine;
use crate::tensor::Dtype;

/// A run's image input, written.
pub struct Prepared {
    /// `[n, …]`: row `i` is input `i`'s pre-processed frame.
    pub value: DynValue,
    /// Per input: its geometry, or why it could not be used.
    pub results: Vec<Result<Transform, ImageError>>,
    /// Wall time of decoding and pre-processing every frame (µs).
    pub us: u64,
}

/// Pre-processes `inputs` into one runtime value of `n` rows.
pub fn prepare(pre: &mut Preprocessor, inputs: &[ImageInput<'_>]) -> Result<Prepared, String> {
    let start = Instant::now();
    let mut shape = pre.output_shape().to_vec();
    shape[0] = inputs.len();
    let dtype = Dtype::parse(pre.config().dtype.name()).ok_or("pre-processor dtype")?;
    let row = pre.output_bytes();
    let mut results = Vec::with_capacity(inputs.len());
    let value = engine::new_value(dtype, &shape, |buf| {
        for (input, out) in inputs.iter().zip(buf.chunks_exact_mut(row)) {
            let r = pre.run(input, out);
            if r.is_err() {
                out.fill(0);
            }
            results.push(r);
        }
    })?;
    if results.len() != inputs.len() {
        return Err("the image input value has fewer rows than frames".into());
    }
    Ok(Prepared {
        value,
        results,
        us: start.elapsed().as_micros() as u64,
    })
}
