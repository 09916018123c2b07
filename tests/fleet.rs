//! A fleet on one zenoh fabric (issue 17): a `zenohd` router on a loopback
//! port, one "server" daemon (a child process, so it can be SIGKILLed) with
//! `[fleet] serve = true`, and two "robot" daemons (in-process) whose
//! `detect` pipeline offloads `always` to it. Every daemon is a zenoh
//! client of the router; every address is 127.0.0.1.
//!
//! While the server is up, robot requests are answered by it (the
//! prediction names `node = "fleet/server"`). Then the server is killed
//! mid-load: every request still ends exactly once (a remote answer, a
//! local failover, or a documented error), none is lost, none is answered
//! twice, on the wire and in the robots' counters. How long the robots
//! took to notice and to fail over is printed, never asserted.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::proc::{Proc, Spawn, tmpdir};
use common::*;
use reflexd::tensor::f32_tensor;
use reflexd::{Config, Daemon};

const SERVER: &str = "fleet/server";

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

/// The `zenohd` child, killed by its pid on drop.
struct Router(Child);

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
        let router = Router(child);
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return router;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("zenohd did not listen on {port}");
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `[zenoh]`, `[metrics]` and `[fleet]` of a daemon that is a client of
/// the router on `port`.
fn header(port: u16, node: &str, serve: bool) -> String {
    format!(
        r#"
        [zenoh]
        mode = "client"
        connect = ["tcp/127.0.0.1:{port}"]
        [metrics]
        node = "{node}"
        [fleet]
        serve = {serve}
        lease_ms = 1000
        "#
    )
}

/// The `detect` pipeline (a ~4 ms model, so requests are in flight when
/// the server dies) of a node whose keys start with `prefix`.
fn detect(prefix: &str, offload: &str) -> String {
    let slow = test_model("slow.onnx");
    format!(
        r#"
        [[pipeline]]
        name = "detect"
        model = "{slow}"
        input = "{prefix}/detect/*"
        output = "{prefix}/out/detect"
        overflow = "reject"
        queue_capacity = 512
        deadline_ms = 60000
        {offload}
        "#
    )
}

async fn robot(port: u16, name: &str) -> Daemon {
    let offload = format!(r#"offload = {{ to = "{SERVER}", when = "always", timeout_ms = 5000 }}"#);
    let toml = header(port, &format!("fleet/{name}"), false) + &detect(name, &offload);
    let cfg = Config::from_toml(&toml, &repo()).unwrap_or_else(|e| panic!("robot config: {e}"));
    Daemon::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("robot start: {e}"))
}

async fn router_client(port: u16) -> zenoh::Session {
    let json = format!(
        r#"{{ mode: "client", connect: {{ endpoints: ["tcp/127.0.0.1:{port}"] }},
             scouting: {{ multicast: {{ enabled: false }}, gossip: {{ enabled: false }} }} }}"#
    );
    zenoh::open(zenoh::Config::from_json5(&json).unwrap())
        .await
        .unwrap()
}

/// The robot's view of its target: up (alive and serving `detect`).
fn target_up(d: &Daemon) -> bool {
    d.metrics()
        .fleet
        .and_then(|f| f.offloads.first().map(|o| o.target_up))
        .unwrap_or(false)
}

async fn until_target_up(d: &Daemon) {
    for _ in 0..1500 {
        if target_up(d) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the robot never saw {SERVER} up");
}

fn frame(id: &str, seq: u64) -> Vec<u8> {
    request(&[f32_tensor("x", &[1, 256], &[0.25; 256])], id, seq)
}

/// One request's outcome as a client saw it, and when.
struct Seen {
    reply: Reply,
    at: Instant,
}

/// Collects outcomes on `sub` until every id of `want` has one or no
/// message comes for `quiet`; ids outside `want` (probes) are skipped.
/// Returns the outcomes and the ids that got a second one.
async fn collect(
    sub: &Sub,
    want: &[String],
    quiet: Duration,
) -> (HashMap<String, Seen>, Vec<String>) {
    let mut got: HashMap<String, Seen> = HashMap::new();
    let mut twice = Vec::new();
    while got.len() < want.len() {
        let Some(reply) = try_recv(sub, quiet).await else {
            break;
        };
        let id = reply.id().unwrap_or_default();
        if !want.contains(&id) {
            continue;
        }
        let seen = Seen {
            reply,
            at: Instant::now(),
        };
        if got.insert(id.clone(), seen).is_some() {
            twice.push(id);
        }
    }
    // Anything else that comes is a second outcome.
    while let Some(reply) = try_recv(sub, Duration::from_millis(500)).await {
        let id = reply.id().unwrap_or_default();
        if want.contains(&id) {
            twice.push(id);
        }
    }
    (got, twice)
}

/// Notes, for each robot that has just seen its target go down, how long
/// after the kill (resolution: one pass of the sending loop).
fn note_down(robots: &[Daemon], noticed: &mut [Option<Duration>], killed: Instant) {
    for (r, n) in robots.iter().zip(noticed.iter_mut()) {
        if n.is_none() && !target_up(r) {
            *n = Some(killed.elapsed());
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn hist_ms(us: Option<u64>) -> String {
    us.map_or("-".into(), |u| format!("{:.1}", u as f64 / 1e3))
}

/// `reflexd top --fleet --once`, a client of the router, shows the three
/// daemons, the `detect` pipeline summed over them, and both robots'
/// offload rows.
async fn top_fleet_lists_every_node(port: u16) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reflexd"));
    cmd.args(["top", "--fleet", "--once", "--connect"])
        .arg(format!("tcp/127.0.0.1:{port}"))
        .env("REFLEXD_LOG", "warn,zenoh=error");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for node in [SERVER, "fleet/r1", "fleet/r2"] {
        let row = stdout.lines().find(|l| l.starts_with(node));
        assert!(row.is_some_and(|l| l.contains("yes")), "{node}:\n{stdout}");
    }
    let detect = stdout.lines().find(|l| l.starts_with("detect "));
    assert!(
        detect.is_some_and(|l| l.split_whitespace().nth(2) == Some("3")),
        "{stdout}"
    );
    let offloads = stdout
        .lines()
        .filter(|l| l.starts_with("fleet/r") && l.contains("detect") && l.contains(SERVER));
    assert_eq!(offloads.count(), 2, "{stdout}");
    println!("{stdout}");
}

/// Phase 1: the server is up; both robots offload every request, and every
/// request is answered once, without error, some by the server.
async fn served_while_up(c: &zenoh::Session, sub: &Sub) {
    let mut ids = Vec::new();
    for i in 0..40u64 {
        for name in ["r1", "r2"] {
            let id = format!("{name}-up-{i}");
            put(c, &format!("{name}/detect/cam"), frame(&id, i)).await;
            ids.push(id);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (up, twice) = collect(sub, &ids, Duration::from_secs(20)).await;
    assert!(twice.is_empty(), "answered twice while up: {twice:?}");
    let lost: Vec<_> = ids.iter().filter(|i| !up.contains_key(*i)).collect();
    assert!(lost.is_empty(), "no outcome while up: {lost:?}");
    for s in up.values() {
        let brief = s.reply.brief();
        assert!(s.reply.code().is_none(), "error while up: {brief}");
    }
    let remote = up.values().filter(|s| s.reply.meta("node") == Some(SERVER));
    assert!(remote.count() > 0, "no request was served by {SERVER}");
}

/// What phase 2 saw.
struct Killed {
    ids: Vec<String>,
    got: HashMap<String, Seen>,
    twice: Vec<String>,
    at: Instant,
    /// When each robot saw the server gone (its liveliness), after the kill.
    noticed: [Option<Duration>; 2],
    sent_before: Vec<String>,
}

/// Phase 2: a stream of requests to both robots; the server is SIGKILLed
/// half way; outcomes are collected until every request has one.
async fn kill_mid_load(c: &zenoh::Session, sub: Sub, server: &Proc, robots: &[Daemon]) -> Killed {
    let ids: Vec<String> = (0..300u64)
        .flat_map(|i| ["r1", "r2"].map(|n| format!("{n}-kill-{i}")))
        .collect();
    let want = ids.clone();
    let collector =
        tokio::spawn(async move { collect(&sub, &want, Duration::from_secs(30)).await });
    let (mut at, mut noticed, mut sent_before) = (None, [None; 2], Vec::new());
    for i in 0..300u64 {
        for name in ["r1", "r2"] {
            let id = format!("{name}-kill-{i}");
            put(c, &format!("{name}/detect/cam"), frame(&id, i)).await;
            if at.is_none() {
                sent_before.push(id);
            }
        }
        if i == 150 {
            server.signal(libc::SIGKILL);
            at = Some(Instant::now());
        }
        if let Some(k) = at {
            note_down(robots, &mut noticed, k);
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let at = at.unwrap();
    while noticed.iter().any(Option::is_none) && at.elapsed() < Duration::from_secs(30) {
        note_down(robots, &mut noticed, at);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (got, twice) = collector.await.unwrap();
    Killed {
        ids,
        got,
        twice,
        at,
        noticed,
        sent_before,
    }
}

/// Prints what the kill cost: outcomes by kind, when each robot noticed,
/// its offload counters, and when the requests in flight ended.
fn report(k: &Killed, robots: &[Daemon], lost: usize) {
    let by = |f: &dyn Fn(&Seen) -> bool| k.got.values().filter(|s| f(s)).count();
    let remote = by(&|s| s.reply.meta("node") == Some(SERVER));
    let errors = by(&|s| s.reply.code().is_some());
    let local = k.got.len() - remote - errors;
    println!("\nfleet: 1 router, 1 server (SIGKILLed after 151 x 2 requests), 2 robots");
    println!(
        "requests {}  remote {remote}  local {local}  errors {errors}  lost {lost}  duplicates {}",
        k.ids.len(),
        k.twice.len()
    );
    for (name, (r, n)) in ["r1", "r2"].iter().zip(robots.iter().zip(&k.noticed)) {
        let o = &r.metrics().fleet.expect("robots offload").offloads[0];
        println!(
            "{name}: saw server down after {} ms; offloaded {} remote_ok {} failover {:?} kept_local {} late_replies {}; failover wait p50 {} ms max {} ms",
            n.map_or("?".into(), |d| format!("{:.1}", ms(d))),
            o.offloaded,
            o.remote_ok,
            o.failover,
            o.kept_local,
            o.late_replies,
            hist_ms(o.failover_wait.quantile(0.5)),
            hist_ms(o.failover_wait.quantile(1.0)),
        );
    }
    // Requests that were at the server when it died: their outcome came
    // this long after the kill.
    let pending: Vec<Duration> = k
        .sent_before
        .iter()
        .filter_map(|id| k.got.get(id))
        .filter(|s| s.at > k.at && s.reply.meta("node") != Some(SERVER))
        .map(|s| s.at - k.at)
        .collect();
    let worst = pending.iter().max().copied().unwrap_or_default();
    println!(
        "requests in flight at the kill answered locally: {}, last {:.1} ms after the kill (lease 1000 ms)",
        pending.len(),
        ms(worst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_load_every_request_ends_once() {
    let port = free_port();
    let _router = Router::start(port);
    let dir = tmpdir("fleet");
    let server_cfg = header(port, SERVER, true) + &detect("server", "");
    let mut server = Proc::spawn(&dir, &server_cfg, Spawn::default());
    let robots = [robot(port, "r1").await, robot(port, "r2").await];
    for r in &robots {
        until_target_up(r).await;
    }
    let c = router_client(port).await;
    let sub = subscribe(&c, "*/out/**").await;
    for (i, name) in ["r1", "r2"].iter().enumerate() {
        let key = format!("{name}/detect/cam");
        until_served(&c, &key, &frame(&format!("probe-{i}"), 0), &sub).await;
    }
    served_while_up(&c, &sub).await;
    top_fleet_lists_every_node(port).await;

    let k = kill_mid_load(&c, sub, &server, &robots).await;
    assert!(server.wait_exit(Duration::from_secs(5)).await.is_some());
    // Every request ended exactly once, on the wire...
    let lost: Vec<_> = k.ids.iter().filter(|i| !k.got.contains_key(*i)).collect();
    report(&k, &robots, lost.len());
    assert!(k.twice.is_empty(), "answered twice: {:?}", k.twice);
    assert!(lost.is_empty(), "requests without an outcome: {lost:?}");
    for s in k.got.values() {
        if let Some(code) = s.reply.code() {
            // The documented endings of a failover with a local model.
            let brief = s.reply.brief();
            assert!(["deadline_exceeded", "busy"].contains(&code), "{brief}");
        }
    }
    // ...and in each robot's counters: everything received has ended.
    for r in &robots {
        let st = &r.stats()[0];
        assert_eq!(st.finished(), st.received, "robot counters: {st:?}");
        let o = &r.metrics().fleet.expect("robots offload").offloads[0];
        assert_eq!(o.inflight, 0, "requests still in flight: {o:?}");
    }
    for r in robots {
        r.shutdown(Duration::from_secs(5)).await;
    }
}

/// A daemon that listens on a loopback port and connects to `connect`,
/// with levels `rt` over `bg` (one worker serving both) and one `detect`
/// pipeline at `level`.
async fn peer_node(node: &str, connect: Option<u16>, level: &str, extra: &str) -> (Daemon, u16) {
    let port = free_port();
    let connect = connect.map_or(String::new(), |p| format!("\"tcp/127.0.0.1:{p}\""));
    let slow = test_model("slow.onnx");
    let toml = format!(
        r#"
        [zenoh]
        listen = ["tcp/127.0.0.1:{port}"]
        connect = [{connect}]
        [metrics]
        node = "{node}"
        [[level]]
        name = "rt"
        [[level]]
        name = "bg"
        [[worker]]
        levels = ["rt", "bg"]
        [[pipeline]]
        name = "detect"
        model = "{slow}"
        input = "{node}/detect/*"
        output = "{node}/out/detect"
        level = "{level}"
        overflow = "reject"
        queue_capacity = 256
        deadline_ms = 60000
        {extra}
        "#
    );
    let cfg = Config::from_toml(&toml, &repo()).unwrap_or_else(|e| panic!("{node}: {e}"));
    (Daemon::start(cfg).await.unwrap(), port)
}

/// The server runs an offloaded request at the level its requester asked
/// for: `rt` requests from one robot overtake a backlog of `bg` requests
/// from another robot in the server's queue, although the server's own
/// `detect` pipeline is at `bg`. Checked by order of arrival, not time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloaded_requests_run_at_the_requesters_level_on_the_server() {
    let (server, sport) = peer_node(SERVER, None, "bg", "[fleet]\nserve = true").await;
    let off = format!(
        "offload = {{ to = \"{SERVER}\", when = \"always\" }}\n[fleet]\nmax_inflight = 256"
    );
    let (bg, bg_port) = peer_node("fleet/bg", Some(sport), "bg", &off).await;
    let (rt, rt_port) = peer_node("fleet/rt", Some(sport), "rt", &off).await;
    for r in [&bg, &rt] {
        until_target_up(r).await;
    }
    let (cb, crt) = (client(bg_port).await, client(rt_port).await);
    let (sub_bg, sub_rt) = (
        subscribe(&cb, "fleet/bg/out/**").await,
        subscribe(&crt, "fleet/rt/out/**").await,
    );
    until_served(&cb, "fleet/bg/detect/a", &frame("probe-bg", 0), &sub_bg).await;
    until_served(&crt, "fleet/rt/detect/a", &frame("probe-rt", 0), &sub_rt).await;

    let bg_ids: Vec<String> = (0..120).map(|i| format!("bg-{i}")).collect();
    for (i, id) in bg_ids.iter().enumerate() {
        put(&cb, "fleet/bg/detect/a", frame(id, i as u64)).await;
    }
    let rt_ids: Vec<String> = (0..5).map(|i| format!("rt-{i}")).collect();
    for (i, id) in rt_ids.iter().enumerate() {
        put(&crt, "fleet/rt/detect/a", frame(id, i as u64)).await;
    }
    let ((got_bg, twice_bg), (got_rt, twice_rt)) = tokio::join!(
        collect(&sub_bg, &bg_ids, Duration::from_secs(30)),
        collect(&sub_rt, &rt_ids, Duration::from_secs(30)),
    );
    assert!(twice_bg.is_empty() && twice_rt.is_empty());
    assert_eq!((got_bg.len(), got_rt.len()), (bg_ids.len(), rt_ids.len()));
    for s in got_bg.values().chain(got_rt.values()) {
        assert_eq!(s.reply.meta("node"), Some(SERVER), "{}", s.reply.brief());
    }
    let last_rt = got_rt.values().map(|s| s.at).max().unwrap();
    let bg_after = got_bg.values().filter(|s| s.at > last_rt).count();
    let queue_ms = |got: &HashMap<String, Seen>| {
        let mut q: Vec<f64> = got
            .values()
            .filter_map(|s| s.reply.meta("queue_us")?.parse::<f64>().ok())
            .collect();
        q.sort_by(f64::total_cmp);
        q.get(q.len() / 2).copied().unwrap_or(f64::NAN) / 1e3
    };
    println!(
        "\npriority on the server: {bg_after} of {} bg requests answered after the last rt one; server queue p50: rt {:.1} ms, bg {:.1} ms",
        bg_ids.len(),
        queue_ms(&got_rt),
        queue_ms(&got_bg)
    );
    assert!(
        bg_after > 0,
        "the rt requests waited behind the whole bg backlog"
    );
    for d in [bg, rt, server] {
        d.shutdown(Duration::from_secs(5)).await;
    }
}
