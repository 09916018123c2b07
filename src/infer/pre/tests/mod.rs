//! Pre-processing behaviour: message round trips, the cheap check's limits,
//! every encoding against an independent computation, geometry round
//! trips, and bad images that must become typed errors (never panics).

use super::*;

mod files;
mod pixels;

fn spec(toml_text: &str) -> PreSpec {
    let raw: RawPre = toml::from_str(toml_text).expect("toml");
    PreSpec::from_raw(&raw).expect("valid pre config")
}

fn pre(toml_text: &str, w: i64, h: i64) -> Preprocessor {
    Preprocessor::new(spec(toml_text).resolve(&[1, 3, h, w], "f32").unwrap())
}

fn frame(encoding: Encoding, w: u32, h: u32, data: &[u8]) -> ImageDesc {
    let claim = ImageClaim {
        encoding,
        width: Some(w),
        height: Some(h),
        step: None,
    };
    check_image(&claim, data, &ImageLimits::default()).unwrap()
}

fn run(p: &mut Preprocessor, desc: ImageDesc, data: &[u8]) -> (Vec<f32>, Transform) {
    let mut out = vec![0u8; p.output_bytes()];
    let t = p.run(&ImageInput { desc, data }, &mut out).unwrap();
    (
        out.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        t,
    )
}

/// A deterministic RGB test pattern (distinct values per channel).
fn pattern(w: u32, h: u32) -> Vec<u8> {
    (0..w * h)
        .flat_map(|i| {
            let (x, y) = (i % w, i / w);
            [
                (x * 37 + y * 11) as u8,
                (x * 5 + y * 53 + 7) as u8,
                (x * y + 90) as u8,
            ]
        })
        .collect()
}

fn swap_rb(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect()
}

#[test]
fn encoding_names_and_ros_aliases() {
    for n in Encoding::NAMES {
        assert_eq!(Encoding::parse(n).unwrap().name(), n);
    }
    assert_eq!(Encoding::parse("yuv422_yuy2"), Some(Encoding::Yuyv));
    assert_eq!(Encoding::parse("yuv422"), Some(Encoding::Uyvy));
    assert_eq!(Encoding::parse("BGR8"), Some(Encoding::Bgr8));
    assert_eq!(Encoding::parse("rgb16"), None);
}

#[test]
fn attachment_round_trip() {
    let h = ImageHeader {
        id: Some("cam0-17".into()),
        seq: Some(17),
        ts_us: Some(1_700_000_000_000_000),
        claim: ImageClaim {
            encoding: Encoding::Bgr8,
            width: Some(640),
            height: Some(480),
            step: Some(1920),
        },
    };
    let text = encode_image_attachment(&h);
    assert_eq!(parse_image_attachment(text.as_bytes()).unwrap(), h);
    let bare = ImageHeader {
        id: None,
        seq: None,
        ts_us: None,
        claim: ImageClaim {
            encoding: Encoding::Jpeg,
            width: None,
            height: None,
            step: None,
        },
    };
    assert_eq!(
        parse_image_attachment(encode_image_attachment(&bare).as_bytes()).unwrap(),
        bare
    );
}

#[test]
fn attachment_errors_keep_the_request_id() {
    let (e, m) = parse_image_attachment(b"id=r1;seq=4;encoding=bgr8;widht=3").unwrap_err();
    assert_eq!(
        (e.code(), m.id.as_deref(), m.seq),
        ("bad_image", Some("r1"), Some(4))
    );
    let (e, m) = parse_image_attachment(b"encoding=bgr8;seq=x;id=r2").unwrap_err();
    assert_eq!((e.code(), m.id.as_deref()), ("bad_payload", Some("r2")));
    let (e, _) = parse_image_attachment(b"id=r3;width=4").unwrap_err();
    assert!(e.to_string().contains("encoding"), "{e}");
    let (e, _) = parse_image_attachment(b"encoding=rgb12").unwrap_err();
    assert_eq!(e.code(), "bad_image");
    let long = format!("id={};encoding=rgb8", "x".repeat(MAX_ID_LEN + 1));
    assert_eq!(
        parse_image_attachment(long.as_bytes())
            .unwrap_err()
            .0
            .code(),
        "bad_payload"
    );
    assert_eq!(
        parse_image_attachment(&[0xff, 0xfe]).unwrap_err().0.code(),
        "bad_payload"
    );
    assert_eq!(
        parse_image_attachment(b"encoding=rgb8;width=-1")
            .unwrap_err()
            .0
            .code(),
        "bad_image"
    );
}

#[test]
fn check_rejects_inconsistent_frames() {
    let lim = ImageLimits { max_pixels: 1000 };
    let claim = |e, w, h, s| ImageClaim {
        encoding: e,
        width: w,
        height: h,
        step: s,
    };
    let code = |c: ImageClaim, n: usize| check_image(&c, &vec![0; n], &lim).unwrap_err().code();
    assert!(
        check_image(
            &claim(Encoding::Bgr8, Some(4), Some(2), None),
            &[0; 24],
            &lim
        )
        .is_ok()
    );
    assert_eq!(
        code(claim(Encoding::Bgr8, Some(4), Some(2), None), 23),
        "bad_image"
    );
    assert_eq!(
        code(claim(Encoding::Bgr8, Some(0), Some(2), None), 0),
        "bad_image"
    );
    assert_eq!(
        code(claim(Encoding::Bgr8, None, Some(2), None), 24),
        "bad_image"
    );
    assert_eq!(
        code(claim(Encoding::Mono8, Some(40_000), Some(1), None), 40_000),
        "bad_image"
    );
    assert_eq!(
        code(claim(Encoding::Mono8, Some(100), Some(11), None), 1100),
        "image_too_large"
    );
    assert_eq!(
        code(claim(Encoding::Rgb8, Some(4), Some(2), Some(11)), 22),
        "bad_image"
    );
    assert_eq!(
        code(claim(Encoding::Yuyv, Some(3), Some(2), None), 12),
        "bad_image"
    );
    let padded = check_image(
        &claim(Encoding::Rgb8, Some(4), Some(2), Some(13)),
        &[0; 26],
        &lim,
    )
    .unwrap();
    assert_eq!(padded.step, 13);
    assert_eq!(
        code(claim(Encoding::Jpeg, None, None, None), 0),
        "corrupt_image"
    );
    assert_eq!(
        code(claim(Encoding::Jpeg, None, None, None), 100),
        "corrupt_image"
    );
    assert_eq!(
        code(claim(Encoding::Png, None, None, None), 100),
        "corrupt_image"
    );
}

#[test]
fn config_errors_name_the_key() {
    let err = |t: &str| {
        let raw: RawPre = toml::from_str(t).unwrap();
        PreSpec::from_raw(&raw).unwrap_err()
    };
    assert!(
        toml::from_str::<RawPre>("colour = \"rgb\"").is_err(),
        "unknown keys are refused"
    );
    assert_eq!(err("color = \"hsv\"").key, "color");
    assert_eq!(err("resize = \"fit\"").key, "resize");
    assert_eq!(err("mean = [1.0, 2.0]").key, "mean");
    assert_eq!(err("std = [0.0]").key, "std");
    assert_eq!(err("pad = 3").key, "pad");
    assert_eq!(err("resize = \"letterbox\"\npad = 300").key, "pad");
    assert_eq!(
        err("resize = \"crop\"\ncrop_fraction = 1.5").key,
        "crop_fraction"
    );
    assert_eq!(err("width = 10").key, "height");
    assert_eq!(err("dtype = \"u8\"\nmean = [0.5]").key, "dtype");
    assert_eq!(err("scale = -1.0").key, "scale");
    let s = spec("");
    assert_eq!(s.resolve(&[1, 3, -1, -1], "f32").unwrap_err().key, "width");
    assert_eq!(s.resolve(&[1, 1, 8, 8], "f32").unwrap_err().key, "color");
    assert_eq!(s.resolve(&[1, 3, 8, 8], "i64").unwrap_err().key, "dtype");
    assert_eq!(s.resolve(&[4, 3, 8, 8], "f32").unwrap_err().key, "layout");
    assert_eq!(s.resolve(&[1, 3, 8], "f32").unwrap_err().key, "layout");
    assert_eq!(
        spec("width = 9\nheight = 8")
            .resolve(&[1, 3, 8, 8], "f32")
            .unwrap_err()
            .key,
        "width"
    );
    let dynamic = spec("width = 32\nheight = 16")
        .resolve(&[-1, 3, -1, -1], "f32")
        .unwrap();
    assert_eq!(dynamic.shape(), [1, 3, 16, 32]);
    assert_eq!(
        spec("dtype = \"f16\"")
            .resolve(&[1, 3, 8, 8], "f32")
            .unwrap_err()
            .key,
        "dtype"
    );
}
