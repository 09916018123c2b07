//! The last pass: resized 8-bit pixels → the model input tensor, in one
//! sweep over the content rectangle plus a fill of the letterbox margins.
//! Channel order, gray conversion and normalisation are one affine map per
//! output channel (`out[k] = Σ_j m[k][j]·px[j] + b[k]`), so the inner loop
//! has no branches and compiles to SIMD (const channel counts); the result
//! is then stored as f32/f16/u8 in NCHW or NHWC order.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::decode::{Pixels, SrcOrder};
use super::geometry::Rect;
use crate::config::image::{ColorOrder, Layout, OutDtype, PreConfig};

/// ITU-R BT.601 luma weights (OpenCV's RGB2GRAY).
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// The per-frame affine map from source channels to output channels.
#[derive(Clone, Copy, Debug)]
pub struct ColorMap {
    /// `m[k][j]`: weight of source channel `j` in output channel `k`
    /// (up to 4 source channels, up to 3 output channels).
    m: [[f32; 4]; 3],
    b: [f32; 3],
    outputs: usize,
}

impl ColorMap {
    pub fn new(src: SrcOrder, cfg: &PreConfig) -> ColorMap {
        // Source index of R, G, B.
        let at = match src {
            SrcOrder::Rgb => [0, 1, 2],
            SrcOrder::Bgr => [2, 1, 0],
            SrcOrder::Gray => [0, 0, 0],
        };
        let mut m = [[0.0f32; 4]; 3];
        let wanted: &[usize] = match cfg.color {
            ColorOrder::Rgb => &[0, 1, 2],
            ColorOrder::Bgr => &[2, 1, 0],
            ColorOrder::Gray => &[],
        };
        if cfg.color == ColorOrder::Gray {
            for (c, w) in LUMA.iter().enumerate() {
                m[0][at[c]] += w;
            }
        } else {
            for (k, &c) in wanted.iter().enumerate() {
                m[k][at[c]] = 1.0;
            }
        }
        let n = cfg.norm;
        let mut b = [0.0f32; 3];
        for k in 0..cfg.color.channels() {
            let a = n.scale / n.std[k];
            m[k].iter_mut().for_each(|w| *w *= a);
            b[k] = -n.mean[k] / n.std[k];
        }
        ColorMap {
            m,
            b,
            outputs: cfg.color.channels(),
        }
    }

    /// Output values for a uniform gray pixel (the letterbox pad).
    fn of_gray(&self, v: u8) -> [f32; 3] {
        std::array::from_fn(|k| self.m[k].iter().sum::<f32>() * v as f32 + self.b[k])
    }
}

/// `dst[k][x] = Σ_j m[k][j]·src[x][j] + b[k]` for one row, `dst` holding
/// the output channels one after another. One sweep per output channel:
/// the row stays in L1 and each sweep is a plain zip that vectorises.
fn row_affine<const N: usize>(src: &[u8], map: &ColorMap, dst: &mut [f32]) {
    let width = src.len() / N;
    if width == 0 {
        return;
    }
    for (k, out) in dst.chunks_exact_mut(width).take(map.outputs).enumerate() {
        let m: [f32; N] = std::array::from_fn(|j| map.m[k][j]);
        let b = map.b[k];
        for (o, px) in out.iter_mut().zip(src.chunks_exact(N)) {
            let mut v = b;
            for j in 0..N {
                v += m[j] * px[j] as f32;
            }
            *o = v;
        }
    }
}

fn affine(src: &[u8], channels: usize, map: &ColorMap, dst: &mut [f32]) {
    match channels {
        1 => row_affine::<1>(src, map, dst),
        2 => row_affine::<2>(src, map, dst),
        3 => row_affine::<3>(src, map, dst),
        _ => row_affine::<4>(src, map, dst),
    }
}

/// Reusable buffers for [`write`] (one per worker and pipeline).
#[derive(Default)]
pub struct Scratch {
    rows: Vec<f32>,
    inter: Vec<f32>,
    halves: Vec<f16>,
}

fn store(values: &[f32], dtype: OutDtype, halves: &mut Vec<f16>, dst: &mut [u8]) {
    match dtype {
        OutDtype::F32 => {
            for (d, v) in dst.chunks_exact_mut(4).zip(values) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        OutDtype::F16 => {
            halves.resize(values.len(), f16::ZERO);
            halves.convert_from_f32_slice(values);
            for (d, v) in dst.chunks_exact_mut(2).zip(halves.iter()) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        OutDtype::U8 => {
            for (d, v) in dst.iter_mut().zip(values) {
                *d = (v + 0.5) as u8; // `as` saturates: 255.4 → 255, -0.2 → 0
            }
        }
    }
}

fn encode(v: f32, dtype: OutDtype, out: &mut Vec<u8>) {
    match dtype {
        OutDtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
        OutDtype::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
        OutDtype::U8 => out.push((v + 0.5) as u8),
    }
}

fn fill(dst: &mut [u8], pattern: &[u8]) {
    for d in dst.chunks_exact_mut(pattern.len()) {
        d.copy_from_slice(pattern);
    }
}

/// One frame's write job: where the content goes and what fills the rest.
struct Job<'a> {
    pixels: &'a Pixels<'a>,
    map: ColorMap,
    content: Rect,
    /// The pad value encoded per output channel (`dtype` bytes each).
    pads: Vec<u8>,
    cfg: &'a PreConfig,
}

/// Writes the whole model input into `out` (`cfg.output_bytes()` long):
/// `pixels` (already at content size) into `content`, `pad` around it.
pub fn write(
    pixels: &Pixels<'_>,
    content: Rect,
    pad: u8,
    cfg: &PreConfig,
    scratch: &mut Scratch,
    out: &mut [u8],
) {
    let map = ColorMap::new(pixels.order, cfg);
    let pad_vals = map.of_gray(pad);
    let mut pads = Vec::new();
    for v in &pad_vals[..map.outputs] {
        encode(*v, cfg.dtype, &mut pads);
    }
    scratch
        .rows
        .resize(content.width as usize * map.outputs, 0.0);
    let job = Job {
        pixels,
        map,
        content,
        pads,
        cfg,
    };
    match cfg.layout {
        Layout::Nchw => write_nchw(&job, scratch, out),
        Layout::Nhwc => write_nhwc(&job, scratch, out),
    }
}

fn write_nchw(job: &Job<'_>, scratch: &mut Scratch, out: &mut [u8]) {
    let (c, e) = (job.map.outputs, job.cfg.dtype.size());
    let (tw, th) = (job.cfg.width as usize, job.cfg.height as usize);
    let r = job.content;
    let (x0, y0, cw, ch) = (
        r.x as usize,
        r.y as usize,
        r.width as usize,
        r.height as usize,
    );
    let plane = tw * th * e;
    for y in 0..th {
        let inside = y >= y0 && y < y0 + ch;
        if inside {
            affine(
                job.pixels.row(y - y0),
                job.pixels.channels,
                &job.map,
                &mut scratch.rows,
            );
        }
        for k in 0..c {
            let pad = &job.pads[k * e..][..e];
            let line = &mut out[k * plane + y * tw * e..][..tw * e];
            if !inside {
                fill(line, pad);
                continue;
            }
            fill(&mut line[..x0 * e], pad);
            fill(&mut line[(x0 + cw) * e..], pad);
            let values = &scratch.rows[k * cw..][..cw];
            store(
                values,
                job.cfg.dtype,
                &mut scratch.halves,
                &mut line[x0 * e..][..cw * e],
            );
        }
    }
}

fn write_nhwc(job: &Job<'_>, scratch: &mut Scratch, out: &mut [u8]) {
    let (c, e) = (job.map.outputs, job.cfg.dtype.size());
    let (tw, th) = (job.cfg.width as usize, job.cfg.height as usize);
    let r = job.content;
    let (x0, y0, cw, ch) = (
        r.x as usize,
        r.y as usize,
        r.width as usize,
        r.height as usize,
    );
    scratch.inter.resize(cw * c, 0.0);
    for y in 0..th {
        let line = &mut out[y * tw * c * e..][..tw * c * e];
        if !(y >= y0 && y < y0 + ch) {
            fill(line, &job.pads);
            continue;
        }
        affine(
            job.pixels.row(y - y0),
            job.pixels.channels,
            &job.map,
            &mut scratch.rows,
        );
        for x in 0..cw {
            for k in 0..c {
                scratch.inter[x * c + k] = scratch.rows[k * cw + x];
            }
        }
        fill(&mut line[..x0 * c * e], &job.pads);
        fill(&mut line[(x0 + cw) * c * e..], &job.pads);
        let values = &scratch.inter[..];
        store(
            values,
            job.cfg.dtype,
            &mut scratch.halves,
            &mut line[x0 * c * e..][..cw * c * e],
        );
    }
}
