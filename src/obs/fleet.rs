//! Fleet counters: what a daemon sent to other daemons and how each of
//! those requests ended (answered remotely, failed over to the local model,
//! or a remote error passed on), and how many requests it served for other
//! daemons. Bumped by `io::fleet` on zenoh callback threads (relaxed
//! atomics, never on a worker); read into [`FleetSnapshot`], the `fleet`
//! part of the `<node>/metrics` snapshot that `reflexd top --fleet` shows.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::hist::{HistSnapshot, Histogram};

/// Why an offloaded request came back to the local model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failover {
    /// The target's liveliness token went away (dead, stopped or cut off).
    Down,
    /// The query ended without an answer: `timeout_ms` passed, or the
    /// route to the target closed.
    NoAnswer,
    /// The target refused it (`busy`, `shutting_down`, no such pipeline…).
    Refused,
}

impl Failover {
    pub const ALL: [Failover; 3] = [Failover::Down, Failover::NoAnswer, Failover::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            Failover::Down => "target_down",
            Failover::NoAnswer => "no_answer",
            Failover::Refused => "refused",
        }
    }
}

/// Counters of one pipeline that offloads (robot side).
#[derive(Default)]
pub struct OffloadStats {
    /// Requests sent to the target.
    pub offloaded: AtomicU64,
    /// Answered by the target (a prediction, or a generation's final message).
    pub remote_ok: AtomicU64,
    /// Ended by an error the target sent (passed on as is).
    pub remote_err: AtomicU64,
    /// Came back to the local path, by [`Failover`] index.
    pub failover: [AtomicU64; 3],
    /// Not sent because the target was down or at `max_inflight`.
    pub kept_local: AtomicU64,
    /// Remote-only: ended `offload_unavailable`.
    pub unavailable: AtomicU64,
    /// Answers that came after the request had already ended (ignored).
    pub late_replies: AtomicU64,
    pub inflight: AtomicU64,
    /// Send to the target's answer (tensor) or final message (generation).
    pub round_trip: Histogram,
    /// Send to the moment the request was given back to the local path.
    pub failover_wait: Histogram,
}

impl OffloadStats {
    pub fn failed_over(&self, why: Failover, waited: Duration) {
        self.failover[why as usize].fetch_add(1, Relaxed);
        self.failover_wait.record_duration(waited);
    }
}

/// What one node is known to be doing, as seen from this daemon.
#[derive(Default)]
pub struct TargetStats {
    pub up: AtomicBool,
    /// Times its liveliness token went away.
    pub down_events: AtomicU64,
}

/// One offloading pipeline in a snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OffloadSnapshot {
    pub pipeline: String,
    /// `"tensor"` or `"generate"`.
    pub kind: String,
    pub to: String,
    pub when: String,
    /// No local model: every request goes to the target.
    pub remote_only: bool,
    /// The target's liveliness token is present and it serves this pipeline.
    pub target_up: bool,
    pub offloaded: u64,
    pub remote_ok: u64,
    pub remote_err: u64,
    /// Non-zero failover counts by reason (`target_down`, `no_answer`, `refused`).
    pub failover: BTreeMap<String, u64>,
    pub kept_local: u64,
    pub unavailable: u64,
    pub late_replies: u64,
    pub inflight: u64,
    pub round_trip: HistSnapshot,
    pub failover_wait: HistSnapshot,
}

/// Labels of an offloading pipeline for its snapshot.
pub struct OffloadLabels<'a> {
    pub pipeline: &'a str,
    pub kind: &'static str,
    pub to: &'a str,
    pub when: &'static str,
    pub remote_only: bool,
    pub target_up: bool,
}

impl OffloadStats {
    pub fn snapshot(&self, l: &OffloadLabels) -> OffloadSnapshot {
        OffloadSnapshot {
            pipeline: l.pipeline.to_string(),
            kind: l.kind.to_string(),
            to: l.to.to_string(),
            when: l.when.to_string(),
            remote_only: l.remote_only,
            target_up: l.target_up,
            offloaded: self.offloaded.load(Relaxed),
            remote_ok: self.remote_ok.load(Relaxed),
            remote_err: self.remote_err.load(Relaxed),
            failover: Failover::ALL
                .iter()
                .map(|f| {
                    (
                        f.as_str().to_string(),
                        self.failover[*f as usize].load(Relaxed),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            kept_local: self.kept_local.load(Relaxed),
            unavailable: self.unavailable.load(Relaxed),
            late_replies: self.late_replies.load(Relaxed),
            inflight: self.inflight.load(Relaxed),
            round_trip: self.round_trip.snapshot(),
            failover_wait: self.failover_wait.snapshot(),
        }
    }

    /// Requests that ended one way or another after being sent (those not
    /// failed over were answered remotely, well or with an error).
    pub fn settled(&self) -> u64 {
        self.remote_ok.load(Relaxed)
            + self.remote_err.load(Relaxed)
            + self.failover.iter().map(|f| f.load(Relaxed)).sum::<u64>()
    }
}

/// A node this daemon offloads to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TargetSnapshot {
    pub node: String,
    pub up: bool,
    pub down_events: u64,
}

/// The fleet part of a daemon's metrics.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct FleetSnapshot {
    /// This daemon answers offloaded requests (`fleet.serve`).
    pub serve: bool,
    /// Requests served for other nodes, by pipeline (accepted into the
    /// scheduler; their outcomes are in the pipeline's own counters).
    pub served: BTreeMap<String, u64>,
    pub offloads: Vec<OffloadSnapshot>,
    pub targets: Vec<TargetSnapshot>,
}
