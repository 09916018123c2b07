//! Tool calls: how a generation pipeline lets the model act on the robot.
//! It sits inside a generation, between the model's logits and the sampler,
//! and between a finished call and the zenoh publisher:
//!
//! ```text
//! config [[pipeline.tool]] ──load──► ToolSet (schemas compiled twice: validator + grammar)
//! command tools/tool_choice ─► prompt::with_tools (system prompt) ─► prefill
//! each decode step: CallSession::mask_logits → sample → CallSession::commit
//!                   └─ Progress::Call(ParsedCall) once `]</tool_call>` closes
//! ParsedCall ─► ToolGate::admit (schema validation, allow-list, rate limit, dry_run)
//!           ─► Admitted { key, payload } ─► publish (only this type can be published)
//! tool result from the client ─► prompt::tool_result ─► next turn of the plan
//! ```
//!
//! It owns no threads, no zenoh entities and no ORT session: the daemon's
//! decode loop calls it per step and publishes what the gate admits, so the
//! pieces are testable with the real tokenizer and model but without a
//! daemon. Nothing here blocks: the rate limiter is one atomic, the mask is
//! computed on the worker thread that runs the step.

pub mod constrain;
pub mod env;
pub mod gate;
pub mod grammar;
pub mod prompt;
pub mod rate;
pub mod run;
pub mod spec;

pub use constrain::{CallSession, Constrainer, Progress};
pub use gate::{Admitted, ParsedCall, ToolGate};
pub use grammar::ToolChoice;
pub use run::{Committed, PipeTools, ToolRun};
pub use spec::{RawTool, ToolSet, ToolSpec};

/// Why a tool-related step failed. `code()` is the stable string for error
/// messages and metrics (the daemon maps it onto its own error codes).
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum ToolError {
    /// A `[[pipeline.tool]]` entry or its schema file is unusable (start-up).
    #[error("{0}")]
    Config(String),
    /// The tokenizer could not be turned into a token environment (start-up).
    #[error("tool token environment: {0}")]
    TokenEnv(String),
    /// A command names a tool this pipeline does not offer, or an invalid
    /// `tool_choice`.
    #[error("{0}")]
    Request(String),
    /// The constraint engine failed (grammar compile or an internal error
    /// while computing a mask): the generation ends, nothing is published.
    #[error("tool grammar: {0}")]
    Grammar(String),
    /// The model's output is not a well-formed call (only possible without
    /// constraints, or if the engine and the parser disagree).
    #[error("tool call does not parse: {0}")]
    Parse(String),
    /// The call's arguments fail the tool's JSON Schema.
    #[error("tool call {tool}: arguments fail the schema: {reason}")]
    Invalid { tool: String, reason: String },
    /// The call names a tool that is not enabled for this generation.
    #[error("tool {0:?} is not enabled for this generation")]
    NotAllowed(String),
    /// The tool's rate limit refused the call.
    #[error("tool {tool} is rate limited: retry in {retry_ms} ms")]
    RateLimited { tool: String, retry_ms: u64 },
    /// The generation ended (length, deadline, cancel) inside a call.
    #[error("the generation ended inside a tool call")]
    Incomplete,
}

impl ToolError {
    /// The stable string used on the wire and in metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ToolError::Config(_) => "tool_config",
            ToolError::TokenEnv(_) => "tool_token_env",
            ToolError::Request(_) => "bad_tool_request",
            ToolError::Grammar(_) => "tool_grammar",
            ToolError::Parse(_) => "tool_call_parse",
            ToolError::Invalid { .. } => "tool_call_invalid",
            ToolError::NotAllowed(_) => "tool_not_allowed",
            ToolError::RateLimited { .. } => "tool_rate_limited",
            ToolError::Incomplete => "tool_call_incomplete",
        }
    }
}

#[cfg(test)]
mod tests;
