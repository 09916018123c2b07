//! Binds a pipeline's image input to its model at start-up: which model
//! input the frame is written into, and the pre-processing resolved against
//! that input's declared shape and element type (`PreSpec::resolve`). The
//! spec then describes that input with its concrete size, so warm-up runs
//! on the shape real frames produce.

use crate::config::PipelineConfig;
use crate::config::image::PreConfig;
use crate::infer::engine::Port;

/// Where frames go and how they get there.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageBinding {
    /// Index into the spec's client inputs.
    pub input: usize,
    pub pre: PreConfig,
}

/// The binding of `p`'s image input (`None` for tensor inputs). Fixes the
/// bound port's channel, height and width to what the pre-processor writes.
pub fn bind(
    p: &PipelineConfig,
    client_inputs: &mut [Port],
) -> Result<Option<ImageBinding>, String> {
    let Some(spec) = p.pre() else {
        return Ok(None);
    };
    let input = match &spec.input {
        Some(name) => client_inputs
            .iter()
            .position(|c| c.name == *name)
            .ok_or_else(|| {
                format!(
                    "pre.input = {name:?} is not a model input the frame can fill; candidates: {}",
                    names(client_inputs)
                )
            })?,
        None if client_inputs.len() == 1 => 0,
        None => {
            return Err(format!(
                "the model takes {} inputs besides constants and state ({}): an image pipeline fills one; set pre.input and bind the rest as constants",
                client_inputs.len(),
                names(client_inputs)
            ));
        }
    };
    if client_inputs.len() != 1 {
        return Err(format!(
            "an image pipeline's messages carry only the frame, but the model also needs {}; bind them as constants",
            client_inputs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != input)
                .map(|(_, c)| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let port = &mut client_inputs[input];
    let pre = spec
        .resolve(&port.shape, port.dtype.name())
        .map_err(|e| format!("{e} (model input {port})"))?;
    // The batch dimension stays as declared (1 or dynamic).
    for (dim, &d) in port.shape.iter_mut().zip(&pre.shape()).skip(1) {
        *dim = d as i64;
    }
    Ok(Some(ImageBinding { input, pre }))
}

fn names(ports: &[Port]) -> String {
    ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
