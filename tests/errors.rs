//! The error catalogue as a contract: every code in `ErrorCode::ALL` is
//! documented in `docs/errors.md` and exercised by at least one integration
//! test over real zenoh; plus the cases no other test file covers: a
//! generation refused with `too_many_generations`, and a message far over the
//! payload limit dropped by zenoh's bounded reassembly before ingress.

mod common;

use std::time::Duration;

use common::*;
use reflexd::error::ErrorCode;
use reflexd::tensor::{f32_tensor, f32_values};
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

#[test]
fn every_error_code_is_documented_and_exercised_by_a_test() {
    let doc = read("docs/errors.md");
    let documented = documented_codes(&doc);
    // Integration tests, without the shared helpers and without this file's
    // own catalogue check (which names no code literally).
    let mut tests = String::new();
    for e in std::fs::read_dir(repo().join("tests")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "rs") {
            tests.push_str(&std::fs::read_to_string(&p).unwrap());
        }
    }
    let mut problems = Vec::new();
    for c in ErrorCode::ALL {
        let code = c.code();
        if !documented.iter().any(|d| d == code) {
            problems.push(format!("`{code}` has no row in docs/errors.md"));
        }
        let variant = format!("ErrorCode::{c:?}");
        let literal = format!("\"{code}\"");
        if !tests.contains(&format!("{variant},"))
            && !tests.contains(&format!("{variant}."))
            && !tests.contains(&format!("{variant})"))
            && !tests.contains(&literal)
        {
            problems.push(format!("`{code}` is not exercised by any test in tests/"));
        }
    }
    for d in &documented {
        if !ErrorCode::ALL.iter().any(|c| c.code() == d) {
            problems.push(format!("docs/errors.md documents unknown code `{d}`"));
        }
    }
    assert!(documented.len() >= ErrorCode::ALL.len());
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
    let all = subscribe(&c, "t/llm/out/**").await;
    // Probe until the command subscriber is known (one-token answers).
    let mut ready = false;
    for i in 0..50 {
        let cmd = json!({"id": format!("probe{i}"), "prompt": "Hi", "max_tokens": 1});
        put(&c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
        if tokio::time::timeout(Duration::from_millis(500), all.recv_async())
            .await
            .is_ok()
        {
            ready = true;
            break;
        }
    }
    assert!(ready, "daemon never answered a command");
    // Let the probes finish so the single slot is free.
    for _ in 0..200 {
        if daemon.live_generations()[0] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    while all.try_recv().ok().flatten().is_some() {}
    let errors = subscribe(&c, "t/llm/out/error").await;
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
    assert_eq!(st.error(ErrorCode::TooManyGenerations), 1, "{st:?}");
    daemon.shutdown(Duration::from_secs(1)).await;
}
