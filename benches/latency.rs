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

#[path = "common/plot.rs"]
mod plot;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// New audio samples per Silero VAD frame (32 ms at 16 kHz).
const FRAME: usize = 512;
/// Samples of the previous frame Silero expects in front of the new ones.
const CONTEXT: usize = 64;
const STATE_SHAPE: [usize; 3] = [2, 1, 128];
const SAMPLE_RATE: i64 = 16_000;
const OCR_SHAPE: [usize; 4] = [1, 3, 160, 640];
/// Distinct pre-built frames / OCR images cycled through, so no request is
/// generated on the clock.
const FRAME_VARIANTS: usize = 64;
const OCR_VARIANTS: usize = 4;
/// A reply later than this counts as lost; it also bounds every wait.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames kept in flight per client channel before replies are dropped.
const REPLY_CHANNEL: usize = 4096;
/// Time for an OCR backlog to build up (or drain) before a block is measured.
const LOAD_SETTLE: Duration = Duration::from_millis(1500);
/// The load generator exits on its own after this, whatever the parent does.
const LOAD_CHILD_MAX: Duration = Duration::from_secs(900);
/// How long a child process gets to start (Python imports, model loads).
const CHILD_START_TIMEOUT: Duration = Duration::from_secs(120);
const STREAM: &str = "mic0";
const USAGE: &str = "\
usage: cargo bench --bench latency [-- OPTIONS]
  --samples N        part A: measured round trips per target (default 3000)
  --warmup N         part A: warm-up round trips per target (default 300)
  --rounds N         part A: interleaved rounds (default 6)
  --gap-us N         part A: idle time between round trips (default 0)
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
struct Args {
    samples: usize,
    warmup: usize,
    rounds: usize,
    gap: Duration,
    rt_samples: usize,
    rt_blocks: usize,
    vad_hz: f64,
    ocr_hz: f64,
    py_rt_samples: usize,
    python: bool,
    part_b: bool,
    compare_nice: bool,
    seed: u64,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            samples: 3000,
            warmup: 300,
            rounds: 6,
            gap: Duration::ZERO,
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
    if a.samples == 0 || a.rounds == 0 || a.rt_blocks == 0 || a.rt_samples == 0 {
        bail!("--samples, --rounds, --rt-samples and --rt-blocks must be at least 1");
    }
    if !(a.vad_hz > 0.0 && a.vad_hz <= 1000.0 && a.ocr_hz > 0.0 && a.ocr_hz <= 1000.0) {
        bail!("--vad-hz and --ocr-hz must be in (0, 1000]");
    }
    Ok(a)
}

fn ctx<T, E: Display>(r: std::result::Result<T, E>, what: &str) -> Result<T> {
    r.map_err(|e| anyhow!("{what}: {e}"))
}

// ------------------------------------------------------------------ numbers

/// xorshift64*: deterministic and dependency-free; quality is irrelevant here.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in (0, 1]: never 0, so `ln` below is finite.
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
    fn exp(&mut self, rate: f64) -> f64 {
        -self.unit().ln() / rate
    }
}

#[derive(Clone, Copy, Default)]
struct Summary {
    n: usize,
    lost: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// Nearest-rank percentiles of µs values.
fn summarize(xs: &[f64], lost: usize) -> Summary {
    if xs.is_empty() {
        return Summary {
            lost,
            ..Summary::default()
        };
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Summary {
        n: v.len(),
        lost,
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: v[v.len() - 1],
    }
}

fn header() {
    println!(
        "| {:<38} | {:>6} | {:>4} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} |",
        "target", "n", "lost", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    println!(
        "|{:-<40}|{:->8}|{:->6}|{:->11}|{:->11}|{:->11}|{:->11}|{:->11}|",
        "", "", "", "", "", "", "", ""
    );
}

fn row(name: &str, s: &Summary) {
    println!(
        "| {:<38} | {:>6} | {:>4} | {:>9.1} | {:>9.1} | {:>9.1} | {:>9.1} | {:>9.1} |",
        name, s.n, s.lost, s.p50, s.p90, s.p99, s.p999, s.max
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

// ------------------------------------------------------------------ machine

fn utc_now() -> String {
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

fn print_machine(args: &Args) {
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
    println!("# reflexd latency benchmark");
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
        "command: cargo bench --bench latency -- {}",
        argv.iter()
            .filter(|a| *a != "--bench")
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("args:    {args:?}");
}

// ------------------------------------------------------------------ zenoh

/// A loopback-only peer configuration; nothing is discovered, everything is
/// an explicit 127.0.0.1 endpoint.
fn peer_config(listen: Option<u16>, connect: Option<u16>) -> Result<zenoh::Config> {
    let eps = |p: Option<u16>| -> Vec<String> { p.map(endpoint).into_iter().collect() };
    let json = serde_json::json!({
        "mode": "peer",
        "listen": { "endpoints": eps(listen) },
        "connect": { "endpoints": eps(connect) },
        "scouting": { "multicast": { "enabled": false }, "gossip": { "enabled": false } },
    });
    ctx(zenoh::Config::from_json5(&json.to_string()), "zenoh config")
}

fn endpoint(port: u16) -> String {
    format!("tcp/127.0.0.1:{port}")
}

/// A port the kernel just handed out on 127.0.0.1, so concurrent runs (and
/// other engineers' tests) do not collide on a fixed number.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// How a reply identifies the request it answers.
#[derive(Clone, Copy)]
enum ReplyFormat {
    /// The request's `seq=N` attachment comes back (echo, Python node).
    Attachment,
    /// A reflexd prediction (safetensors metadata) or JSON error message.
    Reflexd,
}

/// The daemon's own account of a frame, from the prediction's metadata.
#[derive(Clone, Copy)]
struct DaemonTiming {
    queue_us: u64,
    inference_us: u64,
    e2e_us: u64,
    worker: u64,
}

struct Reply {
    seq: u64,
    at: Instant,
    error: Option<String>,
    timing: Option<DaemonTiming>,
}

fn parse_reply(fmt: ReplyFormat, s: &Sample, at: Instant) -> Option<Reply> {
    match fmt {
        ReplyFormat::Attachment => {
            let a = s.attachment()?.to_bytes();
            let seq = std::str::from_utf8(&a)
                .ok()?
                .split(';')
                .find_map(|kv| kv.strip_prefix("seq="))?
                .parse()
                .ok()?;
            Some(Reply {
                seq,
                at,
                error: None,
                timing: None,
            })
        }
        ReplyFormat::Reflexd => {
            let bytes = s.payload().to_bytes();
            if s.key_expr().as_str().ends_with("/error") {
                let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
                return Some(Reply {
                    seq: v["seq"].as_u64()?,
                    at,
                    error: Some(v["code"].as_str().unwrap_or("?").to_string()),
                    timing: None,
                });
            }
            let (_, h) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
            let m = h.metadata().as_ref()?;
            let num = |k: &str| m.get(k).and_then(|v| v.parse::<u64>().ok());
            Some(Reply {
                seq: num("seq")?,
                at,
                error: None,
                timing: Some(DaemonTiming {
                    queue_us: num("queue_us")?,
                    inference_us: num("inference_us")?,
                    e2e_us: num("e2e_us")?,
                    worker: num("worker")?,
                }),
            })
        }
    }
}

enum Outcome {
    Ok(f64, Option<DaemonTiming>),
    Error(String),
    Lost,
}

/// The measuring side: one zenoh session connected to the target, a
/// publisher with the daemon's own QoS, and a callback subscriber that
/// timestamps replies on arrival (before any parsing or thread hand-off).
struct Client {
    publisher: zenoh::pubsub::Publisher<'static>,
    replies: Receiver<Reply>,
    _sub: zenoh::pubsub::Subscriber<()>,
    session: zenoh::Session,
    next_seq: u64,
}

impl Client {
    fn connect(port: u16, req_key: &str, reply_key: &str, fmt: ReplyFormat) -> Result<Client> {
        let session = ctx(zenoh::open(peer_config(None, Some(port))?).wait(), "open")?;
        let publisher = ctx(
            session
                .declare_publisher(req_key.to_string())
                .congestion_control(CongestionControl::Drop)
                .priority(Priority::DataHigh)
                .express(true)
                .wait(),
            "declare publisher",
        )?;
        let (tx, rx) = channel::bounded(REPLY_CHANNEL);
        let sub = ctx(
            session
                .declare_subscriber(reply_key.to_string())
                .callback(move |s| {
                    let at = Instant::now();
                    if let Some(r) = parse_reply(fmt, &s, at) {
                        let _ = tx.try_send(r);
                    }
                })
                .wait(),
            "declare subscriber",
        )?;
        Ok(Client {
            publisher,
            replies: rx,
            _sub: sub,
            session,
            next_seq: 0,
        })
    }

    fn round_trip(&mut self, payload: &[u8], timeout: Duration) -> Outcome {
        let seq = self.next_seq;
        self.next_seq += 1;
        let body = ZBytes::from(payload.to_vec());
        let att = format!("seq={seq}");
        let t0 = Instant::now();
        if self.publisher.put(body).attachment(att).wait().is_err() {
            return Outcome::Lost;
        }
        let deadline = t0 + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(r) if r.seq == seq => {
                    return match r.error {
                        Some(code) => Outcome::Error(code),
                        None => Outcome::Ok(r.at.duration_since(t0).as_secs_f64() * 1e6, r.timing),
                    };
                }
                // A late reply to an earlier, already-counted-as-lost frame.
                Ok(_) => continue,
                Err(_) => return Outcome::Lost,
            }
        }
    }

    /// Sends frames until one comes back: the peer link and the remote
    /// subscriber declaration take a moment to settle after connecting.
    fn wait_ready(&mut self, payload: &[u8], what: &str) -> Result<()> {
        for _ in 0..100 {
            if let Outcome::Ok(..) = self.round_trip(payload, Duration::from_millis(100)) {
                return Ok(());
            }
        }
        bail!("{what}: no reply within 10 s of connecting")
    }

    fn close(self) {
        let _ = self.session.close().wait();
    }
}

/// Results of one target.
#[derive(Default)]
struct Series {
    lat: Vec<f64>,
    lost: usize,
    errors: BTreeMap<String, usize>,
    timing: Vec<DaemonTiming>,
    /// Per reflexd reply: client-observed time minus the daemon's `e2e_us`,
    /// i.e. both zenoh hops plus encode and put.
    outside: Vec<f64>,
}

impl Series {
    fn record(&mut self, o: Outcome) {
        match o {
            Outcome::Ok(us, t) => {
                self.lat.push(us);
                if let Some(t) = t {
                    self.outside.push(us - t.e2e_us as f64);
                    self.timing.push(t);
                }
            }
            Outcome::Error(code) => *self.errors.entry(code).or_default() += 1,
            Outcome::Lost => self.lost += 1,
        }
    }
    fn summary(&self) -> Summary {
        summarize(&self.lat, self.lost + self.errors.values().sum::<usize>())
    }
}

/// Pre-built audio: a few tones with a moving envelope plus noise, so the
/// model sees speech-like energy changes rather than a constant.
struct Frames {
    f32s: Vec<Vec<f32>>,
    bytes: Vec<Vec<u8>>,
}

impl Frames {
    fn new(seed: u64) -> Frames {
        let mut rng = Rng::new(seed);
        let mut f32s = Vec::with_capacity(FRAME_VARIANTS);
        for k in 0..FRAME_VARIANTS {
            let env = 0.5 + 0.5 * (k as f32 * 0.4).sin();
            let frame: Vec<f32> = (0..FRAME)
                .map(|i| {
                    let t = (k * FRAME + i) as f32 / SAMPLE_RATE as f32;
                    let tone = (2.0 * std::f32::consts::PI * 220.0 * t).sin()
                        + 0.5 * (2.0 * std::f32::consts::PI * 660.0 * t).sin();
                    let noise = rng.unit() as f32 - 0.5;
                    0.2 * env * tone + 0.02 * noise
                })
                .collect();
            f32s.push(frame);
        }
        let bytes = f32s
            .iter()
            .map(|f| f.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        Frames { f32s, bytes }
    }
    fn bytes(&self, i: usize) -> &[u8] {
        &self.bytes[i % FRAME_VARIANTS]
    }
}

/// Runs `n` round trips back to back (after `gap`), or paced at `hz` with
/// missed slots skipped, like a sensor that does not wait. Stops early at
/// `cap` so an overloaded target cannot stretch the run.
fn measure(
    client: &mut Client,
    frames: &Frames,
    n: usize,
    pace: Pace,
    cap: Duration,
    into: Option<&mut Series>,
) {
    let mut scratch = Series::default();
    let into = into.unwrap_or(&mut scratch);
    let start = Instant::now();
    let mut slot = 0u64;
    for i in 0..n {
        if start.elapsed() > cap {
            break;
        }
        match pace {
            Pace::Gap(g) if !g.is_zero() => std::thread::sleep(g),
            Pace::Gap(_) => {}
            Pace::Hz(hz) => {
                let period = Duration::from_secs_f64(1.0 / hz);
                let now = start.elapsed();
                let due = period * slot as u32;
                if due > now {
                    std::thread::sleep(due - now);
                } else {
                    slot = (now.as_secs_f64() * hz).ceil() as u64;
                    let due = period * slot as u32;
                    std::thread::sleep(due.saturating_sub(start.elapsed()));
                }
                slot += 1;
            }
        }
        into.record(client.round_trip(frames.bytes(i), REPLY_TIMEOUT));
    }
}

#[derive(Clone, Copy)]
enum Pace {
    Gap(Duration),
    Hz(f64),
}

/// Reference peers for part A, all on one listening session, each on its own
/// key prefix and replying with the daemon's QoS. They bracket reflexd: the
/// plain echo is the transport floor; the others add, one at a time, what
/// reflexd must do (hand the frame to a parked thread; run the model there).
#[derive(Clone, Copy, PartialEq)]
enum PeerKind {
    /// Re-publishes the frame from the subscriber callback.
    Echo,
    /// Hands the frame to a parked thread, which re-publishes it.
    EchoHandoff,
    /// Runs Silero (bare `ort`) in the callback and publishes the probability.
    OrtCallback,
    /// Hands the frame to a parked thread that runs Silero and publishes:
    /// the least code that has reflexd's architecture.
    OrtHandoff,
}

impl PeerKind {
    const ALL: [PeerKind; 4] = [
        PeerKind::Echo,
        PeerKind::EchoHandoff,
        PeerKind::OrtCallback,
        PeerKind::OrtHandoff,
    ];
    fn prefix(self) -> &'static str {
        match self {
            PeerKind::Echo => "bench/echo",
            PeerKind::EchoHandoff => "bench/echoh",
            PeerKind::OrtCallback => "bench/rnode",
            PeerKind::OrtHandoff => "bench/rnodeh",
        }
    }
    fn runs_model(self) -> bool {
        matches!(self, PeerKind::OrtCallback | PeerKind::OrtHandoff)
    }
}

type Frame = (ZBytes, Option<ZBytes>);

/// Bound on recorded `Session::run` durations per peer.
const MAX_STEP_TIMES: usize = 1 << 20;

/// The reply a model-running peer sends: the speech probability. The run
/// time is recorded so it can be set against reflexd's `inference_us`.
fn vad_reply(vad: &mut BareVad, payload: &ZBytes, times: &Mutex<Vec<f64>>) -> Vec<u8> {
    let frame: Vec<f32> = payload
        .to_bytes()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let t0 = Instant::now();
    let p = vad.step(&frame);
    let us = t0.elapsed().as_secs_f64() * 1e6;
    let mut t = times.lock().unwrap_or_else(|e| e.into_inner());
    if t.len() < MAX_STEP_TIMES {
        t.push(us);
    }
    match p {
        Ok(p) => p.to_le_bytes().to_vec(),
        Err(_) => Vec::new(),
    }
}

struct Peers {
    subs: Vec<zenoh::pubsub::Subscriber<()>>,
    session: zenoh::Session,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// `Session::run` durations, per model-running peer.
    step_times: Vec<(PeerKind, Arc<Mutex<Vec<f64>>>)>,
}

impl Peers {
    fn start(port: u16, vad: impl Fn() -> Result<BareVad>) -> Result<Peers> {
        let session = ctx(zenoh::open(peer_config(Some(port), None)?).wait(), "open")?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut subs = Vec::new();
        let mut threads = Vec::new();
        let mut step_times = Vec::new();
        for kind in PeerKind::ALL {
            let times = Arc::new(Mutex::new(Vec::new()));
            if kind.runs_model() {
                step_times.push((kind, times.clone()));
            }
            let publisher = ctx(
                session
                    .declare_publisher(format!("{}/out/{STREAM}", kind.prefix()))
                    .congestion_control(CongestionControl::Drop)
                    .priority(Priority::DataHigh)
                    .express(true)
                    .wait(),
                "declare peer publisher",
            )?;
            let mut model = if kind.runs_model() {
                Some(vad()?)
            } else {
                None
            };
            let input = format!("{}/in/*", kind.prefix());
            let sub = match kind {
                PeerKind::Echo => session.declare_subscriber(input).callback(move |s| {
                    let _ = publisher
                        .put(s.payload().clone())
                        .attachment(s.attachment().cloned())
                        .wait();
                }),
                PeerKind::OrtCallback => {
                    let model = Mutex::new(model.take().expect("model peer"));
                    session.declare_subscriber(input).callback(move |s| {
                        let mut m = model.lock().unwrap_or_else(|e| e.into_inner());
                        let reply = vad_reply(&mut m, s.payload(), &times);
                        let _ = publisher
                            .put(reply)
                            .attachment(s.attachment().cloned())
                            .wait();
                    })
                }
                PeerKind::EchoHandoff | PeerKind::OrtHandoff => {
                    let (tx, rx) = channel::bounded::<Frame>(16);
                    let stop = stop.clone();
                    threads.push(
                        std::thread::Builder::new()
                            .name("peer-worker".into())
                            .spawn(move || {
                                while !stop.load(Relaxed) {
                                    let (payload, att) =
                                        match rx.recv_timeout(Duration::from_millis(100)) {
                                            Ok(f) => f,
                                            Err(channel::RecvTimeoutError::Timeout) => continue,
                                            Err(channel::RecvTimeoutError::Disconnected) => break,
                                        };
                                    let reply = match model.as_mut() {
                                        Some(m) => ZBytes::from(vad_reply(m, &payload, &times)),
                                        None => payload,
                                    };
                                    let _ = publisher.put(reply).attachment(att).wait();
                                }
                            })?,
                    );
                    session.declare_subscriber(input).callback(move |s| {
                        let _ = tx.try_send((s.payload().clone(), s.attachment().cloned()));
                    })
                }
            };
            subs.push(ctx(sub.wait(), "declare peer subscriber")?);
        }
        Ok(Peers {
            subs,
            session,
            stop,
            threads,
            step_times,
        })
    }

    fn step_times(&self, kind: PeerKind) -> Vec<f64> {
        self.step_times
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, t)| t.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    fn close(mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.subs.clear();
        let _ = self.session.close().wait();
    }
}

// ------------------------------------------------------------------ bare ORT

/// Silero VAD straight through `ort`, with the session options reflexd's
/// engine uses (so the difference is the daemon, not the thread pool) and
/// pre-allocated tensors updated in place: the least a Rust node can do.
struct BareVad {
    session: Session,
    input: Tensor<f32>,
    state: Tensor<f32>,
    sr: Tensor<i64>,
}

impl BareVad {
    fn new(env: &Environment, model: &Path, intra_threads: usize) -> Result<BareVad> {
        let b = ctx(Session::builder(env), "session builder")?;
        let b = ctx(
            b.with_optimization_level(GraphOptimizationLevel::Level3),
            "optimization level",
        )?;
        let b = ctx(b.with_intra_threads(intra_threads), "intra threads")?;
        let b = ctx(b.with_inter_threads(1), "inter threads")?;
        let b = ctx(b.with_intra_op_spinning(false), "spinning")?;
        let mut b = ctx(
            b.with_execution_providers([ort::ep::CPU::default().build()]),
            "cpu provider",
        )?;
        let session = ctx(b.commit_from_file(model), "load silero_vad.onnx")?;
        Ok(BareVad {
            session,
            input: ctx(
                Tensor::from_array(([1usize, CONTEXT + FRAME], vec![0f32; CONTEXT + FRAME])),
                "input tensor",
            )?,
            state: ctx(
                Tensor::from_array((STATE_SHAPE, vec![0f32; STATE_SHAPE.iter().product()])),
                "state tensor",
            )?,
            sr: ctx(Tensor::from_array(((), vec![SAMPLE_RATE])), "sr tensor")?,
        })
    }

    fn step(&mut self, frame: &[f32]) -> Result<f32> {
        let (_, x) = self.input.extract_tensor_mut();
        // Context carry: the tail of the previous input leads the next one.
        x.copy_within(FRAME.., 0);
        x[CONTEXT..].copy_from_slice(frame);
        let out = ctx(
            self.session.run(ort::inputs![
                "input" => &self.input,
                "state" => &self.state,
                "sr" => &self.sr,
            ]),
            "run",
        )?;
        let (_, prob) = ctx(out["output"].try_extract_tensor::<f32>(), "output")?;
        let prob = prob[0];
        let (_, st) = ctx(out["stateN"].try_extract_tensor::<f32>(), "stateN")?;
        self.state.extract_tensor_mut().1.copy_from_slice(st);
        Ok(prob)
    }
}

fn bare_series(vad: &mut BareVad, frames: &Frames, n: usize, into: &mut Series) -> Result<()> {
    for i in 0..n {
        let f = &frames.f32s[i % FRAME_VARIANTS];
        let t0 = Instant::now();
        let p = vad.step(f)?;
        into.lat.push(t0.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(p);
    }
    Ok(())
}

// ------------------------------------------------------------------ daemon

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const VAD_MODEL: &str = "models/fetched/silero_vad.onnx";
const OCR_MODEL: &str = "models/fetched/ch_PP-OCRv4_det_infer.onnx";
const DEMO_CONFIG: &str = "config/demo.toml";

/// Used only when `config/demo.toml` is missing or has no VAD pipeline: the
/// same shape of deployment (two levels, worker 0 reserved for real time).
const BUILTIN_CONFIG: &str = r#"
[runtime]
intra_op_threads = 1
[[level]]
name = "realtime"
[[level]]
name = "camera"
[[worker]]
levels = ["realtime"]
[[worker]]
levels = ["realtime", "camera"]
[[pipeline]]
name = "vad"
model = "../models/fetched/silero_vad.onnx"
input = "robot/mic/*"
output = "reflexd/vad"
level = "realtime"
deadline_ms = 30
overflow = "latest"
format = "raw"
raw = { tensor = "input", dtype = "f32", shape = [1, 512] }
constants.sr = { dtype = "i64", shape = [], data = [16000] }
state = [{ input = "state", output = "stateN" }]
context = [{ input = "input", keep = 64 }]
[[pipeline]]
name = "textdet"
model = "../models/fetched/ch_PP-OCRv4_det_infer.onnx"
input = "robot/camera/*"
output = "reflexd/textdet"
level = "camera"
deadline_ms = 250
overflow = "latest"
format = "safetensors"
warmup = { x = [1, 3, 160, 640] }
"#;

/// Where a pipeline is reached: the concrete key a client publishes on and
/// the pattern its predictions and errors arrive under.
#[derive(Clone, Debug)]
struct Route {
    name: String,
    publish: String,
    replies: String,
}

/// The daemon configuration under test: the shipped demo config (so the
/// benchmark measures what `reflexd run -c config/demo.toml` runs), with
/// only the zenoh section replaced by a private loopback listener.
struct DaemonSetup {
    table: toml::Table,
    base: PathBuf,
    source: String,
    vad: Route,
    ocr: Option<Route>,
}

impl DaemonSetup {
    fn load() -> Result<DaemonSetup> {
        let path = repo_dir().join(DEMO_CONFIG);
        let base = repo_dir().join("config");
        let demo = std::fs::read_to_string(&path)
            .map_err(|e| anyhow!("{e}"))
            .and_then(|t| ctx(toml::from_str::<toml::Table>(&t), "parse"))
            .and_then(|t| DaemonSetup::from_table(t, base.clone(), DEMO_CONFIG.into()));
        match demo {
            Ok(s) => Ok(s),
            Err(e) => {
                println!("config: {DEMO_CONFIG} unusable ({e:#}); using the built-in equivalent");
                let t = ctx(toml::from_str::<toml::Table>(BUILTIN_CONFIG), "built-in")?;
                DaemonSetup::from_table(t, base, "built-in".into())
            }
        }
    }

    fn from_table(table: toml::Table, base: PathBuf, source: String) -> Result<DaemonSetup> {
        let pipelines = table
            .get("pipeline")
            .and_then(|p| p.as_array())
            .ok_or_else(|| anyhow!("no [[pipeline]]"))?;
        let route = |needle: &str| -> Option<Route> {
            let p = pipelines.iter().find(|p| {
                p.get("model")
                    .and_then(|m| m.as_str())
                    .is_some_and(|m| m.contains(needle))
            })?;
            let s = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let input = s("input")?;
            let output = s("output")?;
            // One stream: the first wildcard chunk becomes a stream id.
            let publish = input
                .split('/')
                .map(|c| if c.contains('*') { "bench" } else { c })
                .collect::<Vec<_>>()
                .join("/");
            Some(Route {
                name: s("name")?,
                publish,
                replies: format!("{output}/**"),
            })
        };
        let vad = route("silero").ok_or_else(|| anyhow!("no Silero VAD pipeline"))?;
        let ocr = route("det_infer");
        Ok(DaemonSetup {
            table,
            base,
            source,
            vad,
            ocr,
        })
    }

    /// The config with a private listener on `port` and nothing else that
    /// could reach beyond loopback.
    fn config(&self, port: u16) -> Result<Config> {
        let mut t = self.table.clone();
        let mut z = toml::Table::new();
        z.insert("mode".into(), "peer".into());
        z.insert(
            "listen".into(),
            toml::Value::Array(vec![endpoint(port).into()]),
        );
        z.insert("scouting".into(), false.into());
        t.insert("zenoh".into(), toml::Value::Table(z));
        let text = ctx(toml::to_string(&t), "serialize config")?;
        Ok(Config::from_toml(&text, &self.base)?)
    }

    /// The same setup with every `[[worker]] nice` and `sched_idle` removed;
    /// `None` when the config sets neither, so there is nothing to compare.
    fn without_nice(&self) -> Option<DaemonSetup> {
        let mut table = self.table.clone();
        let workers = table.get_mut("worker")?.as_array_mut()?;
        let mut removed = false;
        for w in workers.iter_mut() {
            if let Some(t) = w.as_table_mut() {
                removed |= t.remove("nice").is_some();
                removed |= t.remove("sched_idle").is_some();
            }
        }
        removed.then(|| DaemonSetup {
            table,
            base: self.base.clone(),
            source: format!("{} without worker nice/sched_idle", self.source),
            vad: self.vad.clone(),
            ocr: self.ocr.clone(),
        })
    }

    /// "worker 0: realtime; worker 1: realtime+camera (nice 10)".
    fn workers_described(&self) -> String {
        let Ok(c) = self.config(0) else {
            return String::new();
        };
        let ws: Vec<String> = c
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let names: Vec<&str> = w.levels.iter().map(|&l| c.levels[l].as_str()).collect();
                format!("worker {i}: {}{}", names.join("+"), w.policy)
            })
            .collect();
        format!("; {}", ws.join(", "))
    }

    fn vad_pipeline(&self) -> Result<reflexd::config::PipelineConfig> {
        let c = self.config(0)?;
        c.pipelines
            .into_iter()
            .find(|p| p.name == self.vad.name)
            .ok_or_else(|| anyhow!("VAD pipeline vanished"))
    }
}

fn print_stats(stats: &[PipelineSnapshot]) {
    for s in stats {
        let errs: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "  daemon.stats {:<8}: received={} ok={} errors: {}",
            s.name,
            s.received,
            s.ok,
            if errs.is_empty() {
                "none".to_string()
            } else {
                errs.join(" ")
            }
        );
    }
}

/// reflexd's inference path without zenoh or threads: `infer::run` on a
/// session built and warmed by the daemon's own start-up path, looped on this
/// thread. Separates what the daemon adds around `Session::run` from what
/// the hand-off adds.
struct DaemonPath {
    runner: reflexd::infer::Runner,
    pipeline: reflexd::config::PipelineConfig,
    spec: reflexd::infer::Spec,
    state: reflexd::infer::StreamState,
}

impl DaemonPath {
    fn new(env: &Environment, setup: &DaemonSetup) -> Result<DaemonPath> {
        let pipeline = setup.vad_pipeline()?;
        // The daemon's own start-up path: same session options, same warm-up.
        let cfg = setup.config(0)?;
        let loaded = reflexd::infer::warm::load_and_warm(env, &cfg.runtime, &pipeline)?;
        let (runner, spec) = (loaded.runner, loaded.spec);
        let state = reflexd::infer::StreamState::new(&spec, pipeline.context.len(), Instant::now())
            .map_err(|e| anyhow!("stream state: {e}"))?;
        Ok(DaemonPath {
            runner,
            pipeline,
            spec,
            state,
        })
    }

    fn series(&mut self, frames: &Frames, n: usize, into: &mut Series) -> Result<()> {
        let name = match &self.pipeline.format {
            reflexd::config::InputFormat::Raw { tensor, .. } => tensor.clone(),
            _ => "input".into(),
        };
        for i in 0..n {
            let t = reflexd::tensor::Tensor::new(
                name.clone(),
                Dtype::F32,
                vec![1, FRAME],
                frames.bytes(i).to_vec(),
            );
            let t0 = Instant::now();
            let mut items = [reflexd::infer::Item {
                tensors: std::slice::from_ref(&t),
                state: Some(&mut self.state),
            }];
            let ran = reflexd::infer::run::run(&mut self.runner, &self.spec, &mut items)
                .map_err(|e| anyhow!("infer::run: {e}"))?;
            let out = ran
                .outputs(&self.spec, 0)
                .map_err(|e| anyhow!("outputs: {e}"))?
                .len();
            into.lat.push(t0.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(out);
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ children

/// A child process we started, spoken to over stdin/stdout lines. Closing
/// stdin is the stop signal; it is killed (by its own handle) only if it
/// does not exit in time.
struct ChildProc {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl ChildProc {
    fn spawn(name: &'static str, mut cmd: Command) -> Result<ChildProc> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow!("{name}: cannot start: {e}"))?;
        LIVE_CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = channel::bounded(64);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ChildProc {
            name,
            stdin: child.stdin.take(),
            child,
            lines: rx,
        })
    }

    /// Next line that satisfies `want`, skipping others, within `timeout`.
    fn expect(&self, timeout: Duration, want: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if want(&l) => return Ok(l),
                Ok(_) => continue,
                Err(_) => bail!("{}: no expected output within {timeout:?}", self.name),
            }
        }
    }

    fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: stdin closed", self.name))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes stdin and returns the child's last line matching `want`.
    fn finish(mut self, want: impl Fn(&str) -> bool) -> Option<String> {
        self.stdin = None;
        let last = self.expect(Duration::from_secs(10), want).ok();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{}: did not exit; killing pid {}",
            self.name,
            self.child.id()
        );
        last
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let pid = self.child.id();
        LIVE_CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != pid);
    }
}

fn python_path() -> Option<PathBuf> {
    let p = std::env::var_os("REFLEXD_PYTHON")
        .map(PathBuf::from)
        .or_else(|| reflexd::infer::runtime::cache_dir().map(|c| c.join("venv/bin/python")))?;
    p.is_file().then_some(p)
}

struct PyNode {
    proc: ChildProc,
    port: u16,
    bare: Summary,
}

impl PyNode {
    fn start(python: &Path, bare_runs: usize) -> Result<PyNode> {
        let port = free_port()?;
        let root = repo_dir();
        let mut cmd = Command::new(python);
        cmd.arg(root.join("benches/py_node.py"))
            .arg("--listen")
            .arg(endpoint(port))
            .arg("--vad")
            .arg(root.join(VAD_MODEL))
            .arg("--ocr")
            .arg(root.join(OCR_MODEL))
            .arg("--bare-runs")
            .arg(bare_runs.to_string());
        let proc = ChildProc::spawn("py_node", cmd)?;
        let line = proc.expect(CHILD_START_TIMEOUT, |l| l.contains("\"ready\""))?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        let b = &v["bare"];
        let f = |k: &str| b[k].as_f64().unwrap_or(f64::NAN);
        Ok(PyNode {
            proc,
            port,
            bare: Summary {
                n: b["n"].as_u64().unwrap_or(0) as usize,
                lost: 0,
                p50: f("p50_us"),
                p90: f("p90_us"),
                p99: f("p99_us"),
                p999: f("p999_us"),
                max: f("max_us"),
            },
        })
    }
}

/// The OCR load generator: this same binary re-executed with
/// `--ocr-load-child`, so the load comes from another process's zenoh
/// session and its serialisation work does not run on our threads.
struct LoadGen {
    proc: ChildProc,
}

impl LoadGen {
    fn start(port: u16, in_key: &str, replies: &str, hz: f64, seed: u64) -> Result<LoadGen> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["--ocr-load-child", "--port", &port.to_string()])
            .args(["--in", in_key, "--replies", replies])
            .args(["--hz", &hz.to_string(), "--seed", &seed.to_string()]);
        let proc = ChildProc::spawn("ocr-load", cmd)?;
        proc.expect(Duration::from_secs(30), |l| l == "READY")?;
        Ok(LoadGen { proc })
    }
    fn set(&mut self, on: bool) -> Result<()> {
        self.proc.send(if on { "on" } else { "off" })
    }
    fn finish(self) -> String {
        self.proc
            .finish(|l| l.starts_with("DONE"))
            .unwrap_or_else(|| "no report".into())
    }
}

fn ocr_request(rng: &mut Rng, k: usize) -> Vec<u8> {
    let [_, c, h, w] = OCR_SHAPE;
    let mut vals = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                // Dark strokes on a light page: glyph-sized bars give the
                // detector something to respond to, noise keeps it honest.
                let stroke = (x / 7 + y / 23 + ch + k).is_multiple_of(5) && (y % 23) > 6;
                let base = if stroke { 0.1 } else { 0.9 };
                vals.push(base + 0.1 * (rng.unit() as f32 - 0.5));
            }
        }
    }
    let t = reflexd::tensor::Tensor::new(
        "x",
        Dtype::F32,
        OCR_SHAPE.to_vec(),
        vals.iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    wire::encode_request(
        &[t],
        &RequestMeta {
            id: Some(format!("ocr-{k}")),
            ..Default::default()
        },
    )
}

/// Child mode: publishes OCR requests with exponential gaps while switched
/// on ("on"/"off" lines on stdin), counts replies, stops at stdin EOF.
fn load_child(argv: &[String]) -> Result<()> {
    let get = |flag: &str| -> Result<&str> {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1))
            .map(|s| s.as_str())
            .ok_or_else(|| anyhow!("ocr-load: missing {flag}"))
    };
    let port: u16 = get("--port")?.parse()?;
    let hz: f64 = get("--hz")?.parse()?;
    let mut rng = Rng::new(get("--seed")?.parse::<u64>()? ^ 0x0C2);
    let payloads: Vec<ZBytes> = (0..OCR_VARIANTS)
        .map(|k| ZBytes::from(ocr_request(&mut rng, k)))
        .collect();
    let session = ctx(zenoh::open(peer_config(None, Some(port))?).wait(), "open")?;
    let publisher = ctx(
        session.declare_publisher(get("--in")?.to_string()).wait(),
        "declare publisher",
    )?;
    let ok = Arc::new(AtomicU64::new(0));
    let err = Arc::new(AtomicU64::new(0));
    let (ok2, err2) = (ok.clone(), err.clone());
    let _sub = ctx(
        session
            .declare_subscriber(get("--replies")?.to_string())
            .callback(move |s| {
                if s.key_expr().as_str().ends_with("/error") {
                    err2.fetch_add(1, Relaxed);
                } else {
                    ok2.fetch_add(1, Relaxed);
                }
            })
            .wait(),
        "declare subscriber",
    )?;
    let on = Arc::new(AtomicBool::new(false));
    let quit = Arc::new(AtomicBool::new(false));
    let (on2, quit2) = (on.clone(), quit.clone());
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(|l| l.ok()) {
            match line.trim() {
                "on" => on2.store(true, Relaxed),
                "off" => on2.store(false, Relaxed),
                _ => {}
            }
        }
        quit2.store(true, Relaxed);
    });
    println!("READY");
    std::io::stdout().flush()?;
    let start = Instant::now();
    let mut next = Instant::now();
    let mut sent = 0u64;
    while !quit.load(Relaxed) && start.elapsed() < LOAD_CHILD_MAX {
        if !on.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(2));
            next = Instant::now();
            continue;
        }
        next += Duration::from_secs_f64(rng.exp(hz));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let body = payloads[sent as usize % OCR_VARIANTS].clone();
        if publisher.put(body).wait().is_ok() {
            sent += 1;
        }
    }
    // Replies to the last requests are still in flight.
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "DONE sent={sent} replies_ok={} replies_error={}",
        ok.load(Relaxed),
        err.load(Relaxed)
    );
    std::io::stdout().flush()?;
    let _ = session.close().wait();
    Ok(())
}

// ------------------------------------------------------------------ cpu

/// Machine-wide and own CPU time over a section, from /proc: on a shared VM
/// the first question about any latency figure is who else was running.
struct CpuMeter {
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
static LIVE_CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

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
    fn start() -> CpuMeter {
        CpuMeter {
            machine: machine_ticks(),
            own: own_ticks(),
            procs: all_procs(),
        }
    }
    fn report(&self, what: &str) {
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

// ------------------------------------------------------------------ part A

struct PartA {
    echo: Summary,
    bare: Summary,
    daemon: Summary,
    /// The minimal Rust node with reflexd's hand-off (diagnostic).
    ort_handoff: Summary,
    python: Option<(Summary, Summary)>,
}

fn part_a(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    env: &Environment,
    setup: &DaemonSetup,
    frames: &Frames,
    py: Option<&PyNode>,
) -> Result<PartA> {
    let intra = setup.config(0)?.runtime.intra_op_threads;
    let model = repo_dir().join(VAD_MODEL);
    let mut bare = BareVad::new(env, &model, intra)?;
    let mut path = DaemonPath::new(env, setup)?;

    let peer_port = free_port()?;
    let peers = Peers::start(peer_port, || BareVad::new(env, &model, intra))?;
    let connect = |port: u16, publish: &str, replies: &str, fmt: ReplyFormat, what: &str| {
        let mut c = Client::connect(port, publish, replies, fmt)?;
        c.wait_ready(frames.bytes(0), what)?;
        Ok::<_, anyhow::Error>(c)
    };
    let mut peer_clients = Vec::new();
    for kind in PeerKind::ALL {
        let p = kind.prefix();
        let c = connect(
            peer_port,
            &format!("{p}/in/{STREAM}"),
            &format!("{p}/out/*"),
            ReplyFormat::Attachment,
            p,
        )?;
        peer_clients.push((c, Series::default()));
    }

    let d_port = free_port()?;
    let daemon = rt.block_on(Daemon::start(setup.config(d_port)?))?;
    let mut d_client = connect(
        d_port,
        &setup.vad.publish,
        &setup.vad.replies,
        ReplyFormat::Reflexd,
        "reflexd",
    )?;
    let mut py_client = match py {
        Some(node) => Some(connect(
            node.port,
            &format!("bench/py/vad/in/{STREAM}"),
            "bench/py/vad/out/*",
            ReplyFormat::Attachment,
            "python node",
        )?),
        None => None,
    };

    let cpu = CpuMeter::start();
    let mut s_bare = Series::default();
    let mut s_path = Series::default();
    let mut s_daemon = Series::default();
    let mut s_py = Series::default();
    let per_round = args.samples.div_ceil(args.rounds);
    let gap = Pace::Gap(args.gap);
    let cap = Duration::from_secs(600);
    for r in 0..args.rounds {
        // Full warm-up once; a short one per round re-heats caches after the
        // other targets ran.
        let warm = if r == 0 {
            args.warmup
        } else {
            args.warmup / 10
        };
        let n = per_round.min(args.samples.saturating_sub(r * per_round));
        for (c, s) in peer_clients.iter_mut() {
            measure(c, frames, warm, gap, cap, None);
            measure(c, frames, n, gap, cap, Some(s));
        }
        bare_series(&mut bare, frames, warm, &mut Series::default())?;
        bare_series(&mut bare, frames, n, &mut s_bare)?;
        path.series(frames, warm, &mut Series::default())?;
        path.series(frames, n, &mut s_path)?;
        measure(&mut d_client, frames, warm, gap, cap, None);
        measure(&mut d_client, frames, n, gap, cap, Some(&mut s_daemon));
        if let Some(c) = py_client.as_mut() {
            measure(c, frames, warm, gap, cap, None);
            measure(c, frames, n, gap, cap, Some(&mut s_py));
        }
    }
    let peer = |k: PeerKind| {
        let i = PeerKind::ALL.iter().position(|x| *x == k).expect("in ALL");
        peer_clients[i].1.summary()
    };

    let out = PartA {
        echo: peer(PeerKind::Echo),
        bare: s_bare.summary(),
        daemon: s_daemon.summary(),
        ort_handoff: peer(PeerKind::OrtHandoff),
        python: py.map(|n| (s_py.summary(), n.bare)),
    };

    println!();
    println!(
        "## A. Silero VAD frame ({} B raw f32 [1,{FRAME}]): publish → reply, {} interleaved rounds, back to back",
        FRAME * 4,
        args.rounds
    );
    println!();
    header();
    row("zenoh echo (callback re-publishes)", &out.echo);
    row("bare ort Session::run (Rust)", &out.bare);
    row("reflexd end-to-end (in-process daemon)", &out.daemon);
    if let Some((p, pb)) = &out.python {
        row("python node end-to-end", p);
        row("python bare InferenceSession.run", pb);
    }
    row("diag: echo via parked thread", &peer(PeerKind::EchoHandoff));
    row(
        "diag: Rust node, ort in callback",
        &peer(PeerKind::OrtCallback),
    );
    row("diag: Rust node, ort on parked thread", &out.ort_handoff);
    row("diag: reflexd infer::run alone", &s_path.summary());
    println!();
    let base50 = out.echo.p50 + out.bare.p50;
    let base99 = out.echo.p99 + out.bare.p99;
    let ratio = out.daemon.p50 / base50;
    println!(
        "reflexd p50 / (echo p50 + bare p50) = {:.1} / ({:.1} + {:.1}) = {ratio:.3}  (target ≤ 1.10: {})",
        out.daemon.p50,
        out.echo.p50,
        out.bare.p50,
        verdict(ratio <= 1.10)
    );
    println!(
        "reflexd overhead over echo+bare: p50 {:+.1} µs, p99 {:+.1} µs (p99 ratio {:.3})",
        out.daemon.p50 - base50,
        out.daemon.p99 - base99,
        out.daemon.p99 / base99
    );
    println!(
        "reflexd vs the minimal Rust node with the same hand-off: p50 {:+.1} µs (ratio {:.3}), p99 {:+.1} µs",
        out.daemon.p50 - out.ort_handoff.p50,
        out.daemon.p50 / out.ort_handoff.p50,
        out.daemon.p99 - out.ort_handoff.p99
    );
    if let Some((p, pb)) = &out.python {
        println!(
            "python p50 / (echo p50 + python bare p50) = {:.1} / ({:.1} + {:.1}) = {:.3}; overhead {:+.1} µs",
            p.p50,
            out.echo.p50,
            pb.p50,
            p.p50 / (out.echo.p50 + pb.p50),
            p.p50 - (out.echo.p50 + pb.p50)
        );
        println!(
            "python p50 / (echo p50 + Rust bare p50) = {:.3}; reflexd p50 / python p50 = {:.3}",
            p.p50 / base50,
            out.daemon.p50 / p.p50
        );
    }
    timing_line("part A", &s_daemon);
    let run_p50 = |v: &[f64]| summarize(v, 0).p50;
    println!(
        "  Session::run p50 on the serving thread (includes warm-up frames): reflexd worker {:.0} µs (inference_us), Rust node parked thread {:.0}, Rust node callback {:.0}; in a hot loop: bare {:.0}, infer::run {:.0}",
        run_p50(
            &s_daemon
                .timing
                .iter()
                .map(|t| t.inference_us as f64)
                .collect::<Vec<_>>()
        ),
        run_p50(&peers.step_times(PeerKind::OrtHandoff)),
        run_p50(&peers.step_times(PeerKind::OrtCallback)),
        out.bare.p50,
        s_path.summary().p50,
    );
    print_stats(&daemon.stats());
    cpu.report("part A");

    for (c, _) in peer_clients {
        c.close();
    }
    d_client.close();
    if let Some(c) = py_client {
        c.close();
    }
    peers.close();
    rt.block_on(daemon.shutdown(Duration::from_secs(5)));
    Ok(out)
}

// ------------------------------------------------------------------ part B

struct Isolation {
    unloaded: Summary,
    loaded: Summary,
}

fn print_isolation(title: &str, iso: &Isolation) {
    header();
    row(&format!("{title} VAD, unloaded"), &iso.unloaded);
    row(&format!("{title} VAD, OCR load"), &iso.loaded);
    println!();
    let r = iso.loaded.p99 / iso.unloaded.p99;
    println!(
        "{title}: VAD p99 loaded / unloaded = {:.1} / {:.1} = {r:.3}  (target ≤ 1.2: {}); p50 ratio {:.3}; p99.9 ratio {:.3}",
        iso.loaded.p99,
        iso.unloaded.p99,
        verdict(r <= 1.2),
        iso.loaded.p50 / iso.unloaded.p50,
        iso.loaded.p999 / iso.unloaded.p999,
    );
}

/// Alternates unloaded and loaded blocks on one VAD stream paced at
/// `vad_hz`; frames sent while the load settles are not counted.
fn isolation_run(
    args: &Args,
    client: &mut Client,
    load: &mut LoadGen,
    frames: &Frames,
    samples: usize,
    blocks: usize,
) -> Result<(Series, Series)> {
    let pace = Pace::Hz(args.vad_hz);
    let per_block = samples.div_ceil(blocks);
    // An overloaded target gets three times the nominal block time.
    let cap = Duration::from_secs_f64(3.0 * per_block as f64 / args.vad_hz + 1.0);
    let settle = (LOAD_SETTLE.as_secs_f64() * args.vad_hz) as usize;
    let (mut unloaded, mut loaded) = (Series::default(), Series::default());
    measure(client, frames, settle, pace, cap, None);
    for b in 0..blocks {
        let n = per_block.min(samples.saturating_sub(b * per_block));
        measure(client, frames, n, pace, cap, Some(&mut unloaded));
        load.set(true)?;
        measure(client, frames, settle, pace, LOAD_SETTLE, None);
        measure(client, frames, n, pace, cap, Some(&mut loaded));
        load.set(false)?;
        measure(client, frames, settle, pace, 2 * LOAD_SETTLE, None);
    }
    Ok((unloaded, loaded))
}

fn timing_line(name: &str, s: &Series) {
    if s.timing.is_empty() {
        return;
    }
    let q = |f: fn(&DaemonTiming) -> u64| {
        summarize(&s.timing.iter().map(|t| f(t) as f64).collect::<Vec<_>>(), 0)
    };
    let (qu, inf, e2e) = (q(|t| t.queue_us), q(|t| t.inference_us), q(|t| t.e2e_us));
    let out = summarize(&s.outside, 0);
    println!(
        "  reflexd's reply metadata, {name} (p50/p99 µs): queue_us {:.0}/{:.0} (callback → worker start), inference_us {:.0}/{:.0}, e2e_us {:.0}/{:.0} (callback → before encode); outside e2e (zenoh both ways + encode/put) {:.0}/{:.0}",
        qu.p50, qu.p99, inf.p50, inf.p99, e2e.p50, e2e.p99, out.p50, out.p99
    );
    // A stream that hops between workers runs on a different ORT session
    // (its own copy of the weights) each time: colder caches.
    let mut by_worker: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for t in &s.timing {
        by_worker
            .entry(t.worker)
            .or_default()
            .push(t.inference_us as f64);
    }
    let per: Vec<String> = by_worker
        .iter()
        .map(|(w, v)| {
            format!(
                "worker {w}: {} frames, inference_us p50 {:.0}",
                v.len(),
                summarize(v, 0).p50
            )
        })
        .collect();
    println!("  served by {}", per.join("; "));
}

/// Part B's VAD latency CDF, unloaded vs under OCR load, as SVG in
/// docs/bench/ (embedded by BENCHMARKS.md).
fn plot_isolation(variant: &str, unloaded: &[f64], loaded: &[f64]) -> Result<()> {
    let dir = repo_dir().join("docs/bench");
    std::fs::create_dir_all(&dir)?;
    let tag: String = variant
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let path = dir.join(format!("latency_b{tag}_cdf.svg"));
    plot::cdf(
        &path,
        &format!("VAD frame round trip{variant}: unloaded vs PP-OCR load"),
        "µs",
        &[("unloaded", unloaded), ("OCR load", loaded)],
    )
    .map_err(|e| anyhow!("plot: {e}"))?;
    println!("  plot: {}", path.display());
    Ok(())
}

fn part_b(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    setup: &DaemonSetup,
    frames: &Frames,
    variant: &str,
) -> Result<Isolation> {
    let ocr = setup
        .ocr
        .as_ref()
        .ok_or_else(|| anyhow!("{} has no PP-OCR detector pipeline", setup.source))?;
    let port = free_port()?;
    let daemon = rt.block_on(Daemon::start(setup.config(port)?))?;
    let mut client = Client::connect(
        port,
        &setup.vad.publish,
        &setup.vad.replies,
        ReplyFormat::Reflexd,
    )?;
    client.wait_ready(frames.bytes(0), "reflexd (part B)")?;
    let mut load = LoadGen::start(port, &ocr.publish, &ocr.replies, args.ocr_hz, args.seed)?;
    let cpu = CpuMeter::start();
    let run = isolation_run(
        args,
        &mut client,
        &mut load,
        frames,
        args.rt_samples,
        args.rt_blocks,
    );
    let report = load.finish();
    let stats = daemon.stats();
    client.close();
    rt.block_on(daemon.shutdown(Duration::from_secs(5)));
    let (unloaded, loaded) = run?;
    let iso = Isolation {
        unloaded: unloaded.summary(),
        loaded: loaded.summary(),
    };
    println!();
    println!(
        "## B{variant}. Priority isolation: reflexd ({}{}), VAD at {} Hz, OCR [1,3,160,640] at {} Hz Poisson from another process, {} unloaded/loaded block pairs",
        setup.source,
        setup.workers_described(),
        args.vad_hz,
        args.ocr_hz,
        args.rt_blocks
    );
    println!();
    print_isolation(&format!("reflexd{variant}"), &iso);
    plot_isolation(variant, &unloaded.lat, &loaded.lat)?;
    timing_line("unloaded", &unloaded);
    timing_line("loaded", &loaded);
    println!("  OCR load generator: {report}");
    print_stats(&stats);
    if let Some(o) = stats.iter().find(|s| s.name == ocr.name) {
        println!(
            "  OCR requests: served {} / rejected (busy) {} / superseded {} / deadline exceeded {} (of {} received)",
            o.ok,
            o.errors.get("busy").copied().unwrap_or(0),
            o.errors.get("superseded").copied().unwrap_or(0),
            o.errors.get("deadline_exceeded").copied().unwrap_or(0),
            o.received
        );
    }
    cpu.report("part B");
    Ok(iso)
}

fn part_b_python(args: &Args, node: &PyNode, frames: &Frames) -> Result<Isolation> {
    let mut client = Client::connect(
        node.port,
        &format!("bench/py/vad/in/{STREAM}"),
        "bench/py/vad/out/*",
        ReplyFormat::Attachment,
    )?;
    client.wait_ready(frames.bytes(0), "python node (part B)")?;
    let mut load = LoadGen::start(
        node.port,
        "bench/py/ocr/in",
        "bench/py/ocr/out/**",
        args.ocr_hz,
        args.seed,
    )?;
    let cpu = CpuMeter::start();
    let run = isolation_run(args, &mut client, &mut load, frames, args.py_rt_samples, 1);
    let report = load.finish();
    client.close();
    let (unloaded, loaded) = run?;
    let iso = Isolation {
        unloaded: unloaded.summary(),
        loaded: loaded.summary(),
    };
    println!();
    println!(
        "## B'. The same load against the Python node (VAD and OCR callbacks share one lock), 1 block pair"
    );
    println!();
    print_isolation("python", &iso);
    println!("  OCR load generator: {report}");
    cpu.report("part B'");
    Ok(iso)
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
    print_machine(&args);
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
