//! Scheduling behaviour over real zenoh with real (slow) models: the highest
//! level overtakes a flooded lower level, latest-wins replacements are
//! reported and counted, deadline expiry is reported, full queues answer
//! busy, and every accepted request ends in exactly one outcome.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use reflexd::error::ErrorCode;
use reflexd::tensor::f32_tensor;

fn slow_req(id: &str, seq: u64) -> Vec<u8> {
    request(&[f32_tensor("x", &[1, 256], &[0.1; 256])], id, seq)
}

fn fast_req(id: &str, seq: u64) -> Vec<u8> {
    request(&[f32_tensor("x", &[1, 4], &[1.0; 4])], id, seq)
}

/// (recv_order, run_order) of a served request.
fn order_of(replies: &HashMap<String, Reply>, id: &str) -> (u64, u64) {
    let r = &replies[id];
    let get = |k: &str| -> u64 {
        r.meta(k)
            .unwrap_or_else(|| panic!("{id} was not served: {r:?}"))
            .parse()
            .unwrap()
    };
    (get("recv_order"), get("run_order"))
}

/// Collects `n` replies, keyed by request id.
async fn collect(sub: &Sub, n: usize) -> HashMap<String, Reply> {
    let mut out = HashMap::new();
    while out.len() < n {
        let r = try_recv(sub, WAIT).await.unwrap_or_else(|| {
            panic!(
                "only {} of {n} replies arrived: {:?}",
                out.len(),
                out.keys().collect::<Vec<_>>()
            )
        });
        let id = r.id().expect("every reply carries its request id");
        assert!(
            out.insert(id.clone(), r).is_none(),
            "two outcomes for request {id}"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_level_overtakes_flooded_low_level() {
    let slow = test_model("slow.onnx");
    let fast = test_model("affine.onnx");
    // One worker serves both levels, so order is decided by the scheduler
    // alone.
    let (daemon, port) = start(&format!(
        r#"
        [[level]]
        name = "high"
        [[level]]
        name = "low"
        [[pipeline]]
        name = "bulk"
        model = "{slow}"
        input = "t/bulk"
        output = "t/out/bulk"
        level = "low"
        queue_capacity = 64
        deadline_ms = 60000
        [[pipeline]]
        name = "urgent"
        model = "{fast}"
        input = "t/urgent"
        output = "t/out/urgent"
        level = "high"
        queue_capacity = 64
        deadline_ms = 60000
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    until_served(&c, "t/bulk", &slow_req("probe-bulk", 0), &sub).await;
    until_served(&c, "t/urgent", &fast_req("probe-urgent", 0), &sub).await;

    const LOW: usize = 40;
    const HIGH: usize = 5;
    for i in 0..LOW {
        put(&c, "t/bulk", slow_req(&format!("low-{i}"), i as u64)).await;
    }
    // Give the flood time to queue up behind the first low job.
    tokio::time::sleep(Duration::from_millis(30)).await;
    for i in 0..HIGH {
        put(&c, "t/urgent", fast_req(&format!("high-{i}"), i as u64)).await;
    }
    let replies = collect(&sub, LOW + HIGH).await;
    let order = |id: &str| order_of(&replies, id);
    let high: Vec<(u64, u64)> = (0..HIGH).map(|i| order(&format!("high-{i}"))).collect();
    let low: Vec<(u64, u64)> = (0..LOW).map(|i| order(&format!("low-{i}"))).collect();
    // Once a high job had arrived, no low job started before it ran: with a
    // single worker this is the whole priority guarantee, checked on the
    // daemon's own event order rather than on time.
    for &(h_recv, h_run) in &high {
        let jumped: Vec<_> = low
            .iter()
            .filter(|&&(_, l_run)| h_recv < l_run && l_run < h_run)
            .collect();
        assert!(
            jumped.is_empty(),
            "low jobs {jumped:?} started while high job ({h_recv}, {h_run}) waited"
        );
    }
    // The high jobs overtook queued low jobs (the flood was really queued).
    let overtaken = low
        .iter()
        .filter(|&&(l_recv, l_run)| {
            high.iter()
                .any(|&(h_recv, h_run)| l_recv < h_recv && l_run > h_run)
        })
        .count();
    assert!(
        overtaken >= LOW / 2,
        "only {overtaken} queued low jobs were overtaken: high {high:?} low {low:?}"
    );
    // Low jobs ran in arrival order among themselves.
    assert!(
        low.windows(2).all(|w| w[0].1 < w[1].1),
        "low jobs reordered: {low:?}"
    );
    daemon.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_worker_serves_high_level_while_other_runs_low() {
    let slow = test_model("slow.onnx");
    let fast = test_model("affine.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [[level]]
        name = "high"
        [[level]]
        name = "low"
        [[worker]]
        levels = ["high"]
        [[worker]]
        levels = ["high", "low"]
        [[pipeline]]
        name = "bulk"
        model = "{slow}"
        input = "t/bulk"
        output = "t/out/bulk"
        level = "low"
        queue_capacity = 64
        deadline_ms = 60000
        [[pipeline]]
        name = "urgent"
        model = "{fast}"
        input = "t/urgent"
        output = "t/out/urgent"
        level = "high"
        deadline_ms = 60000
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    until_served(&c, "t/bulk", &slow_req("probe-bulk", 0), &sub).await;
    until_served(&c, "t/urgent", &fast_req("probe-urgent", 0), &sub).await;
    for i in 0..20 {
        put(&c, "t/bulk", slow_req(&format!("low-{i}"), i)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    put(&c, "t/urgent", fast_req("high", 0)).await;
    let replies = collect(&sub, 21).await;
    // Worker 0 only serves the high level, so no bulk job ever ran on it,
    // and the high job did not wait for the flood to finish.
    for i in 0..20 {
        assert_eq!(replies[&format!("low-{i}")].meta("worker"), Some("1"));
    }
    // Reserved worker: the high job started before any low job that
    // arrived before it, except those already running or started before it
    // arrived.
    let (h_recv, h_run) = order_of(&replies, "high");
    let later = (0..20)
        .filter(|i| {
            let (l_recv, l_run) = order_of(&replies, &format!("low-{i}"));
            l_recv < h_recv && l_run > h_run
        })
        .count();
    assert!(
        later > 0,
        "the high job should overtake queued low jobs (high {h_recv}/{h_run})"
    );
    daemon.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_wins_replacements_are_reported_and_counted() {
    let slow = test_model("slow.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "cam"
        model = "{slow}"
        input = "t/cam/*"
        output = "t/out/cam"
        overflow = "latest"
        deadline_ms = 60000
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    until_served(&c, "t/cam/probe", &slow_req("probe", 0), &sub).await;
    let before = daemon.stats()[0].clone();
    const N: usize = 30;
    for i in 0..N {
        put(&c, "t/cam/front", slow_req(&format!("f{i}"), i as u64)).await;
    }
    let replies = collect(&sub, N).await;
    let superseded = replies
        .values()
        .filter(|r| r.code() == Some("superseded"))
        .count();
    let served = replies
        .values()
        .filter(|r| matches!(r, Reply::Prediction { .. }))
        .count();
    assert_eq!(
        superseded + served,
        N,
        "every frame has exactly one outcome"
    );
    assert!(
        superseded > 0,
        "a 30-frame burst on a slow model must supersede frames"
    );
    // The newest frame always survives.
    assert!(matches!(
        replies[&format!("f{}", N - 1)],
        Reply::Prediction { .. }
    ));
    let after = &daemon.stats()[0];
    assert_eq!(
        after.error(ErrorCode::Superseded) - before.error(ErrorCode::Superseded),
        superseded as u64
    );
    assert_eq!(after.ok - before.ok, served as u64);
    daemon.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_jobs_are_dropped_and_reported() {
    let slow = test_model("slow.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "bulk"
        model = "{slow}"
        input = "t/bulk"
        output = "t/out/bulk"
        queue_capacity = 64
        deadline_ms = 2
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    until_served(&c, "t/bulk", &slow_req("probe", 0), &sub).await;
    let before = daemon.stats()[0].clone();
    const N: usize = 20;
    for i in 0..N {
        put(&c, "t/bulk", slow_req(&format!("j{i}"), i as u64)).await;
    }
    let replies = collect(&sub, N).await;
    let expired: Vec<&Reply> = replies
        .values()
        .filter(|r| r.code() == Some("deadline_exceeded"))
        .collect();
    // Each run takes several milliseconds, so jobs queued behind two runs
    // cannot start within 2 ms.
    assert!(!expired.is_empty(), "no job expired");
    for r in &expired {
        let Reply::Error { json, .. } = r else {
            unreachable!()
        };
        assert_eq!(json["pipeline"], "bulk");
        assert!(json["message"].as_str().unwrap().contains("budget"));
    }
    let after = &daemon.stats()[0];
    assert_eq!(
        after.error(ErrorCode::DeadlineExceeded) - before.error(ErrorCode::DeadlineExceeded),
        expired.len() as u64
    );
    assert_eq!(after.finished() - before.finished(), N as u64);
    daemon.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_busy() {
    let slow = test_model("slow.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "bulk"
        model = "{slow}"
        input = "t/bulk"
        output = "t/out/bulk"
        queue_capacity = 2
        deadline_ms = 60000
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    until_served(&c, "t/bulk", &slow_req("probe", 0), &sub).await;
    const N: usize = 20;
    for i in 0..N {
        put(&c, "t/bulk", slow_req(&format!("j{i}"), i as u64)).await;
    }
    let replies = collect(&sub, N).await;
    let busy = replies
        .values()
        .filter(|r| r.code() == Some("busy"))
        .count();
    let served = replies
        .values()
        .filter(|r| matches!(r, Reply::Prediction { .. }))
        .count();
    assert!(busy > 0, "capacity 2 cannot absorb a 20-request burst");
    assert!(served >= 2);
    assert_eq!(busy + served, N);
    assert_eq!(daemon.stats()[0].error(ErrorCode::Busy), busy as u64);
    daemon.shutdown(Duration::from_secs(10)).await;
}

/// Field `field` (1-based, as in proc(5)) of /proc/<tid>/stat for every
/// thread of this process with the given name. Other tests in the same
/// binary may run daemons too, so callers look for a value, not a count.
fn thread_stat(name: &str, field: usize) -> Vec<i64> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = entry.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue;
        };
        if comm.trim() == name {
            // Fields after the parenthesised command start at field 3.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            out.extend(
                rest.split(' ')
                    .nth(field - 3)
                    .and_then(|v| v.parse::<i64>().ok()),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_nice_is_applied_to_its_thread_only() {
    let fast = test_model("affine.onnx");
    let (daemon, _port) = start(&format!(
        r#"
        [[level]]
        name = "high"
        [[level]]
        name = "low"
        [[worker]]
        levels = ["high"]
        [[worker]]
        levels = ["low"]
        nice = 7
        [[pipeline]]
        name = "a"
        model = "{fast}"
        input = "t/a"
        output = "t/out/a"
        level = "low"
        [[pipeline]]
        name = "b"
        model = "{fast}"
        input = "t/b"
        output = "t/out/b"
        level = "high"
        "#
    ))
    .await;
    // Field 19 is the nice value; 7 is used by no other test.
    assert!(thread_stat("reflexd-w1", 19).contains(&7));
    assert!(
        !thread_stat("reflexd-w0", 19).contains(&7),
        "only the configured worker is reniced"
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sched_fifo_worker_is_real_time_or_start_fails_clearly() {
    let fast = test_model("affine.onnx");
    let port = free_port();
    let text = format!(
        r#"
        [zenoh]
        listen = ["tcp/127.0.0.1:{port}"]
        [[worker]]
        levels = ["default"]
        sched_fifo = 10
        [[pipeline]]
        name = "a"
        model = "{fast}"
        input = "t/a"
        output = "t/out/a"
        "#
    );
    let cfg = reflexd::Config::from_toml(&text, &repo()).unwrap();
    match reflexd::Daemon::start(cfg).await {
        Ok(daemon) => {
            // Field 41 is the policy (1 = SCHED_FIFO), field 40 the priority.
            assert!(
                thread_stat("reflexd-w0", 41).contains(&1),
                "worker 0 runs SCHED_FIFO"
            );
            assert!(thread_stat("reflexd-w0", 40).contains(&10));
            daemon.shutdown(Duration::from_secs(5)).await;
        }
        // Without CAP_SYS_NICE the daemon must refuse to start, saying why.
        Err(e) => assert!(
            e.to_string().contains("SCHED_FIFO") && e.to_string().contains("CAP_SYS_NICE"),
            "{e}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sched_idle_worker_yields_to_every_normal_thread() {
    let fast = test_model("affine.onnx");
    let (daemon, _port) = start(&format!(
        r#"
        [[level]]
        name = "high"
        [[level]]
        name = "low"
        [[worker]]
        levels = ["high"]
        [[worker]]
        levels = ["low"]
        sched_idle = true
        [[pipeline]]
        name = "a"
        model = "{fast}"
        input = "t/a"
        output = "t/out/a"
        level = "low"
        "#
    ))
    .await;
    // Field 41 is the policy: 5 = SCHED_IDLE, 0 = SCHED_OTHER. Needs no
    // privilege, so there is no failure branch.
    assert!(
        thread_stat("reflexd-w1", 41).contains(&5),
        "worker 1 runs SCHED_IDLE"
    );
    assert!(
        !thread_stat("reflexd-w0", 41).contains(&5),
        "only the configured worker is SCHED_IDLE"
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}
