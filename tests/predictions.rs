//! Predictions over real zenoh match running the same model directly through
//! ONNX Runtime, for stateless, multi-input and stateful pipelines, and the
//! Silero VAD stream tells speech from silence with state carried.

mod common;

use common::*;
use ort::session::Session;
use ort::value::Tensor as OrtTensor;
use reflexd::tensor::{Dtype, Tensor, f32_tensor, f32_values};

fn direct_session(path: &str) -> Session {
    let (env, _) = reflexd::infer::runtime::environment(None).unwrap();
    Session::builder(&env)
        .unwrap()
        .commit_from_file(path)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affine_predictions_match_direct_onnxruntime() {
    let model = test_model("affine.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "affine"
        model = "{model}"
        input = "t/affine/*"
        output = "t/affine_out"
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/affine_out/**").await;
    until_served(
        &c,
        "t/affine/cam",
        &request(&[f32_tensor("x", &[1, 4], &[0.0; 4])], "probe", 0),
        &sub,
    )
    .await;

    let mut direct = direct_session(&model);
    for (i, batch) in [1usize, 3, 7].into_iter().enumerate() {
        let values: Vec<f32> = (0..batch * 4)
            .map(|k| (k as f32 * 0.37 - 2.0) * (i as f32 + 1.0))
            .collect();
        let id = format!("req-{i}");
        put(
            &c,
            "t/affine/cam",
            request(&[f32_tensor("x", &[batch, 4], &values)], &id, i as u64),
        )
        .await;
        let reply = recv(&sub).await;
        assert_eq!(reply.id().as_deref(), Some(id.as_str()));
        assert_eq!(reply.meta("stream"), Some("cam"));
        assert_eq!(reply.meta("seq"), Some(i.to_string().as_str()));
        assert_eq!(reply.meta("provider"), Some("cpu"));
        assert_eq!(reply.meta("model"), Some("affine.onnx"));
        for k in [
            "queue_us",
            "inference_us",
            "e2e_us",
            "recv_order",
            "run_order",
            "worker",
        ] {
            assert!(
                reply.meta(k).is_some_and(|v| v.parse::<u64>().is_ok()),
                "metadata {k} missing"
            );
        }
        let y = reply.tensor("y");
        assert_eq!(y.shape, vec![batch, 4]);

        let out = direct
            .run(ort::inputs!["x" => OrtTensor::from_array(([batch, 4], values.clone())).unwrap()])
            .unwrap();
        let (_, want) = out["y"].try_extract_tensor::<f32>().unwrap();
        assert_eq!(
            f32_values(y).unwrap(),
            want.to_vec(),
            "daemon and direct ORT disagree"
        );
    }
    let st = &daemon.stats()[0];
    assert_eq!(st.ok, st.received, "every request served: {st:?}");
    daemon.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_input_pipeline_takes_mixed_dtypes() {
    let model = test_model("mixed.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "mixed"
        model = "{model}"
        input = "t/mixed"
        output = "t/mixed_out"
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/mixed_out/**").await;
    let b = Tensor {
        name: "b".into(),
        dtype: Dtype::I64,
        shape: vec![1, 3],
        data: [10i64, -20, 30]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    };
    let msg = request(&[f32_tensor("a", &[1, 3], &[0.5, 0.25, -1.0]), b], "m1", 1);
    until_served(&c, "t/mixed", &msg, &sub).await;
    put(&c, "t/mixed", msg).await;
    let reply = recv(&sub).await;
    assert_eq!(
        reply.meta("stream"),
        Some(""),
        "no wildcard → empty stream id"
    );
    let s = f32_values(reply.tensor("s")).unwrap();
    assert_eq!(s, vec![10.5, -19.75, 29.0]);
    daemon.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_pipeline_carries_state_per_stream_and_resets_when_idle() {
    let model = test_model("acc.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "acc"
        model = "{model}"
        input = "t/acc/*"
        output = "t/acc_out"
        overflow = "latest"
        idle_reset_ms = 400
        state = [{{ input = "state", output = "state_out" }}]
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/acc_out/**").await;
    let one = |id: &str| request(&[f32_tensor("x", &[1, 4], &[1.0, 2.0, 3.0, 4.0])], id, 0);
    // The probe runs on its own stream so a/b start from zero.
    until_served(&c, "t/acc/probe", &one("p"), &sub).await;
    // Interleave two streams, waiting for each answer (no frame superseded).
    let mut last = std::collections::HashMap::new();
    for round in 1..=3 {
        for stream in ["a", "b"] {
            put(
                &c,
                &format!("t/acc/{stream}"),
                one(&format!("{stream}{round}")),
            )
            .await;
            let r = recv(&sub).await;
            assert_eq!(r.meta("stream"), Some(stream));
            let y = f32_values(r.tensor("y")).unwrap();
            assert_eq!(
                y,
                vec![
                    round as f32,
                    2.0 * round as f32,
                    3.0 * round as f32,
                    4.0 * round as f32
                ],
                "stream {stream} round {round}"
            );
            last.insert(stream, y);
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    put(&c, "t/acc/a", one("after-idle")).await;
    let y = f32_values(recv(&sub).await.tensor("y")).unwrap();
    assert_eq!(
        y,
        vec![1.0, 2.0, 3.0, 4.0],
        "state must reset after idle_reset_ms"
    );
    daemon.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_carry_prepends_previous_tail() {
    let model = test_model("context.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "ctx"
        model = "{model}"
        input = "t/ctx/*"
        output = "t/ctx_out"
        overflow = "latest"
        format = "raw"
        raw = {{ tensor = "input", dtype = "f32", shape = [1, 6] }}
        context = [{{ input = "input", keep = 2 }}]
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/ctx_out/**").await;
    let raw = |v: [f32; 6]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    until_served(&c, "t/ctx/probe", &raw([0.0; 6]), &sub).await;
    put(&c, "t/ctx/s", raw([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])).await;
    let a = f32_values(recv(&sub).await.tensor("out")).unwrap();
    assert_eq!(a, vec![0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    put(&c, "t/ctx/s", raw([7.0, 8.0, 9.0, 10.0, 11.0, 12.0])).await;
    let b = f32_values(recv(&sub).await.tensor("out")).unwrap();
    assert_eq!(b, vec![5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
    daemon.shutdown(std::time::Duration::from_secs(5)).await;
}

const VAD_PIPELINE: &str = r#"
    [[pipeline]]
    name = "vad"
    model = "{model}"
    input = "t/mic/*"
    output = "t/vad"
    overflow = "latest"
    format = "raw"
    raw = { tensor = "input", dtype = "f32", shape = [1, 512] }
    constants.sr = { dtype = "i64", shape = [], data = [16000] }
    state = [{ input = "state", output = "stateN" }]
    context = [{ input = "input", keep = 64 }]
"#;

/// Runs Silero VAD directly with state and 64-sample context carried.
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

async fn stream_vad(c: &zenoh::Session, sub: &Sub, stream: &str, samples: &[f32]) -> Vec<f32> {
    let mut probs = Vec::new();
    for (n, chunk) in samples.chunks_exact(512).enumerate() {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        c.put(format!("t/mic/{stream}"), bytes)
            .attachment(format!("id={stream}-{n};seq={n}"))
            .await
            .unwrap();
        let r = recv(sub).await;
        assert_eq!(
            r.meta("seq"),
            Some(n.to_string().as_str()),
            "frames answered in order"
        );
        probs.push(f32_values(r.tensor("output")).unwrap()[0]);
    }
    probs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silero_vad_stream_detects_speech_with_state_carried() {
    let model = fetched_model("silero_vad.onnx");
    let (daemon, port) = start(&VAD_PIPELINE.replace("{model}", &model)).await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/vad/**").await;
    until_served(&c, "t/mic/probe", &vec![0u8; 2048], &sub).await;

    let speech = wav("tests/data/speech_16k.wav");
    let silence = wav("tests/data/silence_16k.wav");
    let got_speech = stream_vad(&c, &sub, "front", &speech).await;
    let got_silence = stream_vad(&c, &sub, "rear", &silence).await;

    let max = |v: &[f32]| v.iter().copied().fold(f32::MIN, f32::max);
    assert!(max(&got_speech) > 0.5, "speech max {}", max(&got_speech));
    assert!(max(&got_silence) < 0.1, "silence max {}", max(&got_silence));

    // Same numbers as a direct stateful ORT loop: state and context are
    // carried per stream, frame after frame.
    let want = vad_reference(&model, &speech);
    assert_eq!(want.len(), got_speech.len());
    for (i, (g, w)) in got_speech.iter().zip(&want).enumerate() {
        assert!((g - w).abs() < 1e-5, "frame {i}: daemon {g} vs direct {w}");
    }
    // And a stateless run would differ: proves the state matters.
    let first_frame_again = vad_reference(&model, &speech[512 * 40..512 * 41]);
    assert!(
        (first_frame_again[0] - got_speech[40]).abs() > 1e-3,
        "state must influence frame 40"
    );
    daemon.shutdown(std::time::Duration::from_secs(5)).await;
}
