//! The scheduler's sense of time. Receipt stamps, deadline checks, batch-fill
//! waits and stream eviction read one [`Clock`], so tests can run those rules
//! on a hand-driven clock instead of sleeping; the daemon uses
//! [`SystemClock`].

use std::time::{Duration, Instant};

use crossbeam::sync::Parker;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;

    /// Sleeps on `parker` for at most `timeout` (woken early by its
    /// unparker). A test clock may advance itself instead.
    fn park(&self, parker: &Parker, timeout: Duration) {
        parker.park_timeout(timeout);
    }
}

/// The monotonic OS clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}
