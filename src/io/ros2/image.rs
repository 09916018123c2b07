//! Camera frames from ROS 2 into a tensor pipeline: a `sensor_msgs/msg/Image`
//! or `CompressedImage` input is decoded from CDR (pixels borrowed from the
//! payload), checked by the image library's cheap [`check_image`] and run
//! through the pipeline's [`Preprocessor`] (`[pipeline.pre]`, the same stage
//! zenoh image inputs use) into the model's one input tensor. The message's
//! `header` comes back with the tensor so every answer can copy it.
//!
//! This runs in the topic's subscriber callback: the pre-processor's buffers
//! are reused, so a frame costs one decode (JPEG/PNG only), one resize and
//! one conversion pass, measured in benches/ros2.rs.

use serde::Deserialize;

use crate::ctx::Ctx;
use crate::error::{ErrorCode, Rejection};
use crate::infer::Spec;
use crate::infer::pre::{
    Encoding, ImageClaim, ImageError, ImageInput, PreSpec, Preprocessor, RawPre, check_image,
};
use crate::ros2::{CompressedImage, Header, Image, RosType};
use crate::tensor::{Dtype, Tensor};

/// Builds the image stage of tensor pipeline `name` from its `[pipeline.pre]`
/// table, fitted to the model's one client input.
pub fn stage(name: &str, pre: &toml::Table, spec: &Spec) -> Result<Preprocessor, String> {
    let at = format!("pipeline {name:?}");
    let raw = RawPre::deserialize(toml::Value::Table(pre.clone()))
        .map_err(|e| format!("{at}: pre: {}", e.message()))?;
    let pre_spec = PreSpec::from_raw(&raw).map_err(|e| format!("{at}: {e}"))?;
    let port = match spec.client_inputs.as_slice() {
        [one] => one,
        ports => {
            let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
            return Err(format!(
                "{at}: a camera frame feeds one model input; this model takes {}",
                list.join(", ")
            ));
        }
    };
    let cfg = pre_spec
        .resolve(&port.shape, port.dtype.name())
        .map_err(|e| format!("{at}: {e} (model input {port})"))?;
    Ok(Preprocessor::new(cfg))
}

/// The rejection an image error becomes: too many pixels is a size limit,
/// everything else a bad payload; the message says which check failed.
pub fn rejection(e: &ImageError) -> Rejection {
    let code = match e {
        ImageError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
        _ => ErrorCode::BadPayload,
    };
    Rejection::new(code, format!("{}: {e}", e.code()))
}

fn unsupported(ty: RosType, what: &str, value: &str) -> Rejection {
    Rejection::new(
        ErrorCode::BadPayload,
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
fn claim_of(ty: RosType, payload: &[u8]) -> Result<(ImageClaim, &[u8], Header), Rejection> {
    match ty {
        RosType::Image => {
            let img = Image::decode(payload)?;
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
                    ErrorCode::BadPayload,
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

/// Decodes one ROS camera frame of tensor pipeline `pi` into its model
/// input tensor and the frame's header.
pub fn frame(
    ctx: &Ctx,
    pi: usize,
    ty: RosType,
    payload: &[u8],
) -> Result<(Tensor, Header), Rejection> {
    let stage = ctx.ros2.tensors[pi]
        .image
        .as_ref()
        .expect("an image input has an image stage (checked at start)");
    let (claim, data, header) = claim_of(ty, payload)?;
    // A poisoned lock only means an earlier frame panicked mid-way; the
    // buffers are rewritten in full by the next run.
    let mut pre = stage.lock().unwrap_or_else(|p| p.into_inner());
    let desc = check_image(&claim, data, &pre.config().limits).map_err(|e| rejection(&e))?;
    let mut out = vec![0u8; pre.output_bytes()];
    pre.run(&ImageInput { desc, data }, &mut out)
        .map_err(|e| rejection(&e))?;
    let port = &ctx.tensors[pi].spec.client_inputs[0];
    let dtype = match pre.config().dtype.name() {
        "f16" => Dtype::F16,
        "u8" => Dtype::U8,
        _ => Dtype::F32,
    };
    let shape = pre.output_shape().to_vec();
    Ok((Tensor::new(port.name.as_str(), dtype, shape, out), header))
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
        assert_eq!(e.code, ErrorCode::BadPayload);
        assert!(
            e.message.contains("encoding \"16UC1\" is not supported"),
            "{e:?}"
        );
        let e = claim_of(RosType::Image, &[0, 1, 0, 0, 9]).unwrap_err();
        assert!(e.message.contains("sensor_msgs/msg/Image"), "{e:?}");
        let e = rejection(&ImageError::TooLarge {
            width: 9,
            height: 9,
            pixels: 81,
            limit: 10,
        });
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
    }
}
