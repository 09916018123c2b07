//! Batched tensors for the two patch models (angle classifier and
//! recogniser) and what comes back from them: rapidocr's `resize_norm_img`
//! (height 48, width by aspect ratio, zero padding on the right), the
//! aspect-ratio sort that keeps padding small, the classifier's 180° decision
//! and the recogniser's greedy CTC decode with the charset stored in the
//! model's `character` metadata.

use fast_image_resize as fir;
use image::RgbImage;

use super::OcrError;
use super::frame::{resize, write_planes};

/// Model input height for both patch models.
pub const PATCH_H: u32 = 48;
/// Classifier input width (patches are resized into it, never wider).
pub const CLS_W: u32 = 192;
/// Narrowest recogniser batch width (rapidocr's `rec_img_shape` 320).
pub const REC_MIN_W: u32 = 320;

/// Patch indices ordered by width/height, narrowest first (stable), as
/// rapidocr orders them before cutting batches.
pub fn by_aspect(patches: &[RgbImage]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..patches.len()).collect();
    idx.sort_by(|&a, &b| aspect(&patches[a]).total_cmp(&aspect(&patches[b])));
    idx
}

pub fn aspect(p: &RgbImage) -> f64 {
    f64::from(p.width()) / f64::from(p.height())
}

/// `math.ceil(48 · w/h)` capped at `max_w`.
fn target_width(p: &RgbImage, max_w: u32) -> u32 {
    let w = (f64::from(PATCH_H) * aspect(p)).ceil();
    if w > f64::from(max_w) {
        max_w
    } else {
        (w as u32).max(1)
    }
}

/// A `[n, 3, 48, width]` batch of normalised patches.
pub struct Batch {
    pub data: Vec<f32>,
    pub n: usize,
    pub width: u32,
}

impl Batch {
    pub fn shape(&self) -> [usize; 4] {
        [self.n, 3, PATCH_H as usize, self.width as usize]
    }
}

/// The batch width rapidocr's recogniser uses: `int(48 · max ratio)`, at
/// least 320.
pub fn rec_width(patches: &[&RgbImage]) -> u32 {
    let max_ratio = patches
        .iter()
        .map(|p| aspect(p))
        .fold(f64::from(REC_MIN_W) / f64::from(PATCH_H), f64::max);
    (f64::from(PATCH_H) * max_ratio) as u32
}

/// Resizes each patch to height 48 (width by ratio, at most `width`) and
/// packs them left-aligned into one zero-padded batch.
pub fn make_batch(
    resizer: &mut fir::Resizer,
    patches: &[&RgbImage],
    width: u32,
    lut: &[f32; 256],
) -> Result<Batch, OcrError> {
    let per = 3 * PATCH_H as usize * width as usize;
    let mut data = vec![0.0f32; per * patches.len()];
    for (i, p) in patches.iter().enumerate() {
        let rw = target_width(p, width);
        let resized = resize(resizer, p, rw, PATCH_H)?;
        write_planes(&resized, lut, &mut data[i * per..][..per], width as usize);
    }
    Ok(Batch {
        data,
        n: patches.len(),
        width,
    })
}

/// Classifier output `[n, 2]` (labels "0", "180") → whether each patch is
/// upside down with more than `thresh` confidence.
pub fn upside_down(probs: &[f32], n: usize, thresh: f32) -> Result<Vec<bool>, OcrError> {
    if probs.len() != n * 2 {
        return Err(OcrError::Inference {
            stage: "cls",
            reason: format!("expected {n}x2 outputs, got {}", probs.len()),
        });
    }
    Ok(probs
        .chunks_exact(2)
        .map(|p| p[1] > p[0] && p[1] > thresh)
        .collect())
}

/// The recogniser's classes: index 0 is the CTC blank, then the model's
/// `character` metadata split into lines (Python's `str.splitlines`), then a
/// space, as rapidocr's `CTCLabelDecode` builds it.
pub fn charset_from_metadata(text: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    out.extend(split_lines(text).map(str::to_string));
    out.push(" ".into());
    out
}

/// Python `str.splitlines()` (no keepends): splits on \n, \r, \r\n, \v, \f,
/// \x1c–\x1e, \x85, U+2028, U+2029; no empty last line.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let is_break = |c: char| {
        matches!(
            c,
            '\n' | '\r'
                | '\x0b'
                | '\x0c'
                | '\x1c'
                | '\x1d'
                | '\x1e'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        )
    };
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.char_indices().find(|&(_, c)| is_break(c)) {
            None => Some(std::mem::take(&mut rest)),
            Some((i, c)) => {
                let line = &rest[..i];
                let mut next = i + c.len_utf8();
                if c == '\r' && rest[next..].starts_with('\n') {
                    next += 1;
                }
                rest = &rest[next..];
                Some(line)
            }
        }
    })
}

/// Greedy CTC decode of one `[t, classes]` row: per step the most probable
/// class (first on ties, like numpy's argmax), repeats collapsed, blanks
/// dropped; confidence is the mean probability of the kept steps (0 if none).
pub fn ctc_greedy(probs: &[f32], classes: usize, charset: &[String]) -> (String, f32) {
    let mut text = String::new();
    let (mut sum, mut kept) = (0.0f64, 0usize);
    let mut prev = usize::MAX;
    for step in probs.chunks_exact(classes) {
        let (mut best, mut p) = (0usize, f32::NEG_INFINITY);
        for (i, &v) in step.iter().enumerate() {
            if v > p {
                (best, p) = (i, v);
            }
        }
        if best != 0 && best != prev {
            if let Some(c) = charset.get(best) {
                text.push_str(c);
            }
            sum += f64::from(p);
            kept += 1;
        }
        prev = best;
    }
    let conf = if kept == 0 { 0.0 } else { sum / kept as f64 };
    (text, conf as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitlines_matches_python() {
        let v: Vec<&str> = split_lines("a\nb\r\nc\rd\u{2028}e\n").collect();
        assert_eq!(v, ["a", "b", "c", "d", "e"]);
        assert_eq!(split_lines("x\n\ny").collect::<Vec<_>>(), ["x", "", "y"]);
        let cs = charset_from_metadata("'\n疗\n2");
        assert_eq!(cs, ["", "'", "疗", "2", " "]);
    }

    #[test]
    fn ctc_collapses_repeats_and_drops_blanks() {
        let cs = charset_from_metadata("a\nb");
        // classes: blank, a, b, space
        #[rustfmt::skip]
        let probs = [
            0.1, 0.8, 0.05, 0.05, // a
            0.1, 0.7, 0.1, 0.1,   // a (repeat, collapsed)
            0.9, 0.05, 0.05, 0.0, // blank
            0.1, 0.6, 0.2, 0.1,   // a (after blank: new)
            0.0, 0.1, 0.1, 0.8,   // space
            0.2, 0.2, 0.6, 0.0,   // b
        ];
        let (t, c) = ctc_greedy(&probs, 4, &cs);
        assert_eq!(t, "aa b");
        assert!((c - (0.8 + 0.6 + 0.8 + 0.6) / 4.0).abs() < 1e-6, "{c}");
        let blank = [0.9f32, 0.1, 0.0, 0.0];
        assert_eq!(ctc_greedy(&blank, 4, &cs), (String::new(), 0.0));
    }

    #[test]
    fn batches_pad_right_with_zeros_and_widen_for_long_patches() {
        let short = RgbImage::from_pixel(96, 48, image::Rgb([255, 0, 255]));
        let long = RgbImage::from_pixel(480, 24, image::Rgb([0, 0, 0]));
        assert_eq!(rec_width(&[&short]), 320);
        assert_eq!(rec_width(&[&short, &long]), 960);
        let lut = super::super::frame::norm_lut();
        let b = make_batch(&mut fir::Resizer::new(), &[&short], 320, &lut).unwrap();
        assert_eq!(b.shape(), [1, 3, 48, 320]);
        let plane = 48 * 320;
        assert_eq!(b.data[0], 1.0); // channel 0 = 255
        assert_eq!(b.data[plane], -1.0); // channel 1 = 0
        assert_eq!(b.data[95], 1.0);
        assert_eq!(b.data[96], 0.0); // padding
        assert_eq!(by_aspect(&[long.clone(), short.clone()]), vec![1, 0]);
    }

    #[test]
    fn classifier_flips_only_confident_180() {
        let f = upside_down(&[0.05, 0.95, 0.2, 0.8, 0.9, 0.1], 3, 0.9).unwrap();
        assert_eq!(f, vec![true, false, false]);
        assert!(upside_down(&[0.1], 1, 0.9).is_err());
    }
}
