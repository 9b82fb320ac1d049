//! Benchmark arithmetic: latency histograms (HDR, microsecond resolution), throughput and pacing.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency the histogram tracks exactly; longer ones are clamped to it (and counted).
pub const MAX_TRACKED_LATENCY_US: u64 = 300_000_000;
/// Significant decimal digits kept by the histogram.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Bytes in the "MB" of MB/s (kafka-producer-perf-test's convention: 2^20).
pub const BYTES_PER_MB: f64 = 1024.0 * 1024.0;

/// Collects latencies.
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    /// An empty recorder (1 µs to [`MAX_TRACKED_LATENCY_US`]).
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, MAX_TRACKED_LATENCY_US, SIGNIFICANT_DIGITS)
            .expect("constant bounds are valid");
        Self { histogram }
    }

    /// Records one latency (clamped to the tracked range).
    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros().min(u128::from(MAX_TRACKED_LATENCY_US)) as u64).max(1);
        self.histogram.saturating_record(us);
    }

    /// Adds another recorder's samples.
    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Percentiles in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram;
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Latency percentiles, milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// `(records/s, MB/s)` for a run (zero for an empty duration).
pub fn throughput(records: u64, bytes: u64, elapsed: Duration) -> (f64, f64) {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return (0.0, 0.0);
    }
    (records as f64 / secs, bytes as f64 / BYTES_PER_MB / secs)
}

/// When record `index` should be sent for a target of `rate` records/s from `start` (`None`:
/// unpaced).
pub fn scheduled_at(start: Instant, index: u64, rate: u64) -> Option<Instant> {
    if rate == 0 {
        return None;
    }
    let nanos = u128::from(index) * 1_000_000_000 / u128::from(rate);
    Some(start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
}

/// Which records sender `task` of `tasks` sends out of `total`: `task, task + tasks, ...`.
pub fn task_indices(task: u64, tasks: u64, total: u64) -> impl Iterator<Item = u64> {
    debug_assert!(tasks > 0 && task < tasks);
    (task..total).step_by(tasks as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut r = LatencyRecorder::new();
        for ms in 1..=1000u64 {
            r.record(Duration::from_millis(ms));
        }
        let s = r.summary();
        assert_eq!(s.count, 1000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002 + 0.001;
        assert!(close(s.p50_ms, 500.0), "{s:?}");
        assert!(close(s.p95_ms, 950.0), "{s:?}");
        assert!(close(s.p99_ms, 990.0), "{s:?}");
        assert!(close(s.p999_ms, 999.0), "{s:?}");
        assert!(close(s.max_ms, 1000.0), "{s:?}");
        assert!(close(s.mean_ms, 500.5), "{s:?}");
    }

    #[test]
    fn merging_adds_samples_and_extremes_are_clamped() {
        let mut a = LatencyRecorder::new();
        let mut b = LatencyRecorder::new();
        a.record(Duration::from_micros(100));
        b.record(Duration::from_secs(10_000));
        b.record(Duration::ZERO);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        let s = a.summary();
        assert!((s.max_ms - MAX_TRACKED_LATENCY_US as f64 / 1000.0).abs() / s.max_ms < 0.001, "{s:?}");
        assert_eq!(LatencyRecorder::new().summary(), LatencySummary::default());
    }

    #[test]
    fn throughput_in_records_and_mebibytes_per_second() {
        let (rps, mbps) = throughput(2_000, 4 * 1024 * 1024, Duration::from_secs(2));
        assert!((rps - 1_000.0).abs() < 1e-9);
        assert!((mbps - 2.0).abs() < 1e-9);
        assert_eq!(throughput(5, 5, Duration::ZERO), (0.0, 0.0));
    }

    #[test]
    fn pacing_spreads_records_evenly() {
        let start = Instant::now();
        assert_eq!(scheduled_at(start, 10, 0), None);
        assert_eq!(scheduled_at(start, 0, 100), Some(start));
        assert_eq!(scheduled_at(start, 50, 100), Some(start + Duration::from_millis(500)));
        assert_eq!(scheduled_at(start, 3, 1_000_000), Some(start + Duration::from_micros(3)));
    }

    #[test]
    fn tasks_split_the_records_without_overlap() {
        let mut all: Vec<u64> = (0..3).flat_map(|t| task_indices(t, 3, 10)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(task_indices(1, 3, 10).collect::<Vec<_>>(), vec![1, 4, 7]);
    }
}
