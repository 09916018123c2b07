//! Shared helpers for the integration tests: start a daemon in-process on a
//! loopback port, connect a zenoh client to it, send requests and collect
//! predictions and error messages. Loopback only; scouting off.
#![allow(dead_code)]

pub mod proc;
pub mod ros2;
pub mod stall;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use reflexd::tensor::Tensor;
use reflexd::wire::{self, RequestMeta};
use reflexd::{Config, Daemon};
use zenoh::handlers::FifoChannelHandler;
use zenoh::pubsub::Subscriber;
use zenoh::sample::Sample;

pub const WAIT: Duration = Duration::from_secs(15);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn test_model(name: &str) -> String {
    repo().join("models/test").join(name).display().to_string()
}

pub fn fetched_model(name: &str) -> String {
    let p = repo().join("models/fetched").join(name);
    assert!(
        p.exists(),
        "{} missing: run `make setup` (scripts/provision.sh) first",
        p.display()
    );
    p.display().to_string()
}

/// The exact (float32-activation) conversion of SmolLM2-135M, provisioned
/// by `make setup` beside the int8 default: tests that compare answers
/// token for token (or expect "Paris") need numerics that do not depend on
/// the CPU's int8 kernels; `llm_dir_int8` is the deployed default.
pub fn llm_dir() -> String {
    llm_at("models/llm/fetched-exact")
}

/// The default conversion (int8 activations), as the demo runs it.
pub fn llm_dir_int8() -> String {
    llm_at("models/llm/fetched")
}

fn llm_at(rel: &str) -> String {
    let p = repo().join(rel);
    assert!(
        p.join("model.onnx").exists(),
        "{} missing: run `make setup`",
        p.display()
    );
    p.display().to_string()
}

/// The provisioned venv's Python (eclipse-zenoh, numpy, onnxruntime).
pub fn venv_python() -> PathBuf {
    if let Some(p) = std::env::var_os("REFLEXD_PYTHON") {
        return p.into();
    }
    let cache = reflexd::infer::runtime::cache_dir().expect("HOME or REFLEXD_CACHE is set");
    let p = cache.join("venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run `make setup` (scripts/provision.sh)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a daemon from TOML text; `{port}` is replaced by a free loopback
/// port, which is returned.
pub async fn start(toml_text: &str) -> (Daemon, u16) {
    let port = free_port();
    let text = format!(
        "[zenoh]\nlisten = [\"tcp/127.0.0.1:{port}\"]\nscouting = false\n{}",
        toml_text
    );
    let cfg = Config::from_toml(&text, &repo()).unwrap_or_else(|e| panic!("test config: {e}"));
    let d = Daemon::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("daemon start: {e}"));
    (d, port)
}

pub async fn client(port: u16) -> zenoh::Session {
    let json = format!(
        r#"{{ mode: "peer", listen: {{ endpoints: [] }}, connect: {{ endpoints: ["tcp/127.0.0.1:{port}"] }},
             scouting: {{ multicast: {{ enabled: false }}, gossip: {{ enabled: false }} }} }}"#
    );
    let s = zenoh::open(zenoh::Config::from_json5(&json).unwrap())
        .await
        .unwrap();
    for _ in 0..200 {
        if s.info().peers_zid().await.next().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s
}

pub type Sub = Subscriber<FifoChannelHandler<Sample>>;

/// Waits until session `s` knows a subscriber of another session matching
/// `key` (zenoh's matching status), so a put on `key` from `s` reaches it:
/// exactly as long as the subscription takes to propagate, no fixed sleep.
pub async fn matched(s: &zenoh::Session, key: &str) {
    let p = s
        .declare_publisher(key.to_string())
        .allowed_destination(zenoh::sample::Locality::Remote)
        .await
        .unwrap();
    // The listener first, then the status: a match in between is not missed.
    let changes = p.matching_listener().await.unwrap();
    if p.matching_status().await.unwrap().matching() {
        return;
    }
    let wait = async {
        while let Ok(st) = changes.recv_async().await {
            if st.matching() {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("no subscriber on {key} became known within {WAIT:?}"));
}

/// Waits until a request put by `c` on `input` reaches the in-process
/// daemon's subscriber and a reply the daemon puts on `output` reaches `c`'s
/// subscriber (declared before this call).
pub async fn wired(daemon: &Daemon, c: &zenoh::Session, input: &str, output: &str) {
    matched(c, input).await;
    matched(daemon.zenoh_session(), output).await;
}

/// The daemon's metrics snapshot as the JSON it publishes on
/// `<node>/metrics`: fields are read by name, so a test can check a counter
/// the snapshot struct does not have yet.
pub fn metrics_json(daemon: &Daemon) -> serde_json::Value {
    serde_json::to_value(daemon.metrics()).expect("snapshot serializes")
}

/// One pipeline's entry of [`metrics_json`].
pub fn pipeline_json(daemon: &Daemon, name: &str) -> serde_json::Value {
    let m = metrics_json(daemon);
    m["pipelines"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no pipeline {name} in {m}"))
}

/// A pipeline's error count for `code`, by its wire name (0 when absent).
pub fn error_count(daemon: &Daemon, pipeline: &str, code: &str) -> u64 {
    pipeline_json(daemon, pipeline)["errors"][code]
        .as_u64()
        .unwrap_or(0)
}

pub async fn subscribe(s: &zenoh::Session, key: &str) -> Sub {
    s.declare_subscriber(key.to_string()).await.unwrap()
}

/// What came back for one request.
#[derive(Debug)]
pub enum Reply {
    Prediction {
        key: String,
        tensors: Vec<Tensor>,
        meta: HashMap<String, String>,
    },
    Error {
        key: String,
        json: serde_json::Value,
    },
    /// An answer message (`[pipeline.answer]`, docs/answers.md).
    Answer {
        key: String,
        json: serde_json::Value,
    },
}

impl Reply {
    pub fn meta(&self, k: &str) -> Option<&str> {
        match self {
            Reply::Prediction { meta, .. } => meta.get(k).map(|s| s.as_str()),
            Reply::Error { .. } | Reply::Answer { .. } => None,
        }
    }
    pub fn id(&self) -> Option<String> {
        match self {
            Reply::Prediction { meta, .. } => meta.get("id").cloned(),
            Reply::Error { json, .. } | Reply::Answer { json, .. } => {
                json["id"].as_str().map(str::to_string)
            }
        }
    }
    pub fn code(&self) -> Option<&str> {
        match self {
            Reply::Error { json, .. } => json["code"].as_str(),
            _ => None,
        }
    }

    /// The key and metadata (or error body), without tensor data: for
    /// assertion messages.
    pub fn brief(&self) -> String {
        match self {
            Reply::Prediction { key, meta, .. } => format!("prediction on {key}: {meta:?}"),
            Reply::Error { key, json } => format!("error on {key}: {json}"),
            Reply::Answer { key, json } => format!("answer on {key}: {json}"),
        }
    }

    pub fn tensor(&self, name: &str) -> &Tensor {
        match self {
            Reply::Prediction { tensors, .. } => tensors
                .iter()
                .find(|t| t.name == name)
                .expect("tensor in prediction"),
            Reply::Error { json, .. } => panic!("expected a prediction, got error {json}"),
            Reply::Answer { json, .. } => panic!("expected a prediction, got answer {json}"),
        }
    }

    /// The answer message's JSON (panics on anything else).
    pub fn answer(&self) -> &serde_json::Value {
        match self {
            Reply::Answer { json, .. } => json,
            other => panic!("expected an answer message, got {}", other.brief()),
        }
    }
}

/// Receives the next message on a subscriber covering outputs and errors.
pub async fn recv(sub: &Sub) -> Reply {
    try_recv(sub, WAIT)
        .await
        .expect("timed out waiting for a reply")
}

/// Like [`recv`], but `None` after `wait`.
pub async fn try_recv(sub: &Sub, wait: Duration) -> Option<Reply> {
    let sample = tokio::time::timeout(wait, sub.recv_async())
        .await
        .ok()?
        .unwrap();
    let key = sample.key_expr().as_str().to_string();
    let bytes = sample.payload().to_bytes();
    if key.ends_with("/error") {
        Some(Reply::Error {
            key,
            json: serde_json::from_slice(&bytes).expect("error body is JSON"),
        })
    } else {
        match wire::decode_output(&bytes) {
            Ok((tensors, meta)) => Some(Reply::Prediction { key, tensors, meta }),
            Err(e) => {
                let json = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| panic!("neither a prediction ({e}) nor an answer: {key}"));
                Some(Reply::Answer { key, json })
            }
        }
    }
}

/// Publishes with `Block`, so a test's own burst is never dropped by the
/// client's transmission queue.
pub async fn put(s: &zenoh::Session, key: &str, payload: Vec<u8>) {
    s.put(key.to_string(), payload)
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .await
        .unwrap();
}

pub fn request(tensors: &[Tensor], id: &str, seq: u64) -> Vec<u8> {
    wire::encode_request(
        tensors,
        &RequestMeta {
            id: Some(id.to_string()),
            seq: Some(seq),
            ts_us: None,
        },
    )
}

/// Sends probe requests until the daemon answers one, so later sends are not
/// lost to subscription propagation. Returns how many probes were sent.
pub async fn until_served(s: &zenoh::Session, key: &str, payload: &[u8], sub: &Sub) -> usize {
    for i in 1..=100 {
        put(s, key, payload.to_vec()).await;
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), sub.recv_async()).await
        {
            // Drain any answers to earlier probes.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while sub.try_recv().ok().flatten().is_some() {}
            return i;
        }
    }
    panic!("daemon never answered on {key}");
}

/// Reads a 16-bit mono WAV as f32 samples in [-1, 1].
pub fn wav(path: &str) -> Vec<f32> {
    let mut r = hound::WavReader::open(repo().join(path)).unwrap();
    assert_eq!(r.spec().sample_rate, 16000);
    r.samples::<i16>()
        .map(|s| s.unwrap() as f32 / 32768.0)
        .collect()
}

/// Waits until the generation pipeline on `t/llm/cmd` (outputs under
/// `t/llm/out/`) answers, and no probe still holds a generation slot.
pub async fn llm_ready(c: &zenoh::Session) {
    // The first command may race subscription propagation: send probes until
    // one is answered. Then wait until every probe has ended (final message
    // or error): on a loaded machine a probe can take seconds, and probes
    // still running would hold max_generations slots the test needs.
    let sub = c.declare_subscriber("t/llm/out/**").await.unwrap();
    let mut sent = 0;
    let mut ended = 0;
    let ended_by = |s: &zenoh::sample::Sample| {
        let v: serde_json::Value =
            serde_json::from_slice(&s.payload().to_bytes()).unwrap_or_default();
        v["id"].as_str().is_some_and(|id| id.starts_with("probe"))
            && (v["done"] == true || v.get("code").is_some())
    };
    for i in 0..50 {
        let cmd = serde_json::json!({"id": format!("probe{i}"), "prompt": "Hi", "max_tokens": 1});
        put(c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
        sent += 1;
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(500), sub.recv_async()).await
        {
            ended += usize::from(ended_by(&s));
            while ended < sent {
                let s = tokio::time::timeout(Duration::from_secs(120), sub.recv_async())
                    .await
                    .expect("probes never ended")
                    .unwrap();
                ended += usize::from(ended_by(&s));
            }
            // A probe's slot is freed before its final message is sent
            // (llm::serve::finish), so nothing is left to wait for.
            return;
        }
    }
    panic!("daemon never answered a generation command");
}
