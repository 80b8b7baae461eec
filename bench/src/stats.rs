//! Percentiles for the engine benchmark: exact ones over a list of samples
//! (turns, barge-ins: thousands) and a fixed-bucket histogram for the
//! per-tick and per-packet figures (millions), whose memory must not grow
//! with the run (it would count as memory per call).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// p50/p95/p99/max of a set of values, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Summary {
    /// How many values.
    pub n: u64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Summary {
    /// `p50 / p95 / p99` with one decimal, or `-` when empty.
    pub fn triple(&self) -> String {
        if self.n == 0 {
            return "-".into();
        }
        format!("{:.1} / {:.1} / {:.1}", self.p50, self.p95, self.p99)
    }
}

/// Values in milliseconds, kept in full (exact percentiles, nearest rank).
#[derive(Debug, Clone, Default)]
pub struct Samples {
    values: Vec<f64>,
}

impl Samples {
    /// Adds a duration.
    pub fn push(&mut self, value: Duration) {
        self.values.push(value.as_secs_f64() * 1e3);
    }

    /// Adds a signed value in milliseconds.
    pub fn push_ms(&mut self, ms: f64) {
        self.values.push(ms);
    }

    /// Adds every value of `other`.
    pub fn extend(&mut self, other: &Samples) {
        self.values.extend_from_slice(&other.values);
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The percentiles (nearest rank).
    pub fn summary(&self) -> Summary {
        if self.values.is_empty() {
            return Summary::default();
        }
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[index.clamp(1, sorted.len()) - 1]
        };
        Summary {
            n: sorted.len() as u64,
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: sorted[sorted.len() - 1],
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        }
    }
}

/// Bucket width of [`Histogram`].
const BUCKET: Duration = Duration::from_micros(10);
/// Buckets of [`Histogram`]: 10 us each up to 250 ms; longer values go in
/// the last one (their exact maximum is kept aside).
const BUCKETS: usize = 25_000;

/// Durations in 10 us buckets up to 250 ms: fixed memory, percentiles to
/// 10 us (values beyond 250 ms count as 250 ms except for the maximum).
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u32>,
    n: u64,
    sum: Duration,
    max: Duration,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            n: 0,
            sum: Duration::ZERO,
            max: Duration::ZERO,
        }
    }
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, value: Duration) {
        let bucket = (value.as_nanos() / BUCKET.as_nanos()).min(BUCKETS as u128 - 1) as usize;
        self.counts[bucket] = self.counts[bucket].saturating_add(1);
        self.n += 1;
        self.sum += value;
        self.max = self.max.max(value);
    }

    /// How many values.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Values strictly above `limit` (to bucket precision).
    pub fn count_above(&self, limit: Duration) -> u64 {
        let first = (limit.as_nanos() / BUCKET.as_nanos()) as usize + 1;
        self.counts.iter().skip(first).map(|&c| u64::from(c)).sum()
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine = mine.saturating_add(*theirs);
        }
        self.n += other.n;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// The value at percentile `p` (upper edge of its bucket).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.n == 0 {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.n as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += u64::from(count);
            if seen >= rank {
                return (BUCKET * (bucket as u32 + 1)).min(self.max);
            }
        }
        self.max
    }

    /// The percentiles, in milliseconds.
    pub fn summary(&self) -> Summary {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Summary {
            n: self.n,
            p50: ms(self.percentile(50.0)),
            p95: ms(self.percentile(95.0)),
            p99: ms(self.percentile(99.0)),
            max: ms(self.max),
            mean: if self.n == 0 {
                0.0
            } else {
                ms(self.sum) / self.n as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_use_nearest_rank() {
        let mut samples = Samples::default();
        for ms in 1..=100 {
            samples.push(Duration::from_millis(ms));
        }
        let summary = samples.summary();
        assert_eq!(summary.p50, 50.0);
        assert_eq!(summary.p99, 99.0);
        assert_eq!(summary.max, 100.0);
    }

    #[test]
    fn histogram_percentiles_are_within_a_bucket() {
        let mut histogram = Histogram::default();
        for us in 0..1000u64 {
            histogram.record(Duration::from_micros(us * 10 + 5));
        }
        histogram.record(Duration::from_secs(2));
        let p50 = histogram.percentile(50.0);
        assert!(
            p50 >= Duration::from_micros(4_995) && p50 <= Duration::from_micros(5_020),
            "{p50:?}"
        );
        assert_eq!(histogram.summary().max, 2000.0);
        assert_eq!(histogram.count_above(Duration::from_millis(20)), 1);
    }
}
