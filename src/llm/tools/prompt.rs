//! How tools reach the model and how results come back, as messages for the
//! pipeline's chat template (`ChatTemplate::render` in `llm/mod.rs`). The
//! tools are described in the system turn, as SmolLM2-Instruct's
//! function-calling data does: a JSON list of `{name, description,
//! parameters}` between `<tools>` tags, then the one-line call format the
//! grammar enforces. A tool result is a user turn wrapped in
//! `<tool_response>` tags: the ChatML template renders unknown roles as
//! user turns anyway, and a 135M model has never seen a `tool` role, while
//! the tag says plainly what the text is. The assistant turn that made the
//! call is replayed as the exact text the model wrote.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::spec::ToolSpec;
use crate::wire::command::Message;

/// JSON with `", "` and `": "` separators on one line: the spacing of the
/// model's function-calling data and of the grammar's envelope.
pub fn compact_json(v: &Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    v.serialize(&mut ser)
        .expect("a JSON value always serializes");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

struct Spaced;

impl serde_json::ser::Formatter for Spaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// The tool list as the model reads it; the schema's own top-level
/// bookkeeping (`$schema`, `$id`, `title`, `description`: the configured
/// description is what the model reads) is dropped, it only costs tokens.
fn tool_list(tools: &[&ToolSpec]) -> String {
    let list: Vec<Value> = tools
        .iter()
        .map(|t| {
            let mut params = t.schema.clone();
            if let Value::Object(o) = &mut params {
                for k in ["$schema", "$id", "title", "description"] {
                    o.shift_remove(k);
                }
            }
            let mut m = Map::new();
            m.insert("name".into(), json!(t.name));
            m.insert("description".into(), json!(t.description));
            m.insert("parameters".into(), params);
            Value::Object(m)
        })
        .collect();
    compact_json(&Value::Array(list))
}

/// The system turn that offers `tools`. It does not depend on
/// `tool_choice`, so every step of a plan renders the same prefix and the
/// KV cache of the earlier steps stays valid.
pub fn tools_system_prompt(tools: &[&ToolSpec]) -> String {
    let mut s = String::from(
        "You are an expert in composing functions. You are given a question and a set of possible functions.\n\
         Based on the question, you will need to make a function/tool call to achieve the purpose.\n\n\
         You have access to the following tools:\n<tools>",
    );
    s.push_str(&tool_list(tools));
    s.push_str(
        "</tools>\n\n\
         To call a tool, reply with one call in exactly this format and nothing else:\n\
         <tool_call>[{\"name\": \"func_name\", \"arguments\": {\"argument1\": \"value1\", \"argument2\": \"value2\"}}]</tool_call>\n\
         Make sure every argument has the type and range the tool requires. \
         The result of a call comes back between <tool_response> tags. \
         When the task is done, or no tool fits the question, answer in plain words.",
    );
    s
}

/// The command's messages with the tools offered in the system turn: a
/// caller's own system message is kept, with the tool block after it; the
/// template's default system prompt is replaced. (With `tool_choice:
/// "none"` the daemon does not call this: no tools are described.)
pub fn with_tools(messages: &[Message], tools: &[&ToolSpec]) -> Vec<Message> {
    if tools.is_empty() {
        return messages.to_vec();
    }
    let block = tools_system_prompt(tools);
    let own = messages.first().filter(|m| m.role == "system");
    let mut out = Vec::with_capacity(messages.len() + 1);
    out.push(Message {
        role: "system".into(),
        content: match own {
            Some(m) => format!("{}\n\n{block}", m.content),
            None => block,
        },
        name: None,
    });
    out.extend_from_slice(&messages[usize::from(own.is_some())..]);
    out
}

/// What the model is asked to do after a tool result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Nothing is added: the model may call again (with SmolLM2-135M it
    /// usually repeats the call, which suits a retry after an error).
    Continue,
    /// "Answer in plain words.": the last step of a plan. With the demo's
    /// 135M model this is what turns a result into a final sentence.
    Answer,
}

/// The turn that feeds a tool's result back for the next step of a plan:
/// a user turn (the ChatML template renders a `tool` role as one anyway,
/// and a 135M model knows no `tool` role) holding the result as JSON
/// between `<tool_response>` tags.
pub fn tool_result(name: &str, content: &str, then: Then) -> Message {
    let body = compact_json(&json!({"name": name, "content": content}));
    let mut text = format!("<tool_response>{body}</tool_response>");
    if then == Then::Answer {
        text.push_str("\nAnswer in plain words.");
    }
    Message {
        role: "user".into(),
        content: text,
        name: None,
    }
}

/// The assistant turn that made a call, replayed verbatim (see
/// `Admitted::as_model_text`).
pub fn assistant_call(call_text: &str) -> Message {
    Message {
        role: "assistant".into(),
        content: call_text.to_string(),
        name: None,
    }
}
