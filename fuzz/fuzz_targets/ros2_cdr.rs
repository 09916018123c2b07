//! ROS 2 CDR payload decoding, as ingress runs it on every sample of a
//! `ros2` input (Image, CompressedImage, String, Float32MultiArray) and as a
//! ROS peer would read our Detection2DArray. Any input must give Ok or a
//! typed error, never a panic; whatever decodes must re-encode to a payload
//! that decodes to the same value, and an image's pixels must cover its
//! declared geometry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reflexd::ros2::msg::{CompressedImage, Float32MultiArray, Image, StringMsg};
use reflexd::ros2::vision::Detection2DArray;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = Image::decode(data) {
        let need = img.step as u64 * img.height as u64;
        assert!(img.data.len() as u64 >= need);
        let again = img.encode().expect("a decoded image re-encodes");
        assert_eq!(Image::decode(&again).expect("round trip"), img);
    }
    if let Ok(img) = CompressedImage::decode(data) {
        let again = img.encode().expect("re-encodes");
        assert_eq!(CompressedImage::decode(&again).expect("round trip"), img);
    }
    if let Ok(s) = StringMsg::decode(data) {
        let again = s.encode().expect("re-encodes");
        assert_eq!(StringMsg::decode(&again).expect("round trip"), s);
    }
    if let Ok(t) = Float32MultiArray::decode(data) {
        let _ = t.shape();
        let again = t.encode().expect("re-encodes");
        let back = Float32MultiArray::decode(&again).expect("round trip");
        assert_eq!(back.layout, t.layout);
        assert_eq!(back.data.len(), t.data.len());
    }
    if let Ok(d) = Detection2DArray::decode(data) {
        let again = d.encode().expect("re-encodes");
        let back = Detection2DArray::decode(&again).expect("round trip");
        assert_eq!(back.detections.len(), d.detections.len());
    }
});
