//! `reflexd prompt` as a person runs it: the real binary against a daemon
//! started in-process on a loopback port, with the real converted
//! SmolLM2-135M. Pins the streamed answer on stdout, the TTFT/TPOT line on
//! stderr, the queryable path, an error reply's exit status, Ctrl-C → cancel,
//! and a clear failure when no daemon listens.

mod common;

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn config() -> String {
    format!(
        r#"
        [[level]]
        name = "chat"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "t/llm/cmd"
        output = "t/llm/out"
        level = "chat"
        max_tokens = 256
        "#,
        llm_dir()
    )
}

/// `reflexd prompt` aimed at the test daemon's pipeline keys.
fn prompt_cmd(port: u16, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reflexd"));
    c.arg("prompt")
        .args(["--connect", &format!("tcp/127.0.0.1:{port}")])
        .args(["--input", "t/llm/cmd", "--output", "t/llm/out"])
        .args(args)
        // The client's own default filter, whatever the caller's env says.
        .env("REFLEXD_LOG", "warn,zenoh=error");
    c
}

/// Runs the binary on a blocking thread, so the in-process daemon's runtime
/// keeps serving meanwhile.
async fn run(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().expect("run reflexd prompt"))
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_metrics_line(stderr: &str, reason: &str) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("finish_reason="))
        .unwrap_or_else(|| panic!("no summary line in stderr: {stderr}"));
    assert!(line.contains(&format!("finish_reason={reason} ")), "{line}");
    for part in ["TTFT ", "TPOT ", "(client ", "prefill ", "decode ", "tok/s"] {
        assert!(line.contains(part), "summary lacks {part:?}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_streams_the_answer_and_reports_ttft_tpot_over_pubsub_and_query() {
    let (daemon, port) = start(&config()).await;
    for mode in [&[][..], &["--query"][..]] {
        let mut args = vec!["--max-tokens", "32"];
        args.extend_from_slice(mode);
        args.push("What is the capital of France?");
        let o = run(prompt_cmd(port, &args)).await;
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        assert!(
            o.status.success(),
            "{mode:?}: {:?}; stderr: {err}",
            o.status
        );
        assert!(out.contains("Paris"), "{mode:?}: stdout {out:?}");
        assert!(out.ends_with('\n'), "the answer ends its line: {out:?}");
        assert_metrics_line(&err, "stop");
    }
    assert_eq!(daemon.live_generations(), vec![0]);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reply_exits_1_with_its_code() {
    let (daemon, port) = start(&config()).await;
    let o = run(prompt_cmd(port, &["--temperature", "99", "Hi"])).await;
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("error reply") && err.contains("bad_parameter"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_generation_and_exits_130() {
    let (daemon, port) = start(&config()).await;
    let mut c = prompt_cmd(
        port,
        &["--max-tokens", "256", "Tell me a long story about a robot."],
    );
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn reflexd prompt");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (out, status, err) = tokio::task::spawn_blocking(move || {
        // Interrupt once the answer is streaming (a few tokens are out).
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while out.len() < 20 {
            let n = stdout.read(&mut buf).expect("read stdout");
            assert!(n > 0, "stdout closed before any answer");
            out.extend_from_slice(&buf[..n]);
        }
        // SAFETY: plain kill(2) on the child this test spawned.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        stdout.read_to_end(&mut out).unwrap();
        let mut err = String::new();
        stderr.read_to_string(&mut err).unwrap();
        (out, child.wait().unwrap(), err)
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(130), "stderr: {err}");
    assert_metrics_line(&err, "cancelled");
    assert!(!text(&out).is_empty());
    // The daemon really stopped it (and freed the slot) before answering.
    assert_eq!(daemon.live_generations(), vec![0]);
    let st = &daemon.generation_stats()[0];
    assert_eq!(st.received, 1);
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn no_daemon_listening_fails_fast_with_a_clear_message() {
    // Bound and released at once: nobody listens there.
    let port = free_port();
    let o = prompt_cmd(port, &["--connect-timeout", "1", "Hi"])
        .output()
        .expect("run reflexd prompt");
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains(&format!("cannot connect to tcp/127.0.0.1:{port}"))
            && err.contains("is `reflexd run` listening there?"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains(".rs:"), "no source paths of zenoh: {err}");
    assert!(o.stdout.is_empty());
}
