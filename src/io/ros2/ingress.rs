//! ROS 2 ingress: the subscriber callbacks of `[pipeline.ros2] input`
//! topics. Like `io::ingress` they run on zenoh threads and never block:
//! bound the payload, read the rmw_zenoh attachment (both formats; its
//! sequence number and source timestamp become the request's `seq` and
//! `ts_us`), decode the CDR message, and hand the result to the same entry
//! points zenoh messages use: a job for `io::ingress::submit`, or a command
//! for `io::commands::accept`. The message's `header` rides with the job so
//! every ROS answer can copy it. A refused message is answered on the
//! pipeline's error key (and ROS error topic) with its code.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use zenoh::Wait;
use zenoh::sample::Sample;

use super::super::commands::{self, Refused};
use super::super::egress::Pipe;
use super::super::ingress::{self, FrameMsg, Parts};
use crate::ctx::{Ctx, Delivery};
use crate::error::{ErrorCode, Rejection};
use crate::job::Job;
use crate::ros2::attachment::Attachment;
use crate::ros2::{Float32MultiArray, Header, Ros2Endpoint, RosType, StringMsg};
use crate::tensor::{Dtype, Tensor};
use crate::wire::RequestMeta;

/// Declares the subscriber of `pipe`'s ROS input.
pub fn subscribe(
    ctx: &Arc<Ctx>,
    pipe: Pipe,
    input: &Ros2Endpoint,
) -> zenoh::Result<zenoh::pubsub::Subscriber<()>> {
    let c = ctx.clone();
    let rmw = input.is_rmw_zenoh();
    ctx.session
        .declare_subscriber(input.subscribe_key())
        .callback(move |sample| match pipe {
            Pipe::Tensor(pi) => on_tensor(&c, pi, &sample, rmw),
            Pipe::Gen(gi) => on_prompt(&c, gi, &sample, rmw),
        })
        .wait()
}

/// The stream id of a ROS input: its topic without the leading `/`
/// (`/camera/image_raw` → `camera/image_raw`), so predictions also appear
/// on `<output>/camera/image_raw` and the topic has its own latest-wins slot.
pub fn stream_of(input: &Ros2Endpoint) -> &str {
    input.topic.trim_start_matches('/')
}

fn bad(msg: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::BadPayload, msg)
}

/// Bounds the payload and reads the attachment into request metadata. A
/// missing attachment is accepted (zenoh tools publish without one); a
/// malformed one is refused.
fn envelope(ctx: &Ctx, sample: &Sample, rmw: bool) -> Result<RequestMeta, Rejection> {
    let len = sample.payload().len();
    if len == 0 {
        return Err(Rejection::new(
            ErrorCode::EmptyPayload,
            "the message has no payload",
        ));
    }
    let max = ctx.config.limits.max_payload_bytes;
    if len > max {
        return Err(Rejection::new(
            ErrorCode::PayloadTooLarge,
            format!("payload is {len} bytes; the limit is {max} (limits.max_payload_bytes)"),
        ));
    }
    let Some(att) = sample.attachment().filter(|_| rmw) else {
        return Ok(RequestMeta::default());
    };
    let (a, _) = Attachment::decode(att).map_err(|e| bad(e.to_string()))?;
    Ok(RequestMeta {
        id: None,
        seq: u64::try_from(a.sequence_number).ok(),
        ts_us: u64::try_from(a.source_timestamp / 1000).ok(),
    })
}

fn on_tensor(ctx: &Ctx, pi: usize, sample: &Sample, rmw: bool) {
    let received = ctx.sched.now();
    let tp = &ctx.tensors[pi];
    tp.stats.received.fetch_add(1, Relaxed);
    let input = tp
        .cfg
        .ros2
        .as_ref()
        .and_then(|r| r.input.as_ref())
        .expect("subscribed for this input");
    let stream = stream_of(input).to_string();
    let meta = match envelope(ctx, sample, rmw) {
        Ok(m) => m,
        Err(rej) => return ingress::refuse(ctx, pi, stream, &rej, &RequestMeta::default()),
    };
    let bytes = ingress::payload_bytes(sample);
    match input.ty {
        RosType::Image | RosType::CompressedImage => match super::image::frame(input.ty, &bytes) {
            Ok((claim, data, header)) => {
                let frame = FrameMsg {
                    stream,
                    claim: &claim,
                    data,
                    meta,
                    header: Some(header),
                    received,
                };
                ingress::submit_frame(ctx, pi, frame)
            }
            Err(rej) => ingress::refuse(ctx, pi, stream, &rej, &meta),
        },
        RosType::Float32MultiArray => {
            let tensors = tensor_of(ctx, pi, &bytes).map(|t| vec![t]);
            match tensors.and_then(|t| tp.spec.validate(&t).map(|()| t)) {
                Ok(t) => {
                    let parts = Parts::tensors(t, meta, None);
                    ingress::submit(ctx, pi, stream, parts, received)
                }
                Err(rej) => ingress::refuse(ctx, pi, stream, &rej, &meta),
            }
        }
        other => {
            let rej = bad(format!("{other} is not a tensor pipeline input"));
            ingress::refuse(ctx, pi, stream, &rej, &meta)
        }
    }
}

/// A `Float32MultiArray` as the model's one f32 input: shape from
/// `layout.dim`, elements after `layout.data_offset`.
fn tensor_of(ctx: &Ctx, pi: usize, payload: &[u8]) -> Result<Tensor, Rejection> {
    let tp = &ctx.tensors[pi];
    let m = Float32MultiArray::decode(payload)?;
    let shape = m.shape()?;
    let n: usize = shape.iter().product();
    if n > tp.cfg.max_elements {
        return Err(Rejection::new(
            ErrorCode::TooManyElements,
            format!(
                "the array has {n} elements; the limit is {}",
                tp.cfg.max_elements
            ),
        ));
    }
    let offset = m.layout.data_offset as usize;
    // `shape()` checks the count after the offset; an offset past the end
    // with no dimensions still leaves nothing to read.
    let values = offset
        .checked_add(n)
        .and_then(|end| m.data.get(offset..end))
        .ok_or_else(|| {
            bad(format!(
                "{}: layout.data_offset {offset} is past the {} data elements",
                Float32MultiArray::TYPE,
                m.data.len()
            ))
        })?;
    let mut data = Vec::with_capacity(n * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    let name = &tp.spec.client_inputs[0].name;
    Ok(Tensor::new(name.as_str(), Dtype::F32, shape, data))
}

/// How a prompt that is a reflexd JSON command starts.
const JSON_OBJECT: char = '{';

/// Ids of prompts that came as plain text: unique among live generations
/// for the life of the process.
static NEXT_PROMPT: AtomicU64 = AtomicU64::new(1);

/// The command a ROS prompt stands for. Text that parses as a JSON object
/// is a reflexd command (its own id, sampling options, `max_tokens`,
/// `priority`, …; an id is added when it has none); any other text is the
/// prompt itself.
pub fn command_for(text: &str) -> Vec<u8> {
    let id = || format!("ros2-{}", NEXT_PROMPT.fetch_add(1, Relaxed));
    if text.trim_start().starts_with(JSON_OBJECT)
        && let Ok(mut obj) =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
    {
        obj.entry("id").or_insert_with(|| id().into());
        return serde_json::to_vec(&obj).expect("a JSON map serialises");
    }
    serde_json::to_vec(&serde_json::json!({ "id": id(), "prompt": text }))
        .expect("a JSON object serialises")
}

fn on_prompt(ctx: &Ctx, gi: usize, sample: &Sample, rmw: bool) {
    let refuse = |(rej, id): Refused| commands::reject(ctx, gi, id.as_deref(), &rej);
    let payload: Bytes = ingress::payload_bytes(sample);
    let text = envelope(ctx, sample, rmw)
        .and_then(|_| StringMsg::decode(&payload).map_err(Rejection::from));
    let text = match text {
        Ok(m) => m.data,
        Err(rej) => {
            ctx.gens[gi].stats.received.fetch_add(1, Relaxed);
            return refuse((rej, None));
        }
    };
    let out = &ctx.gens[gi].cfg.output;
    let delivery =
        |cmd: &crate::wire::command::Command| Delivery::Ros2(format!("{out}/{}", cmd.id));
    if let Err(r) = commands::accept(ctx, gi, &command_for(&text), delivery, false) {
        refuse(r);
    }
}

/// The header a ROS answer carries: the input's, or (for a job that did not
/// come from ROS) its source timestamp or the current time, no frame.
pub fn header_for(job: &Job) -> Header {
    job.header.clone().unwrap_or_else(|| {
        let ns = job
            .meta
            .ts_us
            .map(|us| us.saturating_mul(1000).min(i64::MAX as u64) as i64)
            .unwrap_or_else(crate::ros2::publisher::unix_nanos_now);
        Header {
            stamp: crate::ros2::Time::from_unix_nanos(ns),
            frame_id: String::new(),
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::command_for;

    fn cmd(text: &str) -> Value {
        serde_json::from_slice(&command_for(text)).unwrap()
    }

    #[test]
    fn text_is_the_prompt_and_json_objects_are_commands() {
        let c = cmd("What is the capital of France?");
        assert_eq!(c["prompt"], "What is the capital of France?");
        assert!(c["id"].as_str().unwrap().starts_with("ros2-"), "{c}");
        let (a, b) = (cmd("x")["id"].clone(), cmd("x")["id"].clone());
        assert_ne!(a, b, "made-up ids are unique");
        let c = cmd(r#"{"id": "q7", "prompt": "hi", "max_tokens": 3}"#);
        assert_eq!(
            (c["id"].as_str(), c["max_tokens"].as_u64()),
            (Some("q7"), Some(3))
        );
        let c = cmd(r#" {"messages": [{"role": "user", "content": "hi"}]}"#);
        assert!(
            c["id"].as_str().unwrap().starts_with("ros2-"),
            "an id is added: {c}"
        );
        assert_eq!(c["messages"][0]["content"], "hi");
        // Braces that are not a JSON object are just text.
        for text in ["{not json", "[1, 2]", "{} and more"] {
            assert_eq!(cmd(text)["prompt"], text);
        }
    }
}
