//! Remote-only generation pipelines (`offload.when = "missing_model"` and
//! no model directory here). The command topic, cancel key and query key
//! are this daemon's as configured; a command is parsed and bounded here
//! (ids, sizes, parameters; the prompt's token count is the target's to
//! check), relayed to the target under an id unique there, and every
//! message that comes back is passed to the client under its own id: on
//! `<output>/<id>` or as replies to its query. Messages are handed to one
//! delivery thread per pipeline through a bounded queue, because they are
//! published with `CongestionControl::Block` (a lost token corrupts the
//! text) and zenoh callbacks must not block. While the target is down the
//! command is refused with `offload_unavailable`; if the target goes away
//! mid-answer the stream ends with a final message carrying that error and
//! the text so far (there is no local model to continue on).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use crossbeam::sync::{Parker, Unparker};
use serde_json::{Value, json};
use zenoh::Wait;
use zenoh::qos::{CongestionControl, Priority};
use zenoh::query::{ConsolidationMode, Reply};

use super::header::OffloadHeader;
use super::target::{Pending, Target};
use super::{Fleet, micros};
use crate::config::fleet::{offload_cancel_key, offload_key};
use crate::config::{GeneratorConfig, OffloadConfig};
use crate::error::{ErrorCode, Rejection};
use crate::io::egress;
use crate::obs::fleet::{Failover, OffloadStats};
use crate::wire::command::{self, CommandLimits};
use crate::wire::reply::refused_query;

/// Messages waiting for the delivery thread, all generations of a pipeline.
const OUTBOX: usize = 1024;

/// Where one generation's messages go.
enum Dest {
    Topic(String),
    Query(zenoh::query::Query),
}

/// One relayed generation.
struct Relay {
    key: u64,
    ri: usize,
    id: String,
    remote_id: String,
    sent: Instant,
    fleet: Weak<Fleet>,
    dest: Mutex<Option<Dest>>,
    /// The outcome is decided (final queued or failed): first caller wins.
    ended: AtomicBool,
    heard: AtomicBool,
    text: Mutex<String>,
    tokens: AtomicU64,
}

struct Item {
    relay: Arc<Relay>,
    body: Vec<u8>,
    last: bool,
}

/// One remote-only generation pipeline.
pub(super) struct Route {
    pub cfg: GeneratorConfig,
    pub offload: OffloadConfig,
    pub target: Arc<Target>,
    key: String,
    cancel_key: String,
    matched: Arc<AtomicBool>,
    _querier: zenoh::query::Querier<'static>,
    _matching: zenoh::matching::MatchingListener<()>,
    pub stats: OffloadStats,
    pub received: AtomicU64,
    limits: CommandLimits,
    live: Mutex<HashMap<String, Arc<Relay>>>,
    outbox: ArrayQueue<Item>,
    wake: Mutex<Option<Unparker>>,
}

impl Route {
    pub fn declare(
        session: &zenoh::Session,
        cfg: GeneratorConfig,
        target: Arc<Target>,
    ) -> zenoh::Result<Route> {
        let offload = cfg.offload.clone().expect("remote-only pipelines offload");
        let key = offload_key(&offload.to, &cfg.name);
        let querier = session.declare_querier(key.clone()).wait()?;
        let (matched, matching) = super::matching(&querier)?;
        Ok(Route {
            cancel_key: offload_cancel_key(&offload.to, &cfg.name),
            key,
            limits: CommandLimits {
                max_tokens: cfg.max_tokens,
                default_max_tokens: cfg.default_max_tokens,
                max_prompt_chars: cfg.max_prompt_chars,
                max_messages: cfg.max_messages,
                default_deadline: cfg.deadline,
            },
            cfg,
            offload,
            target,
            matched,
            _querier: querier,
            _matching: matching,
            stats: OffloadStats::default(),
            received: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            outbox: ArrayQueue::new(OUTBOX),
            wake: Mutex::new(None),
        })
    }

    pub fn up(&self) -> bool {
        self.target.up() && self.matched.load(SeqCst)
    }

    fn live(&self) -> MutexGuard<'_, HashMap<String, Arc<Relay>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self, session: &zenoh::Session, id: Option<&str>, rej: &Rejection) {
        egress::publish_error(
            session,
            &self.cfg.error_key,
            &self.cfg.name,
            "",
            (id, None),
            rej,
        );
    }

    /// Queues a message for the delivery thread; false when full.
    fn push(&self, relay: &Arc<Relay>, body: Vec<u8>, last: bool) -> bool {
        let item = Item {
            relay: relay.clone(),
            body,
            last,
        };
        let ok = self.outbox.push(item).is_ok();
        if let Some(w) = self.wake.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            w.unpark();
        }
        ok
    }
}

/// The entities of remote-only generation pipeline `ri`: command and cancel
/// subscribers, the queryable and the delivery thread.
pub(super) struct Entities {
    _subs: [zenoh::pubsub::Subscriber<()>; 2],
    _queryable: zenoh::query::Queryable<()>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    unpark: Unparker,
}

impl Drop for Entities {
    /// The delivery thread sends what is queued and ends; not joined (it
    /// may be blocked on a client that stopped reading, until zenoh closes
    /// that link).
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        self.unpark.unpark();
        drop(self.thread.take());
    }
}

pub(super) fn declare(
    fleet: &Arc<Fleet>,
    s: &zenoh::Session,
    ri: usize,
) -> zenoh::Result<Entities> {
    let r = &fleet.remote_gens[ri];
    let f = fleet.clone();
    let commands = s
        .declare_subscriber(r.cfg.input.clone())
        .callback(move |sample| {
            let bytes = sample.payload().to_bytes();
            let out = &f.remote_gens[ri].cfg.output;
            command_in(&f, ri, &bytes, |id| Dest::Topic(format!("{out}/{id}")));
        })
        .wait()?;
    let f = fleet.clone();
    let cancels = s
        .declare_subscriber(r.cfg.cancel_key.clone())
        .callback(move |sample| {
            let bytes = sample.payload().to_bytes();
            let id = command::salvage_id(&bytes)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            cancel(&f, ri, &id);
        })
        .wait()?;
    let f = fleet.clone();
    let queryable = s
        .declare_queryable(r.cfg.query_key.clone())
        .callback(move |q| {
            let bytes = q
                .payload()
                .map(|p| p.to_bytes().into_owned())
                .unwrap_or_default();
            let mut q = Some(q);
            command_in(&f, ri, &bytes, |_| Dest::Query(q.take().expect("once")));
            if let Some(q) = q {
                // Refused before a relay took it: the error is its reply.
                let _ = q
                    .reply(q.key_expr().clone(), refused_query(None, &refused()))
                    .wait();
            }
        })
        .wait()?;
    let parker = Parker::new();
    let unpark = parker.unparker().clone();
    *r.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(unpark.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let (f, st) = (fleet.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name(format!("reflexd-relay{ri}"))
        .spawn(move || deliver(&f, ri, &parker, &st))
        .map_err(|e| zenoh::Error::from(e.to_string()))?;
    Ok(Entities {
        _subs: [commands, cancels],
        _queryable: queryable,
        stop,
        thread: Some(thread),
        unpark,
    })
}

fn refused() -> Rejection {
    Rejection::new(
        ErrorCode::BadCommand,
        "the command was refused (see the error key)",
    )
}

/// Parses a command, refuses it or relays it to the target.
fn command_in(fleet: &Arc<Fleet>, ri: usize, bytes: &[u8], dest: impl FnOnce(&str) -> Dest) {
    let Some(ctx) = fleet.ctx.upgrade() else {
        return;
    };
    let r = &fleet.remote_gens[ri];
    r.received.fetch_add(1, Relaxed);
    let cmd = match command::parse(bytes, &r.limits) {
        Ok(c) => c,
        Err(rej) => return r.error(&ctx.session, command::salvage_id(bytes).as_deref(), &rej),
    };
    let refuse = |rej: Rejection| r.error(&ctx.session, Some(&cmd.id), &rej);
    if !r.up() {
        r.stats.unavailable.fetch_add(1, Relaxed);
        let msg = format!(
            "no local model (offload.when = \"missing_model\") and target {:?} is down or not serving it",
            r.offload.to
        );
        return refuse(Rejection::new(ErrorCode::OffloadUnavailable, msg));
    }
    let key = fleet.next_key();
    let relay = Arc::new(Relay {
        key,
        ri,
        id: cmd.id.clone(),
        remote_id: format!("{}-{key}", fleet.id_prefix),
        sent: Instant::now(),
        fleet: Arc::downgrade(fleet),
        dest: Mutex::new(None),
        ended: AtomicBool::new(false),
        heard: AtomicBool::new(false),
        text: Mutex::new(String::new()),
        tokens: AtomicU64::new(0),
    });
    {
        let mut live = r.live();
        if live.contains_key(&cmd.id) {
            let msg = format!("a generation with id {:?} is already running", cmd.id);
            return refuse(Rejection::new(ErrorCode::DuplicateId, msg));
        }
        if live.len() >= r.cfg.max_generations {
            let msg = format!(
                "{} generations already running (max_generations)",
                live.len()
            );
            return refuse(Rejection::new(ErrorCode::TooManyGenerations, msg));
        }
        live.insert(cmd.id.clone(), relay.clone());
    }
    *relay.dest.lock().unwrap_or_else(|e| e.into_inner()) = Some(dest(&cmd.id));
    send(fleet, &ctx, r, relay, bytes, &cmd);
}

fn send(
    fleet: &Fleet,
    ctx: &crate::ctx::Ctx,
    r: &Route,
    relay: Arc<Relay>,
    bytes: &[u8],
    cmd: &command::Command,
) {
    let level = ctx.config.levels[r.cfg.level].clone();
    let mut v: Value = serde_json::from_slice(bytes).unwrap_or_default();
    v["id"] = relay.remote_id.clone().into();
    if v.get("priority").is_none_or(|p| p.is_null()) {
        v["priority"] = level.clone().into();
    }
    let header = OffloadHeader {
        origin: fleet.node.clone(),
        stream: String::new(),
        level,
        budget_us: micros(cmd.deadline),
        form: None,
        id: None,
        seq: None,
        ts_us: None,
    };
    r.stats.offloaded.fetch_add(1, Relaxed);
    r.stats.inflight.fetch_add(1, Relaxed);
    r.target.track(relay.key, relay.clone());
    let weak = Arc::downgrade(&relay);
    let timeout = r.offload.timeout;
    fleet.rt.spawn(async move {
        tokio::time::sleep(timeout).await;
        if let Some(f) = weak.upgrade()
            && !f.heard.load(SeqCst)
        {
            f.fail_over(Failover::NoAnswer);
        }
    });
    let guard = Guard(relay);
    let sent = ctx
        .session
        .get(r.key.clone())
        .payload(v.to_string())
        .attachment(header.encode())
        .consolidation(ConsolidationMode::None)
        .congestion_control(CongestionControl::Block)
        .priority(egress::level_priority(r.cfg.level))
        .timeout(cmd.deadline + Duration::from_secs(2))
        .callback(move |reply| guard.0.answer(reply))
        .wait();
    if let Err(e) = sent {
        tracing::debug!(pipeline = %r.cfg.name, error = %e, "offload query not sent");
    }
}

fn cancel(fleet: &Fleet, ri: usize, id: &str) {
    let r = &fleet.remote_gens[ri];
    let relay = r.live().get(id).cloned();
    if let (Some(relay), Some(ctx)) = (relay, fleet.ctx.upgrade()) {
        let put = ctx
            .session
            .put(r.cancel_key.clone(), relay.remote_id.clone())
            .wait();
        if let Err(e) = put {
            tracing::debug!(error = %e, "cannot send an offload cancel");
        }
    }
}

struct Guard(Arc<Relay>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fail_over(Failover::NoAnswer);
    }
}

impl Relay {
    /// Decides the outcome once; frees the id.
    fn end(&self, r: &Route) -> bool {
        if self.ended.swap(true, SeqCst) {
            return false;
        }
        r.live().remove(&self.id);
        r.target.untrack(self.key);
        r.stats.inflight.fetch_sub(1, Relaxed);
        true
    }

    fn answer(self: &Arc<Self>, reply: Reply) {
        let Some(fleet) = self.fleet.upgrade() else {
            return;
        };
        let r = &fleet.remote_gens[self.ri];
        self.heard.store(true, SeqCst);
        if self.ended.load(SeqCst) {
            r.stats.late_replies.fetch_add(1, Relaxed);
            return;
        }
        let body = match reply.result() {
            Ok(s) => s.payload().to_bytes().into_owned(),
            Err(e) => e.payload().to_bytes().into_owned(),
        };
        let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
            return self.fail_over(Failover::Refused);
        };
        v["id"] = self.id.clone().into();
        let last = v["done"] == true;
        if last {
            v["node"] = r.target.node.clone().into();
            if !self.end(r) {
                return;
            }
            r.stats.round_trip.record_duration(self.sent.elapsed());
            let c = if v.get("error").is_some() {
                &r.stats.remote_err
            } else {
                &r.stats.remote_ok
            };
            c.fetch_add(1, Relaxed);
        } else {
            self.tokens.fetch_add(1, Relaxed);
            let mut t = self.text.lock().unwrap_or_else(|e| e.into_inner());
            t.push_str(v["text"].as_str().unwrap_or_default());
        }
        if !r.push(self, v.to_string().into_bytes(), last) {
            self.slow_consumer(&fleet, r);
        }
    }

    fn slow_consumer(&self, fleet: &Fleet, r: &Route) {
        let Some(ctx) = fleet.ctx.upgrade() else {
            return;
        };
        let _ = ctx
            .session
            .put(r.cancel_key.clone(), self.remote_id.clone())
            .wait();
        self.end(r);
        let rej = Rejection::new(ErrorCode::SlowConsumer, "the relay's outbox is full");
        r.error(&ctx.session, Some(&self.id), &rej);
        self.dest.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Pending for Relay {
    fn fail_over(&self, why: Failover) {
        let Some(fleet) = self.fleet.upgrade() else {
            return;
        };
        let Some(ctx) = fleet.ctx.upgrade() else {
            return;
        };
        let r = &fleet.remote_gens[self.ri];
        // This relay's own handle, for its final message (while it is live
        // its id maps to it).
        let me = r
            .live()
            .get(&self.id)
            .filter(|m| std::ptr::eq(Arc::as_ptr(m), self))
            .cloned();
        if !self.end(r) {
            return;
        }
        r.stats.failed_over(why, self.sent.elapsed());
        r.stats.unavailable.fetch_add(1, Relaxed);
        let msg = format!(
            "no local model (offload.when = \"missing_model\") and target {:?} {}",
            r.offload.to,
            match why {
                Failover::Down => "went down",
                Failover::NoAnswer => "did not answer in time",
                Failover::Refused => "sent something unreadable",
            }
        );
        let rej = Rejection::new(ErrorCode::OffloadUnavailable, msg);
        r.error(&ctx.session, Some(&self.id), &rej);
        let text = self.text.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let total_ms = self.sent.elapsed().as_secs_f64() * 1000.0;
        let fin = json!({
            "id": self.id, "done": true, "finish_reason": "error", "text": text,
            "usage": {"prompt_tokens": 0, "completion_tokens": self.tokens.load(Relaxed)},
            "timing": {"queue_ms": total_ms, "ttft_ms": null, "tpot_ms": null, "total_ms": total_ms,
                       "prefill_tokens_per_s": null, "decode_tokens_per_s": null},
            "provider": "", "late": false, "node": r.target.node,
            "error": {"code": rej.code.code(), "message": rej.message},
        });
        if let Some(me) = me {
            r.push(&me, fin.to_string().into_bytes(), true);
        }
    }
}

/// Sends one item to its generation's client (the only place that blocks).
fn send_item(session: &zenoh::Session, item: &Item) {
    let mut dest = item.relay.dest.lock().unwrap_or_else(|e| e.into_inner());
    let r = match dest.as_ref() {
        Some(Dest::Topic(k)) => session
            .put(k.as_str(), item.body.clone())
            .congestion_control(CongestionControl::Block)
            .priority(Priority::DataHigh)
            .wait(),
        Some(Dest::Query(q)) => q.reply(q.key_expr().clone(), item.body.clone()).wait(),
        None => Ok(()),
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot publish a relayed generation message");
    }
    if item.last {
        dest.take();
    }
}

fn deliver(fleet: &Fleet, ri: usize, parker: &Parker, stop: &AtomicBool) {
    let r = &fleet.remote_gens[ri];
    loop {
        while let Some(item) = r.outbox.pop() {
            if let Some(ctx) = fleet.ctx.upgrade() {
                send_item(&ctx.session, &item);
            }
        }
        if stop.load(SeqCst) && r.outbox.is_empty() {
            return;
        }
        parker.park_timeout(Duration::from_millis(100));
    }
}
