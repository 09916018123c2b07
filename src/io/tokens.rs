//! Egress of generation pipelines: token and final messages. A worker encodes
//! each message and pushes it into the generation's bounded outbox in the
//! pipeline's registry (never blocking); one delivery thread per registry
//! slot drains that outbox in order and publishes with
//! `CongestionControl::Block` (a dropped token would corrupt the streamed
//! text), so a client that stops reading blocks only its own slot's thread.
//! Before each step a worker checks the outbox has room for the step's
//! messages ([`has_room`]); a generation whose client has fallen that far
//! behind ends with `slow_consumer` instead. A speculative step may produce
//! several tokens: it is told how many the outbox can take ([`room`]). The
//! final message carries the generation's cost per token and speculation
//! figures, which are also added to the pipeline's counters here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::sync::Parker;
use zenoh::Wait;
use zenoh::qos::{CongestionControl, Priority};

use super::egress;
use crate::config::Speculation;
use crate::ctx::{Ctx, Delivery};
use crate::error::ErrorCode;
use crate::llm::registry::Out;
use crate::llm::tools::ToolError;
use crate::llm::{Finish, Generation, StepOutput, timing};
use crate::obs::PipelineStats;
use crate::wire::reply::{ErrorBody, FinalMsg, SpecReport, TokenMsg, Usage};

/// Messages one step may queue at most: its token, the text held back by
/// the detokenizer and the final message.
pub const STEP_MESSAGES: usize = 3;

/// Whether `g`'s outbox can take one more step's messages (one more with
/// tools: the step that closes a call also queues the call).
pub fn has_room(ctx: &Ctx, g: &Generation) -> bool {
    let need = STEP_MESSAGES + usize::from(g.tools.is_some());
    ctx.gens[g.pipeline].registry.room(g.route) >= need
}

/// Tokens `g`'s next step may produce: its outbox's room less the
/// held-back text and the final message.
pub fn room(ctx: &Ctx, g: &Generation) -> usize {
    ctx.gens[g.pipeline]
        .registry
        .room(g.route)
        .saturating_sub(STEP_MESSAGES - 1)
}

fn push(ctx: &Ctx, g: &Generation, out: Out) {
    if ctx.gens[g.pipeline].registry.push(g.route, out).is_err() {
        // Unreachable while workers check `has_room` before each step.
        tracing::error!(id = %g.cmd.id, "generation outbox full; message not queued");
    }
}

/// Queues the text released by each token of a step (the step already
/// appended them to `g.tokens`).
pub fn step_tokens(ctx: &Ctx, g: &Generation, out: &StepOutput) {
    let n = out.tokens.len();
    ctx.gens[g.pipeline]
        .stats
        .tokens
        .fetch_add(n as u64, Relaxed);
    let first = g.tokens.len().saturating_sub(n);
    for (i, (token_id, text)) in out.tokens.iter().enumerate() {
        piece(ctx, g, first + i, Some(*token_id), text);
    }
}

fn piece(ctx: &Ctx, g: &Generation, seq: usize, token_id: Option<u32>, text: &str) {
    let msg = TokenMsg {
        id: &g.cmd.id,
        seq,
        text,
        token_id,
        run_order: g.run_order,
    };
    push(ctx, g, Out::Msg(msg.encode()));
}

/// Ends a generation: flushes held text, counts it, reports an error on the
/// error key, and queues the final message (its slot is freed when that is
/// delivered).
pub fn finish(ctx: &Ctx, mut g: Box<Generation>, mut reason: Finish) {
    let rest = g.flush();
    if !rest.is_empty() {
        // Text the detokenizer held back (a possible stop-string prefix that
        // never completed) still belongs to the answer. It gets the next seq
        // and no token id: no new token produced it.
        piece(ctx, &g, g.tokens.len(), None, &rest);
    }
    if g.tools.is_some() {
        reason = tool_call(ctx, &mut g, reason);
    }
    let gp = &ctx.gens[g.pipeline];
    let now = Instant::now();
    let late = now > g.deadline;
    if late {
        gp.stats.late.fetch_add(1, Relaxed);
    }
    let msg = FinalMsg {
        id: &g.cmd.id,
        done: true,
        finish_reason: reason.as_str(),
        text: g.text(),
        usage: Usage {
            prompt_tokens: g.prompt_tokens(),
            completion_tokens: g.tokens.len(),
            cached_prompt_tokens: g.cached_tokens,
        },
        timing: timing(&g, now),
        provider: gp.provider,
        late,
        cost: g.cost.report(g.tokens.len()),
        speculation: spec_report(&gp.cfg.speculation, &g),
        error: g.error.as_ref().map(|e| ErrorBody {
            code: e.code.code(),
            message: &e.message,
        }),
        node: g.remote.as_deref(),
    };
    // Counted before the final message is queued, so a client that has seen
    // it also sees the counters.
    let failed = match (reason, &g.error) {
        (Finish::Error, Some(rej)) => Some(rej.code),
        (Finish::Error, None) => Some(ErrorCode::InferenceFailed),
        (Finish::Deadline, _) => Some(ErrorCode::DeadlineExceeded),
        _ => None,
    };
    record(&gp.stats, &g, now, failed);
    match (reason, &g.error) {
        (Finish::Error, Some(rej)) => {
            gp.stats.error(rej.code);
            let ids = (Some(g.cmd.id.as_str()), None);
            egress::report(ctx, egress::Pipe::Gen(g.pipeline), "", ids, rej);
        }
        (Finish::Error, None) => gp.stats.error(ErrorCode::InferenceFailed),
        (Finish::Deadline, _) => gp.stats.error(ErrorCode::DeadlineExceeded),
        _ => {
            gp.stats.ok.fetch_add(1, Relaxed);
        }
    }
    push(ctx, &g, Out::Final(msg.encode()));
    tracing::debug!(id = %g.cmd.id, reason = reason.as_str(), tokens = g.tokens.len(), "generation finished");
}

/// The speculation part of a final message: for greedy requests of a
/// pipeline that speculates.
fn spec_report(mode: &Speculation, g: &Generation) -> Option<SpecReport> {
    let mode = match mode {
        Speculation::Off => return None,
        Speculation::PromptLookup => "prompt_lookup",
        Speculation::Draft(_) => "draft",
    };
    if !g.is_greedy() {
        return None;
    }
    let s = &g.spec;
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    Some(SpecReport {
        mode,
        drafted: s.drafted,
        accepted: s.accepted,
        acceptance: ratio(s.accepted, s.drafted),
        verify_steps: s.verify_steps,
        tokens_per_verify: ratio(s.verify_tokens, s.verify_steps),
        plain_steps: s.plain_steps,
        tpot_gain: s.tpot_gain(),
    })
}

/// Adds a finished generation's cost, prefix-cache and speculation figures
/// to the pipeline's counters.
fn record_cost(st: &PipelineStats, g: &Generation) {
    let gs = &st.generation;
    gs.cpu_us.fetch_add(g.cost.cpu_ns / 1000, Relaxed);
    if let Some(e) = g.cost.energy_uj {
        gs.energy_uj.fetch_add(e as u64, Relaxed);
        gs.energy_tokens.fetch_add(g.tokens.len() as u64, Relaxed);
    }
    gs.cached_prompt_tokens
        .fetch_add(g.cached_tokens as u64, Relaxed);
    let (s, sp) = (&g.spec, &gs.spec);
    sp.drafted.fetch_add(s.drafted, Relaxed);
    sp.accepted.fetch_add(s.accepted, Relaxed);
    sp.verify_steps.fetch_add(s.verify_steps, Relaxed);
    sp.verify_tokens.fetch_add(s.verify_tokens, Relaxed);
    sp.est_plain_us
        .fetch_add((s.est_plain_ns / 1e3) as u64, Relaxed);
    sp.actual_us.fetch_add((s.actual_ns / 1e3) as u64, Relaxed);
}

/// Queues an admitted call (its publication, then the client's `tool_call`
/// message) ahead of the final message, so both leave through the slot's
/// delivery thread, never from the worker. A generation that ended while
/// a call was still being written ends as an error, `tool_call_incomplete`
/// (the message names the original reason); nothing is published.
fn tool_call(ctx: &Ctx, g: &mut Generation, reason: Finish) -> Finish {
    let Some(run) = g.tools.as_deref_mut() else {
        return reason;
    };
    if let Some(call) = run.take_admitted() {
        let msg = serde_json::to_vec(&call.message(&g.cmd.id)).expect("a tool call serializes");
        let publish = call.publication().map(|(k, body)| (k.to_string(), body));
        push(ctx, g, Out::Call { publish, msg });
        return reason;
    }
    if reason != Finish::Error && run.finish().is_err() {
        let mut rej = ToolError::Incomplete.rejection();
        rej.message = format!("{} ({})", rej.message, reason.as_str());
        g.error = Some(rej);
        return Finish::Error;
    }
    reason
}

/// Records a finished generation's latencies and token counts; the
/// duration of a failed one goes under its error code.
fn record(st: &PipelineStats, g: &Generation, now: Instant, failed: Option<ErrorCode>) {
    record_cost(st, g);
    if let Some(s) = g.started {
        st.time(&st.queue_wait, s - g.received);
    }
    let total = now - g.received;
    match failed {
        None => st.time(&st.e2e, total),
        Some(code) => st.time(st.generation.failed_for(code), total),
    }
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

/// The delivery threads of every generation slot.
pub struct Deliverers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    unparkers: Vec<crossbeam::sync::Unparker>,
}

/// How often an idle delivery thread checks for shutdown.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// Sends one message of generation pipeline `gi`; `last` marks the final
/// message (ROS 2 deliveries put it on the answer topic, the rest on the
/// token topic).
fn send(ctx: &Ctx, gi: usize, d: Option<&Delivery>, body: Vec<u8>, last: bool) {
    let put = |key: &str, body| {
        ctx.session
            .put(key, body)
            .congestion_control(CongestionControl::Block)
            .priority(Priority::DataHigh)
            .wait()
    };
    let r = match d {
        Some(Delivery::Topic(key)) => put(key, body),
        Some(Delivery::Query(q)) => q.reply(q.key_expr().clone(), body).wait(),
        Some(Delivery::Ros2(key)) => {
            super::ros2::publish_generation(ctx, gi, &body, last);
            put(key, body)
        }
        None => Ok(()),
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot publish generation message");
    }
}

/// Puts an admitted tool call on its configured key. Blocking congestion
/// control: a robot command is never dropped silently (this thread waits,
/// the worker does not).
fn publish_call(session: &zenoh::Session, key: &str, body: Vec<u8>) {
    let r = session
        .put(key, body)
        .congestion_control(CongestionControl::Block)
        .priority(Priority::InteractiveHigh)
        .express(true)
        .wait();
    if let Err(e) = r {
        tracing::warn!(%key, error = %e, "cannot publish a tool call");
    }
}

/// Drains slot `i` of pipeline `gi` until stopped and empty.
fn deliver(ctx: &Ctx, gi: usize, i: usize, parker: &Parker, stop: &AtomicBool) {
    let reg = &ctx.gens[gi].registry;
    let slot = reg.slot(i);
    loop {
        while let Some(out) = slot.pop() {
            match out {
                Out::Msg(body) => send(ctx, gi, slot.delivery().as_ref(), body, false),
                Out::Call { publish, msg } => {
                    if let Some((key, body)) = publish {
                        publish_call(&ctx.session, &key, body);
                    }
                    send(ctx, gi, slot.delivery().as_ref(), msg, false);
                }
                Out::Final(body) => {
                    // Freed before the final message goes out, so a client
                    // that has seen it can start its next generation.
                    let d = slot.delivery().take();
                    reg.release_slot(i);
                    send(ctx, gi, d.as_ref(), body, true);
                }
            }
        }
        if stop.load(SeqCst) && slot.is_empty() {
            return;
        }
        parker.park_timeout(IDLE_CHECK);
    }
}

impl Deliverers {
    /// Starts one delivery thread per registry slot of every generation
    /// pipeline.
    pub fn start(ctx: &Arc<Ctx>) -> std::io::Result<Deliverers> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut unparkers = Vec::new();
        for (gi, gp) in ctx.gens.iter().enumerate() {
            for i in 0..gp.registry.slots() {
                let parker = Parker::new();
                gp.registry.slot(i).set_waker(parker.unparker().clone());
                unparkers.push(parker.unparker().clone());
                let (c, s) = (ctx.clone(), stop.clone());
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("reflexd-out{gi}.{i}"))
                        .spawn(move || deliver(&c, gi, i, &parker, &s))?,
                );
            }
        }
        Ok(Deliverers {
            stop,
            threads,
            unparkers,
        })
    }

    /// Lets every thread deliver what is queued, then stop; waits up to
    /// `timeout` (a thread blocked on a client that stopped reading is left
    /// to end when the session closes).
    pub async fn stop(self, timeout: Duration) {
        self.stop.store(true, SeqCst);
        for u in &self.unparkers {
            u.unpark();
        }
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        if tokio::time::timeout(timeout, joined).await.is_err() {
            tracing::warn!(
                ?timeout,
                "generation messages still undelivered at shutdown"
            );
        }
    }
}
