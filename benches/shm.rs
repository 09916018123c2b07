//! Same-host camera frames through zenoh shared memory (issue 12): one
//! 1080p BGR frame (1920×1080×3 = 6 220 800 B) from a client to a peer that
//! re-publishes it from its subscriber callback (the echo of
//! `common/harness.rs`), and back; the round trip is timed on the client.
//! Three ways, each with its own pair of zenoh sessions on loopback TCP
//! (explicit 127.0.0.1 ports, scouting off), interleaved in rounds so noise
//! hits them alike:
//!
//! - `tcp`: shared memory off on both sessions: the frame is serialised into
//!   TCP batches on the way out and again on the way back.
//! - `shm provider`: the client publishes a buffer it allocated from its own
//!   SHM provider (a camera driver writing into it); only a descriptor
//!   crosses the socket, and the echo re-publishes the same buffer.
//! - `shm implicit`: shared memory on, the client publishes a plain `Vec`;
//!   zenoh copies it into its transport-optimisation pool (messages ≥ 3 KiB).
//! - `shm provider + fill`: as `shm provider`, but every frame is first
//!   allocated from the provider and copied in from a `Vec` (a client that
//!   does not own the camera's memory).
//!
//! Each row says whether the echoed frame arrived as an SHM buffer, so a
//! silent fallback to the network path cannot pass for shared memory. It
//! prints a table and ratios, never fails on a number:
//! `cargo bench --bench shm [-- --frames N --rounds N]`.

#[path = "common/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use crossbeam::channel;
use harness::{CpuMeter, Summary, free_port, header, peer_config, row, summarize};
use zenoh::Wait;
use zenoh::bytes::ZBytes;
use zenoh::shm::{BlockOn, GarbageCollect, ShmProvider, ShmProviderBuilder, ZShm};

const WIDTH: usize = 1920;
const HEIGHT: usize = 1080;
const FRAME_BYTES: usize = WIDTH * HEIGHT * 3;
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Args {
    frames: usize,
    rounds: usize,
    warmup: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        frames: 600,
        rounds: 6,
        warmup: 20,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter().filter(|s| *s != "--bench");
    while let Some(flag) = it.next() {
        let mut val = || -> Result<usize> {
            it.next()
                .ok_or_else(|| anyhow!("{flag} needs a value"))?
                .parse()
                .map_err(|e| anyhow!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--frames" => a.frames = val()?,
            "--rounds" => a.rounds = val()?,
            "--warmup" => a.warmup = val()?,
            "--quick" => (a.frames, a.rounds) = (120, 3),
            "-h" | "--help" => {
                println!(
                    "usage: cargo bench --bench shm [-- --frames N --rounds N --warmup N --quick]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?} (try --help)"),
        }
    }
    if a.frames == 0 || a.rounds == 0 {
        bail!("--frames and --rounds must be at least 1");
    }
    Ok(a)
}

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Tcp,
    ShmProvider,
    ShmImplicit,
    ShmFill,
}

impl Way {
    const ALL: [Way; 4] = [Way::Tcp, Way::ShmProvider, Way::ShmImplicit, Way::ShmFill];

    fn name(self) -> &'static str {
        match self {
            Way::Tcp => "tcp (shared memory off)",
            Way::ShmProvider => "shm provider (frame already in SHM)",
            Way::ShmImplicit => "shm implicit (Vec, zenoh copies)",
            Way::ShmFill => "shm provider + fill (alloc, copy)",
        }
    }

    fn shm(self) -> bool {
        self != Way::Tcp
    }
}

/// A loopback peer config with shared memory on (initialised at open, so
/// the first frame pays nothing) or off.
fn config(listen: Option<u16>, connect: Option<u16>, shm: bool) -> Result<zenoh::Config> {
    let mut c = peer_config(listen, connect)?;
    let set = |c: &mut zenoh::Config, k: &str, v: &str| {
        c.insert_json5(k, v)
            .map_err(|e| anyhow!("zenoh config {k}: {e}"))
    };
    set(&mut c, "transport/shared_memory/enabled", &shm.to_string())?;
    if shm {
        set(&mut c, "transport/shared_memory/mode", r#""init""#)?;
        // Two frames in flight at most (out and back), plus slack.
        set(
            &mut c,
            "transport/shared_memory/transport_optimization/pool_size",
            &(4 * FRAME_BYTES).to_string(),
        )?;
    }
    Ok(c)
}

/// One way's sessions: the echo side and the client, its publisher, the
/// replies and (for the provider ways) the SHM provider and a filled frame.
struct Lane {
    way: Way,
    _echo_session: zenoh::Session,
    _echo: zenoh::pubsub::Subscriber<()>,
    client: zenoh::Session,
    publisher: zenoh::pubsub::Publisher<'static>,
    _replies: zenoh::pubsub::Subscriber<()>,
    rx: channel::Receiver<bool>,
    provider: Option<ShmProvider<zenoh::shm::PosixShmProviderBackend>>,
    shm_frame: Option<ZShm>,
    plain: ZBytes,
    source: Vec<u8>,
    samples: Vec<f64>,
    lost: usize,
    as_shm: usize,
}

impl Lane {
    fn open(way: Way, frame: &[u8]) -> Result<Lane> {
        let port = free_port()?;
        let zerr = |e: zenoh::Error| anyhow!("{e}");
        let echo_session = zenoh::open(config(Some(port), None, way.shm())?)
            .wait()
            .map_err(zerr)?;
        let prefix = format!("bench/shm/{}", way as u8);
        let echo = harness::echo(
            &echo_session,
            &format!("{prefix}/in"),
            &format!("{prefix}/out"),
        )?;
        let client = zenoh::open(config(None, Some(port), way.shm())?)
            .wait()
            .map_err(zerr)?;
        let (tx, rx) = channel::bounded(16);
        let replies = client
            .declare_subscriber(format!("{prefix}/out"))
            .callback(move |s| {
                let _ = tx.try_send(s.payload().as_shm().is_some());
            })
            .wait()
            .map_err(zerr)?;
        let publisher = client
            .declare_publisher(format!("{prefix}/in"))
            .wait()
            .map_err(zerr)?;
        let (provider, shm_frame) = if matches!(way, Way::ShmProvider | Way::ShmFill) {
            let provider = ShmProviderBuilder::default_backend(4 * FRAME_BYTES)
                .wait()
                .map_err(|e| anyhow!("SHM provider: {e:?}"))?;
            let mut buf = alloc(&provider)?;
            buf.copy_from_slice(frame);
            (Some(provider), Some(ZShm::from(buf)))
        } else {
            (None, None)
        };
        Ok(Lane {
            way,
            _echo_session: echo_session,
            _echo: echo,
            client,
            publisher,
            _replies: replies,
            rx,
            provider,
            shm_frame,
            plain: ZBytes::from(frame.to_vec()),
            source: frame.to_vec(),
            samples: Vec::new(),
            lost: 0,
            as_shm: 0,
        })
    }

    /// Waits until the echo answers (links and routes are up).
    fn ready(&mut self) -> Result<()> {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if self.round_trip()?.is_some() {
                return Ok(());
            }
        }
        bail!("{}: no echo within 20 s", self.way.name())
    }

    /// One frame out and back: the time, or `None` if lost.
    fn round_trip(&mut self) -> Result<Option<(f64, bool)>> {
        while self.rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        let payload: ZBytes = match self.way {
            Way::Tcp | Way::ShmImplicit => self.plain.clone(),
            Way::ShmProvider => self.shm_frame.clone().expect("provider way").into(),
            Way::ShmFill => {
                let provider = self.provider.as_ref().expect("provider way");
                let mut buf = alloc(provider)?;
                buf.copy_from_slice(&self.source);
                buf.into()
            }
        };
        self.publisher
            .put(payload)
            .wait()
            .map_err(|e| anyhow!("put: {e}"))?;
        Ok(self
            .rx
            .recv_timeout(REPLY_TIMEOUT)
            .ok()
            .map(|shm| (t0.elapsed().as_secs_f64() * 1e6, shm)))
    }

    fn measure(&mut self, n: usize, record: bool) -> Result<()> {
        for _ in 0..n {
            match self.round_trip()? {
                Some((us, shm)) if record => {
                    self.samples.push(us);
                    self.as_shm += usize::from(shm);
                }
                Some(_) => {}
                None if record => self.lost += 1,
                None => {}
            }
        }
        Ok(())
    }

    fn summary(&self) -> Summary {
        summarize(&self.samples, self.lost)
    }
}

fn alloc(
    provider: &ShmProvider<zenoh::shm::PosixShmProviderBackend>,
) -> Result<zenoh::shm::ZShmMut> {
    provider
        .alloc(FRAME_BYTES)
        .with_policy::<BlockOn<GarbageCollect>>()
        .wait()
        .map_err(|e| anyhow!("SHM alloc: {e:?}"))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    harness::print_header("shm", &args);
    let mut rng = harness::Rng::new(7);
    let frame: Vec<u8> = (0..FRAME_BYTES).map(|_| rng.next_u64() as u8).collect();
    let mut lanes = Way::ALL
        .iter()
        .map(|w| Lane::open(*w, &frame))
        .collect::<Result<Vec<_>>>()?;
    for l in lanes.iter_mut() {
        l.ready()?;
        l.measure(args.warmup, false)?;
    }
    let cpu = CpuMeter::start();
    let per_round = args.frames.div_ceil(args.rounds);
    for r in 0..args.rounds {
        let n = per_round.min(args.frames.saturating_sub(r * per_round));
        for l in lanes.iter_mut() {
            l.measure(2, false)?;
            l.measure(n, true)?;
        }
    }
    println!();
    println!(
        "## 1080p BGR frame ({FRAME_BYTES} B): client → echo peer → client, {} interleaved rounds",
        args.rounds
    );
    println!();
    header();
    for l in &lanes {
        row(l.way.name(), &l.summary());
    }
    println!();
    for l in &lanes {
        println!(
            "{}: {} of {} echoes arrived as SHM buffers",
            l.way.name(),
            l.as_shm,
            l.samples.len()
        );
    }
    let tcp = lanes[0].summary();
    for l in &lanes[1..] {
        let s = l.summary();
        println!(
            "{} / tcp: p50 {:.3}, p99 {:.3}",
            l.way.name(),
            s.p50 / tcp.p50,
            s.p99 / tcp.p99
        );
    }
    cpu.report("the measured rounds");
    for l in lanes {
        let _ = l.client.close().wait();
    }
    Ok(())
}
