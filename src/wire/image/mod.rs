//! The image request format (docs/images.md): a camera frame's bytes (raw
//! pixels with a row step, or a JPEG/PNG file) plus a description of them.
//! Over plain zenoh the description travels in the attachment
//! ([`parse_image_attachment`]); ROS 2 `sensor_msgs/Image` and
//! `CompressedImage` map their fields onto the same [`ImageClaim`]. Either
//! way ingress then calls [`check_image`] in the zenoh callback: sizes,
//! limits and, for JPEG/PNG, the file header only, so a hostile frame costs
//! at most a header parse there. The checked [`Frame`] travels in the job
//! (its bytes still shared with the received message) to the worker, where
//! `infer::pre` decodes and pre-processes it.

mod error;
mod frame;
mod message;

use bytes::Bytes;

pub use error::{IMAGE_ERROR_CODES, ImageError};
pub use frame::{
    DEFAULT_MAX_PIXELS, Encoding, ImageClaim, ImageDesc, ImageInput, ImageLimits, MAX_SIDE,
    check_image, compressed_dims,
};
pub use message::{
    ImageHeader, KEYS, MAX_ATTACHMENT_LEN, MAX_ID_LEN, PartialMeta, encode_image_attachment,
    parse_image_attachment,
};

use crate::error::{ErrorCode, Rejection};

/// A checked frame on its way to a worker: the description [`check_image`]
/// returned and the payload bytes (not copied).
#[derive(Clone, Debug)]
pub struct Frame {
    pub desc: ImageDesc,
    pub data: Bytes,
}

impl Frame {
    /// The frame as the pre-processor reads it.
    pub fn input(&self) -> ImageInput<'_> {
        ImageInput {
            desc: self.desc,
            data: &self.data,
        }
    }
}

impl ImageError {
    /// The daemon's error code for this failure.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ImageError::BadMeta(_) => ErrorCode::BadPayload,
            ImageError::BadImage(_) => ErrorCode::BadImage,
            ImageError::TooLarge { .. } => ErrorCode::ImageTooLarge,
            ImageError::Corrupt(_) => ErrorCode::CorruptImage,
        }
    }
}

impl From<ImageError> for Rejection {
    fn from(e: ImageError) -> Rejection {
        Rejection::new(e.error_code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_error_codes_match_the_error_catalogue() {
        let errors = [
            ImageError::BadMeta(String::new()),
            ImageError::BadImage(String::new()),
            ImageError::TooLarge {
                width: 1,
                height: 1,
                pixels: 1,
                limit: 0,
            },
            ImageError::Corrupt(String::new()),
        ];
        for (e, code) in errors.iter().zip(IMAGE_ERROR_CODES) {
            assert_eq!(e.code(), code);
            assert_eq!(e.error_code().code(), code);
        }
    }
}
