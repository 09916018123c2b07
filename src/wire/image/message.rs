//! The plain-zenoh image message (docs/images.md): the payload is the pixel
//! bytes (or the JPEG/PNG file) and the zenoh attachment is `key=value`
//! pairs separated by `;`, the same text form as a raw tensor message's
//! attachment, with the image description added:
//! `id=cam0-17;seq=17;ts_us=…;encoding=bgr8;width=640;height=480;step=1920`.
//! Ingress parses it in the zenoh callback, so parsing only reads text.

use std::fmt::Write as _;

use super::error::ImageError;
use super::frame::{Encoding, ImageClaim};

/// Longest request id echoed back (same bound as raw tensor messages).
pub const MAX_ID_LEN: usize = 128;
/// Longest attachment read; a real one is under 150 bytes.
pub const MAX_ATTACHMENT_LEN: usize = 1024;
/// Keys an image attachment may carry; any other key is refused so a typo
/// (`widht`) is an error, not a silently missing setting.
pub const KEYS: [&str; 7] = ["id", "seq", "ts_us", "encoding", "width", "height", "step"];

/// Request metadata plus the frame description, as read from an attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    pub id: Option<String>,
    pub seq: Option<u64>,
    /// Source timestamp, microseconds since the Unix epoch.
    pub ts_us: Option<u64>,
    pub claim: ImageClaim,
}

/// What was read of the request metadata before a failure, so the error
/// reply can still name the request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartialMeta {
    pub id: Option<String>,
    pub seq: Option<u64>,
}

fn meta_err(msg: String, partial: &PartialMeta) -> (ImageError, PartialMeta) {
    (ImageError::BadMeta(msg), partial.clone())
}

fn image_err(msg: String, partial: &PartialMeta) -> (ImageError, PartialMeta) {
    (ImageError::BadImage(msg), partial.clone())
}

/// Splits `k=v;k=v` into pairs; `id` and `seq` are read first so that any
/// later error still carries them.
fn pairs(att: &[u8]) -> Result<Vec<(&str, &str)>, (ImageError, PartialMeta)> {
    let none = PartialMeta::default();
    if att.len() > MAX_ATTACHMENT_LEN {
        return Err(meta_err(
            format!(
                "attachment is {} bytes; the limit is {MAX_ATTACHMENT_LEN}",
                att.len()
            ),
            &none,
        ));
    }
    let s =
        std::str::from_utf8(att).map_err(|_| meta_err("attachment is not UTF-8".into(), &none))?;
    s.split(';')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| meta_err(format!("attachment entry {kv:?} is not key=value"), &none))
        })
        .collect()
}

fn parse_u64(key: &str, v: &str) -> Result<u64, String> {
    v.parse::<u64>()
        .map_err(|_| format!("`{key}` = {v:?} is not an unsigned integer"))
}

/// Parses an image message's attachment (the callback-side half; then call
/// [`super::check_image`] with `header.claim` and the payload).
pub fn parse_image_attachment(att: &[u8]) -> Result<ImageHeader, (ImageError, PartialMeta)> {
    let kvs = pairs(att)?;
    let mut partial = PartialMeta::default();
    for (k, v) in &kvs {
        match *k {
            "id" if v.len() > MAX_ID_LEN => {
                return Err(meta_err(
                    format!("`id` is longer than {MAX_ID_LEN} bytes"),
                    &partial,
                ));
            }
            "id" => partial.id = Some(v.to_string()),
            "seq" => partial.seq = parse_u64(k, v).ok(),
            _ => {}
        }
    }
    let mut header = ImageHeader {
        id: partial.id.clone(),
        seq: None,
        ts_us: None,
        claim: ImageClaim {
            encoding: Encoding::Rgb8,
            width: None,
            height: None,
            step: None,
        },
    };
    let mut encoding = None;
    for (k, v) in kvs {
        let dim = |v: &str| -> Result<Option<u32>, (ImageError, PartialMeta)> {
            v.parse::<u32>().map(Some).map_err(|_| {
                image_err(
                    format!("`{k}` = {v:?} is not an unsigned 32-bit integer"),
                    &partial,
                )
            })
        };
        match k {
            "id" => {}
            "seq" => header.seq = Some(parse_u64(k, v).map_err(|m| meta_err(m, &partial))?),
            "ts_us" => header.ts_us = Some(parse_u64(k, v).map_err(|m| meta_err(m, &partial))?),
            "encoding" => {
                encoding = Some(Encoding::parse(v).ok_or_else(|| {
                    image_err(
                        format!(
                            "unknown encoding {v:?}; known: {}",
                            Encoding::NAMES.join(", ")
                        ),
                        &partial,
                    )
                })?)
            }
            "width" => header.claim.width = dim(v)?,
            "height" => header.claim.height = dim(v)?,
            "step" => header.claim.step = dim(v)?,
            other => {
                return Err(image_err(
                    format!(
                        "unknown attachment key {other:?}; known: {}",
                        KEYS.join(", ")
                    ),
                    &partial,
                ));
            }
        }
    }
    header.claim.encoding =
        encoding.ok_or_else(|| image_err("attachment has no `encoding`".into(), &partial))?;
    Ok(header)
}

/// Builds the attachment for an image message (clients, simulator, tests).
pub fn encode_image_attachment(h: &ImageHeader) -> String {
    let mut s = String::new();
    if let Some(id) = &h.id {
        let _ = write!(s, "id={id};");
    }
    for (k, v) in [("seq", h.seq), ("ts_us", h.ts_us)] {
        if let Some(v) = v {
            let _ = write!(s, "{k}={v};");
        }
    }
    let _ = write!(s, "encoding={}", h.claim.encoding.name());
    for (k, v) in [
        ("width", h.claim.width),
        ("height", h.claim.height),
        ("step", h.claim.step),
    ] {
        if let Some(v) = v {
            let _ = write!(s, ";{k}={v}");
        }
    }
    s
}
