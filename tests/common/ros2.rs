//! A stand-in ROS 2 node for tests against a running daemon:
//! tests/py/ros2_peer.py in `session` mode, driven by JSON lines. Messages
//! are serialised and parsed by `rosbags` and attachments written by
//! eclipse-zenoh, so nothing it checks goes through reflexd's own codec.
//! Loopback only: the peer is a zenoh client of the daemon's listener.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct RosPeer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
    /// Lines read but not yet asked for.
    pending: Vec<Value>,
}

impl RosPeer {
    /// Starts the peer as a client of `tcp/127.0.0.1:<port>`.
    pub fn start(port: u16) -> RosPeer {
        let mut child = Command::new(super::venv_python())
            .arg(super::repo().join("tests/py/ros2_peer.py"))
            .args(["--connect", &format!("tcp/127.0.0.1:{port}"), "session"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run tests/py/ros2_peer.py (make setup provisions rosbags)");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        RosPeer {
            child,
            stdin,
            lines,
            pending: Vec::new(),
        }
    }

    pub fn send(&mut self, cmd: Value) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The first line (pending or new) for which `want` holds; lines that
    /// do not match stay pending. Panics on an `error` event.
    pub fn next_where(
        &mut self,
        timeout: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(i) = self.pending.iter().position(&want) {
            return Some(self.pending.remove(i));
        }
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let v = self.lines.recv_timeout(left).ok()?;
            assert_ne!(v["event"], "error", "peer failed: {v}");
            if want(&v) {
                return Some(v);
            }
            self.pending.push(v);
        }
        None
    }

    /// The next `event` line.
    pub fn next(&mut self, event: &str, timeout: Duration) -> Option<Value> {
        self.next_where(timeout, |v| v["event"] == event)
    }

    /// The next sample received on `topic`.
    pub fn sample(&mut self, topic: &str, timeout: Duration) -> Option<Value> {
        self.next_where(timeout, |v| v["event"] == "sample" && v["topic"] == topic)
    }

    /// Subscribes to `topic` (rmw_zenoh key, or `key` for a bridge topic).
    pub fn subscribe(&mut self, topic: &str, ty: &str, key: Option<&str>) {
        let mut cmd = serde_json::json!({"op": "subscribe", "topic": topic, "type": ty});
        if let Some(k) = key {
            cmd["key"] = k.into();
        }
        self.send(cmd);
        self.next("subscribed", Duration::from_secs(20))
            .expect("peer subscribes");
    }

    /// Publishes one message once a subscriber matches; the `published` line.
    pub fn publish(&mut self, cmd: Value) -> Value {
        let mut cmd = cmd;
        cmd["op"] = "publish".into();
        self.send(cmd);
        let p = self
            .next("published", Duration::from_secs(20))
            .expect("peer publishes");
        assert_eq!(p["matched"], true, "a subscriber matched: {p}");
        p
    }

    /// Every rmw_zenoh liveliness token of domain 0 right now.
    pub fn graph(&mut self) -> Vec<String> {
        self.send(serde_json::json!({"op": "graph"}));
        let mut keys = Vec::new();
        loop {
            let v = self
                .next_where(Duration::from_secs(20), |v| {
                    v["event"] == "token" || v["event"] == "graph_done"
                })
                .expect("graph query ends");
            if v["event"] == "graph_done" {
                return keys;
            }
            keys.push(v["key"].as_str().unwrap().to_string());
        }
    }

    pub fn quit(mut self) {
        self.send(serde_json::json!({"op": "quit"}));
        let status = self.child.wait().unwrap();
        assert!(status.success(), "ros2_peer.py exited with {status}");
    }
}

impl Drop for RosPeer {
    fn drop(&mut self) {
        // A failed test must not leave the peer running (our own child).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
