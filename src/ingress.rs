//! Ingress: the first stage. One zenoh subscriber per pipeline; its callback
//! runs on a zenoh thread, so it only bounds, decodes and validates the
//! message, then hands a [`Job`] to the scheduler without blocking. It never
//! runs a model. A message that fails any check is answered on the error key
//! and counted; nothing else is affected.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use zenoh::Wait;
use zenoh::sample::Sample;

use crate::config::InputFormat;
use crate::egress;
use crate::error::{ErrorCode, Rejection};
use crate::scheduler::{Job, Submitted};
use crate::service::Shared;
use crate::wire::{self, RequestMeta};
use crate::worker;

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
pub fn subscribe(shared: &Arc<Shared>, pi: usize) -> zenoh::Result<zenoh::pubsub::Subscriber<()>> {
    let key = shared.config.pipelines[pi].input.clone();
    let sh = shared.clone();
    shared
        .session
        .declare_subscriber(key)
        .callback(move |sample| on_sample(&sh, pi, &sample))
        .wait()
}

fn on_sample(shared: &Shared, pi: usize, sample: &Sample) {
    let received = Instant::now();
    let p = &shared.config.pipelines[pi];
    shared.stats[pi].received.fetch_add(1, Relaxed);
    let mut stream = stream_id(&p.input, sample.key_expr().as_str());
    match decode(shared, pi, &stream, sample) {
        Ok((tensors, meta)) => {
            let job = Box::new(Job {
                pipeline: pi,
                stream: stream.into(),
                meta,
                tensors,
                received,
                recv_order: shared.order.fetch_add(1, Relaxed),
                deadline: received + p.deadline,
            });
            match shared.scheduler.submit(job) {
                Submitted::Queued => {}
                Submitted::Replaced(old) => worker::fail(
                    shared,
                    &old,
                    &Rejection::new(
                        ErrorCode::Superseded,
                        "a newer frame of this stream arrived before this one ran",
                    ),
                ),
                Submitted::Rejected(rej, job) => worker::fail(shared, &job, &rej),
            }
        }
        Err((rej, meta)) => {
            if rej.code == ErrorCode::BadStream {
                // Never echo an over-long id back in full.
                stream.truncate(truncate(&stream).len());
            }
            shared.stats[pi].error(rej.code);
            egress::publish_error(
                &shared.session,
                &p.error_key,
                &p.name,
                &stream,
                meta.id.as_deref(),
                meta.seq,
                &rej,
            );
        }
    }
}

type Decoded = (Vec<wire::Tensor>, RequestMeta);

fn decode(
    shared: &Shared,
    pi: usize,
    stream: &str,
    sample: &Sample,
) -> Result<Decoded, (Rejection, RequestMeta)> {
    let p = &shared.config.pipelines[pi];
    let limits = &shared.config.limits;
    let no_meta = |r| (r, RequestMeta::default());
    if stream.len() > MAX_STREAM_LEN || stream == "error" {
        return Err(no_meta(Rejection::new(
            ErrorCode::BadStream,
            format!(
                "stream id {:?} is reserved or longer than {MAX_STREAM_LEN} bytes",
                truncate(stream)
            ),
        )));
    }
    let payload = sample.payload();
    let len = payload.len();
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
    let bytes = payload.to_bytes();
    let (tensors, meta) = match &p.format {
        InputFormat::Safetensors => wire::decode_safetensors(&bytes, limits.max_elements)?,
        InputFormat::Raw {
            tensor,
            dtype,
            shape,
        } => {
            let meta = match sample.attachment() {
                Some(a) => wire::decode_attachment(&a.to_bytes())?,
                None => RequestMeta::default(),
            };
            match wire::decode_raw(&bytes, tensor, *dtype, shape) {
                Ok(t) => (vec![t], meta),
                Err(r) => return Err((r, meta)),
            }
        }
    };
    match shared.specs[pi].validate(&tensors) {
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
