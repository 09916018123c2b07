//! Panic containment (issue #11, defect 4), through the test-only fault
//! injection of the `fault-injection` cargo feature (enabled for every
//! test by the self dev-dependency in Cargo.toml): a request whose id is
//! `fault:panic:<stage>` panics inside that job (`run`, `encode` for tensor
//! pipelines; `sample`, `detok` for generations). That request is answered
//! `internal_error`, counted in the pipeline's errors, its stream state is
//! reset, and the single worker goes on serving every pipeline. A request
//! `fault:die` kills the worker thread outside the per-job guard: the real
//! binary under a test-owned systemd notify socket stops its watchdog pings
//! and exits non-zero, so systemd restarts it.

mod common;

use std::time::Duration;

use common::proc::{NotifySocket, Proc, Spawn, has_line, tmpdir, zenoh_header};
use common::*;
use reflexd::tensor::{f32_tensor, f32_values};
use serde_json::{Value, json};

fn config() -> String {
    format!(
        r#"
        [[pipeline]]
        name = "acc"
        model = "{}"
        input = "t/acc/*"
        output = "t/acc_out"
        overflow = "latest"
        state = [{{ input = "state", output = "state_out" }}]
        [[pipeline]]
        name = "affine"
        model = "{}"
        input = "t/affine/*"
        output = "t/affine_out"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "t/llm/cmd"
        output = "t/llm/out"
        max_tokens = 64
        "#,
        test_model("acc.onnx"),
        test_model("affine.onnx"),
        llm_dir()
    )
}

fn ones(id: &str) -> Vec<u8> {
    request(&[f32_tensor("x", &[1, 4], &[1.0; 4])], id, 0)
}

/// One request to the stateful pipeline on stream `stream`: its `y` (the
/// accumulated sum) or its error code.
async fn acc(c: &zenoh::Session, sub: &Sub, stream: &str, id: &str) -> Result<Vec<f32>, String> {
    put(c, &format!("t/acc/{stream}"), ones(id)).await;
    let r = recv(sub).await;
    assert_eq!(r.id().as_deref(), Some(id), "{r:?}");
    match r.code() {
        Some(code) => Err(code.to_string()),
        None => Ok(f32_values(r.tensor("y")).unwrap()),
    }
}

/// The worker still serves the other tensor pipeline and generations.
async fn still_serving(c: &zenoh::Session, affine: &Sub, gen_sub: &Sub, tag: &str) {
    put(c, "t/affine/a", ones(&format!("affine-{tag}"))).await;
    let r = recv(affine).await;
    assert_eq!(
        f32_values(r.tensor("y")).unwrap(),
        vec![3.0; 4],
        "{tag}: {r:?}"
    );
    let id = format!("gen-{tag}");
    let cmd = json!({"id": id, "prompt": "Hi", "max_tokens": 2});
    put(c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
    let fin = final_of(gen_sub, &id).await;
    assert!(
        matches!(fin["finish_reason"].as_str(), Some("stop" | "length")),
        "{tag}: {fin}"
    );
}

/// Waits for the final message of generation `id`; errors on the error key
/// are returned as they are.
async fn final_of(sub: &Sub, id: &str) -> Value {
    loop {
        let s = tokio::time::timeout(Duration::from_secs(120), sub.recv_async())
            .await
            .unwrap_or_else(|_| panic!("no final message or error for {id}"))
            .unwrap();
        let v: Value = serde_json::from_slice(&s.payload().to_bytes()).unwrap();
        let on_error_key = s.key_expr().as_str() == "t/llm/out/error";
        if v["id"] == id && (v["done"] == true || on_error_key) {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_job_fails_only_that_request_and_the_worker_goes_on() {
    let (daemon, port) = start(&config()).await;
    let c = client(port).await;
    let acc_sub = subscribe(&c, "t/acc_out/**").await;
    let affine = subscribe(&c, "t/affine_out/**").await;
    let gen_sub = subscribe(&c, "t/llm/out/**").await;
    llm_ready(&c).await;
    wired(&daemon, &c, "t/acc/s", "t/acc_out/s").await;
    wired(&daemon, &c, "t/affine/a", "t/affine_out/a").await;
    wired(&daemon, &c, "t/llm/cmd", "t/llm/out/error").await;
    while gen_sub.try_recv().ok().flatten().is_some() {}

    // Each stage on its own stream, so each starts from a fresh state.
    for stage in ["run", "encode"] {
        assert_eq!(
            acc(&c, &acc_sub, stage, &format!("{stage}-1")).await,
            Ok(vec![1.0; 4])
        );
        assert_eq!(
            acc(&c, &acc_sub, stage, &format!("{stage}-2")).await,
            Ok(vec![2.0; 4])
        );
        let fault = format!("fault:panic:{stage}");
        assert_eq!(
            acc(&c, &acc_sub, stage, &fault).await,
            Err("internal_error".to_string()),
            "{fault} on the stateful pipeline"
        );
        assert_eq!(
            acc(&c, &acc_sub, stage, &format!("{stage}-after")).await,
            Ok(vec![1.0; 4]),
            "the stream's state restarts after the panic in {stage}"
        );
        still_serving(&c, &affine, &gen_sub, stage).await;
    }
    for stage in ["sample", "detok"] {
        let id = format!("fault:panic:{stage}");
        let cmd = json!({"id": id, "prompt": "Hi", "max_tokens": 8});
        put(&c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
        let v = final_of(&gen_sub, &id).await;
        let code = v.get("code").or_else(|| v["error"].get("code"));
        assert_eq!(code, Some(&json!("internal_error")), "{id}: {v}");
        still_serving(&c, &affine, &gen_sub, stage).await;
    }
    assert_eq!(error_count(&daemon, "acc", "internal_error"), 2);
    assert_eq!(error_count(&daemon, "chat", "internal_error"), 2);
    assert_eq!(error_count(&daemon, "affine", "internal_error"), 0);
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// The watchdog interval the fake systemd asks for: pings every 100 ms.
const WATCHDOG_USEC: u64 = 200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_thread_stops_the_watchdog_and_the_daemon_exits_non_zero() {
    let dir = tmpdir("die");
    let mut notify = NotifySocket::bind(&dir);
    let port = free_port();
    let config = format!(
        "{}[service]\nstatus_interval_ms = 200\n[[pipeline]]\nname = \"affine\"\nmodel = \"{}\"\ninput = \"t/affine/*\"\noutput = \"t/affine_out\"\n",
        zenoh_header(port),
        test_model("affine.onnx")
    );
    let how = Spawn {
        notify: Some((&notify.path, WATCHDOG_USEC)),
        log: Some("info,zenoh=warn,ort=warn"),
    };
    let mut d = Proc::spawn(&dir, &config, how);
    let ping = |m: &str| has_line(m, "WATCHDOG=1");
    loop {
        let m = notify.next(Duration::from_secs(120)).await;
        let m = m.unwrap_or_else(|| panic!("no watchdog ping; stderr:\n{}", d.stderr()));
        if ping(&m) {
            break;
        }
    }
    let c = client(port).await;
    let sub = subscribe(&c, "t/affine_out/**").await;
    until_served(&c, "t/affine/a", &ones("probe"), &sub).await;

    put(&c, "t/affine/a", ones("fault:die")).await;
    // The daemon must say the worker is dead, then never ping again, then
    // exit. (Pings sent before it noticed are fine: noticing takes one
    // health check, whose timing depends on the machine.)
    let mut dead_said = false;
    let mut pings_after = 0;
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = d.exited() {
            break st;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "still running 60 s after fault:die; stderr:\n{}",
            d.stderr()
        );
        if let Some(m) = notify.next(Duration::from_millis(50)).await {
            if dead_said && ping(&m) {
                pings_after += 1;
            }
            dead_said |= m.lines().any(|l| l.starts_with("STATUS=DEAD"));
        }
    };
    while let Some(m) = notify.next(Duration::from_millis(100)).await {
        pings_after += usize::from(dead_said && ping(&m));
        dead_said |= m.lines().any(|l| l.starts_with("STATUS=DEAD"));
    }
    assert!(
        dead_said,
        "the daemon never reported the dead worker (STATUS=DEAD…); stderr:\n{}",
        d.stderr()
    );
    assert_eq!(
        pings_after,
        0,
        "watchdog pings after the dead worker was reported; stderr:\n{}",
        d.stderr()
    );
    assert!(
        !status.success(),
        "a daemon with a dead worker exits non-zero: {status:?}; stderr:\n{}",
        d.stderr()
    );
}
