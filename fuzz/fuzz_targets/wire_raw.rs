//! Raw request decoding: the zenoh attachment (request metadata) and the
//! fixed-shape payload, as ingress runs them for `format = "raw"`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reflexd::error::ErrorCode;
use reflexd::tensor::Dtype;
use reflexd::wire;

fuzz_target!(|data: &[u8]| {
    match wire::decode_attachment(data) {
        Ok(meta) => assert!(meta.id.is_none_or(|id| id.len() <= wire::MAX_ID_LEN)),
        Err((rej, _)) => assert_eq!(rej.code, ErrorCode::BadPayload),
    }
    match wire::decode_raw(data, "x", Dtype::F32, &[1, 4]) {
        Ok(t) => assert_eq!(t.data.len(), 16),
        Err(rej) => assert_eq!(rej.code, ErrorCode::WrongShape),
    }
});
