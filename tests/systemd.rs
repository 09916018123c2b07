//! The real `reflexd run` binary under a fake systemd: the test owns the
//! `NOTIFY_SOCKET` (a unix datagram socket) and sets `WATCHDOG_USEC`, then
//! checks the message sequence: loading progress with EXTEND_TIMEOUT_USEC
//! before READY=1, READY only once every session is warm, WATCHDOG=1 while
//! workers progress, no pings while a worker is stuck in one long model run,
//! live counts in STATUS=, SIGHUP validating instead of reloading, and SIGTERM → STOPPING=1 → a cancelled final
//! message for an in-flight generation → exit 0.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use reflexd::tensor::f32_tensor;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// Watchdog interval the fake systemd asks for: pings every 100 ms.
const WATCHDOG_USEC: u64 = 200_000;
const NOTIFY_WAIT: Duration = Duration::from_secs(120);

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reflexd-sd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The fake systemd's notify socket: every datagram, as text, in order.
fn notify_socket(dir: &Path) -> (PathBuf, UnboundedReceiver<String>) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let (tx, rx) = unbounded_channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    (path, rx)
}

/// The daemon child process; killed (by its pid) if a test fails early.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(dir: &Path, config: &str, notify: &Path) -> Daemon {
        let cfg = dir.join("reflexd.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_reflexd"))
            .args(["run", "-c"])
            .arg(&cfg)
            .env("NOTIFY_SOCKET", notify)
            .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
            .env("REFLEXD_LOG", "info,zenoh=warn,ort=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn reflexd");
        Daemon { child, log }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: sends a signal to our own child, by its pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the exit and returns its code.
    async fn exit_code(&mut self) -> Option<i32> {
        for _ in 0..600 {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("daemon did not exit; stderr:\n{}", self.stderr());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads datagrams until one satisfies `pred`; returns those before it and
/// the match.
async fn until(
    rx: &mut UnboundedReceiver<String>,
    d: &Daemon,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> (Vec<String>, String) {
    let mut before = Vec::new();
    loop {
        match tokio::time::timeout(NOTIFY_WAIT, rx.recv()).await {
            Ok(Some(m)) if pred(&m) => return (before, m),
            Ok(Some(m)) => before.push(m),
            _ => panic!(
                "no {what} on the notify socket; got {before:#?}\nstderr:\n{}",
                d.stderr()
            ),
        }
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn status(msg: &str) -> Option<&str> {
    msg.lines().find_map(|l| l.strip_prefix("STATUS="))
}

fn zenoh_header(port: u16) -> String {
    format!("[zenoh]\nlisten = [\"tcp/127.0.0.1:{port}\"]\nscouting = false\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_warm_up_and_watchdog_pings_stop_while_a_worker_is_stuck() {
    let dir = tmpdir("watchdog");
    let (notify, mut rx) = notify_socket(&dir);
    let port = free_port();
    let config = format!(
        r#"{}
        [service]
        max_run_ms = 300
        status_interval_ms = 200
        drain_timeout_ms = 10000
        [[level]]
        name = "hi"
        [[level]]
        name = "lo"
        [[worker]]
        levels = ["hi"]
        [[worker]]
        levels = ["lo"]
        [[pipeline]]
        name = "affine"
        model = "{}"
        input = "t/affine/*"
        output = "t/out/affine"
        level = "hi"
        [[pipeline]]
        name = "stall"
        model = "{}"
        input = "t/stall/*"
        output = "t/out/stall"
        level = "lo"
        deadline_ms = 600000
        "#,
        zenoh_header(port),
        test_model("affine.onnx"),
        test_model("stall.onnx"),
    );
    let mut d = Daemon::spawn(&dir, &config, &notify);

    // Start-up: one STATUS + EXTEND_TIMEOUT_USEC per session load, in order,
    // all before READY=1; no watchdog ping before READY.
    let (loading, ready) = until(&mut rx, &d, "READY=1", |m| has_line(m, "READY=1")).await;
    let loads: Vec<&str> = loading.iter().filter_map(|m| status(m)).collect();
    assert_eq!(
        loads.len(),
        2,
        "one loading status per session: {loading:#?}"
    );
    assert!(loads[0].starts_with("loading 1/2: pipeline affine for worker 0"));
    assert!(loads[1].starts_with("loading 2/2: pipeline stall for worker 1"));
    for m in &loading {
        assert!(
            m.lines().any(|l| l == "EXTEND_TIMEOUT_USEC=1200000000"),
            "each loading message extends the start timeout by model_load_timeout_s: {m}"
        );
        assert!(!has_line(m, "WATCHDOG=1"), "no ping before READY: {m}");
    }
    assert!(
        status(&ready).is_some_and(|s| s.starts_with("serving: 0 frames")),
        "READY carries the first status line: {ready}"
    );

    // Serving: pings keep arriving while requests are answered.
    let c = client(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    let x = f32_tensor("x", &[1, 4], &[1.0, 2.0, 3.0, 4.0]);
    until_served(
        &c,
        "t/affine/cam",
        &request(std::slice::from_ref(&x), "probe", 0),
        &sub,
    )
    .await;
    for i in 0..3 {
        put(
            &c,
            "t/affine/cam",
            request(std::slice::from_ref(&x), &format!("a{i}"), i),
        )
        .await;
        assert!(matches!(recv(&sub).await, Reply::Prediction { .. }));
        until(&mut rx, &d, "WATCHDOG=1 while serving", |m| {
            has_line(m, "WATCHDOG=1")
        })
        .await;
    }
    let (_, served) = until(&mut rx, &d, "a status line with frames served", |m| {
        status(m).is_some_and(|s| s.starts_with("serving:") && !s.starts_with("serving: 0 frames"))
    })
    .await;
    assert!(status(&served).unwrap().contains("0 deadline misses"));

    // A run of ~0.5 M loop iterations (seconds on this machine) on worker 1,
    // far beyond max_run_ms = 300: the daemon reports it stuck and withholds
    // pings, although worker 0 still answers.
    let n = f32_tensor("n", &[1], &[500_000.0]);
    put(&c, "t/stall/cam", request(&[n], "stall", 1)).await;
    let (_, stuck) = until(&mut rx, &d, "STUCK status", |m| {
        status(m).is_some_and(|s| s.starts_with("STUCK: worker 1"))
    })
    .await;
    assert!(!has_line(&stuck, "WATCHDOG=1"), "{stuck}");
    put(
        &c,
        "t/affine/cam",
        request(std::slice::from_ref(&x), "during", 9),
    )
    .await;
    let during = recv(&sub).await;
    assert_eq!(
        during.id().as_deref(),
        Some("during"),
        "the other worker still serves while worker 1 is stuck"
    );
    // Nothing but status lines until the run ends; then a recovery status,
    // then pings again.
    let (while_stuck, recovered) = until(&mut rx, &d, "recovery status", |m| {
        status(m).is_some_and(|s| s.starts_with("serving:"))
    })
    .await;
    for m in &while_stuck {
        assert!(
            !has_line(m, "WATCHDOG=1"),
            "no ping while stuck: {while_stuck:#?}"
        );
    }
    let stall_reply = recv(&sub).await;
    assert_eq!(stall_reply.id().as_deref(), Some("stall"));
    assert!(
        stall_reply
            .meta("inference_us")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 300_000
    );
    assert!(!has_line(&recovered, "WATCHDOG=1"));
    until(&mut rx, &d, "WATCHDOG=1 after recovery", |m| {
        has_line(m, "WATCHDOG=1")
    })
    .await;

    // SIGHUP does not reload and does not kill: it validates the file and
    // logs the verdict; the daemon keeps serving and pinging.
    std::fs::write(dir.join("reflexd.toml"), format!("bogus_key = 1\n{config}")).unwrap();
    d.signal(libc::SIGHUP);
    let mut logged = false;
    for _ in 0..200 {
        if d.stderr()
            .contains("SIGHUP: reload is not supported, and the config file is invalid")
        {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged, "stderr:\n{}", d.stderr());
    assert!(d.stderr().contains("bogus_key"), "the error names the key");
    until(&mut rx, &d, "WATCHDOG=1 after SIGHUP", |m| {
        has_line(m, "WATCHDOG=1")
    })
    .await;
    put(
        &c,
        "t/affine/cam",
        request(std::slice::from_ref(&x), "after-hup", 10),
    )
    .await;
    assert_eq!(recv(&sub).await.id().as_deref(), Some("after-hup"));

    // SIGTERM: STOPPING=1 (with a stop-timeout extension covering the drain,
    // one last model run and a margin: 10 s + 0.3 s + 5 s), then exit 0.
    d.signal(libc::SIGTERM);
    let (_, stopping) = until(&mut rx, &d, "STOPPING=1", |m| has_line(m, "STOPPING=1")).await;
    assert!(
        has_line(&stopping, "EXTEND_TIMEOUT_USEC=15300000"),
        "{stopping}"
    );
    assert_eq!(d.exit_code().await, Some(0), "stderr:\n{}", d.stderr());
    assert!(d.stderr().contains("reflexd stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_an_in_flight_generation_then_exits_zero() {
    let dir = tmpdir("drain");
    let (notify, mut rx) = notify_socket(&dir);
    let port = free_port();
    let config = format!(
        r#"{}
        [service]
        status_interval_ms = 100
        drain_timeout_ms = 20000
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "t/llm/cmd"
        output = "t/llm/out"
        max_tokens = 256
        deadline_ms = 600000
        # Probes still running on a loaded machine must not take the story's slot.
        max_generations = 64
        "#,
        zenoh_header(port),
        llm_dir_int8()
    );
    let mut d = Daemon::spawn(&dir, &config, &notify);
    until(&mut rx, &d, "READY=1", |m| has_line(m, "READY=1")).await;
    let c = client(port).await;
    let sub = c.declare_subscriber("t/llm/out/**").await.unwrap();
    // Subscription propagation: probe until a command is answered.
    let mut answered = false;
    for i in 0..50 {
        let cmd = json!({"id": format!("probe{i}"), "prompt": "Hi", "max_tokens": 1});
        put(&c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
        if tokio::time::timeout(Duration::from_millis(500), sub.recv_async())
            .await
            .is_ok()
        {
            answered = true;
            break;
        }
    }
    assert!(answered, "daemon never answered; stderr:\n{}", d.stderr());
    tokio::time::sleep(Duration::from_millis(300)).await;
    while sub.try_recv().ok().flatten().is_some() {}

    let cmd = json!({"id": "story", "prompt": "Tell me a very long story about a robot who learns to paint.", "max_tokens": 256});
    put(&c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
    // Only the story's messages: probes still running may answer meanwhile.
    let next = |what: &'static str| {
        let sub = &sub;
        async move {
            loop {
                let s = tokio::time::timeout(Duration::from_secs(120), sub.recv_async())
                    .await
                    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                    .unwrap();
                let v = serde_json::from_slice::<Value>(&s.payload().to_bytes()).unwrap();
                if v["id"] == "story" {
                    return v;
                }
            }
        }
    };
    let mut tokens = 0;
    while tokens < 3 {
        let m = next("tokens").await;
        assert_eq!(m["id"], "story");
        assert_ne!(m["done"], true, "the answer ended early: {m}");
        tokens += 1;
    }
    // Live counts: a STATUS line reports the streamed tokens.
    until(&mut rx, &d, "a status line counting tokens", |m| {
        status(m).is_some_and(|s| s.starts_with("serving:") && !s.contains(" 0 tokens"))
    })
    .await;

    d.signal(libc::SIGTERM);
    let fin = loop {
        let m = next("the final message").await;
        if m["done"] == true {
            break m;
        }
        tokens += 1;
    };
    assert_eq!(fin["id"], "story");
    assert_eq!(fin["finish_reason"], "cancelled", "{fin}");
    assert_eq!(fin["usage"]["completion_tokens"], tokens);
    assert!(tokens < 256, "cancelled before max_tokens");
    until(&mut rx, &d, "STOPPING=1", |m| has_line(m, "STOPPING=1")).await;
    assert_eq!(d.exit_code().await, Some(0), "stderr:\n{}", d.stderr());
}

#[test]
fn worker_pinned_to_a_missing_cpu_fails_start_with_a_clear_message() {
    let dir = tmpdir("affinity");
    let cfg = dir.join("reflexd.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[[worker]]\nlevels = [\"default\"]\ncpus = [1000]\n[[pipeline]]\nname = \"p\"\nmodel = \"{}\"\ninput = \"a/*\"\noutput = \"b\"\n",
            zenoh_header(free_port()),
            test_model("affine.onnx")
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_reflexd"))
        .args(["run", "-c"])
        .arg(&cfg)
        .env("REFLEXD_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("worker 0: cannot pin to CPUs [1000]") && !err.contains("panicked"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlockall_without_the_privilege_fails_start_and_tells_systemd_why() {
    // Root keeps CAP_IPC_LOCK unless it is dropped from the bounding set
    // (util-linux setpriv); prlimit sets the memlock limit to zero.
    let dir = tmpdir("mlock");
    let (notify, mut rx) = notify_socket(&dir);
    let cfg = dir.join("reflexd.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[runtime]\nmlockall = true\n[[pipeline]]\nname = \"p\"\nmodel = \"{}\"\ninput = \"a/*\"\noutput = \"b\"\n",
            zenoh_header(free_port()),
            test_model("affine.onnx")
        ),
    )
    .unwrap();
    let o = Command::new("prlimit")
        .args(["--memlock=0:0", "setpriv", "--bounding-set", "-ipc_lock"])
        .args(["--inh-caps", "-ipc_lock"])
        .arg(env!("CARGO_BIN_EXE_reflexd"))
        .args(["run", "-c"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify)
        .env("REFLEXD_LOG", "warn")
        .output()
        .expect("prlimit and setpriv (util-linux)");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("runtime.mlockall = true: mlockall failed")
            && err.contains("LimitMEMLOCK=infinity")
            && !err.contains("panicked"),
        "{err}"
    );
    let mut msgs = Vec::new();
    loop {
        let m = tokio::time::timeout(NOTIFY_WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no start-failed status; got {msgs:#?}"))
            .unwrap();
        let failed = status(&m).is_some_and(|s| s.starts_with("start failed"));
        msgs.push(m);
        if failed {
            break;
        }
    }
    assert!(!msgs.iter().any(|m| has_line(m, "READY=1")), "{msgs:#?}");
    let last = msgs.last().expect("start-up messages");
    assert!(
        status(last).is_some_and(|s| s.starts_with("start failed: runtime.mlockall")),
        "{msgs:#?}"
    );
}

#[test]
fn journal_stream_gets_syslog_priority_prefixes_and_no_colours() {
    // systemd sets JOURNAL_STREAM=<dev>:<inode> of the stream it connects to
    // stderr; here stderr is a file whose device and inode the test passes.
    use std::os::unix::fs::MetadataExt;
    let dir = tmpdir("journal");
    let cfg = dir.join("reflexd.toml");
    let good = format!(
        "{}[[pipeline]]\nname = \"p\"\nmodel = \"{}\"\ninput = \"a/*\"\noutput = \"b\"\n",
        zenoh_header(free_port()),
        test_model("affine.onnx")
    );
    let run = |config: &str, journal: bool| -> String {
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join("stderr.log");
        let f = std::fs::File::create(&log).unwrap();
        let m = f.metadata().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_reflexd"));
        cmd.args(["check", "-c"])
            .arg(&cfg)
            .env("REFLEXD_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(f);
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
        }
        cmd.status().unwrap();
        std::fs::read_to_string(&log).unwrap()
    };
    let plain = run(&good, false);
    assert!(!plain.contains('\x1b'), "no ANSI colours when not a TTY");
    assert!(!plain.starts_with('<'), "{plain}");
    let journal = run(&good, true);
    assert!(!journal.contains('\x1b'));
    for line in journal.lines().filter(|l| !l.is_empty()) {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "every journal line starts with a priority: {line:?}"
        );
    }
    assert!(
        journal
            .lines()
            .any(|l| l.starts_with("<6>") && l.contains("execution provider")),
        "{journal}"
    );
    let bad = good.replace("affine.onnx", "missing.onnx");
    let failed = run(&bad, true);
    assert!(
        failed
            .lines()
            .any(|l| l.starts_with("<3>error: ") && l.contains("missing.onnx")),
        "{failed}"
    );
}
