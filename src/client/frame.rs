//! A camera frame on the client side of the data flow, as a camera driver
//! delivers it: packed `bgr8` rows (OpenCV's and ROS 2's usual order), no
//! row padding. `reflexd-sim` sends these bytes unchanged as reflexd's
//! plain-zenoh image message ([`CameraFrame::image_attachment`],
//! docs/images.md) or as a ROS 2 `sensor_msgs/msg/Image` (encoding "bgr8",
//! step `width * 3`, `client::ros2`); the daemon resizes and normalises, so
//! no model knowledge lives here.

use std::path::Path;

use crate::wire::image::{Encoding, ImageClaim, ImageHeader, encode_image_attachment};

pub struct CameraFrame {
    pub width: u32,
    pub height: u32,
    /// `height` rows of `width * 3` bytes: blue, green, red.
    pub bgr: Vec<u8>,
}

impl CameraFrame {
    /// Bytes from one row to the next.
    pub fn step(&self) -> u32 {
        self.width * 3
    }

    /// The attachment of the plain-zenoh image message whose payload is
    /// `self.bgr`.
    pub fn image_attachment(&self, id: String, seq: u64, ts_us: u64) -> String {
        encode_image_attachment(&ImageHeader {
            id: Some(id),
            seq: Some(seq),
            ts_us: Some(ts_us),
            claim: ImageClaim {
                encoding: Encoding::Bgr8,
                width: Some(self.width),
                height: Some(self.height),
                step: Some(self.step()),
            },
        })
    }

    /// A PNG (grey, grey + alpha, RGB or RGBA, 8 or 16 bits) at its own
    /// size. Transparent pixels are composited over white: text drawn on a
    /// transparent page would otherwise turn into black on black.
    pub fn load_png(path: &Path) -> Result<CameraFrame, String> {
        let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let file = std::fs::File::open(path).map_err(|e| at(&e))?;
        let mut dec = png::Decoder::new(std::io::BufReader::new(file));
        dec.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = dec.read_info().map_err(|e| at(&e))?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| at(&"PNG too large"))?;
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).map_err(|e| at(&e))?;
        let ch = info.color_type.samples();
        let (w, h) = (info.width as usize, info.height as usize);
        let mut bgr = Vec::with_capacity(w * h * 3);
        for row in buf.chunks(info.line_size).take(h) {
            for p in row.chunks_exact(ch).take(w) {
                let (rgb, a) = match ch {
                    1 => ([p[0]; 3], 255),
                    2 => ([p[0]; 3], p[1]),
                    3 => ([p[0], p[1], p[2]], 255),
                    _ => ([p[0], p[1], p[2]], p[3]),
                };
                let over_white =
                    |v: u8| ((v as u32 * a as u32 + 255 * (255 - a as u32)) / 255) as u8;
                bgr.extend([rgb[2], rgb[1], rgb[0]].map(over_white));
            }
        }
        Ok(CameraFrame {
            width: info.width,
            height: info.height,
            bgr,
        })
    }
}
