//! What every benchmark program shares: the repo path, loopback ports, an
//! in-process daemon with a peer client (scouting off, 127.0.0.1 only),
//! latency summaries (median, p99, …), the process's RSS, the machine line
//! every table starts with. Included with
//! `#[path = "common/harness.rs"] mod harness;`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use reflexd::{Config, Daemon};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A loopback-only peer config that connects to `port`.
pub fn peer_json(port: u16) -> String {
    format!(
        r#"{{ mode: "peer", listen: {{ endpoints: [] }}, connect: {{ endpoints: ["tcp/127.0.0.1:{port}"] }},
             scouting: {{ multicast: {{ enabled: false }}, gossip: {{ enabled: false }} }} }}"#
    )
}

/// A zenoh peer connected to the daemon on `port`, once the link is up.
pub async fn client(port: u16) -> Result<zenoh::Session> {
    let cfg = zenoh::Config::from_json5(&peer_json(port)).map_err(|e| anyhow!("{e}"))?;
    let s = zenoh::open(cfg).await.map_err(|e| anyhow!("{e}"))?;
    for _ in 0..250 {
        if s.info().peers_zid().await.next().is_some() {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(anyhow!("no link to the daemon on port {port}"))
}

/// Starts a daemon from `body` (TOML without `[zenoh]`) listening on a
/// free loopback port; returns it, its port and a connected client.
pub async fn start(body: &str) -> Result<(Daemon, u16, zenoh::Session)> {
    let port = free_port()?;
    let text = format!("[zenoh]\nlisten = [\"tcp/127.0.0.1:{port}\"]\nscouting = false\n{body}");
    let cfg = Config::from_toml(&text, &repo()).context("bench config")?;
    let daemon = Daemon::start(cfg).await.context("daemon start")?;
    let c = client(port).await?;
    Ok((daemon, port, c))
}

/// Order statistics of latency samples (any unit).
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn summary(samples: &[f64]) -> Summary {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Summary {
        n: v.len(),
        p50: percentile(&v, 0.5),
        p90: percentile(&v, 0.9),
        p99: percentile(&v, 0.99),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

/// Resident set size of this process, MiB.
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One line naming the machine and its load, printed above every table.
pub fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "machine: {cpus} CPU(s) {model}; load avg {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}
