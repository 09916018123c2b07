//! What `reflexd check` prints for pre- and post-processing and chains:
//! the pre-processing resolved against the model (size from its input,
//! normalisation, layout, element type), the answer stage with the output
//! it reads, the chain, and what is published. A labels file whose length
//! does not match a fixed-shape output fails here, not on every frame.

mod common;

use common::*;
use reflexd::Config;

const CHAIN: &str = r#"
    [[pipeline]]
    name = "cam"
    model = "models/test/detect.onnx"
    input = "robot/camera/*"
    output = "reflexd/cam"
    format = "image"
    [pipeline.pre]
    resize = "letterbox"
    mean = [0.5]
    std = [0.25]
    [pipeline.answer]
    kind = "detect"
    tensor = "v8"
    labels = "models/test/colors.txt"
    [[pipeline]]
    name = "colour"
    model = "models/test/classify.onnx"
    after = "cam"
    max_batch = 4
    pre = { width = 16, height = 16 }
    answer = { kind = "classify", top_k = 1, labels = "models/test/colors.txt" }
"#;

#[test]
fn check_prints_pre_answer_and_chain() {
    let cfg = Config::from_toml(CHAIN, &repo()).unwrap();
    let out = reflexd::check::check(&cfg).unwrap();
    for want in [
        "in:  robot/camera/* [image message: rgb8/bgr8",
        "images: f32[1,3,64,64]",
        "pre: letterbox (pad 114) to 64x64 bilinear, rgb, (pixel·0.003922 − [0.5, 0.5, 0.5]) / [0.25, 0.25, 0.25], nchw f32 → images",
        "frames up to 8388608 pixels",
        "answer: detect (yolov8 [1, 4+C, N]): confidence ≥ 0.25, NMS iou 0.45, at most 100, 3 labels from v8: f32[1,7,64]",
        "chain: cam → colour (one request, one deadline, on one worker)",
        "in:  chain stage after cam: one crop per region it found, up to 4 per run",
        "pre: stretch to 16x16 bilinear",
        "answer: classify: top 1, 3 labels from scores: f32[?,3]",
        "out: reflexd/cam/<stream> [answer: JSON]",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn labels_that_do_not_fit_a_fixed_output_fail_check() {
    let dir = std::env::temp_dir().join(format!("reflexd-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("two.txt"), "red\ngreen\n").unwrap();
    let text = CHAIN.replace(
        "labels = \"models/test/colors.txt\"\n    [[pipeline]]",
        &format!(
            "labels = \"{}\"\n    [[pipeline]]",
            dir.join("two.txt").display()
        ),
    );
    let cfg = Config::from_toml(&text, &repo()).unwrap();
    let e = reflexd::check::check(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("scores 3 classes but the labels file names 2"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
