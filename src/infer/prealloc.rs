//! Pre-allocated outputs for the run path ([`super::run`]): the session call
//! itself. ONNX Runtime writes a run's outputs into new values unless the run
//! options name values to write into; each new value costs the Rust side two
//! heap allocations per output per frame. After a successful single-request
//! run, every output that is not carried state gets a value of the shape it
//! just had, and later runs whose input shapes are the same write into those
//! values (state outputs are moved into the stream, so they stay the
//! runtime's own).
//!
//! Output shapes usually follow from input shapes; when they do not (a
//! detector whose box count depends on the image), the pre-allocated run
//! fails, the frame is run again the plain way, and the runner stops
//! pre-allocating: a frame never fails because of this.

use ort::logging::LogLevel;
use ort::session::{HasSelectedOutputs, OutputSelector, SelectedOutputMarker};
use ort::session::{RunOptions, Session, SessionInputValue, SessionOutputs};
use ort::value::ValueType;

use super::engine;
use super::spec::Spec;

/// Consecutive single-request runs with other input shapes after which the
/// values are allocated again for the new shapes.
const RELEARN_AFTER: u32 = 16;

#[derive(Default)]
pub(crate) struct Prealloc {
    /// Run options (quiet, like the plain ones) naming the output values.
    opts: Option<RunOptions<HasSelectedOutputs>>,
    /// Input shapes, model order, the values were allocated for.
    shapes: Vec<Vec<i64>>,
    /// Consecutive single-request runs whose input shapes differed.
    misses: u32,
    /// Output shapes of this model do not follow its input shapes.
    off: bool,
}

/// A session call with `opts`, outputs allocated by the runtime.
pub(crate) fn plain<'s, O: SelectedOutputMarker>(
    session: &'s mut Session,
    inputs: &[SessionInputValue],
    opts: &'s RunOptions<O>,
) -> Result<SessionOutputs<'s>, String> {
    session
        .run_with_options(inputs, opts)
        .map_err(|e| e.to_string())
}

fn shape_of<'a>(v: &'a SessionInputValue<'_>) -> Option<&'a [i64]> {
    match v.dtype() {
        ValueType::Tensor { shape, .. } => Some(shape),
        _ => None,
    }
}

impl Prealloc {
    fn matches(&self, inputs: &[SessionInputValue]) -> bool {
        self.shapes.len() == inputs.len()
            && self
                .shapes
                .iter()
                .zip(inputs)
                .all(|(want, v)| shape_of(v) == Some(want.as_slice()))
    }

    /// The session call: into the pre-allocated values when the input
    /// shapes are the usual ones, else plain (and then, for a single
    /// request, allocates values for these shapes if there are none yet or
    /// the shapes have changed for good).
    pub(crate) fn run<'s>(
        &'s mut self,
        session: &'s mut Session,
        spec: &Spec,
        inputs: &[SessionInputValue],
        quiet: &'s RunOptions,
        single: bool,
    ) -> Result<SessionOutputs<'s>, String> {
        if self.off {
            self.opts = None;
        }
        let usable = single && self.opts.is_some() && self.matches(inputs);
        if single && self.opts.is_some() {
            self.misses = if usable { 0 } else { self.misses + 1 };
        }
        let session: *mut Session = session;
        if usable {
            let opts = self.opts.as_ref().expect("usable implies values");
            // SAFETY: `session` is the caller's exclusive borrow for 's. A
            // failed call returns an error that borrows nothing, so the
            // session is free again for the plain call below; the borrow
            // checker cannot see that across the conditional return
            // (rust-lang/rust#54663), hence the pointer.
            if let Ok(o) = unsafe { &mut *session }.run_with_options(inputs, opts) {
                return Ok(o);
            }
            // SAFETY: as above; the failed call's borrow has ended.
            let o = plain(unsafe { &mut *session }, inputs, quiet)?;
            tracing::debug!(
                "output shapes do not follow input shapes; outputs are no longer pre-allocated"
            );
            self.off = true;
            return Ok(o);
        }
        // SAFETY: the only use of the caller's borrow on this path.
        let o = plain(unsafe { &mut *session }, inputs, quiet)?;
        let relearn = self.opts.is_none() || self.misses >= RELEARN_AFTER;
        if single && !self.off && relearn {
            match learn(spec, &o) {
                Some(opts) => {
                    self.opts = Some(opts);
                    self.shapes = inputs
                        .iter()
                        .map(|v| shape_of(v).unwrap_or_default().to_vec())
                        .collect();
                    self.misses = 0;
                }
                None => self.off = true,
            }
        }
        Ok(o)
    }
}

/// Run options whose outputs (all but state) are written into new values
/// of the shapes `outputs` has; `None` if an output is not a plain tensor.
fn learn(spec: &Spec, outputs: &SessionOutputs) -> Option<RunOptions<HasSelectedOutputs>> {
    let mut selector = OutputSelector::default();
    for port in &spec.model_outputs {
        if spec.state_outputs.contains(&port.name) {
            continue;
        }
        let v = outputs.get(port.name.as_str())?;
        let (dtype, shape, _) = engine::value_bytes(&port.name, v).ok()?;
        let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        let value = engine::new_value(dtype, &dims, |b| b.fill(0)).ok()?;
        selector = selector.preallocate(port.name.as_str(), value);
    }
    let mut opts = RunOptions::new().ok()?;
    opts.set_log_level(LogLevel::Fatal).ok()?;
    Some(opts.with_outputs(selector))
}
