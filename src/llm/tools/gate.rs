//! The only way from a model's output to a robot: a finished call is parsed
//! ([`parse_call`]), then [`ToolGate::admit`] checks, in order, that the
//! tool is enabled for this generation (the allow-list), that the arguments
//! validate against the tool's JSON Schema (a second, independent check
//! after the constrained grammar), and — unless the call is a dry run —
//! that the tool's rate limit has room. Only then does it return an
//! [`Admitted`] call, a type nothing else can construct; its payload is
//! re-serialized from the validated value (never the model's raw text), and
//! its key is the configured one, so nothing the model writes can choose
//! where a call goes.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};

use super::ToolError;
use super::grammar::{CALL_CLOSE, CALL_OPEN};
use super::rate::RateLimiter;
use super::spec::ToolSet;

/// A call as the model wrote it: shape checked, arguments not yet validated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: Value,
}

const OPEN_TAG: &str = "<tool_call>";
const CLOSE_TAG: &str = "</tool_call>";

/// Parses a reply that must be exactly one call:
/// `<tool_call>[{"name": ..., "arguments": {...}}]</tool_call>` (surrounding
/// whitespace and whitespace inside the JSON are tolerated, so the same
/// parser measures unconstrained output fairly).
pub fn parse_call(text: &str) -> Result<ParsedCall, ToolError> {
    let bad = |m: &str| ToolError::Parse(m.to_string());
    let t = text.trim();
    let inner = t
        .strip_prefix(OPEN_TAG)
        .ok_or_else(|| bad("the reply does not start with <tool_call>"))?
        .strip_suffix(CLOSE_TAG)
        .ok_or_else(|| bad("the reply does not end with </tool_call>"))?;
    let v: Value = serde_json::from_str(inner)
        .map_err(|e| ToolError::Parse(format!("not JSON between the tags: {e}")))?;
    let obj = match v {
        Value::Array(mut items) if items.len() == 1 => items.pop().expect("one item"),
        Value::Array(items) => {
            return Err(ToolError::Parse(format!(
                "{} calls in one reply; exactly one is allowed",
                items.len()
            )));
        }
        other => other,
    };
    let Value::Object(mut o) = obj else {
        return Err(bad("a call must be a JSON object"));
    };
    let name = match o.remove("name") {
        Some(Value::String(n)) => n,
        _ => return Err(bad("the call has no string \"name\"")),
    };
    let arguments = match o.remove("arguments") {
        Some(a @ Value::Object(_)) => a,
        _ => return Err(bad("the call has no object \"arguments\"")),
    };
    if let Some(k) = o.keys().next() {
        return Err(ToolError::Parse(format!(
            "unexpected key {k:?} in the call"
        )));
    }
    debug_assert!(CALL_OPEN.starts_with(OPEN_TAG) && CALL_CLOSE.ends_with(CLOSE_TAG));
    Ok(ParsedCall { name, arguments })
}

/// Per-request facts the gate needs.
#[derive(Clone, Copy, Debug)]
pub struct CallContext<'a> {
    /// The generation's id (the command's `id`).
    pub generation: &'a str,
    /// Index of this call within the plan (0, 1, ...).
    pub seq: u32,
    /// Tools the command enabled.
    pub enabled: &'a [String],
    /// The command asked for a dry run.
    pub dry_run: bool,
}

/// A call that passed the gate. Only [`ToolGate::admit`] makes one.
#[derive(Clone, Debug, PartialEq)]
pub struct Admitted {
    call_id: String,
    name: String,
    arguments: Value,
    key: String,
    dry_run: bool,
}

/// What a robot receives on the tool's key.
#[derive(Serialize)]
struct Payload<'a> {
    call_id: &'a str,
    name: &'a str,
    arguments: &'a Value,
}

/// The `tool_call` message sent to the client on the generation's stream.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ToolCallMessage {
    pub id: String,
    pub tool_call: ToolCallBody,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ToolCallBody {
    pub call_id: String,
    pub name: String,
    pub arguments: Value,
    pub key: String,
    /// false for a dry run: validated, reported, not published.
    pub published: bool,
}

impl Admitted {
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn arguments(&self) -> &Value {
        &self.arguments
    }

    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// Key and payload to publish; `None` for a dry run.
    pub fn publication(&self) -> Option<(&str, Vec<u8>)> {
        if self.dry_run {
            return None;
        }
        let body = serde_json::to_vec(&Payload {
            call_id: &self.call_id,
            name: &self.name,
            arguments: &self.arguments,
        })
        .expect("a JSON value always serializes");
        Some((self.key.as_str(), body))
    }

    /// The message for the client; `published` says whether
    /// [`Admitted::publication`] is to be put on the key.
    pub fn message(&self, generation: &str) -> ToolCallMessage {
        ToolCallMessage {
            id: generation.to_string(),
            tool_call: ToolCallBody {
                call_id: self.call_id.clone(),
                name: self.name.clone(),
                arguments: self.arguments.clone(),
                key: self.key.clone(),
                published: !self.dry_run,
            },
        }
    }

    /// The assistant turn that made this call, as the model wrote it
    /// (compact), for the next prompt of the plan.
    pub fn as_model_text(&self) -> String {
        let mut call = Map::new();
        call.insert("name".into(), Value::String(self.name.clone()));
        call.insert("arguments".into(), self.arguments.clone());
        format!(
            "{OPEN_TAG}[{}]{CLOSE_TAG}",
            super::prompt::compact_json(&Value::Object(call))
        )
    }
}

/// Allow-list, schema validation and rate limits of one pipeline's tools.
pub struct ToolGate {
    tools: Arc<ToolSet>,
    /// One limiter per tool, in `tools` order.
    limiters: Vec<RateLimiter>,
}

impl ToolGate {
    /// `origin`: an instant no later than any `now` given to `admit`.
    pub fn new(tools: Arc<ToolSet>, origin: Instant) -> ToolGate {
        let limiters = tools
            .iter()
            .map(|t| RateLimiter::new(t.rate, origin))
            .collect();
        ToolGate { tools, limiters }
    }

    pub fn tools(&self) -> &Arc<ToolSet> {
        &self.tools
    }

    /// Decides whether `call` may go out. A refused call spends no rate.
    pub fn admit(
        &self,
        ctx: &CallContext<'_>,
        call: ParsedCall,
        now: Instant,
    ) -> Result<Admitted, ToolError> {
        if !ctx.enabled.contains(&call.name) {
            return Err(ToolError::NotAllowed(call.name));
        }
        let (i, tool) = self
            .tools
            .iter()
            .enumerate()
            .find(|(_, t)| t.name == call.name)
            .ok_or_else(|| ToolError::NotAllowed(call.name.clone()))?;
        tool.validate(&call.arguments)?;
        let dry_run = ctx.dry_run || tool.dry_run;
        if !dry_run {
            self.limiters[i]
                .check(now)
                .map_err(|wait| ToolError::RateLimited {
                    tool: tool.name.clone(),
                    retry_ms: wait.as_millis().max(1) as u64,
                })?;
        }
        Ok(Admitted {
            call_id: format!("{}.call{}", ctx.generation, ctx.seq),
            name: call.name,
            arguments: call.arguments,
            key: tool.key.clone(),
            dry_run,
        })
    }
}
