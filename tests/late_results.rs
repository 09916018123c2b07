//! Late results are reported (issue #11, defect 6). A job that starts
//! within its budget but finishes after it (models/test/stall.onnx: a model
//! run of about a million loop iterations, ~1.6 s here, against a 250 ms
//! budget) is published with metadata `late = "true"` and counted in the
//! pipeline's `late` counter, not in `deadline_exceeded` (which counts jobs
//! dropped before they start); with `late = "drop"` it becomes a
//! `deadline_exceeded` error instead, still counted in `late`. On-time
//! predictions say `late = "false"`; generation final messages carry
//! `"late": true|false` too.

mod common;

use std::time::Duration;

use common::*;
use reflexd::tensor::f32_tensor;
use serde_json::{Value, json};

/// Loop iterations of the stall model: ~6× the budget on this machine.
const STALL_N: f32 = 1_000_000.0;
const BUDGET_MS: u64 = 250;

fn config(late: &str) -> String {
    format!(
        r#"
        [[pipeline]]
        name = "stall"
        model = "{}"
        input = "t/stall/*"
        output = "t/stall_out"
        deadline_ms = {BUDGET_MS}
        {late}
        [[pipeline]]
        name = "affine"
        model = "{}"
        input = "t/affine/*"
        output = "t/affine_out"
        "#,
        test_model("stall.onnx"),
        test_model("affine.onnx")
    )
}

fn stall_req(id: &str, n: f32) -> Vec<u8> {
    request(&[f32_tensor("n", &[1], &[n])], id, 0)
}

/// The `late` counter of a pipeline snapshot (`null` when missing).
fn late_count(daemon: &reflexd::Daemon, pipeline: &str) -> Value {
    pipeline_json(daemon, pipeline)["late"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prediction_finished_after_its_budget_is_flagged_and_counted_late() {
    let (daemon, port) = start(&config("")).await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/stall_out/**").await;
    let affine = subscribe(&c, "t/affine_out/**").await;
    wired(&daemon, &c, "t/stall/a", "t/stall_out/a").await;
    wired(&daemon, &c, "t/affine/a", "t/affine_out/a").await;

    put(&c, "t/stall/a", stall_req("long", STALL_N)).await;
    let long = recv(&sub).await;
    assert_eq!(long.id().as_deref(), Some("long"));
    assert!(
        matches!(long, Reply::Prediction { .. }),
        "published (late = \"publish\" is the default): {}",
        long.brief()
    );
    assert_eq!(
        (long.meta("late"), late_count(&daemon, "stall")),
        (Some("true"), json!(1)),
        "a run of {} µs against a {BUDGET_MS} ms budget must be flagged late and counted \
         (deadline_exceeded counts {}): {}",
        long.meta("inference_us").unwrap_or("?"),
        error_count(&daemon, "stall", "deadline_exceeded"),
        long.brief()
    );
    assert_eq!(
        error_count(&daemon, "stall", "deadline_exceeded"),
        0,
        "late is not counted as dropped"
    );

    put(&c, "t/stall/a", stall_req("short", 0.0)).await;
    assert_eq!(recv(&sub).await.meta("late"), Some("false"));
    put(
        &c,
        "t/affine/a",
        request(&[f32_tensor("x", &[1, 4], &[1.0; 4])], "quick", 0),
    )
    .await;
    let quick = recv(&affine).await;
    assert_eq!(
        quick.meta("late"),
        Some("false"),
        "an on-time prediction says late = false: {}",
        quick.brief()
    );
    assert_eq!(late_count(&daemon, "stall"), json!(1));
    assert_eq!(late_count(&daemon, "affine"), json!(0));
    let st = &daemon.stats()[0];
    assert_eq!(st.ok, 2, "{st:?}");
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_drop_turns_a_late_result_into_deadline_exceeded_still_counted_late() {
    let (daemon, port) = start(&config("late = \"drop\"")).await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/stall_out/**").await;
    wired(&daemon, &c, "t/stall/a", "t/stall_out/a").await;
    put(&c, "t/stall/a", stall_req("long", STALL_N)).await;
    let r = recv(&sub).await;
    assert_eq!(r.id().as_deref(), Some("long"));
    assert_eq!(r.code(), Some("deadline_exceeded"), "{r:?}");
    assert_eq!(late_count(&daemon, "stall"), json!(1));
    let st = &daemon.stats()[0];
    assert_eq!(st.ok, 0, "{st:?}");
    assert_eq!(st.finished(), st.received, "one outcome, counted: {st:?}");
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_final_messages_say_whether_they_were_late() {
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "t/llm/cmd"
        output = "t/llm/out"
        max_tokens = 256
        "#,
        llm_dir()
    ))
    .await;
    let c = client(port).await;
    llm_ready(&c).await;
    let sub = subscribe(&c, "t/llm/out/**").await;
    wired(&daemon, &c, "t/llm/cmd", "t/llm/out/x").await;
    let final_of = |id: &'static str| {
        let sub = &sub;
        async move {
            loop {
                let s = tokio::time::timeout(Duration::from_secs(120), sub.recv_async())
                    .await
                    .unwrap_or_else(|_| panic!("no final message for {id}"))
                    .unwrap();
                let v: Value = serde_json::from_slice(&s.payload().to_bytes()).unwrap();
                if v["id"] == id && v["done"] == true {
                    return v;
                }
            }
        }
    };
    let cmd = json!({"id": "ontime", "prompt": "Hi", "max_tokens": 4, "deadline_ms": 600000});
    put(&c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
    let fin = final_of("ontime").await;
    assert_eq!(fin["late"], json!(false), "{fin}");
    // Cut by its budget: the final message is published once it passed.
    let cmd = json!({"id": "cut", "prompt": "Tell me a long story about a robot.", "max_tokens": 256, "deadline_ms": 300});
    put(&c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
    let fin = final_of("cut").await;
    assert_eq!(fin["finish_reason"], "deadline", "{fin}");
    assert_eq!(fin["late"], json!(true), "{fin}");
    daemon.shutdown(Duration::from_secs(5)).await;
}
