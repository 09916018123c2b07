//! Where the source frame lands in the model input, per frame: the source
//! window that is read (all of it, or a centred crop), the content
//! rectangle it is resized into (all of the input, or the letterboxed part),
//! and the [`Transform`] between the two coordinate systems, which answers
//! use to map boxes back to source pixels.

use serde::Serialize;

use crate::config::image::ResizeMode;

/// `target = source * scale + offset`, per axis, in continuous pixel
/// coordinates (pixel `i` covers `[i, i+1)`; both images share this
/// convention, so a box edge maps exactly).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Transform {
    pub scale_x: f64,
    pub scale_y: f64,
    pub offset_x: f64,
    pub offset_y: f64,
    /// Source frame size (what [`Transform::to_source`] clips to).
    pub src_width: u32,
    pub src_height: u32,
}

impl Transform {
    pub fn to_source(&self, x: f64, y: f64) -> (f64, f64) {
        (
            (x - self.offset_x) / self.scale_x,
            (y - self.offset_y) / self.scale_y,
        )
    }

    pub fn to_target(&self, x: f64, y: f64) -> (f64, f64) {
        (
            x * self.scale_x + self.offset_x,
            y * self.scale_y + self.offset_y,
        )
    }

    /// Identity for a source already at the model's size.
    pub fn identity(width: u32, height: u32) -> Transform {
        Transform {
            scale_x: 1.0,
            scale_y: 1.0,
            offset_x: 0.0,
            offset_y: 0.0,
            src_width: width,
            src_height: height,
        }
    }
}

/// A source window `(left, top, width, height)` in source pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

/// The content rectangle inside the target, in whole pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// One frame's geometry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    pub window: Window,
    pub content: Rect,
    pub transform: Transform,
}

impl Plan {
    /// True when the resize would copy pixels one to one.
    pub fn is_identity(&self) -> bool {
        self.window.left == 0.0
            && self.window.top == 0.0
            && self.window.width == self.content.width as f64
            && self.window.height == self.content.height as f64
    }
}

/// Geometry for a `src` frame into a `dst` (width, height) input.
pub fn plan(mode: ResizeMode, src: (u32, u32), dst: (u32, u32)) -> Plan {
    let (w, h) = (src.0 as f64, src.1 as f64);
    let (tw, th) = (dst.0 as f64, dst.1 as f64);
    let full = Window {
        left: 0.0,
        top: 0.0,
        width: w,
        height: h,
    };
    let (window, content) = match mode {
        ResizeMode::Stretch => (
            full,
            Rect {
                x: 0,
                y: 0,
                width: dst.0,
                height: dst.1,
            },
        ),
        ResizeMode::Letterbox { .. } => {
            let s = (tw / w).min(th / h);
            // Rounded like Ultralytics' letterbox; at least one pixel.
            let nw = ((w * s).round() as u32).clamp(1, dst.0);
            let nh = ((h * s).round() as u32).clamp(1, dst.1);
            let content = Rect {
                x: (dst.0 - nw) / 2,
                y: (dst.1 - nh) / 2,
                width: nw,
                height: nh,
            };
            (full, content)
        }
        ResizeMode::CenterCrop { fraction } => {
            let s = (tw / w).max(th / h) / fraction;
            let (cw, ch) = ((tw / s).min(w), (th / s).min(h));
            let window = Window {
                left: (w - cw) / 2.0,
                top: (h - ch) / 2.0,
                width: cw,
                height: ch,
            };
            (
                window,
                Rect {
                    x: 0,
                    y: 0,
                    width: dst.0,
                    height: dst.1,
                },
            )
        }
    };
    let scale_x = content.width as f64 / window.width;
    let scale_y = content.height as f64 / window.height;
    let transform = Transform {
        scale_x,
        scale_y,
        offset_x: content.x as f64 - window.left * scale_x,
        offset_y: content.y as f64 - window.top * scale_y,
        src_width: src.0,
        src_height: src.1,
    };
    Plan {
        window,
        content,
        transform,
    }
}
