//! Byte-for-byte agreement with rosbags (CDR) and zenoh-ext (attachment).
//! The values built here are the ones tests/py/ros2_golden.py serialised.

use crate::ros2::attachment::{Attachment, AttachmentFormat, Gid};
use crate::ros2::cdr;
use crate::ros2::msg::*;
use crate::ros2::typehash;
use crate::ros2::vision::*;

fn header(sec: i32, nanosec: u32, frame: &str) -> Header {
    Header {
        stamp: Time { sec, nanosec },
        frame_id: frame.into(),
    }
}

#[test]
fn time_and_header_match_rosbags() {
    let t: Time = cdr::decode("Time", ros2_golden!("time.cdr")).unwrap();
    assert_eq!(
        t,
        Time {
            sec: -1,
            nanosec: 999_999_999
        }
    );
    assert_eq!(cdr::encode("Time", &t).unwrap(), ros2_golden!("time.cdr"));
    let h: Header = cdr::decode("Header", ros2_golden!("header.cdr")).unwrap();
    assert_eq!(h, header(1_700_000_000, 123_456_789, "base_link"));
    assert_eq!(
        cdr::encode("Header", &h).unwrap(),
        ros2_golden!("header.cdr")
    );
}

#[test]
fn string_matches_rosbags_in_both_byte_orders() {
    for (file, text) in [
        (
            ros2_golden!("string.cdr"),
            "hello ROS 2 \u{2014} \u{fc}n\u{ef}code",
        ),
        (ros2_golden!("string_empty.cdr"), ""),
    ] {
        let m = StringMsg::decode(file).unwrap();
        assert_eq!(m.data, text);
        assert_eq!(m.encode().unwrap(), file);
    }
    let be = ros2_golden!("string_be.cdr");
    assert_eq!(&be[..2], &[0, 0], "rosbags wrote a big-endian header");
    assert_eq!(StringMsg::decode(be).unwrap().data, "big");
}

fn rgb_image(data: &[u8]) -> Image<'_> {
    Image {
        header: header(1, 2, "camera"),
        height: 2,
        width: 2,
        encoding: "rgb8".into(),
        is_bigendian: 0,
        step: 6,
        data,
    }
}

#[test]
fn image_matches_rosbags_and_borrows_its_pixels() {
    let file = ros2_golden!("image_rgb8.cdr");
    let img = Image::decode(file).unwrap();
    let pixels: Vec<u8> = (0..12).collect();
    assert_eq!(img, rgb_image(&pixels));
    let inside = file.as_ptr_range();
    assert!(inside.contains(&img.data.as_ptr()), "pixels are not copied");
    assert_eq!(img.encode().unwrap(), file);

    let be = Image::decode(ros2_golden!("image_rgb8_be.cdr")).unwrap();
    assert_eq!(be, img, "big-endian payload decodes to the same image");
}

#[test]
fn padded_rows_keep_their_step() {
    let file = ros2_golden!("image_bgr8_padded.cdr");
    let img = Image::decode(file).unwrap();
    assert_eq!((img.width, img.height, img.step), (3, 2, 12));
    assert_eq!(img.encoding, "bgr8");
    assert_eq!(img.header, header(1_700_000_000, 999_999_999, "cam_left"));
    assert_eq!(img.data, (100u8..124).collect::<Vec<_>>().as_slice());
    assert_eq!(img.encode().unwrap(), file);
}

#[test]
fn compressed_image_matches_rosbags() {
    let file = ros2_golden!("compressed_image.cdr");
    let img = CompressedImage::decode(file).unwrap();
    assert_eq!(img.header, header(-5, 7, "c"));
    assert_eq!(img.format, "jpeg");
    assert_eq!(img.data, &[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, 0x4A]);
    assert_eq!(img.encode().unwrap(), file);
}

fn tensor() -> Float32MultiArray {
    let dim = |label: &str, size, stride| MultiArrayDimension {
        label: label.into(),
        size,
        stride,
    };
    Float32MultiArray {
        layout: MultiArrayLayout {
            dim: vec![dim("rows", 2, 6), dim("cols", 3, 3)],
            data_offset: 0,
        },
        data: vec![0.5, -1.25, 3.0, 1e-3, 42.0, -0.0],
    }
}

#[test]
fn float32_multiarray_matches_rosbags_in_both_byte_orders() {
    let file = ros2_golden!("float32_multiarray.cdr");
    let t = Float32MultiArray::decode(file).unwrap();
    assert_eq!(t, tensor());
    assert!(t.data[5].is_sign_negative(), "-0.0 survives");
    assert_eq!(t.shape().unwrap(), vec![2, 3]);
    assert_eq!(t.encode().unwrap(), file);
    let be = Float32MultiArray::decode(ros2_golden!("float32_multiarray_be.cdr")).unwrap();
    assert_eq!(be, t);
}

pub(crate) fn detections() -> Detection2DArray {
    let hdr = header(1_700_000_000, 123_456_789, "camera");
    let hyp = |class_id: &str, score, cov0| {
        let mut pose = PoseWithCovariance::default();
        pose.covariance[0] = cov0;
        ObjectHypothesisWithPose {
            hypothesis: ObjectHypothesis {
                class_id: class_id.into(),
                score,
            },
            pose,
        }
    };
    let bbox = |x, y, theta, size_x, size_y| BoundingBox2D {
        center: Pose2D {
            position: Point2D { x, y },
            theta,
        },
        size_x,
        size_y,
    };
    Detection2DArray {
        header: hdr.clone(),
        detections: vec![
            Detection2D {
                header: hdr.clone(),
                results: vec![hyp("STOP", 0.875, 0.25)],
                bbox: bbox(320.5, 240.25, 0.0, 64.0, 32.0),
                id: "0".into(),
            },
            Detection2D {
                header: hdr,
                results: vec![hyp("hello", 0.5, 0.0), hyp("hallo", 0.25, 0.0)],
                bbox: bbox(10.0, 20.0, 0.5, 3.0, 4.5),
                id: String::new(),
            },
        ],
    }
}

#[test]
fn detection2d_array_matches_rosbags_in_both_byte_orders() {
    let file = ros2_golden!("detection2d_array.cdr");
    let expected = detections();
    assert_eq!(Detection2DArray::decode(file).unwrap(), expected);
    assert_eq!(expected.encode().unwrap(), file);
    let be = Detection2DArray::decode(ros2_golden!("detection2d_array_be.cdr")).unwrap();
    assert_eq!(be, expected);
}

#[test]
fn attachments_match_zenoh_ext_in_both_layouts() {
    let gid16: Vec<u8> = (0..16).collect();
    let file = ros2_golden!("attachment_current.bin");
    let (a, format) = Attachment::decode_slice(file).unwrap();
    assert_eq!(format, AttachmentFormat::Current);
    assert_eq!(a.sequence_number, 1);
    assert_eq!(a.source_timestamp, 1_700_000_000_123_456_789);
    assert_eq!(a.gid.as_bytes(), gid16.as_slice());
    assert_eq!(file.len(), 33);
    assert_eq!(a.encode().to_bytes().as_ref(), file);

    let file = ros2_golden!("attachment_labelled.bin");
    let (a, format) = Attachment::decode_slice(file).unwrap();
    assert_eq!(format, AttachmentFormat::Labelled);
    assert_eq!((a.sequence_number, a.source_timestamp), (7, -3));
    assert_eq!(a.gid.as_bytes(), gid16.as_slice());
    assert_eq!(file.len(), 77);
    assert_eq!(a.encode_labelled().to_bytes().as_ref(), file);

    let (a, _) = Attachment::decode_slice(ros2_golden!("attachment_gid24.bin")).unwrap();
    assert_eq!(a.gid, Gid::new(&(0..24).collect::<Vec<u8>>()).unwrap());
}

#[test]
fn type_hashes_match_rosbags_for_every_described_type() {
    let table: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(ros2_golden!("type_hashes.json")).unwrap();
    assert_eq!(
        table.len(),
        typehash::TYPES.len(),
        "one rosbags hash per described type"
    );
    for (name, hash) in &table {
        assert_eq!(
            typehash::rihs01(name).as_deref(),
            Some(hash.as_str()),
            "{name}"
        );
    }
}

/// Hashes ROS itself ships: the first five from ROS2.md's table (matched
/// there against rmw_zenoh's design.md and independent tables),
/// Detection2DArray from rosidl_generator_c's generated
/// `detection2_d_array__description.c` of a vision_msgs 4.1.1 build.
#[test]
fn type_hashes_match_the_values_ros_ships() {
    for (name, hash) in [
        (
            "std_msgs/msg/String",
            "df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18",
        ),
        (
            "std_msgs/msg/Header",
            "f49fb3ae2cf070f793645ff749683ac6b06203e41c891e17701b1cb597ce6a01",
        ),
        (
            "builtin_interfaces/msg/Time",
            "b106235e25a4c5ed35098aa0a61a3ee9c9b18d197f398b0e4206cea9acf9c197",
        ),
        (
            "sensor_msgs/msg/Image",
            "d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47",
        ),
        (
            "sensor_msgs/msg/CompressedImage",
            "15640771531571185e2efc8a100baf923961a4d15d5569652e6cb6691e8e371a",
        ),
        (
            "vision_msgs/msg/Detection2DArray",
            "214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968",
        ),
    ] {
        assert_eq!(
            typehash::rihs01(name).unwrap(),
            format!("RIHS01_{hash}"),
            "{name}"
        );
    }
}
