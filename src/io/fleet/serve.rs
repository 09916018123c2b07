//! Offload, serving side (`[fleet] serve = true`): one queryable per
//! pipeline on `<node>/offload/<pipeline>`, plus a cancel subscriber per
//! generation pipeline. An offloaded tensor request is decoded and
//! validated like a local message, then queued in this daemon's scheduler
//! as a [`Job`] that remembers its query: the worker's prediction (or any
//! failure, from any stage) becomes the query's one reply, and dropping the
//! job ends the query. It runs at the level the requester asked for when
//! this daemon's workers can run the pipeline there (`Task::level`), else
//! at the nearest level they can. An offloaded generation goes through the
//! ordinary command intake with its query as the delivery, at its
//! requested priority resolved the same way. Nothing offloaded here is
//! offloaded again. Replies take the query's QoS: tensor queries are sent
//! with `CongestionControl::Drop`, so a worker never blocks on a reply.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use zenoh::Wait;

use super::header::{Form, OffloadHeader};
use crate::config::InputFormat;
use crate::config::fleet::{offload_cancel_key, offload_key, resolve_level, served_levels};
use crate::ctx::Ctx;
use crate::error::{ErrorCode, Rejection};
use crate::io::{commands, egress};
use crate::job::{Job, Remote};
use crate::sched::Submitted;
use crate::wire::{self, ErrorMessage};

/// The serving side's zenoh entities (undeclared on drop).
pub struct Served {
    _queryables: Vec<zenoh::query::Queryable<()>>,
    _cancels: Vec<zenoh::pubsub::Subscriber<()>>,
}

/// Declares the offload queryables of every local pipeline.
pub fn declare(
    ctx: &Arc<Ctx>,
    served: &Arc<[std::sync::atomic::AtomicU64]>,
) -> zenoh::Result<Served> {
    let node = &ctx.config.metrics.node;
    let mut queryables = Vec::new();
    let mut cancels = Vec::new();
    for pi in 0..ctx.tensors.len() {
        let (c, n) = (ctx.clone(), served.clone());
        let key = offload_key(node, &ctx.tensors[pi].cfg.name);
        queryables.push(
            ctx.session
                .declare_queryable(key)
                .callback(move |q| {
                    n[pi].fetch_add(1, Relaxed);
                    tensor_query(&c, pi, q)
                })
                .wait()?,
        );
    }
    for gi in 0..ctx.gens.len() {
        let (c, n) = (ctx.clone(), served.clone());
        let name = &ctx.gens[gi].cfg.name;
        let nt = ctx.tensors.len();
        queryables.push(
            ctx.session
                .declare_queryable(offload_key(node, name))
                .callback(move |q| {
                    n[nt + gi].fetch_add(1, Relaxed);
                    gen_query(&c, gi, q)
                })
                .wait()?,
        );
        let c = ctx.clone();
        cancels.push(
            ctx.session
                .declare_subscriber(offload_cancel_key(node, name))
                .callback(move |s| {
                    let id = String::from_utf8_lossy(&s.payload().to_bytes()).into_owned();
                    c.gens[gi].registry.cancel(id.trim());
                })
                .wait()?,
        );
    }
    tracing::info!(node = %node, pipelines = queryables.len(), "serving offloaded requests");
    Ok(Served {
        _queryables: queryables,
        _cancels: cancels,
    })
}

/// An offloaded tensor request: decoded, validated and queued.
fn tensor_query(ctx: &Ctx, pi: usize, query: zenoh::query::Query) {
    let received = ctx.sched.now();
    let tp = &ctx.tensors[pi];
    tp.stats.received.fetch_add(1, Relaxed);
    let decoded = OffloadHeader::decode(query.attachment().map(|a| a.to_bytes()).as_deref())
        .and_then(|h| decode(ctx, pi, &h, &query).map(|d| (h, d)));
    let (h, (tensors, meta)) = match decoded {
        Ok(d) => d,
        Err(rej) => {
            tp.stats.error(rej.code);
            let body = ErrorMessage {
                code: rej.code.code(),
                message: &rej.message,
                pipeline: &tp.cfg.name,
                stream: "",
                id: None,
                seq: None,
            };
            let _ = query.reply_err(body.encode()).wait();
            return;
        }
    };
    let cfg = &ctx.config;
    let allowed = served_levels(cfg, &tp.cfg);
    let level = resolve_level(&cfg.levels, &allowed, tp.cfg.level, &h.level);
    let budget = std::time::Duration::from_micros(h.budget_us);
    let job = Box::new(Job {
        pipeline: pi,
        // Streams of different requesters never share carried state.
        stream: format!("{}/{}", h.origin, h.stream).into(),
        meta,
        tensors,
        image: None,
        header: None,
        received,
        recv_order: ctx.order.fetch_add(1, Relaxed),
        deadline: received + budget,
        remote: Some(Box::new(Remote { query, level })),
    });
    match ctx.sched.submit(job) {
        Submitted::Queued => {}
        Submitted::Replaced(old) => egress::fail(
            ctx,
            &old,
            &Rejection::new(
                ErrorCode::Superseded,
                "a newer frame of this stream arrived before this one ran",
            ),
        ),
        Submitted::Rejected(rej, job) => egress::fail(ctx, &job, &rej),
    }
}

type Decoded = (Vec<crate::tensor::Tensor>, wire::RequestMeta);

fn decode(
    ctx: &Ctx,
    pi: usize,
    h: &OffloadHeader,
    query: &zenoh::query::Query,
) -> Result<Decoded, Rejection> {
    let tp = &ctx.tensors[pi];
    let max = ctx.config.limits.max_payload_bytes;
    let payload = query.payload().map(|p| p.to_bytes()).unwrap_or_default();
    if payload.is_empty() {
        return Err(Rejection::new(
            ErrorCode::EmptyPayload,
            "the request has no payload",
        ));
    }
    if payload.len() > max {
        let msg = format!("payload is {} bytes; the limit is {max}", payload.len());
        return Err(Rejection::new(ErrorCode::PayloadTooLarge, msg));
    }
    let bytes = Bytes::from(payload.into_owned());
    let safetensors =
        |b: &Bytes| wire::decode_safetensors(b, tp.cfg.max_elements).map_err(|(r, _)| r);
    let (tensors, meta) = match (h.form, &tp.cfg.format) {
        (Some(Form::Tensors), _) | (_, InputFormat::Safetensors) => safetensors(&bytes)?,
        (
            _,
            InputFormat::Raw {
                tensor,
                dtype,
                shape,
            },
        ) => (
            vec![wire::decode_raw(bytes, tensor, *dtype, shape)?],
            h.meta(),
        ),
        // Refused at config time (`offload` on image or chained pipelines).
        (_, InputFormat::Image(_) | InputFormat::Chained(_)) => {
            return Err(Rejection::new(
                ErrorCode::BadPayload,
                "this pipeline takes camera frames or chain input, which offload does not carry",
            ));
        }
    };
    tp.spec.validate(&tensors)?;
    Ok((tensors, meta))
}

/// An offloaded generation command: its priority resolved here, then the
/// ordinary intake with the query as its delivery.
fn gen_query(ctx: &Ctx, gi: usize, query: zenoh::query::Query) {
    let gp = &ctx.gens[gi];
    let header = OffloadHeader::decode(query.attachment().map(|a| a.to_bytes()).as_deref());
    let mut bytes = query
        .payload()
        .map(|p| p.to_bytes().into_owned())
        .unwrap_or_default();
    if let Ok(h) = &header
        && let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && v.is_object()
    {
        let cfg = &ctx.config;
        let level = resolve_level(&cfg.levels, &gp.cfg.allowed_levels, gp.cfg.level, &h.level);
        v["priority"] = cfg.levels[level].clone().into();
        bytes = v.to_string().into_bytes();
    }
    commands::answer_query(ctx, gi, &bytes, query, true);
}

/// A served job's prediction, as its query's reply.
pub fn reply_prediction(r: &Remote, payload: Vec<u8>) -> Result<(), String> {
    r.query
        .reply(r.query.key_expr().clone(), payload)
        .wait()
        .map_err(|e| e.to_string())
}

/// A served job's failure, as its query's error reply.
pub fn reply_error(r: &Remote, pipeline: &str, job: &Job, rej: &Rejection) {
    let body = ErrorMessage {
        code: rej.code.code(),
        message: &rej.message,
        pipeline,
        stream: &job.stream,
        id: job.meta.id.as_deref(),
        seq: job.meta.seq,
    };
    if let Err(e) = r.query.reply_err(body.encode()).wait() {
        tracing::debug!(pipeline, error = %e, "cannot answer an offloaded request");
    }
}
