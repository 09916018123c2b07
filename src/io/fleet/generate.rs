//! Offload of generations, requester side. A command is parsed, tokenized
//! and registered here as usual (its id, its outbox, where its messages
//! go); then, by the pipeline's policy, the [`Generation`] either goes to
//! the local scheduler or waits in a [`Flight`] while the target generates
//! it: the command goes out as a zenoh query on `<target>/offload/<pipeline>`
//! (`ConsolidationMode::None`, so every token message comes back as its own
//! reply), and each token is recorded in the local generation and pushed
//! into its outbox, so the client sees one stream whoever produces it.
//! If the target goes down, stays silent past `timeout_ms`, refuses the
//! command, or the query ends without a final message, the generation
//! continues on the local model through the scheduler: the text streamed
//! so far is appended to the prompt and seq numbers go on, so no token is
//! sent twice and none is lost. A cancel on the local cancel key reaches
//! the target with the next token.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zenoh::Wait;
use zenoh::qos::CongestionControl;
use zenoh::query::{ConsolidationMode, Reply};

use super::header::{self, OffloadHeader};
use super::target::{Pending, Target};
use super::{Fleet, micros};
use crate::config::fleet::{offload_cancel_key, offload_key};
use crate::config::{GeneratorConfig, OffloadConfig, OffloadWhen};
use crate::ctx::{Ctx, GenPipe};
use crate::error::{ErrorCode, Rejection};
use crate::io::{egress, tokens};
use crate::llm::{Finish, Generation};
use crate::obs::fleet::{Failover, OffloadStats};

type GenRefused = crate::sched::GenRefused<crate::ctx::Kinds>;

/// Extra time the query stays open past the generation's own deadline.
const QUERY_SLACK: Duration = Duration::from_secs(2);

/// One offloading generation pipeline.
pub(super) struct Route {
    pub cfg: OffloadConfig,
    pub target: Arc<Target>,
    key: String,
    cancel_key: String,
    /// The target declares the pipeline's offload queryable.
    matched: Arc<AtomicBool>,
    _querier: zenoh::query::Querier<'static>,
    _matching: zenoh::matching::MatchingListener<()>,
    pub stats: OffloadStats,
}

impl Route {
    pub fn declare(
        session: &zenoh::Session,
        g: &GeneratorConfig,
        cfg: OffloadConfig,
        target: Arc<Target>,
    ) -> zenoh::Result<Route> {
        let key = offload_key(&cfg.to, &g.name);
        // Declared for its matching status only: each generation is one
        // `get` with its own timeout (its deadline).
        let querier = session.declare_querier(key.clone()).wait()?;
        let (matched, matching) = super::matching(&querier)?;
        Ok(Route {
            cancel_key: offload_cancel_key(&cfg.to, &g.name),
            key,
            cfg,
            target,
            matched,
            _querier: querier,
            _matching: matching,
            stats: OffloadStats::default(),
        })
    }

    pub fn up(&self) -> bool {
        self.target.up() && self.matched.load(SeqCst)
    }
}

/// Routes a registered generation by its pipeline's offload policy.
pub(super) fn submit(
    fleet: &Arc<Fleet>,
    ctx: &Ctx,
    r: &Route,
    level: usize,
    g: Box<Generation>,
) -> Result<(), GenRefused> {
    let gp = &ctx.gens[g.pipeline];
    let wanted = match r.cfg.when {
        OffloadWhen::Always => true,
        // This one included: more than a decode step's worth would wait.
        OffloadWhen::Busy => gp.registry.live() > gp.cfg.max_batch,
        OffloadWhen::MissingModel => false,
    };
    let room = (r.stats.inflight.load(Relaxed) as usize) < fleet.max_inflight;
    let left = g.deadline.saturating_duration_since(Instant::now());
    if wanted && r.up() && room && left >= Duration::from_millis(1) {
        send(fleet, ctx, r, level, g, left);
        return Ok(());
    }
    if wanted {
        r.stats.kept_local.fetch_add(1, Relaxed);
    }
    ctx.sched.submit_gen(level, g)
}

/// A generation the target is producing.
struct Flight {
    key: u64,
    gi: usize,
    level: usize,
    remote_id: String,
    sent: Instant,
    fleet: Weak<Fleet>,
    g: Mutex<Option<Box<Generation>>>,
    /// A message (token or final) came from the target.
    heard: AtomicBool,
    cancel_sent: AtomicBool,
}

struct Guard(Arc<Flight>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fail_over(Failover::NoAnswer);
    }
}

/// The command as the target gets it: the same request under an id unique
/// on the target, at this request's level and with the budget left.
fn command(g: &Generation, remote_id: &str, level: &str, left: Duration) -> Vec<u8> {
    let c = &g.cmd;
    let s = &c.sampling;
    let messages: Vec<Value> = c
        .messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    json!({
        "id": remote_id, "messages": messages, "max_tokens": c.max_tokens,
        "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
        "repetition_penalty": s.repetition_penalty, "seed": s.seed, "stop": c.stop,
        "priority": level, "deadline_ms": left.as_secs_f64() * 1000.0,
    })
    .to_string()
    .into_bytes()
}

fn send(
    fleet: &Arc<Fleet>,
    ctx: &Ctx,
    r: &Route,
    level: usize,
    g: Box<Generation>,
    left: Duration,
) {
    let key = fleet.next_key();
    let remote_id = format!("{}-{key}", fleet.id_prefix);
    let level_name = &ctx.config.levels[level];
    let body = command(&g, &remote_id, level_name, left);
    let header = OffloadHeader {
        origin: fleet.node.clone(),
        stream: String::new(),
        level: level_name.clone(),
        budget_us: micros(left),
        form: None,
        id: None,
        seq: None,
        ts_us: None,
    };
    let flight = Arc::new(Flight {
        key,
        gi: g.pipeline,
        level,
        remote_id,
        sent: Instant::now(),
        fleet: Arc::downgrade(fleet),
        g: Mutex::new(Some(g)),
        heard: AtomicBool::new(false),
        cancel_sent: AtomicBool::new(false),
    });
    r.stats.offloaded.fetch_add(1, Relaxed);
    r.stats.inflight.fetch_add(1, Relaxed);
    r.target.track(key, flight.clone());
    if flight.lock().is_none() {
        return;
    }
    first_message_timer(fleet, &flight, r.cfg.timeout);
    let guard = Guard(flight);
    let sent = ctx
        .session
        .get(r.key.clone())
        .payload(body)
        .attachment(header.encode())
        .consolidation(ConsolidationMode::None)
        .congestion_control(CongestionControl::Block)
        .priority(egress::level_priority(level))
        .timeout(left + QUERY_SLACK)
        .callback(move |reply| guard.0.answer(reply))
        .wait();
    if let Err(e) = sent {
        tracing::debug!(node = %r.cfg.to, error = %e, "offload query not sent");
    }
}

/// Fails the flight over if the target has sent nothing within `timeout`.
fn first_message_timer(fleet: &Fleet, flight: &Arc<Flight>, timeout: Duration) {
    let f = Arc::downgrade(flight);
    fleet.rt.spawn(async move {
        tokio::time::sleep(timeout).await;
        if let Some(f) = f.upgrade()
            && !f.heard.load(SeqCst)
        {
            f.fail_over(Failover::NoAnswer);
        }
    });
}

/// How a final message from the target ended the generation.
fn finish_of(v: &Value) -> (Finish, Option<Rejection>) {
    let reason = match v["finish_reason"].as_str() {
        Some("stop") => Finish::Stop,
        Some("length") => Finish::Length,
        Some("deadline") => Finish::Deadline,
        Some("cancelled") => Finish::Cancelled,
        _ => Finish::Error,
    };
    if reason != Finish::Error {
        return (reason, None);
    }
    let (code, message) = header::error_of(&serde_json::to_vec(v).unwrap_or_default());
    let code = code.unwrap_or(ErrorCode::InferenceFailed);
    (reason, Some(Rejection::new(code, message)))
}

/// Errors the local model would answer the same way: passed on even when
/// nothing was streamed yet. Anything else before the first token (busy,
/// too many generations, a disagreement about the prompt) fails over.
fn final_anyway(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::DeadlineExceeded | ErrorCode::InferenceFailed | ErrorCode::InternalError
    )
}

impl Flight {
    fn lock(&self) -> MutexGuard<'_, Option<Box<Generation>>> {
        self.g.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the flight: the generation, to the first caller only.
    fn take(&self, r: &Route) -> Option<Box<Generation>> {
        let g = self.lock().take()?;
        r.target.untrack(self.key);
        r.stats.inflight.fetch_sub(1, Relaxed);
        Some(g)
    }

    fn cancel_remote(&self, ctx: &Ctx, r: &Route) {
        if !self.cancel_sent.swap(true, SeqCst) {
            let put = ctx
                .session
                .put(r.cancel_key.clone(), self.remote_id.clone())
                .congestion_control(CongestionControl::Drop)
                .wait();
            if let Err(e) = put {
                tracing::debug!(error = %e, "cannot send an offload cancel");
            }
        }
    }

    fn answer(&self, reply: Reply) {
        let Some(fleet) = self.fleet.upgrade() else {
            return;
        };
        let Some(ctx) = fleet.ctx.upgrade() else {
            return;
        };
        let r = fleet.gen_route(self.gi);
        self.heard.store(true, SeqCst);
        let v: Option<Value> = match reply.result() {
            Ok(s) => serde_json::from_slice(&s.payload().to_bytes()).ok(),
            Err(_) => None,
        };
        let Some(v) = v else {
            return self.fail_over(Failover::Refused);
        };
        if v["done"] == true {
            return self.ended(&ctx, r, &v);
        }
        let mut slot = self.lock();
        let Some(g) = slot.as_mut() else {
            r.stats.late_replies.fetch_add(1, Relaxed);
            return;
        };
        if g.is_cancelled() {
            self.cancel_remote(&ctx, r);
        }
        let gp = &ctx.gens[self.gi];
        if gp.registry.room(g.route) < tokens::STEP_MESSAGES {
            drop(slot);
            return self.slow_consumer(&ctx, r);
        }
        let text = v["text"].as_str().unwrap_or_default();
        let token = v["token_id"].as_u64().and_then(|t| u32::try_from(t).ok());
        g.note_remote(token, text, Instant::now());
        if let Some(t) = token {
            let out = crate::llm::StepOutput {
                tokens: vec![(t, text.to_string())],
            };
            tokens::step_tokens(&ctx, g, &out);
        }
    }

    /// The target's final message.
    fn ended(&self, ctx: &Ctx, r: &Route, v: &Value) {
        let (reason, error) = finish_of(v);
        let mut slot = self.lock();
        let Some(g) = slot.as_ref() else {
            r.stats.late_replies.fetch_add(1, Relaxed);
            return;
        };
        let nothing_yet = g.tokens.is_empty() && g.text().is_empty();
        if let Some(e) = &error
            && nothing_yet
            && !final_anyway(e.code)
        {
            drop(slot);
            return self.fail_over(Failover::Refused);
        }
        let mut g = slot.take().expect("checked above");
        drop(slot);
        r.target.untrack(self.key);
        r.stats.inflight.fetch_sub(1, Relaxed);
        r.stats.round_trip.record_duration(self.sent.elapsed());
        let counter = if error.is_some() {
            &r.stats.remote_err
        } else {
            &r.stats.remote_ok
        };
        counter.fetch_add(1, Relaxed);
        g.remote = Some(r.cfg.to.clone());
        g.error = error;
        tokens::finish(ctx, g, reason);
    }

    fn slow_consumer(&self, ctx: &Ctx, r: &Route) {
        let Some(mut g) = self.take(r) else { return };
        self.cancel_remote(ctx, r);
        r.stats.remote_err.fetch_add(1, Relaxed);
        g.remote = Some(r.cfg.to.clone());
        g.error = Some(Rejection::new(
            ErrorCode::SlowConsumer,
            "the client has not taken this generation's earlier messages (its outbox is full)",
        ));
        tokens::finish(ctx, g, Finish::Error);
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
        let r = fleet.gen_route(self.gi);
        let Some(g) = self.take(r) else { return };
        r.stats.failed_over(why, self.sent.elapsed());
        if why != Failover::Down {
            // Still alive maybe (silent or refusing): stop its work.
            self.cancel_remote(&ctx, r);
        }
        tracing::debug!(node = %r.cfg.to, reason = why.as_str(), id = %g.cmd.id, "offloaded generation fails over");
        continue_locally(&ctx, &ctx.gens[self.gi], r, self.level, g);
    }
}

/// Hands a generation to the local scheduler, after the text the target
/// already streamed, if any.
fn continue_locally(ctx: &Ctx, gp: &GenPipe, r: &Route, level: usize, mut g: Box<Generation>) {
    if !g.text().is_empty() {
        g.remote = Some(r.cfg.to.clone());
        match gp.llm.encode(g.text()) {
            Ok(ids) => g.continue_after(ids),
            Err(e) => {
                g.error = Some(Rejection::new(
                    ErrorCode::InternalError,
                    format!("cannot continue the offloaded answer here: {e}"),
                ));
                return tokens::finish(ctx, g, Finish::Error);
            }
        }
    }
    if let Err((rej, mut g)) = ctx.sched.submit_gen(level, g) {
        g.error = Some(rej);
        tokens::finish(ctx, g, Finish::Error);
    }
}
