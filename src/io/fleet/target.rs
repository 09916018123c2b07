//! The nodes this daemon offloads to, as its zenoh session sees them: a
//! target is up while its liveliness token `<node>/alive` is present. Each
//! target tracks the requests in flight to it, so the moment its token goes
//! away (the daemon stopped or died, or a lease expired on a cut link) every
//! one of them fails over at once instead of waiting for its timeout.
//! Locks: the in-flight map is taken by zenoh callbacks (send, answer,
//! liveliness change), never by a worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};

use zenoh::Wait;
use zenoh::sample::SampleKind;

use crate::obs::fleet::{Failover, TargetSnapshot, TargetStats};

/// A request in flight that can be handed back to the local path.
pub(super) trait Pending: Send + Sync {
    /// Ends the remote attempt; the first caller (answer, failover) wins.
    fn fail_over(&self, why: Failover);
}

pub(super) struct Target {
    pub node: String,
    pub stats: TargetStats,
    /// Liveliness tokens seen under `<node>/alive` (a restarted daemon's
    /// new token may arrive before its old one's removal).
    tokens: AtomicI64,
    flights: Mutex<HashMap<u64, Arc<dyn Pending>>>,
}

impl Target {
    pub fn new(node: &str) -> Target {
        Target {
            node: node.to_string(),
            stats: TargetStats::default(),
            tokens: AtomicI64::new(0),
            flights: Mutex::new(HashMap::new()),
        }
    }

    pub fn up(&self) -> bool {
        self.stats.up.load(SeqCst)
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<u64, Arc<dyn Pending>>> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a request sent to this target. If the target went down in
    /// the meantime the request fails over at once.
    pub fn track(&self, key: u64, p: Arc<dyn Pending>) {
        self.flights().insert(key, p.clone());
        if !self.up() {
            self.untrack(key);
            p.fail_over(Failover::Down);
        }
    }

    pub fn untrack(&self, key: u64) {
        self.flights().remove(&key);
    }

    fn token(&self, kind: SampleKind) {
        match kind {
            SampleKind::Put => {
                if self.tokens.fetch_add(1, SeqCst) >= 0 {
                    self.stats.up.store(true, SeqCst);
                }
            }
            SampleKind::Delete => {
                let left = self.tokens.fetch_sub(1, SeqCst) - 1;
                if left <= 0 {
                    self.tokens.store(0, SeqCst);
                    self.went_down();
                }
            }
        }
    }

    /// Every request in flight fails over (outside the lock: failing over
    /// queues work and publishes).
    fn went_down(&self) {
        if self.stats.up.swap(false, SeqCst) {
            self.stats.down_events.fetch_add(1, Relaxed);
            tracing::warn!(node = %self.node, "offload target is down; requests in flight fail over");
        }
        let all: Vec<Arc<dyn Pending>> = self.flights().drain().map(|(_, p)| p).collect();
        for p in all {
            p.fail_over(Failover::Down);
        }
    }

    /// Follows the target's liveliness token.
    pub fn watch(
        self: &Arc<Self>,
        session: &zenoh::Session,
    ) -> zenoh::Result<zenoh::pubsub::Subscriber<()>> {
        let key = format!("{}/alive", self.node);
        let t = self.clone();
        session
            .liveliness()
            .declare_subscriber(key)
            .history(true)
            .callback(move |sample| {
                let was = t.up();
                t.token(sample.kind());
                if !was && t.up() {
                    tracing::info!(node = %t.node, "offload target is up");
                }
            })
            .wait()
    }

    pub fn snapshot(&self) -> TargetSnapshot {
        TargetSnapshot {
            node: self.node.clone(),
            up: self.up(),
            down_events: self.stats.down_events.load(Relaxed),
        }
    }
}
