//! Pixels in, answers out, through the running daemon over loopback zenoh:
//! camera frames sent as image messages (raw bgr8 with row padding, JPEG,
//! PNG) into a pipeline running the generated YOLO-shaped detector
//! (models/test/detect.onnx) come back as detections in source pixels with
//! their labels; `outputs = "both"` carries the tensors and the answer;
//! an in-process chain classifies each detection's crop on a second
//! session (models/test/classify.onnx) and another feeds tensors from one
//! model to the next; broken frames get their error codes.

mod common;

use std::time::Duration;

use common::*;
use reflexd::tensor::{f32_tensor, f32_values};
use serde_json::Value;

/// Source squares (x1, y1, x2, y2), colour (r, g, b) and label. After the
/// 128x96 → 64x64 letterbox (scale 1/2, 8 px top margin) each fills one
/// 8x8 cell of the detector exactly.
const SQUARES: [([u32; 4], [u8; 3], &str); 3] = [
    ([32, 16, 48, 32], [255, 0, 0], "red"),
    ([80, 48, 96, 64], [0, 255, 0], "green"),
    ([96, 16, 112, 32], [0, 0, 255], "blue"),
];
const W: u32 = 128;
const H: u32 = 96;

/// The frame as packed RGB.
fn rgb_frame() -> Vec<u8> {
    let mut img = vec![0u8; (W * H * 3) as usize];
    for ([x1, y1, x2, y2], rgb, _) in SQUARES {
        for y in y1..y2 {
            for x in x1..x2 {
                let i = ((y * W + x) * 3) as usize;
                img[i..i + 3].copy_from_slice(&rgb);
            }
        }
    }
    img
}

/// bgr8 rows of `step` bytes (padding filled with junk the daemon must
/// never read).
fn bgr_padded(step: usize) -> Vec<u8> {
    let rgb = rgb_frame();
    let mut out = vec![0xAB; step * H as usize];
    for y in 0..H as usize {
        for x in 0..W as usize {
            let s = (y * W as usize + x) * 3;
            out[y * step + x * 3..][..3].copy_from_slice(&[rgb[s + 2], rgb[s + 1], rgb[s]]);
        }
    }
    out
}

fn jpeg(rgb: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    jpeg_encoder::Encoder::new(&mut buf, 95)
        .encode(rgb, W as u16, H as u16, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    buf
}

fn png(rgb: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut enc = png::Encoder::new(&mut buf, W, H);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(rgb).unwrap();
    buf
}

async fn put_frame(c: &zenoh::Session, key: &str, payload: Vec<u8>, attachment: &str) {
    c.put(key.to_string(), payload)
        .attachment(attachment.as_bytes().to_vec())
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .await
        .unwrap();
}

/// The next reply for request `id`.
async fn reply_for(sub: &Sub, id: &str) -> Reply {
    loop {
        let r = recv(sub).await;
        if r.id().as_deref() == Some(id) {
            return r;
        }
    }
}

const DETECT: &str = r#"
        [[pipeline]]
        name = "cam"
        model = "models/test/detect.onnx"
        input = "t/cam/*"
        output = "t/out/cam"
        format = "image"
        overflow = "latest"
        [pipeline.pre]
        resize = "letterbox"
        [pipeline.answer]
        kind = "detect"
        tensor = "v8"
        confidence = 0.5
        labels = "models/test/colors.txt"
"#;

/// Every square found once, with its label, at its source-pixel box.
fn assert_squares(detections: &Value, what: &str) {
    let list = detections
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {detections}"));
    assert_eq!(list.len(), SQUARES.len(), "{what}: {detections}");
    for ([x1, y1, x2, y2], _, name) in SQUARES {
        let d = list
            .iter()
            .find(|d| d["label"] == name)
            .unwrap_or_else(|| panic!("{what}: no {name} in {detections}"));
        let b = &d["box"];
        for (k, want) in [("x1", x1), ("y1", y1), ("x2", x2), ("y2", y2)] {
            let got = b[k].as_f64().unwrap();
            assert!(
                (got - want as f64).abs() < 1e-3,
                "{what} {name}.{k}: {got} vs {want}"
            );
        }
        assert!(d["score"].as_f64().unwrap() > 0.9, "{what} {name}: {d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detector_answers_in_source_pixels_for_raw_jpeg_and_png_frames() {
    let (daemon, port) = start(DETECT).await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/cam/**").await;
    wired(&daemon, &c, "t/cam/a", "t/out/cam/a").await;
    let step = W as usize * 3 + 16;
    let rgb = rgb_frame();
    let frames = [
        (
            "raw",
            bgr_padded(step),
            format!("encoding=bgr8;width={W};height={H};step={step}"),
        ),
        ("jpeg", jpeg(&rgb), "encoding=jpeg".to_string()),
        (
            "png",
            png(&rgb),
            format!("encoding=png;width={W};height={H}"),
        ),
    ];
    for (i, (what, bytes, desc)) in frames.into_iter().enumerate() {
        let id = format!("f-{what}");
        put_frame(
            &c,
            "t/cam/a",
            bytes,
            &format!("id={id};seq={i};ts_us=17;{desc}"),
        )
        .await;
        let r = reply_for(&sub, &id).await;
        let j = r.answer();
        assert_eq!(j["pipeline"], "cam", "{j}");
        assert_eq!(j["stream"], "a");
        assert_eq!(j["seq"], i as u64);
        assert_eq!(j["ts_us"], 17);
        assert!(
            j["pre_us"].as_str().unwrap().parse::<u64>().unwrap() > 0,
            "{j}"
        );
        let a = &j["answer"];
        assert_eq!(a["kind"], "detect");
        assert_eq!(
            (a["width"].as_u64(), a["height"].as_u64()),
            (Some(128), Some(96))
        );
        assert_squares(&a["detections"], what);
    }
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_both_carries_the_tensors_and_the_answer_in_metadata() {
    let cfg = DETECT.replace(
        "kind = \"detect\"",
        "kind = \"detect\"\n        outputs = \"both\"",
    );
    let (daemon, port) = start(&cfg).await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/cam/**").await;
    wired(&daemon, &c, "t/cam/a", "t/out/cam/a").await;
    let rgb = rgb_frame();
    put_frame(
        &c,
        "t/cam/a",
        rgb.clone(),
        &format!("id=both;encoding=rgb8;width={W};height={H}"),
    )
    .await;
    let r = reply_for(&sub, "both").await;
    let v8 = r.tensor("v8");
    assert_eq!(v8.shape, vec![1, 7, 64]);
    assert_eq!(r.tensor("v5").shape, vec![1, 64, 8]);
    let answer: Value = serde_json::from_str(r.meta("answer").expect("answer metadata")).unwrap();
    assert_squares(&answer["detections"], "both");
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_their_codes_and_the_stream_goes_on() {
    let cfg = format!(
        "{DETECT}\n        [[pipeline]]\n        name = \"small\"\n        model = \"models/test/detect.onnx\"\n        input = \"t/small\"\n        output = \"t/out/small\"\n        format = \"image\"\n        pre = {{ max_pixels = 10000 }}\n"
    );
    let (daemon, port) = start(&cfg).await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    wired(&daemon, &c, "t/cam/a", "t/out/cam/a").await;
    wired(&daemon, &c, "t/small", "t/out/small").await;
    let rgb = rgb_frame();
    let good = jpeg(&rgb);
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let cases: [(&str, &str, Vec<u8>, String); 7] = [
        (
            "bad_image",
            "t/cam/a",
            rgb[1..].to_vec(),
            format!("encoding=rgb8;width={W};height={H}"),
        ),
        (
            "bad_image",
            "t/cam/a",
            rgb.clone(),
            format!("encoding=rgb8;widht={W};height={H}"),
        ),
        ("bad_image", "t/cam/a", rgb.clone(), "encoding=rgb16".into()),
        ("bad_payload", "t/cam/a", rgb.clone(), "encoding".into()),
        (
            "image_too_large",
            "t/small",
            rgb.clone(),
            format!("encoding=rgb8;width={W};height={H}"),
        ),
        (
            "corrupt_image",
            "t/cam/a",
            b"not a jpeg at all".to_vec(),
            "encoding=jpeg".into(),
        ),
        (
            "corrupt_image",
            "t/cam/a",
            truncated,
            "encoding=jpeg".into(),
        ),
    ];
    for (n, (code, key, bytes, desc)) in cases.into_iter().enumerate() {
        let id = format!("bad{n}");
        put_frame(&c, key, bytes, &format!("id={id};{desc}")).await;
        let r = if code == "bad_payload" {
            // An attachment that is not key=value text names no request.
            let r = recv(&sub).await;
            assert_eq!(r.id(), None, "{}", r.brief());
            r
        } else {
            reply_for(&sub, &id).await
        };
        assert_eq!(r.code(), Some(code), "case {n} ({desc}): {}", r.brief());
    }
    // The pipeline still answers.
    put_frame(&c, "t/cam/a", good, "id=after;encoding=jpeg").await;
    assert_squares(
        &reply_for(&sub, "after").await.answer()["answer"]["detections"],
        "after",
    );
    assert_eq!(error_count(&daemon, "cam", "corrupt_image"), 2);
    assert_eq!(error_count(&daemon, "small", "image_too_large"), 1);
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_classifies_each_detection_crop_on_its_own_session() {
    let cfg = format!(
        r#"{DETECT}
        [[pipeline]]
        name = "colour"
        model = "models/test/classify.onnx"
        after = "cam"
        max_batch = 2
        [pipeline.pre]
        width = 16
        height = 16
        [pipeline.answer]
        kind = "classify"
        top_k = 1
        labels = "models/test/colors.txt"
        "#
    );
    let (daemon, port) = start(&cfg).await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    wired(&daemon, &c, "t/cam/a", "t/out/cam/a").await;
    put_frame(&c, "t/cam/a", png(&rgb_frame()), "id=chain;encoding=png").await;
    let r = reply_for(&sub, "chain").await;
    let j = r.answer();
    let dets = &j["answer"]["detections"];
    assert_squares(dets, "chain");
    for d in dets.as_array().unwrap() {
        let best = &d["classes"][0];
        assert_eq!(
            best["label"], d["label"],
            "the crop of {d} classified as {best}"
        );
        assert!(best["score"].as_f64().unwrap() > 0.9, "{d}");
    }
    let stages = j["stages"].as_array().expect("per-stage timing");
    let names: Vec<&str> = stages
        .iter()
        .map(|s| s["pipeline"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cam", "colour"], "{j}");
    // Three crops, two per run.
    assert_eq!(
        (stages[1]["rows"].as_u64(), stages[1]["runs"].as_u64()),
        (Some(3), Some(2))
    );
    assert!(stages[0]["inference_us"].as_u64().unwrap() > 0);
    let colour = pipeline_json(&daemon, "colour");
    assert_eq!(colour["received"], 1, "{colour}");
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_feeds_one_models_outputs_to_the_next_by_name() {
    let affine = test_model("affine.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "first"
        model = "{affine}"
        input = "t/aff"
        output = "t/out/aff"
        [[pipeline]]
        name = "second"
        model = "{affine}"
        after = "first"
        feed = {{ x = "y" }}
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    wired(&daemon, &c, "t/aff", "t/out/aff").await;
    let x = f32_tensor("x", &[1, 4], &[0.0, 1.0, -1.0, 2.5]);
    put(&c, "t/aff", request(&[x], "aff", 1)).await;
    let r = reply_for(&sub, "aff").await;
    // 2·(2x + 1) + 1
    assert_eq!(
        f32_values(r.tensor("y")).unwrap(),
        vec![3.0, 7.0, -1.0, 13.0],
        "{}",
        r.brief()
    );
    assert_eq!(r.meta("pipeline"), Some("first"));
    let stages: Value = serde_json::from_str(r.meta("stages").expect("stage timing")).unwrap();
    assert_eq!(stages.as_array().map(Vec::len), Some(2), "{stages}");
    daemon.shutdown(Duration::from_secs(1)).await;
}
