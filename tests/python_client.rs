//! Interoperability with the client most robotics users reach for first:
//! the Python `eclipse-zenoh` package. `tests/py/client_check.py` runs in the
//! provisioned venv against an in-process daemon and compares predictions
//! with Python onnxruntime; this test fails if any of its checks fail. The
//! `reflexd-client` package (clients/python) is imported as installed in
//! the venv, and must be this checkout's.

mod common;

use std::process::Command;

fn venv_python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("REFLEXD_PYTHON") {
        return p.into();
    }
    let cache = reflexd::infer::runtime::cache_dir().expect("HOME or REFLEXD_CACHE is set");
    let p = cache.join("venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run `make setup` (scripts/provision.sh)",
        p.display()
    );
    p
}

/// `pip install ./clients/python` (scripts/provision.sh) put this
/// checkout's client into the venv: the version is Cargo.toml's and the
/// installed files are the sources here, so the tests below exercise the
/// package a user installs, not a stale copy or the source tree.
#[test]
fn python_client_is_installed_from_this_checkout() {
    let out = Command::new(venv_python())
        .args([
            "-c",
            "import importlib.metadata as m, os, reflexd_client as c; \
             print(m.version('reflexd-client')); print(os.path.dirname(c.__file__))",
        ])
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run the venv python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reflexd_client is not importable: run `make setup`\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(env!("CARGO_PKG_VERSION")), "{stdout}");
    let installed = std::path::PathBuf::from(lines.next().expect("package dir"));
    let src = common::repo().join("clients/python/src/reflexd_client");
    assert!(!installed.starts_with(common::repo()), "{installed:?}");
    for f in ["__init__.py", "wire.py"] {
        assert_eq!(
            std::fs::read(installed.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f}: the venv holds another version of the client: run `make setup`"
        );
    }
    let pyproject =
        std::fs::read_to_string(common::repo().join("clients/python/pyproject.toml")).unwrap();
    assert!(
        pyproject.contains(&format!("version = \"{}\"", env!("CARGO_PKG_VERSION"))),
        "pyproject.toml and Cargo.toml disagree on the version"
    );
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

/// The README's Python example (clients/python/example.py): a prediction, a
/// coded error, a streamed generation and the metrics snapshot, checked
/// against the daemon's own counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_predicts_streams_and_reads_metrics() {
    let llm = common::repo().join("models/llm/fetched-exact");
    assert!(llm.join("model.onnx").exists(), "run `make setup`");
    let (daemon, port) = common::start(&format!(
        r#"
        [metrics]
        node = "py/node"
        [[pipeline]]
        name = "affine"
        model = "models/test/affine.onnx"
        input = "py/affine/*"
        output = "py/affine_out"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "py/llm/cmd"
        output = "py/llm/out"
        "#,
        llm.display()
    ))
    .await;
    let script = common::repo().join("clients/python/example.py");
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(venv_python())
            .arg(script)
            .args(["--connect", &endpoint, "--node", "py/node"])
            .args(["--input", "py/affine/ex", "--output", "py/affine_out"])
            .args(["--llm-cmd", "py/llm/cmd", "--llm-out", "py/llm/out"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("run the Python example")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "example failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("prediction: y=[1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0]"),
        "{stdout}"
    );
    assert!(stdout.contains("error: code=wrong_shape"), "{stdout}");
    assert!(stdout.contains("token: "), "{stdout}");
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(stdout.contains("alive: ['py/node/alive']"), "{stdout}");
    let st = &daemon.stats()[0];
    assert_eq!(
        (st.ok, st.error(reflexd::error::ErrorCode::WrongShape)),
        (1, 1)
    );
    assert!(
        stdout.contains("metrics: affine kind=tensor ok=1 errors={'wrong_shape': 1}"),
        "{stdout}"
    );
    assert!(
        stdout.contains("metrics: chat kind=generate ok=1"),
        "{stdout}"
    );
    daemon.shutdown(std::time::Duration::from_secs(5)).await;
}
