//! Speech events through the running daemon: Silero VAD (real model, real
//! speech) with `[pipeline.answer] kind = "vad"` answers every 32 ms frame
//! with its probability and the speech start/end events of its stream. The
//! events equal what the answer library computes offline from the same
//! probabilities and timestamps (so per-stream state is carried across
//! frames), and an open segment is closed with `speech_end` when its
//! stream goes idle and when the daemon stops.

mod common;

use std::time::Duration;

use common::*;
use reflexd::infer::post::{RawVad, VadConfig, VadEvent, VadTracker};
use reflexd::tensor::f32_tensor;
use serde_json::Value;

const VAD: &str = r#"
    [[pipeline]]
    name = "vad"
    model = "{model}"
    input = "t/mic/*"
    output = "t/vad"
    overflow = "latest"
    idle_reset_ms = 400
    format = "raw"
    raw = { tensor = "input", dtype = "f32", shape = [1, 512] }
    constants.sr = { dtype = "i64", shape = [], data = [16000] }
    state = [{ input = "state", output = "stateN" }]
    context = [{ input = "input", keep = 64 }]
    [pipeline.answer]
    kind = "vad"
    min_silence_ms = 200
"#;

const FRAME_US: u64 = 32_000;
const T0: u64 = 1_764_600_000_000_000;

fn frame_bytes(samples: &[f32]) -> Vec<u8> {
    f32_tensor("input", &[1, 512], samples).data.to_vec()
}

async fn put_audio(c: &zenoh::Session, key: &str, samples: &[f32], att: &str) {
    c.put(key.to_string(), frame_bytes(samples))
        .attachment(att.as_bytes().to_vec())
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .await
        .unwrap();
}

/// Sends `samples` as frames of stream `stream` from frame number `first`,
/// one at a time, and returns every answer.
async fn stream_frames(
    c: &zenoh::Session,
    sub: &Sub,
    stream: &str,
    samples: &[f32],
    first: u64,
) -> Vec<Value> {
    let mut out = Vec::new();
    for (k, chunk) in samples.chunks_exact(512).enumerate() {
        let n = first + k as u64;
        let id = format!("{stream}-{n}");
        let att = format!("id={id};seq={n};ts_us={}", T0 + n * FRAME_US);
        put_audio(c, &format!("t/mic/{stream}"), chunk, &att).await;
        loop {
            let r = recv(sub).await;
            if r.id().as_deref() == Some(id.as_str()) {
                out.push(r.answer().clone());
                break;
            }
        }
    }
    out
}

fn events(answers: &[Value]) -> Vec<Value> {
    answers
        .iter()
        .flat_map(|a| {
            a["answer"]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_events_match_the_offline_tracker_and_close_on_idle_and_shutdown() {
    let model = fetched_model("silero_vad.onnx");
    let (daemon, port) = start(&VAD.replace("{model}", &model)).await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/vad/**").await;
    wired(&daemon, &c, "t/mic/a", "t/vad/a").await;
    let speech = wav("tests/data/speech_16k.wav");
    let silence = wav("tests/data/silence_16k.wav");

    // Stream a: speech then a second of silence.
    let mut audio = speech.clone();
    audio.extend_from_slice(&silence);
    let answers = stream_frames(&c, &sub, "a", &audio, 0).await;
    let got = events(&answers);
    let cfg = VadConfig::from_raw(&RawVad {
        min_silence_ms: Some(200),
        ..RawVad::default()
    })
    .unwrap();
    let mut offline = VadTracker::new(cfg);
    let mut want = Vec::new();
    for (n, a) in answers.iter().enumerate() {
        let p = a["answer"]["probability"].as_f64().unwrap() as f32;
        let ans = offline.push(p, T0 + n as u64 * FRAME_US, FRAME_US);
        assert_eq!(a["answer"]["speaking"], ans.speaking, "frame {n}: {a}");
        want.extend(ans.events);
    }
    let want: Vec<Value> = want
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    assert_eq!(got, want);
    assert!(
        got.len() >= 2 && got[0]["event"] == "speech_start",
        "real speech gives a segment: {got:?}"
    );
    assert_eq!(got.last().unwrap()["event"], "speech_end", "{got:?}");

    // The first frame stream a was speaking at: streams b and c stop there,
    // inside a confirmed segment.
    let confirmed = answers
        .iter()
        .position(|a| a["answer"]["speaking"] == true)
        .unwrap()
        + 1;

    // Stream b: speech only, then quiet for longer than idle_reset_ms; its
    // next frame finds the state reset and the open segment is closed first.
    let answers = stream_frames(&c, &sub, "b", &speech[..512 * confirmed], 0).await;
    assert_eq!(answers.last().unwrap()["answer"]["speaking"], true);
    tokio::time::sleep(Duration::from_millis(600)).await;
    put_audio(&c, "t/mic/b", &silence[..512], "id=b-late;seq=999").await;
    let mut closed = None;
    for _ in 0..2 {
        let r = recv(&sub).await;
        if let Reply::Answer { json, .. } = &r
            && json["reason"] == "idle"
        {
            closed = Some(json.clone());
        }
    }
    let closed = closed.expect("speech_end when the idle stream was reset");
    assert_eq!(closed["stream"], "b");
    let end = &closed["answer"]["events"][0];
    assert_eq!(end["event"], "speech_end", "{closed}");
    // The segment ends at the end of the stream's last frame (+ padding).
    let want_end = T0 + confirmed as u64 * FRAME_US + cfg.speech_pad_us;
    assert_eq!(end["end_us"].as_u64(), Some(want_end), "{closed}");

    // Stream c: speech only, then the daemon stops.
    stream_frames(&c, &sub, "c", &speech[..512 * confirmed], 0).await;
    daemon.shutdown(Duration::from_secs(2)).await;
    let mut at_shutdown = None;
    while let Some(r) = try_recv(&sub, Duration::from_secs(2)).await {
        if let Reply::Answer { json, .. } = &r
            && json["reason"] == "shutdown"
        {
            at_shutdown = Some(json.clone());
        }
    }
    let at_shutdown = at_shutdown.expect("speech_end at shutdown");
    assert_eq!(at_shutdown["stream"], "c");
    let e: VadEvent = match at_shutdown["answer"]["events"][0]["event"].as_str() {
        Some("speech_end") => VadEvent::SpeechEnd {
            start_us: at_shutdown["answer"]["events"][0]["start_us"]
                .as_u64()
                .unwrap(),
            end_us: at_shutdown["answer"]["events"][0]["end_us"]
                .as_u64()
                .unwrap(),
        },
        other => panic!("not a speech_end: {other:?}"),
    };
    let VadEvent::SpeechEnd { start_us, end_us } = e else {
        unreachable!()
    };
    assert!(
        start_us >= T0 - cfg.speech_pad_us && end_us > start_us,
        "{at_shutdown}"
    );
}
