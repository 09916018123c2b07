//! Image pre-processing benchmark: reflexd's `Preprocessor` against OpenCV
//! (opencv-python-headless in the project venv, `benches/preprocess_cv.py`)
//! on the same frames, in one run. Job: a bgr8 camera frame (640×480 and
//! 1920×1080, made from scikit-image's astronaut photo, or a synthetic
//! pattern if it is not provisioned) → 640×640 RGB f32 NCHW with ImageNet
//! mean/std, letterboxed (pad 114) or stretched, bilinear. Both sides run on
//! one thread. Rounds interleave the contenders so machine noise hits all
//! alike; the table gives per-frame medians, p99 and the ratio to each
//! OpenCV way, then the numerical difference between reflexd's tensor and
//! the OpenCV chain's. It never fails on a number:
//! `cargo bench --bench preprocess [-- --quick]`; results are written to
//! benches/results/preprocess.md.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use fast_image_resize as fir;
use reflexd::infer::pre::{
    Encoding, ImageClaim, ImageInput, ImageLimits, PreSpec, Preprocessor, RawPre, check_image,
};

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];
const FRAMES: [(&str, u32, u32); 2] = [("640x480", 640, 480), ("1920x1080", 1920, 1080)];
const MODES: [&str; 2] = ["letterbox", "stretch"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The astronaut photo (512×512 RGB) stretched to the frame size, as BGR;
/// a smooth synthetic pattern when the photo is not provisioned.
fn frame(w: u32, h: u32) -> Result<(Vec<u8>, &'static str)> {
    let path = repo().join("models/data/astronaut.png");
    let Ok(file) = std::fs::File::open(&path) else {
        let px = (0..w * h).flat_map(|i| {
            let (x, y) = (i % w, i / w);
            [(x / 3) as u8, (y / 2) as u8, ((x + y) / 5) as u8]
        });
        return Ok((px.collect(), "synthetic pattern"));
    };
    let mut dec = png::Decoder::new(BufReader::new(file));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().context("png size")?];
    let info = reader.next_frame(&mut buf)?;
    if info.color_type != png::ColorType::Rgb {
        bail!(
            "{}: expected RGB, got {:?}",
            path.display(),
            info.color_type
        );
    }
    let src = fir::images::ImageRef::new(info.width, info.height, &buf, fir::PixelType::U8x3)?;
    let mut dst = fir::images::Image::new(w, h, fir::PixelType::U8x3);
    fir::Resizer::new().resize(&src, &mut dst, None)?;
    let bgr = dst
        .buffer()
        .chunks_exact(3)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect();
    Ok((bgr, "scikit-image astronaut.png, resized"))
}

fn preprocessor(mode: &str) -> Result<Preprocessor> {
    let text = format!("color = \"rgb\"\nresize = \"{mode}\"\nmean = {MEAN:?}\nstd = {STD:?}");
    let raw: RawPre = toml::from_str(&text)?;
    let cfg = PreSpec::from_raw(&raw)?.resolve(&[1, 3, 640, 640], "f32")?;
    Ok(Preprocessor::new(cfg))
}

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start(frames: &[(String, PathBuf, u32, u32)]) -> Result<(Peer, String)> {
        let python = std::env::var("REFLEXD_PYTHON").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.cache/reflexd/v1/venv/bin/python")
        });
        let mut cmd = Command::new(&python);
        cmd.arg(repo().join("benches/preprocess_cv.py"));
        for (name, path, w, h) in frames {
            cmd.arg(format!("{name}:{}:{w}:{h}", path.display()));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {python} (run scripts/provision.sh)"))?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut peer = Peer {
            child,
            stdin,
            stdout,
        };
        let ready = peer.line()?;
        let version = ready["opencv"].as_str().unwrap_or("?").to_string();
        Ok((peer, version))
    }

    fn line(&mut self) -> Result<serde_json::Value> {
        let mut s = String::new();
        if self.stdout.read_line(&mut s)? == 0 {
            bail!(
                "the OpenCV peer exited (is opencv-python-headless installed? run scripts/provision.sh)"
            );
        }
        Ok(serde_json::from_str(&s)?)
    }

    fn ask(&mut self, cmd: &str) -> Result<serde_json::Value> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        self.line()
    }

    fn run(&mut self, frame: &str, mode: &str, iters: usize, kind: &str) -> Result<Vec<f64>> {
        let v = self.ask(&format!("run {frame} {mode} {iters} {kind}"))?;
        v["us"]
            .as_array()
            .ok_or_else(|| anyhow!("bad reply {v}"))
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

struct Case {
    frame: &'static str,
    mode: &'static str,
    data: Vec<u8>,
    pre: Preprocessor,
    out: Vec<u8>,
    rust: Vec<f64>,
    chain: Vec<f64>,
    blob: Vec<f64>,
}

impl Case {
    fn run_rust(&mut self, w: u32, h: u32, iters: usize) -> Result<()> {
        for _ in 0..iters {
            let t0 = Instant::now();
            let claim = ImageClaim {
                encoding: Encoding::Bgr8,
                width: Some(w),
                height: Some(h),
                step: None,
            };
            let desc = check_image(&claim, &self.data, &ImageLimits::default())?;
            self.pre.run(
                &ImageInput {
                    desc,
                    data: &self.data,
                },
                &mut self.out,
            )?;
            self.rust.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        Ok(())
    }
}

/// Max and mean |reflexd − OpenCV chain| in 8-bit pixel units (the
/// normalised difference × 255 × std), and the share of elements that differ
/// by more than one pixel level.
fn compare(ours: &[u8], theirs: &Path) -> Result<(f64, f64, f64)> {
    let bytes = std::fs::read(theirs)?;
    if bytes.len() != ours.len() {
        bail!(
            "OpenCV output has {} bytes, ours {}",
            bytes.len(),
            ours.len()
        );
    }
    let plane = ours.len() / 4 / 3;
    let (mut max, mut sum, mut over) = (0f64, 0f64, 0usize);
    for (i, (a, b)) in ours.chunks_exact(4).zip(bytes.chunks_exact(4)).enumerate() {
        let a = f32::from_le_bytes(a.try_into()?);
        let b = f32::from_le_bytes(b.try_into()?);
        let d = ((a - b).abs() * 255.0 * STD[i / plane]) as f64;
        max = max.max(d);
        sum += d;
        over += (d > 1.0 + 1e-3) as usize;
    }
    let n = (ours.len() / 4) as f64;
    Ok((max, sum / n, over as f64 / n))
}

/// Interleaved rounds: per case, reflexd and both OpenCV ways.
fn measure(cases: &mut [Case], peer: &mut Peer, rounds: usize) -> Result<()> {
    for round in 0..rounds {
        for case in cases.iter_mut() {
            let (_, w, h) = FRAMES
                .iter()
                .find(|f| f.0 == case.frame)
                .copied()
                .context("frame")?;
            let iters = if w > 1000 { 8 } else { 20 };
            // Alternate who goes first, so neither always runs on a warmer cache.
            if round % 2 == 0 {
                case.run_rust(w, h, iters)?;
            }
            case.chain
                .extend(peer.run(case.frame, case.mode, iters, "chain")?);
            case.blob
                .extend(peer.run(case.frame, case.mode, iters, "blob")?);
            if round % 2 == 1 {
                case.run_rust(w, h, iters)?;
            }
        }
    }
    Ok(())
}

/// The results table (markdown), with the numerical comparison per case.
fn report(cases: &[Case], peer: &mut Peer, dir: &Path) -> Result<String> {
    let mut table = String::from(
        "| frame | resize | reflexd p50 / p99 (µs) | OpenCV chain p50 / p99 | OpenCV blob p50 / p99 | reflexd ÷ chain (p50) | reflexd ÷ blob (p50) | max / mean diff vs chain (levels) | elements > 1 level |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for case in cases {
        let dump = dir.join(format!("{}-{}.f32", case.frame, case.mode));
        peer.ask(&format!(
            "dump {} {} {}",
            case.frame,
            case.mode,
            dump.display()
        ))?;
        let (max, mean, over) = compare(&case.out, &dump)?;
        let (r, c, b) = (&case.rust, &case.chain, &case.blob);
        table.push_str(&format!(
            "| {} | {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} | {:.2} | {max:.2} / {mean:.3} | {:.2} % |\n",
            case.frame, case.mode,
            pct(r, 0.5), pct(r, 0.99), pct(c, 0.5), pct(c, 0.99), pct(b, 0.5), pct(b, 0.99),
            pct(r, 0.5) / pct(c, 0.5), pct(r, 0.5) / pct(b, 0.5), over * 100.0,
        ));
    }
    Ok(table)
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 12 };
    let dir = std::env::temp_dir().join(format!("reflexd-bench-pre-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut files = Vec::new();
    let mut cases = Vec::new();
    let mut source = "";
    for (name, w, h) in FRAMES {
        let (data, src) = frame(w, h)?;
        source = src;
        let path = dir.join(format!("{name}.bgr"));
        std::fs::write(&path, &data)?;
        files.push((name.to_string(), path, w, h));
        for mode in MODES {
            let pre = preprocessor(mode)?;
            let out = vec![0u8; pre.output_bytes()];
            let (rust, chain, blob) = (Vec::new(), Vec::new(), Vec::new());
            cases.push(Case {
                frame: name,
                mode,
                data: data.clone(),
                pre,
                out,
                rust,
                chain,
                blob,
            });
        }
    }
    let (mut peer, opencv) = Peer::start(&files)?;
    println!("frames: {source}; OpenCV {opencv}, 1 thread; {rounds} rounds");
    measure(&mut cases, &mut peer, rounds)?;
    let table = report(&cases, &mut peer, &dir)?;
    drop(peer);
    std::fs::remove_dir_all(&dir)?;
    println!("\n{table}");
    println!("target: reflexd ÷ OpenCV ≤ 1.0 at p50 (both OpenCV ways)");
    if !quick {
        let md = format!(
            "# Image pre-processing: reflexd vs OpenCV\n\nCommand: `cargo bench --bench preprocess` (program `benches/preprocess.rs`, OpenCV peer `benches/preprocess_cv.py`).\nJob: bgr8 frame → 640×640 RGB f32 NCHW, ImageNet mean/std, bilinear, letterbox (pad 114) or stretch; one thread each.\nFrames: {source}. OpenCV {opencv} (opencv-python-headless). {rounds} interleaved rounds.\n\n{table}\nDifferences are in 8-bit pixel levels (normalised difference × 255 × std); see docs/images.md § Numerical agreement.\n"
        );
        std::fs::write(repo().join("benches/results/preprocess.md"), md)?;
    }
    Ok(())
}
