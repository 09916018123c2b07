//! Dynamic batching over real zenoh and real ONNX Runtime: batched results
//! equal unbatched ones (stateless affine model and stateful Silero VAD with
//! state carried along its batch axis 1), every request keeps its own id,
//! sequence number and timing, a job with a tight deadline is not held for a
//! batch past it, and a model with a fixed batch dimension is refused.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use ort::session::Session;
use ort::value::Tensor as OrtTensor;
use reflexd::tensor::{f32_tensor, f32_values};
use reflexd::{Config, Daemon};

fn direct_session(path: &str) -> Session {
    let (env, _) = reflexd::infer::runtime::environment(None).unwrap();
    Session::builder(&env)
        .unwrap()
        .commit_from_file(path)
        .unwrap()
}

/// Receives replies until `n` whose id starts with `prefix` arrived
/// (probe answers are skipped).
async fn collect(sub: &Sub, prefix: &str, n: usize) -> Vec<Reply> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = recv(sub).await;
        if r.id().is_some_and(|id| id.starts_with(prefix)) {
            out.push(r);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_affine_equals_unbatched_with_per_request_ids_and_timing() {
    let model = test_model("affine.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "affine"
        model = "{model}"
        input = "t/affine/*"
        output = "t/affine_out"
        queue_capacity = 32
        max_batch = 8
        max_queue_delay_us = 300000
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/affine_out/**").await;
    let probe = request(&[f32_tensor("x", &[1, 4], &[0.0; 4])], "probe", 0);
    until_served(&c, "t/affine/probe", &probe, &sub).await;

    // Eight requests in a burst, from two streams, with 1-3 rows each: the
    // worker collects them into one call (or a few), and each must get
    // exactly its own rows back.
    let mut sent = HashMap::new();
    for i in 0..8usize {
        let rows = 1 + i % 3;
        let values: Vec<f32> = (0..rows * 4)
            .map(|k| (k as f32 * 0.37 - 2.0) * (i as f32 + 1.0))
            .collect();
        let stream = if i % 2 == 0 { "left" } else { "right" };
        let id = format!("req-{i}");
        put(
            &c,
            &format!("t/affine/{stream}"),
            request(&[f32_tensor("x", &[rows, 4], &values)], &id, 100 + i as u64),
        )
        .await;
        sent.insert(id, (stream, 100 + i as u64, rows, values));
    }
    let replies = collect(&sub, "req-", 8).await;
    let mut direct = direct_session(&model);
    let mut run_orders = HashMap::<String, usize>::new();
    for r in &replies {
        let id = r.id().unwrap();
        let (stream, seq, rows, values) = sent.remove(&id).expect("one reply per request");
        assert_eq!(r.meta("stream"), Some(stream), "{id}");
        assert_eq!(r.meta("seq"), Some(seq.to_string().as_str()), "{id}");
        for k in ["queue_us", "inference_us", "e2e_us", "batch", "run_order"] {
            assert!(
                r.meta(k).is_some_and(|v| v.parse::<u64>().is_ok()),
                "{id}: metadata {k} missing"
            );
        }
        let queue: u64 = r.meta("queue_us").unwrap().parse().unwrap();
        let e2e: u64 = r.meta("e2e_us").unwrap().parse().unwrap();
        assert!(queue <= e2e, "{id}: queue {queue} µs within e2e {e2e} µs");
        *run_orders
            .entry(r.meta("run_order").unwrap().to_string())
            .or_default() += 1;
        let y = r.tensor("y");
        assert_eq!(y.shape, vec![rows, 4], "{id}");
        let out = direct
            .run(ort::inputs!["x" => OrtTensor::from_array(([rows, 4], values)).unwrap()])
            .unwrap();
        let (_, want) = out["y"].try_extract_tensor::<f32>().unwrap();
        assert_eq!(
            f32_values(y).unwrap(),
            want.to_vec(),
            "{id}: batched vs alone"
        );
    }
    assert!(sent.is_empty());
    // Requests that shared a call share its run_order, and the call's size
    // is what each of them reports as `batch`.
    for r in &replies {
        let shared_with = run_orders[r.meta("run_order").unwrap()];
        assert_eq!(r.meta("batch"), Some(shared_with.to_string().as_str()));
    }
    let bs = &daemon.batch_stats()[0];
    assert_eq!(bs.pipeline, "affine");
    assert!(
        bs.largest() >= 2,
        "a burst of 8 must be batched at least once: {bs:?}"
    );
    assert_eq!(
        bs.jobs,
        daemon.stats()[0].ok,
        "every prediction came from a counted batch: {bs:?}"
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tight_deadline_job_is_not_held_for_a_batch() {
    let model = test_model("affine.onnx");
    // The batch wait allows 1 s, the budget only 150 ms: a lone job must
    // run before its budget is spent instead of waiting for company.
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "affine"
        model = "{model}"
        input = "t/affine/*"
        output = "t/affine_out"
        deadline_ms = 150
        max_batch = 8
        max_queue_delay_us = 1000000
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/affine_out/**").await;
    let probe = request(&[f32_tensor("x", &[1, 4], &[0.0; 4])], "probe", 0);
    until_served(&c, "t/affine/probe", &probe, &sub).await;
    let before = daemon.batch_stats()[0].cut_by_deadline;

    put(
        &c,
        "t/affine/cam",
        request(
            &[f32_tensor("x", &[1, 4], &[1.0, 2.0, 3.0, 4.0])],
            "tight",
            1,
        ),
    )
    .await;
    let r = collect(&sub, "tight", 1).await.remove(0);
    assert!(
        matches!(r, Reply::Prediction { .. }),
        "served, not dropped: {r:?}"
    );
    assert_eq!(f32_values(r.tensor("y")).unwrap(), vec![3.0, 5.0, 7.0, 9.0]);
    let queue: u64 = r.meta("queue_us").unwrap().parse().unwrap();
    assert!(
        queue < 150_000,
        "held {queue} µs: past its 150 ms budget (the batch delay is 1 s)"
    );
    assert!(
        daemon.batch_stats()[0].cut_by_deadline > before,
        "the wait was cut by the deadline, not by the delay"
    );
    assert_eq!(
        daemon.stats()[0].error(reflexd::error::ErrorCode::DeadlineExceeded),
        0
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_batch_model_is_refused_at_start() {
    let model = test_model("acc.onnx");
    let text = format!(
        r#"
        [zenoh]
        listen = ["tcp/127.0.0.1:{port}"]
        [[pipeline]]
        name = "acc"
        model = "{model}"
        input = "t/acc/*"
        output = "t/acc_out"
        overflow = "latest"
        state = [{{ input = "state", output = "state_out" }}]
        max_batch = 4
        "#,
        port = free_port()
    );
    let cfg = Config::from_toml(&text, &repo()).unwrap();
    let err = match Daemon::start(cfg).await {
        Ok(_) => panic!("a [1,4] model must not be batched"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("max_batch = 4") && err.contains("fixed batch dimension"),
        "{err}"
    );
}

/// Runs Silero VAD directly, one stream at a time, state and 64-sample
/// context carried: the unbatched reference.
fn vad_reference(model: &str, samples: &[f32]) -> Vec<f32> {
    let mut s = direct_session(model);
    let mut state = vec![0f32; 2 * 128];
    let mut context = vec![0f32; 64];
    let mut probs = Vec::new();
    for chunk in samples.chunks_exact(512) {
        let mut input = context.clone();
        input.extend_from_slice(chunk);
        context = input[512..].to_vec();
        let out = s
            .run(ort::inputs![
                "input" => OrtTensor::from_array(([1usize, 576], input)).unwrap(),
                "state" => OrtTensor::from_array(([2usize, 1, 128], state.clone())).unwrap(),
                "sr" => OrtTensor::from_array(((), vec![16000i64])).unwrap(),
            ])
            .unwrap();
        probs.push(out["output"].try_extract_tensor::<f32>().unwrap().1[0]);
        state = out["stateN"]
            .try_extract_tensor::<f32>()
            .unwrap()
            .1
            .to_vec();
    }
    probs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_vad_streams_batched_match_each_stream_alone() {
    let model = fetched_model("silero_vad.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "vad"
        model = "{model}"
        input = "t/mic/*"
        output = "t/vad"
        overflow = "latest"
        format = "raw"
        raw = {{ tensor = "input", dtype = "f32", shape = [1, 512] }}
        constants.sr = {{ dtype = "i64", shape = [], data = [16000] }}
        state = [{{ input = "state", output = "stateN" }}]
        context = [{{ input = "input", keep = 64 }}]
        max_batch = 4
        max_queue_delay_us = 200000
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/vad/**").await;
    until_served(&c, "t/mic/probe", &vec![0u8; 2048], &sub).await;

    // Four streams with different audio, so their states differ: speech,
    // silence and speech from two later offsets.
    let speech = wav("tests/data/speech_16k.wav");
    let silence = wav("tests/data/silence_16k.wav");
    let frames = 30usize;
    let audio: Vec<(&str, Vec<f32>)> = vec![
        ("a", speech[..frames * 512].to_vec()),
        ("b", silence[..frames * 512].to_vec()),
        ("c", speech[512 * 20..512 * (20 + frames)].to_vec()),
        ("d", speech[512 * 37..512 * (37 + frames)].to_vec()),
    ];
    let mut got: HashMap<String, Vec<f32>> = HashMap::new();
    for n in 0..frames {
        // One frame of every stream at once, then wait for all four: no
        // frame is superseded, and the four can share one call.
        for (stream, samples) in &audio {
            let bytes: Vec<u8> = samples[n * 512..(n + 1) * 512]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            c.put(format!("t/mic/{stream}"), bytes)
                .attachment(format!("id={stream}-{n};seq={n}"))
                .congestion_control(zenoh::qos::CongestionControl::Block)
                .await
                .unwrap();
        }
        let mut seen = 0;
        while seen < 4 {
            let r = recv(&sub).await;
            let Some(stream) = r.meta("stream").map(str::to_string) else {
                panic!("unexpected error reply: {r:?}");
            };
            if stream == "probe" {
                continue;
            }
            assert_eq!(r.meta("seq"), Some(n.to_string().as_str()), "{stream}");
            assert_eq!(r.id(), Some(format!("{stream}-{n}")));
            got.entry(stream)
                .or_default()
                .push(f32_values(r.tensor("output")).unwrap()[0]);
            seen += 1;
        }
    }
    for (stream, samples) in &audio {
        let want = vad_reference(&model, samples);
        let have = &got[*stream];
        assert_eq!(want.len(), have.len());
        for (i, (g, w)) in have.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() < 1e-4,
                "stream {stream} frame {i}: batched {g} vs alone {w}"
            );
        }
    }
    let bs = &daemon.batch_stats()[0];
    assert!(bs.largest() >= 2, "streams must have shared calls: {bs:?}");
    daemon.shutdown(Duration::from_secs(5)).await;
}
