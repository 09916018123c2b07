//! The test robot: a zenoh subscriber on the tool keys (127.0.0.1 only)
//! beside a daemon running the real SmolLM2-135M with `[[pipeline.tool]]`
//! entries. It must receive exactly the calls the daemon reported as
//! published, in order, each re-serialized from arguments that validate
//! against the tool's schema — and nothing for a dry run, a call cut short,
//! a refused command or the answer step of a plan. A second subscriber on
//! every key checks that the daemon published nowhere outside its outputs
//! and the tool keys (the allow-list). Few, short requests: every one pays
//! a ~300-token prefill of the tool prompt.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const ARM: &str = "t/robot/arm/cmd";
const BASE: &str = "t/robot/base/stop";

fn config() -> String {
    format!(
        r#"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "t/llm/cmd"
        output = "t/llm/out"
        max_tokens = 96
        max_tool_steps = 2
        [[pipeline.tool]]
        name = "move_arm"
        description = "Move the gripper to a position (metres, arm base frame) and open, close or keep the gripper there."
        schema = "config/tools/move_arm.json"
        key = "{ARM}"
        rate_per_s = 100.0
        burst = 10
        [[pipeline.tool]]
        name = "stop_base"
        description = "Stop the mobile base immediately."
        schema = "config/tools/stop_base.json"
        key = "{BASE}"
        "#,
        llm_dir()
    )
}

/// Everything about one command: token texts, `tool_call` messages, the
/// final message (or the error, for a command refused at intake).
struct Step {
    text: String,
    calls: Vec<Value>,
    end: Value,
}

async fn run(c: &zenoh::Session, errors: &Sub, cmd: Value) -> Step {
    let id = cmd["id"].as_str().unwrap().to_string();
    let sub = c
        .declare_subscriber(format!("t/llm/out/{id}"))
        .await
        .unwrap();
    matched(c, "t/llm/cmd").await;
    put(c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
    let mut step = Step {
        text: String::new(),
        calls: Vec::new(),
        end: Value::Null,
    };
    loop {
        tokio::select! {
            s = sub.recv_async() => {
                let v: Value = serde_json::from_slice(&s.unwrap().payload().to_bytes()).unwrap();
                if v["done"] == true {
                    step.end = v;
                    return step;
                }
                if v.get("tool_call").is_some() {
                    step.calls.push(v["tool_call"].clone());
                } else {
                    step.text.push_str(v["text"].as_str().unwrap());
                }
            }
            e = errors.recv_async() => {
                let v: Value = serde_json::from_slice(&e.unwrap().payload().to_bytes()).unwrap();
                if v["id"] == id.as_str() && v["code"] == "bad_tool_request" {
                    step.end = v;
                    return step;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(180)) => panic!("{id}: no end"),
        }
    }
}

fn in_range(args: &Value) {
    let n = |k: &str| args[k].as_f64().unwrap_or_else(|| panic!("{k} in {args}"));
    assert!((-0.6..=0.6).contains(&n("x")) && (-0.6..=0.6).contains(&n("y")));
    assert!((0.0..=0.8).contains(&n("z")));
    assert!(["open", "close", "keep"].contains(&args["gripper"].as_str().unwrap()));
    assert_eq!(
        args.as_object().unwrap().len(),
        4,
        "no extra arguments: {args}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_robot_receives_exactly_the_validated_calls_in_order() {
    let (daemon, port) = start(&config()).await;
    let c = client(port).await;
    llm_ready(&c).await;
    let robot = subscribe(&c, "t/robot/**").await;
    let everything = subscribe(&c, "**").await;
    let errors = subscribe(&c, "t/llm/out/error").await;
    matched(daemon.zenoh_session(), ARM).await;
    let pick = "Pick up the red cube at x=0.3, y=0.1, z=0.05.";
    let s1 = first_step(&c, &errors, pick).await;
    let call1 = &s1.calls[0];
    nothing_published(&c, &errors, pick).await;
    answer_step(&c, &errors, pick, &s1.end["text"]).await;
    // A second published call, from another plan.
    let s6 = run(
        &c,
        &errors,
        json!({"id": "p2", "prompt": "Move the gripper to x=0.2, y=-0.3, z=0.4 and keep it.",
        "tools": ["move_arm", "stop_base"], "tool_choice": {"name": "move_arm"}}),
    )
    .await;
    assert_eq!(s6.calls.len(), 1, "{}", s6.end);
    let call2 = &s6.calls[0];
    in_range(&call2["arguments"]);

    // The robot: exactly the two published calls, in order, as reported.
    let want: Vec<(String, Value)> = [call1, call2]
        .iter()
        .map(|c| {
            (
                ARM.to_string(),
                json!({"call_id": c["call_id"], "name": c["name"], "arguments": c["arguments"]}),
            )
        })
        .collect();
    assert_eq!(received(&robot).await, want);
    let outside = outside_allow_list(&everything).await;
    assert!(
        outside.is_empty(),
        "published outside the allow-list: {outside:?}"
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// Step 1 of a plan: a required call, published.
async fn first_step(c: &zenoh::Session, errors: &Sub, pick: &str) -> Step {
    let s1 = run(
        c,
        errors,
        json!({"id": "p1", "prompt": pick, "tools": ["move_arm"],
        "tool_choice": "required", "max_steps": 1}),
    )
    .await;
    assert_eq!(s1.end["finish_reason"], "tool_call", "{}", s1.end);
    assert_eq!(s1.calls.len(), 1);
    let call1 = &s1.calls[0];
    assert_eq!(
        (call1["call_id"].as_str(), call1["name"].as_str()),
        (Some("p1.call0"), Some("move_arm"))
    );
    assert_eq!(
        (call1["key"].as_str(), call1["published"].as_bool()),
        (Some(ARM), Some(true))
    );
    in_range(&call1["arguments"]);
    assert!(
        s1.text.starts_with("<tool_call>[{\"name\": \"move_arm\""),
        "the call streams as it forms: {}",
        s1.text
    );
    assert_eq!(s1.text, s1.end["text"].as_str().unwrap());
    s1
}

/// A dry run, a call cut short and a refused command publish nothing.
async fn nothing_published(c: &zenoh::Session, errors: &Sub, pick: &str) {
    // A dry run (named tool): reported, not published.
    let s2 = run(
        c,
        errors,
        json!({"id": "d1", "prompt": "Stop the base, a person is in the way.",
        "tools": ["stop_base"], "tool_choice": {"name": "stop_base"}, "dry_run": true}),
    )
    .await;
    assert_eq!(s2.calls.len(), 1, "{}", s2.end);
    assert_eq!(s2.calls[0]["published"], false);

    // Cut short inside the call: an error, nothing published.
    let s3 = run(
        c,
        errors,
        json!({"id": "cut", "prompt": pick, "tools": ["move_arm"],
        "tool_choice": "required", "max_tokens": 4}),
    )
    .await;
    assert_eq!(s3.end["finish_reason"], "error");
    assert_eq!(s3.end["error"]["code"], "tool_call_incomplete");
    assert!(s3.calls.is_empty());

    // A tool the pipeline does not offer: refused at intake.
    let s4 = run(
        c,
        errors,
        json!({"id": "bad", "prompt": pick, "tools": ["fly"]}),
    )
    .await;
    assert_eq!(s4.end["code"], "bad_tool_request", "{}", s4.end);
}

/// Step 2 of the plan: the result fed back, budget spent: words only.
async fn answer_step(c: &zenoh::Session, errors: &Sub, pick: &str, call_text: &Value) {
    let s5 = run(c, errors, json!({"id": "p1", "tools": ["move_arm"], "max_steps": 1,
        "max_tokens": 40, "messages": [
            {"role": "user", "content": pick},
            {"role": "assistant", "content": call_text},
            {"role": "tool", "name": "move_arm", "content": "done: the gripper closed on the red cube"}]})).await;
    assert!(s5.calls.is_empty(), "the answer step cannot call");
    assert!(
        ["stop", "length"].contains(&s5.end["finish_reason"].as_str().unwrap()),
        "{}",
        s5.end
    );
    assert!(!s5.text.starts_with('<'), "{}", s5.text);
}

/// What the robot received (key, payload), in order.
async fn received(robot: &Sub) -> Vec<(String, Value)> {
    let mut got = Vec::new();
    while let Some(s) = try_sample(robot, Duration::from_millis(500)).await {
        got.push((
            s.key_expr().as_str().to_string(),
            serde_json::from_slice::<Value>(&s.payload().to_bytes()).unwrap(),
        ));
    }
    got
}

/// Keys the daemon published on besides its outputs and the tool key.
async fn outside_allow_list(everything: &Sub) -> Vec<String> {
    let mut outside = Vec::new();
    while let Some(s) = try_sample(everything, Duration::from_millis(100)).await {
        let k = s.key_expr().as_str();
        if !(k.starts_with("t/llm/out/")
            || k == ARM
            || k.starts_with("t/llm/cmd")
            || k.starts_with("reflexd/"))
        {
            outside.push(k.to_string());
        }
    }
    outside
}

async fn try_sample(sub: &Sub, wait: Duration) -> Option<zenoh::sample::Sample> {
    tokio::time::timeout(wait, sub.recv_async())
        .await
        .ok()
        .and_then(Result::ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tool_schema_stops_start_up_with_a_message() {
    let dir = std::env::temp_dir().join(format!("reflexd-tools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = dir.join("loose.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"x": {"type": "number"}}}"#,
    )
    .unwrap();
    // Loopback zenoh in case start-up got that far (it must not).
    let zenoh = format!(
        "[zenoh]\nlisten = [\"tcp/127.0.0.1:{}\"]\nscouting = false\n",
        free_port()
    );
    let text =
        zenoh.clone() + &config().replace("config/tools/stop_base.json", schema.to_str().unwrap());
    let cfg = reflexd::config::Config::from_toml(&text, &repo()).expect("stage one accepts it");
    let err = match reflexd::Daemon::start(cfg).await {
        Ok(_) => panic!("a schema without additionalProperties: false must not start"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("stop_base") && err.contains("additionalProperties"),
        "{err}"
    );
    let missing =
        zenoh + &config().replace("config/tools/stop_base.json", "config/tools/nope.json");
    let cfg = reflexd::config::Config::from_toml(&missing, &repo()).unwrap();
    let err = reflexd::Daemon::start(cfg)
        .await
        .err()
        .expect("a missing schema file must not start")
        .to_string();
    assert!(err.contains("nope.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
