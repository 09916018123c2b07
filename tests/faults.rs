//! Faults over real zenoh with real models: a model that fails at run time on
//! one input shape costs only that request (`inference_failed`) and the worker
//! keeps serving; a shutdown with work still queued answers every queued
//! request `shutting_down`; a daemon killed with SIGKILL restarts clean on the
//! same port (no state file, no stale lock); a slow subscriber on the output
//! does not stall the worker (predictions use `CongestionControl::Drop`).

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use reflexd::error::ErrorCode;
use reflexd::tensor::{f32_tensor, f32_values};

fn rows(n: usize, id: &str, seq: u64) -> Vec<u8> {
    let v: Vec<f32> = (0..n * 4).map(|i| i as f32).collect();
    request(&[f32_tensor("x", &[n, 4], &v)], id, seq)
}

/// Collects replies until every id in `ids` has one; panics on a second
/// outcome for the same id.
async fn collect_ids(sub: &Sub, n: usize) -> HashMap<String, Reply> {
    let mut out = HashMap::new();
    while out.len() < n {
        let r = try_recv(sub, WAIT)
            .await
            .unwrap_or_else(|| panic!("only {} of {n} replies arrived", out.len()));
        let id = r.id().expect("every reply carries its request id");
        assert!(out.insert(id.clone(), r).is_none(), "two outcomes for {id}");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_fault_fails_only_that_request_and_the_worker_continues() {
    let faulty = test_model("faulty.onnx");
    // One worker: if a fault killed or wedged it, nothing after would be served.
    let (daemon, port) = start(&format!(
        r#"
        [runtime]
        workers = 1
        [[pipeline]]
        name = "faulty"
        model = "{faulty}"
        input = "t/faulty"
        output = "t/out/faulty"
        queue_capacity = 64
        deadline_ms = 60000
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    until_served(&c, "t/faulty", &rows(1, "probe", 0), &sub).await;

    // Alternate good (N = 1, 2) and faulting (N = 3, 5) batches.
    let plan: Vec<(usize, bool)> = (0..12)
        .map(|i| match i % 4 {
            0 => (1, true),
            1 => (3, false),
            2 => (2, true),
            _ => (5, false),
        })
        .collect();
    for (i, &(n, _)) in plan.iter().enumerate() {
        put(&c, "t/faulty", rows(n, &format!("r{i}"), i as u64)).await;
    }
    let replies = collect_ids(&sub, plan.len()).await;
    for (i, &(n, good)) in plan.iter().enumerate() {
        let r = &replies[&format!("r{i}")];
        if good {
            let want: Vec<f32> = (0..n * 4).map(|k| k as f32).collect();
            assert_eq!(f32_values(r.tensor("y")).unwrap(), want, "r{i} (N={n})");
        } else {
            assert_eq!(
                r.code(),
                Some(ErrorCode::InferenceFailed.code()),
                "r{i}: {r:?}"
            );
            let Reply::Error { json, .. } = r else {
                unreachable!()
            };
            assert_eq!(json["seq"], i as u64, "the error names the request");
            assert!(
                json["message"].as_str().unwrap().contains("Gather"),
                "the ORT reason is passed on: {json}"
            );
        }
    }
    let st = &daemon.stats()[0];
    assert_eq!(st.error(ErrorCode::InferenceFailed), 6);
    assert_eq!(st.ok, 1 + 6, "probe + good requests: {st:?}");
    assert_eq!(st.finished(), st.received);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_queued_request_shutting_down() {
    let slow = test_model("slow.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [runtime]
        workers = 1
        [[pipeline]]
        name = "bulk"
        model = "{slow}"
        input = "t/bulk"
        output = "t/out/bulk"
        queue_capacity = 200
        deadline_ms = 60000
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    let req = |id: &str| request(&[f32_tensor("x", &[1, 256], &[0.1; 256])], id, 0);
    until_served(&c, "t/bulk", &req("probe"), &sub).await;
    const N: usize = 150;
    for i in 0..N {
        put(&c, "t/bulk", req(&format!("q{i}"))).await;
    }
    // Wait until the daemon has taken in the whole burst (counted, not timed).
    for _ in 0..500 {
        if daemon.stats()[0].received as usize > N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(daemon.stats()[0].received as usize, N + 1);
    // A zero drain timeout: the worker stops after its current job and the
    // rest of the queue is answered, never dropped.
    daemon.shutdown(Duration::ZERO).await;
    let replies = collect_ids(&sub, N).await;
    let shut = replies
        .values()
        .filter(|r| r.code() == Some(ErrorCode::ShuttingDown.code()))
        .count();
    let served = replies.values().filter(|r| r.code().is_none()).count();
    assert_eq!(shut + served, N, "only predictions and shutting_down");
    assert!(
        shut > 0,
        "150 × ~4 ms of work cannot drain in zero time: {served} served"
    );
}

/// A run still going when the drain timeout ends is waited for: its answer
/// goes out before the session closes. `fault:slow:run` holds the run
/// (reflexd::fault::SLOW_RUN) while the daemon shuts down with no drain time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_progress_when_the_drain_ends_is_still_answered() {
    let affine = test_model("affine.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [runtime]
        workers = 1
        [[pipeline]]
        name = "affine"
        model = "{affine}"
        input = "t/affine"
        output = "t/out/affine"
        deadline_ms = 60000
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    let served_before = until_served(&c, "t/affine", &rows(1, "probe", 0), &sub).await as u64;
    put(&c, "t/affine", rows(1, "fault:slow:run", 1)).await;
    put(&c, "t/affine", rows(1, "behind", 2)).await;
    // Until the worker has taken the slow request (its queue wait is
    // recorded when it starts) and the next one is in (counted, not timed).
    let mut taken = false;
    for _ in 0..1000 {
        let st = &daemon.stats()[0];
        if st.received == served_before + 2 && st.queue_wait.count == served_before + 1 {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(taken, "{:?}", daemon.stats()[0]);
    daemon.shutdown(Duration::ZERO).await;
    let replies = collect_ids(&sub, 2).await;
    let slow = &replies["fault:slow:run"];
    assert_eq!(
        slow.code(),
        None,
        "the run in progress is answered: {}",
        slow.brief()
    );
    let behind = replies["behind"].code();
    assert!(
        behind.is_none() || behind == Some(ErrorCode::ShuttingDown.code()),
        "{behind:?}"
    );
}

fn daemon_config(dir: &std::path::Path, port: u16) -> String {
    let p = dir.join("reflexd.toml");
    std::fs::write(
        &p,
        format!(
            "[zenoh]\nlisten = [\"tcp/127.0.0.1:{port}\"]\nscouting = false\n\
             [[pipeline]]\nname = \"affine\"\nmodel = \"{}\"\ninput = \"t/affine/*\"\noutput = \"t/out/affine\"\n",
            test_model("affine.onnx")
        ),
    )
    .unwrap();
    p.display().to_string()
}

fn spawn_daemon(cfg: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_reflexd"))
        .args(["run", "-c", cfg])
        .env("REFLEXD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn reflexd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_restart_on_the_same_port_serves_again() {
    let dir = std::env::temp_dir().join(format!("reflexd-faults-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let cfg = daemon_config(&dir, port);
    let good = || request(&[f32_tensor("x", &[1, 4], &[1.0; 4])], "k", 0);
    for round in 0..2 {
        let mut child = spawn_daemon(&cfg);
        let c = client(port).await;
        let sub = subscribe(&c, "t/out/**").await;
        until_served(&c, "t/affine/a", &good(), &sub).await;
        put(&c, "t/affine/a", good()).await;
        let r = recv(&sub).await;
        assert_eq!(
            f32_values(r.tensor("y")).unwrap(),
            vec![3.0; 4],
            "round {round}"
        );
        // SIGKILL: no teardown at all, the worst case for leftover state.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed, not exited");
        c.close().await.unwrap();
    }
    // Nothing was left behind in the working directory of the config either.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("reflexd.toml")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_does_not_stall_the_worker() {
    let affine = test_model("affine.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [runtime]
        workers = 1
        [[pipeline]]
        name = "affine"
        model = "{affine}"
        input = "t/affine/*"
        output = "t/out/affine"
        queue_capacity = 4096
        deadline_ms = 60000
        "#
    ))
    .await;
    // The slow consumer: a second session whose callback sleeps per sample,
    // so its zenoh receive path backs up.
    let slow = client(port).await;
    let _slow_sub = slow
        .declare_subscriber("t/out/**")
        .callback(|_| std::thread::sleep(Duration::from_millis(50)))
        .await
        .unwrap();
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    let big: Vec<f32> = vec![0.5; 16 * 1024];
    let req = |i: usize| {
        request(
            &[f32_tensor("x", &[4 * 1024, 4], &big)],
            &format!("s{i}"),
            0,
        )
    };
    until_served(&c, "t/affine/a", &req(0), &sub).await;
    // 1000 × 64 KiB predictions to a consumer taking 50 ms each (50 s of
    // its time): a blocking publisher would stall the worker after the
    // first few megabytes filled the transmission queue.
    const N: usize = 1000;
    for i in 1..=N {
        put(&c, "t/affine/a", req(i)).await;
    }
    // The worker finishes every request (counted by the daemon itself).
    for _ in 0..3000 {
        let st = &daemon.stats()[0];
        if st.finished() as usize > N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = &daemon.stats()[0];
    assert_eq!(st.finished(), st.received, "{st:?}");
    assert_eq!(st.ok as usize, N + 1, "every request ran: {st:?}");
    daemon.shutdown(Duration::from_secs(5)).await;
}
