//! The generation half of a worker's turn: one prefill chunk or decode step
//! of a single generation, or one step of a continuous-batching decode batch,
//! then the generation (or batch) goes back to its level's queue, so a
//! higher level waits at most one step. Finished members leave with their
//! own reason; a stopping daemon ends them as cancelled.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::Worker;
use crate::error::{ErrorCode, Rejection};
use crate::llm::batch::DecodeBatch;
use crate::llm::serve as llm_serve;
use crate::llm::{Finish, Generation};
use crate::service::Shared;

/// Advances a generation by one model run and puts it back in its queue,
/// or ends it (cancelled, deadline, stop, length, error).
pub(super) fn step_generation(w: &mut Worker, shared: &Shared, mut g: Box<Generation>) {
    // A stopping daemon (SIGTERM) ends generations at the next step
    // boundary instead of decoding up to max_tokens inside the drain window.
    if g.is_cancelled() || shared.scheduler.is_stopping() {
        return llm_serve::finish(shared, g, Finish::Cancelled);
    }
    if Instant::now() > g.deadline {
        return llm_serve::finish(shared, g, Finish::Deadline);
    }
    let Some(model) = w.gen_models[g.pipeline].as_mut() else {
        g.error = Some(Rejection::new(
            ErrorCode::InferenceFailed,
            "worker has no session for this pipeline",
        ));
        return llm_serve::finish(shared, g, Finish::Error);
    };
    g.run_order = shared.order.fetch_add(1, Relaxed);
    let decode = g.is_decoding();
    let t0 = Instant::now();
    let running = shared.progress.running(w.id);
    let stepped = model.step(&mut g);
    drop(running);
    let st = &shared.gen_stats[g.pipeline];
    st.time(&st.inference, t0.elapsed());
    match stepped {
        Ok(out) => {
            if decode {
                let n = usize::from(out.token.is_some());
                shared.gens[g.pipeline]
                    .decode_stats
                    .record(1, n, t0.elapsed());
            }
            if let Some((token_id, text)) = out.token {
                llm_serve::publish_token(shared, &g, token_id, &text);
                if g.first_token.is_none() {
                    g.first_token = Some(Instant::now());
                }
            }
            match g.finished {
                Some(reason) => llm_serve::finish(shared, g, reason),
                None => requeue_or_join(shared, g),
            }
        }
        Err(e) => {
            tracing::warn!(id = %g.cmd.id, error = %e, "generation step failed");
            g.error = Some(Rejection::new(ErrorCode::InferenceFailed, e));
            llm_serve::finish(shared, g, Finish::Error);
        }
    }
}

/// After a solo step: a decoding generation joins its level's decode batch
/// if the pipeline batches and there is room; otherwise it is requeued to
/// step alone (and tries to join again after its next step).
fn requeue_or_join(shared: &Shared, g: Box<Generation>) {
    let slots = shared.gens[g.pipeline].decode_slots(g.level);
    let g = match slots {
        Some(slots) if g.is_decoding() => match slots.join(g) {
            Ok(None) => return,
            Ok(Some(batch)) => return requeue_batch(shared, batch),
            Err(g) => g,
        },
        _ => g,
    };
    if let Err((rej, mut g)) = shared.scheduler.requeue_gen(g) {
        g.error = Some(rej);
        llm_serve::finish(shared, g, Finish::Error);
    }
}

fn requeue_batch(shared: &Shared, b: Box<DecodeBatch>) {
    if let Err(mut b) = shared.scheduler.requeue_gen_batch(b) {
        // Unreachable by sizing; end the members rather than lose them.
        let rej = Rejection::new(ErrorCode::Busy, "level queue full");
        end_members(shared, &mut b, |_| true, Some(&rej));
    }
}

/// Takes members matching `leave` out of the batch and finishes them with
/// their own reason (or `Error` with `rej`), freeing their places.
fn end_members(
    shared: &Shared,
    b: &mut DecodeBatch,
    leave: impl FnMut(&Generation) -> bool,
    rej: Option<&Rejection>,
) {
    let gone = b.remove(leave);
    if let Some(slots) = shared.gens[b.pipeline].decode_slots(b.level) {
        slots.left(gone.len());
    }
    let now = Instant::now();
    for mut g in gone {
        let reason = match (rej, g.finished) {
            (Some(r), _) => {
                g.error = Some(r.clone());
                Finish::Error
            }
            (None, Some(f)) => f,
            (None, None) if g.is_cancelled() || shared.scheduler.is_stopping() => Finish::Cancelled,
            (None, None) if now > g.deadline => Finish::Deadline,
            (None, None) => Finish::Error,
        };
        llm_serve::finish(shared, g, reason);
    }
}

/// One decode step for every generation of a decode batch: joiners are
/// merged first, cancelled and late members leave, then one model run
/// produces a token for each member; finished members leave and the batch
/// goes back to its queue (one scheduler turn per step).
pub(super) fn step_decode_batch(w: &mut Worker, shared: &Shared, mut b: Box<DecodeBatch>) {
    let gp = &shared.gens[b.pipeline];
    let Some(slots) = gp.decode_slots(b.level) else {
        let rej = Rejection::new(ErrorCode::InferenceFailed, "pipeline does not batch");
        return end_members(shared, &mut b, |_| true, Some(&rej));
    };
    slots.take_joiners(&mut b);
    let now = Instant::now();
    // As in step_generation: a stopping daemon ends generations at the next
    // step boundary.
    let stopping = shared.scheduler.is_stopping();
    end_members(
        shared,
        &mut b,
        |g| stopping || g.is_cancelled() || now > g.deadline,
        None,
    );
    if b.members.is_empty() && !slots.retire(&mut b) {
        return;
    }
    let Some(model) = w.gen_models[b.pipeline].as_mut() else {
        let rej = Rejection::new(
            ErrorCode::InferenceFailed,
            "worker has no session for this pipeline",
        );
        end_members(shared, &mut b, |_| true, Some(&rej));
        if slots.retire(&mut b) {
            requeue_batch(shared, b);
        }
        return;
    };
    let run_order = shared.order.fetch_add(1, Relaxed);
    for g in &mut b.members {
        g.run_order = run_order;
    }
    let t0 = Instant::now();
    let running = shared.progress.running(w.id);
    let stepped = b.step(model);
    drop(running);
    let st = &shared.gen_stats[b.pipeline];
    st.time(&st.inference, t0.elapsed());
    match stepped {
        Ok(outs) => {
            let produced = outs.iter().filter(|o| o.token.is_some()).count();
            gp.decode_stats
                .record(b.members.len(), produced, t0.elapsed());
            for (g, out) in b.members.iter_mut().zip(outs) {
                if let Some((token_id, text)) = out.token {
                    llm_serve::publish_token(shared, g, token_id, &text);
                    if g.first_token.is_none() {
                        g.first_token = Some(Instant::now());
                    }
                }
            }
            end_members(shared, &mut b, |g| g.finished.is_some(), None);
        }
        Err(e) => {
            tracing::warn!(batch = b.members.len(), error = %e, "batched decode step failed");
            let rej = Rejection::new(ErrorCode::InferenceFailed, e);
            end_members(shared, &mut b, |_| true, Some(&rej));
        }
    }
    if b.members.is_empty() && !slots.retire(&mut b) {
        return;
    }
    requeue_batch(shared, b);
}
