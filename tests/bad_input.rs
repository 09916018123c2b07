//! Bad input over real zenoh: each malformed message is answered on the error
//! key with a stable code (and the request id when it could be read), is
//! counted, and the daemon keeps serving valid requests on every pipeline.

mod common;

use common::*;
use reflexd::error::ErrorCode;
use reflexd::tensor::{Dtype, Tensor, f32_tensor, f32_values};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_message_gets_a_coded_error_and_service_continues() {
    let affine = test_model("affine.onnx");
    let ctx = test_model("context.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [limits]
        max_payload_bytes = 4096
        max_elements = 256
        [[pipeline]]
        name = "affine"
        model = "{affine}"
        input = "t/affine/*"
        output = "t/out/affine"
        [[pipeline]]
        name = "stream"
        model = "{ctx}"
        input = "t/raw/*"
        output = "t/out/raw"
        overflow = "latest"
        max_streams = 2
        format = "raw"
        raw = {{ tensor = "input", dtype = "f32", shape = [1, 6] }}
        context = [{{ input = "input", keep = 2 }}]
        "#
    ))
    .await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    let good = || request(&[f32_tensor("x", &[2, 4], &[1.0; 8])], "good", 1);
    until_served(&c, "t/affine/a", &good(), &sub).await;
    let good_raw: Vec<u8> = [1f32; 6].iter().flat_map(|v| v.to_le_bytes()).collect();
    until_served(&c, "t/raw/s1", &good_raw, &sub).await;

    let valid = request(&[f32_tensor("x", &[1, 4], &[1.0; 4])], "v", 0);
    let i64_x = Tensor::zeros("x", Dtype::I64, vec![1, 4]);
    // (case, key, payload, expected code, request id echoed back)
    type Case<'a> = (&'a str, &'a str, Vec<u8>, ErrorCode, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "garbage",
            "t/affine/a",
            b"\x07not a safetensors message".to_vec(),
            ErrorCode::BadPayload,
            None,
        ),
        (
            "truncated",
            "t/affine/a",
            valid[..valid.len() - 5].to_vec(),
            ErrorCode::BadPayload,
            None,
        ),
        (
            "empty",
            "t/affine/a",
            Vec::new(),
            ErrorCode::EmptyPayload,
            None,
        ),
        (
            "too-large",
            "t/affine/a",
            vec![0u8; 5000],
            ErrorCode::PayloadTooLarge,
            None,
        ),
        (
            "wrong-dtype",
            "t/affine/a",
            request(&[i64_x], "wd", 1),
            ErrorCode::WrongDtype,
            Some("wd"),
        ),
        (
            "wrong-shape",
            "t/affine/a",
            request(&[f32_tensor("x", &[1, 5], &[0.0; 5])], "ws", 1),
            ErrorCode::WrongShape,
            Some("ws"),
        ),
        (
            "missing",
            "t/affine/a",
            request(&[f32_tensor("z", &[1, 4], &[0.0; 4])], "mt", 1),
            ErrorCode::MissingTensor,
            Some("mt"),
        ),
        (
            "extra",
            "t/affine/a",
            request(
                &[
                    f32_tensor("x", &[1, 4], &[0.0; 4]),
                    f32_tensor("w", &[1], &[0.0]),
                ],
                "ut",
                1,
            ),
            ErrorCode::UnexpectedTensor,
            Some("ut"),
        ),
        (
            "elements",
            "t/affine/a",
            request(&[f32_tensor("x", &[80, 4], &[0.0; 320])], "te", 1),
            ErrorCode::TooManyElements,
            Some("te"),
        ),
        (
            "bad-meta",
            "t/affine/a",
            {
                let mut m = std::collections::HashMap::new();
                m.insert("seq".to_string(), "minus one".to_string());
                reflexd::wire::encode_message(&[f32_tensor("x", &[1, 4], &[0.0; 4])], m)
            },
            ErrorCode::BadPayload,
            None,
        ),
        (
            "raw-size",
            "t/raw/s1",
            vec![0u8; 20],
            ErrorCode::WrongShape,
            None,
        ),
        (
            "reserved-stream",
            "t/affine/error",
            valid.clone(),
            ErrorCode::BadStream,
            None,
        ),
        (
            "third-stream",
            "t/raw/s3",
            good_raw.clone(),
            ErrorCode::TooManyStreams,
            None,
        ),
    ];
    for (name, key, payload, code, id) in cases {
        if name == "third-stream" {
            // max_streams = 2: s1 is live; s2 takes the last slot, s3 is refused.
            put(&c, "t/raw/s2", good_raw.clone()).await;
            let r = recv(&sub).await;
            assert!(r.code().is_none(), "s2 must be served: {r:?}");
            put(&c, key, payload).await;
            let r = recv(&sub).await;
            assert_eq!(r.code(), Some(code.code()), "{name}: {r:?}");
            continue;
        }
        put(&c, key, payload).await;
        let r = recv(&sub).await;
        let Reply::Error { key: ekey, json } = &r else {
            panic!("{name}: expected an error, got {r:?}");
        };
        assert_eq!(json["code"], code.code(), "{name}: {json}");
        assert!(
            !json["message"].as_str().unwrap().is_empty(),
            "{name}: message must explain"
        );
        assert!(ekey.ends_with("/error"));
        if let Some(id) = id {
            assert_eq!(json["id"], id, "{name}: request id echoed");
        }
        // The daemon still serves a valid request right after.
        put(&c, "t/affine/a", good()).await;
        let ok = recv(&sub).await;
        assert_eq!(
            f32_values(ok.tensor("y")).unwrap(),
            vec![3.0; 8],
            "{name}: service continues"
        );
    }
    let st = daemon.stats();
    assert_eq!(st[0].error(ErrorCode::WrongDtype), 1);
    assert_eq!(st[0].error(ErrorCode::BadPayload), 3);
    assert_eq!(st[1].error(ErrorCode::TooManyStreams), 1);
    for p in &st {
        assert_eq!(
            p.finished(),
            p.received,
            "every message accounted for: {p:?}"
        );
    }
    daemon.shutdown(std::time::Duration::from_secs(5)).await;
}
