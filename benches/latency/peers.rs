//! Reference peers of part A, on one listening zenoh session: the echo
//! (transport floor) and minimal Rust nodes that run Silero in the callback
//! or on a parked thread, plus the bare `ort` session they and the "bare"
//! target use.

use super::*;

/// Reference peers for part A, all on one listening session, each on its own
/// key prefix and replying with the daemon's QoS. They bracket reflexd: the
/// plain echo is the transport floor; the others add, one at a time, what
/// reflexd must do (hand the frame to a parked thread; run the model there).
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum PeerKind {
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
    pub(crate) const ALL: [PeerKind; 4] = [
        PeerKind::Echo,
        PeerKind::EchoHandoff,
        PeerKind::OrtCallback,
        PeerKind::OrtHandoff,
    ];
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            PeerKind::Echo => "bench/echo",
            PeerKind::EchoHandoff => "bench/echoh",
            PeerKind::OrtCallback => "bench/rnode",
            PeerKind::OrtHandoff => "bench/rnodeh",
        }
    }
    pub(crate) fn runs_model(self) -> bool {
        matches!(self, PeerKind::OrtCallback | PeerKind::OrtHandoff)
    }
}

pub(crate) type Frame = (ZBytes, Option<ZBytes>);

/// Bound on recorded `Session::run` durations per peer.
pub(crate) const MAX_STEP_TIMES: usize = 1 << 20;

/// The reply a model-running peer sends: the speech probability. The run
/// time is recorded so it can be set against reflexd's `inference_us`.
pub(crate) fn vad_reply(vad: &mut BareVad, payload: &ZBytes, times: &Mutex<Vec<f64>>) -> Vec<u8> {
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

pub(crate) struct Peers {
    pub(crate) subs: Vec<zenoh::pubsub::Subscriber<()>>,
    pub(crate) session: zenoh::Session,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) threads: Vec<std::thread::JoinHandle<()>>,
    /// `Session::run` durations, per model-running peer.
    pub(crate) step_times: Vec<(PeerKind, Arc<Mutex<Vec<f64>>>)>,
}

impl Peers {
    pub(crate) fn start(port: u16, vad: impl Fn() -> Result<BareVad>) -> Result<Peers> {
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

    pub(crate) fn step_times(&self, kind: PeerKind) -> Vec<f64> {
        self.step_times
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, t)| t.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    pub(crate) fn close(mut self) {
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
pub(crate) struct BareVad {
    pub(crate) session: Session,
    pub(crate) input: Tensor<f32>,
    pub(crate) state: Tensor<f32>,
    pub(crate) sr: Tensor<i64>,
}

impl BareVad {
    pub(crate) fn new(env: &Environment, model: &Path, intra_threads: usize) -> Result<BareVad> {
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

    pub(crate) fn step(&mut self, frame: &[f32]) -> Result<f32> {
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

pub(crate) fn bare_series(
    vad: &mut BareVad,
    frames: &Frames,
    n: usize,
    into: &mut Series,
) -> Result<()> {
    for i in 0..n {
        let f = &frames.f32s[i % FRAME_VARIANTS];
        let t0 = Instant::now();
        let p = vad.step(f)?;
        into.lat.push(t0.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(p);
    }
    Ok(())
}
