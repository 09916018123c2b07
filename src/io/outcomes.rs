//! Which request outcomes a pipeline can produce at all, for the metrics
//! exports: a series that can never move (`superseded` on a queue that
//! rejects, `bad_command` on a camera pipeline) is noise on every scrape
//! and in every dashboard. Decided once at start-up from the pipeline's
//! kind, config and model interface, following where each code is raised:
//! ingress (key, payload, decode, validation), the scheduler (queue policy),
//! workers (deadline, non-finite input, the run), command intake and
//! generation steps. `ok` is always possible and not listed here.

use crate::config::{self, GeneratorConfig, InputFormat, Overflow, PipelineConfig};
use crate::error::ErrorCode;
use crate::infer::Spec;
use crate::tensor::Dtype;

/// Codes a tensor pipeline can answer with, in [`ErrorCode::ALL`] order.
pub fn tensor(p: &PipelineConfig, spec: &Spec) -> Vec<ErrorCode> {
    use ErrorCode::*;
    let safetensors = matches!(p.format, InputFormat::Safetensors);
    let latest = p.overflow == Overflow::Latest;
    let float_input = spec
        .client_inputs
        .iter()
        .any(|i| matches!(i.dtype, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::Bf16));
    let possible = |c: ErrorCode| match c {
        EmptyPayload | PayloadTooLarge | WrongShape | DeadlineExceeded | InferenceFailed
        | ShuttingDown | InternalError => true,
        // Raw frames carry bad bytes only in their attachment.
        BadPayload => true,
        // A raw frame is one tensor of the configured dtype and a fixed
        // size, checked against the model at start-up.
        MissingTensor | UnexpectedTensor | WrongDtype | TooManyElements => safetensors,
        // The stream id comes from wildcard chunks of the key; a key with
        // none gives the empty id, which is always accepted.
        BadStream => p.input.contains('*'),
        TooManyStreams | Superseded => latest,
        Busy => !latest,
        NonFinite => p.non_finite == config::NonFinite::Reject && float_input,
        BadCommand | EmptyPrompt | PromptTooLong | BadParameter | TooManyGenerations
        | SlowConsumer | DuplicateId => false,
    };
    ErrorCode::ALL
        .into_iter()
        .filter(|c| possible(*c))
        .collect()
}

/// Codes a generation pipeline can answer with, in [`ErrorCode::ALL`] order.
/// `busy` is left out: a generation's level queue is sized to hold every
/// live generation, so the scheduler never refuses one for room.
pub fn generate(_g: &GeneratorConfig) -> Vec<ErrorCode> {
    use ErrorCode::*;
    ErrorCode::ALL
        .into_iter()
        .filter(|c| {
            matches!(
                c,
                EmptyPayload
                    | PayloadTooLarge
                    | BadCommand
                    | EmptyPrompt
                    | PromptTooLong
                    | BadParameter
                    | TooManyGenerations
                    | DuplicateId
                    | SlowConsumer
                    | DeadlineExceeded
                    | InferenceFailed
                    | ShuttingDown
                    | InternalError
            )
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

    fn codes(extra: &str, input: &str, dtype: Dtype) -> Vec<&'static str> {
        let text = format!(
            "[[pipeline]]\nname = \"p\"\nmodel = \"m.onnx\"\ninput = \"{input}\"\noutput = \"out\"\n{extra}\n"
        );
        let p = Config::from_toml(&text, Path::new("/"))
            .unwrap()
            .pipelines
            .remove(0);
        let port = |n: &str| Port {
            name: n.into(),
            dtype,
            shape: vec![1, 4],
        };
        let (i, o) = ([port("x")], [port("y")]);
        let spec = Spec::from_ports(
            &p,
            &ModelPorts {
                inputs: &i,
                outputs: &o,
            },
            "cpu",
        )
        .unwrap();
        tensor(&p, &spec).into_iter().map(ErrorCode::code).collect()
    }

    #[test]
    fn queue_policy_decides_busy_or_superseded() {
        let reject = codes("", "cam/*", Dtype::F32);
        assert!(reject.contains(&"busy") && !reject.contains(&"superseded"));
        assert!(!reject.contains(&"too_many_streams"));
        let latest = codes("overflow = \"latest\"", "cam/*", Dtype::F32);
        assert!(!latest.contains(&"busy") && latest.contains(&"superseded"));
        assert!(latest.contains(&"too_many_streams"));
        for c in [&reject, &latest] {
            assert!(!c.contains(&"bad_command") && !c.contains(&"slow_consumer"));
            assert!(c.contains(&"deadline_exceeded") && c.contains(&"internal_error"));
        }
    }

    #[test]
    fn format_key_and_dtype_decide_the_rest() {
        let plain = codes("", "cam", Dtype::U8);
        assert!(!plain.contains(&"bad_stream"), "no wildcard, no stream id");
        assert!(!plain.contains(&"non_finite"), "integer input");
        assert!(plain.contains(&"missing_tensor"));
        let allow = codes("non_finite = \"allow\"", "cam/*", Dtype::F32);
        assert!(allow.contains(&"bad_stream") && !allow.contains(&"non_finite"));
        assert!(codes("", "cam/*", Dtype::F32).contains(&"non_finite"));
        let raw = codes(
            "format = \"raw\"\nraw = { tensor = \"x\", dtype = \"f32\", shape = [1, 4] }",
            "cam/*",
            Dtype::F32,
        );
        for c in [
            "missing_tensor",
            "unexpected_tensor",
            "wrong_dtype",
            "too_many_elements",
        ] {
            assert!(!raw.contains(&c), "{c}");
        }
        assert!(raw.contains(&"wrong_shape") && raw.contains(&"bad_payload"));
    }
}
