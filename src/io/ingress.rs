//! Ingress: the first stage. One zenoh subscriber per pipeline (chain
//! stages have none: their head's worker feeds them); its callback runs on
//! a zenoh thread, so it only bounds, decodes and validates the message,
//! then hands a [`Job`] to the scheduler without blocking. It never runs a
//! model. Camera frames ([`submit_frame`], the entry every frame carrier
//! shares) get only the cheap check here: sizes and a JPEG/PNG header, the
//! bytes stay shared with the message; the worker decodes them. A message
//! that fails any check is answered on the error key and counted; nothing
//! else is affected.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use zenoh::Wait;
use zenoh::sample::Sample;

use super::egress;
use crate::config::InputFormat;
use crate::ctx::Ctx;
use crate::error::{ErrorCode, Rejection};
use crate::job::Job;
use crate::ros2::Header;
use crate::sched::Submitted;
use crate::tensor::Tensor;
use crate::wire::image::{Frame, ImageClaim, ImageHeader, check_image, parse_image_attachment};
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
    let stream = stream_id(&tp.cfg.input, sample.key_expr().as_str());
    match decode(ctx, pi, &stream, sample) {
        Ok(Decoded::Tensors(tensors, meta)) => {
            let parts = Parts::tensors(tensors, meta, None);
            submit(ctx, pi, stream, parts, received)
        }
        Ok(Decoded::Frame(header, data)) => {
            let meta = RequestMeta {
                id: header.id,
                seq: header.seq,
                ts_us: header.ts_us,
            };
            let claim = &header.claim;
            submit_frame(
                ctx,
                pi,
                FrameMsg {
                    stream,
                    claim,
                    data,
                    meta,
                    header: None,
                    received,
                },
            );
        }
        Err((rej, meta)) => refuse(ctx, pi, stream, &rej, &meta),
    }
}

/// The one entry for camera frames, whatever carried them: the plain zenoh
/// image message here, ROS 2 `sensor_msgs/Image` / `CompressedImage`
/// mapped onto an [`ImageClaim`] by their ingress. Checks the frame against
/// pipeline `pi`'s limits (sizes and, for JPEG/PNG, the header only) and
/// queues it; a refused frame is answered on the pipeline's error key. Call
/// it from the zenoh callback, once per message, after counting the
/// message as received.
pub fn submit_frame(ctx: &Ctx, pi: usize, frame: FrameMsg<'_>) {
    let FrameMsg {
        stream,
        claim,
        data,
        meta,
        header,
        received,
    } = frame;
    match check_frame(ctx, pi, claim, data) {
        Ok(f) => {
            let parts = Parts {
                tensors: Vec::new(),
                image: Some(f),
                meta,
                header,
            };
            submit(ctx, pi, stream, parts, received)
        }
        Err(rej) => refuse(ctx, pi, stream, &rej, &meta),
    }
}

/// A received camera frame, as [`submit_frame`] takes it.
pub struct FrameMsg<'a> {
    /// The stream id (see [`stream_id`]).
    pub stream: String,
    pub claim: &'a ImageClaim,
    /// The frame's bytes (shared with the received message, not copied).
    pub data: Bytes,
    pub meta: RequestMeta,
    /// The ROS 2 message's header, copied into its ROS answers.
    pub header: Option<Header>,
    /// When the message arrived (`ctx.sched.now()` in the callback).
    pub received: Instant,
}

fn check_frame(ctx: &Ctx, pi: usize, claim: &ImageClaim, data: Bytes) -> Result<Frame, Rejection> {
    let limits = ctx.tensors[pi]
        .spec
        .image
        .as_ref()
        .map(|b| b.pre.limits)
        .ok_or_else(|| {
            Rejection::new(
                ErrorCode::BadImage,
                "this pipeline does not take camera frames",
            )
        })?;
    let desc = check_image(claim, &data, &limits)?;
    Ok(Frame { desc, data })
}

/// Queues a checked message of pipeline `pi` (zenoh messages here, ROS 2
/// messages from `io::ros2`); a replaced or refused job is answered at once.
pub(super) fn submit(ctx: &Ctx, pi: usize, stream: String, d: Parts, received: Instant) {
    let tp = &ctx.tensors[pi];
    let job = Box::new(Job {
        pipeline: pi,
        stream: stream.into(),
        meta: d.meta,
        tensors: d.tensors,
        image: d.image,
        header: d.header,
        received,
        recv_order: ctx.order.fetch_add(1, Relaxed),
        deadline: received + tp.cfg.deadline,
        remote: None,
    });
    // Local scheduler, or the pipeline's offload target (`io::fleet`).
    match super::fleet::submit(ctx, job) {
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

/// Answers a message refused before it became a job (on the error key and
/// any ROS 2 error topic), and counts it.
pub(super) fn refuse(
    ctx: &Ctx,
    pi: usize,
    mut stream: String,
    rej: &Rejection,
    meta: &RequestMeta,
) {
    if rej.code == ErrorCode::BadStream {
        // Never echo an over-long id back in full.
        stream.truncate(truncate(&stream).len());
    }
    ctx.tensors[pi].stats.error(rej.code);
    let ids = (meta.id.as_deref(), meta.seq);
    egress::report(ctx, egress::Pipe::Tensor(pi), &stream, ids, rej);
}

/// What a job carries: message tensors or a frame, request metadata and,
/// from ROS 2, the message header.
pub(super) struct Parts {
    pub tensors: Vec<Tensor>,
    pub image: Option<Frame>,
    pub meta: RequestMeta,
    pub header: Option<Header>,
}

impl Parts {
    pub fn tensors(tensors: Vec<Tensor>, meta: RequestMeta, header: Option<Header>) -> Parts {
        Parts {
            tensors,
            image: None,
            meta,
            header,
        }
    }
}

/// A message decoded in the callback.
enum Decoded {
    Tensors(Vec<Tensor>, RequestMeta),
    /// An image message's attachment and bytes, to be checked.
    Frame(ImageHeader, Bytes),
}

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
        InputFormat::Image(_) => return decode_image(sample, bytes),
        InputFormat::Chained(_) => {
            return Err(no_meta(Rejection::new(
                ErrorCode::InternalError,
                "a chain stage has no zenoh input",
            )));
        }
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
        Ok(()) => Ok(Decoded::Tensors(tensors, meta)),
        Err(r) => Err((r, meta)),
    }
}

/// An image message's attachment (docs/images.md); the frame is checked by
/// [`submit_frame`].
fn decode_image(sample: &Sample, bytes: Bytes) -> Result<Decoded, (Rejection, RequestMeta)> {
    let att = sample
        .attachment()
        .map(|a| a.to_bytes())
        .unwrap_or_default();
    let header = parse_image_attachment(&att).map_err(|(e, partial)| {
        let meta = RequestMeta {
            id: partial.id,
            seq: partial.seq,
            ts_us: None,
        };
        (Rejection::from(e), meta)
    })?;
    Ok(Decoded::Frame(header, bytes))
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
