//! Discovery: the `<node>/describe` queryable. A `get` on it returns the
//! daemon's [`Description`] (every pipeline's zenoh keys and ROS 2 topics,
//! tensor signatures, stages, level, deadline, provider) as JSON, built
//! once when intake opens: nothing in it changes while the daemon runs, so
//! answering costs one copy of a few kilobytes on zenoh's thread.

use std::collections::BTreeSet;
use std::sync::Arc;

use zenoh::Wait;

use crate::config::ros2::PipelineRos2;
use crate::config::{InputFormat, Outputs};
use crate::ctx::{Ctx, GenPipe, TensorPipe};
use crate::ros2::Flavour;
use crate::wire::describe::{Description, KeyInfo, PipelineInfo, RosNode, TopicInfo};

/// The key of the queryable: `<metrics.node>/describe`.
pub fn describe_key(node: &str) -> String {
    format!("{node}/describe")
}

fn key(role: &str, key: impl Into<String>, format: impl Into<String>) -> KeyInfo {
    KeyInfo {
        role: role.into(),
        key: key.into(),
        format: format.into(),
    }
}

fn topics(r: Option<&PipelineRos2>) -> Vec<TopicInfo> {
    let Some(r) = r else { return Vec::new() };
    r.endpoints()
        .map(|(role, e)| TopicInfo {
            role: role.into(),
            topic: e.topic.clone(),
            type_name: e.ty.name().into(),
            flavour: if e.is_rmw_zenoh() {
                "rmw_zenoh"
            } else {
                "bridge"
            }
            .into(),
            domain: match e.flavour {
                Flavour::RmwZenoh { domain } => Some(domain),
                Flavour::Bridge { .. } => None,
            },
            key: if role == "input" {
                e.subscribe_key()
            } else {
                e.publish_key()
            },
        })
        .collect()
}

/// What runs around the model, in order, e.g. `image: rgb 64x64 f32
/// nchw, letterbox`, `ocr: det → cls → rec`, `answer: detect (answer)`,
/// `then: classify`.
fn stages(ctx: &Ctx, tp: &TensorPipe) -> Vec<String> {
    let c = &tp.cfg;
    let mut out = Vec::new();
    if let InputFormat::Chained(link) = &c.format {
        out.push(format!("after: {}", ctx.tensors[link.after].cfg.name));
    }
    if let Some(b) = &tp.spec.image {
        let p = &b.pre;
        out.push(
            format!(
                "image: {:?} {}x{} {} {:?}, {:?}",
                p.color,
                p.width,
                p.height,
                p.dtype.name(),
                p.layout,
                p.resize
            )
            .to_lowercase(),
        );
    }
    if let Some(o) = &c.ocr {
        let cls = if o.params.use_cls { "cls → " } else { "" };
        out.push(format!("ocr: det → {cls}rec"));
    }
    if let Some(b) = &tp.spec.answer {
        out.push(format!(
            "answer: {} ({})",
            b.config.kind.name(),
            match b.config.outputs {
                Outputs::Answer => "answer",
                Outputs::Tensors => "tensors",
                Outputs::Both => "both",
            }
        ));
    }
    if let Some(next) = c.next {
        out.push(format!("then: {}", ctx.tensors[next].cfg.name));
    }
    out
}

/// How the input key is read and what the output key carries.
fn formats(tp: &TensorPipe) -> (String, &'static str) {
    let c = &tp.cfg;
    let input = match &c.format {
        InputFormat::Safetensors => "safetensors".to_string(),
        InputFormat::Raw { tensor, dtype, .. } => format!("raw {} {tensor}", dtype.name()),
        InputFormat::Image(_) => "image message (docs/images.md)".to_string(),
        InputFormat::Chained(_) => "none (chain stage)".to_string(),
    };
    let output = if c.publishes_tensors() {
        "safetensors prediction"
    } else {
        "JSON answer"
    };
    (input, output)
}

fn tensor_info(ctx: &Ctx, tp: &TensorPipe) -> PipelineInfo {
    let c = &tp.cfg;
    let (format, out_format) = formats(tp);
    let out_key = if c.input.contains('*') {
        format!("{}/<stream>", c.output)
    } else {
        c.output.clone()
    };
    let spec = &tp.spec;
    PipelineInfo {
        name: c.name.clone(),
        kind: "tensor".into(),
        level: ctx.config.levels[c.level].clone(),
        deadline_ms: c.deadline.as_secs_f64() * 1000.0,
        provider: spec.provider.into(),
        model: tp.model_name.clone(),
        keys: vec![
            key("input", &c.input, format),
            key("output", out_key, out_format),
            key("error", &c.error_key, "JSON error"),
        ],
        ros2: topics(c.ros2.as_ref()),
        inputs: spec.client_inputs.iter().map(|p| p.to_string()).collect(),
        outputs: spec
            .publish
            .iter()
            .filter_map(|n| spec.model_outputs.iter().find(|p| &p.name == n))
            .map(|p| p.to_string())
            .collect(),
        stages: stages(ctx, tp),
        max_batch: c.batch.as_ref().map_or(1, |b| b.max_batch),
    }
}

fn gen_info(ctx: &Ctx, gp: &GenPipe) -> PipelineInfo {
    let c = &gp.cfg;
    PipelineInfo {
        name: c.name.clone(),
        kind: "generate".into(),
        level: ctx.config.levels[c.level].clone(),
        deadline_ms: c.deadline.as_secs_f64() * 1000.0,
        provider: gp.provider.into(),
        model: gp.llm.generation.model_name.clone(),
        keys: vec![
            key("input", &c.input, "JSON command"),
            key("cancel", &c.cancel_key, "generation id"),
            key("query", &c.query_key, "JSON command (get)"),
            key("output", format!("{}/<id>", c.output), "JSON tokens, final"),
            key("error", &c.error_key, "JSON error"),
        ],
        ros2: topics(c.ros2.as_ref()),
        inputs: vec!["prompt: text".into()],
        outputs: vec!["tokens: text".into()],
        stages: vec!["chat template + tokenize".into(), "detokenize".into()],
        max_batch: c.max_batch,
    }
}

/// The daemon's description.
pub fn describe(ctx: &Ctx) -> Description {
    let pipelines: Vec<PipelineInfo> = ctx
        .tensors
        .iter()
        .map(|tp| tensor_info(ctx, tp))
        .chain(ctx.gens.iter().map(|gp| gen_info(ctx, gp)))
        .collect();
    let domains: BTreeSet<u32> = pipelines
        .iter()
        .flat_map(|p| p.ros2.iter().filter_map(|t| t.domain))
        .collect();
    let any_ros = pipelines.iter().any(|p| !p.ros2.is_empty());
    let r = &ctx.config.ros2;
    Description {
        node: ctx.config.metrics.node.clone(),
        zid: ctx.session.zid().to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        ros2: any_ros.then(|| RosNode {
            name: format!("{}/{}", r.namespace.trim_end_matches('/'), r.name),
            domains: domains.into_iter().collect(),
        }),
        pipelines,
    }
}

/// Declares the queryable; it answers every `get` with the same JSON.
pub fn declare(ctx: &Arc<Ctx>) -> zenoh::Result<zenoh::query::Queryable<()>> {
    let json = serde_json::to_vec(&describe(ctx)).expect("the description serialises");
    let key = describe_key(&ctx.config.metrics.node);
    ctx.session
        .declare_queryable(key)
        .callback(move |q| {
            if let Err(e) = q.reply(q.key_expr().clone(), json.clone()).wait() {
                tracing::debug!(error = %e, "cannot answer describe query");
            }
        })
        .wait()
}
