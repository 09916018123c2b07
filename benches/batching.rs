//! Batching benchmark (issue 6), every number against a baseline measured in
//! the same run, because these shared VMs drift:
//!
//! (a) camera-style tensor pipeline at saturating load: the PP-OCR
//!     orientation classifier (`x` f32 [N,3,48,192] → [N,2]) fed by a
//!     closed-loop client keeping `--outstanding` requests in flight from
//!     several camera streams; one pipeline with `max_batch = 1`, one with
//!     dynamic batching, same model, same daemon, alternating rounds.
//!     Reported: throughput (predictions/s), client round-trip p50/p99,
//!     and the batch-size histogram.
//! (b) 1, 4 and 8 concurrent greedy 64-token generations of SmolLM2-135M on
//!     a continuously batched pipeline, versus the same requests run one
//!     after another: aggregate tokens/s (completion tokens / wall time from
//!     first command to last final message) and per-stream TPOT (the final
//!     message's `timing.tpot_ms`).
//!
//! Loopback zenoh only (explicit 127.0.0.1 ports, scouting off). Prints
//! tables and verdicts; never fails on a number. Run it with
//! `cargo bench --bench batching [-- --quick | --no-llm | --no-camera]`.

#[path = "common/harness.rs"]
mod harness;
#[path = "common/plot.rs"]
mod plot;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reflexd::Daemon;
use reflexd::tensor::Tensor;
use reflexd::wire::{self, RequestMeta};
use serde_json::{Value, json};

const CLS_MODEL: &str = "models/fetched/ch_ppocr_mobile_v2.0_cls_infer.onnx";
const LLM_DIR: &str = "models/llm/fetched";
const PROMPT: &str = "Tell me a long story about a robot.";
const TOKENS: u32 = 64;
const WAIT: Duration = Duration::from_secs(600);

struct Args {
    quick: bool,
    camera: bool,
    llm: bool,
    outstanding: usize,
    max_batch: usize,
    delay_us: u64,
    round_secs: f64,
    rounds: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        quick: false,
        camera: true,
        llm: true,
        outstanding: 16,
        max_batch: 8,
        delay_us: 2000,
        round_secs: 4.0,
        rounds: 3,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter().filter(|s| *s != "--bench");
    while let Some(flag) = it.next() {
        let mut val = || it.next().context(format!("{flag} needs a value"));
        match flag.as_str() {
            "--quick" => a.quick = true,
            "--no-camera" => a.camera = false,
            "--no-llm" => a.llm = false,
            "--outstanding" => a.outstanding = val()?.parse()?,
            "--max-batch" => a.max_batch = val()?.parse()?,
            "--delay-us" => a.delay_us = val()?.parse()?,
            "--round-secs" => a.round_secs = val()?.parse()?,
            "--rounds" => a.rounds = val()?.parse()?,
            "--help" | "-h" => {
                println!(
                    "usage: cargo bench --bench batching [-- --quick --no-camera --no-llm \
                     --outstanding N --max-batch N --delay-us N --round-secs S --rounds N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?} (try --help)"),
        }
    }
    if a.quick {
        a.round_secs = 2.0;
        a.rounds = 1;
    }
    Ok(a)
}

/// A daemon from `body` with two intra-op threads, and a connected client.
async fn start(body: &str) -> Result<(Daemon, zenoh::Session)> {
    let (daemon, _, client) =
        harness::start(&format!("[runtime]\nintra_op_threads = 2\n{body}")).await?;
    Ok((daemon, client))
}

// ------------------------------------------------------------- (a) camera

struct CameraRound {
    done: usize,
    secs: f64,
    lat_ms: Vec<f64>,
    errors: usize,
}

/// Closed loop: `outstanding` requests in flight over 4 camera streams;
/// each reply (prediction or error) triggers the next request.
async fn camera_round(
    c: &zenoh::Session,
    pipeline: &str,
    outstanding: usize,
    secs: f64,
    frame: &Tensor,
) -> Result<CameraRound> {
    let sub = c
        .declare_subscriber(format!("bench/{pipeline}_out/**"))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Let the daemon learn about this subscriber before replies go out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let mut next = 0u64;
    let send = |n: u64| {
        let id = format!("{pipeline}-{n}");
        let bytes = wire::encode_request(
            std::slice::from_ref(frame),
            &RequestMeta {
                id: Some(id.clone()),
                seq: Some(n),
                ts_us: None,
            },
        );
        (id, format!("bench/{pipeline}/cam{}", n % 4), bytes)
    };
    let put = |key: String, bytes: Vec<u8>| {
        c.put(key, bytes)
            .congestion_control(zenoh::qos::CongestionControl::Block)
    };
    for _ in 0..outstanding {
        let (id, key, bytes) = send(next);
        next += 1;
        sent_at.insert(id, Instant::now());
        put(key, bytes).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(secs);
    let mut r = CameraRound {
        done: 0,
        secs: 0.0,
        lat_ms: Vec::new(),
        errors: 0,
    };
    while !sent_at.is_empty() {
        let s = tokio::time::timeout(Duration::from_secs(30), sub.recv_async())
            .await
            .context("camera reply timed out")?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = s.key_expr().as_str().to_string();
        let bytes = s.payload().to_bytes();
        let id = if key.ends_with("/error") {
            r.errors += 1;
            let v: Value = serde_json::from_slice(&bytes)?;
            v["id"].as_str().unwrap_or_default().to_string()
        } else {
            let (_, meta) = wire::decode_output(&bytes).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            meta.get("id").cloned().unwrap_or_default()
        };
        let Some(at) = sent_at.remove(&id) else {
            continue;
        };
        let now = Instant::now();
        if now < until {
            r.done += 1;
            r.lat_ms.push((now - at).as_secs_f64() * 1e3);
            let (id, key, bytes) = send(next);
            next += 1;
            sent_at.insert(id, Instant::now());
            put(key, bytes).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        } else if r.secs == 0.0 {
            r.secs = (now - t0).as_secs_f64();
        }
    }
    if r.secs == 0.0 {
        r.secs = t0.elapsed().as_secs_f64();
    }
    Ok(r)
}

async fn bench_camera(a: &Args) -> Result<()> {
    let model = harness::repo().join(CLS_MODEL);
    if !model.exists() {
        bail!("{} missing: run `make setup`", model.display());
    }
    let cap = a.outstanding * 2;
    let (daemon, c) = start(&format!(
        r#"
        [[pipeline]]
        name = "cls1"
        model = "{m}"
        input = "bench/cls1/*"
        output = "bench/cls1_out"
        queue_capacity = {cap}
        warmup = {{ x = [1, 3, 48, 192] }}
        [[pipeline]]
        name = "clsb"
        model = "{m}"
        input = "bench/clsb/*"
        output = "bench/clsb_out"
        queue_capacity = {cap}
        warmup = {{ x = [1, 3, 48, 192] }}
        max_batch = {mb}
        max_queue_delay_us = {d}
        "#,
        m = model.display(),
        mb = a.max_batch,
        d = a.delay_us,
    ))
    .await?;
    let n = 3 * 48 * 192;
    let vals: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
        .collect();
    let frame = reflexd::tensor::f32_tensor("x", &[1, 3, 48, 192], &vals);
    // Warm-up round for both (subscription propagation, ORT first runs).
    for p in ["cls1", "clsb"] {
        camera_round(&c, p, 2, 0.5, &frame).await?;
    }
    let mut agg: HashMap<&str, (usize, f64, Vec<f64>, usize)> = HashMap::new();
    for round in 0..a.rounds {
        let order = if round % 2 == 0 {
            ["cls1", "clsb"]
        } else {
            ["clsb", "cls1"]
        };
        for p in order {
            let r = camera_round(&c, p, a.outstanding, a.round_secs, &frame).await?;
            let e = agg.entry(p).or_default();
            e.0 += r.done;
            e.1 += r.secs;
            e.2.extend(r.lat_ms);
            e.3 += r.errors;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(
        "\n## (a) camera-style pipeline at saturating load: {} in flight, 4 streams, {} rounds x {} s",
        a.outstanding, a.rounds, a.round_secs
    );
    println!(
        "model: ch_ppocr_mobile_v2.0_cls_infer.onnx, x f32 [1,3,48,192] per request, intra_op_threads 2, 1 worker"
    );
    println!(
        "| config | predictions | throughput /s | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|---:|"
    );
    let mut tput = HashMap::new();
    let mut p99 = HashMap::new();
    let mut curves: Vec<(String, Vec<f64>)> = Vec::new();
    for (p, label) in [
        ("cls1", "max_batch = 1".to_string()),
        (
            "clsb",
            format!(
                "max_batch = {}, max_queue_delay_us = {}",
                a.max_batch, a.delay_us
            ),
        ),
    ] {
        let (done, secs, mut lat, errors) = agg.remove(p).unwrap_or_default();
        lat.sort_by(|x, y| x.total_cmp(y));
        let t = done as f64 / secs.max(1e-9);
        tput.insert(p, t);
        p99.insert(p, harness::percentile(&lat, 0.99));
        println!(
            "| {label} | {done} | {t:.1} | {:.2} | {:.2} | {errors} |",
            harness::percentile(&lat, 0.5),
            harness::percentile(&lat, 0.99)
        );
        curves.push((label, lat));
    }
    let path = harness::repo().join("docs/bench/batching_camera_cdf.svg");
    std::fs::create_dir_all(path.parent().unwrap())?;
    let series: Vec<(&str, &[f64])> = curves
        .iter()
        .map(|(l, v)| (l.as_str(), v.as_slice()))
        .collect();
    plot::cdf(
        &path,
        "camera-style pipeline at saturating load: round trip, batch 1 vs dynamic batching",
        "ms",
        &series,
    )
    .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    println!("plot: {}", path.display());
    let bs = &daemon.batch_stats()[0];
    println!(
        "batch sizes (clsb, incl. warm-up): {:?}; mean fill wait {:.0} µs per batch",
        bs.sizes,
        bs.fill_wait_us as f64 / bs.batches.max(1) as f64
    );
    println!(
        "ratio: throughput x{:.2}, p99 x{:.2} (batched / batch 1)",
        tput["clsb"] / tput["cls1"],
        p99["clsb"] / p99["cls1"]
    );
    daemon.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

// ---------------------------------------------------------------- (b) LLM

/// Runs `n` generations on `pipeline`: all at once, or one after another.
/// Returns (completion tokens, wall seconds, per-stream TPOT ms).
async fn generations(
    c: &zenoh::Session,
    pipeline: &str,
    tag: &str,
    n: usize,
    concurrent: bool,
) -> Result<(u64, f64, Vec<f64>)> {
    let mut subs = Vec::new();
    for i in 0..n {
        let id = format!("{tag}-{i}");
        let sub = c
            .declare_subscriber(format!("bench/{pipeline}/out/{id}"))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        subs.push((id, sub));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cmd = |id: &str| {
        json!({"id": id, "prompt": PROMPT, "max_tokens": TOKENS})
            .to_string()
            .into_bytes()
    };
    let key = format!("bench/{pipeline}/cmd");
    let t0 = Instant::now();
    let mut tokens = 0u64;
    let mut tpot = Vec::new();
    let mut finish = |v: &Value| -> Result<()> {
        if v["finish_reason"] != "length" {
            bail!("generation ended early: {v}");
        }
        tokens += v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        tpot.push(v["timing"]["tpot_ms"].as_f64().unwrap_or(f64::NAN));
        Ok(())
    };
    if concurrent {
        for (id, _) in &subs {
            c.put(&key, cmd(id))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    for (id, sub) in &subs {
        if !concurrent {
            c.put(&key, cmd(id))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        loop {
            let s = tokio::time::timeout(WAIT, sub.recv_async())
                .await
                .context("generation timed out")?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let v: Value = serde_json::from_slice(&s.payload().to_bytes())?;
            if v["done"] == true {
                finish(&v)?;
                break;
            }
        }
    }
    Ok((tokens, t0.elapsed().as_secs_f64(), tpot))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

async fn bench_llm(a: &Args) -> Result<()> {
    let dir = harness::repo().join(LLM_DIR);
    if !dir.join("model.onnx").exists() {
        bail!("{} missing: run `make setup`", dir.display());
    }
    let (daemon, c) = start(&format!(
        r#"
        [[pipeline]]
        name = "gen"
        kind = "generate"
        model = "{d}"
        input = "bench/gen/cmd"
        output = "bench/gen/out"
        max_generations = 8
        max_batch = 8
        max_tokens = 256
        "#,
        d = dir.display()
    ))
    .await?;
    // Subscription propagation: one-token probes until one is answered;
    // then one full generation as warm-up.
    let probe_sub = c
        .declare_subscriber("bench/gen/out/**")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for i in 0.. {
        if i == 50 {
            bail!("daemon never answered a generation command");
        }
        let cmd = json!({"id": format!("probe{i}"), "prompt": "Hi", "max_tokens": 1});
        c.put("bench/gen/cmd", cmd.to_string().into_bytes())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if tokio::time::timeout(Duration::from_millis(500), probe_sub.recv_async())
            .await
            .is_ok()
        {
            break;
        }
    }
    drop(probe_sub);
    while daemon.live_generations()[0] > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    generations(&c, "gen", "warm", 1, false).await?;
    println!(
        "\n## (b) concurrent greedy generations, {TOKENS} tokens each, SmolLM2-135M, intra_op_threads 2"
    );
    println!("prompt: {PROMPT:?}; one worker; sequential = the same requests one after another");
    println!(
        "| streams | sequential tok/s | batched tok/s | aggregate ratio | TPOT sequential ms | TPOT batched ms | TPOT ratio |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    let counts: &[usize] = if a.quick { &[1, 4] } else { &[1, 4, 8] };
    let mut single_tpot = None;
    // Probes still running would hold max_generations slots.
    let idle = || async {
        while daemon.live_generations()[0] > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    for &n in counts {
        idle().await;
        let (st, ss, stp) = generations(&c, "gen", &format!("seq{n}"), n, false).await?;
        idle().await;
        let (bt, bs, btp) = generations(&c, "gen", &format!("cb{n}"), n, true).await?;
        let seq_rate = st as f64 / ss;
        let cb_rate = bt as f64 / bs;
        let base = *single_tpot.get_or_insert(mean(&stp));
        println!(
            "| {n} | {seq_rate:.1} | {cb_rate:.1} | x{:.2} | {:.1} | {:.1} | x{:.2} |",
            cb_rate / seq_rate,
            mean(&stp),
            mean(&btp),
            mean(&btp) / base
        );
    }
    let d = &daemon.decode_stats()[0];
    println!(
        "decode steps by batch size: {:?}; decode tokens/s of step time: {:.1}",
        d.sizes,
        d.tokens_per_s.unwrap_or(0.0)
    );
    println!(
        "TPOT ratio is against the single-stream sequential TPOT; target: aggregate >= x2.5 at 8 streams with TPOT ratio <= x2"
    );
    daemon.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    println!("# reflexd batching benchmark");
    println!(
        "machine: nproc={}, cpu={cpu}; load at start: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        if a.camera {
            bench_camera(&a).await?;
        }
        if a.llm {
            bench_llm(&a).await?;
        }
        Ok(())
    })
}
