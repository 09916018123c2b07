//! Why a frame was refused. Each variant maps to one stable code string
//! (`code()`) and its `crate::error::ErrorCode`: clients and metrics match
//! on the code, the message says what exactly was wrong.

/// A frame that cannot be turned into a model input.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// The attachment is not `key=value;…` text, or `id`/`seq`/`ts_us` are
    /// malformed: the same failures as a raw tensor message's attachment.
    #[error("{0}")]
    BadMeta(String),
    /// The description is inconsistent: unknown encoding, missing or zero or
    /// absurd dimensions, a row step shorter than a row, a payload of the
    /// wrong byte count, an odd width for a 4:2:2 encoding.
    #[error("{0}")]
    BadImage(String),
    /// More pixels than the pipeline's `max_pixels`.
    #[error("image is {width}x{height} = {pixels} pixels; the limit is {limit}")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    /// A JPEG or PNG that does not decode (truncated, corrupt, unsupported).
    #[error("{0}")]
    Corrupt(String),
}

/// Stable code strings, in the order of [`ImageError`]'s variants (each is
/// a `crate::error::ErrorCode`, see `ImageError::error_code`).
pub const IMAGE_ERROR_CODES: [&str; 4] = [
    "bad_payload",
    "bad_image",
    "image_too_large",
    "corrupt_image",
];

impl ImageError {
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::BadMeta(_) => IMAGE_ERROR_CODES[0],
            ImageError::BadImage(_) => IMAGE_ERROR_CODES[1],
            ImageError::TooLarge { .. } => IMAGE_ERROR_CODES[2],
            ImageError::Corrupt(_) => IMAGE_ERROR_CODES[3],
        }
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> ImageError {
    ImageError::BadImage(msg.into())
}
