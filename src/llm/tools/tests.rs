//! Unit tests of the pure tool pieces with the example schemas in
//! `config/tools/` and llguidance's byte-level vocabulary (every byte a
//! token), so the grammar is exercised without a model; the real tokenizer
//! and model are exercised by `tests/tool_calls.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llguidance::toktrie::{ApproximateTokEnv, TokEnv};
use serde_json::json;

use super::gate::{CallContext, parse_call};
use super::*;
use crate::wire::command::Message;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn raw(name: &str, schema: &str, key: &str) -> RawTool {
    RawTool {
        name: name.into(),
        description: format!("{name} for tests"),
        schema: PathBuf::from(schema),
        key: key.into(),
        rate_per_s: None,
        burst: None,
        dry_run: None,
    }
}

fn example_set() -> ToolSet {
    ToolSet::load(
        "chat",
        &[
            raw("move_arm", "config/tools/move_arm.json", "robot/arm/cmd"),
            raw(
                "stop_base",
                "config/tools/stop_base.json",
                "robot/base/stop",
            ),
        ],
        &repo(),
    )
    .unwrap()
}

fn config_error(tools: &[RawTool], dir: &Path) -> String {
    match ToolSet::load("chat", tools, dir) {
        Err(ToolError::Config(m)) => m,
        other => panic!("expected a config error, got {other:?}"),
    }
}

fn write_schema(dir: &Path, name: &str, body: &str) -> String {
    std::fs::write(dir.join(name), body).unwrap();
    name.to_string()
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reflexd-tools-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn example_schemas_load() {
    let set = example_set();
    assert_eq!(set.len(), 2);
    let arm = set.get("move_arm").unwrap();
    assert_eq!(arm.key, "robot/arm/cmd");
    assert!(!arm.dry_run);
    assert_eq!(arm.rate.burst, 1);
    assert!(
        arm.validate(&json!({"x": 0.3, "y": -0.1, "z": 0.2, "gripper": "close"}))
            .is_ok()
    );
}

#[test]
fn bad_entries_are_start_up_errors_that_name_the_problem() {
    let dir = tmp_dir("bad");
    let ok = "config/tools/stop_base.json";
    let base = repo();
    let cases: Vec<(RawTool, &str)> = vec![
        (raw("move arm", ok, "a/b"), "name = \"move arm\""),
        (raw("auto", ok, "a/b"), "name = \"auto\""),
        (raw("t", ok, "robot/**"), "wildcards are not allowed"),
        (raw("t", ok, "a//b"), "key = \"a//b\""),
        (raw("t", "config/tools/missing.json", "a/b"), "missing.json"),
        (
            RawTool {
                rate_per_s: Some(0.0),
                ..raw("t", ok, "a/b")
            },
            "rate_per_s = 0",
        ),
        (
            RawTool {
                burst: Some(0),
                ..raw("t", ok, "a/b")
            },
            "burst = 0",
        ),
        (
            RawTool {
                description: " ".into(),
                ..raw("t", ok, "a/b")
            },
            "description",
        ),
    ];
    for (r, want) in cases {
        let m = config_error(&[r], &base);
        assert!(m.contains(want), "{m:?} should mention {want:?}");
        assert!(m.contains("pipeline \"chat\" tool[0]"), "{m}");
    }
    let not_json = write_schema(&dir, "nj.json", "{ nope");
    let open = write_schema(&dir, "open.json", r#"{"type": "object"}"#);
    let arr = write_schema(
        &dir,
        "arr.json",
        r#"{"type": "array", "additionalProperties": false}"#,
    );
    let invalid = write_schema(
        &dir,
        "inv.json",
        r#"{"type": "object", "additionalProperties": false, "properties": {"a": {"type": "nonsense"}}}"#,
    );
    let unsat = write_schema(
        &dir,
        "unsat.json",
        r#"{"type": "object", "additionalProperties": false, "properties": {"a": {"type": "integer", "minimum": 5, "maximum": 1}}, "required": ["a"]}"#,
    );
    for (file, want) in [
        (not_json, "not JSON"),
        (open, "additionalProperties"),
        (arr, "\"type\" must be \"object\""),
        (invalid, "not a valid JSON Schema"),
        (unsat, "tool grammar"),
    ] {
        let m = config_error(&[raw("t", &file, "a/b")], &dir);
        assert!(m.contains(want), "{file}: {m:?} should mention {want:?}");
    }
    let twice = config_error(&[raw("t", ok, "a/b"), raw("t", ok, "a/c")], &base);
    assert!(twice.contains("used twice"), "{twice}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn raw_tool_rejects_unknown_keys() {
    let e = toml::from_str::<RawTool>(
        "name = \"t\"\ndescription = \"d\"\nschema = \"s.json\"\nkey = \"a/b\"\ntopic = \"x\"",
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `topic`"), "{e}");
}

#[test]
fn select_keeps_order_and_refuses_unknown_or_repeated_names() {
    let set = example_set();
    let s = set
        .select(&["stop_base".into(), "move_arm".into()])
        .unwrap();
    assert_eq!(s[0].name, "stop_base");
    for names in [
        vec!["fly".to_string()],
        vec!["move_arm".into(), "move_arm".into()],
    ] {
        assert_eq!(set.select(&names).unwrap_err().code(), "bad_tool_request");
    }
}

#[test]
fn parse_call_accepts_one_call_only() {
    let c = parse_call(
        " <tool_call>[\n{\"name\": \"stop_base\", \"arguments\": {\"reason\": \"x\"}}\n]</tool_call>\n",
    )
    .unwrap();
    assert_eq!(c.name, "stop_base");
    assert_eq!(c.arguments, json!({"reason": "x"}));
    for bad in [
        "hello",
        "<tool_call>[]</tool_call>",
        "<tool_call>[{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {}}]</tool_call>",
        "<tool_call>[{\"name\": \"a\"}]</tool_call>",
        "<tool_call>[{\"name\": \"a\", \"arguments\": {}, \"x\": 1}]</tool_call>",
        "<tool_call>[{\"name\": \"a\", \"arguments\": {}}]</tool_call> and more",
        "<tool_call>[{\"name\": \"a\", \"arguments\": {}</tool_call>",
    ] {
        assert_eq!(
            parse_call(bad).unwrap_err().code(),
            "tool_call_parse",
            "{bad}"
        );
    }
}

fn ctx<'a>(enabled: &'a [String], dry_run: bool) -> CallContext<'a> {
    CallContext {
        generation: "g1",
        seq: 0,
        enabled,
        dry_run,
    }
}

#[test]
fn gate_checks_allow_list_schema_and_rate_in_that_order() {
    let t0 = Instant::now();
    let gate = ToolGate::new(Arc::new(example_set()), t0);
    let both = ["move_arm".to_string(), "stop_base".to_string()];
    let arm_only = ["move_arm".to_string()];
    let stop = |reason: &str| ParsedCall {
        name: "stop_base".into(),
        arguments: json!({ "reason": reason }),
    };
    let e = gate
        .admit(&ctx(&arm_only, false), stop("person"), t0)
        .unwrap_err();
    assert_eq!(e.code(), "tool_not_allowed");
    let e = gate
        .admit(
            &ctx(&both, false),
            ParsedCall {
                name: "fly".into(),
                arguments: json!({}),
            },
            t0,
        )
        .unwrap_err();
    assert_eq!(e.code(), "tool_not_allowed");
    let e = gate.admit(&ctx(&both, false), stop(""), t0).unwrap_err();
    assert_eq!(e.code(), "tool_call_invalid", "{e}");
    // A refused call spent no rate: the first valid one goes through.
    let a = gate.admit(&ctx(&both, false), stop("person"), t0).unwrap();
    let (key, payload) = a.publication().unwrap();
    assert_eq!(key, "robot/base/stop");
    let p: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        p,
        json!({"call_id": "g1.call0", "name": "stop_base", "arguments": {"reason": "person"}})
    );
    let e = gate
        .admit(&ctx(&both, false), stop("again"), t0)
        .unwrap_err();
    assert_eq!(
        e,
        ToolError::RateLimited {
            tool: "stop_base".into(),
            retry_ms: 1000
        }
    );
    // Dry runs are validated and reported but spend no rate and have no
    // publication.
    let d = gate.admit(&ctx(&both, true), stop("dry"), t0).unwrap();
    assert!(d.is_dry_run() && d.publication().is_none());
    assert!(!d.message("g1").tool_call.published);
    assert!(
        gate.admit(
            &ctx(&both, false),
            stop("later"),
            t0 + Duration::from_secs(1)
        )
        .is_ok()
    );
}

#[test]
fn gate_validates_bounds_and_enums() {
    let gate = ToolGate::new(Arc::new(example_set()), Instant::now());
    let en = ["move_arm".to_string()];
    for args in [
        json!({"x": 0.9, "y": 0.0, "z": 0.1, "gripper": "open"}),
        json!({"x": 0.1, "y": 0.0, "z": -0.1, "gripper": "open"}),
        json!({"x": 0.1, "y": 0.0, "z": 0.1, "gripper": "crush"}),
        json!({"x": 0.1, "y": 0.0, "z": 0.1}),
        json!({"x": 0.1, "y": 0.0, "z": 0.1, "gripper": "open", "speed": 9}),
        json!({"x": "0.1", "y": 0.0, "z": 0.1, "gripper": "open"}),
    ] {
        let call = ParsedCall {
            name: "move_arm".into(),
            arguments: args.clone(),
        };
        let e = gate
            .admit(&ctx(&en, true), call, Instant::now())
            .unwrap_err();
        assert_eq!(e.code(), "tool_call_invalid", "{args}");
    }
}

/// Feeds `text` byte by byte through a session on the byte-level
/// vocabulary, checking each byte against the mask; returns the progress
/// reported for every byte, or the first error.
fn drive(session: &mut CallSession, env: &TokEnv, text: &str) -> Result<Vec<Progress>, ToolError> {
    let toks = env.tokenize(text);
    let mut out = Vec::new();
    for t in toks {
        let mut logits = vec![0.0f32; env.tok_trie().vocab_size()];
        session.mask_logits(&mut logits)?;
        if logits[t as usize] == f32::NEG_INFINITY {
            return Err(ToolError::Grammar(format!(
                "masked: {:?}",
                env.tok_trie().token_dbg(t)
            )));
        }
        out.push(session.commit(t)?);
    }
    Ok(out)
}

fn byte_constrainer() -> (Constrainer, TokEnv) {
    let env = ApproximateTokEnv::single_byte_env();
    (Constrainer::new(env.clone()).unwrap(), env)
}

#[test]
fn constrained_call_completes_and_parses() {
    let set = example_set();
    let tools = set
        .select(&["move_arm".into(), "stop_base".into()])
        .unwrap();
    let (c, env) = byte_constrainer();
    let mut s = c.session(&tools, &ToolChoice::Required).unwrap().unwrap();
    let text = "<tool_call>[{\"name\": \"move_arm\", \"arguments\": {\"x\": 0.3, \"y\": -0.1, \"z\": 0.2, \"gripper\": \"close\"}}]</tool_call>";
    let p = drive(&mut s, &env, text).unwrap();
    let (last, rest) = p.split_last().unwrap();
    assert!(rest.iter().all(|p| *p == Progress::Continue));
    assert_eq!(
        *last,
        Progress::Call(ParsedCall {
            name: "move_arm".into(),
            arguments: json!({"x": 0.3, "y": -0.1, "z": 0.2, "gripper": "close"})
        })
    );
    // After the call only the end of turn is allowed.
    let mask = s.compute_mask().unwrap();
    assert_eq!(mask.num_set(), env.tok_trie().eos_tokens().len());
    assert_eq!(s.commit(env.tok_trie().eos_token()).unwrap(), Progress::End);
}

#[test]
fn the_mask_refuses_out_of_schema_output() {
    let set = example_set();
    let tools = set.select(&["move_arm".into()]).unwrap();
    let (c, env) = byte_constrainer();
    let head = "<tool_call>[{\"name\": \"move_arm\", \"arguments\": {";
    for bad in [
        "\"x\": 0.9",                       // above the maximum
        "\"x\": 0.3, \"y\": 0.1, \"z\": -", // below the minimum
        "\"speed\"",                        // unknown argument
        "\"x\":0.3",                        // spacing of the envelope
        "\"x\": 0.3, \"y\": 0.1, \"z\": 0.1, \"gripper\": \"crush",
    ] {
        let mut s = c.session(&tools, &ToolChoice::Required).unwrap().unwrap();
        let r = drive(&mut s, &env, &format!("{head}{bad}"));
        assert!(matches!(r, Err(ToolError::Grammar(_))), "{bad}: {r:?}");
    }
    let mut s = c.session(&tools, &ToolChoice::Required).unwrap().unwrap();
    assert!(drive(&mut s, &env, "<tool_call>[{\"name\": \"stop_base\"").is_err());
    let mut s = c.session(&tools, &ToolChoice::Required).unwrap().unwrap();
    assert!(drive(&mut s, &env, "Sure").is_err(), "required: no text");
}

#[test]
fn auto_allows_text_that_does_not_open_like_a_call() {
    let set = example_set();
    let tools = set.select(&["stop_base".into()]).unwrap();
    let (c, env) = byte_constrainer();
    let mut s = c.session(&tools, &ToolChoice::Auto).unwrap().unwrap();
    let p = drive(&mut s, &env, "The cube is red.\nDone <tool_call>").unwrap();
    assert_eq!(p[0], Progress::Text);
    assert!(p[1..].iter().all(|p| *p == Progress::Continue));
    assert!(!s.is_call());
    assert_eq!(s.commit(env.tok_trie().eos_token()).unwrap(), Progress::End);
    // An immediate end of turn is allowed too.
    let mut s = c.session(&tools, &ToolChoice::Auto).unwrap().unwrap();
    s.mask_logits(&mut vec![0.0; env.tok_trie().vocab_size()])
        .unwrap();
    assert_eq!(s.commit(env.tok_trie().eos_token()).unwrap(), Progress::End);
}

#[test]
fn end_of_turn_inside_a_call_is_refused_and_finish_reports_it() {
    let set = example_set();
    let tools = set.select(&["stop_base".into()]).unwrap();
    let (c, env) = byte_constrainer();
    let mut s = c.session(&tools, &ToolChoice::Auto).unwrap().unwrap();
    drive(&mut s, &env, "<tool_call>[{\"name\": \"stop").unwrap();
    assert!(s.is_call());
    assert_eq!(s.finish(), Err(ToolError::Incomplete));
    let mut logits = vec![0.0; env.tok_trie().vocab_size()];
    s.mask_logits(&mut logits).unwrap();
    let eos = env.tok_trie().eos_token();
    assert_eq!(logits[eos as usize], f32::NEG_INFINITY);
    assert_eq!(s.commit(eos).unwrap_err().code(), "tool_grammar");
}

#[test]
fn named_choice_and_none() {
    let set = example_set();
    let tools = set
        .select(&["move_arm".into(), "stop_base".into()])
        .unwrap();
    let (c, env) = byte_constrainer();
    let named = ToolChoice::Tool("stop_base".into());
    let mut s = c.session(&tools, &named).unwrap().unwrap();
    assert!(drive(&mut s, &env, "<tool_call>[{\"name\": \"move").is_err());
    let p = drive(
        &mut c.session(&tools, &named).unwrap().unwrap(),
        &env,
        "<tool_call>[{\"name\": \"stop_base\", \"arguments\": {\"reason\": \"person ahead\"}}]</tool_call>",
    )
    .unwrap();
    assert!(matches!(p.last(), Some(Progress::Call(c)) if c.name == "stop_base"));
    assert!(c.session(&tools, &ToolChoice::None).unwrap().is_none());
    let e = c
        .session(&tools, &ToolChoice::Tool("fly".into()))
        .err()
        .unwrap();
    assert_eq!(e.code(), "bad_tool_request");
    assert!(c.session(&[], &ToolChoice::Required).is_err());
}

#[test]
fn prompt_offers_tools_and_feeds_results_back() {
    let set = example_set();
    let tools = set.select(&["move_arm".into()]).unwrap();
    let user = Message {
        role: "user".into(),
        content: "Pick up the red cube.".into(),
        name: None,
    };
    let m = prompt::with_tools(std::slice::from_ref(&user), &tools);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].role, "system");
    // Property order is the schema's (the grammar's order too).
    assert!(m[0].content.contains(
        "<tools>[{\"name\": \"move_arm\", \"description\": \"move_arm for tests\", \"parameters\": {\"type\": \"object\", \"properties\": {\"x\": "
    ), "{}", m[0].content);
    assert!(!m[0].content.contains("$schema"));
    assert_eq!(m[1], user);
    let own = Message {
        role: "system".into(),
        content: "Be careful.".into(),
        name: None,
    };
    let m2 = prompt::with_tools(&[own, user.clone()], &tools);
    assert_eq!(m2[0].content, format!("Be careful.\n\n{}", m[0].content));
    assert_eq!(m2[1], user);
    let r = prompt::tool_result(
        "move_arm",
        "reached; gripper \"closed\"",
        prompt::Then::Continue,
    );
    assert_eq!(r.role, "user");
    assert_eq!(
        r.content,
        "<tool_response>{\"name\": \"move_arm\", \"content\": \"reached; gripper \\\"closed\\\"\"}</tool_response>"
    );
    let a = prompt::tool_result("move_arm", "ok", prompt::Then::Answer);
    assert!(
        a.content
            .ends_with("</tool_response>\nAnswer in plain words.")
    );
}

#[test]
fn the_answer_session_allows_text_only() {
    let (c, env) = byte_constrainer();
    let mut s = c.answer_session().unwrap();
    assert_eq!(
        drive(&mut s, &env, "It is done.").unwrap()[0],
        Progress::Text
    );
    assert_eq!(s.commit(env.tok_trie().eos_token()).unwrap(), Progress::End);
    let mut s = c.answer_session().unwrap();
    assert!(drive(&mut s, &env, "<tool_call>").is_err());
}

#[test]
fn admitted_call_replays_as_the_text_the_grammar_allows() {
    let set = example_set();
    let gate = ToolGate::new(Arc::new(set), Instant::now());
    let en = ["move_arm".to_string()];
    let call = ParsedCall {
        name: "move_arm".into(),
        arguments: json!({"x": 0.3, "y": -0.1, "z": 0.2, "gripper": "close"}),
    };
    let a = gate
        .admit(&ctx(&en, false), call.clone(), Instant::now())
        .unwrap();
    let text = a.as_model_text();
    assert_eq!(parse_call(&text).unwrap(), call);
    let (c, env) = byte_constrainer();
    let tools = gate.tools().select(&en).unwrap();
    let mut s = c.session(&tools, &ToolChoice::Required).unwrap().unwrap();
    assert!(matches!(
        drive(&mut s, &env, &text).unwrap().last(),
        Some(Progress::Call(_))
    ));
}
