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

use zenoh::Wait;
use zenoh::qos::{CongestionControl, Priority};

pub use egress::{Prediction, publish_error, publish_generation, publish_prediction};

use self::graph::GraphPlan;
use super::egress::{Pipe, level_priority};
use crate::config::answer::AnswerKind;
use crate::config::ros2::{PipelineRos2, Ros2Out};
use crate::config::{Config, PipelineConfig};
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
    })
}

/// Checks that a tensor pipeline produces what its ROS types carry: a
/// `Float32MultiArray` input feeds the model's one f32 input; an array or
/// image output publishes the first published output (f32, or u8 for
/// images); a `Detection2DArray` needs OCR lines or detections, a `String`
/// any answer. Start-up and `reflexd check` both call it, so a pipeline
/// that does not fit fails before it serves.
pub fn check_tensor_pipe(p: &PipelineConfig, spec: &Spec) -> Result<(), Ros2StartError> {
    let Some(r) = &p.ros2 else { return Ok(()) };
    let at = |role: &str| format!("pipeline {:?}: ros2.{role}", p.name);
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
    let Some(out) = &r.output else { return Ok(()) };
    let answer = spec.answer.as_ref().map(|b| &b.config);
    let ty = out.endpoint.ty;
    let fits = match ty {
        RosType::Detection2DArray => {
            p.ocr.is_some() || answer.is_some_and(|a| matches!(a.kind, AnswerKind::Detect(_)))
        }
        RosType::String => p.ocr.is_some() || answer.is_some(),
        _ => return check_tensor_output(p, spec, ty).map_err(|e| format!("{}: {e}", at("output"))),
    };
    if fits {
        return Ok(());
    }
    Err(format!(
        "{}: type {ty} carries {}; this pipeline has {}",
        at("output"),
        if ty == RosType::String {
            "an answer as JSON text"
        } else {
            "OCR lines or detections ([pipeline.ocr], or an answer stage of kind \"detect\")"
        },
        match answer {
            Some(a) => format!("a {:?} answer", a.kind.name()),
            None => "no answer stage (docs/answers.md)".to_string(),
        }
    ))
}

/// An array or image output publishes the pipeline's first published
/// output tensor: there must be one, of a dtype the type carries.
fn check_tensor_output(p: &PipelineConfig, spec: &Spec, ty: RosType) -> Result<(), String> {
    if !p.publishes_tensors() || p.next.is_some() {
        return Err(format!(
            "type {ty} carries an output tensor, but this pipeline publishes {}; use vision_msgs/msg/Detection2DArray or std_msgs/msg/String",
            if p.next.is_some() {
                "its chain's answer"
            } else {
                "only its answer"
            }
        ));
    }
    let port = spec
        .publish
        .first()
        .and_then(|n| spec.model_outputs.iter().find(|p| &p.name == n))
        .ok_or_else(|| "the pipeline publishes no output".to_string())?;
    let ok = match ty {
        RosType::Image => matches!(port.dtype, Dtype::F32 | Dtype::U8),
        _ => port.dtype == Dtype::F32,
    };
    if ok {
        return Ok(());
    }
    Err(format!(
        "type {ty} cannot carry output {port} (f32{} expected); choose the output with `publish`",
        if ty == RosType::Image { " or u8" } else { "" }
    ))
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
                check_tensor_pipe(p, specs[i])?;
                pipe_topics(session, &plan, (Pipe::Tensor(i), r, p.level))?
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
