//! Token generation with the real converted SmolLM2-135M over loopback zenoh:
//! answers, reproducibility, UTF-8-safe streaming, cancel / length / deadline
//! endings, bad commands, the queryable, and a sensor pipeline that is served
//! between decode steps.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn config(extra: &str) -> String {
    format!(
        r#"
        [[level]]
        name = "sensor"
        [[level]]
        name = "chat"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "t/llm/cmd"
        output = "t/llm/out"
        level = "chat"
        max_tokens = 256
        {extra}
        "#,
        llm_dir()
    )
}

/// Sends a command and collects the stream until the final message.
async fn generate(daemon: &reflexd::Daemon, c: &zenoh::Session, cmd: Value) -> (Vec<Value>, Value) {
    let id = cmd["id"].as_str().unwrap().to_string();
    let key = format!("t/llm/out/{id}");
    let sub = c.declare_subscriber(key.clone()).await.unwrap();
    wired(daemon, c, "t/llm/cmd", &key).await;
    put(c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
    collect_stream(&sub).await
}

async fn collect_stream(sub: &Sub) -> (Vec<Value>, Value) {
    let mut tokens = Vec::new();
    loop {
        let s = tokio::time::timeout(Duration::from_secs(120), sub.recv_async())
            .await
            .expect("generation stream timed out")
            .unwrap();
        let v: Value = serde_json::from_slice(&s.payload().to_bytes()).unwrap();
        if v["done"] == true {
            return (tokens, v);
        }
        tokens.push(v);
    }
}

fn concat(tokens: &[Value]) -> String {
    tokens.iter().map(|t| t["text"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_answer_streams_paris_with_usage_and_timing() {
    let (daemon, port) = start(&config("")).await;
    let c = client(port).await;
    llm_ready(&c).await;
    let (tokens, fin) = generate(
        &daemon,
        &c,
        json!({"id": "q1", "prompt": "What is the capital of France?", "max_tokens": 32}),
    )
    .await;
    let text = fin["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "answer: {text:?}");
    assert_eq!(
        concat(&tokens),
        text,
        "streamed pieces add up to the final text"
    );
    assert_eq!(fin["finish_reason"], "stop");
    assert_eq!(fin["usage"]["completion_tokens"], tokens.len());
    assert!(fin["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(t["seq"], i, "token seq numbers are consecutive");
        assert_eq!(t["id"], "q1");
    }
    let timing = &fin["timing"];
    let (ttft, total) = (
        timing["ttft_ms"].as_f64().unwrap(),
        timing["total_ms"].as_f64().unwrap(),
    );
    assert!(ttft > 0.0 && ttft <= total, "{timing}");
    assert!(timing["tpot_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(
        daemon.generation_stats()[0].ok,
        daemon.generation_stats()[0].received
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_gives_same_tokens_and_unicode_streams_whole() {
    let (daemon, port) = start(&config("")).await;
    let c = client(port).await;
    llm_ready(&c).await;
    let sampled = |id: &str| json!({"id": id, "prompt": "Write a short poem about robots.", "max_tokens": 24, "temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 1234});
    let (a, _) = generate(&daemon, &c, sampled("s1")).await;
    let (b, _) = generate(&daemon, &c, sampled("s2")).await;
    let ids = |t: &[Value]| {
        t.iter()
            .map(|v| v["token_id"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ids(&b), "same seed, same tokens");
    let (other, _) = generate(&daemon, &c, json!({"id": "s3", "prompt": "Write a short poem about robots.", "max_tokens": 24, "temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 99})).await;
    assert_ne!(ids(&a), ids(&other), "a different seed samples differently");

    for (id, prompt) in [
        ("ko", "안녕하세요! 한국어로 로봇에 대해 한 문장 써 주세요."),
        ("emoji", "Reply with three emoji: 🤖🚗🔋"),
    ] {
        let (tokens, fin) = generate(
            &daemon,
            &c,
            json!({"id": id, "prompt": prompt, "max_tokens": 40}),
        )
        .await;
        let text = fin["text"].as_str().unwrap();
        assert_eq!(
            concat(&tokens),
            text,
            "{id}: pieces add up to the final text"
        );
        assert!(
            !text.contains('\u{FFFD}'),
            "{id}: no broken characters in {text:?}"
        );
        assert!(
            tokens
                .iter()
                .all(|t| !t["text"].as_str().unwrap().contains('\u{FFFD}'))
        );
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_length_and_deadline_end_generations() {
    let (daemon, port) = start(&config("")).await;
    let c = client(port).await;
    llm_ready(&c).await;
    let (tokens, fin) = generate(
        &daemon,
        &c,
        json!({"id": "len", "prompt": "Count from one to one hundred.", "max_tokens": 5}),
    )
    .await;
    assert_eq!(fin["finish_reason"], "length");
    assert_eq!(tokens.len(), 5);

    let (tokens, fin) =
        generate(&daemon, &c, json!({"id": "dl", "prompt": "Tell me a long story about a robot.", "max_tokens": 256, "deadline_ms": 300})).await;
    assert_eq!(fin["finish_reason"], "deadline");
    assert_eq!(
        concat(&tokens),
        fin["text"].as_str().unwrap(),
        "keeps what it produced"
    );
    assert!(tokens.len() < 256);

    let sub = c.declare_subscriber("t/llm/out/cx").await.unwrap();
    wired(&daemon, &c, "t/llm/cmd", "t/llm/out/cx").await;
    put(
        &c,
        "t/llm/cmd",
        json!({"id": "cx", "prompt": "Tell me a long story about a robot.", "max_tokens": 256})
            .to_string()
            .into_bytes(),
    )
    .await;
    // Cancel once the first token is out.
    let first = tokio::time::timeout(Duration::from_secs(60), sub.recv_async())
        .await
        .unwrap()
        .unwrap();
    let first: Value = serde_json::from_slice(&first.payload().to_bytes()).unwrap();
    put(
        &c,
        "t/llm/cmd/cancel",
        json!({"id": "cx"}).to_string().into_bytes(),
    )
    .await;
    let (rest, fin) = collect_stream(&sub).await;
    assert_eq!(fin["finish_reason"], "cancelled");
    assert!(rest.len() + 1 < 256);
    assert_eq!(
        format!("{}{}", first["text"].as_str().unwrap(), concat(&rest)),
        fin["text"].as_str().unwrap()
    );
    assert_eq!(daemon.live_generations(), vec![0]);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_error_codes_and_the_daemon_keeps_answering() {
    let (daemon, port) = start(&config("max_prompt_chars = 200")).await;
    let c = client(port).await;
    llm_ready(&c).await;
    let errs = c.declare_subscriber("t/llm/out/error").await.unwrap();
    wired(&daemon, &c, "t/llm/cmd", "t/llm/out/error").await;
    let cases: Vec<(&str, String)> = vec![
        ("bad_command", "{not json".into()),
        (
            "bad_command",
            json!({"id": "u", "prompt": "x", "beam_width": 4}).to_string(),
        ),
        (
            "bad_command",
            json!({"id": "no/slash", "prompt": "x"}).to_string(),
        ),
        ("empty_prompt", json!({"id": "e", "prompt": ""}).to_string()),
        (
            "prompt_too_long",
            json!({"id": "l", "prompt": "word ".repeat(100)}).to_string(),
        ),
        (
            "bad_parameter",
            json!({"id": "t", "prompt": "x", "temperature": 99}).to_string(),
        ),
        (
            "bad_parameter",
            json!({"id": "m", "prompt": "x", "max_tokens": 100000}).to_string(),
        ),
        (
            "bad_parameter",
            json!({"id": "p", "prompt": "x", "priority": "sensor"}).to_string(),
        ),
        ("empty_payload", String::new()),
    ];
    for (code, body) in cases {
        put(&c, "t/llm/cmd", body.clone().into_bytes()).await;
        let s = tokio::time::timeout(Duration::from_secs(10), errs.recv_async())
            .await
            .expect("error reply")
            .unwrap();
        let v: Value = serde_json::from_slice(&s.payload().to_bytes()).unwrap();
        assert_eq!(v["code"], code, "{body}: {v}");
        assert_eq!(v["pipeline"], "chat");
    }
    let (_, fin) = generate(
        &daemon,
        &c,
        json!({"id": "after", "prompt": "What is the capital of France?", "max_tokens": 16}),
    )
    .await;
    assert!(fin["text"].as_str().unwrap().contains("Paris"));
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queryable_streams_the_same_answer_as_replies() {
    let (daemon, port) = start(&config("")).await;
    let c = client(port).await;
    llm_ready(&c).await;
    // Every reply has the query's key: without consolidation off, zenoh
    // would keep only the last one.
    let replies = c
        .get("t/llm/cmd/query")
        .consolidation(zenoh::query::ConsolidationMode::None)
        .payload(
            json!({"id": "g1", "prompt": "What is the capital of France?", "max_tokens": 32})
                .to_string(),
        )
        .timeout(Duration::from_secs(120))
        .await
        .unwrap();
    let mut tokens = Vec::new();
    let mut fin = Value::Null;
    while let Ok(r) = replies.recv_async().await {
        let v: Value =
            serde_json::from_slice(&r.result().expect("ok reply").payload().to_bytes()).unwrap();
        if v["done"] == true {
            fin = v;
        } else {
            tokens.push(v);
        }
    }
    assert!(fin["text"].as_str().unwrap().contains("Paris"), "{fin}");
    assert_eq!(concat(&tokens), fin["text"].as_str().unwrap());
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_frames_wait_at_most_one_decode_step() {
    let affine = test_model("affine.onnx");
    // One worker for everything: only the scheduler stands between a sensor
    // frame and a long generation.
    let (daemon, port) = start(&config(&format!(
        r#"
        [[pipeline]]
        name = "sensor"
        model = "{affine}"
        input = "t/sensor/*"
        output = "t/sensor_out"
        level = "sensor"
        queue_capacity = 64
        deadline_ms = 60000
        "#
    )))
    .await;
    let c = client(port).await;
    llm_ready(&c).await;
    let sensor = subscribe(&c, "t/sensor_out/**").await;
    until_served(
        &c,
        "t/sensor/imu",
        &request(
            &[reflexd::tensor::f32_tensor("x", &[1, 4], &[0.0; 4])],
            "p",
            0,
        ),
        &sensor,
    )
    .await;
    let stream = c.declare_subscriber("t/llm/out/long").await.unwrap();
    wired(&daemon, &c, "t/llm/cmd", "t/llm/out/long").await;
    put(
        &c,
        "t/llm/cmd",
        json!({"id": "long", "prompt": "Tell me a long story about a robot.", "max_tokens": 80})
            .to_string()
            .into_bytes(),
    )
    .await;
    // Publish sensor frames while the generation decodes (after its first
    // token).
    let first = tokio::time::timeout(Duration::from_secs(60), stream.recv_async())
        .await
        .unwrap()
        .unwrap();
    let first: Value = serde_json::from_slice(&first.payload().to_bytes()).unwrap();
    let frames = 20;
    let pub_task = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..frames {
                tokio::time::sleep(Duration::from_millis(15)).await;
                let m = request(
                    &[reflexd::tensor::f32_tensor("x", &[1, 4], &[i as f32; 4])],
                    &format!("f{i}"),
                    i,
                );
                put(&c, "t/sensor/imu", m).await;
            }
        })
    };
    let (mut tokens, _) = collect_stream(&stream).await;
    tokens.insert(0, first);
    pub_task.await.unwrap();
    let mut frames_seen = Vec::new();
    while let Some(r) = try_recv(&sensor, Duration::from_secs(5)).await {
        let id = r.id().unwrap();
        let run = r
            .meta("run_order")
            .unwrap_or_else(|| panic!("frame {id} not served: {r:?}"));
        frames_seen.push((
            id,
            r.meta("recv_order").unwrap().parse::<u64>().unwrap(),
            run.parse::<u64>().unwrap(),
        ));
        if frames_seen.len() == frames as usize {
            break;
        }
    }
    let steps: Vec<u64> = tokens
        .iter()
        .map(|t| t["run_order"].as_u64().unwrap())
        .collect();
    assert!(
        steps.len() > 20,
        "the generation must be long enough to overlap the frames"
    );
    let mut overlapped = 0;
    for (id, recv, run) in &frames_seen {
        let waited = steps.iter().filter(|&&s| *recv < s && s < *run).count();
        assert!(
            waited <= 1,
            "frame {id} waited behind {waited} decode steps (recv {recv}, run {run})"
        );
        if steps.iter().any(|&s| s > *run) && steps.iter().any(|&s| s < *recv) {
            overlapped += 1;
        }
    }
    assert!(
        overlapped >= 5,
        "frames must arrive while decoding: {overlapped} of {}",
        frames_seen.len()
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_prefill_gives_the_same_tokens() {
    let mut answers = Vec::new();
    for chunk in [4, 64] {
        let (daemon, port) = start(&config(&format!("prefill_chunk = {chunk}"))).await;
        let c = client(port).await;
        llm_ready(&c).await;
        let (tokens, fin) = generate(
            &daemon,
            &c,
            json!({"id": "pc", "prompt": "What is the capital of France?", "max_tokens": 12}),
        )
        .await;
        assert!(
            fin["usage"]["prompt_tokens"].as_u64().unwrap() > 4 * 3,
            "the prompt spans several chunks"
        );
        answers.push(
            tokens
                .iter()
                .map(|t| t["token_id"].as_u64())
                .collect::<Vec<_>>(),
        );
        daemon.shutdown(Duration::from_secs(5)).await;
    }
    assert_eq!(
        answers[0], answers[1],
        "prefill in chunks of 4 and of 64 give the same greedy tokens"
    );
}
