//! Pixels in, detections out, with real parts: a bgr8 camera frame goes
//! through the image pre-processor (letterbox, BGR→RGB, NCHW f32), the
//! generated YOLO-shaped model (models/test/detect.onnx) runs in ONNX
//! Runtime, and the answer stage decodes both output layouts back into the
//! squares painted on the source frame, in source pixels.

use std::path::PathBuf;

use ort::session::Session;
use ort::value::Tensor as OrtTensor;
use reflexd::infer::post::{BBox, DetectConfig, RawDetect, decode_yolo};
use reflexd::infer::pre::{
    Encoding, ImageClaim, ImageInput, ImageLimits, PreSpec, Preprocessor, RawPre, Transform,
    check_image,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Source squares (x1, y1, x2, y2) and their colour as (r, g, b); after the
/// 128x96 → 64x64 letterbox (scale 1/2, 8 px top margin) each fills one
/// 8x8 cell of the model exactly.
const SQUARES: [([u32; 4], [u8; 3], &str); 3] = [
    ([32, 16, 48, 32], [255, 0, 0], "red"),
    ([80, 48, 96, 64], [0, 255, 0], "green"),
    ([96, 16, 112, 32], [0, 0, 255], "blue"),
];

fn bgr_frame(w: u32, h: u32) -> Vec<u8> {
    let mut img = vec![0u8; (w * h * 3) as usize];
    for ([x1, y1, x2, y2], [r, g, b], _) in SQUARES {
        for y in y1..y2 {
            for x in x1..x2 {
                let i = ((y * w + x) * 3) as usize;
                img[i..i + 3].copy_from_slice(&[b, g, r]);
            }
        }
    }
    img
}

/// The frame as the model input (letterboxed RGB f32 NCHW) and its geometry.
fn model_input(w: u32, h: u32) -> (Vec<f32>, Transform) {
    let frame = bgr_frame(w, h);
    let claim = ImageClaim {
        encoding: Encoding::Bgr8,
        width: Some(w),
        height: Some(h),
        step: None,
    };
    let desc = check_image(&claim, &frame, &ImageLimits::default()).unwrap();
    let raw: RawPre = toml::from_str("color = \"rgb\"\nresize = \"letterbox\"").unwrap();
    let cfg = PreSpec::from_raw(&raw)
        .unwrap()
        .resolve(&[1, 3, 64, 64], "f32")
        .unwrap();
    let mut pre = Preprocessor::new(cfg);
    let mut bytes = vec![0u8; pre.output_bytes()];
    let transform = pre
        .run(&ImageInput { desc, data: &frame }, &mut bytes)
        .unwrap();
    let input: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (input, transform)
}

#[test]
fn letterboxed_frame_through_detector_gives_source_boxes_in_both_layouts() {
    let (w, h) = (128u32, 96u32);
    let (input, transform) = model_input(w, h);
    let (env, _) = reflexd::infer::runtime::environment(None).unwrap();
    let model = repo().join("models/test/detect.onnx");
    let mut session = Session::builder(&env)
        .unwrap()
        .commit_from_file(&model)
        .unwrap();
    let out = session
        .run(ort::inputs!["images" => OrtTensor::from_array(([1usize, 3, 64, 64], input)).unwrap()])
        .unwrap();

    let dir = std::env::temp_dir().join(format!("reflexd-detect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("colours.txt"), "red\ngreen\nblue\n").unwrap();
    for (output, layout) in [("v8", "yolov8"), ("v5", "yolov5")] {
        let raw: RawDetect = toml::from_str(&format!(
            "layout = \"{layout}\"\nconfidence = 0.5\nlabels = \"colours.txt\""
        ))
        .unwrap();
        let dcfg = DetectConfig::from_raw(&raw, &dir).unwrap();
        let (shape, values) = out[output].try_extract_tensor::<f32>().unwrap();
        let shape: Vec<usize> = shape.iter().map(|d| *d as usize).collect();
        let answer = decode_yolo(values, &shape, &dcfg, &transform).unwrap();
        assert_eq!((answer.width, answer.height), (w, h));
        assert_eq!(
            answer.detections.len(),
            SQUARES.len(),
            "{layout}: {:?}",
            answer.detections
        );
        for ([x1, y1, x2, y2], _, name) in SQUARES {
            let d = answer
                .detections
                .iter()
                .find(|d| d.label.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("{layout}: no {name} detection"));
            let want = BBox {
                x1: x1 as f32,
                y1: y1 as f32,
                x2: x2 as f32,
                y2: y2 as f32,
            };
            for (g, e) in [
                (d.bbox.x1, want.x1),
                (d.bbox.y1, want.y1),
                (d.bbox.x2, want.x2),
                (d.bbox.y2, want.y2),
            ] {
                assert!(
                    (g - e).abs() < 1e-3,
                    "{layout} {name}: {:?} vs {want:?}",
                    d.bbox
                );
            }
            assert!(d.score > 0.95, "{layout} {name}: score {}", d.score);
        }
        let json = serde_json::to_value(&answer).unwrap();
        let first = &json["detections"][0];
        assert!(
            first["box"]["x1"].is_number()
                && first["label"].is_string()
                && first["score"].is_number(),
            "{first}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
