//! rmw_zenoh metadata from other processes: the sample attachment (both
//! layouts) that ingress reads on every ROS 2 sample, and the liveliness
//! token grammar (names, QoS chunk) of the ROS graph. Never a panic; what
//! parses must re-encode to what was read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reflexd::ros2::attachment::{Attachment, AttachmentFormat};
use reflexd::ros2::liveliness::{Qos, parse_token};

fuzz_target!(|data: &[u8]| {
    if let Ok((a, format)) = Attachment::decode_slice(data) {
        let again = match format {
            AttachmentFormat::Current => a.encode(),
            AttachmentFormat::Labelled => a.encode_labelled(),
        };
        assert_eq!(Attachment::decode(&again).expect("round trip"), (a, format));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = parse_token(text) {
            if let Some(topic) = t.topic {
                let chunk = topic.qos.to_chunk();
                assert_eq!(
                    Qos::parse_chunk(&chunk).expect("own chunk parses"),
                    topic.qos
                );
            }
        }
        let _ = Qos::parse_chunk(text);
    }
});
