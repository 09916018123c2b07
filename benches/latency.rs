//! Latency benchmark: what reflexd costs on top of the two things it cannot
//! avoid (a zenoh round trip and a `Session::run`), and whether a low-priority
//! model disturbs a real-time one. Everything is measured in one process run
//! on loopback zenoh (explicit 127.0.0.1 ports, scouting and gossip off),
//! because these VMs drift: only ratios taken in the same run mean anything.
//! The daemon runs in-process with `config/demo.toml` (only its zenoh section
//! is replaced), so the numbers are those of the shipped deployment. Part A
//! interleaves the targets in rounds (zenoh echo, bare ORT, reflexd, a
//! hand-rolled Python node, and minimal Rust nodes that bracket reflexd's
//! design) so noise hits all of them alike. Part B alternates unloaded and
//! loaded blocks (PP-OCR requests at Poisson arrivals from another process)
//! against reflexd, then the single-threaded Python node. Each section ends
//! with the CPU other processes used meanwhile, since a shared machine is the
//! first suspect for any tail. It prints tables and verdicts and never fails
//! on a number: `cargo bench --bench latency [-- --quick | --help]`.

#[path = "latency/children.rs"]
mod children;
#[path = "latency/client.rs"]
mod client;
#[path = "latency/daemon.rs"]
mod daemon;
#[path = "common/harness.rs"]
mod harness;
#[path = "latency/part_a.rs"]
mod part_a;
#[path = "latency/part_b.rs"]
mod part_b;
#[path = "latency/peers.rs"]
mod peers;
#[path = "common/plot.rs"]
mod plot;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use crossbeam::channel::{self, Receiver};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use reflexd::obs::PipelineSnapshot;
use reflexd::tensor::Dtype;
use reflexd::wire::{self, RequestMeta};
use reflexd::{Config, Daemon};
use zenoh::Wait;
use zenoh::bytes::ZBytes;
use zenoh::qos::{CongestionControl, Priority};
use zenoh::sample::Sample;

use children::*;
use client::*;
use daemon::*;
use harness::{
    CpuMeter, LIVE_CHILDREN, Rng, Summary, endpoint, free_port, header, peer_config, row,
    summarize, verdict,
};
use part_a::*;
use part_b::*;
use peers::*;

/// New audio samples per Silero VAD frame (32 ms at 16 kHz).
pub(crate) const FRAME: usize = 512;
/// Samples of the previous frame Silero expects in front of the new ones.
pub(crate) const CONTEXT: usize = 64;
pub(crate) const STATE_SHAPE: [usize; 3] = [2, 1, 128];
pub(crate) const SAMPLE_RATE: i64 = 16_000;
pub(crate) const OCR_SHAPE: [usize; 4] = [1, 3, 160, 640];
/// Distinct pre-built frames / OCR images cycled through, so no request is
/// generated on the clock.
pub(crate) const FRAME_VARIANTS: usize = 64;
pub(crate) const OCR_VARIANTS: usize = 4;
/// A reply later than this counts as lost; it also bounds every wait.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames kept in flight per client channel before replies are dropped.
pub(crate) const REPLY_CHANNEL: usize = 4096;
/// Time for an OCR backlog to build up (or drain) before a block is measured.
pub(crate) const LOAD_SETTLE: Duration = Duration::from_millis(1500);
/// The load generator exits on its own after this, whatever the parent does.
pub(crate) const LOAD_CHILD_MAX: Duration = Duration::from_secs(900);
/// How long a child process gets to start (Python imports, model loads).
pub(crate) const CHILD_START_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const STREAM: &str = "mic0";
pub(crate) const USAGE: &str = "\
usage: cargo bench --bench latency [-- OPTIONS]
  --samples N        part A: measured round trips per target (default 3000)
  --warmup N         part A: warm-up round trips per target (default 300)
  --rounds N         part A: interleaved rounds (default 6)
  --gap-us N         part A: idle time between round trips (default 0)
  --idle-spin-us L   part A: one reflexd per runtime.idle_spin_us value, comma-separated (default 0,50,200)
  --rt-samples N     part B: VAD frames measured per phase, unloaded and loaded (default 2000)
  --rt-blocks N      part B: alternating unloaded/loaded blocks (default 4)
  --vad-hz F         part B: VAD frame rate (default 100)
  --ocr-hz F         part B: mean OCR request rate, Poisson arrivals (default 20)
  --py-rt-samples N  part B against the Python node, per phase; 0 skips (default 400)
  --no-python        skip the Python baseline entirely
  --no-b             run part A only
  --compare-nice     also repeat part B with the config's `[[worker]] nice` removed
  --seed N           PRNG seed for signals, images and arrivals (default 1)
  --quick            smaller run for a smoke test (~40 s)
";

#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) samples: usize,
    pub(crate) warmup: usize,
    pub(crate) rounds: usize,
    pub(crate) gap: Duration,
    pub(crate) idle_spin_us: Vec<u64>,
    pub(crate) rt_samples: usize,
    pub(crate) rt_blocks: usize,
    pub(crate) vad_hz: f64,
    pub(crate) ocr_hz: f64,
    pub(crate) py_rt_samples: usize,
    pub(crate) python: bool,
    pub(crate) part_b: bool,
    pub(crate) compare_nice: bool,
    pub(crate) seed: u64,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            samples: 3000,
            warmup: 300,
            rounds: 6,
            gap: Duration::ZERO,
            idle_spin_us: vec![0, 50, 200],
            rt_samples: 2000,
            rt_blocks: 4,
            vad_hz: 100.0,
            ocr_hz: 20.0,
            py_rt_samples: 400,
            python: true,
            part_b: true,
            compare_nice: false,
            seed: 1,
        }
    }
}

fn parse_args(argv: &[String]) -> Result<Args> {
    let mut a = Args::default();
    let mut it = argv.iter();
    fn val<T: std::str::FromStr>(flag: &str, v: Option<&String>) -> Result<T> {
        let v = v.ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
        v.parse()
            .map_err(|_| anyhow!("{flag} = {v:?}: not a valid value\n{USAGE}"))
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // cargo appends --bench to harness = false targets.
            "--bench" => {}
            "--quick" => {
                a.samples = 600;
                a.warmup = 100;
                a.rounds = 3;
                a.rt_samples = 300;
                a.rt_blocks = 2;
                a.py_rt_samples = 150;
            }
            "--samples" => a.samples = val(arg, it.next())?,
            "--warmup" => a.warmup = val(arg, it.next())?,
            "--rounds" => a.rounds = val(arg, it.next())?,
            "--gap-us" => a.gap = Duration::from_micros(val(arg, it.next())?),
            "--idle-spin-us" => {
                let list: String = val(arg, it.next())?;
                a.idle_spin_us = list
                    .split(',')
                    .map(|v| val(arg, Some(&v.trim().to_string())))
                    .collect::<Result<_>>()?;
            }
            "--rt-samples" => a.rt_samples = val(arg, it.next())?,
            "--rt-blocks" => a.rt_blocks = val(arg, it.next())?,
            "--vad-hz" => a.vad_hz = val(arg, it.next())?,
            "--ocr-hz" => a.ocr_hz = val(arg, it.next())?,
            "--py-rt-samples" => a.py_rt_samples = val(arg, it.next())?,
            "--no-python" => a.python = false,
            "--no-b" => a.part_b = false,
            "--compare-nice" => a.compare_nice = true,
            "--seed" => a.seed = val(arg, it.next())?,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if a.idle_spin_us.is_empty() {
        bail!("--idle-spin-us needs at least one value");
    }
    if a.samples == 0 || a.rounds == 0 || a.rt_blocks == 0 || a.rt_samples == 0 {
        bail!("--samples, --rounds, --rt-samples and --rt-blocks must be at least 1");
    }
    if !(a.vad_hz > 0.0 && a.vad_hz <= 1000.0 && a.ocr_hz > 0.0 && a.ocr_hz <= 1000.0) {
        bail!("--vad-hz and --ocr-hz must be in (0, 1000]");
    }
    Ok(a)
}

pub(crate) fn ctx<T, E: Display>(r: std::result::Result<T, E>, what: &str) -> Result<T> {
    r.map_err(|e| anyhow!("{what}: {e}"))
}

// ------------------------------------------------------------------ main

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--ocr-load-child") {
        return load_child(&argv);
    }
    let args = parse_args(&argv)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,zenoh=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    harness::print_header("latency", &args);
    let started = Instant::now();
    let cpu = CpuMeter::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // One ORT environment per process: `Daemon::start` and the bare session
    // share it.
    let (env, lib) = reflexd::infer::runtime::environment(None)?;
    println!("onnxruntime: {}", lib.display());
    let setup = DaemonSetup::load()?;
    println!(
        "daemon config: {} (zenoh section replaced by a private 127.0.0.1 listener); VAD → {}, OCR → {}",
        setup.source,
        setup.vad.publish,
        setup
            .ocr
            .as_ref()
            .map(|o| o.publish.as_str())
            .unwrap_or("none")
    );
    let frames = Frames::new(args.seed);

    let py = if !args.python {
        println!("python baseline: skipped (--no-python)");
        None
    } else {
        match python_path() {
            None => {
                println!(
                    "python baseline: skipped (no venv python; run scripts/provision.sh or set REFLEXD_PYTHON)"
                );
                None
            }
            Some(p) => match PyNode::start(&p, args.samples) {
                Ok(n) => {
                    println!("python baseline: {} benches/py_node.py", p.display());
                    Some(n)
                }
                Err(e) => {
                    println!("python baseline: skipped ({e:#})");
                    None
                }
            },
        }
    };

    let a = part_a(&args, &rt, &env, &setup, &frames, py.as_ref())?;
    let b = if args.part_b {
        match part_b(&args, &rt, &setup, &frames, "") {
            Ok(iso) => Some(iso),
            Err(e) => {
                println!("part B: failed ({e:#})");
                None
            }
        }
    } else {
        None
    };
    let b_nice = match (args.part_b && args.compare_nice, setup.without_nice()) {
        (true, Some(plain)) => match part_b(&args, &rt, &plain, &frames, "*") {
            Ok(iso) => Some(iso),
            Err(e) => {
                println!("part B*: failed ({e:#})");
                None
            }
        },
        (true, None) => {
            println!("part B*: skipped ({} sets no worker nice)", setup.source);
            None
        }
        _ => None,
    };
    let b_py = match (&py, args.part_b && args.py_rt_samples > 0) {
        (Some(node), true) => match part_b_python(&args, node, &frames) {
            Ok(iso) => Some(iso),
            Err(e) => {
                println!("python part B: failed ({e:#})");
                None
            }
        },
        _ => None,
    };
    if let Some(node) = py {
        let done = node.proc.finish(|l| l.contains("\"done\""));
        println!(
            "python node counters: {}",
            done.unwrap_or_else(|| "none".into())
        );
    }

    println!();
    println!("## Summary");
    let base = a.echo.p50 + a.bare.p50;
    println!(
        "A: reflexd p50 {:.1} µs vs echo+bare {:.1} µs: ratio {:.3} (≤ 1.10 {}), overhead {:+.1} µs; vs minimal Rust node with the same hand-off {:.1} µs: ratio {:.3}",
        a.daemon.p50,
        base,
        a.daemon.p50 / base,
        verdict(a.daemon.p50 / base <= 1.10),
        a.daemon.p50 - base,
        a.ort_handoff.p50,
        a.daemon.p50 / a.ort_handoff.p50
    );
    if let Some((p, pb)) = &a.python {
        println!(
            "A: python node p50 {:.1} µs, overhead over echo+python-bare {:+.1} µs (ratio {:.3})",
            p.p50,
            p.p50 - (a.echo.p50 + pb.p50),
            p.p50 / (a.echo.p50 + pb.p50)
        );
    }
    if let Some(iso) = &b {
        println!(
            "B: reflexd VAD p99 unloaded {:.1} µs, loaded {:.1} µs: ratio {:.3} (≤ 1.2 {})",
            iso.unloaded.p99,
            iso.loaded.p99,
            iso.loaded.p99 / iso.unloaded.p99,
            verdict(iso.loaded.p99 / iso.unloaded.p99 <= 1.2)
        );
    }
    if let Some(iso) = &b_nice {
        println!(
            "B*: same config without worker nice: VAD p99 unloaded {:.1} µs, loaded {:.1} µs: ratio {:.3}",
            iso.unloaded.p99,
            iso.loaded.p99,
            iso.loaded.p99 / iso.unloaded.p99,
        );
    }
    if let Some(iso) = &b_py {
        println!(
            "B: python VAD p99 unloaded {:.1} µs, loaded {:.1} µs: ratio {:.3}; lost {}",
            iso.unloaded.p99,
            iso.loaded.p99,
            iso.loaded.p99 / iso.unloaded.p99,
            iso.loaded.lost
        );
    }
    cpu.report("the whole run");
    println!("total time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
