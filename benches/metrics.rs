//! Metrics-overhead benchmark: what recording and exporting metrics costs a
//! request. Two daemons run in this process on loopback zenoh with the same
//! model (models/test/affine.onnx, so the fixed cost of a run is as small as
//! it gets and any metrics cost shows as a large fraction): one with
//! metrics fully on (histograms, zenoh publication every second, Prometheus
//! scraped every second), one with them off (`histograms = false`, no
//! publication, no endpoint; the outcome counters cannot be turned off). A
//! client sends ping-pong requests to both in interleaved rounds (order
//! alternating per round) so machine noise hits both alike, and compares
//! end-to-end latency (client round trip and the daemon's own `e2e_us`) at
//! p50/p90/p99. A second table times `Histogram::record` against
//! `Instant::now()` measured in the same run. It prints tables and writes
//! SVG plots to docs/bench/; it never fails on a number:
//! `cargo bench --bench metrics [-- --quick]`.

#[path = "common/harness.rs"]
mod harness;
#[path = "common/plot.rs"]
mod plot;

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use reflexd::obs::Histogram;
use reflexd::tensor::f32_tensor;
use reflexd::wire::{self, RequestMeta};
use reflexd::{Config, Daemon};

/// Target of the issue: p50 with metrics within 2 % of p50 without.
const TARGET_P50_RATIO: f64 = 1.02;

async fn daemon(metrics: &str) -> Result<(Daemon, u16)> {
    let port = harness::free_port()?;
    let text = format!(
        r#"
        [zenoh]
        listen = ["tcp/127.0.0.1:{port}"]
        scouting = false
        {metrics}
        [[pipeline]]
        name = "affine"
        model = "models/test/affine.onnx"
        input = "b/in"
        output = "b/out"
        deadline_ms = 1000
        "#
    );
    let cfg = Config::from_toml(&text, &harness::repo()).map_err(|e| anyhow!("{e}"))?;
    Ok((Daemon::start(cfg).await.map_err(|e| anyhow!("{e}"))?, port))
}

struct Peer {
    session: zenoh::Session,
    sub: zenoh::pubsub::Subscriber<zenoh::handlers::FifoChannelHandler<zenoh::sample::Sample>>,
    rtt_us: Vec<f64>,
    e2e_us: Vec<f64>,
}

impl Peer {
    async fn connect(port: u16) -> Result<Peer> {
        let session = harness::client(port).await?;
        let sub = session
            .declare_subscriber("b/out")
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let p = session
            .declare_publisher("b/in")
            .await
            .map_err(|e| anyhow!("{e}"))?;
        while !p
            .matching_status()
            .await
            .map_err(|e| anyhow!("{e}"))?
            .matching()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Peer {
            session,
            sub,
            rtt_us: Vec::new(),
            e2e_us: Vec::new(),
        })
    }

    async fn ping(&mut self, payload: &[u8], record: bool) -> Result<()> {
        let t = Instant::now();
        self.session
            .put("b/in", payload.to_vec())
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let s = tokio::time::timeout(Duration::from_secs(2), self.sub.recv_async())
            .await
            .map_err(|_| anyhow!("no reply within 2 s"))?
            .map_err(|e| anyhow!("{e}"))?;
        let rtt = t.elapsed().as_secs_f64() * 1e6;
        let (_, meta) = wire::decode_output(&s.payload().to_bytes()).map_err(|e| anyhow!("{e}"))?;
        if record {
            self.rtt_us.push(rtt);
            self.e2e_us.push(meta["e2e_us"].parse()?);
        }
        Ok(())
    }
}

fn pct(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    harness::percentile(&v, q)
}

fn scrape(addr: std::net::SocketAddr) -> usize {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.len()
}

/// ns per call of `f`, best of 5 runs of `n` calls.
fn ns_per(n: u64, mut f: impl FnMut(u64)) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for i in 0..n {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

async fn run(quick: bool) -> Result<()> {
    let (rounds, per_round) = if quick { (20, 50) } else { (100, 100) };
    let (on, on_port) = daemon(
        "[metrics]\nnode = \"b/on\"\nprometheus = \"127.0.0.1:0\"\npublish_interval_ms = 1000\nhistograms = true",
    )
    .await?;
    let (off, off_port) =
        daemon("[metrics]\nnode = \"b/off\"\npublish_interval_ms = 0\nhistograms = false").await?;
    let prom = on.prometheus_addr().expect("enabled");
    let mut peers = [
        Peer::connect(on_port).await?,
        Peer::connect(off_port).await?,
    ];
    // Prometheus scraped every second while the "on" daemon serves.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let scraper = std::thread::spawn(move || {
        let mut n = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if scrape(prom) > 0 {
                n += 1;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        n
    });
    let payload = wire::encode_request(
        &[f32_tensor("x", &[1, 4], &[0.5; 4])],
        &RequestMeta::default(),
    );
    for p in peers.iter_mut() {
        for _ in 0..200 {
            p.ping(&payload, false).await?; // warm-up
        }
    }
    let started = Instant::now();
    for r in 0..rounds {
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            for _ in 0..per_round {
                peers[i].ping(&payload, true).await?;
            }
        }
    }
    let elapsed = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraper.join().unwrap_or(0);
    let snap = on.metrics();
    let hist_count = snap.pipelines[0].e2e.count;

    println!(
        "\n## Metrics overhead: affine.onnx ping-pong, {rounds} rounds × {per_round} requests per daemon, interleaved ({:.1} s)",
        elapsed.as_secs_f64()
    );
    println!(
        "metrics on: histograms recorded ({hist_count} e2e samples), zenoh snapshot every 1 s, Prometheus scraped {scrapes} times"
    );
    println!("metrics off: histograms = false, no publication, no endpoint (counters stay on)\n");
    println!("| series | n | p50 µs | p90 µs | p99 µs | mean µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    let names = ["metrics on", "metrics off"];
    for (what, get) in [
        (
            "client round trip",
            (|p: &Peer| &p.rtt_us) as fn(&Peer) -> &Vec<f64>,
        ),
        ("daemon e2e_us", |p: &Peer| &p.e2e_us),
    ] {
        for (p, name) in peers.iter().zip(names) {
            let xs = get(p);
            println!(
                "| {what}, {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                xs.len(),
                pct(xs, 0.5),
                pct(xs, 0.9),
                pct(xs, 0.99),
                xs.iter().sum::<f64>() / xs.len() as f64
            );
        }
    }
    println!();
    for (what, get) in [
        (
            "client round trip",
            (|p: &Peer| &p.rtt_us) as fn(&Peer) -> &Vec<f64>,
        ),
        ("daemon e2e_us", |p: &Peer| &p.e2e_us),
    ] {
        let ratio = pct(get(&peers[0]), 0.5) / pct(get(&peers[1]), 0.5);
        let r99 = pct(get(&peers[0]), 0.99) / pct(get(&peers[1]), 0.99);
        println!(
            "{what}: p50 on/off = {ratio:.3} (target ≤ {TARGET_P50_RATIO}: {}), p99 on/off = {r99:.3}",
            if ratio <= TARGET_P50_RATIO {
                "met"
            } else {
                "NOT met"
            }
        );
    }

    // Hot-path cost of one record, against a clock read in the same run.
    let h = Histogram::default();
    let n = if quick { 2_000_000 } else { 20_000_000 };
    let clock = ns_per(n, |_| {
        black_box(Instant::now());
    });
    let record = ns_per(n, |i| h.record(black_box(100 + (i & 1023))));
    let snapshot = ns_per(if quick { 200 } else { 2000 }, |_| {
        black_box(h.snapshot());
    });
    println!("\n| hot-path operation | ns per call |");
    println!("|---|---:|");
    println!("| Instant::now() (baseline) | {clock:.1} |");
    println!("| Histogram::record (3 fetch_add + fetch_max) | {record:.1} |");
    println!(
        "| Histogram::snapshot (reader side, {} buckets) | {snapshot:.0} |",
        reflexd::obs::hist::BUCKETS
    );
    println!(
        "A successful request records 3 histograms: ≈ {:.0} ns ≈ {:.1} Instant::now() calls.",
        3.0 * record,
        3.0 * record / clock
    );

    let dir = harness::repo().join("docs/bench");
    std::fs::create_dir_all(&dir)?;
    let series: Vec<(&str, &[f64])> = vec![
        ("e2e_us, metrics on", &peers[0].e2e_us),
        ("e2e_us, metrics off", &peers[1].e2e_us),
        ("round trip, metrics on", &peers[0].rtt_us),
        ("round trip, metrics off", &peers[1].rtt_us),
    ];
    let cdf = dir.join("metrics_overhead_cdf.svg");
    plot::cdf(
        &cdf,
        "reflexd latency, metrics on vs off (affine.onnx)",
        "µs",
        &series,
    )
    .map_err(|e| anyhow!("plot: {e}"))?;
    let hist = dir.join("metrics_overhead_hist.svg");
    plot::histogram(
        &hist,
        "reflexd latency histogram, metrics on vs off",
        "µs",
        &series,
        60,
    )
    .map_err(|e| anyhow!("plot: {e}"))?;
    println!("\nplots: {} {}", cdf.display(), hist.display());
    for p in peers {
        let _ = p.session.close().await;
    }
    on.shutdown(Duration::from_secs(5)).await;
    off.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(quick))
}
