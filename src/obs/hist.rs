//! A lock-free latency histogram in microseconds, recorded by worker threads
//! and zenoh callbacks on the hot path and read by the metrics exporters.
//! Buckets are log-linear like an HDR histogram with 6 significant bits:
//! exact below 128 µs, then 64 buckets per power of two (relative error
//! ≤ 1/64 ≈ 1.6 %), up to 2^36 µs (19 h; larger values land in the top
//! bucket). Recording is three relaxed `fetch_add`s and one `fetch_max` on
//! fixed memory: no lock, no allocation. A reader sums the buckets while
//! writers keep going, so a snapshot may be a few samples behind `count`
//! taken at another instant, never torn within one bucket.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// log2 of the buckets per power of two.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Values at or above 2^MAX_BITS µs are clamped into the top bucket.
const MAX_BITS: u32 = 36;
/// Number of buckets: group 0 holds 0..SUB exactly, groups 1.. one power each.
pub const BUCKETS: usize = (MAX_BITS - SUB_BITS + 1) as usize * SUB;

/// Bucket index of a value (µs).
pub fn index(v: u64) -> usize {
    let v = v.min((1u64 << MAX_BITS) - 1);
    if v < SUB as u64 {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    ((shift as usize) << SUB_BITS) + (v >> shift) as usize
}

/// Smallest and largest value (µs) of bucket `i`.
pub fn bounds(i: usize) -> (u64, u64) {
    let group = i >> SUB_BITS;
    let off = (i & (SUB - 1)) as u64;
    if group == 0 {
        return (off, off);
    }
    let shift = group as u32 - 1;
    let lo = ((SUB as u64) + off) << shift;
    (lo, lo + (1u64 << shift) - 1)
}

pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one value in microseconds.
    #[inline]
    pub fn record(&self, us: u64) {
        self.buckets[index(us)].fetch_add(1, Relaxed);
        self.sum.fetch_add(us, Relaxed);
        self.max.fetch_max(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn record_duration(&self, d: std::time::Duration) {
        self.record(d.as_micros().min(u64::MAX as u128) as u64);
    }

    pub fn snapshot(&self) -> HistSnapshot {
        let mut buckets = Vec::new();
        let mut count = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            if n > 0 {
                buckets.push((bounds(i).1, n));
                count += n;
            }
        }
        HistSnapshot {
            count,
            sum_us: self.sum.load(Relaxed),
            max_us: self.max.load(Relaxed),
            buckets,
        }
    }
}

/// A histogram's state: total count, sum and max, and the non-empty buckets
/// as `(upper bound µs, count)` in ascending order. `count` is the bucket
/// total, so percentiles and Prometheus buckets always agree with it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct HistSnapshot {
    pub count: u64,
    pub sum_us: u64,
    pub max_us: u64,
    pub buckets: Vec<(u64, u64)>,
}

impl HistSnapshot {
    /// The value (µs, bucket upper bound, capped at the max) at or below
    /// which a fraction `q` of the samples fall; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for &(upper, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some(upper.min(self.max_us));
            }
        }
        Some(self.max_us)
    }

    pub fn mean_us(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_us as f64 / self.count as f64)
    }

    /// Samples whose bucket lies at or below `le_us` (bucket resolution).
    pub fn count_le(&self, le_us: u64) -> u64 {
        self.buckets
            .iter()
            .take_while(|(upper, _)| *upper <= le_us)
            .map(|(_, n)| n)
            .sum()
    }

    /// What was recorded between `earlier` and `self` (for windowed rates
    /// and percentiles, e.g. `reflexd top`). The max is the later one's.
    pub fn since(&self, earlier: &HistSnapshot) -> HistSnapshot {
        let mut buckets = Vec::with_capacity(self.buckets.len());
        let mut count = 0;
        for &(upper, n) in &self.buckets {
            let before = earlier
                .buckets
                .iter()
                .find(|(u, _)| *u == upper)
                .map_or(0, |(_, m)| *m);
            let d = n.saturating_sub(before);
            if d > 0 {
                buckets.push((upper, d));
                count += d;
            }
        }
        HistSnapshot {
            count,
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
            max_us: self.max_us,
            buckets,
        }
    }
}

/// Exported bucket bounds of a pipeline's latency histograms (µs), from its
/// deadline: the 1-2.5-5 series from a ten-thousandth of the deadline (at
/// least 10 µs) up to 2.5 times it, plus the deadline itself, so "within
/// budget" is one bucket (`le` = the deadline) and a 10 ms pipeline gets
/// sub-millisecond resolution where a 60 s one does not waste buckets.
pub fn deadline_buckets(deadline_us: u64) -> Vec<u64> {
    let deadline_us = deadline_us.max(1);
    let lo = (deadline_us / 10_000).max(10);
    let hi = deadline_us.saturating_mul(5) / 2;
    let mut out = vec![deadline_us];
    let mut decade = 1u64;
    while decade <= hi {
        for m in [10, 25, 50] {
            let v = decade * m / 10;
            if (lo..=hi).contains(&v) {
                out.push(v);
            }
        }
        decade = decade.saturating_mul(10);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// OpenTelemetry's advised bucket bounds (seconds → µs) for the GenAI
/// server histograms, so dashboards built for other GenAI servers read
/// ours the same way.
pub const OTEL_TTFT_US: [u64; 16] = [
    1_000, 5_000, 10_000, 20_000, 40_000, 60_000, 80_000, 100_000, 250_000, 500_000, 750_000,
    1_000_000, 2_500_000, 5_000_000, 7_500_000, 10_000_000,
];
pub const OTEL_TPOT_US: [u64; 13] = [
    10_000, 25_000, 50_000, 75_000, 100_000, 150_000, 200_000, 300_000, 400_000, 500_000, 750_000,
    1_000_000, 2_500_000,
];
pub const OTEL_REQUEST_US: [u64; 14] = [
    10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 640_000, 1_280_000, 2_560_000, 5_120_000,
    10_240_000, 20_480_000, 40_960_000, 81_920_000,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_bounded() {
        let mut prev_hi = None;
        for i in 0..BUCKETS {
            let (lo, hi) = bounds(i);
            assert!(lo <= hi);
            if let Some(p) = prev_hi {
                assert_eq!(lo, p + 1, "bucket {i} does not follow bucket {}", i - 1);
            }
            assert_eq!(index(lo), i);
            assert_eq!(index(hi), i);
            // Relative width stays within 1/64.
            assert!((hi - lo) * 64 <= lo.max(1) * 2, "bucket {i} {lo}..{hi}");
            prev_hi = Some(hi);
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        for v in 0..128 {
            assert_eq!(bounds(index(v)), (v, v), "values below 128 µs are exact");
        }
    }

    #[test]
    fn quantiles_and_counts_follow_the_recorded_values() {
        let h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 1000);
        assert_eq!(s.sum_us, 500_500);
        assert_eq!(s.max_us, 1000);
        let p50 = s.quantile(0.5).unwrap();
        assert!((500..=508).contains(&p50), "p50 {p50}");
        let p99 = s.quantile(0.99).unwrap();
        assert!((990..=1000).contains(&p99), "p99 {p99}");
        assert_eq!(s.count_le(100), 100);
        assert_eq!(s.count_le(u64::MAX), 1000);
        assert_eq!(HistSnapshot::default().quantile(0.5), None);
    }

    #[test]
    fn deadline_buckets_bracket_the_deadline() {
        assert_eq!(
            deadline_buckets(10_000),
            vec![
                10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000
            ]
        );
        // A deadline off the series is an edge of its own.
        let b = deadline_buckets(30_000);
        assert!(b.contains(&30_000) && b.contains(&50_000) && !b.contains(&100_000));
        assert_eq!(*b.first().unwrap(), 10);
        let b = deadline_buckets(60_000_000);
        assert_eq!(b.first(), Some(&10_000));
        assert_eq!(b.last(), Some(&100_000_000));
        for w in b.windows(2) {
            assert!(w[0] < w[1]);
        }
    }

    #[test]
    fn since_subtracts_an_earlier_snapshot() {
        let h = Histogram::default();
        h.record(10);
        h.record(5000);
        let a = h.snapshot();
        h.record(10);
        h.record(20);
        let d = h.snapshot().since(&a);
        assert_eq!(d.count, 2);
        assert_eq!(d.sum_us, 30);
        assert_eq!(d.buckets, vec![(10, 1), (20, 1)]);
    }
}
