//! LaunchDarkly's percentage-rollout bucketing, as its server SDKs compute
//! it (`EvaluatorBucketing` in ruby-server-sdk, `bucketing.go` in
//! go-server-sdk-evaluation):
//! - hash input `flagKey + "." + salt + "." + key`, or `seed + "." + key`
//!   when the rollout has a seed;
//! - SHA-1 of it, the first 15 hex digits as an integer, divided by
//!   `0xFFFFFFFFFFFFFFF`: a bucket in [0, 1);
//! - variations' weights are in 100,000ths; a context goes to the first
//!   variation whose cumulative weight exceeds `bucket × 100000` (and to the
//!   last when rounding leaves it past every one).

/// The hash input for `key`.
fn input(flag_key: &str, salt: &str, seed: Option<i64>, key: &[u8]) -> Vec<u8> {
    let mut s = match seed {
        Some(seed) => format!("{seed}.").into_bytes(),
        None => format!("{flag_key}.{salt}.").into_bytes(),
    };
    s.extend_from_slice(key);
    s
}

/// The bucket value in [0, 1).
pub fn bucket(flag_key: &str, salt: &str, seed: Option<i64>, key: &[u8]) -> f64 {
    let d = super::hashes::sha1(&input(flag_key, salt, seed, key));
    // 15 hex digits = the first 60 bits of the digest.
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    let v = u64::from_be_bytes(first) >> 4;
    v as f64 / 0x0FFF_FFFF_FFFF_FFFFu64 as f64
}

/// `floor(bucket × 100000)`: the bucket on the weights' scale.
pub fn scaled(bucket: f64) -> u64 {
    (bucket * 100_000.0) as u64
}

/// The variation for a scaled bucket, given cumulative weight ends.
pub fn choose(scaled: u64, ends: &[u64]) -> usize {
    ends.iter()
        .position(|&end| scaled < end)
        .unwrap_or(ends.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden vectors: launchdarkly/ruby-server-sdk
    // `spec/impl/evaluator_bucketing_spec.rb` ("gets expected bucket values
    // for specific keys", "gets the expected bucket values for seed"), flag
    // key "hashKey", salt "saltyA", checked there to within 1e-7.
    #[test]
    fn bucket_matches_the_sdk_spec() {
        let cases: &[(&str, Option<i64>, f64)] = &[
            ("userKeyA", None, 0.42157587),
            ("userKeyB", None, 0.6708485),
            ("userKeyC", None, 0.10343106),
            ("userKeyA", Some(61), 0.09801207),
            ("userKeyB", Some(61), 0.14483777),
            ("userKeyC", Some(61), 0.9242641),
            // "can bucket by int value": the string "33333".
            ("33333", None, 0.54771423),
        ];
        for (key, seed, want) in cases {
            let got = bucket("hashKey", "saltyA", *seed, key.as_bytes());
            assert!((got - want).abs() < 1e-7, "{key} seed={seed:?}: {got}");
        }
        // With a seed, flag key and salt do not matter.
        assert_eq!(
            bucket("hashKey1", "saltyB", Some(61), b"userKeyA"),
            bucket("hashKey2", "saltyC", Some(61), b"userKeyA")
        );
    }

    /// The spec's "matches bucket" and "uses last bucket" cases, with the
    /// bucket of "userkey" under flag "flagkey", salt "salt".
    #[test]
    fn variation_index_follows_the_sdk_spec() {
        let b = scaled(bucket("flagkey", "salt", None, b"userkey"));
        assert!(b > 0 && b < 100_000);
        assert_eq!(choose(b, &[b, b + 1, 100_000]), 1);
        assert_eq!(choose(b, &[b]), 0);
    }
}
