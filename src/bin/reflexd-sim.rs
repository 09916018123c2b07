//! reflexd-sim: the robot's side of the demo, outside the daemon. It plays a
//! microphone (a 16 kHz WAV, 512-sample raw f32 frames every 32 ms, with the
//! request id in the zenoh attachment) and a camera (a PNG sent as u8 bgr8
//! pixels in the plain-zenoh image message of docs/images.md, 1 frame/s by
//! default: the camera knows nothing about the models, the daemon prepares
//! the frame) into reflexd's inputs, then reads what reflexd publishes for the
//! expected pipelines (`reflexd/<pipeline>/**`, so the LLM's token streams
//! and the metrics snapshot on the same prefix are not mistaken for
//! predictions): JSON answers (speech events, OCR text lines with per-stage
//! timing), safetensors predictions of pipelines without an answer stage, and
//! JSON error messages, with the daemon's own timings next to the round trip
//! measured here. The exit code says whether every expected pipeline answered
//! at least once, so `scripts/demo.sh` can fail loudly.
//!
//! It connects like the other tools (`--connect`, `REFLEXD_CONNECT`,
//! `--zenoh-config`: a zenoh client by default) and finds its WAV and PNG
//! from any directory: relative paths are looked up under `--data` (or
//! `REFLEXD_DATA`), else the current directory, then the checkout it was
//! built from.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use reflexd::client::ConnectArgs;
use reflexd::infer::pre::{Encoding, ImageClaim, ImageHeader, encode_image_attachment};
use tokio::sync::mpsc;
use tokio::time::Instant;
use zenoh::qos::CongestionControl;

#[path = "sim/report.rs"]
mod report;
use report::{Arrival, Report};

const SAMPLE_RATE: u32 = 16_000;
/// Samples per frame: Silero VAD's window at 16 kHz (32 ms).
const FRAME: usize = 512;
const FRAME_PERIOD: Duration = Duration::from_millis(32);
/// After the last frame is sent, replies still in flight (an OCR frame takes
/// up to a second or two on a busy CPU) are collected for this long.
const DRAIN: Duration = Duration::from_millis(2500);
/// Replies waiting to be printed; the zenoh callback drops (and counts) past it.
const PRINT_QUEUE: usize = 1024;

#[derive(Parser)]
#[command(
    name = "reflexd-sim",
    about = "Sensor simulator for reflexd: plays a WAV as a microphone and a PNG as a camera, prints what comes back"
)]
struct Args {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Directory that relative --wav/--image paths are found in (a reflexd
    /// checkout after `make setup`) [default: the current directory, then
    /// the checkout this binary was built from].
    #[arg(long, env = "REFLEXD_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// How long to publish before printing the summary.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// 16 kHz mono WAV played in a loop.
    #[arg(long, default_value = "tests/data/speech_16k.wav")]
    wav: PathBuf,
    /// Silence inserted after each pass of the WAV, so the VAD visibly switches.
    #[arg(long, default_value_t = 1500)]
    gap_ms: u64,
    /// PNG (grayscale, RGB or RGBA; any size) sent as every camera frame,
    /// as bgr8 pixels. The default is rendered by `make setup`: signs with
    /// known words on a 640×480 frame.
    #[arg(long, default_value = "models/data/signs.png")]
    image: PathBuf,
    /// Camera frames per second (an OCR frame costs 0.4-1 s of CPU here).
    #[arg(long, default_value_t = 1.0)]
    camera_hz: f64,
    #[arg(long, default_value = "robot/mic/front")]
    mic_key: String,
    #[arg(long, default_value = "robot/camera/front")]
    camera_key: String,
    /// Print every Nth prediction of a single-value (VAD) stream, plus every
    /// speech/silence change.
    #[arg(long, default_value_t = 8)]
    vad_every: u64,
    /// Pipelines that must answer at least once for exit status 0.
    #[arg(long, value_delimiter = ',', default_value = "vad,ocr")]
    expect: Vec<String>,
}

fn z<T>(r: zenoh::Result<T>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!(e))
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The WAV as f32 samples followed by the silence gap; played cyclically.
fn load_audio(path: &Path, gap_ms: u64) -> anyhow::Result<Vec<f32>> {
    let mut r = hound::WavReader::open(path).with_context(|| format!("{}", path.display()))?;
    let spec = r.spec();
    if spec.channels != 1 || spec.sample_rate != SAMPLE_RATE {
        bail!(
            "{}: need 16 kHz mono, got {} Hz with {} channel(s)",
            path.display(),
            spec.sample_rate,
            spec.channels
        );
    }
    let mut s: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            r.samples::<i32>()
                .map(|v| v.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()?
        }
    };
    if s.is_empty() {
        bail!("{}: no samples", path.display());
    }
    s.resize(s.len() + (gap_ms * SAMPLE_RATE as u64 / 1000) as usize, 0.0);
    Ok(s)
}

/// One camera frame as a camera driver delivers it: packed `bgr8` rows
/// (OpenCV's and ROS 2's usual order), no row padding. The zenoh image
/// message (`image_attachment`) and a ROS 2 `sensor_msgs/Image` (encoding
/// "bgr8", step `width * 3`) carry these bytes unchanged.
pub struct CameraFrame {
    pub width: u32,
    pub height: u32,
    /// `height` rows of `width * 3` bytes: blue, green, red.
    pub bgr: Vec<u8>,
}

impl CameraFrame {
    /// Bytes from one row to the next.
    pub fn step(&self) -> u32 {
        self.width * 3
    }

    /// The attachment of the plain-zenoh image message (docs/images.md)
    /// whose payload is `self.bgr`.
    pub fn image_attachment(&self, id: String, seq: u64, ts_us: u64) -> String {
        encode_image_attachment(&ImageHeader {
            id: Some(id),
            seq: Some(seq),
            ts_us: Some(ts_us),
            claim: ImageClaim {
                encoding: Encoding::Bgr8,
                width: Some(self.width),
                height: Some(self.height),
                step: Some(self.step()),
            },
        })
    }
}

/// A PNG decoded into a bgr8 camera frame, at its own size: the daemon
/// resizes and normalises (no model knowledge lives here).
pub fn load_camera_frame(path: &Path) -> anyhow::Result<CameraFrame> {
    let file = File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut dec = png::Decoder::new(BufReader::new(file));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec
        .read_info()
        .with_context(|| format!("{}", path.display()))?;
    let mut buf = vec![0; reader.output_buffer_size().context("PNG too large")?];
    let info = reader.next_frame(&mut buf)?;
    let ch = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => bail!("{}: palette not expanded", path.display()),
    };
    let (w, h) = (info.width as usize, info.height as usize);
    let mut bgr = Vec::with_capacity(w * h * 3);
    for row in buf.chunks(info.line_size).take(h) {
        for p in row.chunks_exact(ch).take(w) {
            // Transparent pixels are composited over white: text drawn on a
            // transparent page would otherwise turn into black on black.
            let (rgb, a) = match ch {
                1 => ([p[0]; 3], 255),
                2 => ([p[0]; 3], p[1]),
                3 => ([p[0], p[1], p[2]], 255),
                _ => ([p[0], p[1], p[2]], p[3]),
            };
            let over_white = |v: u8| ((v as u32 * a as u32 + 255 * (255 - a as u32)) / 255) as u8;
            bgr.extend([rgb[2], rgb[1], rgb[0]].map(over_white));
        }
    }
    Ok(CameraFrame {
        width: info.width,
        height: info.height,
        bgr,
    })
}

/// Directories a relative data path is looked up in, in order.
fn data_roots(data: Option<&Path>) -> Vec<PathBuf> {
    match data {
        Some(d) => vec![d.to_path_buf()],
        None => {
            let mut roots: Vec<PathBuf> = std::env::current_dir().into_iter().collect();
            roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
            roots
        }
    }
}

/// The file behind `--<flag> path`: absolute as given, relative under the
/// first root that has it; else an error naming every place looked at.
fn find_data(flag: &str, path: &Path, roots: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let tried: Vec<PathBuf> = if path.is_absolute() {
        vec![path.to_path_buf()]
    } else {
        roots.iter().map(|r| r.join(path)).collect()
    };
    if let Some(p) = tried.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "--{flag} {}: no such file (looked for {}). Pass --{flag} FILE, or --data DIR / REFLEXD_DATA naming a reflexd checkout (models/data comes from `make setup`)",
        path.display(),
        list.join(", ")
    )
}

async fn wait_matched(p: &zenoh::pubsub::Publisher<'_>, conn: &ConnectArgs) -> anyhow::Result<()> {
    let wait = conn.connect_timeout;
    let until = Instant::now() + wait;
    loop {
        if z(p.matching_status().await)?.matching() {
            return Ok(());
        }
        if Instant::now() > until {
            bail!(
                "nobody subscribes to {} after {wait:?}: is reflexd running at {} with a pipeline on that key?",
                p.key_expr(),
                conn.endpoints()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(mut args: Args) -> anyhow::Result<bool> {
    let roots = data_roots(args.data.as_deref());
    args.wav = find_data("wav", &args.wav, &roots)?;
    args.image = find_data("image", &args.image, &roots)?;
    let audio = Arc::new(load_audio(&args.wav, args.gap_ms)?);
    let mut frame = load_camera_frame(&args.image)?;
    if !(args.camera_hz > 0.0 && args.camera_hz <= 100.0 && args.seconds > 0.0) {
        bail!("--camera-hz must be in (0, 100] and --seconds > 0");
    }

    let session = args.conn.open().await?;

    let (tx, mut rx) = mpsc::channel::<Arrival>(PRINT_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let dropped_cb = dropped.clone();
    let wanted: Vec<String> = args
        .expect
        .iter()
        .map(|p| format!("reflexd/{p}/"))
        .collect();
    let sub = z(session
        .declare_subscriber("reflexd/**")
        .callback(move |s| {
            let key = s.key_expr().as_str();
            if !wanted.iter().any(|w| key.starts_with(w.as_str())) {
                return;
            }
            let a = Arrival {
                at_us: now_us(),
                key: key.to_string(),
                bytes: s.payload().to_bytes().into_owned(),
            };
            if tx.try_send(a).is_err() {
                dropped_cb.fetch_add(1, Relaxed);
            }
        })
        .await)?;
    let declare = |key: &str| {
        session
            .declare_publisher(key.to_string())
            .congestion_control(CongestionControl::Drop)
            .express(true)
    };
    let mic = z(declare(&args.mic_key).await)?;
    let cam = z(declare(&args.camera_key).await)?;
    wait_matched(&mic, &args.conn).await?;
    wait_matched(&cam, &args.conn).await?;

    let (a, secs) = (&args, audio.len() as f64 / SAMPLE_RATE as f64);
    println!(
        "reflexd-sim for {} s: mic {} ({secs:.1} s with a {} ms gap, looped) → {} every 32 ms; camera {} ({}×{} bgr8 pixels, {} KiB a frame) → {} at {} Hz\ncolumns: daemon-measured queue wait, inference, e2e (receive → publish), provider | round trip measured here (publish → answer)\n",
        a.seconds,
        a.wav.display(),
        a.gap_ms,
        a.mic_key,
        a.image.display(),
        frame.width,
        frame.height,
        frame.bgr.len() / 1024,
        a.camera_key,
        a.camera_hz
    );
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);

    let mut report = Report::new(start, now_us(), args.vad_every);
    let printer = tokio::spawn(async move {
        while let Some(a) = rx.recv().await {
            if a.key.ends_with("/error") {
                report.on_error(&a);
            } else if a.bytes.first() == Some(&b'{') {
                report.on_answer(&a);
            } else {
                report.on_prediction(&a);
            }
        }
        report
    });

    // A microphone delivers on its own clock: frames keep their 32 ms slots
    // even if one put was late (tokio's interval bursts to catch up).
    let mic_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(FRAME_PERIOD);
        let mut n: u64 = 0;
        let mut frame = Vec::with_capacity(FRAME * 4);
        while tick.tick().await < end {
            frame.clear();
            let base = n as usize * FRAME;
            for i in 0..FRAME {
                frame.extend_from_slice(&audio[(base + i) % audio.len()].to_le_bytes());
            }
            let att = format!("id=mic-{n};seq={n};ts_us={}", now_us());
            if let Err(e) = mic.put(frame.clone()).attachment(att).await {
                eprintln!("mic: put failed: {e}");
            }
            n += 1;
        }
        n
    });
    let cam_period = Duration::from_secs_f64(1.0 / args.camera_hz);
    // The pixels are the same every frame: one shared buffer, never copied.
    let pixels = zenoh::bytes::ZBytes::from(std::mem::take(&mut frame.bgr));
    let cam_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(cam_period);
        let mut n: u64 = 0;
        while tick.tick().await < end {
            let att = frame.image_attachment(format!("cam-{n}"), n, now_us());
            if let Err(e) = cam.put(pixels.clone()).attachment(att).await {
                eprintln!("camera: put failed: {e}");
            }
            n += 1;
        }
        n
    });
    let mic_sent = mic_task.await?;
    let cam_sent = cam_task.await?;
    tokio::time::sleep(DRAIN).await;
    // Undeclaring drops the callback and its sender, which ends the printer.
    z(sub.undeclare().await)?;
    let report = printer.await?;
    let _ = session.close().await;
    println!(
        "\nsent: {mic_sent} mic frames, {cam_sent} camera frames in {:.1} s",
        args.seconds
    );
    report.summary(dropped.load(Relaxed));
    let missing: Vec<&str> = args
        .expect
        .iter()
        .filter(|p| report.pipes.get(*p).is_none_or(|s| s.predictions == 0))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "reflexd-sim: FAILED: no prediction from pipeline(s) {} (errors, if any, are listed above; is each configured on {} / {}?)",
            missing.join(", "),
            args.mic_key,
            args.camera_key
        );
    }
    Ok(missing.is_empty())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            let msg = reflexd::logging::strip_source_locations(&format!("{e:#}"));
            eprintln!("reflexd-sim: error: {msg}");
            ExitCode::from(2)
        }
    }
}
