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
//! at least once, so `scripts/demo.sh` can fail loudly. With `--ros2` it is
//! a ROS 2 robot instead (`reflexd::client::ros2`): the same camera frame as
//! a `sensor_msgs/msg/Image` and a prompt as `std_msgs/msg/String`, on the
//! topics the daemon's config names, printing its ROS answers.
//!
//! It connects like the other tools (`--connect`, `REFLEXD_CONNECT`,
//! `--zenoh-config`: a zenoh client by default) and finds its WAV and PNG
//! from any directory: relative paths are looked up under `--data` (or
//! `REFLEXD_DATA`), else the current directory, then the checkout it was
//! built from.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use reflexd::client::ConnectArgs;
use reflexd::client::frame::CameraFrame;
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
/// The first byte of a JSON answer (a safetensors prediction starts with
/// its header length).
const JSON_OBJECT: u8 = b'{';
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
    /// Be a ROS 2 robot instead (rmw_zenoh): the camera as
    /// sensor_msgs/msg/Image bgr8 and a prompt as std_msgs/msg/String on the
    /// topics the daemon's --config names, printing its ROS answers.
    #[arg(long)]
    ros2: bool,
    /// The daemon's config file, for its [pipeline.ros2] topics (--ros2).
    #[arg(short, long, default_value = "config/ros2.toml")]
    config: PathBuf,
    /// Open the session as a zenoh router listening here, standing in for
    /// the ROS graph's router (rmw_zenohd) that the daemon connects to
    /// (--ros2; e.g. tcp/127.0.0.1:7447). Without it, connect as usual.
    #[arg(long, value_name = "ENDPOINT")]
    listen: Option<String>,
    /// Question sent once on the prompt topic (--ros2).
    #[arg(long)]
    prompt: Option<String>,
    /// Seconds after the start at which the prompt is sent (--ros2).
    #[arg(long, default_value_t = 2.0)]
    prompt_after: f64,
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
    let frame = CameraFrame::load_png(&args.image).map_err(anyhow::Error::msg)?;
    if !(args.camera_hz > 0.0 && args.camera_hz <= 100.0 && args.seconds > 0.0) {
        bail!("--camera-hz must be in (0, 100] and --seconds > 0");
    }

    let session = args.conn.open().await?;

    let (sub, mut rx, dropped) = subscribe_replies(&session, &args.expect).await?;
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
            } else if a.bytes.first() == Some(&JSON_OBJECT) {
                report.on_answer(&a);
            } else {
                report.on_prediction(&a);
            }
        }
        report
    });

    let mic_task = tokio::spawn(play_mic(mic, audio, end));
    let cam_period = Duration::from_secs_f64(1.0 / args.camera_hz);
    let cam_task = tokio::spawn(play_camera(cam, frame, cam_period, end));
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

/// Subscribes to what the expected pipelines publish (`reflexd/<p>/**`);
/// the callback only queues, and counts what the printer cannot keep up with.
async fn subscribe_replies(
    session: &zenoh::Session,
    expect: &[String],
) -> anyhow::Result<(
    zenoh::pubsub::Subscriber<()>,
    mpsc::Receiver<Arrival>,
    Arc<AtomicU64>,
)> {
    let (tx, rx) = mpsc::channel::<Arrival>(PRINT_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let dropped_cb = dropped.clone();
    let wanted: Vec<String> = expect.iter().map(|p| format!("reflexd/{p}/")).collect();
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
    Ok((sub, rx, dropped))
}

/// Plays the looped audio until `end`; returns the frames sent. A
/// microphone delivers on its own clock: frames keep their 32 ms slots even
/// if one put was late (tokio's interval bursts to catch up).
async fn play_mic(
    mic: zenoh::pubsub::Publisher<'static>,
    audio: Arc<Vec<f32>>,
    end: Instant,
) -> u64 {
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
}

/// Sends the camera frame every `period` until `end`; returns the frames
/// sent. The pixels are the same every frame: one shared buffer, never
/// copied.
async fn play_camera(
    cam: zenoh::pubsub::Publisher<'static>,
    mut frame: CameraFrame,
    period: Duration,
    end: Instant,
) -> u64 {
    let pixels = zenoh::bytes::ZBytes::from(std::mem::take(&mut frame.bgr));
    let mut tick = tokio::time::interval(period);
    let mut n: u64 = 0;
    while tick.tick().await < end {
        let att = frame.image_attachment(format!("cam-{n}"), n, now_us());
        if let Err(e) = cam.put(pixels.clone()).attachment(att).await {
            eprintln!("camera: put failed: {e}");
        }
        n += 1;
    }
    n
}

/// A zenoh router session listening on `endpoint` only (no scouting, no
/// gossip): the role rmw_zenohd plays on a ROS 2 machine.
async fn open_router(endpoint: &str) -> anyhow::Result<zenoh::Session> {
    let mut c = zenoh::Config::default();
    for (k, v) in [
        ("mode", "\"router\"".to_string()),
        (
            "listen/endpoints",
            serde_json::json!([endpoint]).to_string(),
        ),
        ("scouting/multicast/enabled", "false".into()),
        ("scouting/gossip/enabled", "false".into()),
    ] {
        c.insert_json5(k, &v)
            .map_err(|e| anyhow::anyhow!("{k}: {e}"))?;
    }
    z(zenoh::open(c).await)
}

/// `--ros2`: the robot as a ROS 2 node (`reflexd::client::ros2`); exit 0
/// when text detections and, if a prompt was sent, its answer came back.
async fn run_ros2(mut args: Args) -> anyhow::Result<bool> {
    let roots = data_roots(args.data.as_deref());
    args.image = find_data("image", &args.image, &roots)?;
    args.config = find_data("config", &args.config, &roots)?;
    let config = reflexd::Config::load(&args.config)
        .with_context(|| format!("--config {}", args.config.display()))?;
    if !(args.camera_hz > 0.0 && args.camera_hz <= 100.0 && args.seconds > 0.0) {
        bail!("--camera-hz must be in (0, 100] and --seconds > 0");
    }
    let session = match &args.listen {
        Some(endpoint) => open_router(endpoint).await?,
        None => args.conn.open().await?,
    };
    let sim = reflexd::client::ros2::RosSim {
        image: args.image.clone(),
        camera_hz: args.camera_hz,
        seconds: args.seconds,
        prompt: args.prompt.clone(),
        prompt_after: args.prompt_after,
    };
    let s = reflexd::client::ros2::run(&session, &config, &sim)
        .await
        .map_err(anyhow::Error::msg)?;
    println!(
        "\nsent {} frames; received {} detection messages, {} answers, {} errors",
        s.frames_sent, s.detections, s.answers, s.errors
    );
    let _ = session.close().await;
    Ok(s.detections > 0 && (args.prompt.is_none() || s.answers > 0))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let r = if args.ros2 {
        run_ros2(args).await
    } else {
        run(args).await
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            let msg = reflexd::logging::strip_source_locations(&format!("{e:#}"));
            eprintln!("reflexd-sim: error: {msg}");
            ExitCode::from(2)
        }
    }
}
