//! Where a model's batch dimension sits, detected once at start-up for a
//! pipeline with `max_batch > 1`: client inputs are concatenated along axis
//! 0, carried state and published outputs along the axes found here (the run
//! path in [`super::run`] gathers and splits rows with them).

use super::engine::Port;

/// Where the batch dimension sits in each tensor a batched run touches.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchAxes {
    /// Per state binding (config order): the axis of the state input, also
    /// used for its output (Silero VAD: `state` [2,B,128] → axis 1).
    pub state: Vec<usize>,
    /// Per published output: its batch axis.
    pub publish: Vec<usize>,
}

/// The batch axis a declared shape implies: its first dynamic dimension.
/// Client inputs must have it at axis 0 (they are concatenated there).
pub fn first_dynamic(shape: &[i64]) -> Option<usize> {
    shape.iter().position(|&d| d < 0)
}

/// Why a model cannot be batched, or its batch axes. Inputs the client
/// sends must have a dynamic leading dimension; each state input needs a
/// dynamic dimension; an output declared without one is assumed batched on
/// axis 0 only if its rank is unknown (ORT reports every dim as dynamic
/// for shapes inferred at run time).
pub fn detect(
    client_inputs: &[Port],
    state_inputs: &[&Port],
    published: &[&Port],
) -> Result<BatchAxes, String> {
    for p in client_inputs {
        if p.shape.first().is_none_or(|&d| d >= 0) {
            return Err(format!(
                "input {p} has a fixed batch dimension (dynamic batching needs a dynamic leading dimension)"
            ));
        }
    }
    let state = state_inputs
        .iter()
        .map(|p| {
            first_dynamic(&p.shape)
                .ok_or_else(|| format!("state input {p} has no dynamic dimension to batch along"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let publish = published
        .iter()
        .map(|p| {
            first_dynamic(&p.shape)
                .ok_or_else(|| format!("output {p} has a fixed shape; it cannot carry a batch"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BatchAxes { state, publish })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_leading_dimension_is_not_batchable() {
        let fixed = Port {
            name: "x".into(),
            dtype: crate::tensor::Dtype::F32,
            shape: vec![1, 4],
        };
        assert!(detect(&[fixed], &[], &[]).is_err());
        let dynamic = Port {
            name: "x".into(),
            dtype: crate::tensor::Dtype::F32,
            shape: vec![-1, 4],
        };
        let state = Port {
            name: "state".into(),
            dtype: crate::tensor::Dtype::F32,
            shape: vec![2, -1, 128],
        };
        let axes = detect(std::slice::from_ref(&dynamic), &[&state], &[&dynamic]).unwrap();
        assert_eq!(axes.state, vec![1]);
        assert_eq!(axes.publish, vec![0]);
    }
}
