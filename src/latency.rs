//! A latency histogram of atomics: each observation is two relaxed adds,
//! so threads record without a lock, and a read sums any number of copies
//! (the request metrics keep one per thread shard). Written once for both
//! users: the request and upstream times in `observe::metrics`, and the
//! store journal's sync times (`assign::store`), each with its own bounds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::terms::HistogramRead;

/// Counts per bucket (not cumulative; the Prometheus encoder sums them),
/// with `N` upper bounds in seconds and an implied +Inf.
pub(crate) struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    buckets: [AtomicU64; N],
    /// Observations above the last bound (+Inf).
    over: AtomicU64,
    sum_ns: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub(crate) fn new(bounds: &'static [f64; N]) -> Self {
        Histogram {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            over: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let bucket = match self.bounds.iter().position(|b| s <= *b) {
            Some(i) => &self.buckets[i],
            None => &self.over,
        };
        bucket.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Several copies of one histogram (the same bounds) read as one:
    /// (sum in seconds, count, per-bucket counts with their upper bounds).
    pub(crate) fn read<'a>(copies: impl Iterator<Item = &'a Self> + Clone) -> HistogramRead {
        let Some(first) = copies.clone().next() else {
            return (0.0, 0, Vec::new());
        };
        let total = |pick: &dyn Fn(&Self) -> &AtomicU64| -> u64 {
            copies
                .clone()
                .map(|h| pick(h).load(Ordering::Relaxed))
                .sum()
        };
        let counts: Vec<(f64, u64)> = (0..N)
            .map(|i| (first.bounds[i], total(&|h| &h.buckets[i])))
            .chain([(f64::INFINITY, total(&|h| &h.over))])
            .collect();
        let count = counts.iter().map(|(_, c)| c).sum();
        let sum_ns = total(&|h| &h.sum_ns);
        (sum_ns as f64 / 1e9, count, counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_each_observation_once_and_copies_add_up() {
        static BOUNDS: [f64; 3] = [0.0005, 0.001, 0.005];
        let h = Histogram::new(&BOUNDS);
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (sum, count, buckets) = Histogram::read([&h].into_iter());
        assert_eq!(count, 3);
        assert!((sum - 60.0033).abs() < 1e-9);
        assert_eq!(
            buckets,
            [(0.0005, 1), (0.001, 0), (0.005, 1), (f64::INFINITY, 1)]
        );
        let (sum2, count2, buckets2) = Histogram::read([&h, &h].into_iter());
        assert_eq!(count2, 6);
        assert!((sum2 - 2.0 * sum).abs() < 1e-9);
        assert_eq!(buckets2[3], (f64::INFINITY, 2));
    }
}
