//! The measuring client of the latency benchmark: request frames, reply
//! parsing (reflexd predictions and the reference peers' echoes), one timed
//! round trip at a time, and the series each target accumulates.

use super::*;

/// How a reply identifies the request it answers.
#[derive(Clone, Copy)]
pub(crate) enum ReplyFormat {
    /// The request's `seq=N` attachment comes back (echo, Python node).
    Attachment,
    /// A reflexd prediction (safetensors metadata) or JSON error message.
    Reflexd,
}

/// The daemon's own account of a frame, from the prediction's metadata.
#[derive(Clone, Copy)]
pub(crate) struct DaemonTiming {
    pub(crate) queue_us: u64,
    pub(crate) inference_us: u64,
    pub(crate) e2e_us: u64,
    pub(crate) worker: u64,
}

pub(crate) struct Reply {
    pub(crate) seq: u64,
    pub(crate) at: Instant,
    pub(crate) error: Option<String>,
    pub(crate) timing: Option<DaemonTiming>,
}

pub(crate) fn parse_reply(fmt: ReplyFormat, s: &Sample, at: Instant) -> Option<Reply> {
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

pub(crate) enum Outcome {
    Ok(f64, Option<DaemonTiming>),
    Error(String),
    Lost,
}

/// The measuring side: one zenoh session connected to the target, a
/// publisher with the daemon's own QoS, and a callback subscriber that
/// timestamps replies on arrival (before any parsing or thread hand-off).
pub(crate) struct Client {
    pub(crate) publisher: zenoh::pubsub::Publisher<'static>,
    pub(crate) replies: Receiver<Reply>,
    pub(crate) _sub: zenoh::pubsub::Subscriber<()>,
    pub(crate) session: zenoh::Session,
    pub(crate) next_seq: u64,
}

impl Client {
    pub(crate) fn connect(
        port: u16,
        req_key: &str,
        reply_key: &str,
        fmt: ReplyFormat,
    ) -> Result<Client> {
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

    pub(crate) fn round_trip(&mut self, payload: &[u8], timeout: Duration) -> Outcome {
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
    pub(crate) fn wait_ready(&mut self, payload: &[u8], what: &str) -> Result<()> {
        for _ in 0..100 {
            if let Outcome::Ok(..) = self.round_trip(payload, Duration::from_millis(100)) {
                return Ok(());
            }
        }
        bail!("{what}: no reply within 10 s of connecting")
    }

    pub(crate) fn close(self) {
        let _ = self.session.close().wait();
    }
}

/// Results of one target.
#[derive(Default)]
pub(crate) struct Series {
    pub(crate) lat: Vec<f64>,
    pub(crate) lost: usize,
    pub(crate) errors: BTreeMap<String, usize>,
    pub(crate) timing: Vec<DaemonTiming>,
    /// Per reflexd reply: client-observed time minus the daemon's `e2e_us`,
    /// i.e. both zenoh hops plus encode and put.
    pub(crate) outside: Vec<f64>,
}

impl Series {
    pub(crate) fn record(&mut self, o: Outcome) {
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
    pub(crate) fn summary(&self) -> Summary {
        summarize(&self.lat, self.lost + self.errors.values().sum::<usize>())
    }
}

/// Pre-built audio: a few tones with a moving envelope plus noise, so the
/// model sees speech-like energy changes rather than a constant.
pub(crate) struct Frames {
    pub(crate) f32s: Vec<Vec<f32>>,
    pub(crate) bytes: Vec<Vec<u8>>,
}

impl Frames {
    pub(crate) fn new(seed: u64) -> Frames {
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
    pub(crate) fn bytes(&self, i: usize) -> &[u8] {
        &self.bytes[i % FRAME_VARIANTS]
    }
}

/// Runs `n` round trips back to back (after `gap`), or paced at `hz` with
/// missed slots skipped, like a sensor that does not wait. Stops early at
/// `cap` so an overloaded target cannot stretch the run.
pub(crate) fn measure(
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
pub(crate) enum Pace {
    Gap(Duration),
    Hz(f64),
}
