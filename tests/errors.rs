//! The error catalogue as a contract: every code in `ErrorCode::ALL` is
//! documented in `docs/errors.md`, and triggered here over real zenoh with
//! the code received checked (one daemon with a pipeline per cause, plus
//! the stalled-reader scenario of tests/common/stall.rs for
//! `slow_consumer`). The list of triggered codes includes the codes issue
//! #11 adds (`non_finite`, `internal_error`, `duplicate_id`,
//! `slow_consumer`) and issue #13 (`bad_image`, `image_too_large`,
//! `corrupt_image`, `bad_output`): this test fails until each exists and is
//! sent. Plus
//! two cases no other file covers: a message far over the payload limit
//! dropped by zenoh's bounded reassembly before ingress, and the payload
//! limit on generation commands.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;
use reflexd::error::ErrorCode;
use reflexd::tensor::{Dtype, Tensor, f32_tensor, f32_values};
use serde_json::{Value, json};

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// First-column codes of the catalogue table: rows like "| `busy` | …".
fn documented_codes(doc: &str) -> Vec<String> {
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once("` |").map(|(c, _)| c.to_string()))
        .collect()
}

/// Every code this file triggers over zenoh.
const TRIGGERED: [&str; 32] = [
    "empty_payload",
    "payload_too_large",
    "bad_payload",
    "missing_tensor",
    "unexpected_tensor",
    "wrong_dtype",
    "wrong_shape",
    "too_many_elements",
    "bad_stream",
    "too_many_streams",
    "busy",
    "superseded",
    "deadline_exceeded",
    "inference_failed",
    "shutting_down",
    "bad_command",
    "empty_prompt",
    "prompt_too_long",
    "bad_parameter",
    "too_many_generations",
    "non_finite",
    "internal_error",
    "duplicate_id",
    "slow_consumer",
    "bad_image",
    "image_too_large",
    "corrupt_image",
    "bad_output",
    "bad_tool_request",
    "tool_call_refused",
    "tool_call_incomplete",
    "offload_unavailable",
];

#[test]
fn every_error_code_is_documented_and_has_a_trigger_here() {
    let doc = read("docs/errors.md");
    let documented = documented_codes(&doc);
    let mut problems = Vec::new();
    for c in ErrorCode::ALL {
        let code = c.code();
        if !documented.iter().any(|d| d == code) {
            problems.push(format!("`{code}` has no row in docs/errors.md"));
        }
        if !TRIGGERED.contains(&code) {
            problems.push(format!("`{code}` has no trigger in tests/errors.rs"));
        }
    }
    for d in &documented {
        if !ErrorCode::ALL.iter().any(|c| c.code() == d) {
            problems.push(format!("docs/errors.md documents unknown code `{d}`"));
        }
    }
    for t in TRIGGERED {
        if !ErrorCode::ALL.iter().any(|c| c.code() == t) {
            problems.push(format!(
                "`{t}` is triggered here but is not in ErrorCode::ALL"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Limits small enough to reach from a test; one pipeline per scheduler
/// cause, all on the default single worker.
fn lab_config() -> String {
    let (affine, slow) = (test_model("affine.onnx"), test_model("slow.onnx"));
    format!(
        r#"
        [limits]
        max_payload_bytes = 65536
        max_elements = 4096
        [[pipeline]]
        name = "affine"
        model = "{affine}"
        input = "t/affine/*"
        output = "t/out/affine"
        [[pipeline]]
        name = "faulty"
        model = "{}"
        input = "t/faulty"
        output = "t/out/faulty"
        [[pipeline]]
        name = "latest"
        model = "{slow}"
        input = "t/latest/*"
        output = "t/out/latest"
        overflow = "latest"
        max_streams = 1
        idle_reset_ms = 600000
        deadline_ms = 60000
        [[pipeline]]
        name = "full"
        model = "{slow}"
        input = "t/full"
        output = "t/out/full"
        queue_capacity = 1
        deadline_ms = 60000
        [[pipeline]]
        name = "expire"
        model = "{slow}"
        input = "t/expire"
        output = "t/out/expire"
        queue_capacity = 64
        deadline_ms = 2
        [[pipeline]]
        name = "drain"
        model = "{slow}"
        input = "t/drain"
        output = "t/out/drain"
        queue_capacity = 256
        deadline_ms = 60000
        [[pipeline]]
        name = "img"
        model = "{}"
        input = "t/img/*"
        output = "t/out/img"
        format = "image"
        pre = {{ max_pixels = 10000 }}
        [[pipeline]]
        name = "badout"
        model = "{affine}"
        input = "t/badout/*"
        output = "t/out/badout"
        overflow = "latest"
        answer = {{ kind = "vad" }}
        [[pipeline]]
        name = "remote"
        model = "models/test/absent.onnx"
        input = "t/remote/*"
        output = "t/out/remote"
        offload = {{ to = "nowhere/server", when = "missing_model", timeout_ms = 1000 }}
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "t/llm/cmd"
        output = "t/llm/out"
        max_generations = 2
        max_prompt_chars = 200
        [[pipeline.tool]]
        name = "ping"
        description = "Check that the robot answers."
        schema = "tests/data/tools/ping.json"
        key = "t/robot/ping"
        rate_per_s = 0.001
        "#,
        test_model("faulty.onnx"),
        test_model("detect.onnx"),
        llm_dir()
    )
}

/// The client side of the lab: every reply of the tensor pipelines and
/// every generation message, and the codes seen per trigger.
struct Lab {
    c: zenoh::Session,
    tensors: Sub,
    gens: Sub,
    /// code expected -> what its trigger got.
    got: BTreeMap<&'static str, String>,
}

fn x(v: f32) -> Tensor {
    f32_tensor("x", &[1, 4], &[v; 4])
}

fn slow(id: &str) -> Vec<u8> {
    request(&[f32_tensor("x", &[1, 256], &[0.1; 256])], id, 0)
}

impl Lab {
    fn note(&mut self, code: &'static str, got: Option<&str>) {
        self.got.insert(code, got.unwrap_or("no error").to_string());
    }

    /// The next tensor reply satisfying `pred`.
    async fn reply(&self, what: &str, pred: impl Fn(&Reply) -> bool) -> Reply {
        loop {
            let r = try_recv(&self.tensors, WAIT)
                .await
                .unwrap_or_else(|| panic!("no reply for {what}"));
            if pred(&r) {
                return r;
            }
        }
    }

    /// Sends one tensor request and notes the code of its reply (matched
    /// by request id, or by stream for messages too broken to carry one).
    async fn one(&mut self, code: &'static str, key: &str, payload: Vec<u8>, id: Option<&str>) {
        let stream = key.rsplit('/').next().unwrap().to_string();
        put(&self.c, key, payload).await;
        let r = self
            .reply(code, |r| match id {
                Some(id) => r.id().as_deref() == Some(id),
                None => matches!(r, Reply::Error { json, .. } if json["stream"] == stream),
            })
            .await;
        self.note(code, r.code());
    }

    /// Sends one image message (payload and attachment) and notes its code.
    async fn frame(&mut self, code: &'static str, payload: Vec<u8>, att: &str, id: &str) {
        self.c
            .put("t/img/a", payload)
            .attachment(format!("id={id};{att}").into_bytes())
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .await
            .unwrap();
        let r = self.reply(code, |r| r.id().as_deref() == Some(id)).await;
        self.note(code, r.code());
    }

    /// Sends a burst and notes `code` if any reply carried it.
    async fn burst(
        &mut self,
        code: &'static str,
        key: &str,
        ids: &[String],
        make: fn(&str) -> Vec<u8>,
    ) {
        for id in ids {
            put(&self.c, key, make(id)).await;
        }
        let mut codes = HashMap::new();
        while codes.len() < ids.len() {
            let r = self
                .reply(code, |r| r.id().is_some_and(|i| ids.contains(&i)))
                .await;
            codes.insert(r.id().unwrap(), r.code().map(str::to_string));
        }
        let hit = codes.values().any(|c| c.as_deref() == Some(code));
        self.note(
            code,
            if hit {
                Some(code)
            } else {
                codes.values().flatten().next().map(String::as_str)
            },
        );
    }

    /// The next generation message (on the error key or a token topic) about `id`.
    async fn gen_msg(&self, id: &str, pred: impl Fn(&str, &Value) -> bool) -> Value {
        loop {
            let s = tokio::time::timeout(Duration::from_secs(120), self.gens.recv_async())
                .await
                .unwrap_or_else(|_| panic!("no generation message for {id}"))
                .unwrap();
            let v: Value = serde_json::from_slice(&s.payload().to_bytes()).unwrap();
            if v["id"] == id && pred(s.key_expr().as_str(), &v) {
                return v;
            }
        }
    }

    /// Sends a command and notes the code on the error key for its id.
    async fn command(&mut self, code: &'static str, id: Option<&str>, body: String) {
        put(&self.c, "t/llm/cmd", body.into_bytes()).await;
        let want = id.map_or(Value::Null, Value::from);
        let v = loop {
            let v = self.gen_msg_any().await;
            if v.0 == "t/llm/out/error" && v.1["id"] == want {
                break v.1;
            }
        };
        self.note(code, v["code"].as_str());
    }

    async fn gen_msg_any(&self) -> (String, Value) {
        let s = tokio::time::timeout(Duration::from_secs(120), self.gens.recv_async())
            .await
            .expect("a generation message")
            .unwrap();
        let v = serde_json::from_slice(&s.payload().to_bytes()).unwrap();
        (s.key_expr().as_str().to_string(), v)
    }
}

async fn tensor_codes(lab: &mut Lab) {
    let valid = || request(&[x(1.0)], "valid", 0);
    lab.one("empty_payload", "t/affine/empty", Vec::new(), None)
        .await;
    lab.one("payload_too_large", "t/affine/large", vec![7; 70_000], None)
        .await;
    lab.one(
        "bad_payload",
        "t/affine/garbage",
        b"\x07garbage".to_vec(),
        None,
    )
    .await;
    let z = f32_tensor("z", &[1, 4], &[0.0; 4]);
    lab.one(
        "missing_tensor",
        "t/affine/a",
        request(std::slice::from_ref(&z), "mt", 0),
        Some("mt"),
    )
    .await;
    lab.one(
        "unexpected_tensor",
        "t/affine/a",
        request(&[x(0.0), z], "ut", 0),
        Some("ut"),
    )
    .await;
    let i64_x = Tensor {
        name: "x".into(),
        dtype: Dtype::I64,
        shape: vec![1, 4],
        data: vec![0u8; 32].into(),
    };
    lab.one(
        "wrong_dtype",
        "t/affine/a",
        request(&[i64_x], "wd", 0),
        Some("wd"),
    )
    .await;
    let x5 = f32_tensor("x", &[1, 5], &[0.0; 5]);
    lab.one(
        "wrong_shape",
        "t/affine/a",
        request(&[x5], "ws", 0),
        Some("ws"),
    )
    .await;
    let big = f32_tensor("x", &[2048, 4], &[0.0; 8192]);
    lab.one(
        "too_many_elements",
        "t/affine/a",
        request(&[big], "te", 0),
        Some("te"),
    )
    .await;
    lab.one("bad_stream", "t/affine/error", valid(), None).await;
    let nan = f32_tensor("x", &[1, 4], &[1.0, f32::NAN, 1.0, 1.0]);
    lab.one(
        "non_finite",
        "t/affine/a",
        request(&[nan], "nan", 0),
        Some("nan"),
    )
    .await;
    let fault = "fault:panic:run";
    lab.one(
        "internal_error",
        "t/affine/a",
        request(&[x(1.0)], fault, 0),
        Some(fault),
    )
    .await;
    // No local model and its offload target is not on the fabric.
    lab.one(
        "offload_unavailable",
        "t/remote/a",
        request(&[x(1.0)], "ou", 0),
        Some("ou"),
    )
    .await;
    let rows: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let three = request(&[f32_tensor("x", &[3, 4], &rows)], "if", 0);
    lab.one("inference_failed", "t/faulty", three, Some("if"))
        .await;
    lab.frame(
        "bad_image",
        vec![0; 100],
        "encoding=rgb8;width=10;height=10",
        "bi",
    )
    .await;
    let big = vec![0; 128 * 96 * 3];
    lab.frame(
        "image_too_large",
        big,
        "encoding=rgb8;width=128;height=96",
        "itl",
    )
    .await;
    lab.frame(
        "corrupt_image",
        b"not a jpeg".to_vec(),
        "encoding=jpeg",
        "ci",
    )
    .await;
    lab.one(
        "bad_output",
        "t/badout/a",
        request(&[x(1.0)], "bo", 0),
        Some("bo"),
    )
    .await;
    // The service still answers after all of that.
    lab.one("(prediction)", "t/affine/a", valid(), Some("valid"))
        .await;

    let ids = |tag: &str, n: usize| (0..n).map(|i| format!("{tag}{i}")).collect::<Vec<_>>();
    lab.burst("superseded", "t/latest/a", &ids("sup", 30), slow)
        .await;
    // Stream `a` is still tracked (max_streams = 1): a second stream is refused.
    lab.one("too_many_streams", "t/latest/b", slow("tms"), Some("tms"))
        .await;
    lab.burst("busy", "t/full", &ids("busy", 20), slow).await;
    lab.burst("deadline_exceeded", "t/expire", &ids("dl", 20), slow)
        .await;
}

async fn generation_codes(lab: &mut Lab) {
    lab.command("bad_command", None, "{not json".into()).await;
    lab.command(
        "empty_prompt",
        Some("e"),
        json!({"id": "e", "prompt": ""}).to_string(),
    )
    .await;
    let long = json!({"id": "l", "prompt": "word ".repeat(100)}).to_string();
    lab.command("prompt_too_long", Some("l"), long).await;
    let hot = json!({"id": "t", "prompt": "x", "temperature": 99}).to_string();
    lab.command("bad_parameter", Some("t"), hot).await;
    let story = |id: &str| {
        json!({"id": id, "prompt": "Tell me a long story about a robot.", "max_tokens": 256})
            .to_string()
    };
    put(&lab.c, "t/llm/cmd", story("long1").into_bytes()).await;
    lab.gen_msg("long1", |k, _| k == "t/llm/out/long1").await;
    lab.command("duplicate_id", Some("long1"), story("long1"))
        .await;
    // max_generations = 2: long1 and long2 run, a third is refused.
    put(&lab.c, "t/llm/cmd", story("long2").into_bytes()).await;
    lab.command("too_many_generations", Some("third"), story("third"))
        .await;
    for id in ["long1", "long2"] {
        put(
            &lab.c,
            "t/llm/cmd/cancel",
            json!({"id": id}).to_string().into_bytes(),
        )
        .await;
        lab.gen_msg(id, |_, v| v["done"] == true).await;
    }
    tool_codes(lab).await;
}

/// The tool codes, with the shortest call there is (`ping`, no arguments).
async fn tool_codes(lab: &mut Lab) {
    let bad = json!({"id": "tb", "prompt": "x", "tools": ["fly"]}).to_string();
    lab.command("bad_tool_request", Some("tb"), bad).await;
    let ping = |id: &str, max_tokens: u32| {
        json!({"id": id, "prompt": "Ping the robot.", "tools": ["ping"],
               "tool_choice": "required", "max_tokens": max_tokens})
        .to_string()
    };
    lab.command("tool_call_incomplete", Some("tc"), ping("tc", 2))
        .await;
    // rate_per_s = 0.001, burst 1: the first call goes out, the next is refused.
    put(&lab.c, "t/llm/cmd", ping("p0", 48).into_bytes()).await;
    let first = lab.gen_msg("p0", |_, v| v["done"] == true).await;
    assert_eq!(first["finish_reason"], "tool_call", "{first}");
    lab.command("tool_call_refused", Some("p1"), ping("p1", 48))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_is_triggered_over_zenoh_and_received() {
    let (daemon, port) = start(&lab_config()).await;
    let c = client(port).await;
    let tensors = subscribe(&c, "t/out/**").await;
    let gens = subscribe(&c, "t/llm/out/**").await;
    llm_ready(&c).await;
    for (input, output) in [
        ("t/affine/a", "t/out/affine/a"),
        ("t/faulty", "t/out/faulty"),
        ("t/img/a", "t/out/img/a"),
        ("t/badout/a", "t/out/badout/a"),
        ("t/latest/a", "t/out/latest/a"),
        ("t/full", "t/out/full"),
        ("t/expire", "t/out/expire"),
        ("t/drain", "t/out/drain"),
        ("t/remote/a", "t/out/remote/error"),
        ("t/llm/cmd", "t/llm/out/error"),
    ] {
        wired(&daemon, &c, input, output).await;
    }
    while gens.try_recv().ok().flatten().is_some() {}
    let mut lab = Lab {
        c,
        tensors,
        gens,
        got: BTreeMap::new(),
    };
    tensor_codes(&mut lab).await;
    generation_codes(&mut lab).await;

    // Last: a queue still full when the drain timeout (zero) ends.
    let drain: Vec<String> = (0..150).map(|i| format!("sd{i}")).collect();
    for id in &drain {
        put(&lab.c, "t/drain", slow(id)).await;
    }
    let di = daemon
        .stats()
        .iter()
        .position(|s| s.name == "drain")
        .unwrap();
    for _ in 0..1000 {
        if daemon.stats()[di].received >= drain.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.shutdown(Duration::ZERO).await;
    let mut shut = false;
    for _ in 0..drain.len() {
        let Some(r) = try_recv(&lab.tensors, WAIT).await else {
            break;
        };
        shut |= r.code() == Some("shutting_down");
        if shut {
            break;
        }
    }
    lab.note("shutting_down", shut.then_some("shutting_down"));

    // slow_consumer: a reader that stops reading a long generation's stream.
    let (d2, port2) = start(&stall::config()).await;
    let run = stall::run(&d2, port2, 256).await;
    let code = run.fin["error"]["code"].as_str().map(str::to_string);
    lab.note(
        "slow_consumer",
        Some(
            code.as_deref()
                .unwrap_or(run.fin["finish_reason"].as_str().unwrap_or("?")),
        ),
    );
    d2.shutdown(Duration::from_secs(5)).await;

    assert_eq!(lab.got.remove("(prediction)").as_deref(), Some("no error"));
    let mut problems = Vec::new();
    for code in TRIGGERED {
        match lab.got.get(code) {
            Some(got) if got == code => {}
            Some(got) => problems.push(format!("{code}: the trigger got {got}")),
            None => problems.push(format!("{code}: not triggered")),
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_far_over_the_limit_is_dropped_by_zenoh_and_service_continues() {
    let affine = test_model("affine.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [limits]
        max_payload_bytes = 4096
        [[pipeline]]
        name = "affine"
        model = "{affine}"
        input = "t/affine/*"
        output = "t/out/affine"
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    let good = || request(&[f32_tensor("x", &[1, 4], &[1.0; 4])], "good", 1);
    until_served(&c, "t/affine/a", &good(), &sub).await;
    let before = daemon.stats()[0].received;
    // Just over the limit: reaches ingress, answered payload_too_large.
    put(&c, "t/affine/a", vec![7u8; 8 << 10]).await;
    assert_eq!(
        recv(&sub).await.code(),
        Some(ErrorCode::PayloadTooLarge.code())
    );
    // Far over it (4 MiB): zenoh refuses to reassemble it, so the callback
    // never sees it; the link stays up and the next request is served.
    put(&c, "t/affine/a", vec![7u8; 4 << 20]).await;
    put(&c, "t/affine/a", good()).await;
    let r = recv(&sub).await;
    assert_eq!(f32_values(r.tensor("y")).unwrap(), vec![3.0; 4], "{r:?}");
    assert_eq!(
        daemon.stats()[0].received,
        before + 2,
        "the 4 MiB message never reached ingress"
    );
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_over_max_generations_or_payload_limit_is_refused_with_its_id() {
    let llm = repo().join("models/llm/fetched");
    assert!(llm.join("model.onnx").exists(), "run `make setup`");
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "t/llm/cmd"
        output = "t/llm/out"
        max_generations = 1
        [limits]
        max_payload_bytes = 2048
        "#,
        llm.display()
    ))
    .await;
    let c = client(port).await;
    llm_ready(&c).await;
    let errors = subscribe(&c, "t/llm/out/error").await;
    wired(&daemon, &c, "t/llm/cmd", "t/llm/out/error").await;
    let refused_before = daemon.generation_stats()[0].error(ErrorCode::TooManyGenerations);
    let long =
        json!({"id": "first", "prompt": "Tell me a long story about a robot.", "max_tokens": 200});
    let second = json!({"id": "second", "prompt": "Hi", "max_tokens": 4});
    put(&c, "t/llm/cmd", long.to_string().into_bytes()).await;
    put(&c, "t/llm/cmd", second.to_string().into_bytes()).await;
    let s = tokio::time::timeout(WAIT, errors.recv_async())
        .await
        .expect("an error for the second command")
        .unwrap();
    let e: Value = serde_json::from_slice(&s.payload().to_bytes()).unwrap();
    assert_eq!(e["code"], ErrorCode::TooManyGenerations.code(), "{e}");
    assert_eq!(e["id"], "second", "{e}");
    assert_eq!(daemon.live_generations()[0], 1, "the first one still runs");
    // `[limits] max_payload_bytes` bounds commands too.
    let big = json!({"id": "big", "prompt": "x".repeat(3000)});
    put(&c, "t/llm/cmd", big.to_string().into_bytes()).await;
    let s = tokio::time::timeout(WAIT, errors.recv_async())
        .await
        .expect("an error for the oversized command")
        .unwrap();
    let e: Value = serde_json::from_slice(&s.payload().to_bytes()).unwrap();
    assert_eq!(e["code"], ErrorCode::PayloadTooLarge.code(), "{e}");
    assert_eq!(e["id"], "big", "{e}");
    let st = &daemon.generation_stats()[0];
    assert_eq!(
        st.error(ErrorCode::TooManyGenerations),
        refused_before + 1,
        "{st:?}"
    );
    daemon.shutdown(Duration::from_secs(1)).await;
}
