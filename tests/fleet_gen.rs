//! Generation offload (issue 17) in the peer topology: a "server" daemon
//! (child process, `[fleet] serve = true`) listens on one loopback port; a
//! "robot" daemon (in-process) connects to it and offloads its `chat`
//! pipeline `always`. Both hold the real SmolLM2-135M. Tokens the server
//! generates stream back through the query's replies and on to the client
//! on the robot's own keys, as one stream. When the server is SIGKILLed
//! mid-answer, the robot's model continues after the text already
//! streamed: seq numbers go on with no gap or repeat, the streamed pieces
//! add up to the final text, and the final message names the node that
//! started the answer.

mod common;

use std::time::{Duration, Instant};

use common::proc::{Proc, Spawn, tmpdir};
use common::*;
use reflexd::{Config, Daemon};
use serde_json::{Value, json};

const SERVER: &str = "fleet/server";

fn chat(prefix: &str, offload: &str) -> String {
    format!(
        r#"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "{prefix}/llm/cmd"
        output = "{prefix}/llm/out"
        max_tokens = 256
        {offload}
        "#,
        llm_dir()
    )
}

fn peer(listen: u16, connect: Option<u16>, node: &str, serve: bool) -> String {
    let connect = connect.map_or(String::new(), |p| format!("\"tcp/127.0.0.1:{p}\""));
    format!(
        r#"
        [zenoh]
        mode = "peer"
        listen = ["tcp/127.0.0.1:{listen}"]
        connect = [{connect}]
        [metrics]
        node = "{node}"
        [fleet]
        serve = {serve}
        lease_ms = 1000
        "#
    )
}

fn offload_stats(d: &Daemon) -> reflexd::obs::fleet::OffloadSnapshot {
    d.metrics().fleet.expect("the robot offloads").offloads[0].clone()
}

/// Sends a command on the robot and collects its stream; `on_token` runs
/// after each token message.
async fn generate(
    c: &zenoh::Session,
    cmd: Value,
    mut on_token: impl FnMut(usize),
) -> (Vec<Value>, Value) {
    let id = cmd["id"].as_str().unwrap().to_string();
    let sub = c
        .declare_subscriber(format!("t/llm/out/{id}"))
        .await
        .unwrap();
    matched(c, "t/llm/cmd").await;
    put(c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
    let mut tokens = Vec::new();
    loop {
        let s = tokio::time::timeout(Duration::from_secs(180), sub.recv_async())
            .await
            .expect("generation stream timed out")
            .unwrap();
        let v: Value = serde_json::from_slice(&s.payload().to_bytes()).unwrap();
        if v["done"] == true {
            return (tokens, v);
        }
        tokens.push(v);
        on_token(tokens.len());
    }
}

fn check_stream(id: &str, tokens: &[Value], fin: &Value) {
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(t["seq"], i, "{id}: seq numbers are consecutive: {tokens:?}");
        assert_eq!(t["id"], id);
    }
    let streamed: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(streamed, fin["text"].as_str().unwrap(), "{id}: {fin}");
    assert_eq!(
        fin["usage"]["completion_tokens"],
        tokens.len(),
        "{id}: {fin}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_streams_from_the_server_and_continues_locally_when_it_dies() {
    let (sport, rport) = (free_port(), free_port());
    let dir = tmpdir("fleet-gen");
    let server_cfg = peer(sport, None, SERVER, true) + &chat("server", "");
    let mut server = Proc::spawn(&dir, &server_cfg, Spawn::default());
    let offload =
        format!(r#"offload = {{ to = "{SERVER}", when = "always", timeout_ms = 60000 }}"#);
    let robot_cfg = peer(rport, Some(sport), "fleet/robot", false) + &chat("t", &offload);
    // Listening comes before loading: then the robot's first connect works.
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", sport)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cfg = Config::from_toml(&robot_cfg, &repo()).unwrap();
    let robot = Daemon::start(cfg).await.unwrap();
    for _ in 0..3000 {
        if offload_stats(&robot).target_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        offload_stats(&robot).target_up,
        "the robot never saw {SERVER}"
    );
    let c = client(rport).await;

    // Served remotely, streamed through the robot as one answer.
    let q = "What is the capital of France?";
    let (tokens, fin) = generate(
        &c,
        json!({"id": "up", "prompt": q, "max_tokens": 32}),
        |_| {},
    )
    .await;
    check_stream("up", &tokens, &fin);
    assert_eq!(fin["node"], SERVER, "{fin}");
    assert!(fin["text"].as_str().unwrap().contains("Paris"), "{fin}");
    assert_eq!(offload_stats(&robot).remote_ok, 1);

    // The server dies after the fifth token: the robot's model goes on.
    let mut killed = None;
    let (tokens, fin) = generate(
        &c,
        json!({"id": "cut", "prompt": "Write a long story about a robot who learns to paint.",
               "max_tokens": 120, "temperature": 0.0}),
        |n| {
            if n == 5 && killed.is_none() {
                server.signal(libc::SIGKILL);
                killed = Some(Instant::now());
            }
        },
    )
    .await;
    let killed = killed.expect("the server streamed five tokens");
    check_stream("cut", &tokens, &fin);
    assert_eq!(fin["node"], SERVER, "the final names who started it: {fin}");
    assert!(fin.get("error").is_none(), "{fin}");
    let o = offload_stats(&robot);
    // The closed link ends the query (`no_answer`) or the token goes first
    // (`target_down`): whichever zenoh reports first, one failover.
    assert_eq!(o.failover.values().sum::<u64>(), 1, "{o:?}");
    assert_eq!(o.inflight, 0);
    let st = &robot.generation_stats()[0];
    assert_eq!(st.finished(), st.received, "{st:?}");
    println!(
        "\ngeneration offload: {} tokens (5 before the kill), finish {}, failover {:?} {:.1} ms after send, final {:.0} ms after the kill",
        tokens.len(),
        fin["finish_reason"],
        o.failover,
        o.failover_wait.quantile(0.5).unwrap_or(0) as f64 / 1e3,
        killed.elapsed().as_secs_f64() * 1e3,
    );
    assert!(server.wait_exit(Duration::from_secs(5)).await.is_some());
    robot.shutdown(Duration::from_secs(5)).await;
}
