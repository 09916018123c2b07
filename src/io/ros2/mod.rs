//! reflexd as a ROS 2 node on zenoh (docs/ros2.md): the zenoh side of the
//! `[pipeline.ros2]` tables. Start-up declares a publisher per ROS topic
//! reflexd writes ([`declare_outputs`], before the context exists: workers
//! and delivery threads find them in `Ctx::ros2`); intake opens one
//! subscriber per ROS input and the rmw_zenoh liveliness tokens that make
//! the node and its topics visible to `ros2 node list` / `ros2 topic list`
//! ([`open`]). [`ingress`] decodes ROS messages into the same jobs and
//! commands zenoh messages become; [`egress`] encodes predictions, answers,
//! token chunks and errors as ROS messages. Backpressure is the zenoh
//! side's: subscriber callbacks never block; predictions and errors are put
//! with `CongestionControl::Drop`, generation text (on delivery threads,
//! never a worker) with `Block`, as on reflexd's own keys.

pub mod egress;
pub mod graph;
pub mod image;
pub mod ingress;

use std::sync::Mutex;

use zenoh::Wait;
use zenoh::qos::{CongestionControl, Priority};

pub use egress::{publish_error, publish_generation, publish_prediction};

use self::graph::GraphPlan;
use super::egress::{Pipe, level_priority};
use crate::config::Config;
use crate::config::ros2::{PipelineRos2, Ros2Out};
use crate::ctx::Ctx;
use crate::ctx::ros::{RosOut, RosPipe, RosTopic};
use crate::infer::Spec;
use crate::ros2::publisher::gid_for_token;
use crate::ros2::{PublisherState, RosType};
use crate::tensor::Dtype;

/// Why the ROS 2 side cannot start.
pub type Ros2StartError = String;

/// Declares the publisher of one topic; its GID comes from its planned
/// liveliness token (rmw_zenoh topics only).
fn topic(
    session: &zenoh::Session,
    out: &Ros2Out,
    token: Option<&str>,
    (cc, prio): (CongestionControl, Priority),
) -> Result<RosTopic, Ros2StartError> {
    let key = out.endpoint.publish_key();
    let publisher = session
        .declare_publisher(key.clone())
        .congestion_control(cc)
        .priority(prio)
        .wait()
        .map_err(|e| format!("cannot declare a publisher on {key}: {e}"))?;
    Ok(RosTopic {
        out: out.clone(),
        publisher,
        state: token.map(|t| PublisherState::new(gid_for_token(t))),
    })
}

/// The publishers of one pipeline: predictions at the pipeline's level
/// priority, generation text blocking (delivery threads), errors like
/// reflexd's own error messages.
fn pipe_topics(
    session: &zenoh::Session,
    plan: &GraphPlan,
    (pipe, r, level): (Pipe, &PipelineRos2, usize),
) -> Result<RosPipe, Ros2StartError> {
    let drop = (CongestionControl::Drop, level_priority(level));
    let text = (CongestionControl::Block, Priority::DataHigh);
    let output_qos = if matches!(pipe, Pipe::Gen(_)) {
        text
    } else {
        drop
    };
    let declare = |role, out: &Option<Ros2Out>, qos| {
        out.as_ref()
            .map(|o| topic(session, o, plan.token(pipe, role), qos))
            .transpose()
    };
    Ok(RosPipe {
        output: declare("output", &r.output, output_qos)?,
        tokens: declare("tokens", &r.tokens, text)?,
        error: declare(
            "error",
            &r.error,
            (CongestionControl::Drop, Priority::DataHigh),
        )?,
        image: None,
    })
}

/// Checks that a tensor pipeline's model fits its ROS types: a
/// `Float32MultiArray` input feeds the model's one f32 input; outputs
/// publish the first published output (f32, or u8 for images).
pub fn check_tensor_pipe(name: &str, r: &PipelineRos2, spec: &Spec) -> Result<(), Ros2StartError> {
    let at = |role: &str| format!("pipeline {name:?}: ros2.{role}");
    if let Some(input) = &r.input
        && input.ty == RosType::Float32MultiArray
    {
        match spec.client_inputs.as_slice() {
            [one] if one.dtype == Dtype::F32 => {}
            ports => {
                let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
                return Err(format!(
                    "{}: a std_msgs/msg/Float32MultiArray feeds one f32 model input; this model takes {}",
                    at("input"),
                    list.join(", ")
                ));
            }
        }
    }
    if let Some(out) = &r.output {
        let port = spec
            .publish
            .first()
            .and_then(|n| spec.model_outputs.iter().find(|p| &p.name == n))
            .ok_or_else(|| format!("{}: the pipeline publishes no output", at("output")))?;
        let ok = match out.endpoint.ty {
            RosType::Image => matches!(port.dtype, Dtype::F32 | Dtype::U8),
            _ => port.dtype == Dtype::F32,
        };
        if !ok {
            return Err(format!(
                "{}: type {} cannot carry output {port} (f32{} expected); choose the output with `publish`",
                at("output"),
                out.endpoint.ty,
                if out.endpoint.ty == RosType::Image {
                    " or u8"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

/// Checks tensor pipeline `p`'s ROS topics against its model and builds the
/// image stage of a camera input (`None` without one). Start-up and
/// `reflexd check` both call it, so a model that does not fit fails early.
pub fn tensor_stage(
    p: &crate::config::PipelineConfig,
    spec: &Spec,
) -> Result<Option<crate::infer::pre::Preprocessor>, Ros2StartError> {
    let Some(r) = &p.ros2 else { return Ok(None) };
    check_tensor_pipe(&p.name, r, spec)?;
    let frames = r.input.as_ref().is_some_and(|e| e.ty.is_image());
    match (frames, &p.pre) {
        (true, Some(pre)) => image::stage(&p.name, pre, spec).map(Some),
        _ => Ok(None),
    }
}

/// Declares every ROS publisher and plans the graph tokens; `specs` are the
/// tensor pipelines' interfaces, in config order.
pub fn declare_outputs(
    session: &zenoh::Session,
    config: &Config,
    specs: &[&Spec],
) -> Result<RosOut, Ros2StartError> {
    let plan = graph::plan(config, &session.zid().to_string());
    let mut out = RosOut {
        graph: plan.all().map(str::to_string).collect(),
        ..RosOut::default()
    };
    for (i, p) in config.pipelines.iter().enumerate() {
        out.tensors.push(match &p.ros2 {
            None => RosPipe::default(),
            Some(r) => {
                let image = tensor_stage(p, specs[i])?;
                let mut pipe = pipe_topics(session, &plan, (Pipe::Tensor(i), r, p.level))?;
                pipe.image = image.map(Mutex::new);
                pipe
            }
        });
    }
    for (i, g) in config.generators.iter().enumerate() {
        out.gens.push(match &g.ros2 {
            None => RosPipe::default(),
            Some(r) => pipe_topics(session, &plan, (Pipe::Gen(i), r, g.level))?,
        });
    }
    Ok(out)
}

/// The ROS entities of a running daemon. Dropping `subscribers` stops ROS
/// intake; dropping `tokens` takes reflexd out of the ROS graph.
#[derive(Default)]
pub struct Entities {
    pub subscribers: Vec<zenoh::pubsub::Subscriber<()>>,
    pub tokens: Vec<zenoh::liveliness::LivelinessToken>,
}

/// Opens ROS intake and announces the node: one subscriber per ROS input,
/// then the liveliness tokens (so the graph shows reflexd only once it
/// listens).
pub fn open(ctx: &std::sync::Arc<Ctx>) -> zenoh::Result<Entities> {
    let mut e = Entities::default();
    for (i, p) in ctx.config.pipelines.iter().enumerate() {
        if let Some(input) = p.ros2.as_ref().and_then(|r| r.input.as_ref()) {
            e.subscribers
                .push(ingress::subscribe(ctx, Pipe::Tensor(i), input)?);
        }
    }
    for (i, g) in ctx.config.generators.iter().enumerate() {
        if let Some(input) = g.ros2.as_ref().and_then(|r| r.input.as_ref()) {
            e.subscribers
                .push(ingress::subscribe(ctx, Pipe::Gen(i), input)?);
        }
    }
    for t in &ctx.ros2.graph {
        e.tokens
            .push(ctx.session.liveliness().declare_token(t.clone()).wait()?);
    }
    if !e.tokens.is_empty() {
        tracing::info!(
            node = %format!("{}/{}", ctx.config.ros2.namespace.trim_end_matches('/'), ctx.config.ros2.name),
            tokens = e.tokens.len(),
            "ROS 2 node announced"
        );
    }
    Ok(e)
}
