//! Offload of tensor requests, requester side. Ingress hands a validated
//! [`Job`] here ([`submit`]); by the pipeline's policy it goes to the local
//! scheduler or, encoded as a safetensors request, into a zenoh query on
//! `<target>/offload/<pipeline>`. The job itself waits in its [`Flight`]
//! until exactly one of these ends it: the target's answer (published on
//! the pipeline's own output or error key, as a local answer would be), or
//! a failover — the query ended without an answer (`timeout_ms`, the route
//! closed), the target's liveliness token went away, or the target refused
//! it — which gives the job back to the local scheduler with its original
//! receipt time and deadline. Whoever takes the job from the flight first
//! answers it; everything after that is counted as a late reply and
//! dropped. Nothing here blocks: queries and puts use
//! `CongestionControl::Drop`, and the callbacks run on zenoh threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use zenoh::Wait;
use zenoh::qos::CongestionControl;
use zenoh::query::Reply;

use super::header::{self, Form, OffloadHeader, Rewrite};
use super::target::{Pending, Target};
use super::{Fleet, micros};
use crate::config::{Late, OffloadConfig, OffloadWhen, Overflow, PipelineConfig};
use crate::ctx::Ctx;
use crate::error::{ErrorCode, Rejection};
use crate::io::egress;
use crate::job::Job;
use crate::obs::fleet::{Failover, OffloadStats};
use crate::sched::Submitted;

/// One offloading tensor pipeline.
pub(super) struct Route {
    pub cfg: OffloadConfig,
    pub target: Arc<Target>,
    querier: zenoh::query::Querier<'static>,
    /// The target declares the pipeline's offload queryable.
    matched: Arc<AtomicBool>,
    _matching: zenoh::matching::MatchingListener<()>,
    pub stats: OffloadStats,
    /// `latest` pipelines: newest frame sent per stream (receipt order), so
    /// a stale frame coming back never replaces a newer local one.
    newest: Option<Mutex<HashMap<Arc<str>, u64>>>,
}

/// Bound on the streams remembered in [`Route::newest`].
const MAX_REMEMBERED_STREAMS: usize = 4096;

impl Route {
    pub fn declare(
        session: &zenoh::Session,
        p: &PipelineConfig,
        cfg: OffloadConfig,
        target: Arc<Target>,
    ) -> zenoh::Result<Route> {
        let (querier, (matched, matching)) = super::tensor_querier(session, p, &cfg)?;
        Ok(Route {
            cfg,
            target,
            querier,
            matched,
            _matching: matching,
            stats: OffloadStats::default(),
            newest: (p.overflow == Overflow::Latest).then(|| Mutex::new(HashMap::new())),
        })
    }

    /// The target is alive and serves this pipeline.
    pub fn up(&self) -> bool {
        self.target.up() && self.matched.load(SeqCst)
    }

    fn room(&self, max: usize) -> bool {
        (self.stats.inflight.load(Relaxed) as usize) < max
    }

    fn remember(&self, job: &Job) {
        if let Some(m) = &self.newest {
            let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
            if m.len() >= MAX_REMEMBERED_STREAMS {
                m.clear();
            }
            m.insert(job.stream.clone(), job.recv_order);
        }
    }

    /// A newer frame of the job's stream was sent after it.
    fn stale(&self, job: &Job) -> bool {
        self.newest.as_ref().is_some_and(|m| {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&job.stream)
                .is_some_and(|&n| n > job.recv_order)
        })
    }
}

/// What the job's local fallback is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Sent instead of queued (`always`): back to the local scheduler.
    Fresh,
    /// The local queue was full (`busy`): queued locally if it has room now.
    Busy,
    /// Replaced by a newer frame of its stream (`busy`, `latest`): it ends
    /// `superseded`, as it would have without a target.
    Superseded,
}

/// Routes a validated job by its pipeline's offload policy.
pub(super) fn submit(fleet: &Arc<Fleet>, ctx: &Ctx, r: &Route, job: Box<Job>) -> Submitted<Job> {
    let ready = |r: &Route| r.up() && r.room(fleet.max_inflight);
    match r.cfg.when {
        OffloadWhen::Always => {
            if ready(r) {
                send(fleet, ctx, r, job, Origin::Fresh);
                return Submitted::Queued;
            }
            r.stats.kept_local.fetch_add(1, Relaxed);
            ctx.sched.submit(job)
        }
        OffloadWhen::Busy => match ctx.sched.submit(job) {
            Submitted::Rejected(rej, job) if rej.code == ErrorCode::Busy && ready(r) => {
                send(fleet, ctx, r, job, Origin::Busy);
                Submitted::Queued
            }
            Submitted::Replaced(old) if ready(r) => {
                send(fleet, ctx, r, old, Origin::Superseded);
                Submitted::Queued
            }
            other => other,
        },
        // The model is here (a missing one makes a remote-only route).
        OffloadWhen::MissingModel => ctx.sched.submit(job),
    }
}

/// A job waiting for its remote answer.
struct Flight {
    key: u64,
    pi: usize,
    origin: Origin,
    sent: Instant,
    fleet: Weak<Fleet>,
    job: Mutex<Option<Box<Job>>>,
}

/// Owned by the query's callback: when zenoh drops it (the query ended),
/// a job still waiting fails over.
struct Guard(Arc<Flight>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fail_over(Failover::NoAnswer);
    }
}

fn send(fleet: &Arc<Fleet>, ctx: &Ctx, r: &Route, job: Box<Job>, origin: Origin) {
    let tp = &ctx.tensors[job.pipeline];
    let now = ctx.sched.now();
    let header = OffloadHeader {
        origin: fleet.node.clone(),
        stream: job.stream.to_string(),
        level: ctx.config.levels[tp.cfg.level].clone(),
        budget_us: micros(job.deadline.saturating_duration_since(now)),
        form: Some(Form::Tensors),
        id: None,
        seq: None,
        ts_us: None,
    };
    let payload = crate::wire::encode_request(&job.tensors, &job.meta);
    r.remember(&job);
    let flight = Arc::new(Flight {
        key: fleet.next_key(),
        pi: job.pipeline,
        origin,
        sent: now,
        fleet: Arc::downgrade(fleet),
        job: Mutex::new(Some(job)),
    });
    r.stats.offloaded.fetch_add(1, Relaxed);
    r.stats.inflight.fetch_add(1, Relaxed);
    r.target.track(flight.key, flight.clone());
    if flight.settled() {
        return;
    }
    let guard = Guard(flight);
    let sent = r
        .querier
        .get()
        .payload(payload)
        .attachment(header.encode())
        .callback(move |reply| guard.0.answer(reply))
        .wait();
    if let Err(e) = sent {
        // The callback (and its guard) is dropped: the job fails over.
        tracing::debug!(node = %r.cfg.to, error = %e, "offload query not sent");
    }
}

impl Flight {
    fn settled(&self) -> bool {
        self.job.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// The job, to the first caller only.
    fn take(&self, r: &Route) -> Option<Box<Job>> {
        let job = self.job.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        r.target.untrack(self.key);
        r.stats.inflight.fetch_sub(1, Relaxed);
        Some(job)
    }

    fn answer(&self, reply: Reply) {
        let Some(fleet) = self.fleet.upgrade() else {
            return;
        };
        let Some(ctx) = fleet.ctx.upgrade() else {
            return;
        };
        let r = fleet.tensor_route(self.pi);
        let Some(job) = self.take(r) else {
            r.stats.late_replies.fetch_add(1, Relaxed);
            return;
        };
        match reply.result() {
            Ok(sample) => answered(&ctx, r, job, &sample.payload().to_bytes(), self.sent),
            Err(e) => {
                let (code, message) = header::error_of(&e.payload().to_bytes());
                match code {
                    // What the local model would answer too: passed on.
                    Some(
                        c @ (ErrorCode::DeadlineExceeded
                        | ErrorCode::NonFinite
                        | ErrorCode::Superseded),
                    ) => {
                        r.stats.remote_err.fetch_add(1, Relaxed);
                        egress::fail(&ctx, &job, &Rejection::new(c, message));
                    }
                    // Busy, shutting down, or a disagreement between the two
                    // daemons about the request: the local model decides.
                    _ => local(&ctx, r, job, self.origin, Failover::Refused, self.sent),
                }
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
        let r = fleet.tensor_route(self.pi);
        if let Some(job) = self.take(r) {
            local(&ctx, r, job, self.origin, why, self.sent);
        }
    }
}

fn superseded() -> Rejection {
    Rejection::new(
        ErrorCode::Superseded,
        "a newer frame of this stream arrived before this one ran",
    )
}

/// Gives a job back to the local path after its remote attempt failed.
fn local(ctx: &Ctx, r: &Route, job: Box<Job>, origin: Origin, why: Failover, sent: Instant) {
    r.stats.failed_over(why, sent.elapsed());
    tracing::debug!(node = %r.cfg.to, reason = why.as_str(), "offloaded request fails over");
    if origin == Origin::Superseded || r.stale(&job) {
        return egress::fail(ctx, &job, &superseded());
    }
    match ctx.sched.submit(job) {
        Submitted::Queued => {}
        Submitted::Replaced(old) => egress::fail(ctx, &old, &superseded()),
        Submitted::Rejected(rej, job) => egress::fail(ctx, &job, &rej),
    }
}

/// Publishes the target's prediction as this daemon's own answer.
fn answered(ctx: &Ctx, r: &Route, job: Box<Job>, bytes: &[u8], sent: Instant) {
    let tp = &ctx.tensors[job.pipeline];
    let now = ctx.sched.now();
    r.stats.round_trip.record_duration(now - sent);
    let late = now > job.deadline;
    if late {
        tp.stats.late.fetch_add(1, Relaxed);
        if tp.cfg.late == Late::Drop {
            r.stats.remote_err.fetch_add(1, Relaxed);
            let msg = "the offloaded request finished after its deadline; late = \"drop\" drops late results";
            return egress::fail(ctx, &job, &Rejection::new(ErrorCode::DeadlineExceeded, msg));
        }
    }
    let rw = Rewrite {
        stream: &job.stream,
        node: &r.cfg.to,
        e2e_us: micros(now - job.received),
        late,
    };
    let out = match header::rewrite_prediction(bytes, &rw) {
        Ok(out) => out,
        Err(e) => {
            r.stats.remote_err.fetch_add(1, Relaxed);
            let msg = format!("{} sent an unreadable prediction: {e}", r.cfg.to);
            return egress::fail(ctx, &job, &Rejection::new(ErrorCode::InferenceFailed, msg));
        }
    };
    tp.stats.time(&tp.stats.e2e, now - job.received);
    tp.stats.ok.fetch_add(1, Relaxed);
    r.stats.remote_ok.fetch_add(1, Relaxed);
    let key = egress::output_key(&tp.cfg.output, &job.stream);
    let put = ctx
        .session
        .put(key, out)
        .congestion_control(CongestionControl::Drop)
        .priority(egress::level_priority(tp.cfg.level))
        .wait();
    if let Err(e) = put {
        tp.stats.ok.fetch_sub(1, Relaxed);
        let rej = Rejection::new(ErrorCode::InferenceFailed, format!("publish failed: {e}"));
        egress::fail(ctx, &job, &rej);
    }
}
