//! Frames through the whole pre-processor: every encoding, channel order,
//! layout and dtype against an independent computation, plus geometry.

use super::*;

#[test]
fn identity_frame_is_normalised_exactly() {
    let (w, h) = (5, 3);
    let rgb = pattern(w, h);
    let mut p = pre(
        "mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]",
        5,
        3,
    );
    let (out, t) = run(&mut p, frame(Encoding::Rgb8, w, h, &rgb), &rgb);
    assert_eq!(t, Transform::identity(w, h));
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    for c in 0..3 {
        for i in 0..(w * h) as usize {
            let want = (rgb[i * 3 + c] as f32 / 255.0 - mean[c]) / std[c];
            let got = out[c * (w * h) as usize + i];
            assert!((got - want).abs() < 1e-5, "c{c} px{i}: {got} vs {want}");
        }
    }
}

#[test]
fn channel_orders_and_alpha_give_the_same_tensor() {
    let (w, h) = (6, 4);
    let rgb = pattern(w, h);
    let bgr = swap_rb(&rgb);
    let rgba: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 200])
        .collect();
    let bgra: Vec<u8> = bgr
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 9])
        .collect();
    for cfg in [
        "color = \"rgb\"",
        "color = \"bgr\"",
        "color = \"rgb\"\nresize = \"letterbox\"",
        "color = \"bgr\"\ninterpolation = \"antialias\"",
    ] {
        let mut p = pre(cfg, 9, 7);
        let (want, _) = run(&mut p, frame(Encoding::Rgb8, w, h, &rgb), &rgb);
        for (e, data) in [
            (Encoding::Bgr8, &bgr),
            (Encoding::Rgba8, &rgba),
            (Encoding::Bgra8, &bgra),
        ] {
            let (got, _) = run(&mut p, frame(e, w, h, data), data);
            assert_eq!(got, want, "{cfg}: {e:?}");
        }
    }
    // color = bgr swaps the planes relative to rgb.
    let (a, _) = run(
        &mut pre("color = \"rgb\"", 6, 4),
        frame(Encoding::Rgb8, w, h, &rgb),
        &rgb,
    );
    let (b, _) = run(
        &mut pre("color = \"bgr\"", 6, 4),
        frame(Encoding::Rgb8, w, h, &rgb),
        &rgb,
    );
    let n = (w * h) as usize;
    assert_eq!(a[..n], b[2 * n..]);
    assert_eq!(a[n..2 * n], b[n..2 * n]);
}

#[test]
fn row_padding_is_skipped_for_any_step() {
    let (w, h) = (7, 5);
    let rgb = pattern(w, h);
    for step in [21u32, 24, 25] {
        let mut padded = vec![0xAB; (step * h) as usize];
        for y in 0..h as usize {
            padded[y * step as usize..][..21].copy_from_slice(&rgb[y * 21..][..21]);
        }
        let claim = ImageClaim {
            encoding: Encoding::Rgb8,
            width: Some(w),
            height: Some(h),
            step: Some(step),
        };
        let desc = check_image(&claim, &padded, &ImageLimits::default()).unwrap();
        for (cfg, tw, th) in [
            ("", 7, 5),
            ("resize = \"letterbox\"", 4, 4),
            ("resize = \"crop\"", 3, 3),
        ] {
            let mut p = pre(cfg, tw, th);
            let (want, _) = run(&mut p, frame(Encoding::Rgb8, w, h, &rgb), &rgb);
            assert_eq!(run(&mut p, desc, &padded).0, want, "step {step}, {cfg}");
        }
    }
}

#[test]
fn gray_in_and_gray_out() {
    let (w, h) = (4, 3);
    let mono: Vec<u8> = (0..12).map(|i| (i * 20) as u8).collect();
    let (out, _) = run(
        &mut pre("", 4, 3),
        frame(Encoding::Mono8, w, h, &mono),
        &mono,
    );
    assert_eq!(out[..12], out[12..24]);
    assert_eq!(out[..12], out[24..]);
    assert!((out[5] - 100.0 / 255.0).abs() < 1e-6);
    let rgb = pattern(w, h);
    let mut g = Preprocessor::new(
        spec("color = \"gray\"")
            .resolve(&[1, 1, 3, 4], "f32")
            .unwrap(),
    );
    let (gray, _) = run(&mut g, frame(Encoding::Rgb8, w, h, &rgb), &rgb);
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        let want = (0.299 * px[0] as f32 + 0.587 * px[1] as f32 + 0.114 * px[2] as f32) / 255.0;
        assert!((gray[i] - want).abs() < 1e-5);
    }
}

#[test]
fn layouts_and_dtypes_agree() {
    let (w, h) = (8, 6);
    let rgb = pattern(w, h);
    let desc = frame(Encoding::Rgb8, w, h, &rgb);
    let (nchw, _) = run(&mut pre("resize = \"letterbox\"", 5, 5), desc, &rgb);
    let mut p = Preprocessor::new(
        spec("resize = \"letterbox\"\nlayout = \"nhwc\"")
            .resolve(&[1, 5, 5, 3], "f32")
            .unwrap(),
    );
    let (nhwc, _) = run(&mut p, desc, &rgb);
    for c in 0..3 {
        for i in 0..25 {
            assert_eq!(nchw[c * 25 + i], nhwc[i * 3 + c]);
        }
    }
    let mut h16 = Preprocessor::new(
        spec("resize = \"letterbox\"")
            .resolve(&[1, 3, 5, 5], "f16")
            .unwrap(),
    );
    let mut out = vec![0u8; h16.output_bytes()];
    h16.run(&ImageInput { desc, data: &rgb }, &mut out).unwrap();
    for (i, c) in out.chunks_exact(2).enumerate() {
        let v = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
        assert!((v - nchw[i]).abs() < 1e-3, "{v} vs {}", nchw[i]);
    }
    let mut u8p = Preprocessor::new(
        spec("resize = \"letterbox\"\npad = 7")
            .resolve(&[-1, 3, 5, 5], "u8")
            .unwrap(),
    );
    let mut out = vec![0u8; u8p.output_bytes()];
    u8p.run(&ImageInput { desc, data: &rgb }, &mut out).unwrap();
    assert_eq!(
        out[24], 7,
        "the bottom row (8x6 → 5x4 content at y 0) is the pad value"
    );
    let (f, _) = run(
        &mut pre("resize = \"letterbox\"\npad = 7\nscale = 1.0", 5, 5),
        desc,
        &rgb,
    );
    for (u, f) in out.iter().zip(&f) {
        assert_eq!(*u, f.round() as u8);
    }
}

#[test]
fn letterbox_geometry_round_trips() {
    let p = plan(ResizeMode::Letterbox { pad: 0 }, (1920, 1080), (640, 640));
    assert_eq!(
        p.content,
        Rect {
            x: 0,
            y: 140,
            width: 640,
            height: 360
        }
    );
    for (x, y) in [(0.0, 0.0), (1920.0, 1080.0), (777.5, 123.25)] {
        let (tx, ty) = p.transform.to_target(x, y);
        let (sx, sy) = p.transform.to_source(tx, ty);
        assert!((sx - x).abs() < 1e-9 && (sy - y).abs() < 1e-9);
    }
    assert_eq!(p.transform.to_target(0.0, 0.0), (0.0, 140.0));
    assert_eq!(p.transform.to_target(1920.0, 1080.0), (640.0, 500.0));
    let c = plan(
        ResizeMode::CenterCrop { fraction: 0.875 },
        (400, 300),
        (224, 224),
    );
    assert!((c.window.height - 262.5).abs() < 1e-9 && (c.window.width - 262.5).abs() < 1e-9);
    assert_eq!(
        c.transform.to_source(112.0, 112.0),
        (200.0, 150.0),
        "centre maps to centre"
    );
    let s = plan(ResizeMode::Stretch, (100, 50), (10, 10));
    assert_eq!(s.transform.to_source(10.0, 10.0), (100.0, 50.0));
}

#[test]
fn letterbox_margins_hold_the_normalised_pad() {
    let (w, h) = (30, 10);
    let rgb = vec![200u8; (w * h * 3) as usize];
    let mut p = pre(
        "resize = \"letterbox\"\npad = 114\nmean = [0.5]\nstd = [0.25]",
        12,
        12,
    );
    let (out, t) = run(&mut p, frame(Encoding::Rgb8, w, h, &rgb), &rgb);
    assert_eq!((t.offset_x, t.offset_y), (0.0, 4.0));
    let pad = (114.0 / 255.0 - 0.5) / 0.25;
    let fg = (200.0 / 255.0 - 0.5) / 0.25;
    for c in 0..3 {
        for y in 0..12 {
            for x in 0..12 {
                let v = out[c * 144 + y * 12 + x];
                let want = if (4..8).contains(&y) { fg } else { pad };
                assert!((v - want).abs() < 1e-4, "c{c} ({x},{y}) = {v}, want {want}");
            }
        }
    }
}

#[test]
fn every_interpolation_keeps_a_flat_image_flat_and_follows_a_ramp() {
    let (w, h) = (64, 48);
    let ramp: Vec<u8> = (0..w * h)
        .flat_map(|i| {
            let v = ((i % w) * 4) as u8;
            [v, v, v]
        })
        .collect();
    for interp in ["nearest", "bilinear", "antialias"] {
        let flat = vec![77u8; (w * h * 3) as usize];
        let mut p = pre(
            &format!("interpolation = \"{interp}\"\nscale = 1.0"),
            21,
            13,
        );
        let (out, _) = run(&mut p, frame(Encoding::Rgb8, w, h, &flat), &flat);
        assert!(out.iter().all(|v| (v - 77.0).abs() < 0.51), "{interp}");
        let (out, _) = run(&mut p, frame(Encoding::Rgb8, w, h, &ramp), &ramp);
        for (x, v) in out[..21].iter().enumerate() {
            let want = ((x as f32 + 0.5) * 64.0 / 21.0 - 0.5) * 4.0;
            assert!((v - want).abs() <= 8.0, "{interp} x{x}: {v} vs {want}");
        }
    }
}

#[test]
fn yuv422_matches_the_bt601_formula_in_both_byte_orders() {
    let (w, h) = (4, 2);
    let yuyv: Vec<u8> = (0..w * h / 2)
        .flat_map(|i| [16 + i as u8 * 30, 90, 200 - i as u8 * 20, 170])
        .collect();
    let uyvy: Vec<u8> = yuyv
        .chunks_exact(4)
        .flat_map(|m| [m[1], m[0], m[3], m[2]])
        .collect();
    let mut p = pre("scale = 1.0", 4, 2);
    let (a, _) = run(&mut p, frame(Encoding::Yuyv, w, h, &yuyv), &yuyv);
    let (b, _) = run(&mut p, frame(Encoding::Uyvy, w, h, &uyvy), &uyvy);
    assert_eq!(a, b);
    for (i, m) in yuyv.chunks_exact(4).enumerate() {
        for (k, y) in [m[0], m[2]].into_iter().enumerate() {
            let (y, u, v) = (
                1.164 * (y as f32 - 16.0),
                m[1] as f32 - 128.0,
                m[3] as f32 - 128.0,
            );
            let rgb = [y + 1.596 * v, y - 0.813 * v - 0.391 * u, y + 2.018 * u]
                .map(|c| c.clamp(0.0, 255.0));
            let px = i * 2 + k;
            for c in 0..3 {
                assert!(
                    (a[c * 8 + px] - rgb[c]).abs() <= 1.0,
                    "px{px} c{c}: {} vs {}",
                    a[c * 8 + px],
                    rgb[c]
                );
            }
        }
    }
}

#[test]
fn wrong_output_buffer_is_an_error_not_a_panic() {
    let rgb = pattern(4, 4);
    let mut p = pre("", 4, 4);
    let mut out = vec![0u8; 3];
    let desc = frame(Encoding::Rgb8, 4, 4, &rgb);
    assert!(p.run(&ImageInput { desc, data: &rgb }, &mut out).is_err());
}
