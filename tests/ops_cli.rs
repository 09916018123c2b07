//! `reflexd top`, `reflexd tap` and `reflexd-sim` as an operator runs them:
//! the real binaries against a daemon started in-process on a loopback port.
//! Pins that `top --once` renders every pipeline with the counts the test
//! produced, that live `top` into a pipe writes no escape sequences, that
//! `tap` prints a decoded prediction, a coded error and other nodes'
//! requests (the tools are zenoh clients of the daemon), that connection
//! errors are one clean line, and that the simulator runs from any
//! directory.

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

/// The topology a user meets first (README, "Topologies"): a sensor node
/// connected to a peer-mode daemon as a zenoh peer, and `tap` on the same
/// daemon. A tool connected as a peer sees nothing of the sensor's traffic
/// (peers do not forward other peers' messages); the tools connect as zenoh
/// clients, which the daemon routes for, so `tap` prints the request itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_sees_requests_another_node_sends_to_the_daemon() {
    let (daemon, port) = daemon().await;
    let sensor = client(port).await; // a peer, like reflexd-sim used to be
    let mut child = reflexd(
        port,
        &["tap", "t/affine/**", "--count", "1", "--timeout", "30"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let req = request(&[f32_tensor("x", &[1, 4], &[3.0; 4])], "from-sensor", 9);
    let mut status = None;
    for _ in 0..200 {
        put(&sensor, "t/affine/cam", req.clone()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("tap never saw the sensor's request")
    });
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{stdout}");
    assert!(
        stdout.starts_with("t/affine/cam tensors x f32[1,4]") && stdout.contains("id=from-sensor"),
        "{stdout}"
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// `top` in live mode writing to a pipe (a log, `| tee`): screens follow one
/// another with no terminal escape sequences; on a terminal it redraws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_live_output_to_a_pipe_has_no_escape_sequences() {
    let (daemon, port) = daemon().await;
    let mut child = reflexd(port, &["top", "--node", "t/node", "--interval", "0.2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // Three screens: the first (since start) and two windowed ones.
        while String::from_utf8_lossy(&out).matches("PIPELINE").count() < 3 {
            let n = std::io::Read::read(&mut stdout, &mut buf).expect("read top");
            assert!(n > 0, "top ended early: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        // SAFETY: plain kill(2) on the child this test spawned.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        std::io::Read::read_to_end(&mut stdout, &mut out).unwrap();
        let status = child.wait().unwrap();
        (String::from_utf8(out).unwrap(), status)
    })
    .await
    .unwrap();
    let (text, status) = out;
    assert!(status.success(), "{status:?}: {text}");
    assert!(
        !text.contains('\x1b'),
        "escape sequence in piped output: {text:?}"
    );
    assert!(text.contains("figures since start"), "{text}");
    assert!(text.contains("window "), "{text}");
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// Connection failures name the endpoint and carry no source paths of
/// zenoh (` at /root/.cargo/registry/…/orchestrator.rs:388.`).
#[test]
fn unreachable_endpoint_is_one_clean_line_for_every_tool() {
    let port = free_port(); // bound and released: nobody listens there
    for args in [
        &["top", "--once", "--connect-timeout", "1"][..],
        &["tap", "x/**", "--count", "1", "--connect-timeout", "1"][..],
    ] {
        let o = reflexd(port, args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!("cannot connect to tcp/127.0.0.1:{port} within 1s")),
            "{args:?}: {err}"
        );
        assert!(!err.contains(".rs:"), "{args:?}: source path leaked: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}

/// reflexd-sim run from another directory (the issue's `cd /tmp &&
/// reflexd-sim` failing on `tests/data/speech_16k.wav`): it finds its WAV
/// and PNG in the checkout it was built from, reaches the daemon through
/// REFLEXD_CONNECT, and gets VAD predictions. A wrong --data is one clear
/// error naming where it looked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_runs_from_any_directory_and_says_where_data_is_missing() {
    let vad = fetched_model("silero_vad.onnx");
    let affine = test_model("affine.onnx");
    let (daemon, port) = start(&format!(
        r#"
        [[pipeline]]
        name = "vad"
        model = "{vad}"
        input = "t/mic/*"
        output = "reflexd/vad"
        overflow = "latest"
        format = "raw"
        raw = {{ tensor = "input", dtype = "f32", shape = [1, 512] }}
        constants.sr = {{ dtype = "i64", shape = [], data = [16000] }}
        state = [{{ input = "state", output = "stateN" }}]
        context = [{{ input = "input", keep = 64 }}]
        [[pipeline]]
        name = "cam"
        model = "{affine}"
        input = "t/cam/*"
        output = "reflexd/cam"
        "#
    ))
    .await;
    let elsewhere = std::env::temp_dir();
    let sim = move |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_reflexd-sim"));
        c.current_dir(&elsewhere)
            .env("REFLEXD_CONNECT", format!("tcp/127.0.0.1:{port}"))
            .env_remove("REFLEXD_DATA")
            .args(["--seconds", "2", "--mic-key", "t/mic/front"])
            .args(["--camera-key", "t/cam/front", "--expect", "vad"])
            .args(extra);
        c
    };
    let mut ok = sim(&[]);
    let o = tokio::task::spawn_blocking(move || ok.output().unwrap())
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.lines().any(|l| l.starts_with("vad ")), "{out}");

    let o = sim(&["--data", "/nonexistent/reflexd"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("/nonexistent/reflexd/tests/data/speech_16k.wav")
            && err.contains("--data DIR"),
        "{err}"
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}
