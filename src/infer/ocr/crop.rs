//! From a detected quad to an upright text patch, between detection and the
//! classifier/recogniser: rapidocr's `get_rotate_crop_image` — a perspective
//! warp of the quad onto a `width × height` rectangle (bicubic, edge pixels
//! replicated), turned 90° counter-clockwise when the patch is at least 1.5×
//! taller than wide (vertical text).

use image::RgbImage;
use image::imageops;
use imageproc::geometric_transformations::{Border, Interpolation, Projection, warp_into};

use super::geometry::{Pt, dist};

/// The upright patch under `quad` (`[tl, tr, br, bl]`, image pixels).
pub fn crop_quad(img: &RgbImage, quad: &[Pt; 4]) -> RgbImage {
    let [tl, tr, br, bl] = *quad;
    let w = dist(tl, tr).max(dist(br, bl)) as u32;
    let h = dist(tl, bl).max(dist(tr, br)) as u32;
    let (w, h) = (w.max(1), h.max(1));
    let out = match axis_aligned_origin(quad, w, h, img) {
        // A pure integer translation: bicubic sampling at whole pixels is the
        // pixel itself, so copy (the common case for horizontal text).
        Some((x, y)) => imageops::crop_imm(img, x, y, w, h).to_image(),
        None => warp(img, quad, w, h),
    };
    if f64::from(out.height()) / f64::from(out.width()) >= 1.5 {
        // np.rot90: counter-clockwise, i.e. 270° clockwise.
        imageops::rotate270(&out)
    } else {
        out
    }
}

fn axis_aligned_origin(quad: &[Pt; 4], w: u32, h: u32, img: &RgbImage) -> Option<(u32, u32)> {
    let [tl, tr, br, bl] = *quad;
    let whole = quad.iter().flatten().all(|v| v.fract() == 0.0);
    let aligned = tl[1] == tr[1] && bl[1] == br[1] && tl[0] == bl[0] && tr[0] == br[0];
    let exact = tr[0] - tl[0] == f64::from(w) && bl[1] - tl[1] == f64::from(h);
    let inside = tl[0] >= 0.0
        && tl[1] >= 0.0
        && tl[0] + f64::from(w) <= f64::from(img.width())
        && tl[1] + f64::from(h) <= f64::from(img.height());
    (whole && aligned && exact && inside).then_some((tl[0] as u32, tl[1] as u32))
}

fn warp(img: &RgbImage, quad: &[Pt; 4], w: u32, h: u32) -> RgbImage {
    let from = quad.map(|p| (p[0] as f32, p[1] as f32));
    let (fw, fh) = (w as f32, h as f32);
    let to = [(0.0, 0.0), (fw, 0.0), (fw, fh), (0.0, fh)];
    let mut out = RgbImage::new(w, h);
    match Projection::from_control_points(from, to) {
        Some(p) => warp_into(img, p, Interpolation::Bicubic, Border::Replicate, &mut out),
        // Degenerate (collinear) corners: fall back to the bounding box.
        None => {
            let x = quad.iter().map(|p| p[0]).fold(f64::MAX, f64::min).max(0.0) as u32;
            let y = quad.iter().map(|p| p[1]).fold(f64::MAX, f64::min).max(0.0) as u32;
            let x = x.min(img.width().saturating_sub(1));
            let y = y.min(img.height().saturating_sub(1));
            let sub = imageops::crop_imm(img, x, y, w, h).to_image();
            imageops::overlay(&mut out, &sub, 0, 0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, (x + y) as u8]))
    }

    #[test]
    fn axis_aligned_crop_copies_pixels() {
        let img = gradient(50, 40);
        let c = crop_quad(
            &img,
            &[[10.0, 5.0], [30.0, 5.0], [30.0, 15.0], [10.0, 15.0]],
        );
        assert_eq!(c.dimensions(), (20, 10));
        assert_eq!(c.get_pixel(0, 0).0, [10, 5, 15]);
        assert_eq!(c.get_pixel(19, 9).0, [29, 14, 43]);
    }

    #[test]
    fn sub_pixel_quad_warps_to_the_same_pixels_within_rounding() {
        let img = gradient(50, 40);
        let c = crop_quad(
            &img,
            &[[10.5, 5.0], [30.5, 5.0], [30.5, 15.0], [10.5, 15.0]],
        );
        assert_eq!(c.dimensions(), (20, 10));
        let p = c.get_pixel(4, 2).0;
        assert!((i32::from(p[0]) - 14).abs() <= 1 && p[1] == 7, "{p:?}");
    }

    #[test]
    fn tall_patch_turns_counter_clockwise() {
        let img = gradient(50, 60);
        // 10 wide, 30 high: becomes 30 wide, 10 high; the top-right source
        // pixel (x = 19, y = 10) lands at the top-left.
        let c = crop_quad(
            &img,
            &[[10.0, 10.0], [20.0, 10.0], [20.0, 40.0], [10.0, 40.0]],
        );
        assert_eq!(c.dimensions(), (30, 10));
        assert_eq!(c.get_pixel(0, 0).0[..2], [19, 10]);
        assert_eq!(c.get_pixel(29, 0).0[..2], [19, 39]);
    }
}
