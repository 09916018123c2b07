//! Broken and hostile input: every decoder returns a typed error, never
//! panics, and never allocates from an unchecked length.

use crate::error::ErrorCode;
use crate::error::Rejection;
use crate::ros2::attachment::{Attachment, MAX_GID_LEN};
use crate::ros2::error::{AttachmentError, DecodeError};
use crate::ros2::msg::*;
use crate::ros2::vision::Detection2DArray;

fn decode_all(bytes: &[u8]) -> [bool; 5] {
    [
        StringMsg::decode(bytes).is_ok(),
        Image::decode(bytes).is_ok(),
        CompressedImage::decode(bytes).is_ok(),
        Float32MultiArray::decode(bytes).is_ok(),
        Detection2DArray::decode(bytes).is_ok(),
    ]
}

#[test]
fn every_truncation_of_every_golden_message_is_an_error() {
    let files: [(&[u8], usize); 5] = [
        (ros2_golden!("string.cdr"), 0),
        (ros2_golden!("image_bgr8_padded.cdr"), 1),
        (ros2_golden!("compressed_image.cdr"), 2),
        (ros2_golden!("float32_multiarray.cdr"), 3),
        (ros2_golden!("detection2d_array.cdr"), 4),
    ];
    for (file, which) in files {
        assert!(decode_all(file)[which], "the whole file decodes");
        for cut in 0..file.len() {
            assert!(
                !decode_all(&file[..cut])[which],
                "a {cut}-byte prefix decoded"
            );
        }
    }
}

#[test]
fn header_errors_name_the_problem() {
    assert_eq!(
        StringMsg::decode(&[0, 1]),
        Err(DecodeError::NoEncapsulation {
            ty: StringMsg::TYPE,
            len: 2
        })
    );
    // PL_CDR_LE and XCDR2 are not what rmw_zenoh sends.
    for id in [0x0003u16, 0x0007, 0x0011] {
        let mut p = ros2_golden!("string.cdr").to_vec();
        p[..2].copy_from_slice(&id.to_be_bytes());
        assert_eq!(
            StringMsg::decode(&p),
            Err(DecodeError::UnsupportedEncapsulation {
                ty: StringMsg::TYPE,
                id
            })
        );
    }
    // Option bytes (XCDR writers put a padding count there) and the
    // padding after the message are ignored.
    let mut p = ros2_golden!("string.cdr").to_vec();
    p[3] = 2;
    p.extend_from_slice(&[0, 0]);
    assert_eq!(
        StringMsg::decode(&p).unwrap().data,
        "hello ROS 2 \u{2014} \u{fc}n\u{ef}code"
    );
}

/// Offset of the `data` length in image_rgb8.cdr (header + 4 + 48).
const RGB_DATA_LEN_AT: usize = 4 + 44;

#[test]
fn huge_declared_lengths_are_rejected_before_allocating() {
    let mut p = ros2_golden!("image_rgb8.cdr").to_vec();
    p[RGB_DATA_LEN_AT..RGB_DATA_LEN_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = Image::decode(&p).unwrap_err();
    assert_eq!(
        e.to_string(),
        "sensor_msgs/msg/Image: malformed CDR: the 60-byte body ends before the message does"
    );
    // A detection array claiming 4 billion detections in 8 bytes.
    let mut p = vec![0, 1, 0, 0];
    p.extend_from_slice(&[0; 8]); // stamp
    p.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // frame_id "" + padding
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Detection2DArray::decode(&p),
        Err(DecodeError::Cdr { .. })
    ));
    let mut p = ros2_golden!("float32_multiarray.cdr").to_vec();
    let n = p.len() - 6 * 4 - 4;
    p[n..n + 4].copy_from_slice(&0x4000_0000u32.to_le_bytes());
    assert!(matches!(
        Float32MultiArray::decode(&p),
        Err(DecodeError::Truncated { declared, .. }) if declared == 4 * 0x4000_0000
    ));
}

#[test]
fn images_whose_geometry_does_not_fit_their_data_are_rejected() {
    let mut img = Image::decode(ros2_golden!("image_rgb8.cdr")).unwrap();
    img.height = 3; // step 6 × 3 rows > 12 bytes
    let p = img.encode().unwrap();
    let e = Image::decode(&p).unwrap_err();
    assert!(e.to_string().contains("step 6 × height 3 needs 18"), "{e}");
    img.height = 2;
    img.step = 5; // rgb8 needs 2 × 3
    let p = img.encode().unwrap();
    let e = Image::decode(&p).unwrap_err();
    assert!(
        e.to_string().contains("step 5 is smaller than width 2"),
        "{e}"
    );
}

#[test]
fn bad_utf8_and_bad_layouts_are_errors() {
    let mut p = ros2_golden!("string.cdr").to_vec();
    p[8] = 0xFF;
    assert!(matches!(
        StringMsg::decode(&p),
        Err(DecodeError::Cdr { .. })
    ));
    let mut t = Float32MultiArray::decode(ros2_golden!("float32_multiarray.cdr")).unwrap();
    t.layout.dim[0].size = 3;
    assert!(
        t.shape()
            .unwrap_err()
            .to_string()
            .contains("needs 9 elements")
    );
    t.layout.dim[0].size = u32::MAX;
    t.layout.dim[1].size = u32::MAX;
    assert!(t.shape().is_err());
}

#[test]
fn decode_errors_become_bad_payload_rejections() {
    let e = Image::decode(&[0, 1, 0, 0]).unwrap_err();
    let r = Rejection::from(&e);
    assert_eq!(r.code, ErrorCode::BadPayload);
    assert!(
        r.message.starts_with("sensor_msgs/msg/Image"),
        "{}",
        r.message
    );
}

#[test]
fn broken_attachments_are_errors() {
    let good = ros2_golden!("attachment_current.bin");
    for cut in 0..good.len() {
        assert!(Attachment::decode_slice(&good[..cut]).is_err(), "{cut}");
    }
    let labelled = ros2_golden!("attachment_labelled.bin");
    for cut in 0..labelled.len() {
        assert!(Attachment::decode_slice(&labelled[..cut]).is_err(), "{cut}");
    }
    let mut extra = good.to_vec();
    extra.push(0);
    assert_eq!(
        Attachment::decode_slice(&extra),
        Err(AttachmentError::Trailing { extra: 1 })
    );
    // A GID length of 2^63 in LEB128: refused before reading a byte of it.
    let mut huge = good[..16].to_vec();
    huge.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
    assert!(matches!(
        Attachment::decode_slice(&huge),
        Err(AttachmentError::GidTooLong {
            max: MAX_GID_LEN,
            ..
        })
    ));
    let mut wrong_label = labelled.to_vec();
    wrong_label[25] = b'S'; // "Source_timestamp"
    assert!(matches!(
        Attachment::decode_slice(&wrong_label),
        Err(AttachmentError::Malformed { .. })
    ));
}
