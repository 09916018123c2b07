//! Rate limiting of repeated failure logs, beside the data flow: a flood of
//! bad frames must not turn into a flood of log lines (each ORT failure is
//! ~1 KB). Per (pipeline, error code): the first [`BURST`] events of a window
//! are logged in full, the rest only counted; the count is reported in one
//! summary line when the next window starts or when [`LogLimiter::flush`]
//! runs (the supervisor calls it periodically). Lock-free: relaxed atomics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::error::ErrorCode;

/// Events logged in full per window and key.
pub const BURST: u64 = 5;
/// Length of a window.
pub const WINDOW: Duration = Duration::from_secs(10);

struct Key {
    /// Window number (since the limiter's epoch) of the current counts.
    window: AtomicU64,
    logged: AtomicU64,
    suppressed: AtomicU64,
}

/// One pipeline's limiter, one slot per error code.
pub struct LogLimiter {
    pipeline: String,
    epoch: Instant,
    keys: Vec<Key>,
}

impl LogLimiter {
    pub fn new(pipeline: &str) -> LogLimiter {
        LogLimiter {
            pipeline: pipeline.to_string(),
            epoch: Instant::now(),
            keys: ErrorCode::ALL
                .iter()
                .map(|_| Key {
                    window: AtomicU64::new(0),
                    logged: AtomicU64::new(0),
                    suppressed: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    fn window(&self) -> u64 {
        (self.epoch.elapsed().as_micros() / WINDOW.as_micros()) as u64
    }

    /// Whether this event of `code` should be logged in full. A new window
    /// first reports what the last one suppressed.
    pub fn allow(&self, code: ErrorCode) -> bool {
        let k = &self.keys[code.index()];
        let now = self.window();
        let was = k.window.swap(now, Relaxed);
        if was != now {
            self.summarize(code, k);
            k.logged.store(0, Relaxed);
        }
        if k.logged.fetch_add(1, Relaxed) < BURST {
            true
        } else {
            k.suppressed.fetch_add(1, Relaxed);
            false
        }
    }

    fn summarize(&self, code: ErrorCode, k: &Key) {
        let n = k.suppressed.swap(0, Relaxed);
        if n > 0 {
            tracing::warn!(
                pipeline = %self.pipeline,
                code = code.code(),
                suppressed = n,
                "{n} more `{}` failures not logged (at most {BURST} per {} s are)",
                code.code(),
                WINDOW.as_secs()
            );
        }
    }

    /// Reports every suppressed count now (periodic summary).
    pub fn flush(&self) {
        for (code, k) in ErrorCode::ALL.iter().zip(&self.keys) {
            self.summarize(*code, k);
        }
    }

    /// Events suppressed and not yet summarized (tests).
    pub fn pending(&self, code: ErrorCode) -> u64 {
        self.keys[code.index()].suppressed.load(Relaxed)
    }
}

/// One line of an error message: multi-line runtime errors are folded so a
/// log line stays one line.
pub fn one_line(msg: &str) -> String {
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_then_counted() {
        let l = LogLimiter::new("p");
        let allowed = (0..100)
            .filter(|_| l.allow(ErrorCode::InferenceFailed))
            .count();
        assert_eq!(allowed as u64, BURST);
        assert_eq!(l.pending(ErrorCode::InferenceFailed), 100 - BURST);
        assert!(l.allow(ErrorCode::Busy), "codes are limited separately");
        l.flush();
        assert_eq!(l.pending(ErrorCode::InferenceFailed), 0);
    }

    #[test]
    fn multi_line_messages_fold() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
