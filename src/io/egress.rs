//! Egress: the last stage. Workers publish predictions through their own
//! [`Outbox`] (declared publishers cached per output key, so the hot path does
//! no key resolution); ingress, workers and shutdown report failures through
//! [`fail`] / [`report`] (also on the ROS 2 error topic). Every put uses
//! `CongestionControl::Drop`: a slow or absent subscriber must never stall a
//! worker or the zenoh callback, and a dropped reply is preferable to a late
//! prediction on a robot. Messages are
//! not `express`: an express message takes a whole transmission batch, so a
//! burst of replies (say, a flood answered `busy`) overflows zenoh's small
//! per-priority queues and is dropped; without it zenoh batches only under
//! back-pressure and sends at once otherwise.
//!
//! Predictions travel at the zenoh priority of their scheduler level
//! ([`level_priority`]): zenoh keeps one transmission queue per priority, so
//! a 32 ms audio frame's reply never waits behind (or is dropped behind) the
//! fragments of a 400 KB camera map in the same queue.

use std::collections::HashMap;

use zenoh::Wait;
use zenoh::qos::{CongestionControl, Priority};

use crate::ctx::Ctx;
use crate::error::Rejection;
use crate::job::Job;
use crate::wire::ErrorMessage;

/// Bound on cached publishers per worker; the cache is cleared past it.
const MAX_CACHED_PUBLISHERS: usize = 1024;

/// The output key of a stream: `<output>/<stream>`, or `<output>` when the
/// input key has no wildcard.
pub fn output_key(output: &str, stream: &str) -> String {
    if stream.is_empty() {
        output.to_string()
    } else {
        format!("{output}/{stream}")
    }
}

/// Zenoh priorities from the most to the least urgent that applications may
/// use (`Control` is zenoh's own).
const PRIORITIES: [Priority; 7] = [
    Priority::RealTime,
    Priority::InteractiveHigh,
    Priority::InteractiveLow,
    Priority::DataHigh,
    Priority::Data,
    Priority::DataLow,
    Priority::Background,
];

/// The zenoh priority for replies of scheduler level `level` (0 = highest):
/// the order of levels is kept, and levels past the seventh share
/// `Background`.
pub fn level_priority(level: usize) -> Priority {
    PRIORITIES[level.min(PRIORITIES.len() - 1)]
}

/// A worker's publishing side.
pub struct Outbox {
    session: zenoh::Session,
    publishers: HashMap<String, zenoh::pubsub::Publisher<'static>>,
}

impl Outbox {
    pub fn new(session: zenoh::Session) -> Outbox {
        Outbox {
            session,
            publishers: HashMap::new(),
        }
    }

    /// Publishes on `key` at the zenoh priority of scheduler level `level`
    /// (a key always belongs to one pipeline, hence one level).
    pub fn put(&mut self, key: &str, level: usize, payload: Vec<u8>) -> Result<(), String> {
        if !self.publishers.contains_key(key) {
            if self.publishers.len() >= MAX_CACHED_PUBLISHERS {
                self.publishers.clear();
            }
            let p = self
                .session
                .declare_publisher(key.to_string())
                .congestion_control(CongestionControl::Drop)
                .priority(level_priority(level))
                .wait()
                .map_err(|e| e.to_string())?;
            self.publishers.insert(key.to_string(), p);
        }
        self.publishers[key]
            .put(payload)
            .wait()
            .map_err(|e| e.to_string())
    }
}

/// Publishes the final error outcome of a job and counts it.
pub fn fail(ctx: &Ctx, job: &Job, rej: &Rejection) {
    ctx.tensors[job.pipeline].stats.error(rej.code);
    let (id, seq) = (job.meta.id.as_deref(), job.meta.seq);
    report(ctx, Pipe::Tensor(job.pipeline), &job.stream, (id, seq), rej);
}

/// A pipeline, by kind and index into `Ctx::tensors` / `Ctx::gens`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipe {
    Tensor(usize),
    Gen(usize),
}

/// Publishes a JSON error message on a pipeline's error key and, if it has
/// one, on its ROS 2 error topic (not counted here).
pub fn report(
    ctx: &Ctx,
    pipe: Pipe,
    stream: &str,
    (id, seq): (Option<&str>, Option<u64>),
    rej: &Rejection,
) {
    let (key, name) = match pipe {
        Pipe::Tensor(i) => (&ctx.tensors[i].cfg.error_key, &ctx.tensors[i].cfg.name),
        Pipe::Gen(i) => (&ctx.gens[i].cfg.error_key, &ctx.gens[i].cfg.name),
    };
    let json = error_json(name, stream, id, seq, rej);
    super::ros2::publish_error(ctx, pipe, &json);
    put_error(&ctx.session, key, name, json);
}

fn error_json(
    pipeline: &str,
    stream: &str,
    id: Option<&str>,
    seq: Option<u64>,
    rej: &Rejection,
) -> Vec<u8> {
    tracing::debug!(pipeline, stream, code = rej.code.code(), message = %rej.message, "request failed");
    ErrorMessage {
        code: rej.code.code(),
        message: &rej.message,
        pipeline,
        stream,
        id,
        seq,
    }
    .encode()
}

fn put_error(session: &zenoh::Session, error_key: &str, pipeline: &str, json: Vec<u8>) {
    if let Err(e) = session
        .put(error_key, json)
        .congestion_control(CongestionControl::Drop)
        .priority(Priority::DataHigh)
        .wait()
    {
        tracing::warn!(pipeline, error = %e, "cannot publish error message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_keep_their_order_in_zenoh_priorities() {
        assert_eq!(level_priority(0), Priority::RealTime);
        let ps: Vec<u8> = (0..10).map(|l| level_priority(l) as u8).collect();
        assert!(ps.windows(2).all(|w| w[0] <= w[1]), "{ps:?}");
        assert_eq!(level_priority(6), Priority::Background);
        assert_eq!(level_priority(99), Priority::Background);
    }
}
