//! Part A: one VAD frame's round trip through reflexd against the zenoh
//! echo, bare ORT, the Python node and minimal Rust nodes, interleaved in
//! rounds; one reflexd per idle-spin setting, so the spin policy is judged
//! against the callback node in the same run.

use super::*;

pub(crate) struct PartA {
    pub(crate) echo: Summary,
    pub(crate) bare: Summary,
    /// reflexd with the first `--idle-spin-us` setting.
    pub(crate) daemon: Summary,
    /// reflexd per idle-spin setting (µs), in the order given.
    pub(crate) spins: Vec<(u64, Summary)>,
    /// The minimal Rust node that runs ORT inside the zenoh callback.
    pub(crate) ort_callback: Summary,
    /// The minimal Rust node with reflexd's hand-off (diagnostic).
    pub(crate) ort_handoff: Summary,
    pub(crate) python: Option<(Summary, Summary)>,
}

/// One reflexd under test in part A: its idle-spin setting, the daemon, its
/// client and what was measured.
struct Variant {
    spin_us: u64,
    daemon: Daemon,
    client: Client,
    series: Series,
}

pub(crate) fn part_a(
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

    let mut variants = Vec::new();
    for &spin_us in &args.idle_spin_us {
        let d_port = free_port()?;
        let cfg = setup.with_idle_spin(spin_us).config(d_port)?;
        let daemon = rt.block_on(Daemon::start(cfg))?;
        let client = connect(
            d_port,
            &setup.vad.publish,
            &setup.vad.replies,
            ReplyFormat::Reflexd,
            "reflexd",
        )?;
        variants.push(Variant {
            spin_us,
            daemon,
            client,
            series: Series::default(),
        });
    }
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
        for v in variants.iter_mut() {
            measure(&mut v.client, frames, warm, gap, cap, None);
            measure(&mut v.client, frames, n, gap, cap, Some(&mut v.series));
        }
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
        daemon: variants[0].series.summary(),
        spins: variants
            .iter()
            .map(|v| (v.spin_us, v.series.summary()))
            .collect(),
        ort_callback: peer(PeerKind::OrtCallback),
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
    for (spin, sum) in &out.spins {
        row(&format!("reflexd end-to-end (idle_spin_us={spin})"), sum);
    }
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
    hand_off_verdicts(&out);
    let s_daemon = &variants[0].series;
    timing_line("part A", s_daemon);
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
    print_stats(&variants[0].daemon.stats());
    cpu.report("part A");

    for (c, _) in peer_clients {
        c.close();
    }
    if let Some(c) = py_client {
        c.close();
    }
    peers.close();
    for v in variants {
        v.client.close();
        rt.block_on(v.daemon.shutdown(Duration::from_secs(5)));
    }
    Ok(out)
}

/// Issue 12's hand-off target, per idle-spin setting, ratios taken in this
/// run: reflexd p50 and p99 ≤ 1.0 × the node that runs ORT inside the zenoh
/// callback, and ≤ 0.6 × the Python node.
fn hand_off_verdicts(out: &PartA) {
    let cb = &out.ort_callback;
    for (spin, d) in &out.spins {
        let (r50, r99) = (d.p50 / cb.p50, d.p99 / cb.p99);
        print!(
            "hand-off (idle_spin_us={spin}): vs ORT-in-callback node p50 {r50:.3}, p99 {r99:.3} (≤ 1.0 {})",
            verdict(r50 <= 1.0 && r99 <= 1.0)
        );
        match &out.python {
            Some((p, _)) => {
                let (q50, q99) = (d.p50 / p.p50, d.p99 / p.p99);
                println!(
                    "; vs python node p50 {q50:.3}, p99 {q99:.3} (≤ 0.6 {})",
                    verdict(q50 <= 0.6 && q99 <= 0.6)
                );
            }
            None => println!("; python node not run"),
        }
    }
}
