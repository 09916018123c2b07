//! Interoperability with the client most robotics users reach for first:
//! the Python `eclipse-zenoh` package. `tests/py/client_check.py` runs in the
//! provisioned venv against an in-process daemon and compares predictions
//! with Python onnxruntime; this test fails if any of its checks fail.

mod common;

use std::process::Command;

fn venv_python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("REFLEXD_PYTHON") {
        return p.into();
    }
    let cache = reflexd::ortlib::cache_dir().expect("HOME or REFLEXD_CACHE is set");
    let p = cache.join("venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run `make setup` (scripts/provision.sh)",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_gets_predictions_matching_python_onnxruntime() {
    common::fetched_model("silero_vad.onnx");
    let (daemon, port) = common::start(
        r#"
        [[pipeline]]
        name = "affine"
        model = "models/test/affine.onnx"
        input = "py/affine/*"
        output = "py/affine_out"

        [[pipeline]]
        name = "vad"
        model = "models/fetched/silero_vad.onnx"
        input = "py/mic/*"
        output = "py/vad"
        overflow = "latest"
        format = "raw"
        raw = { tensor = "input", dtype = "f32", shape = [1, 512] }
        constants.sr = { dtype = "i64", shape = [], data = [16000] }
        state = [{ input = "state", output = "stateN" }]
        context = [{ input = "input", keep = 64 }]
        "#,
    )
    .await;
    let script = common::repo().join("tests/py/client_check.py");
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(venv_python())
            .arg(script)
            .args(["--connect", &endpoint])
            .current_dir(common::repo())
            .output()
            .expect("run the Python client")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "Python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    daemon.shutdown(std::time::Duration::from_secs(5)).await;
}
