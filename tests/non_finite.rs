//! Non-finite inputs (issue #11, defect 8): a float tensor holding NaN or
//! ±Inf is refused with `non_finite` by default, through both message
//! formats (safetensors and raw), and counted; the pipeline keeps serving.
//! Per pipeline, `non_finite = "allow"` lets such input run.

mod common;

use std::time::Duration;

use common::*;
use reflexd::tensor::{f32_tensor, f32_values};

fn config(extra: &str) -> String {
    let affine = test_model("affine.onnx");
    format!(
        r#"
        [[pipeline]]
        name = "affine"
        model = "{affine}"
        input = "t/affine/*"
        output = "t/affine_out"
        {extra}
        [[pipeline]]
        name = "raw"
        model = "{affine}"
        input = "t/raw/*"
        output = "t/raw_out"
        format = "raw"
        raw = {{ tensor = "x", dtype = "f32", shape = [1, 4] }}
        {extra}
        "#
    )
}

fn bad_values() -> [(&'static str, f32); 3] {
    [
        ("nan", f32::NAN),
        ("inf", f32::INFINITY),
        ("neg-inf", f32::NEG_INFINITY),
    ]
}

fn raw(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_or_inf_input_is_refused_non_finite_by_default() {
    let (daemon, port) = start(&config("")).await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/affine_out/**").await;
    let raw_sub = subscribe(&c, "t/raw_out/**").await;
    wired(&daemon, &c, "t/affine/a", "t/affine_out/a").await;
    wired(&daemon, &c, "t/raw/a", "t/raw_out/a").await;
    for (name, v) in bad_values() {
        let x = [1.0, v, 2.0, 3.0];
        put(
            &c,
            "t/affine/a",
            request(&[f32_tensor("x", &[1, 4], &x)], name, 0),
        )
        .await;
        let r = recv(&sub).await;
        assert_eq!(
            r.code(),
            Some("non_finite"),
            "safetensors {name}: {}",
            r.brief()
        );
        assert_eq!(
            r.id().as_deref(),
            Some(name),
            "the refusal names the request"
        );
        put(&c, "t/raw/a", raw(&x)).await;
        let r = recv(&raw_sub).await;
        assert_eq!(r.code(), Some("non_finite"), "raw {name}: {}", r.brief());
    }
    put(
        &c,
        "t/affine/a",
        request(&[f32_tensor("x", &[1, 4], &[1.0; 4])], "ok", 0),
    )
    .await;
    let r = recv(&sub).await;
    assert_eq!(f32_values(r.tensor("y")).unwrap(), vec![3.0; 4]);
    assert_eq!(error_count(&daemon, "affine", "non_finite"), 3);
    assert_eq!(error_count(&daemon, "raw", "non_finite"), 3);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_allow_lets_nan_and_inf_run() {
    let (daemon, port) = start(&config("non_finite = \"allow\"")).await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/affine_out/**").await;
    wired(&daemon, &c, "t/affine/a", "t/affine_out/a").await;
    for (name, v) in bad_values() {
        let x = [1.0, v, 2.0, 3.0];
        put(
            &c,
            "t/affine/a",
            request(&[f32_tensor("x", &[1, 4], &x)], name, 0),
        )
        .await;
        let r = recv(&sub).await;
        let y = f32_values(r.tensor("y")).unwrap();
        assert_eq!(y[0], 3.0, "{name}");
        assert!(!y[1].is_finite(), "{name}: the non-finite value ran: {y:?}");
    }
    assert_eq!(error_count(&daemon, "affine", "non_finite"), 0);
    daemon.shutdown(Duration::from_secs(5)).await;
}
