//! A reader that stops reading, and the scenario built on it (issue #11,
//! defect 3): a separate process (tests/py/stalled_reader.py, eclipse-zenoh)
//! subscribes to everything under `t/`, is stopped with SIGSTOP, and then
//! the daemon's link to it is congested on purpose:
//!
//! 1. large camera predictions (1 MiB each, `CongestionControl::Drop`) fill
//!    the loopback TCP buffers towards the stopped reader, so zenoh's
//!    transmission task for that link can no longer write;
//! 2. a flood of requests answered with an error (published at `DataHigh`,
//!    the generation's priority) fills that link's two `DataHigh` batches;
//! 3. a generation starts: its token messages are `DataHigh` too, so a
//!    `CongestionControl::Block` put waits for a free batch — for zenoh's
//!    `block.wait_before_close` (5 s by default) — on whatever thread puts.
//!
//! Meanwhile the test client sends a small camera frame every 100 ms to a
//! pipeline that shares the generation's single worker, with a 2 s budget:
//! a worker that serves frames between decode steps answers every one; a
//! worker blocked 5 s in a put lets the frames of the first ~3 s expire.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reflexd::Daemon;
use reflexd::tensor::f32_tensor;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::*;

/// Budget of the camera pipeline: far above one decode step, far below the
/// 5 s a blocked put lasts.
pub const CAMERA_DEADLINE_MS: u64 = 2000;
/// 1 MiB predictions sent while the reader is stopped: well over the
/// loopback socket buffers (4 MiB send + the reader's receive window).
const FILL_FRAMES: usize = 24;
/// Error messages (~250 B each) sent while the link is congested: two
/// 64 KiB batches take ~520.
const FLOOD: usize = 1200;

/// The eclipse-zenoh subscriber process; killed by its pid on drop.
pub struct StalledReader {
    child: Child,
    lines: UnboundedReceiver<String>,
}

impl StalledReader {
    /// Starts the reader on `key` and waits until it has declared it.
    pub async fn spawn(port: u16, key: &str) -> StalledReader {
        let mut child = Command::new(venv_python())
            .arg(repo().join("tests/py/stalled_reader.py"))
            .args(["--connect", &format!("tcp/127.0.0.1:{port}"), "--key", key])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run tests/py/stalled_reader.py");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut r = StalledReader { child, lines };
        r.expect_line("ready").await;
        r
    }

    async fn expect_line(&mut self, want: &str) {
        let got = tokio::time::timeout(WAIT, self.lines.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled reader: no `{want}` line"));
        assert_eq!(got.as_deref(), Some(want), "stalled reader output");
    }

    /// Waits for the reader's first sample.
    pub async fn got_one(&mut self) {
        self.expect_line("got").await;
    }

    /// SIGSTOP: the process stays connected but never reads again.
    pub fn stop(&self) {
        // SAFETY: a signal to our own child, by its pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
        assert_eq!(rc, 0, "SIGSTOP the stalled reader");
    }
}

impl Drop for StalledReader {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One worker serves a camera pipeline (higher level) and the chat
/// generation pipeline, as worker 1 of config/demo.toml does.
pub fn config() -> String {
    format!(
        r#"
        [[level]]
        name = "sensor"
        [[level]]
        name = "chat"
        [[worker]]
        levels = ["sensor", "chat"]
        [[pipeline]]
        name = "cam"
        model = "{}"
        input = "t/cam/*"
        output = "t/cam_out"
        level = "sensor"
        queue_capacity = 512
        deadline_ms = {CAMERA_DEADLINE_MS}
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "t/llm/cmd"
        output = "t/llm/out"
        level = "chat"
        max_tokens = 256
        deadline_ms = 600000
        "#,
        test_model("affine.onnx"),
        llm_dir()
    )
}

/// What the test client saw.
pub struct StallRun {
    /// Camera frames sent while the generation ran.
    pub camera_sent: usize,
    /// Their outcomes as the daemon counted them: predictions, and errors
    /// by code. Counted by the daemon rather than received by the test
    /// client, because replies travel with `CongestionControl::Drop` and a
    /// loaded test client may legitimately lose some (docs/errors.md).
    pub camera_ok: u64,
    pub camera_errors: std::collections::BTreeMap<String, u64>,
    /// Token messages of the generation, in arrival order.
    pub tokens: Vec<Value>,
    /// Its final message.
    pub fin: Value,
    /// Messages about it on the pipeline's error key.
    pub errors: Vec<Value>,
}

const GEN_ID: &str = "stalled";

/// Runs the scenario against a daemon started with [`config`].
pub async fn run(daemon: &Daemon, port: u16, max_tokens: u32) -> StallRun {
    let c = client(port).await;
    // Unbounded on the client side: a bounded handler that fills up blocks
    // the client session's receive task and makes the test client a stalled
    // reader too (the 1 200 error messages of the flood would do it).
    let only_frames = |key: &str, bytes: &[u8]| {
        let id = if key.ends_with("/error") {
            serde_json::from_slice::<Value>(bytes)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string))
        } else {
            reflexd::wire::decode_output(bytes)
                .ok()
                .and_then(|(_, m)| m.get("id").cloned())
        };
        id.is_some_and(|id| id.starts_with("cam-"))
    };
    let (_cam_entity, cam) = inbox(&c, "t/cam_out/**", only_frames).await;
    let (_gen_entity, mut gen_sub) = inbox(&c, "t/llm/out/**", |_, _| true).await;
    llm_ready(&c).await;
    wired(daemon, &c, "t/cam/a", "t/cam_out/a").await;
    wired(daemon, &c, "t/llm/cmd", &format!("t/llm/out/{GEN_ID}")).await;

    let mut reader = StalledReader::spawn(port, "t/**").await;
    // Only the reader subscribes to this key: once the daemon matches it,
    // the reader's `t/**` is known there.
    matched(daemon.zenoh_session(), "t/reader-only").await;
    put(
        &c,
        "t/cam/a",
        request(&[f32_tensor("x", &[1, 4], &[0.0; 4])], "r", 0),
    )
    .await;
    reader.got_one().await;
    reader.stop();
    congest(daemon, &c).await;
    while gen_sub.try_recv().is_ok() {}

    let before = daemon.stats()[0].clone();
    let cmd = json!({"id": GEN_ID, "prompt": "Tell me a long story about a robot.", "max_tokens": max_tokens});
    put(&c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
    let (tokens, fin, errors, sent) = follow(&c, &mut gen_sub).await;
    let want = before.received + sent.len() as u64;
    until_counted(daemon, |st| st.received >= want && st.finished() >= want).await;
    let after = daemon.stats()[0].clone();
    let camera_errors = after
        .errors
        .iter()
        .map(|(k, v)| (k.clone(), v - before.errors.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    drop(cam);
    drop(reader);
    c.close().await.unwrap();
    StallRun {
        camera_sent: sent.len(),
        camera_ok: after.ok - before.ok,
        camera_errors,
        tokens,
        fin,
        errors,
    }
}

/// Steps 1 and 2 of the module doc, each counted by the daemon itself.
async fn congest(daemon: &Daemon, c: &zenoh::Session) {
    let big = vec![0.25f32; 65536 * 4];
    let before = daemon.stats()[0].finished();
    for i in 0..FILL_FRAMES {
        let m = request(
            &[f32_tensor("x", &[65536, 4], &big)],
            &format!("fill-{i}"),
            0,
        );
        put(c, "t/cam/fill", m).await;
    }
    until_counted(daemon, |st| st.finished() >= before + FILL_FRAMES as u64).await;
    let stream = "s".repeat(100);
    let before = daemon.stats()[0].error(reflexd::error::ErrorCode::EmptyPayload);
    for _ in 0..FLOOD {
        put(c, &format!("t/cam/{stream}"), Vec::new()).await;
    }
    let code = reflexd::error::ErrorCode::EmptyPayload;
    until_counted(daemon, |st| st.error(code) >= before + FLOOD as u64).await;
}

/// Waits (up to 3 min: a debug build on a loaded 2-core machine can be far
/// behind) until the camera pipeline's counters satisfy `done`.
async fn until_counted(daemon: &Daemon, done: impl Fn(&reflexd::obs::PipelineSnapshot) -> bool) {
    for _ in 0..18000 {
        if done(&daemon.stats()[0]) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the camera pipeline never counted the burst: {:?}",
        daemon.stats()[0]
    );
}

type Followed = (Vec<Value>, Value, Vec<Value>, Vec<String>);

/// Sends a camera frame every 100 ms while collecting the generation's
/// messages, until its final message (plus 5 frames after it).
async fn follow(c: &zenoh::Session, gen_sub: &mut Inbox) -> Followed {
    let (mut tokens, mut errors, mut sent) = (Vec::new(), Vec::new(), Vec::new());
    let mut fin = None;
    let mut after = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let end = tokio::time::Instant::now() + Duration::from_secs(180);
    while after < 5 {
        assert!(
            tokio::time::Instant::now() < end,
            "the generation never ended: {} tokens so far",
            tokens.len()
        );
        tokio::select! {
            _ = tick.tick() => {
                let id = format!("cam-{}", sent.len());
                let m = request(&[f32_tensor("x", &[1, 4], &[1.0; 4])], &id, sent.len() as u64);
                put(c, "t/cam/a", m).await;
                sent.push(id);
                after += usize::from(fin.is_some());
            }
            m = gen_sub.recv() => {
                let (key, bytes) = m.unwrap();
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                if v["id"] != GEN_ID {
                    continue;
                }
                if key.ends_with("/error") {
                    errors.push(v);
                } else if v["done"] == true {
                    fin = Some(v);
                } else {
                    tokens.push(v);
                }
            }
        }
    }
    (tokens, fin.unwrap(), errors, sent)
}

/// Samples (key, payload) of one subscriber, kept without bound.
type Inbox = UnboundedReceiver<(String, Vec<u8>)>;

/// A callback subscriber feeding an unbounded channel with the samples
/// `keep` accepts (the rest are dropped in the callback).
async fn inbox(
    c: &zenoh::Session,
    key: &str,
    keep: impl Fn(&str, &[u8]) -> bool + Send + Sync + 'static,
) -> (zenoh::pubsub::Subscriber<()>, Inbox) {
    let (tx, rx) = unbounded_channel();
    let sub = c
        .declare_subscriber(key.to_string())
        .callback(move |s| {
            let key = s.key_expr().as_str().to_string();
            let bytes = s.payload().to_bytes().into_owned();
            if keep(&key, &bytes) {
                let _ = tx.send((key, bytes));
            }
        })
        .await
        .unwrap();
    (sub, rx)
}
