//! What every benchmark program shares: the repo path, loopback ports and
//! peer configs, an in-process daemon with a peer client (scouting off,
//! 127.0.0.1 only), an echo peer (the transport floor every round trip is
//! compared with), latency statistics (nearest-rank percentiles, tables,
//! verdicts), a deterministic PRNG, the process's RSS, the machine line and
//! run header every table starts with, and a CPU meter that names whoever
//! else was busy during a section. Plots live in `common/plot.rs`. Included
//! with `#[path = "common/harness.rs"] mod harness;`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use reflexd::{Config, Daemon};
use zenoh::Wait;
use zenoh::qos::{CongestionControl, Priority};

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

pub fn endpoint(port: u16) -> String {
    format!("tcp/127.0.0.1:{port}")
}

/// A loopback-only peer configuration listening and/or connecting on the
/// given ports; nothing is discovered, everything is an explicit 127.0.0.1
/// endpoint.
pub fn peer_config(listen: Option<u16>, connect: Option<u16>) -> Result<zenoh::Config> {
    let eps = |p: Option<u16>| -> Vec<String> { p.map(endpoint).into_iter().collect() };
    let json = serde_json::json!({
        "mode": "peer",
        "listen": { "endpoints": eps(listen) },
        "connect": { "endpoints": eps(connect) },
        "scouting": { "multicast": { "enabled": false }, "gossip": { "enabled": false } },
    });
    zenoh::Config::from_json5(&json.to_string()).map_err(|e| anyhow!("zenoh config: {e}"))
}

/// The echo peer: re-publishes every sample on `input` (a key expression)
/// to `output` from the subscriber callback, attachment included, with the
/// daemon's reply QoS. A round trip through it is the transport floor.
pub fn echo(
    session: &zenoh::Session,
    input: &str,
    output: &str,
) -> Result<zenoh::pubsub::Subscriber<()>> {
    let publisher = session
        .declare_publisher(output.to_string())
        .congestion_control(CongestionControl::Drop)
        .priority(Priority::DataHigh)
        .express(true)
        .wait()
        .map_err(|e| anyhow!("declare echo publisher: {e}"))?;
    session
        .declare_subscriber(input.to_string())
        .callback(move |s| {
            let _ = publisher
                .put(s.payload().clone())
                .attachment(s.attachment().cloned())
                .wait();
        })
        .wait()
        .map_err(|e| anyhow!("declare echo subscriber: {e}"))
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

/// xorshift64*: deterministic and dependency-free; quality is irrelevant here.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in (0, 1]: never 0, so `ln` below is finite.
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
    pub fn exp(&mut self, rate: f64) -> f64 {
        -self.unit().ln() / rate
    }
}

/// Order statistics of latency samples (any unit), with the requests that
/// got no answer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub n: usize,
    pub lost: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Nearest-rank percentile `p` (0..=1) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Nearest-rank percentiles of `xs`; `lost` requests had no answer.
pub fn summarize(xs: &[f64], lost: usize) -> Summary {
    if xs.is_empty() {
        return Summary {
            lost,
            ..Summary::default()
        };
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    Summary {
        n: v.len(),
        lost,
        p50: percentile(&v, 0.5),
        p90: percentile(&v, 0.9),
        p99: percentile(&v, 0.99),
        p999: percentile(&v, 0.999),
        max: v[v.len() - 1],
    }
}

pub fn summary(samples: &[f64]) -> Summary {
    summarize(samples, 0)
}

/// The head of a Markdown table of [`Summary`] rows (µs).
pub fn header() {
    println!(
        "| {:<38} | {:>6} | {:>4} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} |",
        "target", "n", "lost", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    println!(
        "|{:-<40}|{:->8}|{:->6}|{:->11}|{:->11}|{:->11}|{:->11}|{:->11}|",
        "", "", "", "", "", "", "", ""
    );
}

pub fn row(name: &str, s: &Summary) {
    println!(
        "| {:<38} | {:>6} | {:>4} | {:>9.1} | {:>9.1} | {:>9.1} | {:>9.1} | {:>9.1} |",
        name, s.n, s.lost, s.p50, s.p90, s.p99, s.p999, s.max
    );
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
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

pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Civil-from-days (H. Hinnant), to avoid a date crate for one line.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The lines every benchmark prints first: title, date, machine, load,
/// command line and parsed arguments.
pub fn print_header(bench: &str, args: &dyn std::fmt::Debug) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    println!("# reflexd {bench} benchmark");
    println!("date:    {}", utc_now());
    println!(
        "machine: nproc={nproc}, cpu={model}, kernel={}",
        kernel.trim()
    );
    println!(
        "load:    {} (1/5/15 min, at start)",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "command: cargo bench --bench {bench} -- {}",
        argv.iter()
            .filter(|a| *a != "--bench")
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("args:    {args:?}");
}

/// Machine-wide and own CPU time over a section, from /proc: on a shared VM
/// the first question about any latency figure is who else was running.
pub struct CpuMeter {
    machine: Option<(u64, u64, u64)>,
    own: Option<u64>,
    procs: BTreeMap<u32, (String, u64)>,
}

/// comm and utime + stime of every process, to name whoever disturbed a
/// section (processes that start and exit inside it are not seen).
fn all_procs() -> BTreeMap<u32, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ticks: u64 = stat[r + 1..]
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|x| x.parse::<u64>().ok())
            .sum();
        out.insert(pid, (stat[l + 1..r].to_string(), ticks));
    }
    out
}

/// (busy, total, steal) jiffies over all CPUs.
fn machine_ticks() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total, *v.get(7)?))
}

/// Children still running (Python node, load generator): their CPU time is
/// ours too, but the kernel only adds it to our `cutime` once reaped.
pub static LIVE_CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// utime + stime + cutime + cstime of one process.
fn proc_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields 14..=17 of proc(5); `rest` starts at field 3.
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|x| x.parse().ok())
        .collect();
    Some(f.iter().sum())
}

fn own_ticks() -> Option<u64> {
    let live = LIVE_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let children: u64 = live.iter().filter_map(|p| proc_ticks(&p.to_string())).sum();
    Some(proc_ticks("self")? + children)
}

impl CpuMeter {
    pub fn start() -> CpuMeter {
        CpuMeter {
            machine: machine_ticks(),
            own: own_ticks(),
            procs: all_procs(),
        }
    }
    pub fn report(&self, what: &str) {
        let (Some((b0, t0, s0)), Some((b1, t1, s1)), Some(o0), Some(o1)) =
            (self.machine, machine_ticks(), self.own, own_ticks())
        else {
            return;
        };
        let total = (t1 - t0).max(1) as f64;
        let pct = |x: u64| 100.0 * x as f64 / total;
        let own = pct(o1.saturating_sub(o0));
        let busy = pct(b1 - b0);
        println!(
            "  cpu during {what}: machine {busy:.0}% busy (steal {:.1}%), this benchmark and its children ≈ {own:.0}%, everything else ≈ {:.0}% (percent of all cores)",
            pct(s1 - s0),
            (busy - own).max(0.0)
        );
        if busy - own > 10.0 {
            let ours: Vec<u32> = {
                let live = LIVE_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
                live.iter().copied().chain([std::process::id()]).collect()
            };
            let mut others: Vec<(u64, String)> = all_procs()
                .into_iter()
                .filter(|(pid, _)| !ours.contains(pid))
                .filter_map(|(pid, (comm, t))| {
                    let before = self.procs.get(&pid).map_or(0, |p| p.1);
                    let d = t.saturating_sub(before);
                    (d > 0).then(|| (d, format!("{comm}[{pid}]")))
                })
                .collect();
            others.sort_unstable_by_key(|o| std::cmp::Reverse(o.0));
            let top: Vec<String> = others
                .iter()
                .take(3)
                .map(|(d, n)| format!("{n} {:.0}%", pct(*d)))
                .collect();
            println!(
                "  WARNING: other processes were busy during {what} (top: {}); its numbers are disturbed, rerun on a quiet machine",
                if top.is_empty() {
                    "short-lived, not seen".to_string()
                } else {
                    top.join(", ")
                }
            );
        }
    }
}
