//! What a stateful stream carries from one frame to the next: the state
//! outputs of its last run (fed back as inputs) and, per context binding, the
//! tail of its last input (prepended to the next). Held in the stream's
//! scheduler slot and touched only by the worker running the stream's frame.
//! State values stay runtime values: a run's state output is moved into the
//! stream, never copied (single-row runs). The answer stage keeps its own
//! per-stream state here too (VAD segments), so it resets with the rest.

use std::time::Instant;

use ort::value::DynValue;

use super::engine;
use super::spec::Spec;

pub struct StreamState {
    /// Carried state values, config binding order.
    pub values: Vec<DynValue>,
    /// Per context binding (config order): the last `keep` elements of each
    /// row of the previous input; `None` before the first frame.
    pub context: Vec<Option<Vec<u8>>>,
    pub last_used: Instant,
    /// The answer stage's per-stream state (VAD speech tracking).
    pub answer: Option<super::post::StreamAnswer>,
}

impl StreamState {
    /// Zero state and no context, as for a stream's first frame.
    pub fn new(spec: &Spec, contexts: usize, now: Instant) -> Result<StreamState, String> {
        let values = spec
            .state_init
            .iter()
            .map(|(dtype, shape)| engine::new_value(*dtype, shape, |b| b.fill(0)))
            .collect::<Result<_, _>>()?;
        Ok(StreamState {
            values,
            context: vec![None; contexts],
            last_used: now,
            answer: spec
                .answer
                .as_ref()
                .and_then(super::post::StreamAnswer::new),
        })
    }
}
