//! `reflexd top` and `reflexd tap` as an operator runs them: the real binary
//! against a daemon started in-process on a loopback port. Pins that `top
//! --once` renders every pipeline with the counts the test produced, and
//! that `tap` prints a decoded prediction and a coded error.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use reflexd::tensor::f32_tensor;

fn reflexd(port: u16, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reflexd"));
    c.args(args)
        .args(["--connect", &format!("tcp/127.0.0.1:{port}")])
        .env("REFLEXD_LOG", "warn,zenoh=error");
    c
}

async fn daemon() -> (reflexd::Daemon, u16) {
    let affine = test_model("affine.onnx");
    start(&format!(
        r#"
        [metrics]
        node = "t/node"
        [[level]]
        name = "sensor"
        [[pipeline]]
        name = "affine"
        model = "{affine}"
        input = "t/affine/*"
        output = "t/out/affine"
        level = "sensor"
        "#
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_once_renders_the_pipelines_with_their_counts() {
    let (daemon, port) = daemon().await;
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    let req = request(&[f32_tensor("x", &[1, 4], &[1.0; 4])], "r", 0);
    until_served(&c, "t/affine/a", &req, &sub).await;
    put(&c, "t/affine/a", b"junk".to_vec()).await;
    assert_eq!(recv(&sub).await.code(), Some("bad_payload"));
    let st = daemon.stats()[0].clone();

    let mut cmd = reflexd(port, &["top", "--once", "--node", "t/node"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("PIPELINE"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("affine "))
        .unwrap_or_else(|| panic!("no affine row:\n{stdout}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..4], ["tensor", "sensor", "cpu"], "{row}");
    assert_eq!(cols[5], st.ok.to_string(), "OK column: {row}");
    assert_eq!(cols[6], "1", "ERR column: {row}");
    assert!(stdout.contains("affine:bad_payload=1"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("0 ") && l.contains("sensor")),
        "{stdout}"
    );

    // A node with no daemon: a clear error, non-zero exit.
    let mut cmd = reflexd(
        port,
        &[
            "top",
            "--once",
            "--node",
            "t/nobody",
            "--connect-timeout",
            "1",
        ],
    );
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("t/nobody/metrics"));
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_prints_a_decoded_prediction_and_an_error() {
    let (daemon, port) = daemon().await;
    let c = client(port).await;
    let mut child = reflexd(
        port,
        &["tap", "t/out/**", "--count", "2", "--timeout", "30"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    // Until tap's subscription has propagated, its messages are not routed
    // to it: keep sending a request and a bad message until it has two.
    let req = request(&[f32_tensor("x", &[1, 4], &[2.0; 4])], "tapped", 5);
    let mut status = None;
    for _ in 0..200 {
        put(&c, "t/affine/a", req.clone()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        put(&c, "t/affine/a", b"junk".to_vec()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("tap never printed two messages")
    });
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let pred = lines
        .iter()
        .find(|l| l.starts_with("t/out/affine/a tensors "))
        .unwrap_or_else(|| panic!("no decoded prediction:\n{stdout}"));
    assert!(pred.contains("f32[1,"), "{pred}");
    assert!(
        pred.contains("id=tapped") && pred.contains("seq=5"),
        "{pred}"
    );
    assert!(
        pred.contains("pipeline=affine") && pred.contains("e2e_us="),
        "{pred}"
    );
    if let Some(err) = lines.iter().find(|l| l.contains(" error ")) {
        assert!(
            err.starts_with("t/out/affine/error error code=bad_payload pipeline=affine"),
            "{err}"
        );
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}
