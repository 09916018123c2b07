//! Log amplification (issue #11, defect 7): the real binary at its default
//! log level, stderr captured, receives 2 000 requests that fail inside ONNX
//! Runtime (models/test/faulty.onnx with N = 3 rows). Repeated errors are
//! rate-limited per pipeline and code: a bounded number of lines (the first
//! few, then summaries with counts), every line a single log record (no
//! multi-line ORT dumps).

mod common;

use std::time::Duration;

use common::proc::{Proc, Spawn, tmpdir, zenoh_header};
use common::*;
use reflexd::tensor::f32_tensor;

const FAILING: usize = 2000;
/// Lines the burst may add to stderr (first lines, summaries, shutdown).
const MAX_LINES: usize = 50;

fn rows(n: usize, id: &str) -> Vec<u8> {
    let v: Vec<f32> = (0..n * 4).map(|i| i as f32).collect();
    request(&[f32_tensor("x", &[n, 4], &v)], id, 0)
}

/// The daemon's own count of `inference_failed` (metrics queryable).
async fn failed(c: &zenoh::Session) -> u64 {
    let replies = c
        .get("reflexd/metrics")
        .timeout(Duration::from_secs(2))
        .await
        .unwrap();
    let Ok(r) = replies.recv_async().await else {
        return 0;
    };
    let Ok(sample) = r.result() else { return 0 };
    let v: serde_json::Value = serde_json::from_slice(&sample.payload().to_bytes()).unwrap();
    v["pipelines"][0]["errors"]["inference_failed"]
        .as_u64()
        .unwrap_or(0)
}

/// A summary line: names the pipeline and the code, and carries the count
/// of the repeats it stands for (at least 100 of the 2 000 here). The
/// leading timestamp is skipped.
fn is_summary(line: &str) -> bool {
    let body = line.split_once(' ').map_or("", |(_, b)| b);
    body.contains("faulty")
        && body.contains("inference_failed")
        && body
            .split(|ch: char| !ch.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .any(|n| (100..=FAILING as u64).contains(&n))
}

/// A log record's first line starts with its RFC 3339 timestamp.
fn is_record(line: &str) -> bool {
    line.len() > 20
        && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && line.as_bytes()[4] == b'-'
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_failing_requests_write_a_bounded_log_with_a_summary() {
    let dir = tmpdir("logvolume");
    let port = free_port();
    let config = format!(
        "{}[[pipeline]]\nname = \"faulty\"\nmodel = \"{}\"\ninput = \"t/faulty\"\noutput = \"t/faulty_out\"\nqueue_capacity = 4096\ndeadline_ms = 600000\n",
        zenoh_header(port),
        test_model("faulty.onnx")
    );
    let mut d = Proc::spawn(&dir, &config, Spawn::default());
    let c = client(port).await;
    let sub = subscribe(&c, "t/faulty_out/**").await;
    until_served(&c, "t/faulty", &rows(1, "probe"), &sub).await;
    // Nobody reads the 2 000 error replies: a bounded subscriber left
    // unread would block this client's receive task (and the metrics
    // queries below).
    sub.undeclare().await.unwrap();
    let before = d.stderr().lines().count();

    for i in 0..FAILING {
        put(&c, "t/faulty", rows(3, &format!("f{i}"))).await;
    }
    let mut counted = 0;
    for _ in 0..600 {
        counted = failed(&c).await;
        if counted >= FAILING as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, FAILING as u64, "every request failed in ORT");

    let new_lines = |d: &Proc| -> Vec<String> {
        d.stderr()
            .lines()
            .skip(before)
            .map(str::to_string)
            .collect()
    };
    let check_bounded = |lines: &[String]| {
        assert!(
            lines.len() <= MAX_LINES,
            "{FAILING} failing requests wrote {} log lines (at most {MAX_LINES}); the first 12:\n{}",
            lines.len(),
            lines[..12.min(lines.len())].join("\n")
        );
        let continuation: Vec<&String> = lines.iter().filter(|l| !is_record(l)).collect();
        assert!(
            continuation.is_empty(),
            "multi-line log records at the default level: {continuation:?}"
        );
    };
    check_bounded(&new_lines(&d));
    // A periodic summary, or one flushed at shutdown.
    let mut summary = false;
    for _ in 0..150 {
        if new_lines(&d).iter().any(|l| is_summary(l)) {
            summary = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.signal(libc::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(30)).await;
    assert!(st.is_some_and(|s| s.success()), "clean exit: {st:?}");
    let lines = new_lines(&d);
    check_bounded(&lines);
    assert!(
        summary || lines.iter().any(|l| is_summary(l)),
        "no summary line counting the suppressed repeats:\n{}",
        lines.join("\n")
    );
}
