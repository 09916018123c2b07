//! Safetensors request decoding, as ingress runs it on every message of a
//! `format = "safetensors"` pipeline, and the client-side output decoder.
//! Any input must give Ok or a coded rejection, never a panic, and a decoded
//! tensor's bytes must match its dtype and shape.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reflexd::error::ErrorCode;
use reflexd::wire;

fuzz_target!(|data: &[u8]| {
    match wire::decode_safetensors(data, 1 << 16) {
        Ok((tensors, _meta)) => {
            for t in &tensors {
                assert_eq!(t.data.len(), t.elements() * t.dtype.size());
            }
        }
        Err((rej, _)) => assert!(matches!(
            rej.code,
            ErrorCode::BadPayload | ErrorCode::WrongDtype | ErrorCode::TooManyElements
        )),
    }
    let _ = wire::decode_output(data);
});
