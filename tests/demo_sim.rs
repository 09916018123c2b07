//! The demo's data path with real parts: reflexd-sim (the binary `make demo`
//! runs) sends `models/data/signs.png` as u8 bgr8 image messages and real
//! speech as raw f32 frames over loopback zenoh to a daemon running the
//! demo's OCR chain (folded PP-OCR det → cls → rec) and Silero VAD with its
//! speech-event answer stage; the simulator must print the words drawn on
//! the frame, the per-stage timing and a speech_start event, and exit 0
//! because both pipelines answered.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_sends_pixels_and_prints_text_lines_and_speech_events() {
    let signs = repo().join("models/data/signs.png");
    assert!(
        signs.exists(),
        "{} missing: run `make setup`",
        signs.display()
    );
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "vad"
        model = "{vad}"
        input = "robot/mic/*"
        output = "reflexd/vad"
        overflow = "latest"
        format = "raw"
        raw = {{ tensor = "input", dtype = "f32", shape = [1, 512] }}
        constants.sr = {{ dtype = "i64", shape = [], data = [16000] }}
        state = [{{ input = "state", output = "stateN" }}]
        context = [{{ input = "input", keep = 64 }}]
        [pipeline.answer]
        kind = "vad"
        outputs = "both"
        [[pipeline]]
        name = "ocr"
        model = "{det}"
        input = "robot/camera/*"
        output = "reflexd/ocr"
        format = "image"
        deadline_ms = 10000
        overflow = "latest"
        [pipeline.ocr]
        rec = "{rec}"
        cls = "{cls}"
        "#,
        vad = fetched_model("silero_vad.onnx"),
        det = fetched_model("ch_PP-OCRv4_det_infer.folded.onnx"),
        rec = fetched_model("ch_PP-OCRv4_rec_infer.folded.onnx"),
        cls = fetched_model("ch_ppocr_mobile_v2.0_cls_infer.folded.onnx"),
    ))
    .await;
    let mut sim = Command::new(env!("CARGO_BIN_EXE_reflexd-sim"));
    sim.env("REFLEXD_CONNECT", format!("tcp/127.0.0.1:{port}"))
        .env_remove("REFLEXD_DATA")
        .args(["--seconds", "3", "--camera-hz", "1", "--expect", "vad,ocr"]);
    let o = tokio::task::spawn_blocking(move || sim.output().unwrap())
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("640×480 bgr8 pixels"), "{out}");
    // The recogniser drops spaces between words; the upside-down line is
    // read because the angle classifier turns it.
    for word in ["ROBOT", "CAMERA", "Hello", "warehouse", "upside"] {
        assert!(
            out.lines()
                .any(|l| l.contains(" conf ") && l.contains(word)),
            "no text line with {word:?}:\n{out}"
        );
    }
    assert!(out.contains("stages: ocr.det"), "{out}");
    assert!(out.contains("ocr.rec"), "{out}");
    assert!(out.contains(">> speech_start"), "{out}");
    daemon.shutdown(Duration::from_secs(5)).await;
}
