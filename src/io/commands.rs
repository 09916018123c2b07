//! Ingress of generation pipelines: the command subscriber, the cancel
//! subscriber and the queryable. A command is parsed and bounded in the
//! zenoh callback (`wire::command`), its priority resolved, a registry slot
//! taken (unique id, `max_generations`) together with where its messages go,
//! and the generation queued; nothing here runs a model or waits.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use zenoh::Wait;

use super::egress;
use crate::ctx::{Ctx, Delivery};
use crate::error::{ErrorCode, Rejection};
use crate::llm::{Generation, tools};
use crate::wire::command::{self, Command};
use crate::wire::reply;

/// The zenoh entities of one generation pipeline (undeclared on drop).
pub struct Entities {
    _commands: zenoh::pubsub::Subscriber<()>,
    _cancels: zenoh::pubsub::Subscriber<()>,
    _queries: zenoh::query::Queryable<()>,
}

/// Publishes a refused command's error and counts it.
pub(super) fn reject(ctx: &Ctx, gi: usize, id: Option<&str>, rej: &Rejection) {
    ctx.gens[gi].stats.error(rej.code);
    egress::report(ctx, egress::Pipe::Gen(gi), "", (id, None), rej);
}

pub(super) type Refused = (Rejection, Option<String>);

/// The level a command runs at: the pipeline's own, or a lower one it may
/// ask for (never higher, and only levels whose workers hold the model).
fn level(ctx: &Ctx, gi: usize, cmd: &Command) -> Result<usize, Refused> {
    let cfg = &ctx.gens[gi].cfg;
    let Some(name) = &cmd.priority else {
        return Ok(cfg.level);
    };
    match ctx.config.levels.iter().position(|l| l == name) {
        Some(l) if cfg.allowed_levels.contains(&l) => Ok(l),
        _ => {
            let allowed: Vec<&String> = cfg
                .allowed_levels
                .iter()
                .map(|&l| &ctx.config.levels[l])
                .collect();
            Err((
                Rejection::new(
                    ErrorCode::BadParameter,
                    format!("priority = {name:?}: expected one of {allowed:?}"),
                ),
                Some(cmd.id.clone()),
            ))
        }
    }
}

/// Validates a command and queues its generation (or hands it to its
/// offload route, unless another daemon `offloaded` it here); prompts that
/// came on a ROS 2 topic arrive here too (see `io::ros2`).
pub(super) fn accept(
    ctx: &Ctx,
    gi: usize,
    bytes: &[u8],
    delivery: impl FnOnce(&Command) -> Delivery,
    offloaded: bool,
) -> Result<(), Refused> {
    let received = ctx.sched.now();
    let gp = &ctx.gens[gi];
    gp.stats.received.fetch_add(1, Relaxed);
    // The daemon-wide payload bound applies to commands too (on top of the
    // fixed command::MAX_COMMAND_BYTES), so one `[limits]` setting caps
    // every message.
    let max = ctx.config.limits.max_payload_bytes;
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
    let level = level(ctx, gi, &cmd)?;
    let id = cmd.id.clone();
    // Tools: the prompt offers them and the step's grammar is compiled
    // here (~2 ms), so a worker only masks.
    let (messages, tools) = match &cmd.tools {
        Some(req) => tools::run::prepare(gp.tools.as_ref(), req, &cmd.messages)
            .map_err(|e| (e.rejection(), Some(id.clone())))?,
        None => (Vec::new(), None),
    };
    let messages = if cmd.tools.is_some() {
        &messages
    } else {
        &cmd.messages
    };
    // Tokenized here, bounded in tokens after the chat template, so an
    // over-long prompt is refused before any worker spends a prefill on it.
    let prompt = gp
        .llm
        .prompt_ids(messages, gp.max_prompt_tokens)
        .map_err(|r| (r, Some(id.clone())))?;
    let (route, cancel) = gp
        .registry
        .register(&id, delivery(&cmd))
        .map_err(|r| (r, Some(id.clone())))?;
    let mut g = Box::new(Generation::new(
        gi, level, cmd, cancel, received, route, prompt,
    ));
    g.tools = tools;
    let queued = if offloaded {
        ctx.sched.submit_gen(level, g)
    } else {
        super::fleet::submit_gen(ctx, level, g)
    };
    queued.map_err(|(rej, _)| {
        // The delivery went into the slot: a query still gets its answer.
        let d = gp.registry.slot(route).delivery().take();
        gp.registry.release_slot(route);
        if let Some(Delivery::Query(q)) = d {
            let body = reply::refused_query(Some(&id), &rej);
            let _ = q.reply(q.key_expr().clone(), body).wait();
        }
        (rej, Some(id))
    })
}

/// Takes a command that came as a query (`offloaded`: from another
/// daemon, never offloaded again); its messages are the query's replies.
pub fn answer_query(c: &Ctx, gi: usize, bytes: &[u8], query: zenoh::query::Query, offloaded: bool) {
    let mut q = Some(query);
    let r = accept(
        c,
        gi,
        bytes,
        |_| Delivery::Query(q.take().expect("delivery built once")),
        offloaded,
    );
    if let Err((rej, id)) = r {
        reject(c, gi, id.as_deref(), &rej);
        if let Some(q) = q {
            let body = reply::refused_query(id.as_deref(), &rej);
            let _ = q.reply(q.key_expr().clone(), body).wait();
        }
    }
}

/// Declares the command subscriber, cancel subscriber and queryable of
/// generation pipeline `gi`.
pub fn declare(ctx: &Arc<Ctx>, gi: usize) -> zenoh::Result<Entities> {
    let cfg = &ctx.gens[gi].cfg;
    let c = ctx.clone();
    let commands = ctx
        .session
        .declare_subscriber(cfg.input.clone())
        .callback(move |sample| {
            let bytes = sample.payload().to_bytes();
            let out = &c.gens[gi].cfg.output;
            let topic = |cmd: &Command| Delivery::Topic(format!("{out}/{}", cmd.id));
            if let Err((rej, id)) = accept(&c, gi, &bytes, topic, false) {
                reject(&c, gi, id.as_deref(), &rej);
            }
        })
        .wait()?;
    let c = ctx.clone();
    let cancels = ctx
        .session
        .declare_subscriber(cfg.cancel_key.clone())
        .callback(move |sample| {
            let bytes = sample.payload().to_bytes();
            let id = command::salvage_id(&bytes)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            if !c.gens[gi].registry.cancel(&id) {
                tracing::debug!(%id, "cancel for an unknown or finished generation");
            }
        })
        .wait()?;
    let c = ctx.clone();
    let queries = ctx
        .session
        .declare_queryable(cfg.query_key.clone())
        .callback(move |query| {
            let bytes = query
                .payload()
                .map(|p| p.to_bytes().into_owned())
                .unwrap_or_default();
            answer_query(&c, gi, &bytes, query, false);
        })
        .wait()?;
    Ok(Entities {
        _commands: commands,
        _cancels: cancels,
        _queries: queries,
    })
}
