//! The generation command: JSON on a pipeline's command topic (or in a zenoh
//! query), parsed and bounded in the subscriber callback before anything is
//! queued. Unknown fields, empty prompts and absurd parameters are refused
//! here with a stable code.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{ErrorCode, Rejection};

/// Sampling parameters after validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// Longest accepted command (bytes).
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
/// Longest generation id; it becomes a key chunk of the token topic.
pub const MAX_GEN_ID_LEN: usize = 64;
/// Most stop strings per request, and their longest length.
pub const MAX_STOPS: usize = 8;
pub const MAX_STOP_LEN: usize = 64;

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    id: String,
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    max_tokens: Option<u64>,
    temperature: Option<f32>,
    top_k: Option<u64>,
    top_p: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<Vec<String>>,
    priority: Option<String>,
    deadline_ms: Option<f64>,
}

/// Per-pipeline bounds on commands (from config).
#[derive(Clone, Debug)]
pub struct CommandLimits {
    pub max_tokens: u32,
    pub default_max_tokens: u32,
    pub max_prompt_chars: usize,
    /// Most messages in one command.
    pub max_messages: usize,
    pub default_deadline: Duration,
}

/// A validated command.
#[derive(Clone, Debug)]
pub struct Command {
    pub id: String,
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    /// Requested priority level name, if any (resolved by the caller).
    pub priority: Option<String>,
    pub deadline: Duration,
}

fn reject(code: ErrorCode, msg: impl Into<String>) -> Rejection {
    Rejection::new(code, msg)
}

/// Reads just the id of a command that failed to parse, for the error reply.
pub fn salvage_id(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let id = v.get("id")?.as_str()?;
    (id.len() <= MAX_GEN_ID_LEN).then(|| id.to_string())
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_GEN_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Parses and bounds a command.
pub fn parse(bytes: &[u8], limits: &CommandLimits) -> Result<Command, Rejection> {
    if bytes.is_empty() {
        return Err(reject(ErrorCode::EmptyPayload, "the command is empty"));
    }
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(reject(
            ErrorCode::PayloadTooLarge,
            format!(
                "command is {} bytes; the limit is {MAX_COMMAND_BYTES}",
                bytes.len()
            ),
        ));
    }
    let raw: RawCommand = serde_json::from_slice(bytes).map_err(|e| {
        reject(
            ErrorCode::BadCommand,
            format!("not a valid generation command: {e}"),
        )
    })?;
    if super::is_reserved(&raw.id) {
        return Err(reject(
            ErrorCode::BadCommand,
            format!(
                "id {:?} is reserved: `<output>/{}` is the pipeline's error key",
                raw.id, raw.id
            ),
        ));
    }
    // Test builds only: fault-injection ids (`fault:panic:sample`) carry a
    // `:` that real ids may not (src/fault.rs).
    let fault_id = cfg!(feature = "fault-injection") && raw.id.starts_with("fault:");
    if !fault_id && !valid_id(&raw.id) {
        return Err(reject(
            ErrorCode::BadCommand,
            format!(
                "id {:?}: use 1-{MAX_GEN_ID_LEN} characters from A-Z a-z 0-9 - _ .",
                raw.id
            ),
        ));
    }
    let sampling = sampling(&raw)?;
    let messages = messages(raw.prompt, raw.messages, limits)?;
    let max_tokens = raw.max_tokens.unwrap_or(limits.default_max_tokens as u64);
    if max_tokens == 0 || max_tokens > limits.max_tokens as u64 {
        return bad(
            "max_tokens",
            max_tokens.to_string(),
            &format!("expected 1..={}", limits.max_tokens),
        );
    }
    let stop = stops(raw.stop.unwrap_or_default())?;
    let deadline = deadline(raw.deadline_ms, limits)?;
    Ok(Command {
        id: raw.id,
        messages,
        max_tokens: max_tokens as u32,
        sampling,
        stop,
        priority: raw.priority,
        deadline,
    })
}

fn stops(stop: Vec<String>) -> Result<Vec<String>, Rejection> {
    if stop.len() > MAX_STOPS || stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
        return bad(
            "stop",
            format!("{} strings", stop.len()),
            &format!("at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_LEN} bytes"),
        );
    }
    Ok(stop)
}

fn deadline(ms: Option<f64>, limits: &CommandLimits) -> Result<Duration, Rejection> {
    match ms {
        None => Ok(limits.default_deadline),
        Some(ms) if ms.is_finite() && ms > 0.0 && ms <= 3_600_000.0 => {
            Ok(Duration::from_secs_f64(ms / 1000.0))
        }
        Some(ms) => bad(
            "deadline_ms",
            ms.to_string(),
            "expected > 0 and at most one hour",
        ),
    }
}

fn bad<T>(k: &str, v: String, allowed: &str) -> Result<T, Rejection> {
    Err(reject(
        ErrorCode::BadParameter,
        format!("{k} = {v}: {allowed}"),
    ))
}

/// The conversation of a command: `prompt` (one user message) or
/// `messages`, with known roles, some content and within the size limit.
fn messages(
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    limits: &CommandLimits,
) -> Result<Vec<Message>, Rejection> {
    let messages = match (prompt, messages) {
        (Some(p), None) => vec![Message {
            role: "user".into(),
            content: p,
        }],
        (None, Some(m)) => m,
        (Some(_), Some(_)) => {
            return Err(reject(
                ErrorCode::BadCommand,
                "give either `prompt` or `messages`, not both",
            ));
        }
        (None, None) => {
            return Err(reject(
                ErrorCode::EmptyPrompt,
                "the command has no `prompt` or `messages`",
            ));
        }
    };
    if messages.len() > limits.max_messages {
        return Err(reject(
            ErrorCode::PromptTooLong,
            format!(
                "command has {} messages; the limit is {} (max_messages)",
                messages.len(),
                limits.max_messages
            ),
        ));
    }
    if messages.is_empty() || messages.iter().all(|m| m.content.trim().is_empty()) {
        return Err(reject(ErrorCode::EmptyPrompt, "the prompt is empty"));
    }
    for m in &messages {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(reject(
                ErrorCode::BadCommand,
                format!(
                    "message role {:?}: expected \"system\", \"user\" or \"assistant\"",
                    m.role
                ),
            ));
        }
    }
    let chars: usize = messages.iter().map(|m| m.content.chars().count()).sum();
    if chars > limits.max_prompt_chars {
        return Err(reject(
            ErrorCode::PromptTooLong,
            format!(
                "prompt has {chars} characters; the limit is {}",
                limits.max_prompt_chars
            ),
        ));
    }
    Ok(messages)
}

fn sampling(raw: &RawCommand) -> Result<Sampling, Rejection> {
    let temperature = raw.temperature.unwrap_or(0.0);
    if !(temperature.is_finite() && (0.0..=5.0).contains(&temperature)) {
        return bad(
            "temperature",
            temperature.to_string(),
            "expected 0 (greedy) to 5",
        );
    }
    let top_k = raw.top_k.unwrap_or(0);
    if top_k > 1_000_000 {
        return bad(
            "top_k",
            top_k.to_string(),
            "expected 0 (off) to the vocabulary size",
        );
    }
    let top_p = raw.top_p.unwrap_or(1.0);
    if !(top_p.is_finite() && top_p > 0.0 && top_p <= 1.0) {
        return bad("top_p", top_p.to_string(), "expected a value in (0, 1]");
    }
    let repetition_penalty = raw.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty.is_finite() && (0.1..=10.0).contains(&repetition_penalty)) {
        return bad(
            "repetition_penalty",
            repetition_penalty.to_string(),
            "expected 0.1 to 10 (1 = off)",
        );
    }
    Ok(Sampling {
        temperature,
        top_k: top_k as usize,
        top_p,
        repetition_penalty,
        seed: raw.seed.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CommandLimits {
        CommandLimits {
            max_tokens: 512,
            default_max_tokens: 128,
            max_prompt_chars: 1000,
            max_messages: 4,
            default_deadline: Duration::from_secs(30),
        }
    }

    fn code(json: &str) -> ErrorCode {
        parse(json.as_bytes(), &limits()).unwrap_err().code
    }

    #[test]
    fn prompt_becomes_one_user_message_with_defaults() {
        let c = parse(br#"{"id":"a1","prompt":"hi"}"#, &limits()).unwrap();
        assert_eq!(
            c.messages,
            vec![Message {
                role: "user".into(),
                content: "hi".into()
            }]
        );
        assert_eq!(c.max_tokens, 128);
        assert_eq!(c.sampling.temperature, 0.0);
    }

    #[test]
    fn bad_commands_get_stable_codes() {
        assert_eq!(code("{not json"), ErrorCode::BadCommand);
        assert_eq!(
            code(r#"{"id":"a","prompt":"x","bogus":1}"#),
            ErrorCode::BadCommand
        );
        assert_eq!(code(r#"{"id":"a/b","prompt":"x"}"#), ErrorCode::BadCommand);
        assert_eq!(code(r#"{"id":"a","prompt":"   "}"#), ErrorCode::EmptyPrompt);
        assert_eq!(code(r#"{"id":"a"}"#), ErrorCode::EmptyPrompt);
        assert_eq!(
            code(r#"{"id":"a","prompt":"x","max_tokens":0}"#),
            ErrorCode::BadParameter
        );
        assert_eq!(
            code(r#"{"id":"a","prompt":"x","max_tokens":100000}"#),
            ErrorCode::BadParameter
        );
        assert_eq!(
            code(r#"{"id":"a","prompt":"x","temperature":-1}"#),
            ErrorCode::BadParameter
        );
        assert_eq!(
            code(r#"{"id":"a","prompt":"x","top_p":0}"#),
            ErrorCode::BadParameter
        );
        assert_eq!(
            code(&format!(r#"{{"id":"a","prompt":"{}"}}"#, "x".repeat(1001))),
            ErrorCode::PromptTooLong
        );
        assert_eq!(salvage_id(br#"{"id":"a","bogus":1}"#).as_deref(), Some("a"));
        assert_eq!(
            code(r#"{"id":"error","prompt":"x"}"#),
            ErrorCode::BadCommand
        );
        let five = r#"{"role":"user","content":""}"#;
        assert_eq!(
            code(&format!(
                r#"{{"id":"a","messages":[{five},{five},{five},{five},{five}]}}"#
            )),
            ErrorCode::PromptTooLong
        );
    }
}
