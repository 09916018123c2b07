//! Part B: does a low-priority model disturb a real-time one? Unloaded and
//! loaded blocks (PP-OCR requests at Poisson arrivals from another process)
//! against reflexd, then the single-threaded Python node.

use super::*;

pub(crate) struct Isolation {
    pub(crate) unloaded: Summary,
    pub(crate) loaded: Summary,
}

pub(crate) fn print_isolation(title: &str, iso: &Isolation) {
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
pub(crate) fn isolation_run(
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

pub(crate) fn timing_line(name: &str, s: &Series) {
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
pub(crate) fn plot_isolation(variant: &str, unloaded: &[f64], loaded: &[f64]) -> Result<()> {
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

pub(crate) fn part_b(
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

pub(crate) fn part_b_python(args: &Args, node: &PyNode, frames: &Frames) -> Result<Isolation> {
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
