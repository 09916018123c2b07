//! Metrics over real zenoh and a real Prometheus scrape: after a known
//! workload (predictions, bad inputs with specific codes, a burst answered
//! `busy`, a burst that misses its deadline) the Prometheus endpoint, the
//! zenoh `<node>/metrics` snapshot (queryable and periodic publication) and
//! `Daemon::metrics` report exactly the outcomes the client saw, and the
//! histogram counts match them. The liveliness token comes and goes with
//! the daemon.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use reflexd::obs::MetricsSnapshot;
use reflexd::tensor::f32_tensor;
use zenoh::sample::SampleKind;

/// Waits until the daemon's subscriber on `key` is known to the client, so
/// no message of the workload is lost to subscription propagation (and
/// nothing else, like a probe, is counted).
async fn wait_subscribed(c: &zenoh::Session, key: &str) {
    let p = c.declare_publisher(key.to_string()).await.unwrap();
    for _ in 0..500 {
        if p.matching_status().await.unwrap().matching() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no subscriber on {key}");
}

/// One `GET path`: (status line, body).
fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.lines().next().unwrap_or_default().to_string();
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    (status, body.to_string())
}

/// `GET /metrics`, parsed into `series{labels}` → value.
fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse::<f64>().unwrap())
        })
        .collect()
}

fn series(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("series {key} missing from the scrape"))
}

fn tally(replies: &[Reply]) -> BTreeMap<String, u64> {
    let mut t = BTreeMap::new();
    for r in replies {
        let k = r.code().unwrap_or("ok").to_string();
        *t.entry(k).or_insert(0) += 1;
    }
    t
}

async fn replies(sub: &Sub, n: usize) -> Vec<Reply> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(recv(sub).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporters_report_exact_counts_after_a_known_workload() {
    let affine = test_model("affine.onnx");
    let slow = test_model("slow.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [metrics]
        node = "t/node"
        prometheus = "127.0.0.1:0"
        publish_interval_ms = 200
        [[pipeline]]
        name = "affine"
        model = "{affine}"
        input = "t/affine/*"
        output = "t/out/affine"
        [[pipeline]]
        name = "bulk"
        model = "{slow}"
        input = "t/bulk"
        output = "t/out/bulk"
        queue_capacity = 2
        deadline_ms = 60000
        [[pipeline]]
        name = "late"
        model = "{slow}"
        input = "t/late"
        output = "t/out/late"
        queue_capacity = 64
        deadline_ms = 2
        "#
    ))
    .await;
    let prom = daemon.prometheus_addr().expect("prometheus enabled");
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    for k in ["t/affine/a", "t/bulk", "t/late"] {
        wait_subscribed(&c, k).await;
    }

    // affine: 10 predictions one at a time, then 5 bad messages.
    const OK: usize = 10;
    for i in 0..OK {
        let req = request(
            &[f32_tensor("x", &[1, 4], &[i as f32; 4])],
            &format!("a{i}"),
            0,
        );
        put(&c, "t/affine/a", req).await;
        assert!(recv(&sub).await.code().is_none());
    }
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("t/affine/a", b"\x07garbage".to_vec(), "bad_payload"),
        ("t/affine/a", b"\x07more garbage".to_vec(), "bad_payload"),
        ("t/affine/a", Vec::new(), "empty_payload"),
        (
            "t/affine/a",
            request(&[f32_tensor("x", &[1, 5], &[0.0; 5])], "shape", 0),
            "wrong_shape",
        ),
        (
            "t/affine/error",
            request(&[f32_tensor("x", &[1, 4], &[0.0; 4])], "rsv", 0),
            "bad_stream",
        ),
    ];
    for (key, payload, code) in &bad {
        put(&c, key, payload.clone()).await;
        assert_eq!(recv(&sub).await.code(), Some(*code));
    }
    // bulk: a burst into a 2-deep queue; late: a burst behind 2 ms budgets.
    const BURST: usize = 20;
    let slow_req = |i: usize| {
        request(
            &[f32_tensor("x", &[1, 256], &[0.1; 256])],
            &format!("s{i}"),
            0,
        )
    };
    for i in 0..BURST {
        put(&c, "t/bulk", slow_req(i)).await;
    }
    let bulk = tally(&replies(&sub, BURST).await);
    for i in 0..BURST {
        put(&c, "t/late", slow_req(i)).await;
    }
    let late = tally(&replies(&sub, BURST).await);
    assert!(bulk.get("busy").copied().unwrap_or(0) > 0, "{bulk:?}");
    assert!(
        late.get("deadline_exceeded").copied().unwrap_or(0) > 0,
        "{late:?}"
    );
    assert_eq!(bulk.values().sum::<u64>(), BURST as u64);
    let affine_expect: BTreeMap<String, u64> = [
        ("ok", OK as u64),
        ("bad_payload", 2),
        ("empty_payload", 1),
        ("wrong_shape", 1),
        ("bad_stream", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let expected = [("affine", &affine_expect), ("bulk", &bulk), ("late", &late)];

    // 1. In process, 2. zenoh queryable, 3. zenoh periodic publication.
    let local = daemon.metrics();
    let replies_q = c.get("t/node/metrics").await.unwrap();
    let reply = replies_q
        .recv_async()
        .await
        .expect("metrics query answered");
    let queried: MetricsSnapshot =
        serde_json::from_slice(&reply.result().unwrap().payload().to_bytes()).unwrap();
    let periodic_sub = c.declare_subscriber("t/node/metrics").await.unwrap();
    let sample = tokio::time::timeout(WAIT, periodic_sub.recv_async())
        .await
        .expect("periodic metrics")
        .unwrap();
    let published: MetricsSnapshot = serde_json::from_slice(&sample.payload().to_bytes()).unwrap();
    for snap in [&local, &queried, &published] {
        assert_eq!(snap.node, "t/node");
        assert_eq!(snap.pipelines.len(), 3);
        for (name, want) in &expected {
            let p = snap.pipeline(name).unwrap();
            let mut got = p.errors.clone();
            if p.ok > 0 {
                got.insert("ok".into(), p.ok);
            }
            assert_eq!(&&got, want, "{name} outcomes");
            assert_eq!(p.received, want.values().sum::<u64>(), "{name} received");
            assert_eq!(p.provider, "cpu");
            assert_eq!(p.level, "default");
            // Histogram counts: every prediction has one inference and one
            // end-to-end sample; every job a worker took (served or too
            // late) has a queue-wait sample.
            let ok = p.ok;
            let dl = want.get("deadline_exceeded").copied().unwrap_or(0);
            assert_eq!(p.e2e.count, ok, "{name} e2e count");
            assert_eq!(p.inference.count, ok, "{name} inference count");
            assert_eq!(p.queue_wait.count, ok + dl, "{name} queue wait count");
            // A pipeline may have had no prediction at all on a slow machine
            // (every "late" job dropped): quantiles exist only with samples.
            if ok > 0 {
                assert!(p.e2e.quantile(0.5).unwrap() > 0);
                assert!(p.e2e.quantile(0.99) >= p.e2e.quantile(0.5));
            } else {
                assert_eq!(p.e2e.quantile(0.5), None);
            }
        }
        assert_eq!(snap.workers.len(), 1);
        assert!(snap.workers[0].busy_us > 0);
    }

    // 4. Prometheus.
    let m = scrape(prom);
    let deadlines_us = [("affine", 1_000_000), ("bulk", 60_000_000), ("late", 2_000)];
    for (name, want) in &expected {
        let l = format!("pipeline=\"{name}\",kind=\"tensor\",level=\"default\"");
        // Exactly the outcomes this pipeline can have, each with its count:
        // safetensors, overflow = "reject", a float input; only affine's
        // input has a wildcard (a stream id that can be refused).
        let mut outcomes = vec![
            "ok",
            "empty_payload",
            "payload_too_large",
            "bad_payload",
            "missing_tensor",
            "unexpected_tensor",
            "wrong_dtype",
            "wrong_shape",
            "too_many_elements",
            "busy",
            "deadline_exceeded",
            "inference_failed",
            "shutting_down",
            "non_finite",
            "internal_error",
        ];
        if *name == "affine" {
            outcomes.push("bad_stream");
        }
        let prefix = format!("reflexd_requests_total{{{l},outcome=");
        let listed: Vec<&String> = m.keys().filter(|k| k.starts_with(&prefix)).collect();
        assert_eq!(listed.len(), outcomes.len(), "{name}: {listed:?}");
        for code in &outcomes {
            assert_eq!(
                series(&m, &format!("{prefix}\"{code}\"}}")),
                want.get(*code).copied().unwrap_or(0) as f64,
                "{name} {code}"
            );
        }
        // Impossible here: latest-wins outcomes and generation commands.
        for code in [
            "superseded",
            "too_many_streams",
            "bad_command",
            "slow_consumer",
        ] {
            assert!(
                !m.contains_key(&format!("{prefix}\"{code}\"}}")),
                "{name} {code}"
            );
        }
        let deadline_us = deadlines_us.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(
            series(&m, &format!("reflexd_pipeline_deadline_seconds{{{l}}}")),
            deadline_us as f64 / 1e6
        );
        assert_eq!(
            series(&m, &format!("reflexd_received_total{{{l}}}")),
            want.values().sum::<u64>() as f64
        );
        let ok = want.get("ok").copied().unwrap_or(0) as f64;
        let dl = want.get("deadline_exceeded").copied().unwrap_or(0) as f64;
        for (h, n) in [
            ("reflexd_request_duration_seconds", ok),
            ("reflexd_inference_seconds", ok),
            ("reflexd_queue_wait_seconds", ok + dl),
        ] {
            assert_eq!(series(&m, &format!("{h}_count{{{l}}}")), n, "{h} {name}");
            assert_eq!(series(&m, &format!("{h}_bucket{{{l},le=\"+Inf\"}}")), n);
            // Buckets follow the pipeline's deadline (one edge is the
            // deadline itself) and are cumulative.
            let edges = reflexd::obs::hist::deadline_buckets(deadline_us);
            assert!(edges.contains(&deadline_us));
            let bucket_prefix = format!("{h}_bucket{{{l},le=");
            let n_buckets = m.keys().filter(|k| k.starts_with(&bucket_prefix)).count();
            assert_eq!(n_buckets, edges.len() + 1, "{h} {name}: edges and +Inf");
            let mut prev = 0.0;
            for le in edges {
                let v = series(&m, &format!("{bucket_prefix}\"{}\"}}", le as f64 / 1e6));
                assert!(v >= prev && v <= n, "{h} le={le}: {v}");
                prev = v;
            }
        }
        assert_eq!(
            series(
                &m,
                &format!(
                    "reflexd_pipeline_info{{{l},provider=\"cpu\",model=\"{}\"}}",
                    if *name == "affine" {
                        "affine.onnx"
                    } else {
                        "slow.onnx"
                    }
                )
            ),
            1.0
        );
    }
    assert!(
        series(
            &m,
            "reflexd_worker_busy_seconds_total{worker=\"0\",levels=\"default\"}"
        ) > 0.0
    );
    build_and_process_series(&m);

    // Liveliness: visible while running, deleted at shutdown.
    let alive = c.liveliness().get("t/node/alive").await.unwrap();
    let token = alive.recv_async().await.expect("liveliness token");
    assert_eq!(token.result().unwrap().key_expr().as_str(), "t/node/alive");
    let watch = c
        .liveliness()
        .declare_subscriber("t/node/alive")
        .await
        .unwrap();
    daemon.shutdown(Duration::from_secs(10)).await;
    let gone = tokio::time::timeout(WAIT, watch.recv_async())
        .await
        .expect("liveliness change after shutdown")
        .unwrap();
    assert_eq!(gone.kind(), SampleKind::Delete);
    assert!(
        std::net::TcpStream::connect(prom).is_err(),
        "endpoint closed"
    );
}

/// Build info and the standard process series, with plausible values.
fn build_and_process_series(m: &HashMap<String, f64>) {
    let build = format!(
        "reflexd_build_info{{version=\"{}\",ort_api=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        ort::MINOR_VERSION
    );
    assert_eq!(series(m, &build), 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = series(m, "process_start_time_seconds");
    assert!(
        start <= now && start > now - 3600.0,
        "start {start}, now {now}"
    );
    assert!(series(m, "process_cpu_seconds_total") > 0.0);
    let rss = series(m, "process_resident_memory_bytes");
    assert!(rss > 1e6 && rss <= series(m, "process_virtual_memory_bytes"));
    assert!(series(m, "process_open_fds") >= 3.0);
    assert!(series(m, "process_threads") >= 2.0);
    assert!(series(m, "reflexd_uptime_seconds") >= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_is_off_by_default_and_unknown_paths_are_404() {
    let affine = test_model("affine.onnx");
    let (daemon, _) = start(&format!(
        "[[pipeline]]\nname = \"a\"\nmodel = \"{affine}\"\ninput = \"t/a\"\noutput = \"t/o\"\n"
    ))
    .await;
    assert_eq!(daemon.prometheus_addr(), None);
    daemon.shutdown(Duration::from_secs(5)).await;

    let (daemon, _) = start(&format!(
        "[metrics]\nprometheus = \"127.0.0.1:0\"\n[[pipeline]]\nname = \"a\"\nmodel = \"{affine}\"\ninput = \"t/a\"\noutput = \"t/o\"\n"
    ))
    .await;
    let addr = daemon.prometheus_addr().unwrap();
    let (status, body) = get(addr, "/nope");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    assert!(
        body.contains("/metrics") && body.contains("/healthz"),
        "{body}"
    );
    let (status, body) = get(addr, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.contains("GET /metrics") && body.contains("GET /healthz"),
        "{body}"
    );
    let (status, body) = get(addr, "/healthz");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    // A client that sends garbage and hangs up does not stop the endpoint.
    let mut g = std::net::TcpStream::connect(addr).unwrap();
    g.write_all(&[0xff; 100]).unwrap();
    drop(g);
    let m = scrape(addr);
    assert_eq!(
        series(
            &m,
            "reflexd_requests_total{pipeline=\"a\",kind=\"tensor\",level=\"default\",outcome=\"ok\"}"
        ),
        0.0
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_metrics_match_the_final_messages() {
    let llm = repo().join("models/llm/fetched");
    assert!(llm.join("model.onnx").exists(), "run `make setup`");
    let (daemon, port) = start(&format!(
        r#"
        [metrics]
        node = "t/gen"
        prometheus = "127.0.0.1:0"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "t/llm/cmd"
        output = "t/llm/out"
        "#,
        llm.display()
    ))
    .await;
    let c = client(port).await;
    wait_subscribed(&c, "t/llm/cmd").await;
    let out = c.declare_subscriber("t/llm/out/**").await.unwrap();
    let mut usage = (0u64, 0u64);
    for (i, n) in [6, 1].into_iter().enumerate() {
        let cmd =
            serde_json::json!({"id": format!("g{i}"), "prompt": "Count to ten.", "max_tokens": n});
        put(&c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
        loop {
            let s = tokio::time::timeout(WAIT * 4, out.recv_async())
                .await
                .expect("generation finished")
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&s.payload().to_bytes()).unwrap();
            if v["done"] == true {
                assert_eq!(v["finish_reason"], "length", "{v}");
                usage.0 += v["usage"]["prompt_tokens"].as_u64().unwrap();
                usage.1 += v["usage"]["completion_tokens"].as_u64().unwrap();
                break;
            }
        }
    }
    // A command that is not JSON is counted under its code.
    put(&c, "t/llm/cmd", b"{not json".to_vec()).await;
    let mut snap = daemon.metrics();
    for _ in 0..100 {
        if snap.pipelines[0].error(reflexd::error::ErrorCode::BadCommand) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        snap = daemon.metrics();
    }
    let p = snap.pipeline("chat").unwrap();
    assert_eq!(p.kind, "generate");
    assert_eq!((p.received, p.ok), (3, 2));
    assert_eq!(p.error(reflexd::error::ErrorCode::BadCommand), 1);
    let g = p.generation.as_ref().unwrap();
    assert_eq!((g.prompt_tokens, g.completion_tokens), usage);
    assert_eq!(g.completion_tokens, 7);
    assert_eq!(g.live, 0);
    // Both produced a first token; only the 6-token one has a TPOT.
    assert_eq!(g.ttft.count, 2);
    assert_eq!(g.tpot.count, 1);
    assert_eq!(p.e2e.count, 2);
    assert!(g.decode_tokens_per_s.unwrap() > 0.0);
    // Every step is one inference sample: at least one per token.
    assert!(p.inference.count >= 7, "{}", p.inference.count);

    // The model is named as configured (the directory), not by the display
    // name inside generation.json.
    assert_eq!(p.model, "fetched");
    let m = scrape(daemon.prometheus_addr().unwrap());
    let l = "pipeline=\"chat\",gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"reflexd\",gen_ai_system=\"reflexd\",gen_ai_request_model=\"fetched\"";
    let key = |name: &str, extra: &str| series(&m, &format!("{name}{{{l}{extra}}}"));
    assert_eq!(
        key("gen_ai_server_time_to_first_token_seconds_count", ""),
        2.0
    );
    assert_eq!(
        key("gen_ai_server_time_per_output_token_seconds_count", ""),
        1.0
    );
    assert_eq!(key("gen_ai_server_request_duration_seconds_count", ""), 2.0);
    // Failed generations are their own series, by OpenTelemetry error.type:
    // none failed here.
    for code in [
        "deadline_exceeded",
        "inference_failed",
        "internal_error",
        "slow_consumer",
    ] {
        let extra = format!(",error_type=\"{code}\"");
        assert_eq!(
            key("gen_ai_server_request_duration_seconds_count", &extra),
            0.0
        );
    }
    assert!(!m.keys().any(|k| k.contains("error_type=\"_OTHER\"")));
    assert_eq!(
        key(
            "reflexd_gen_ai_tokens_total",
            ",gen_ai_token_type=\"output\""
        ),
        7.0
    );
    assert_eq!(
        key(
            "reflexd_gen_ai_tokens_total",
            ",gen_ai_token_type=\"input\""
        ),
        usage.0 as f64
    );
    assert_eq!(key("reflexd_generations_live", ""), 0.0);
    // Generation outcomes: command codes yes, queue-policy codes no.
    let req = |code: &str| {
        m.get(&format!(
            "reflexd_requests_total{{pipeline=\"chat\",kind=\"generate\",level=\"default\",outcome=\"{code}\"}}"
        ))
        .copied()
    };
    assert_eq!(req("ok"), Some(2.0));
    assert_eq!(req("bad_command"), Some(1.0));
    assert_eq!(req("slow_consumer"), Some(0.0));
    for code in [
        "busy",
        "superseded",
        "wrong_shape",
        "bad_stream",
        "non_finite",
    ] {
        assert_eq!(req(code), None, "{code} cannot happen to a generation");
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// `/healthz` follows the watchdog's rule: 503 naming the worker while it
/// is inside one model run for longer than `service.max_run_ms`, 200 again
/// once the run is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_a_worker_stuck_in_one_run() {
    let (daemon, port) = start(&format!(
        r#"
        [metrics]
        prometheus = "127.0.0.1:0"
        [service]
        max_run_ms = 100
        [[pipeline]]
        name = "stall"
        model = "{}"
        input = "t/stall"
        output = "t/stall_out"
        deadline_ms = 60000
        "#,
        test_model("stall.onnx")
    ))
    .await;
    let addr = daemon.prometheus_addr().unwrap();
    assert_eq!(get(addr, "/healthz").0, "HTTP/1.1 200 OK");
    let c = client(port).await;
    let sub = subscribe(&c, "t/stall_out/**").await;
    wait_subscribed(&c, "t/stall").await;
    // About 3 s of loop iterations on this machine (tests/late_results.rs).
    let req = request(&[f32_tensor("n", &[1], &[2_000_000.0])], "long", 0);
    put(&c, "t/stall", req).await;
    let mut unhealthy = None;
    for _ in 0..300 {
        let (status, body) = get(addr, "/healthz");
        if status.starts_with("HTTP/1.1 503") {
            unhealthy = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = unhealthy.expect("503 while the run exceeds max_run_ms");
    assert!(
        body.contains("worker 0") && body.contains("service.max_run_ms = 100"),
        "{body}"
    );
    assert!(
        recv(&sub).await.code().is_none(),
        "the long run still answers"
    );
    assert_eq!(
        get(addr, "/healthz"),
        ("HTTP/1.1 200 OK".into(), "ok\n".into())
    );
    daemon.shutdown(Duration::from_secs(10)).await;
}
