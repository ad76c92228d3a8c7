//! Weights to contiguous bucket ranges, in declaration order.
//!
//! Variant *i* owns `[start_i, start_i + weight_i)` where weights are in
//! basis points (1/100 %) and sum to exactly [`BUCKETS`]. A weight-0 variant
//! owns no bucket: it keeps its stored units but receives no new ones.

use super::hash::{Bucket, BUCKETS};

pub use crate::terms::Weight;

/// Maps a bucket to the index of the variant that owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketTable {
    /// Exclusive upper bound of each variant's range, in declaration order.
    ends: Vec<u32>,
}

impl BucketTable {
    /// `None` unless the weights sum to exactly [`BUCKETS`].
    pub fn new(weights: &[Weight]) -> Option<BucketTable> {
        let mut end = 0u32;
        let mut ends = Vec::with_capacity(weights.len());
        for w in weights {
            end = end.checked_add(w.0)?;
            ends.push(end);
        }
        (end == BUCKETS).then_some(BucketTable { ends })
    }

    /// Index of the variant owning `b`. Weight-0 variants are never returned
    /// because their range is empty.
    pub fn variant_for(&self, b: Bucket) -> usize {
        debug_assert!(b.0 < BUCKETS);
        self.ends.partition_point(|&end| end <= b.0)
    }

    /// `(start, end)` of variant `i`'s range.
    pub fn range(&self, i: usize) -> (u32, u32) {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (start, self.ends[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(p: &[f64]) -> Vec<Weight> {
        p.iter()
            .map(|&x| Weight::from_percent(x).unwrap())
            .collect()
    }

    #[test]
    fn ranges_are_contiguous_in_declaration_order() {
        let t = BucketTable::new(&w(&[33.33, 33.33, 33.34])).unwrap();
        assert_eq!(t.range(0), (0, 3333));
        assert_eq!(t.range(1), (3333, 6666));
        assert_eq!(t.range(2), (6666, 10000));
        assert_eq!(t.variant_for(Bucket(0)), 0);
        assert_eq!(t.variant_for(Bucket(3332)), 0);
        assert_eq!(t.variant_for(Bucket(3333)), 1);
        assert_eq!(t.variant_for(Bucket(9999)), 2);
    }

    #[test]
    fn every_bucket_has_exactly_one_owner_and_zero_weight_owns_none() {
        let t = BucketTable::new(&w(&[0.0, 20.0, 0.0, 80.0])).unwrap();
        let mut counts = [0u32; 4];
        for b in 0..BUCKETS {
            counts[t.variant_for(Bucket(b))] += 1;
        }
        assert_eq!(counts, [0, 2000, 0, 8000]);
    }

    #[test]
    fn weights_must_sum_to_100() {
        assert!(BucketTable::new(&w(&[50.0, 49.99])).is_none());
        assert!(BucketTable::new(&w(&[50.0, 50.01])).is_none());
        assert!(BucketTable::new(&w(&[100.0])).is_some());
    }
}
