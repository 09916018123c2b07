//! Error codes shared by every stage. Ingress, scheduler and workers report a
//! failed request as an [`ErrorCode`] plus a message; egress turns that into the
//! JSON error message documented in `docs/protocol.md`. The code strings are a
//! stable interface: clients and metrics match on them, so never rename one.

/// Why a request did not produce a prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The payload had zero bytes.
    EmptyPayload,
    /// The payload exceeded `limits.max_payload_bytes`.
    PayloadTooLarge,
    /// The payload could not be parsed as the configured format.
    BadPayload,
    /// A tensor the model needs was not in the message.
    MissingTensor,
    /// The message carried a tensor the model does not take.
    UnexpectedTensor,
    /// A tensor had the wrong element type.
    WrongDtype,
    /// A tensor had the wrong shape.
    WrongShape,
    /// A tensor had more elements than `limits.max_elements`.
    TooManyElements,
    /// The stream id derived from the key is not acceptable.
    BadStream,
    /// The pipeline already tracks `max_streams` live streams.
    TooManyStreams,
    /// The pipeline's queue was full (`overflow = "reject"`).
    Busy,
    /// A newer frame of the same stream replaced this one before it ran
    /// (`overflow = "latest"`).
    Superseded,
    /// The latency budget had passed before the job could start.
    DeadlineExceeded,
    /// ONNX Runtime returned an error while running the model.
    InferenceFailed,
    /// The daemon stopped before the job ran.
    ShuttingDown,
    /// A generation command that is not valid JSON or has unknown fields or
    /// a malformed id.
    BadCommand,
    /// A generation command without prompt text.
    EmptyPrompt,
    /// The prompt exceeds the pipeline's prompt limit or the model context.
    PromptTooLong,
    /// A sampling or length parameter is out of range.
    BadParameter,
    /// The pipeline already runs `max_generations` generations.
    TooManyGenerations,
    /// A generation's client fell behind: its undelivered messages filled
    /// the generation's outbox, so the generation ended (the worker never
    /// waits for a client).
    SlowConsumer,
    /// A generation command reused the id of a generation that is still
    /// running. Refers to the refused command only: the running
    /// generation's stream goes on and ends with its own final message.
    DuplicateId,
    /// A float input held NaN or infinity (`non_finite = "reject"`, the
    /// default for float inputs).
    NonFinite,
    /// The daemon failed internally while serving this request (a panic in
    /// a model run, sampler, detokenizer or encoder was contained): the
    /// request ends here, its stream's carried state is reset, and the
    /// worker goes on.
    InternalError,
    /// An image message whose description does not fit its bytes: no or
    /// unknown encoding, missing or zero or absurd dimensions, a row step
    /// shorter than a row, a payload of the wrong size (docs/images.md).
    BadImage,
    /// An image with more pixels than the pipeline's `pre.max_pixels`.
    ImageTooLarge,
    /// A JPEG or PNG that does not parse or decode.
    CorruptImage,
    /// The model's output does not fit the pipeline's answer stage (rank,
    /// layout or class count): a model/config mismatch, not a client error.
    BadOutput,
    /// A generation command's tool fields are wrong: a tool the pipeline
    /// does not offer, a bad `tool_choice`, a `max_steps` over the
    /// pipeline's budget, a `tool` message without its tool, or `stop`
    /// with tools.
    BadToolRequest,
    /// The model wrote a call that the gate refused (arguments failing the
    /// schema, a tool not enabled, the tool's rate limit, or the grammar
    /// engine failing); the message starts with the finer reason
    /// (`tool_call_invalid`, `tool_not_allowed`, `tool_rate_limited`,
    /// `tool_call_parse`, `tool_grammar`). Nothing was published.
    ToolCallRefused,
    /// The generation ended (length, deadline, cancel) while the model was
    /// still writing a call; nothing was published.
    ToolCallIncomplete,
    /// The pipeline has no local model (`offload.when = "missing_model"`)
    /// and its offload target is down, does not serve it, or did not
    /// answer within `offload.timeout_ms`.
    OffloadUnavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 32] = [
        ErrorCode::EmptyPayload,
        ErrorCode::PayloadTooLarge,
        ErrorCode::BadPayload,
        ErrorCode::MissingTensor,
        ErrorCode::UnexpectedTensor,
        ErrorCode::WrongDtype,
        ErrorCode::WrongShape,
        ErrorCode::TooManyElements,
        ErrorCode::BadStream,
        ErrorCode::TooManyStreams,
        ErrorCode::Busy,
        ErrorCode::Superseded,
        ErrorCode::DeadlineExceeded,
        ErrorCode::InferenceFailed,
        ErrorCode::ShuttingDown,
        ErrorCode::BadCommand,
        ErrorCode::EmptyPrompt,
        ErrorCode::PromptTooLong,
        ErrorCode::BadParameter,
        ErrorCode::TooManyGenerations,
        ErrorCode::SlowConsumer,
        ErrorCode::DuplicateId,
        ErrorCode::NonFinite,
        ErrorCode::InternalError,
        ErrorCode::BadImage,
        ErrorCode::ImageTooLarge,
        ErrorCode::CorruptImage,
        ErrorCode::BadOutput,
        ErrorCode::BadToolRequest,
        ErrorCode::ToolCallRefused,
        ErrorCode::ToolCallIncomplete,
        ErrorCode::OffloadUnavailable,
    ];

    /// The stable string used on the wire and in metrics.
    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::EmptyPayload => "empty_payload",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::BadPayload => "bad_payload",
            ErrorCode::MissingTensor => "missing_tensor",
            ErrorCode::UnexpectedTensor => "unexpected_tensor",
            ErrorCode::WrongDtype => "wrong_dtype",
            ErrorCode::WrongShape => "wrong_shape",
            ErrorCode::TooManyElements => "too_many_elements",
            ErrorCode::BadStream => "bad_stream",
            ErrorCode::TooManyStreams => "too_many_streams",
            ErrorCode::Busy => "busy",
            ErrorCode::Superseded => "superseded",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::InferenceFailed => "inference_failed",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::BadCommand => "bad_command",
            ErrorCode::EmptyPrompt => "empty_prompt",
            ErrorCode::PromptTooLong => "prompt_too_long",
            ErrorCode::BadParameter => "bad_parameter",
            ErrorCode::TooManyGenerations => "too_many_generations",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::DuplicateId => "duplicate_id",
            ErrorCode::NonFinite => "non_finite",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::BadImage => "bad_image",
            ErrorCode::ImageTooLarge => "image_too_large",
            ErrorCode::CorruptImage => "corrupt_image",
            ErrorCode::BadOutput => "bad_output",
            ErrorCode::BadToolRequest => "bad_tool_request",
            ErrorCode::ToolCallRefused => "tool_call_refused",
            ErrorCode::ToolCallIncomplete => "tool_call_incomplete",
            ErrorCode::OffloadUnavailable => "offload_unavailable",
        }
    }

    /// Position in [`ErrorCode::ALL`], used to index counters.
    pub fn index(self) -> usize {
        ErrorCode::ALL
            .iter()
            .position(|c| *c == self)
            .expect("every code is in ALL")
    }
}

/// A request-level failure: the code and a human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.code(), self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_indexed() {
        let mut seen = std::collections::HashSet::new();
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert!(seen.insert(c.code()), "duplicate code {}", c.code());
            assert_eq!(c.index(), i);
        }
    }
}
