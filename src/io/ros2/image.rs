//! Camera frames from ROS 2 into an image pipeline: a `sensor_msgs/msg/Image`
//! or `CompressedImage` input is decoded from CDR in the topic's subscriber
//! callback (pixels borrowed from the payload, never copied) and mapped onto
//! the [`ImageClaim`] every frame carrier shares; `io::ingress::submit_frame`
//! then runs the same cheap checks as for reflexd's own image message and
//! queues the frame, whose pre-processing (`[pipeline.pre]`) runs on the
//! worker. The message's `header` rides with the job so every answer can
//! copy it.

use bytes::Bytes;

use crate::error::{ErrorCode, Rejection};
use crate::ros2::{CompressedImage, DecodeError, Header, Image, RosType};
use crate::wire::image::{Encoding, ImageClaim};

fn unsupported(ty: RosType, what: &str, value: &str) -> Rejection {
    Rejection::new(
        ErrorCode::BadImage,
        format!(
            "{ty}: {what} {value:?} is not supported; supported: {}",
            Encoding::NAMES[..7].join(", ")
        ),
    )
}

/// The image encoding a `CompressedImage.format` names: `jpeg`, `png`, or
/// image_transport's `<raw encoding>; jpeg compressed <encoding>` form.
fn compressed_encoding(format: &str) -> Option<Encoding> {
    let f = format.to_ascii_lowercase();
    let codec = f.rsplit(';').next().unwrap_or(&f);
    if codec.contains("png") {
        Some(Encoding::Png)
    } else if codec.contains("jpeg") || codec.contains("jpg") {
        Some(Encoding::Jpeg)
    } else {
        None
    }
}

/// A decoded frame: what it claims, its bytes, its header.
pub fn claim_of(ty: RosType, payload: &[u8]) -> Result<(ImageClaim, &[u8], Header), Rejection> {
    match ty {
        RosType::Image => {
            // A message that parses but whose sizes do not add up is a bad
            // image, as for reflexd's own image message; broken CDR is a
            // bad payload.
            let img = Image::decode(payload).map_err(|e| match e {
                DecodeError::Invalid { .. } => Rejection::new(ErrorCode::BadImage, e.to_string()),
                other => Rejection::from(other),
            })?;
            let encoding = Encoding::parse(&img.encoding)
                .filter(|e| !e.is_compressed())
                .ok_or_else(|| unsupported(ty, "encoding", &img.encoding))?;
            // Only 8-bit encodings are accepted, so `is_bigendian` changes
            // nothing; rows beyond `step * height` are not part of the frame.
            let used = img.step as usize * img.height as usize;
            let claim = ImageClaim {
                encoding,
                width: Some(img.width),
                height: Some(img.height),
                step: Some(img.step),
            };
            Ok((claim, &img.data[..used], img.header))
        }
        RosType::CompressedImage => {
            let img = CompressedImage::decode(payload)?;
            let encoding = compressed_encoding(&img.format).ok_or_else(|| {
                Rejection::new(
                    ErrorCode::BadImage,
                    format!(
                        "{ty}: format {:?} is not supported; supported: jpeg, png",
                        img.format
                    ),
                )
            })?;
            let claim = ImageClaim {
                encoding,
                width: None,
                height: None,
                step: None,
            };
            Ok((claim, img.data, img.header))
        }
        other => Err(Rejection::new(
            ErrorCode::BadPayload,
            format!("{other} is not a camera frame"),
        )),
    }
}

/// A ROS camera frame as `io::ingress::submit_frame` takes it: what it
/// claims, its pixel bytes (a view into `payload`, not a copy) and its
/// header.
pub fn frame(ty: RosType, payload: &Bytes) -> Result<(ImageClaim, Bytes, Header), Rejection> {
    let (claim, data, header) = claim_of(ty, payload)?;
    Ok((claim, payload.slice_ref(data), header))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_formats_name_their_codec() {
        for (f, e) in [
            ("jpeg", Some(Encoding::Jpeg)),
            ("PNG", Some(Encoding::Png)),
            ("bgr8; jpeg compressed bgr8", Some(Encoding::Jpeg)),
            ("rgb8; png compressed rgb8", Some(Encoding::Png)),
            ("16UC1; compressedDepth", None),
            ("", None),
        ] {
            assert_eq!(compressed_encoding(f), e, "{f:?}");
        }
    }

    #[test]
    fn bad_frames_are_rejected_with_the_reason() {
        let img = Image {
            height: 2,
            width: 2,
            encoding: "16UC1".into(),
            step: 4,
            data: &[0; 8],
            ..Image::default()
        };
        let e = claim_of(RosType::Image, &img.encode().unwrap()).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadImage);
        assert!(
            e.message.contains("encoding \"16UC1\" is not supported"),
            "{e:?}"
        );
        let e = claim_of(RosType::Image, &[0, 1, 0, 0, 9]).unwrap_err();
        assert!(e.message.contains("sensor_msgs/msg/Image"), "{e:?}");
    }
}
