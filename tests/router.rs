//! Client mode through a real `zenohd` router (built by
//! `scripts/provision.sh`, 1.10.2): the router is killed (SIGKILL) and
//! restarted mid-stream. The daemon's session reconnects by itself and its
//! subscription is re-declared, so the stream resumes. The test counts: every
//! frame before the outage is answered, frames sent while the router is down
//! are lost (counted and reported, not asserted to any value), and once one
//! probe is answered again nothing after it is lost.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use reflexd::tensor::f32_tensor;
use reflexd::{Config, Daemon};

fn zenohd() -> PathBuf {
    let p = std::env::var_os("REFLEXD_ZENOHD")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/reflexd/v1/zenohd/bin/zenohd"))
        })
        .expect("HOME or REFLEXD_ZENOHD");
    assert!(
        p.exists(),
        "{} missing: run `make setup` (scripts/provision.sh builds zenohd)",
        p.display()
    );
    p
}

struct Router {
    child: Child,
}

impl Router {
    fn start(port: u16) -> Router {
        let child = Command::new(zenohd())
            .args([
                "-l",
                &format!("tcp/127.0.0.1:{port}"),
                "--no-multicast-scouting",
            ])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn zenohd");
        // Owned at once, so Drop kills it even if it never gets ready.
        let router = Router { child };
        // Ready when the port accepts connections.
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return router;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("zenohd did not listen on {port}");
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn client_of(port: u16) -> zenoh::Session {
    let json = format!(
        r#"{{ mode: "client", connect: {{ endpoints: ["tcp/127.0.0.1:{port}"] }},
             scouting: {{ multicast: {{ enabled: false }}, gossip: {{ enabled: false }} }} }}"#
    );
    zenoh::open(zenoh::Config::from_json5(&json).unwrap())
        .await
        .unwrap()
}

fn frame(id: &str) -> Vec<u8> {
    request(&[f32_tensor("x", &[1, 4], &[1.0; 4])], id, 0)
}

/// Sends `n` frames `<tag>-<i>`, 2 ms apart (a sensor rate, so the outage
/// window holds many frames).
async fn send(c: &zenoh::Session, tag: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{tag}-{i}");
        put(c, "t/cam/a", frame(&id)).await;
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    ids
}

/// Ids answered on `sub` until `quiet` passes without a reply.
async fn drain(sub: &Sub, quiet: Duration) -> HashSet<String> {
    let mut got = HashSet::new();
    while let Some(r) = try_recv(sub, quiet).await {
        assert!(r.code().is_none(), "only predictions expected: {r:?}");
        let id = r.id().unwrap();
        assert!(got.insert(id.clone()), "two outcomes for {id}");
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_killed_and_restarted_mid_stream_daemon_resumes() {
    let port = free_port();
    let router = Router::start(port);
    let affine = test_model("affine.onnx");
    let toml = format!(
        r#"
        [zenoh]
        mode = "client"
        connect = ["tcp/127.0.0.1:{port}"]
        [[pipeline]]
        name = "cam"
        model = "{affine}"
        input = "t/cam/*"
        output = "t/out/cam"
        queue_capacity = 256
        deadline_ms = 60000
        "#
    );
    let daemon = Daemon::start(Config::from_toml(&toml, &repo()).unwrap())
        .await
        .unwrap();
    let c = client_of(port).await;
    let sub = subscribe(&c, "t/out/**").await;
    until_served(&c, "t/cam/a", &frame("probe"), &sub).await;

    // Before: all answered.
    let before = send(&c, "before", 100).await;
    let got = drain(&sub, Duration::from_secs(2)).await;
    assert_eq!(got, before.iter().cloned().collect(), "before the outage");

    // Outage: SIGKILL the router, keep sending.
    router.kill();
    let during = send(&c, "during", 100).await;
    let router = Router::start(port);
    // Resumed when one probe is answered: both sessions reconnected and the
    // daemon's subscriber and the client's subscriber are declared again.
    let mut resumed_after = None;
    for i in 0..300 {
        put(&c, "t/cam/a", frame(&format!("reprobe-{i}"))).await;
        if let Some(r) = try_recv(&sub, Duration::from_millis(100)).await
            && r.id().is_some_and(|id| id.starts_with("reprobe-"))
        {
            resumed_after = Some(i + 1);
            break;
        }
    }
    let probes = resumed_after.expect("the stream never resumed after the router restart");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = drain(&sub, Duration::from_millis(300)).await;
    let lost_during = during.iter().filter(|id| !late.contains(*id)).count();

    // After: nothing lost.
    let after = send(&c, "after", 100).await;
    let got = drain(&sub, Duration::from_secs(2)).await;
    let lost_after: Vec<_> = after.iter().filter(|id| !got.contains(*id)).collect();
    println!(
        "\nrouter outage: before 100/100 answered; during {} sent, {lost_during} lost; \
         resumed after {probes} probe(s); after {} sent, {} lost",
        during.len(),
        after.len(),
        lost_after.len()
    );
    assert!(lost_after.is_empty(), "lost after recovery: {lost_after:?}");
    let st = &daemon.stats()[0];
    assert_eq!(st.finished(), st.received, "{st:?}");
    c.close().await.unwrap();
    daemon.shutdown(Duration::from_secs(5)).await;
    router.kill();
}
