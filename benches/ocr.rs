//! OCR chain benchmark (issue 13): the Rust chain (src/infer/ocr, three ORT
//! sessions in this process) against rapidocr-onnxruntime 1.4.4's own Python
//! pipeline, same images, same intra-op thread count (1 and 2; OpenCV in the
//! Python peer is limited to the same count), in one run with rounds whose
//! order rotates, because these shared VMs drift. The Rust chain runs twice:
//! on rapidocr's model files as shipped (the pipeline alone) and on the
//! folded ones (models/ocr/fold_ppocr.py: same outputs, cheaper graph).
//!
//! Frames cycle through scikit-image's page.png and astronaut.png and the
//! rendered test images of `tests/py/ocr_reference.py` (640×480 signs, a
//! dark panel, vertical text, a short strip). Each contender processes one
//! frame at a time (closed loop); frames/s = frames / summed latency. Before
//! timing, every contender's texts are compared with rapidocr's per image
//! ("equal output"). Reported: frames/s, p50/p99 latency and ratios; the
//! Rust chain's per-stage split (whole stage vs inside `Session::run`) next
//! to rapidocr's own stage timers; and bare ONNX Runtime on the tensors
//! rapidocr built, through its own sessions (memory arena off, spinning on),
//! ORT's defaults, arena on with spinning off (the Rust chain's settings) and
//! the same on the folded models, next to the Rust chain's time inside ORT.
//!
//! `cargo bench --bench ocr [-- --quick | --rounds N | --frames N | --threads 1,2]`.
//! Prints tables; never fails on a number.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{Context, Result, bail};
use reflexd::infer::ocr::{
    Frame, OcrChain, OcrModels, OcrParams, OcrTiming, PixelFormat, SessionOptions,
};
use serde_json::Value;

struct Args {
    rounds: usize,
    frames: usize,
    threads: Vec<usize>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        rounds: 4,
        frames: 24,
        threads: vec![1, 2],
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter().filter(|s| *s != "--bench");
    while let Some(flag) = it.next() {
        let mut val = || it.next().context(format!("{flag} needs a value"));
        match flag.as_str() {
            "--quick" => (a.rounds, a.frames) = (2, 6),
            "--rounds" => a.rounds = val()?.parse()?,
            "--frames" => a.frames = val()?.parse()?,
            "--threads" => {
                a.threads = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--help" | "-h" => {
                println!(
                    "usage: cargo bench --bench ocr [-- --quick --rounds N --frames N --threads 1,2]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?} (try --help)"),
        }
    }
    Ok(a)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("REFLEXD_PYTHON") {
        return Ok(p.into());
    }
    let p = reflexd::infer::runtime::cache_dir()
        .context("no cache directory")?
        .join("venv/bin/python");
    if !p.exists() {
        bail!("{} missing: run scripts/provision.sh", p.display());
    }
    Ok(p)
}

/// Renders the test images (and gets rapidocr's answers) via the test script.
fn images(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let o = Command::new(python()?)
        .arg(repo().join("tests/py/ocr_reference.py"))
        .args(["reference", "--out"])
        .arg(dir)
        .args(["--data", "models/data"])
        .current_dir(repo())
        .output()
        .context("run ocr_reference.py")?;
    if !o.status.success() {
        bail!("ocr_reference.py: {}", String::from_utf8_lossy(&o.stderr));
    }
    let v: Value = serde_json::from_slice(&o.stdout)?;
    let list = v["images"].as_array().context("no images")?;
    Ok(list
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or("?").to_string(),
                PathBuf::from(i["path"].as_str().unwrap_or("")),
            )
        })
        .collect())
}

/// The rapidocr peer process (`ocr_reference.py serve`).
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn spawn(threads: usize, paths: &[PathBuf]) -> Result<(Peer, Vec<Vec<String>>)> {
        let mut child = Command::new(python()?)
            .arg(repo().join("tests/py/ocr_reference.py"))
            .args(["serve", "--threads", &threads.to_string()])
            .args(paths)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn the rapidocr peer")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut p = Peer {
            child,
            stdin,
            stdout,
        };
        let ready = p.read()?;
        let texts = serde_json::from_value(ready["texts"].clone())?;
        Ok((p, texts))
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the rapidocr peer exited");
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// `k` frames; returns (latencies µs, rapidocr's det/cls/rec µs sums).
    fn run(&mut self, k: usize) -> Result<(Vec<f64>, [f64; 3])> {
        writeln!(self.stdin, "run {k}")?;
        self.stdin.flush()?;
        let v = self.read()?;
        let lat = serde_json::from_value(v["latencies_us"].clone())?;
        let st: Vec<f64> = serde_json::from_value(v["stages_us"].clone())?;
        Ok((lat, [st[0], st[1], st[2]]))
    }
}

/// Session sets of the peer's bare runs, in print order.
const BARE_SETS: [(&str, &str); 4] = [
    ("rapidocr", "rapidocr's sessions (arena off, spinning on)"),
    ("arena", "ORT defaults (arena on, spinning on)"),
    ("arena_nospin", "arena on, spinning off (as the Rust chain)"),
    ("folded_nospin", "same, folded models"),
];

impl Peer {
    /// Bare ORT on rapidocr's recorded tensors for `k` frames: µs per stage
    /// (det, cls, rec) for each of [`BARE_SETS`].
    fn bare(&mut self, k: usize) -> Result<Vec<[f64; 3]>> {
        writeln!(self.stdin, "bare {k}")?;
        self.stdin.flush()?;
        let v = self.read()?;
        BARE_SETS
            .iter()
            .map(|(key, _)| {
                let a: Vec<f64> = serde_json::from_value(v[*key].clone())?;
                Ok([a[0], a[1], a[2]])
            })
            .collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

/// Per-stage sums (µs) of the Rust chain: whole stage and inside ORT.
#[derive(Default)]
struct StageSums {
    prepare: f64,
    det: [f64; 2],
    crop: f64,
    cls: [f64; 2],
    rec: [f64; 2],
}

impl StageSums {
    fn add(&mut self, t: &OcrTiming) {
        self.prepare += t.prepare_us as f64;
        self.det[0] += t.det.us as f64;
        self.det[1] += t.det.infer_us as f64;
        self.crop += t.crop_us as f64;
        self.cls[0] += t.cls.us as f64;
        self.cls[1] += t.cls.infer_us as f64;
        self.rec[0] += t.rec.us as f64;
        self.rec[1] += t.rec.infer_us as f64;
    }
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

struct Side {
    lat_us: Vec<f64>,
}

impl Side {
    fn fps(&self) -> f64 {
        self.lat_us.len() as f64 / (self.lat_us.iter().sum::<f64>() / 1e6)
    }
    fn ms(&self, q: f64) -> f64 {
        quantile(&self.lat_us, q) / 1e3
    }
    fn mean_ms(&self) -> f64 {
        self.lat_us.iter().sum::<f64>() / self.lat_us.len() as f64 / 1e3
    }
}

/// The Rust chain on one model set.
struct RustSide {
    label: &'static str,
    chain: OcrChain,
    side: Side,
    sums: StageSums,
    equal: bool,
}

impl RustSide {
    fn round(&mut self, rgb: &[image::RgbImage], frames: usize) -> Result<()> {
        for i in 0..frames {
            let img = &rgb[i % rgb.len()];
            let f = Frame::packed(img.as_raw(), img.width(), img.height(), PixelFormat::Rgb8);
            let out = self.chain.run(&f)?;
            self.side.lat_us.push(out.timing.total_us as f64);
            self.sums.add(&out.timing);
        }
        Ok(())
    }
}

/// The Python peer's results for one thread count.
#[derive(Default)]
struct PySide {
    lat_us: Vec<f64>,
    stages: [f64; 3],
    bare: Bare,
}

struct Row {
    threads: usize,
    py: Side,
    rust: Vec<(&'static str, bool, Side)>,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let dir = std::env::temp_dir().join(format!("reflexd-ocr-bench-{}", std::process::id()));
    let imgs = images(&dir)?;
    let rgb: Vec<image::RgbImage> = imgs
        .iter()
        .map(|(_, p)| Ok(image::open(p)?.to_rgb8()))
        .collect::<Result<_>>()?;
    let paths: Vec<PathBuf> = imgs.iter().map(|(_, p)| p.clone()).collect();
    let (env, lib) = reflexd::infer::runtime::environment(None)?;
    println!("ONNX Runtime: {}", lib.display());
    println!(
        "images: {}; {} rounds × {} frames per contender and thread count",
        imgs.iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        args.rounds,
        args.frames
    );
    let mut rows = Vec::new();
    for &threads in &args.threads {
        let opts = SessionOptions {
            intra_op_threads: threads,
            intra_op_spinning: false,
        };
        let (mut peer, py_texts) = Peer::spawn(threads, &paths)?;
        let dir_models = repo().join("models/fetched");
        let mut rust = Vec::new();
        for (label, models) in [
            ("shipped models", OcrModels::rapidocr_in(&dir_models)),
            ("folded models", OcrModels::folded_in(&dir_models)),
        ] {
            let mut chain = OcrChain::load(&env, &models, &opts, OcrParams::default())?;
            let equal = check_equal(&mut chain, &rgb, &imgs, &py_texts, label)?;
            let side = Side { lat_us: vec![] };
            let sums = StageSums::default();
            rust.push(RustSide {
                label,
                chain,
                side,
                sums,
                equal,
            });
        }
        let mut py = PySide::default();
        for round in 0..args.rounds {
            // Rotate who goes first, so drift hits every contender alike.
            for k in 0..3 {
                match (round + k) % 3 {
                    0 => python_round(&mut peer, &mut py, args.frames, rgb.len())?,
                    i => rust[i - 1].round(&rgb, args.frames)?,
                }
            }
        }
        print_stages(threads, &rust, &py);
        rows.push(Row {
            threads,
            py: Side { lat_us: py.lat_us },
            rust: rust
                .into_iter()
                .map(|r| (r.label, r.equal, r.side))
                .collect(),
        });
    }
    print_summary(&rows);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One round of the peer: `frames` through rapidocr's pipeline, then one
/// cycle of the images' recorded tensors through each bare session set.
fn python_round(peer: &mut Peer, py: &mut PySide, frames: usize, images: usize) -> Result<()> {
    let (lat, st) = peer.run(frames)?;
    py.lat_us.extend(lat);
    (0..3).for_each(|i| py.stages[i] += st[i]);
    let sets = peer.bare(images)?;
    py.bare.sums.resize(sets.len(), [0.0; 3]);
    for (sum, set) in py.bare.sums.iter_mut().zip(sets) {
        (0..3).for_each(|i| sum[i] += set[i]);
    }
    py.bare.frames += images;
    Ok(())
}

/// Runs every image once through the chain (also its warm-up) and compares
/// the texts with the peer's.
fn check_equal(
    chain: &mut OcrChain,
    rgb: &[image::RgbImage],
    imgs: &[(String, PathBuf)],
    py_texts: &[Vec<String>],
    label: &str,
) -> Result<bool> {
    let mut equal = true;
    for ((img, (name, _)), want) in rgb.iter().zip(imgs).zip(py_texts) {
        let f = Frame::packed(img.as_raw(), img.width(), img.height(), PixelFormat::Rgb8);
        let got: Vec<String> = chain.run(&f)?.lines.into_iter().map(|l| l.text).collect();
        if &got != want {
            equal = false;
            println!("  {label}: output differs on {name}: rust {got:?} vs rapidocr {want:?}");
        }
    }
    Ok(equal)
}

/// Bare ORT runs of the Python peer on rapidocr's own tensors: µs sums per
/// stage for each of [`BARE_SETS`].
#[derive(Default)]
struct Bare {
    sums: Vec<[f64; 3]>,
    frames: usize,
}

fn print_stages(threads: usize, rust: &[RustSide], py: &PySide) {
    let n = |r: &RustSide| r.side.lat_us.len() as f64;
    let ms = |v: f64, n: f64| v / n / 1e3;
    let (a, b) = (&rust[0], &rust[1]);
    let pn = py.lat_us.len() as f64;
    println!("\nthreads = {threads}: mean ms per frame, Rust stage total / inside Session::run");
    println!("  stage     rust, shipped models   rust, folded models   rapidocr (its timers)");
    let row = |name: &str, sa: [f64; 2], sb: [f64; 2], p: Option<f64>| {
        println!(
            "  {name:<8} {:>9.2} / {:>8.2}   {:>8.2} / {:>8.2}   {}",
            ms(sa[0], n(a)),
            ms(sa[1], n(a)),
            ms(sb[0], n(b)),
            ms(sb[1], n(b)),
            p.map_or(String::new(), |v| format!("{:>10.2}", ms(v, pn)))
        )
    };
    row(
        "prepare",
        [a.sums.prepare, 0.0],
        [b.sums.prepare, 0.0],
        None,
    );
    row("det", a.sums.det, b.sums.det, Some(py.stages[0]));
    row("crop", [a.sums.crop, 0.0], [b.sums.crop, 0.0], None);
    row("cls", a.sums.cls, b.sums.cls, Some(py.stages[1]));
    row("rec", a.sums.rec, b.sums.rec, Some(py.stages[2]));
    println!(
        "  total    {:>9.2}              {:>8.2}              {:>10.2}",
        a.side.mean_ms(),
        b.side.mean_ms(),
        py.lat_us.iter().sum::<f64>() / pn / 1e3
    );
    println!(
        "  (rapidocr's det timer covers pre + ORT + DB post; cls/rec cover ORT + decode, not the resize)"
    );
    let bare = &py.bare;
    let bp = |v: f64| v / bare.frames as f64 / 1e3;
    println!(
        "  inside ONNX Runtime, mean ms per frame (Python: bare runs on rapidocr's own tensors)"
    );
    println!("    {:<52} {:>8} {:>8} {:>8}", "", "det", "cls", "rec");
    for r in rust {
        let inside = [r.sums.det[1], r.sums.cls[1], r.sums.rec[1]];
        let m = inside.map(|v| ms(v, n(r)));
        let label = format!("rust, {}", r.label);
        println!("    {label:<52} {:>8.2} {:>8.2} {:>8.2}", m[0], m[1], m[2]);
    }
    for ((_, label), sum) in BARE_SETS.iter().zip(&bare.sums) {
        let label = format!("python, {label}");
        println!(
            "    {label:<52} {:>8.2} {:>8.2} {:>8.2}",
            bp(sum[0]),
            bp(sum[1]),
            bp(sum[2])
        );
    }
}

fn print_summary(rows: &[Row]) {
    println!(
        "\nOCR chain, whole frame (one at a time) vs rapidocr-onnxruntime 1.4.4's Python pipeline"
    );
    println!(
        "threads  contender                 equal     fps  p50 ms  p99 ms  fps ratio  p50 ratio  verdict (≥ 2×)"
    );
    for r in rows {
        let py = &r.py;
        println!(
            "{:>7}  {:<24}  {:>5}  {:>6.2}  {:>6.1}  {:>6.1}",
            r.threads,
            "rapidocr (Python)",
            "-",
            py.fps(),
            py.ms(0.5),
            py.ms(0.99)
        );
        for (label, equal, s) in &r.rust {
            let ratio = s.fps() / py.fps();
            println!(
                "{:>7}  {:<24}  {:>5}  {:>6.2}  {:>6.1}  {:>6.1}  {:>8.2}×  {:>8.2}×  {}",
                r.threads,
                format!("rust, {label}"),
                if *equal { "yes" } else { "NO" },
                s.fps(),
                s.ms(0.5),
                s.ms(0.99),
                ratio,
                py.ms(0.5) / s.ms(0.5),
                if ratio >= 2.0 { "met" } else { "NOT met" }
            );
        }
    }
}
