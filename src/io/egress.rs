//! Egress: the last stage. Workers publish predictions through their own
//! [`Outbox`] (declared publishers cached per output key in a bounded LRU, so
//! the hot path does no key resolution and allocates no key); ingress,
//! workers and shutdown report failures through [`fail`] / [`report`] (also
//! on the ROS 2 error topic). Every put uses
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

use std::borrow::Borrow;
use std::hash::Hash;
use std::num::NonZeroUsize;

use lru::LruCache;
use zenoh::Wait;
use zenoh::qos::{CongestionControl, Priority};

use crate::ctx::Ctx;
use crate::error::Rejection;
use crate::job::Job;
use crate::wire::ErrorMessage;

/// Bound on cached publishers per worker: past it the least recently used
/// one is undeclared. Stream ids are chosen by clients, so the cache must
/// not grow with them; 1024 covers any real robot's streams.
pub const MAX_CACHED_PUBLISHERS: usize = 1024;

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

/// A bounded map from output key to what publishes on it, least recently
/// used first out.
pub struct KeyCache<V> {
    map: LruCache<String, V>,
}

impl<V> KeyCache<V> {
    pub fn new(cap: usize) -> KeyCache<V> {
        KeyCache {
            map: LruCache::new(NonZeroUsize::new(cap.max(1)).expect("at least 1")),
        }
    }

    /// The entry for `key`, made by `make` on a miss (evicting the least
    /// recently used entry when full). A hit allocates nothing.
    pub fn get_or_try_insert<Q, E>(
        &mut self,
        key: &Q,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<&V, E>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ToString + ?Sized,
    {
        if !self.map.contains(key) {
            let v = make()?;
            self.map.push(key.to_string(), v);
        }
        Ok(self.map.get(key).expect("inserted above"))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keys from the most to the least recently used.
    #[cfg(test)]
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.iter().map(|(k, _)| k.as_str())
    }
}

/// The output key of a stream: `<output>/<stream>`, or `<output>` when the
/// input key has no wildcard (off the hot path: [`Outbox::put_stream`]
/// builds it in a reused buffer).
pub fn output_key(output: &str, stream: &str) -> String {
    let mut key = String::new();
    write_output_key(&mut key, output, stream);
    key
}

fn write_output_key(key: &mut String, output: &str, stream: &str) {
    key.clear();
    key.push_str(output);
    if !stream.is_empty() {
        key.push('/');
        key.push_str(stream);
    }
}

/// A worker's publishing side.
pub struct Outbox {
    session: zenoh::Session,
    publishers: KeyCache<zenoh::pubsub::Publisher<'static>>,
    /// The output key being published, rebuilt in place per reply.
    key: String,
}

impl Outbox {
    pub fn new(session: zenoh::Session) -> Outbox {
        Outbox {
            session,
            publishers: KeyCache::new(MAX_CACHED_PUBLISHERS),
            key: String::new(),
        }
    }

    /// Publishes on the output key of `stream`: `<output>/<stream>`, or
    /// `<output>` when the input key has no wildcard.
    pub fn put_stream(
        &mut self,
        output: &str,
        stream: &str,
        level: usize,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        let mut key = std::mem::take(&mut self.key);
        write_output_key(&mut key, output, stream);
        let r = self.put(&key, level, payload);
        self.key = key;
        r
    }

    /// Publishes on `key` at the zenoh priority of scheduler level `level`
    /// (a key always belongs to one pipeline, hence one level).
    pub fn put(&mut self, key: &str, level: usize, payload: Vec<u8>) -> Result<(), String> {
        let session = &self.session;
        let publisher = self.publishers.get_or_try_insert(key, || {
            session
                .declare_publisher(key.to_string())
                .congestion_control(CongestionControl::Drop)
                .priority(level_priority(level))
                .wait()
                .map_err(|e| e.to_string())
        })?;
        publisher.put(payload).wait().map_err(|e| e.to_string())
    }

    /// Publishers currently declared.
    #[cfg(test)]
    pub fn cached(&self) -> usize {
        self.publishers.len()
    }
}

/// Publishes a prediction on the job's stream key under `output`, or
/// answers the query an offloaded job came in (`io::fleet`); never blocks
/// either way.
pub fn deliver(
    outbox: &mut Outbox,
    job: &Job,
    output: &str,
    level: usize,
    payload: Vec<u8>,
) -> Result<(), String> {
    match &job.remote {
        Some(r) => super::fleet::serve::reply_prediction(r, payload),
        None => outbox.put_stream(output, &job.stream, level, payload),
    }
}

/// Publishes the final error outcome of a job and counts it.
pub fn fail(ctx: &Ctx, job: &Job, rej: &Rejection) {
    let tp = &ctx.tensors[job.pipeline];
    tp.stats.error(rej.code);
    if let Some(r) = &job.remote {
        return super::fleet::serve::reply_error(r, &tp.cfg.name, job, rej);
    }
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

/// Publishes a JSON error message on an error key only: for the offload
/// relays, whose pipelines have no ROS 2 side (config refuses one there).
pub fn publish_error(
    session: &zenoh::Session,
    error_key: &str,
    pipeline: &str,
    stream: &str,
    (id, seq): (Option<&str>, Option<u64>),
    rej: &Rejection,
) {
    put_error(
        session,
        error_key,
        pipeline,
        error_json(pipeline, stream, id, seq, rej),
    );
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

    #[test]
    fn key_cache_evicts_the_least_recently_used() {
        let mut made = Vec::new();
        let mut c: KeyCache<usize> = KeyCache::new(3);
        let mut get = |c: &mut KeyCache<usize>, k: &str| {
            *c.get_or_try_insert(k, || {
                made.push(k.to_string());
                Ok::<_, ()>(made.len())
            })
            .unwrap()
        };
        assert_eq!(get(&mut c, "o/a"), 1);
        assert_eq!(get(&mut c, "o/b"), 2);
        assert_eq!(get(&mut c, "o/c"), 3);
        // A hit makes nothing and refreshes the key.
        assert_eq!(get(&mut c, "o/a"), 1);
        // Full: `o/b` is now the least recently used and goes.
        assert_eq!(get(&mut c, "o/d"), 4);
        assert_eq!(c.keys().collect::<Vec<_>>(), ["o/d", "o/a", "o/c"]);
        assert_eq!(get(&mut c, "o/b"), 5, "an evicted key is made again");
        assert_eq!(c.keys().collect::<Vec<_>>(), ["o/b", "o/d", "o/a"]);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn key_cache_failed_make_inserts_nothing() {
        let mut c: KeyCache<u8> = KeyCache::new(2);
        assert_eq!(c.get_or_try_insert("k", || Err("no")), Err("no"));
        assert!(c.is_empty());
    }

    /// Many client-chosen stream ids through a real zenoh session: the
    /// publishers stay bounded, the recent streams stay cached.
    #[test]
    fn outbox_stays_bounded_under_many_stream_ids() {
        let cfg = zenoh::Config::from_json5(
            r#"{ mode: "peer", listen: { endpoints: [] }, connect: { endpoints: [] },
                 scouting: { multicast: { enabled: false }, gossip: { enabled: false } } }"#,
        )
        .unwrap();
        let session = zenoh::open(cfg).wait().unwrap();
        let mut outbox = Outbox::new(session);
        let n = MAX_CACHED_PUBLISHERS * 3 + 7;
        for i in 0..n {
            outbox
                .put_stream("t/out", &format!("s{i}"), 0, vec![1, 2, 3])
                .unwrap();
            assert!(outbox.cached() <= MAX_CACHED_PUBLISHERS);
        }
        assert_eq!(outbox.cached(), MAX_CACHED_PUBLISHERS);
        let keys: Vec<&str> = outbox.publishers.keys().take(2).collect();
        assert_eq!(
            keys,
            [format!("t/out/s{}", n - 1), format!("t/out/s{}", n - 2)]
        );
        outbox.put_stream("t/out", "", 0, vec![]).unwrap();
        assert_eq!(outbox.publishers.keys().next(), Some("t/out"));
    }
}
