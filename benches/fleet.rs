//! Fleet offload benchmark (issue 17): what a request pays for going to
//! another daemon instead of the local model, and what one server does for
//! two robots. Three daemons run in this process on loopback zenoh peers
//! (127.0.0.1 ports, scouting and gossip off): a server (`[fleet] serve`)
//! and two robots connected to it. Each robot has every pipeline twice:
//! `<model>` offloads `always` to the server, `<model>_local` never does,
//! so both paths are measured in the same run, interleaved request by
//! request (these VMs drift; only ratios in one run mean anything). All
//! daemons share the same CPU cores here: the figures are the cost of the
//! extra hop and the second scheduler, not the speed-up a GPU server would
//! give. Part A: one closed-loop client, p50/p99 per path. Part B: both
//! robots' clients at once, offloaded vs local, requests completed per
//! second. Never fails on a number: `cargo bench --bench fleet [-- --quick]`.

#[path = "common/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use harness::{free_port, machine_line, summary};
use reflexd::tensor::f32_tensor;
use reflexd::wire::{self, RequestMeta};
use reflexd::{Config, Daemon};
use zenoh::handlers::FifoChannelHandler;
use zenoh::pubsub::Subscriber;
use zenoh::sample::Sample;

type Sub = Subscriber<FifoChannelHandler<Sample>>;

/// (pipeline, model, input tensor shape)
const MODELS: [(&str, &str, &[usize]); 2] = [
    ("tiny", "models/test/affine.onnx", &[1, 4]),
    (
        "ocr",
        "models/fetched/ch_PP-OCRv4_det_infer.onnx",
        &[1, 3, 160, 640],
    ),
];

const SERVER: &str = "bench/server";

fn pipelines(prefix: &str, offload: bool) -> String {
    let mut out = String::new();
    for (name, model, shape) in MODELS {
        let warm = format!("warmup = {{ x = {shape:?} }}");
        let variants: &[(&str, &str)] = if offload {
            &[
                (
                    "",
                    "offload = { to = \"bench/server\", when = \"always\", timeout_ms = 5000 }",
                ),
                ("_local", ""),
            ]
        } else {
            &[("", "")]
        };
        for (suffix, extra) in variants {
            out += &format!(
                r#"
                [[pipeline]]
                name = "{name}{suffix}"
                model = "{model}"
                input = "{prefix}/{name}{suffix}/*"
                output = "{prefix}/out/{name}{suffix}"
                queue_capacity = 64
                deadline_ms = 5000
                format = "safetensors"
                {warm}
                {extra}
                "#
            );
        }
    }
    out
}

fn zenoh_section(listen: u16, connect: Option<u16>, node: &str, serve: bool) -> String {
    let connect = connect.map_or(String::new(), |p| format!("\"tcp/127.0.0.1:{p}\""));
    format!(
        "[zenoh]\nlisten = [\"tcp/127.0.0.1:{listen}\"]\nconnect = [{connect}]\nscouting = false\n\
         [metrics]\nnode = \"{node}\"\n[fleet]\nserve = {serve}\n"
    )
}

async fn daemon(text: &str) -> Result<Daemon> {
    let cfg = Config::from_toml(text, &harness::repo()).context("bench config")?;
    Daemon::start(cfg).await.context("daemon start")
}

fn up(d: &Daemon) -> bool {
    d.metrics()
        .fleet
        .is_some_and(|f| !f.offloads.is_empty() && f.offloads.iter().all(|o| o.target_up))
}

/// One robot and the client that drives it.
struct Robot {
    name: &'static str,
    daemon: Daemon,
    client: zenoh::Session,
    sub: Sub,
}

impl Robot {
    async fn start(name: &'static str, server_port: u16) -> Result<Robot> {
        let port = free_port()?;
        let text = zenoh_section(port, Some(server_port), &format!("bench/{name}"), false)
            + &pipelines(name, true);
        let daemon = daemon(&text).await?;
        for _ in 0..1500 {
            if up(&daemon) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !up(&daemon) {
            return Err(anyhow!("{name} never saw {SERVER}"));
        }
        let client = harness::client(port).await?;
        let sub = client
            .declare_subscriber(format!("{name}/out/**"))
            .await
            .map_err(|e| anyhow!("{e}"))?;
        Ok(Robot {
            name,
            daemon,
            client,
            sub,
        })
    }

    /// One request on `pipeline`, waited for; its round trip, or why not.
    async fn call(&self, pipeline: &str, body: &[u8], id: &str) -> Result<Duration> {
        let t0 = Instant::now();
        self.client
            .put(format!("{}/{pipeline}/cam", self.name), body.to_vec())
            .await
            .map_err(|e| anyhow!("{e}"))?;
        loop {
            let s = tokio::time::timeout(Duration::from_secs(10), self.sub.recv_async())
                .await
                .map_err(|_| anyhow!("{pipeline}: no reply within 10 s"))?
                .map_err(|e| anyhow!("{e}"))?;
            let key = s.key_expr().as_str();
            if key.ends_with("/error") {
                let b = s.payload().to_bytes();
                return Err(anyhow!("{pipeline}: {}", String::from_utf8_lossy(&b)));
            }
            let (_, meta) =
                wire::decode_output(&s.payload().to_bytes()).map_err(|e| anyhow!("{e:?}"))?;
            if meta.get("id").map(String::as_str) == Some(id) {
                return Ok(t0.elapsed());
            }
        }
    }
}

fn request(shape: &[usize], id: &str) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let x = f32_tensor("x", shape, &vec![0.5; n]);
    let meta = RequestMeta {
        id: Some(id.to_string()),
        seq: None,
        ts_us: None,
    };
    wire::encode_request(&[x], &meta)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Part A: closed loop on robot 1, the two paths interleaved.
async fn latency(r: &Robot, rounds: usize) -> Result<()> {
    println!(
        "\nA. one client, closed loop, {rounds} rounds (offloaded / local interleaved)\n{:<6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "model", "off p50", "off p99", "loc p50", "loc p99", "p50 x", "p99 x"
    );
    for (name, _, shape) in MODELS {
        let n = if name == "ocr" { rounds / 4 } else { rounds };
        let (mut off, mut loc) = (Vec::new(), Vec::new());
        for i in 0..n + 5 {
            let id = format!("{name}-{i}");
            let a = r.call(name, &request(shape, &id), &id).await?;
            let b = r
                .call(&format!("{name}_local"), &request(shape, &id), &id)
                .await?;
            if i >= 5 {
                off.push(ms(a));
                loc.push(ms(b));
            }
        }
        let (o, l) = (summary(&off), summary(&loc));
        println!(
            "{name:<6} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8.2} {:>8.2}",
            o.p50,
            o.p99,
            l.p50,
            l.p99,
            o.p50 / l.p50,
            o.p99 / l.p99,
        );
    }
    Ok(())
}

/// One robot's closed loop on `pipeline` until `end`; requests done.
async fn closed_loop(r: &Robot, pipeline: &str, shape: &[usize], end: Instant) -> Result<u64> {
    let mut n = 0u64;
    while Instant::now() < end {
        let id = format!("{pipeline}-t{n}");
        r.call(pipeline, &request(shape, &id), &id).await?;
        n += 1;
    }
    Ok(n)
}

/// Part B: both robots' clients in closed loop for `secs` on `pipeline`.
async fn throughput(robots: &[Robot], pipeline: &str, secs: f64) -> Result<f64> {
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let shape = MODELS.iter().find(|m| pipeline.starts_with(m.0)).unwrap().2;
    let (a, b) = tokio::join!(
        closed_loop(&robots[0], pipeline, shape, end),
        closed_loop(&robots[1], pipeline, shape, end)
    );
    Ok((a? + b?) as f64 / t0.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, secs) = if quick { (100, 2.0) } else { (400, 5.0) };
    println!("{}", machine_line());
    let sport = free_port()?;
    let server =
        daemon(&(zenoh_section(sport, None, SERVER, true) + &pipelines("server", false))).await?;
    let robots = [
        Robot::start("r1", sport).await?,
        Robot::start("r2", sport).await?,
    ];
    latency(&robots[0], rounds).await?;
    println!("\nB. two robots' clients at once, closed loop, {secs} s each, requests/s");
    println!(
        "{:<6} {:>12} {:>12} {:>8}",
        "model", "offloaded", "local", "ratio"
    );
    for (name, _, _) in MODELS {
        let off = throughput(&robots, name, secs).await?;
        let loc = throughput(&robots, &format!("{name}_local"), secs).await?;
        println!("{name:<6} {off:>12.1} {loc:>12.1} {:>8.2}", off / loc);
    }
    let f = robots[0].daemon.metrics().fleet.expect("robot offloads");
    for o in &f.offloads {
        println!(
            "r1 {}: offloaded {} remote_ok {} failover {:?} kept_local {}",
            o.pipeline, o.offloaded, o.remote_ok, o.failover, o.kept_local
        );
    }
    for r in robots {
        r.daemon.shutdown(Duration::from_secs(5)).await;
    }
    server.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
