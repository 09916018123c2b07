//! The tool-call grammar: what a constrained generation may write, as a Lark
//! grammar for llguidance. Built per request from the enabled tools and
//! `tool_choice`; the tool's own JSON Schema constrains `arguments`.
//!
//! The envelope is SmolLM2-Instruct's own function-calling format (its SFT
//! mix, smoltalk, carries Argilla's APIGen function-calling data in this
//! shape): `<tool_call>[{"name": "move_arm", "arguments": {...}}]</tool_call>`.
//! A format the model was fine-tuned on keeps the constrained tokens close to
//! what it would write anyway, which is what keeps the argument values
//! sensible (a grammar only guarantees the shape). The list holds exactly one
//! call: a plan advances one validated action per model turn, so a robot
//! never receives a batch it cannot interleave with results. JSON is compact
//! with `", "` and `": "` separators, as in the training data; free
//! whitespace would let a small model wander into newlines forever.

use serde_json::{Value, json};

use super::ToolError;
use super::spec::ToolSpec;

/// Opening of a call; in `auto` mode a reply starting with `<` is a call.
pub const CALL_OPEN: &str = "<tool_call>[";
/// End of a call: once written, the call is complete.
pub const CALL_CLOSE: &str = "]</tool_call>";

/// What the model may answer with when tools are enabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// Plain text only; no grammar, no call is ever parsed.
    None,
    /// Plain text or one call (the first character decides).
    Auto,
    /// Exactly one call to one of the enabled tools.
    Required,
    /// Exactly one call to this tool.
    Tool(String),
}

impl ToolChoice {
    /// Reads the command's `tool_choice`: `"none"`, `"auto"` (the default),
    /// `"required"`, or `{"name": "<tool>"}`.
    pub fn from_json(v: Option<&Value>) -> Result<ToolChoice, ToolError> {
        let bad = |v: &Value| {
            ToolError::Request(format!(
                "tool_choice = {v}: expected \"none\", \"auto\", \"required\" or {{\"name\": \"<tool>\"}}"
            ))
        };
        match v {
            None => Ok(ToolChoice::Auto),
            Some(Value::String(s)) => match s.as_str() {
                "none" => Ok(ToolChoice::None),
                "auto" => Ok(ToolChoice::Auto),
                "required" => Ok(ToolChoice::Required),
                _ => Err(bad(&Value::String(s.clone()))),
            },
            Some(Value::Object(o)) if o.len() == 1 => match o.get("name") {
                Some(Value::String(n)) => Ok(ToolChoice::Tool(n.clone())),
                _ => Err(bad(&Value::Object(o.clone()))),
            },
            Some(other) => Err(bad(other)),
        }
    }
}

/// The arguments schema as llguidance compiles it: the tool's schema with
/// the formatting options that match the envelope.
fn arguments_schema(tool: &ToolSpec) -> Value {
    let mut s = tool.schema.clone();
    if let Value::Object(o) = &mut s {
        o.insert(
            "x-guidance".into(),
            json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            }),
        );
    }
    s
}

/// A Lark string literal (JSON string syntax, which Lark strings accept).
fn lit(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

/// Lark grammar for one call to one of `tools`; with `allow_text`, plain
/// text that does not start with `<` is the alternative. With no tools it
/// is that text alone (the answer step of a plan: the tools stay in the
/// prompt, but no call can be written).
pub fn lark(tools: &[&ToolSpec], allow_text: bool) -> String {
    let mut g = String::from("%llguidance {}\n");
    // Text must not open like a call, so the first byte tells the decode
    // loop which branch the model took; empty is allowed so an immediate
    // end of turn is never forced into garbage.
    let text = "TEXT: /[^<](.|\\n)*/\n";
    match (tools.is_empty(), allow_text) {
        (true, _) => {
            g.push_str("start: TEXT | \"\"\n");
            g.push_str(text);
            return g;
        }
        (false, true) => {
            g.push_str("start: call | TEXT | \"\"\n");
            g.push_str(text);
        }
        (false, false) => g.push_str("start: call\n"),
    }
    let alts: Vec<String> = (0..tools.len()).map(|i| format!("t{i}")).collect();
    g.push_str(&format!(
        "call: {} ({}) {}\n",
        lit(CALL_OPEN),
        alts.join(" | "),
        lit(CALL_CLOSE)
    ));
    for (i, t) in tools.iter().enumerate() {
        let head = format!("{{\"name\": \"{}\", \"arguments\": ", t.name);
        g.push_str(&format!("t{i}: {} a{i} \"}}\"\n", lit(&head)));
        g.push_str(&format!("a{i}: %json {}\n", arguments_schema(t)));
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_choice_forms() {
        assert_eq!(ToolChoice::from_json(None), Ok(ToolChoice::Auto));
        for (v, want) in [
            (json!("none"), ToolChoice::None),
            (json!("auto"), ToolChoice::Auto),
            (json!("required"), ToolChoice::Required),
            (
                json!({"name": "move_arm"}),
                ToolChoice::Tool("move_arm".into()),
            ),
        ] {
            assert_eq!(ToolChoice::from_json(Some(&v)), Ok(want));
        }
        for v in [
            json!("any"),
            json!(3),
            json!({"name": 1}),
            json!({"name": "a", "x": 1}),
        ] {
            let e = ToolChoice::from_json(Some(&v)).unwrap_err();
            assert_eq!(e.code(), "bad_tool_request", "{v}");
        }
    }
}
