//! Optimizely's bucketer, as its SDKs compute it (python-sdk `bucketer.py`,
//! swift-sdk `DefaultBucketer`):
//! - bucketing key `bucketingId + experimentId` (no separator);
//! - MurmurHash3 x86_32, seed 1, read unsigned, `floor(h / 2^32 × 10000)`:
//!   a bucket in 0..10000;
//! - traffic allocation: a list of (variation, endOfRange); the first entry
//!   whose `endOfRange` exceeds the bucket wins; past the last one the user
//!   is in no variation (the experiment's traffic allocation < 100 %).

/// The bucket of `unit` in `experiment_id`, 0..10000.
pub fn bucket(unit: &[u8], experiment_id: &str) -> u32 {
    let mut key = unit.to_vec();
    key.extend_from_slice(experiment_id.as_bytes());
    let h = super::hashes::murmur3_32(&key, 1);
    ((u64::from(h) * 10_000) >> 32) as u32
}

/// The first allocation whose end of range exceeds `bucket`.
pub fn choose(bucket: u32, ends: &[u64]) -> Option<usize> {
    ends.iter().position(|&end| u64::from(bucket) < end)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden vectors: optimizely/python-sdk `tests/test_bucketing.py`
    // (`test_bucket_number`; the same inputs are in swift-sdk
    // `BucketTests_Base.swift` `testHashIsCompliant`, "should be reproduced
    // exactly in all clients").
    #[test]
    fn bucket_matches_the_sdk_tests() {
        let long = "a very very very very very very very very very very very very very very very long ppd string";
        let cases: &[(&str, &str, u32)] = &[
            ("ppid1", "1886780721", 5254),
            ("ppid2", "1886780721", 4299),
            ("ppid2", "1886780722", 2434),
            ("ppid3", "1886780721", 5439),
            (long, "1886780721", 6128),
        ];
        for (unit, exp, want) in cases {
            assert_eq!(bucket(unit.as_bytes(), exp), *want, "{unit} {exp}");
        }
    }

    /// End of range is exclusive; past the last end there is no variation
    /// (python-sdk `test_bucket`: a bucket of 424242 gets none).
    #[test]
    fn allocation_is_end_of_range() {
        let ends = [5000, 10_000];
        assert_eq!(choose(42, &ends), Some(0));
        assert_eq!(choose(4242, &ends), Some(0));
        assert_eq!(choose(5000, &ends), Some(1));
        assert_eq!(choose(424_242, &ends), None);
        assert_eq!(choose(9999, &[2500, 5000]), None);
    }
}
