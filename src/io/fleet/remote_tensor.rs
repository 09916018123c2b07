//! Remote-only tensor pipelines (`offload.when = "missing_model"` and no
//! model file here): this daemon subscribes to the pipeline's input key as
//! usual but loads nothing; every message is sent as received (payload
//! bytes, its ids moved into the offload header) to the target, which
//! decodes and validates it with its own config. The answer is published
//! on this pipeline's output or error key like a local one. While the
//! target is down, or when it does not answer within `timeout_ms`, the
//! request ends with `offload_unavailable`: there is no local model to
//! fail over to. One outcome per message, whoever comes first; nothing
//! blocks (queries and puts use `CongestionControl::Drop`).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use zenoh::Wait;
use zenoh::qos::CongestionControl;
use zenoh::query::Reply;
use zenoh::sample::Sample;

use super::header::{self, Form, OffloadHeader, Rewrite};
use super::target::{Pending, Target};
use super::{Fleet, micros};
use crate::config::{InputFormat, PipelineConfig};
use crate::error::{ErrorCode, Rejection};
use crate::io::{egress, ingress};
use crate::obs::fleet::{Failover, OffloadStats};
use crate::wire::{self, RequestMeta};

/// One remote-only tensor pipeline.
pub(super) struct Route {
    pub cfg: PipelineConfig,
    pub target: Arc<Target>,
    querier: zenoh::query::Querier<'static>,
    matched: Arc<AtomicBool>,
    _matching: zenoh::matching::MatchingListener<()>,
    pub stats: OffloadStats,
    /// Messages that reached the subscriber.
    pub received: std::sync::atomic::AtomicU64,
}

impl Route {
    pub fn declare(
        session: &zenoh::Session,
        cfg: PipelineConfig,
        target: Arc<Target>,
    ) -> zenoh::Result<Route> {
        let o = cfg.offload.as_ref().expect("remote-only pipelines offload");
        let (querier, (matched, matching)) = super::tensor_querier(session, &cfg, o)?;
        Ok(Route {
            cfg,
            target,
            querier,
            matched,
            _matching: matching,
            stats: OffloadStats::default(),
            received: Default::default(),
        })
    }

    pub fn up(&self) -> bool {
        self.target.up() && self.matched.load(SeqCst)
    }

    fn fail(&self, session: &zenoh::Session, m: &Msg, rej: &Rejection) {
        egress::publish_error(
            session,
            &self.cfg.error_key,
            &self.cfg.name,
            &m.stream,
            (m.meta.id.as_deref(), m.meta.seq),
            rej,
        );
    }
}

/// What is kept of a message while it is away.
struct Msg {
    stream: String,
    meta: RequestMeta,
    received: Instant,
}

/// Declares the input subscriber of remote-only tensor pipeline `ri`.
pub(super) fn subscribe(
    fleet: &Arc<Fleet>,
    session: &zenoh::Session,
    ri: usize,
) -> zenoh::Result<zenoh::pubsub::Subscriber<()>> {
    let f = fleet.clone();
    session
        .declare_subscriber(fleet.remote_tensors[ri].cfg.input.clone())
        .callback(move |s| on_sample(&f, ri, &s))
        .wait()
}

fn on_sample(fleet: &Arc<Fleet>, ri: usize, sample: &Sample) {
    let received = Instant::now();
    let r = &fleet.remote_tensors[ri];
    let Some(ctx) = fleet.ctx.upgrade() else {
        return;
    };
    r.received.fetch_add(1, Relaxed);
    let stream = ingress::stream_id(&r.cfg.input, sample.key_expr().as_str());
    let bytes = sample.payload().to_bytes();
    let (meta, checked) = meta(fleet, r, &stream, sample, &bytes);
    let m = Msg {
        stream,
        meta,
        received,
    };
    if let Err(rej) = checked {
        return r.fail(&ctx.session, &m, &rej);
    }
    if !r.up() || (r.stats.inflight.load(Relaxed) as usize) >= fleet.max_inflight {
        r.stats.unavailable.fetch_add(1, Relaxed);
        return r.fail(
            &ctx.session,
            &m,
            &unavailable(&r.cfg, "is down or not serving it"),
        );
    }
    let header = OffloadHeader {
        origin: fleet.node.clone(),
        stream: m.stream.clone(),
        level: ctx.config.levels[r.cfg.level].clone(),
        budget_us: micros(r.cfg.deadline),
        form: Some(Form::Message),
        id: m.meta.id.clone(),
        seq: m.meta.seq,
        ts_us: m.meta.ts_us,
    };
    let flight = Arc::new(Flight {
        key: fleet.next_key(),
        ri,
        sent: received,
        fleet: Arc::downgrade(fleet),
        msg: Mutex::new(Some(m)),
    });
    r.stats.offloaded.fetch_add(1, Relaxed);
    r.stats.inflight.fetch_add(1, Relaxed);
    r.target.track(flight.key, flight.clone());
    let guard = Guard(flight);
    let sent = r
        .querier
        .get()
        .payload(bytes.into_owned())
        .attachment(header.encode())
        .callback(move |reply| guard.0.answer(reply))
        .wait();
    if let Err(e) = sent {
        tracing::debug!(pipeline = %r.cfg.name, error = %e, "offload query not sent");
    }
}

/// The message's ids, and whether it passes the checks this daemon can
/// make without the model (stream id, size, metadata).
fn meta(
    fleet: &Fleet,
    r: &Route,
    stream: &str,
    sample: &Sample,
    bytes: &[u8],
) -> (RequestMeta, Result<(), Rejection>) {
    if stream.len() > ingress::MAX_STREAM_LEN || wire::is_reserved(stream) {
        let msg = "stream id is reserved or longer than 128 bytes";
        return (
            Default::default(),
            Err(Rejection::new(ErrorCode::BadStream, msg)),
        );
    }
    if bytes.is_empty() {
        let rej = Rejection::new(ErrorCode::EmptyPayload, "the message has no payload");
        return (Default::default(), Err(rej));
    }
    if bytes.len() > fleet.max_payload {
        let msg = format!(
            "payload is {} bytes; the limit is {}",
            bytes.len(),
            fleet.max_payload
        );
        return (
            Default::default(),
            Err(Rejection::new(ErrorCode::PayloadTooLarge, msg)),
        );
    }
    match &r.cfg.format {
        InputFormat::Raw { .. } => match sample.attachment() {
            None => (RequestMeta::default(), Ok(())),
            Some(a) => match wire::decode_attachment(&a.to_bytes()) {
                Ok(m) => (m, Ok(())),
                Err((rej, m)) => (m, Err(rej)),
            },
        },
        InputFormat::Safetensors => {
            match wire::decode_safetensors(&Bytes::copy_from_slice(bytes), usize::MAX) {
                Ok((_, m)) => (m, Ok(())),
                Err((rej, m)) => (m, Err(rej)),
            }
        }
        // Refused at config time (`offload` on image or chained pipelines).
        InputFormat::Image(_) | InputFormat::Chained(_) => (
            RequestMeta::default(),
            Err(unavailable(
                &r.cfg,
                "image and chained pipelines are not offloaded",
            )),
        ),
    }
}

fn unavailable(cfg: &PipelineConfig, why: &str) -> Rejection {
    let to = cfg.offload.as_ref().map_or("", |o| o.to.as_str());
    Rejection::new(
        ErrorCode::OffloadUnavailable,
        format!("no local model (offload.when = \"missing_model\") and target {to:?} {why}"),
    )
}

/// A message waiting for its remote answer.
struct Flight {
    key: u64,
    ri: usize,
    sent: Instant,
    fleet: Weak<Fleet>,
    msg: Mutex<Option<Msg>>,
}

struct Guard(Arc<Flight>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fail_over(Failover::NoAnswer);
    }
}

impl Flight {
    fn take(&self, r: &Route) -> Option<Msg> {
        let m = self.msg.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        r.target.untrack(self.key);
        r.stats.inflight.fetch_sub(1, Relaxed);
        Some(m)
    }

    fn answer(&self, reply: Reply) {
        let Some(fleet) = self.fleet.upgrade() else {
            return;
        };
        let Some(ctx) = fleet.ctx.upgrade() else {
            return;
        };
        let r = &fleet.remote_tensors[self.ri];
        let Some(m) = self.take(r) else {
            r.stats.late_replies.fetch_add(1, Relaxed);
            return;
        };
        r.stats.round_trip.record_duration(self.sent.elapsed());
        match reply.result() {
            Ok(sample) => {
                let rw = Rewrite {
                    stream: &m.stream,
                    node: &fleet.remote_tensors[self.ri].target.node,
                    e2e_us: micros(m.received.elapsed()),
                    late: m.received.elapsed() > r.cfg.deadline,
                };
                match header::rewrite_prediction(&sample.payload().to_bytes(), &rw) {
                    Ok(out) => {
                        r.stats.remote_ok.fetch_add(1, Relaxed);
                        let key = egress::output_key(&r.cfg.output, &m.stream);
                        let _ = ctx
                            .session
                            .put(key, out)
                            .congestion_control(CongestionControl::Drop)
                            .priority(egress::level_priority(r.cfg.level))
                            .wait();
                    }
                    Err(e) => {
                        r.stats.remote_err.fetch_add(1, Relaxed);
                        let rej = Rejection::new(ErrorCode::InferenceFailed, e);
                        r.fail(&ctx.session, &m, &rej);
                    }
                }
            }
            Err(e) => {
                r.stats.remote_err.fetch_add(1, Relaxed);
                let (code, message) = header::error_of(&e.payload().to_bytes());
                let code = code.unwrap_or(ErrorCode::InferenceFailed);
                r.fail(&ctx.session, &m, &Rejection::new(code, message));
            }
        }
    }
}

impl Pending for Flight {
    fn fail_over(&self, why: Failover) {
        let Some(fleet) = self.fleet.upgrade() else {
            return;
        };
        let Some(ctx) = fleet.ctx.upgrade() else {
            return;
        };
        let r = &fleet.remote_tensors[self.ri];
        if let Some(m) = self.take(r) {
            r.stats.failed_over(why, self.sent.elapsed());
            r.stats.unavailable.fetch_add(1, Relaxed);
            let why = match why {
                Failover::Down => "went down",
                Failover::NoAnswer => "did not answer in time",
                Failover::Refused => "refused it",
            };
            r.fail(&ctx.session, &m, &unavailable(&r.cfg, why));
        }
    }
}
