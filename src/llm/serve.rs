//! The zenoh side of generation pipelines: the command subscriber, the cancel
//! subscriber and the queryable (ingress), and the token/final messages
//! (egress). Commands are parsed and bounded in the callback; the live-
//! generation registry enforces `max_generations` and unique ids and holds
//! each generation's cancel flag. Token messages use `CongestionControl::Block`
//! on purpose: a dropped token would corrupt the streamed text, and a token
//! stream is a few small messages per step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use zenoh::Wait;
use zenoh::qos::{CongestionControl, Priority};

use super::batch::{DecodeSlots, DecodeStats};
use super::command::{self, Command, CommandLimits};
use super::{Finish, Generation, LlmShared, timing};
use crate::config::GeneratorConfig;
use crate::egress;
use crate::error::{ErrorCode, Rejection};
use crate::service::Shared;
use crate::stats::PipelineStats;

/// Where a generation's messages go.
pub enum Sink {
    /// Published on `<output>/<id>`.
    Topic(String),
    /// Replies to a zenoh `get`; the query is answered when dropped.
    Query(zenoh::query::Query),
    /// Nowhere (the warm-up generation).
    None,
}

/// Per generation pipeline, shared by ingress and workers.
pub struct GenPipeline {
    pub shared: Arc<LlmShared>,
    pub limits: CommandLimits,
    live: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Continuous batching, per priority level (`None` for levels the
    /// pipeline cannot run at, or all when `max_batch = 1`).
    decode: Vec<Option<DecodeSlots>>,
    pub decode_stats: DecodeStats,
}

impl GenPipeline {
    pub fn new(cfg: &GeneratorConfig, shared: Arc<LlmShared>) -> GenPipeline {
        GenPipeline {
            shared,
            limits: CommandLimits {
                max_tokens: cfg.max_tokens,
                default_max_tokens: cfg.default_max_tokens,
                max_prompt_chars: cfg.max_prompt_chars,
                default_deadline: cfg.deadline,
            },
            live: Mutex::new(HashMap::new()),
            decode: (0..=cfg
                .allowed_levels
                .iter()
                .copied()
                .max()
                .unwrap_or(cfg.level))
                .map(|l| {
                    (cfg.max_batch > 1 && cfg.allowed_levels.contains(&l))
                        .then(|| DecodeSlots::new(cfg.max_batch))
                })
                .collect(),
            decode_stats: DecodeStats::new(cfg.max_batch),
        }
    }

    /// The decode batch of `level`, if this pipeline batches.
    pub fn decode_slots(&self, level: usize) -> Option<&DecodeSlots> {
        self.decode.get(level).and_then(|s| s.as_ref())
    }

    /// Generations waiting to join a decode batch (teardown).
    pub fn drain_joiners(&self) -> Vec<Box<Generation>> {
        self.decode
            .iter()
            .flatten()
            .flat_map(|s| s.drain())
            .collect()
    }

    pub fn live_count(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn register(&self, id: &str, max: usize) -> Result<Arc<AtomicBool>, Rejection> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.contains_key(id) {
            return Err(Rejection::new(
                ErrorCode::BadCommand,
                format!("a generation with id {id:?} is already running"),
            ));
        }
        if live.len() >= max {
            return Err(Rejection::new(
                ErrorCode::TooManyGenerations,
                format!("{max} generations already running (max_generations)"),
            ));
        }
        let flag = Arc::new(AtomicBool::new(false));
        live.insert(id.to_string(), flag.clone());
        Ok(flag)
    }

    fn unregister(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn cancel(&self, id: &str) -> bool {
        match self.live.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            Some(f) => {
                f.store(true, Relaxed);
                true
            }
            None => false,
        }
    }
}

#[derive(Serialize)]
struct TokenMsg<'a> {
    id: &'a str,
    seq: usize,
    text: &'a str,
    token_id: Option<u32>,
    /// Daemon event order of the step that produced the token.
    run_order: u64,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
}

#[derive(Serialize)]
struct FinalMsg<'a> {
    id: &'a str,
    done: bool,
    finish_reason: &'static str,
    text: &'a str,
    usage: Usage,
    timing: super::Timing,
    provider: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody<'a>>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
}

fn send(shared: &Shared, g: &Generation, body: Vec<u8>) {
    let out = &shared.config.generators[g.pipeline].output;
    let r = match &g.sink {
        Sink::Topic(key) => shared
            .session
            .put(key.as_str(), body)
            .congestion_control(CongestionControl::Block)
            .priority(Priority::DataHigh)
            .wait(),
        Sink::Query(q) => q.reply(q.key_expr().clone(), body).wait(),
        Sink::None => Ok(()),
    };
    if let Err(e) = r {
        tracing::warn!(output = %out, id = %g.cmd.id, error = %e, "cannot publish generation message");
    }
}

/// Publishes the text released by the latest token.
pub fn publish_token(shared: &Shared, g: &Generation, token_id: u32, text: &str) {
    shared.gen_stats[g.pipeline].tokens.fetch_add(1, Relaxed);
    send_piece(shared, g, g.tokens.len() - 1, Some(token_id), text);
}

fn send_piece(shared: &Shared, g: &Generation, seq: usize, token_id: Option<u32>, text: &str) {
    let msg = TokenMsg {
        id: &g.cmd.id,
        seq,
        text,
        token_id,
        run_order: g.run_order,
    };
    send(shared, g, serde_json::to_vec(&msg).expect("serializes"));
}

/// Ends a generation: flushes held text, publishes the final message,
/// forgets it in the registry, and counts it.
pub fn finish(shared: &Shared, mut g: Box<Generation>, reason: Finish) {
    let rest = g.flush();
    if !rest.is_empty() {
        // Text the detokenizer held back (a possible stop-string prefix that
        // never completed) still belongs to the answer.
        // It gets the next seq and no token id: no new token produced it.
        send_piece(shared, &g, g.tokens.len(), None, &rest);
    }
    let gp = &shared.gens[g.pipeline];
    let now = Instant::now();
    let msg = FinalMsg {
        id: &g.cmd.id,
        done: true,
        finish_reason: reason.as_str(),
        text: g.text(),
        usage: Usage {
            prompt_tokens: g.prompt_tokens(),
            completion_tokens: g.tokens.len(),
        },
        timing: timing(&g, now),
        provider: shared.gen_providers[g.pipeline],
        error: g.error.as_ref().map(|e| ErrorBody {
            code: e.code.code(),
            message: &e.message,
        }),
    };
    // Counted and unregistered before the final message goes out, so a
    // client that has seen it also sees the counters and the free slot.
    gp.unregister(&g.cmd.id);
    let st = &shared.gen_stats[g.pipeline];
    record(st, &g, now);
    match (reason, &g.error) {
        (Finish::Error, Some(rej)) => {
            st.error(rej.code);
            let cfg = &shared.config.generators[g.pipeline];
            egress::publish_error(
                &shared.session,
                &cfg.error_key,
                &cfg.name,
                "",
                Some(&g.cmd.id),
                None,
                rej,
            );
        }
        (Finish::Error, None) => st.error(ErrorCode::InferenceFailed),
        (Finish::Deadline, _) => st.error(ErrorCode::DeadlineExceeded),
        _ => {
            st.ok.fetch_add(1, Relaxed);
        }
    }
    send(shared, &g, serde_json::to_vec(&msg).expect("serializes"));
    tracing::debug!(id = %g.cmd.id, reason = reason.as_str(), tokens = g.tokens.len(), "generation finished");
}

/// Records a finished generation's latencies and token counts.
fn record(st: &PipelineStats, g: &Generation, now: Instant) {
    if let Some(s) = g.started {
        st.time(&st.queue_wait, s - g.received);
    }
    st.time(&st.e2e, now - g.received);
    let n = g.tokens.len() as u64;
    st.generation
        .prompt_tokens
        .fetch_add(g.prompt_tokens() as u64, Relaxed);
    st.generation.completion_tokens.fetch_add(n, Relaxed);
    if let Some(first) = g.first_token {
        st.time(&st.generation.ttft, first - g.received);
        if n > 1 {
            let after = now - first;
            st.time(&st.generation.tpot, after / (n - 1) as u32);
            st.generation.decode_tokens.fetch_add(n - 1, Relaxed);
            st.generation
                .decode_us
                .fetch_add(after.as_micros() as u64, Relaxed);
        }
    }
}

fn reject(shared: &Shared, gi: usize, id: Option<&str>, rej: &Rejection) {
    let cfg = &shared.config.generators[gi];
    shared.gen_stats[gi].error(rej.code);
    egress::publish_error(
        &shared.session,
        &cfg.error_key,
        &cfg.name,
        "",
        id,
        None,
        rej,
    );
}

/// Validates a command and queues its generation.
fn accept(
    shared: &Shared,
    gi: usize,
    bytes: &[u8],
    sink: impl FnOnce(&Command) -> Sink,
) -> Result<(), (Rejection, Option<String>)> {
    let received = Instant::now();
    let cfg = &shared.config.generators[gi];
    let gp = &shared.gens[gi];
    shared.gen_stats[gi].received.fetch_add(1, Relaxed);
    // The daemon-wide payload bound applies to commands too (on top of the
    // fixed command::MAX_COMMAND_BYTES), so one `[limits]` setting caps
    // every message.
    let max = shared.config.limits.max_payload_bytes;
    if bytes.len() > max {
        let msg = format!(
            "command is {} bytes; the limit is {max} (limits.max_payload_bytes)",
            bytes.len()
        );
        return Err((
            Rejection::new(ErrorCode::PayloadTooLarge, msg),
            command::salvage_id(bytes),
        ));
    }
    let cmd = command::parse(bytes, &gp.limits).map_err(|r| (r, command::salvage_id(bytes)))?;
    let level = match &cmd.priority {
        None => cfg.level,
        Some(name) => match shared.config.levels.iter().position(|l| l == name) {
            // A client may lower its request's priority, never raise it
            // above the pipeline's own level, and only to levels whose
            // workers hold this model.
            Some(l) if cfg.allowed_levels.contains(&l) => l,
            _ => {
                let allowed: Vec<&String> = cfg
                    .allowed_levels
                    .iter()
                    .map(|&l| &shared.config.levels[l])
                    .collect();
                return Err((
                    Rejection::new(
                        ErrorCode::BadParameter,
                        format!("priority = {name:?}: expected one of {allowed:?}"),
                    ),
                    Some(cmd.id.clone()),
                ));
            }
        },
    };
    let cancel = gp
        .register(&cmd.id, cfg.max_generations)
        .map_err(|r| (r, Some(cmd.id.clone())))?;
    let sink = sink(&cmd);
    let id = cmd.id.clone();
    let g = Box::new(Generation::new(gi, level, cmd, cancel, received, sink));
    shared.scheduler.submit_gen(g).map_err(|(rej, _)| {
        gp.unregister(&id);
        (rej, Some(id))
    })
}

/// Declares the command subscriber, cancel subscriber and queryable of
/// generation pipeline `gi`.
pub fn declare(shared: &Arc<Shared>, gi: usize) -> zenoh::Result<Entities> {
    let cfg = &shared.config.generators[gi];
    let sh = shared.clone();
    let commands = shared
        .session
        .declare_subscriber(cfg.input.clone())
        .callback(move |sample| {
            let bytes = sample.payload().to_bytes();
            let out = sh.config.generators[gi].output.clone();
            if let Err((rej, id)) =
                accept(&sh, gi, &bytes, |c| Sink::Topic(format!("{out}/{}", c.id)))
            {
                reject(&sh, gi, id.as_deref(), &rej);
            }
        })
        .wait()?;
    let sh = shared.clone();
    let cancels = shared
        .session
        .declare_subscriber(cfg.cancel_key.clone())
        .callback(move |sample| {
            let bytes = sample.payload().to_bytes();
            let id = command::salvage_id(&bytes)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            if !sh.gens[gi].cancel(&id) {
                tracing::debug!(%id, "cancel for an unknown or finished generation");
            }
        })
        .wait()?;
    let sh = shared.clone();
    let queries = shared
        .session
        .declare_queryable(cfg.query_key.clone())
        .callback(move |query| {
            let bytes = query
                .payload()
                .map(|p| p.to_bytes().into_owned())
                .unwrap_or_default();
            let mut q = Some(query);
            let r = accept(&sh, gi, &bytes, |_| {
                Sink::Query(q.take().expect("sink built once"))
            });
            if let Err((rej, id)) = r {
                reject(&sh, gi, id.as_deref(), &rej);
                if let Some(q) = q {
                    let body = serde_json::json!({
                        "id": id, "done": true, "finish_reason": "error",
                        "error": { "code": rej.code.code(), "message": rej.message },
                    });
                    let _ = q.reply(q.key_expr().clone(), body.to_string()).wait();
                }
            }
        })
        .wait()?;
    Ok(Entities {
        _commands: commands,
        _cancels: cancels,
        _queries: queries,
    })
}

/// The zenoh entities of one generation pipeline (undeclared on drop).
pub struct Entities {
    _commands: zenoh::pubsub::Subscriber<()>,
    _cancels: zenoh::pubsub::Subscriber<()>,
    _queries: zenoh::query::Queryable<()>,
}
