//! The generation half of a worker's turn: one prefill chunk or decode step
//! of a single generation, or one step of a continuous-batching decode batch,
//! then the generation (or batch) goes back to its level's queue, so a
//! higher level waits at most one step. Finished members leave with their
//! own reason; a stopping daemon ends them as cancelled. A generation whose
//! client has not taken its earlier messages (its outbox has no room for one
//! more step) ends with `slow_consumer` before the step, so the worker never
//! waits for a client and no produced token is ever dropped.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::Worker;
use crate::ctx::Ctx;
use crate::error::{ErrorCode, Rejection};
use crate::io::tokens;
use crate::llm::{DecodeBatch, Finish, Generation};

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
    let t0 = Instant::now();
    let running = ctx.progress.running(w.id);
    let stepped = panic::catch_unwind(AssertUnwindSafe(|| model.step(&mut g)));
    drop(running);
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
                let n = usize::from(out.token.is_some());
                gp.decode_stats.record(1, n, t0.elapsed());
            }
            if let Some((token_id, text)) = out.token {
                tokens::token(ctx, &g, token_id, &text);
                if g.first_token.is_none() {
                    g.first_token = Some(Instant::now());
                }
            }
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
    let running = ctx.progress.running(w.id);
    let stepped = panic::catch_unwind(AssertUnwindSafe(|| b.step(model)));
    drop(running);
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
            let produced = outs.iter().filter(|o| o.token.is_some()).count();
            gp.decode_stats
                .record(b.members.len(), produced, t0.elapsed());
            for (g, out) in b.members.iter_mut().zip(outs) {
                if let Some((token_id, text)) = out.token {
                    tokens::token(ctx, g, token_id, &text);
                    if g.first_token.is_none() {
                        g.first_token = Some(Instant::now());
                    }
                }
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
