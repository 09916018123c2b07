//! The generation half of a worker's turn: one prefill chunk or decode step
//! of a single generation, or one step of a continuous-batching decode batch,
//! then the generation (or batch) goes back to its level's queue, so a
//! higher level waits at most one step. Finished members leave with their
//! own reason; a stopping daemon ends them as cancelled. A generation whose
//! client has not taken its earlier messages (its outbox has no room for one
//! more step) ends with `slow_consumer` before the step, so the worker never
//! waits for a client and no produced token is ever dropped. Each step's
//! CPU time (the thread clocks of the worker and its session's pool) and,
//! on boards with power rails, its energy are charged to the generations it
//! served, in proportion to the tokens each got.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::Worker;
use crate::ctx::Ctx;
use crate::error::{ErrorCode, Rejection};
use crate::io::tokens;
use crate::llm::{DecodeBatch, Finish, Generation, StepOutput};
use crate::obs::cost::CpuClock;
use crate::obs::power;

/// CPU and energy readings at the start of a step.
struct Meter {
    cpu_ns: u64,
    energy_uj: Option<f64>,
}

impl Meter {
    fn start(clock: &CpuClock) -> Meter {
        Meter {
            cpu_ns: clock.now_ns(),
            energy_uj: power::meter().map(|m| m.energy_uj(Instant::now())),
        }
    }

    /// Charges the step to `gens`: shares proportional to `tokens[i]`
    /// (equal shares when no member got a token).
    fn charge<'a>(
        self,
        clock: &CpuClock,
        gens: impl Iterator<Item = &'a mut Box<Generation>>,
        tokens: &[usize],
    ) {
        let cpu = clock.now_ns().saturating_sub(self.cpu_ns) as f64;
        let energy = self
            .energy_uj
            .zip(power::meter())
            .map(|(e0, m)| (m.energy_uj(Instant::now()) - e0).max(0.0));
        let total: usize = tokens.iter().sum();
        for (g, &n) in gens.zip(tokens) {
            let share = if total > 0 {
                n as f64 / total as f64
            } else {
                1.0 / tokens.len() as f64
            };
            g.cost.add((cpu * share) as u64, energy.map(|e| e * share));
        }
    }
}

/// A panic inside a step was contained: the generation (or every member of
/// a decode batch, whose merged cache went with the failed step) ends here.
fn internal_error() -> Rejection {
    Rejection::new(
        ErrorCode::InternalError,
        "the daemon failed while running this generation's step (contained)",
    )
}

fn slow_consumer() -> Rejection {
    Rejection::new(
        ErrorCode::SlowConsumer,
        "the client has not taken this generation's earlier messages (its outbox is full)",
    )
}

/// Why a generation must end before its next step, if it must.
fn must_end(ctx: &Ctx, g: &mut Generation, now: Instant) -> Option<Finish> {
    // A stopping daemon (SIGTERM) ends generations at the next step
    // boundary instead of decoding up to max_tokens inside the drain window.
    if g.is_cancelled() || ctx.sched.is_stopping() {
        return Some(Finish::Cancelled);
    }
    if now > g.deadline {
        return Some(Finish::Deadline);
    }
    if !tokens::has_room(ctx, g) {
        g.error = Some(slow_consumer());
        return Some(Finish::Error);
    }
    None
}

/// Advances a generation by one model run and puts it back in its queue,
/// or ends it (cancelled, deadline, slow consumer, stop, length, error).
pub(super) fn step_generation(w: &mut Worker, ctx: &Ctx, mut g: Box<Generation>) {
    if let Some(reason) = must_end(ctx, &mut g, ctx.sched.now()) {
        return tokens::finish(ctx, g, reason);
    }
    let Some(model) = w.llms[g.pipeline].as_mut() else {
        g.error = Some(Rejection::new(
            ErrorCode::InferenceFailed,
            "worker has no session for this pipeline",
        ));
        return tokens::finish(ctx, g, Finish::Error);
    };
    g.run_order = ctx.order.fetch_add(1, Relaxed);
    let decode = g.is_decoding();
    let room = tokens::room(ctx, &g);
    let t0 = Instant::now();
    let meter = Meter::start(&model.clock);
    let running = ctx.progress.running(w.id);
    let stepped = panic::catch_unwind(AssertUnwindSafe(|| model.step(&mut g, room)));
    drop(running);
    let n = stepped
        .as_ref()
        .map_or(0, |r| r.as_ref().map_or(0, |o| o.tokens.len()));
    meter.charge(&model.clock, std::iter::once(&mut g), &[n]);
    let gp = &ctx.gens[g.pipeline];
    let Ok(stepped) = stepped else {
        tracing::error!(id = %g.cmd.id, "panic in a generation step; contained");
        g.error = Some(internal_error());
        return tokens::finish(ctx, g, Finish::Error);
    };
    gp.stats.time(&gp.stats.inference, t0.elapsed());
    match stepped {
        Ok(out) => {
            if decode {
                gp.decode_stats.record(1, n, t0.elapsed());
            }
            emit(ctx, &mut g, &out);
            match g.finished {
                Some(reason) => tokens::finish(ctx, g, reason),
                None => requeue_or_join(ctx, g),
            }
        }
        Err(e) => {
            if gp.log.allow(ErrorCode::InferenceFailed) {
                tracing::warn!(id = %g.cmd.id, error = %e, "generation step failed");
            }
            g.error = Some(Rejection::new(ErrorCode::InferenceFailed, e));
            tokens::finish(ctx, g, Finish::Error);
        }
    }
}

/// Queues a step's tokens and stamps the first token's time.
fn emit(ctx: &Ctx, g: &mut Generation, out: &StepOutput) {
    if out.tokens.is_empty() {
        return;
    }
    tokens::step_tokens(ctx, g, out);
    if g.first_token.is_none() {
        g.first_token = Some(Instant::now());
    }
}

/// After a solo step: a decoding generation joins its level's decode batch
/// if the pipeline batches and there is room; otherwise it is requeued to
/// step alone (and tries to join again after its next step).
fn requeue_or_join(ctx: &Ctx, g: Box<Generation>) {
    let slots = ctx.gens[g.pipeline].decode_slots(g.level);
    let g = match slots {
        Some(slots) if g.is_decoding() => match slots.join(g) {
            Ok(None) => return,
            Ok(Some(batch)) => return requeue_batch(ctx, batch),
            Err(g) => g,
        },
        _ => g,
    };
    let level = g.level;
    if let Err((rej, mut g)) = ctx.sched.requeue_gen(level, g) {
        g.error = Some(rej);
        tokens::finish(ctx, g, Finish::Error);
    }
}

fn requeue_batch(ctx: &Ctx, b: Box<DecodeBatch>) {
    let level = b.level;
    if let Err(mut b) = ctx.sched.requeue_gen_batch(level, b) {
        // Unreachable by sizing; end the members rather than lose them.
        let rej = Rejection::new(ErrorCode::Busy, "level queue full");
        end_members(ctx, &mut b, |_| true, Some(&rej));
    }
}

/// Takes members matching `leave` out of the batch and finishes them with
/// their own reason (or `Error` with `rej`), freeing their places.
fn end_members(
    ctx: &Ctx,
    b: &mut DecodeBatch,
    leave: impl FnMut(&Generation) -> bool,
    rej: Option<&Rejection>,
) {
    let gone = b.remove(leave);
    if let Some(slots) = ctx.gens[b.pipeline].decode_slots(b.level) {
        slots.left(gone.len());
    }
    let now = ctx.sched.now();
    for mut g in gone {
        let reason = match (rej, g.finished) {
            (Some(r), _) => {
                g.error = Some(r.clone());
                Finish::Error
            }
            (None, Some(f)) => f,
            (None, None) => must_end(ctx, &mut g, now).unwrap_or(Finish::Error),
        };
        tokens::finish(ctx, g, reason);
    }
}

/// One decode step for every generation of a decode batch: joiners are
/// merged first, members that must end (cancelled, late, slow consumer)
/// leave, then one model run produces a token for each member; finished
/// members leave and the batch goes back to its queue (one scheduler turn
/// per step).
pub(super) fn step_decode_batch(w: &mut Worker, ctx: &Ctx, mut b: Box<DecodeBatch>) {
    let gp = &ctx.gens[b.pipeline];
    let Some(slots) = gp.decode_slots(b.level) else {
        let rej = Rejection::new(ErrorCode::InferenceFailed, "pipeline does not batch");
        return end_members(ctx, &mut b, |_| true, Some(&rej));
    };
    slots.take_joiners(&mut b);
    let now = ctx.sched.now();
    let stopping = ctx.sched.is_stopping();
    end_members(
        ctx,
        &mut b,
        |g| stopping || g.is_cancelled() || now > g.deadline || !tokens::has_room(ctx, g),
        None,
    );
    if b.members.is_empty() && !slots.retire(&mut b) {
        return;
    }
    let Some(model) = w.llms[b.pipeline].as_mut() else {
        let rej = Rejection::new(
            ErrorCode::InferenceFailed,
            "worker has no session for this pipeline",
        );
        end_members(ctx, &mut b, |_| true, Some(&rej));
        if slots.retire(&mut b) {
            requeue_batch(ctx, b);
        }
        return;
    };
    let run_order = ctx.order.fetch_add(1, Relaxed);
    for g in &mut b.members {
        g.run_order = run_order;
    }
    let t0 = Instant::now();
    let meter = Meter::start(&model.clock);
    let running = ctx.progress.running(w.id);
    let stepped = panic::catch_unwind(AssertUnwindSafe(|| b.step(model, |g| tokens::room(ctx, g))));
    drop(running);
    let counts: Vec<usize> = match &stepped {
        Ok(Ok(outs)) => outs.iter().map(|o| o.tokens.len()).collect(),
        _ => vec![0; b.members.len()],
    };
    meter.charge(&model.clock, b.members.iter_mut(), &counts);
    let Ok(stepped) = stepped else {
        tracing::error!(
            batch = b.members.len(),
            "panic in a decode batch step; contained"
        );
        end_members(ctx, &mut b, |_| true, Some(&internal_error()));
        if slots.retire(&mut b) {
            requeue_batch(ctx, b);
        }
        return;
    };
    gp.stats.time(&gp.stats.inference, t0.elapsed());
    match stepped {
        Ok(outs) => {
            let produced = counts.iter().sum();
            gp.decode_stats
                .record(b.members.len(), produced, t0.elapsed());
            for (g, out) in b.members.iter_mut().zip(outs) {
                emit(ctx, g, &out);
            }
            end_members(ctx, &mut b, |g| g.finished.is_some(), None);
        }
        Err(e) => {
            tracing::warn!(batch = b.members.len(), error = %e, "batched decode step failed");
            let rej = Rejection::new(ErrorCode::InferenceFailed, e);
            end_members(ctx, &mut b, |_| true, Some(&rej));
        }
    }
    if b.members.is_empty() && !slots.retire(&mut b) {
        return;
    }
    requeue_batch(ctx, b);
}
