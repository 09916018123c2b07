//! The Rust OCR chain (src/infer/ocr) against rapidocr-onnxruntime 1.4.4's own
//! Python pipeline on the same pictures: scikit-image's page.png and
//! astronaut.png, and images with rendered text of known words
//! (`tests/py/ocr_reference.py` draws them into a temporary directory and
//! prints rapidocr's answer for each). Same lines (text), boxes with
//! IoU ≥ 0.9, and every known word read — by the library, and by the
//! daemon's OCR pipeline over loopback zenoh (frames as PNG files, padded
//! bgr8 rows and rgb8), which also answers broken frames with their codes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use reflexd::infer::ocr::{
    Frame, OcrChain, OcrError, OcrModels, OcrOutput, OcrParams, PixelFormat, SessionOptions,
};
use serde::Deserialize;

#[derive(Deserialize, Debug)]
struct Reference {
    images: Vec<RefImage>,
}

#[derive(Deserialize, Debug)]
struct RefImage {
    name: String,
    path: PathBuf,
    known_words: Vec<String>,
    lines: Vec<RefLine>,
}

#[derive(Deserialize, Debug)]
struct RefLine {
    text: String,
    confidence: f32,
    #[serde(rename = "box")]
    quad: [[f32; 2]; 4],
}

fn venv_python() -> PathBuf {
    if let Some(p) = std::env::var_os("REFLEXD_PYTHON") {
        return p.into();
    }
    let p = reflexd::infer::runtime::cache_dir()
        .expect("HOME or REFLEXD_CACHE is set")
        .join("venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run scripts/provision.sh",
        p.display()
    );
    p
}

fn reference(out: &Path) -> Reference {
    let o = Command::new(venv_python())
        .arg(common::repo().join("tests/py/ocr_reference.py"))
        .args(["reference", "--out"])
        .arg(out)
        .args(["--data", "models/data"])
        .current_dir(common::repo())
        .output()
        .expect("run tests/py/ocr_reference.py");
    assert!(
        o.status.success(),
        "ocr_reference.py failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("reference JSON")
}

/// rapidocr's answers, computed once per test run (the library test and
/// the daemon test compare against the same run); the rendered PNGs stay
/// in cargo's per-target temporary directory (removed by `cargo clean`).
fn shared_reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE
        .get_or_init(|| reference(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("ocr-reference")))
}

fn chain() -> OcrChain {
    chain_with(OcrModels::rapidocr_in)
}

fn chain_with(models: fn(&Path) -> OcrModels) -> OcrChain {
    common::fetched_model("ch_PP-OCRv4_rec_infer.onnx");
    common::fetched_model("ch_PP-OCRv4_rec_infer.folded.onnx");
    let (env, _) = reflexd::infer::runtime::environment(None).unwrap();
    let models = models(&common::repo().join("models/fetched"));
    let opts = SessionOptions {
        intra_op_threads: 2,
        intra_op_spinning: false,
    };
    OcrChain::load(&env, &models, &opts, OcrParams::default()).unwrap()
}

/// The PNG as 8-bit RGB (grey replicated), as `cv2.imread` sees it.
fn load_rgb(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// Area of a convex polygon (shoelace).
fn area(p: &[[f64; 2]]) -> f64 {
    let n = p.len();
    (0..n)
        .map(|i| p[i][0] * p[(i + 1) % n][1] - p[(i + 1) % n][0] * p[i][1])
        .sum::<f64>()
        .abs()
        / 2.0
}

/// Clips convex `subject` by convex `clip` (Sutherland–Hodgman).
fn intersect(subject: &[[f64; 2]], clip: &[[f64; 2]]) -> Vec<[f64; 2]> {
    let orient = if area_signed(clip) >= 0.0 { 1.0 } else { -1.0 };
    let mut out = subject.to_vec();
    for i in 0..clip.len() {
        let (a, b) = (clip[i], clip[(i + 1) % clip.len()]);
        let side =
            |p: [f64; 2]| orient * ((b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]));
        let input = std::mem::take(&mut out);
        for j in 0..input.len() {
            let (p, q) = (input[j], input[(j + 1) % input.len()]);
            let (sp, sq) = (side(p), side(q));
            if sp >= 0.0 {
                out.push(p);
            }
            if (sp >= 0.0) != (sq >= 0.0) {
                let t = sp / (sp - sq);
                out.push([p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])]);
            }
        }
        if out.is_empty() {
            break;
        }
    }
    out
}

fn area_signed(p: &[[f64; 2]]) -> f64 {
    let n = p.len();
    (0..n)
        .map(|i| p[i][0] * p[(i + 1) % n][1] - p[(i + 1) % n][0] * p[i][1])
        .sum::<f64>()
        / 2.0
}

fn iou(a: &[[f32; 2]; 4], b: &[[f32; 2]; 4]) -> f64 {
    let a: Vec<[f64; 2]> = a.iter().map(|p| [p[0].into(), p[1].into()]).collect();
    let b: Vec<[f64; 2]> = b.iter().map(|p| [p[0].into(), p[1].into()]).collect();
    let inter = area(&intersect(&a, &b));
    inter / (area(&a) + area(&b) - inter)
}

fn compare(img: &RefImage, got: &OcrOutput) -> Vec<String> {
    let mut problems = Vec::new();
    if got.lines.len() != img.lines.len() {
        problems.push(format!(
            "{}: {} lines, rapidocr {}",
            img.name,
            got.lines.len(),
            img.lines.len()
        ));
    }
    for r in &img.lines {
        let best = got
            .lines
            .iter()
            .map(|l| (iou(&l.quad, &r.quad), l))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        match best {
            None => problems.push(format!("{}: missing line {:?}", img.name, r.text)),
            Some((v, l)) => {
                println!(
                    "  {:<10} IoU {v:.3}  conf {:.3} vs {:.3}  {:?}{}",
                    img.name,
                    l.confidence,
                    r.confidence,
                    l.text,
                    if l.text == r.text {
                        String::new()
                    } else {
                        format!(" (rapidocr {:?})", r.text)
                    }
                );
                if v < 0.9 {
                    problems.push(format!(
                        "{}: {:?} box IoU {v:.3} < 0.9: {:?} vs {:?}",
                        img.name, r.text, l.quad, r.quad
                    ));
                }
                if l.text != r.text {
                    problems.push(format!(
                        "{}: read {:?}, rapidocr {:?}",
                        img.name, l.text, r.text
                    ));
                }
                if (l.confidence - r.confidence).abs() > 0.05 {
                    problems.push(format!(
                        "{}: {:?} confidence {} vs {}",
                        img.name, r.text, l.confidence, r.confidence
                    ));
                }
            }
        }
    }
    let all: String = got
        .lines
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for w in &img.known_words {
        if !all.contains(w.as_str()) {
            problems.push(format!(
                "{}: known word {w:?} not read (got {all:?})",
                img.name
            ));
        }
    }
    problems
}

/// Both model sets: rapidocr's files as shipped (the pipeline alone) and the
/// folded ones (models/ocr/fold_ppocr.py), which a deployment would use.
#[test]
fn matches_rapidocr_python_pipeline_on_real_and_rendered_images() {
    let reference = shared_reference();
    assert!(
        reference.images.len() >= 6,
        "reference covers too few images"
    );
    let mut problems = Vec::new();
    for (label, models) in [
        (
            "shipped models",
            OcrModels::rapidocr_in as fn(&Path) -> OcrModels,
        ),
        ("folded models", OcrModels::folded_in),
    ] {
        println!("--- {label}");
        let found = compare_all(reference, chain_with(models));
        problems.extend(found.into_iter().map(|p| format!("{label}: {p}")));
    }
    assert!(
        problems.is_empty(),
        "differences from rapidocr:\n{}",
        problems.join("\n")
    );
}

fn compare_all(reference: &Reference, mut ocr: OcrChain) -> Vec<String> {
    let mut problems = Vec::new();
    for img in &reference.images {
        let rgb = load_rgb(&img.path);
        let frame = Frame::packed(rgb.as_raw(), rgb.width(), rgb.height(), PixelFormat::Rgb8);
        let got = ocr
            .run(&frame)
            .unwrap_or_else(|e| panic!("{}: {e}", img.name));
        println!(
            "{} ({}x{}): {:?}",
            img.name,
            rgb.width(),
            rgb.height(),
            got.timing
        );
        problems.extend(compare(img, &got));
    }
    problems
}

#[test]
fn bgr_input_and_json_output_follow_the_documented_schema() {
    let rgb = load_rgb(&common::repo().join("models/data/page.png"));
    let bgr: Vec<u8> = rgb
        .as_raw()
        .chunks_exact(3)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect();
    let mut ocr = chain();
    let from_rgb = ocr
        .run(&Frame::packed(
            rgb.as_raw(),
            rgb.width(),
            rgb.height(),
            PixelFormat::Rgb8,
        ))
        .unwrap();
    let from_bgr = ocr
        .run(&Frame::packed(
            &bgr,
            rgb.width(),
            rgb.height(),
            PixelFormat::Bgr8,
        ))
        .unwrap();
    assert_eq!(from_rgb.lines, from_bgr.lines);
    assert!(from_rgb.lines.len() >= 3);
    let v = serde_json::to_value(&from_rgb).unwrap();
    let line = &v["lines"][0];
    assert!(line["text"].is_string() && line["confidence"].is_number());
    assert_eq!(line["box"].as_array().unwrap().len(), 4);
    for key in ["prepare_us", "crop_us", "total_us"] {
        assert!(v["timing"][key].is_u64(), "timing.{key}");
    }
    for stage in ["det", "cls", "rec"] {
        assert!(
            v["timing"][stage]["runs"].as_u64().unwrap() >= 1,
            "timing.{stage}.runs"
        );
    }
}

#[test]
fn bad_frames_and_missed_deadlines_are_typed_errors() {
    let mut ocr = chain();
    let data = vec![0u8; 30];
    let cases = [
        Frame::packed(&data, 0, 10, PixelFormat::Rgb8),
        Frame::packed(&data, 10, 10, PixelFormat::Rgb8),
        Frame::packed(&data, 1_000_000, 1_000_000, PixelFormat::Mono8),
    ];
    for f in cases {
        assert!(matches!(ocr.run(&f), Err(OcrError::BadImage(_))), "{f:?}");
    }
    let ok = Frame::packed(&data, 10, 3, PixelFormat::Mono8);
    assert!(ocr.run(&ok).unwrap().lines.is_empty());
    let past = Instant::now() - std::time::Duration::from_millis(1);
    let r = ocr.run_until(&ok, Some(past));
    assert!(
        matches!(r, Err(OcrError::Deadline { stage: "det" })),
        "{r:?}"
    );
}

/// The daemon's OCR pipeline (folded models, as a deployment would run
/// them): every reference image sent as a camera frame gives rapidocr's
/// lines; broken frames get their error codes and the stream goes on.
#[test]
fn daemon_ocr_pipeline_reads_frames_like_rapidocr() {
    let reference = shared_reference();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(daemon_ocr(reference));
}

fn ocr_config() -> String {
    let m = |n: &str| common::fetched_model(&format!("{n}.folded.onnx"));
    format!(
        r#"
        [[pipeline]]
        name = "text"
        model = "{}"
        input = "t/cam/*"
        output = "t/out/text"
        format = "image"
        deadline_ms = 60000
        [pipeline.ocr]
        cls = "{}"
        rec = "{}"
        max_pixels = 400000
"#,
        m("ch_PP-OCRv4_det_infer"),
        m("ch_ppocr_mobile_v2.0_cls_infer"),
        m("ch_PP-OCRv4_rec_infer"),
    )
}

async fn put_frame(c: &zenoh::Session, payload: Vec<u8>, attachment: String) {
    c.put("t/cam/a", payload)
        .attachment(attachment.into_bytes())
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .await
        .unwrap();
}

async fn reply_for(sub: &common::Sub, id: &str) -> common::Reply {
    loop {
        let r = common::recv(sub).await;
        if r.id().as_deref() == Some(id) {
            return r;
        }
    }
}

/// Frame `i` of a reference image in one of three encodings.
fn encoded(i: usize, img: &RefImage) -> (Vec<u8>, String) {
    let rgb = load_rgb(&img.path);
    let (w, h) = rgb.dimensions();
    match i % 3 {
        0 => (
            std::fs::read(&img.path).unwrap(),
            "encoding=png".to_string(),
        ),
        1 => {
            // bgr8 with 8 bytes of junk padding per row
            let step = w as usize * 3 + 8;
            let mut out = vec![0xCD; step * h as usize];
            for (y, row) in rgb.as_raw().chunks_exact(w as usize * 3).enumerate() {
                for (x, p) in row.chunks_exact(3).enumerate() {
                    out[y * step + x * 3..][..3].copy_from_slice(&[p[2], p[1], p[0]]);
                }
            }
            (
                out,
                format!("encoding=bgr8;width={w};height={h};step={step}"),
            )
        }
        _ => (
            rgb.into_raw(),
            format!("encoding=rgb8;width={w};height={h}"),
        ),
    }
}

async fn daemon_ocr(reference: &Reference) {
    let (daemon, port) = common::start(&ocr_config()).await;
    let c = common::client(port).await;
    let sub = common::subscribe(&c, "t/out/**").await;
    common::wired(&daemon, &c, "t/cam/a", "t/out/text/a").await;
    let png = std::fs::read(&reference.images[0].path).unwrap();
    let broken: [(&str, Vec<u8>, String); 3] = [
        (
            "bad_image",
            vec![0; 100],
            "encoding=rgb8;width=64;height=64".into(),
        ),
        (
            "image_too_large",
            vec![0; 3],
            "encoding=rgb8;width=800;height=600".into(),
        ),
        (
            "corrupt_image",
            png[..png.len() / 2].to_vec(),
            "encoding=png".into(),
        ),
    ];
    for (code, bytes, desc) in broken {
        put_frame(&c, bytes, format!("id={code};{desc}")).await;
        let r = reply_for(&sub, code).await;
        assert_eq!(r.code(), Some(code), "{}", r.brief());
    }
    let mut problems = Vec::new();
    for (i, img) in reference.images.iter().enumerate() {
        let (bytes, desc) = encoded(i, img);
        let id = format!("img-{i}");
        put_frame(&c, bytes, format!("id={id};seq={i};{desc}")).await;
        let r = reply_for(&sub, &id).await;
        let j = r.answer();
        assert_eq!(j["pipeline"], "text", "{j}");
        let a = &j["answer"];
        assert_eq!(a["kind"], "ocr", "{j}");
        let (w, h) = image::image_dimensions(&img.path).unwrap();
        assert_eq!(
            (a["width"].as_u64(), a["height"].as_u64()),
            (Some(w.into()), Some(h.into()))
        );
        let stages: Vec<&str> = j["stages"]
            .as_array()
            .unwrap_or_else(|| panic!("no stages: {j}"))
            .iter()
            .map(|s| s["pipeline"].as_str().unwrap())
            .collect();
        if !img.lines.is_empty() {
            assert_eq!(stages, ["text.det", "text.cls", "text.rec"], "{j}");
        }
        let got = OcrOutput {
            lines: serde_json::from_value(a["lines"].clone()).unwrap(),
            boxes: a["boxes"].as_u64().unwrap() as usize,
            ..OcrOutput::default()
        };
        println!(
            "daemon {} ({}): {} lines, {}",
            img.name,
            desc,
            got.lines.len(),
            j["stages"]
        );
        problems.extend(compare(img, &got));
    }
    daemon.shutdown(std::time::Duration::from_secs(1)).await;
    assert!(
        problems.is_empty(),
        "daemon answers differ from rapidocr:\n{}",
        problems.join("\n")
    );
}
