//! JPEG and PNG frames: decoding matches the raw frame, and damaged files
//! become `corrupt_image` (never a panic).

use super::*;

fn png_bytes(rgb: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut enc = png::Encoder::new(&mut buf, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(rgb).unwrap();
    buf
}

fn jpeg_bytes(rgb: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    jpeg_encoder::Encoder::new(&mut buf, 95)
        .encode(rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    buf
}

fn compressed(e: Encoding, data: &[u8]) -> Result<ImageDesc, ImageError> {
    let claim = ImageClaim {
        encoding: e,
        width: None,
        height: None,
        step: None,
    };
    check_image(&claim, data, &ImageLimits::default())
}

#[test]
fn png_is_lossless_and_jpeg_is_close() {
    let (w, h) = (33, 17);
    // Smooth content, so JPEG's error stays small and measurable.
    let rgb: Vec<u8> = (0..w * h)
        .flat_map(|i| {
            let (x, y) = (i % w, i / w);
            [(x * 7) as u8, (y * 14) as u8, 128]
        })
        .collect();
    let mut p = pre("resize = \"letterbox\"", 24, 24);
    let (want, _) = run(&mut p, frame(Encoding::Rgb8, w, h, &rgb), &rgb);
    let png = png_bytes(&rgb, w, h);
    let desc = compressed(Encoding::Png, &png).unwrap();
    assert_eq!((desc.width, desc.height), (w, h));
    assert_eq!(run(&mut p, desc, &png).0, want);
    let jpg = jpeg_bytes(&rgb, w, h);
    let desc = compressed(Encoding::Jpeg, &jpg).unwrap();
    let (got, _) = run(&mut p, desc, &jpg);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < 12.0 / 255.0, "JPEG differs by up to {worst}");
}

#[test]
fn corrupt_and_truncated_files_are_typed_errors() {
    let (w, h) = (40, 24);
    let rgb = pattern(w, h);
    let mut p = pre("", 16, 16);
    for (e, file) in [
        (Encoding::Jpeg, jpeg_bytes(&rgb, w, h)),
        (Encoding::Png, png_bytes(&rgb, w, h)),
    ] {
        let mut failures = 0;
        for cut in (1..file.len()).step_by(7) {
            let part = &file[..cut];
            let Ok(desc) = compressed(e, part) else {
                continue;
            };
            let mut out = vec![0u8; p.output_bytes()];
            if let Err(err) = p.run(&ImageInput { desc, data: part }, &mut out) {
                assert_eq!(err.code(), "corrupt_image", "{e:?} cut at {cut}: {err}");
                failures += 1;
            }
        }
        assert!(failures > 0, "{e:?}: some truncation must fail to decode");
        let mut flipped = file.clone();
        let n = flipped.len();
        flipped[n / 2..].iter_mut().for_each(|b| *b = !*b);
        if let Ok(desc) = compressed(e, &flipped) {
            let mut out = vec![0u8; p.output_bytes()];
            let _ = p.run(
                &ImageInput {
                    desc,
                    data: &flipped,
                },
                &mut out,
            );
        }
    }
    let png = png_bytes(&rgb, w, h);
    let claim = ImageClaim {
        encoding: Encoding::Png,
        width: Some(41),
        height: None,
        step: None,
    };
    assert_eq!(
        check_image(&claim, &png, &ImageLimits::default())
            .unwrap_err()
            .code(),
        "bad_image"
    );
    let small = ImageLimits { max_pixels: 100 };
    let claim = ImageClaim {
        encoding: Encoding::Png,
        width: None,
        height: None,
        step: None,
    };
    assert_eq!(
        check_image(&claim, &png, &small).unwrap_err().code(),
        "image_too_large"
    );
}
