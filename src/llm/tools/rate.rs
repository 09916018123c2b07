//! Per-tool rate limit, checked by the gate just before a validated call is
//! admitted for publishing (after schema validation, so a malformed call
//! never spends the budget). A token bucket in its GCRA form: one atomic
//! "theoretical arrival time", updated with compare-and-swap, so workers
//! that finish calls at the same moment never wait on a lock and the
//! limiter needs no timer thread. Time is passed in, so tests are exact.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A validated rate: `per_s` calls per second on average, up to `burst`
/// back to back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_s: f64,
    pub burst: u32,
}

/// Lock-free token bucket (generic cell rate algorithm).
#[derive(Debug)]
pub struct RateLimiter {
    origin: Instant,
    /// Nanoseconds between two calls at the sustained rate.
    interval_ns: u64,
    /// How far ahead of now the arrival time may run: (burst - 1) intervals.
    tolerance_ns: u64,
    /// Theoretical arrival time of the next conforming call, in ns since
    /// `origin`.
    tat_ns: AtomicU64,
}

impl RateLimiter {
    /// `rate` must be validated (`per_s` finite and > 0, `burst` ≥ 1);
    /// `origin` is the earliest instant `check` will be given.
    pub fn new(rate: Rate, origin: Instant) -> RateLimiter {
        let interval_ns = (1e9 / rate.per_s).round().clamp(1.0, u64::MAX as f64 / 2.0) as u64;
        RateLimiter {
            origin,
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(rate.burst.max(1) - 1)),
            tat_ns: AtomicU64::new(0),
        }
    }

    /// Takes one call from the bucket at `now`, or says how long until one
    /// would conform. A refused call takes nothing.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        let t = now.saturating_duration_since(self.origin).as_nanos() as u64;
        let mut tat = self.tat_ns.load(Ordering::Acquire);
        loop {
            let start = tat.max(t);
            if start - t > self.tolerance_ns {
                return Err(Duration::from_nanos(start - t - self.tolerance_ns));
            }
            match self.tat_ns.compare_exchange_weak(
                tat,
                start.saturating_add(self.interval_ns),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_then_the_sustained_rate() {
        let t0 = Instant::now();
        let l = RateLimiter::new(
            Rate {
                per_s: 2.0,
                burst: 3,
            },
            t0,
        );
        for _ in 0..3 {
            assert!(l.check(t0).is_ok());
        }
        // Bucket empty: the next token arrives one interval (500 ms) later.
        assert_eq!(l.check(t0), Err(ms(500)));
        assert_eq!(l.check(t0 + ms(200)), Err(ms(300)));
        assert!(l.check(t0 + ms(500)).is_ok());
        assert!(l.check(t0 + ms(500)).is_err());
        // A long pause refills at most `burst` tokens.
        let later = t0 + ms(10_000);
        for _ in 0..3 {
            assert!(l.check(later).is_ok());
        }
        assert!(l.check(later).is_err());
    }

    #[test]
    fn burst_one_spaces_every_call() {
        let t0 = Instant::now();
        let l = RateLimiter::new(
            Rate {
                per_s: 10.0,
                burst: 1,
            },
            t0,
        );
        assert!(l.check(t0).is_ok());
        assert_eq!(l.check(t0 + ms(40)), Err(ms(60)));
        assert!(l.check(t0 + ms(100)).is_ok());
    }

    #[test]
    fn concurrent_callers_never_exceed_the_burst() {
        let t0 = Instant::now();
        let l = std::sync::Arc::new(RateLimiter::new(
            Rate {
                per_s: 0.001,
                burst: 5,
            },
            t0,
        ));
        let admitted: usize = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || (0..100).filter(|_| l.check(t0).is_ok()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 5);
    }
}
