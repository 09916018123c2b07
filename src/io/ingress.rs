//! Ingress: the first stage. One zenoh subscriber per pipeline; its callback
//! runs on a zenoh thread, so it only bounds, decodes and validates the
//! message, then hands a [`Job`] to the scheduler without blocking. It never
//! runs a model. A message that fails any check is answered on the error key
//! and counted; nothing else is affected.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use zenoh::Wait;
use zenoh::sample::Sample;

use super::egress;
use crate::config::InputFormat;
use crate::ctx::Ctx;
use crate::error::{ErrorCode, Rejection};
use crate::job::Job;
use crate::sched::Submitted;
use crate::tensor::Tensor;
use crate::wire::{self, RequestMeta};

/// Longest stream id accepted (bytes).
pub const MAX_STREAM_LEN: usize = 128;

/// The stream id of a received key: the chunks matched by the input
/// pattern's wildcards, joined by `/` (`robot/mic/*` + `robot/mic/front` →
/// `front`). Empty when the pattern has no wildcard.
pub fn stream_id(pattern: &str, key: &str) -> String {
    let pat: Vec<&str> = pattern.split('/').collect();
    let got: Vec<&str> = key.split('/').collect();
    let mut parts: Vec<&str> = Vec::new();
    let mut k = 0;
    for (i, p) in pat.iter().enumerate() {
        if *p == "**" {
            let rest_pat = pat.len() - i - 1;
            let end = got.len().saturating_sub(rest_pat).max(k);
            parts.extend(&got[k..end]);
            k = end;
        } else {
            if p.contains('*') && k < got.len() {
                parts.push(got[k]);
            }
            k += 1;
        }
    }
    parts.join("/")
}

/// Declares the subscriber of pipeline `pi`.
pub fn subscribe(ctx: &Arc<Ctx>, pi: usize) -> zenoh::Result<zenoh::pubsub::Subscriber<()>> {
    let key = ctx.tensors[pi].cfg.input.clone();
    let sh = ctx.clone();
    ctx.session
        .declare_subscriber(key)
        .callback(move |sample| on_sample(&sh, pi, &sample))
        .wait()
}

fn on_sample(ctx: &Ctx, pi: usize, sample: &Sample) {
    let received = ctx.sched.now();
    let tp = &ctx.tensors[pi];
    tp.stats.received.fetch_add(1, Relaxed);
    let mut stream = stream_id(&tp.cfg.input, sample.key_expr().as_str());
    match decode(ctx, pi, &stream, sample) {
        Ok((tensors, meta)) => submit(
            ctx,
            Box::new(Job {
                pipeline: pi,
                stream: stream.into(),
                meta,
                tensors,
                header: None,
                received,
                recv_order: ctx.order.fetch_add(1, Relaxed),
                deadline: received + tp.cfg.deadline,
            }),
        ),
        Err((rej, meta)) => {
            if rej.code == ErrorCode::BadStream {
                // Never echo an over-long id back in full.
                stream.truncate(truncate(&stream).len());
            }
            refuse(ctx, pi, &stream, &meta, &rej);
        }
    }
}

/// Queues a decoded job (any input: zenoh messages here, ROS 2 messages in
/// `io::ros2`); a replaced or refused job is answered at once.
pub fn submit(ctx: &Ctx, job: Box<Job>) {
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

/// Answers a message refused before it became a job, and counts it.
pub fn refuse(ctx: &Ctx, pi: usize, stream: &str, meta: &RequestMeta, rej: &Rejection) {
    ctx.tensors[pi].stats.error(rej.code);
    let ids = (meta.id.as_deref(), meta.seq);
    egress::report(ctx, egress::Pipe::Tensor(pi), stream, ids, rej);
}

type Decoded = (Vec<Tensor>, RequestMeta);

/// The payload's bytes without a copy when zenoh holds them in one piece.
pub fn payload_bytes(sample: &Sample) -> Bytes {
    let payload = sample.payload();
    if payload.slices().nth(1).is_none() {
        Bytes::from_owner(Contiguous(payload.clone()))
    } else {
        Bytes::from(payload.to_bytes().into_owned())
    }
}

/// A zenoh payload known to be one slice, as a [`Bytes`] owner.
struct Contiguous(zenoh::bytes::ZBytes);

impl AsRef<[u8]> for Contiguous {
    fn as_ref(&self) -> &[u8] {
        self.0.slices().next().unwrap_or(&[])
    }
}

fn decode(
    ctx: &Ctx,
    pi: usize,
    stream: &str,
    sample: &Sample,
) -> Result<Decoded, (Rejection, RequestMeta)> {
    let tp = &ctx.tensors[pi];
    let limits = &ctx.config.limits;
    let no_meta = |r| (r, RequestMeta::default());
    if stream.len() > MAX_STREAM_LEN || wire::is_reserved(stream) {
        return Err(no_meta(Rejection::new(
            ErrorCode::BadStream,
            format!(
                "stream id {:?} is reserved or longer than {MAX_STREAM_LEN} bytes",
                truncate(stream)
            ),
        )));
    }
    let len = sample.payload().len();
    if len == 0 {
        return Err(no_meta(Rejection::new(
            ErrorCode::EmptyPayload,
            "the message has no payload",
        )));
    }
    if len > limits.max_payload_bytes {
        return Err(no_meta(Rejection::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "payload is {len} bytes; the limit is {} (limits.max_payload_bytes)",
                limits.max_payload_bytes
            ),
        )));
    }
    let bytes = payload_bytes(sample);
    let (tensors, meta) = match &tp.cfg.format {
        InputFormat::Safetensors => wire::decode_safetensors(&bytes, tp.cfg.max_elements)?,
        InputFormat::Raw {
            tensor,
            dtype,
            shape,
        } => {
            let meta = match sample.attachment() {
                Some(a) => wire::decode_attachment(&a.to_bytes())?,
                None => RequestMeta::default(),
            };
            match wire::decode_raw(bytes, tensor, *dtype, shape) {
                Ok(t) => (vec![t], meta),
                Err(r) => return Err((r, meta)),
            }
        }
    };
    match tp.spec.validate(&tensors) {
        Ok(()) => Ok((tensors, meta)),
        Err(r) => Err((r, meta)),
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(32);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::stream_id;

    #[test]
    fn stream_id_comes_from_wildcard_chunks() {
        assert_eq!(stream_id("robot/mic/*", "robot/mic/front"), "front");
        assert_eq!(stream_id("robot/*/image", "robot/cam0/image"), "cam0");
        assert_eq!(stream_id("robot/**", "robot/a/b"), "a/b");
        assert_eq!(stream_id("robot/**/img", "robot/a/b/img"), "a/b");
        assert_eq!(stream_id("robot/mic", "robot/mic"), "");
    }
}
