//! Unleash's stickiness hashing, as its SDKs compute it (unleash-client-java
//! `StrategyUtils.getNormalizedNumber`, `VariantUtil`; unleash-client-node
//! `util.ts` `normalizedValue`):
//! - `normalized(id, groupId, n, seed) = murmur3_32(groupId + ":" + id, seed)
//!   % n + 1`, so 1..=n;
//! - the flexible rollout: `normalized(id, groupId, 100, 0) <= rollout %`;
//! - variants: `target = normalized(id, groupId, totalWeight, 86028157)`
//!   (the variant normalization seed), then the first variant whose running
//!   weight sum reaches `target`; weights are out of 1000.

/// Unleash's variant normalization seed.
pub const VARIANT_SEED: u32 = 86_028_157;

/// `getNormalizedNumber(id, groupId, normalizer, seed)`: 1..=normalizer.
pub fn normalized(id: &[u8], group_id: &str, normalizer: u32, seed: u32) -> u32 {
    let mut key = group_id.as_bytes().to_vec();
    key.push(b':');
    key.extend_from_slice(id);
    super::hashes::murmur3_32(&key, seed) % normalizer + 1
}

/// The first variant whose cumulative weight end reaches `target`.
pub fn choose(target: u32, ends: &[u64]) -> Option<usize> {
    ends.iter().position(|&end| end >= u64::from(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden vectors: Unleash/unleash-client-java
    // `src/test/java/io/getunleash/strategy/StrategyUtilsTest.java`
    // ("normalized values are the same across node, java and go clients",
    // "... with variant seed ...").
    #[test]
    fn normalized_values_match_the_sdk_tests() {
        assert_eq!(normalized(b"123", "gr1", 100, 0), 73);
        assert_eq!(normalized(b"999", "groupX", 100, 0), 25);
        assert_eq!(normalized(b"123", "gr1", 100, VARIANT_SEED), 96);
        assert_eq!(normalized(b"999", "groupX", 100, VARIANT_SEED), 60);
    }

    // Unleash/client-specification (commit 931b695b)
    // `specifications/10-flexible-rollout-strategy.json`: flexibleRollout
    // with groupId = the toggle's name, default stickiness (userId).
    #[test]
    fn rollout_matches_the_client_specification() {
        let cases: &[(&str, u32, &str, bool)] = &[
            ("Feature.flexibleRollout.10", 10, "174", true),
            ("Feature.flexibleRollout.10", 10, "499", false),
            ("Feature.flexibleRollout.userId.55", 55, "25", true),
            ("Feature.flexibleRollout.0", 0, "12", false),
        ];
        for (group, rollout, user, want) in cases {
            assert_eq!(
                normalized(user.as_bytes(), group, 100, 0) <= *rollout,
                *want,
                "{group} {user}"
            );
        }
    }

    // `specifications/08-variants.json`: feature variants, groupId = the
    // toggle's name, normalized to the total weight with the variant seed.
    #[test]
    fn variants_match_the_client_specification() {
        let cases: &[(&str, &[u64], &str, usize)] = &[
            ("Feature.Variants.A", &[1], "0", 0),
            ("Feature.Variants.B", &[1, 1], "2", 1),
            ("Feature.Variants.B", &[1, 1], "0", 0),
            ("Feature.Variants.C", &[33, 33, 33], "232", 0),
            ("Feature.Variants.C", &[33, 33, 33], "607", 1),
            ("Feature.Variants.C", &[33, 33, 33], "656", 2),
            ("Feature.Variants.D", &[1, 49, 50], "712", 0),
            ("Feature.Variants.D", &[1, 49, 50], "525", 1),
            ("Feature.Variants.D", &[1, 49, 50], "537", 2),
            ("Feature.Variants.override.D", &[33, 33, 34], "388", 1),
        ];
        for (group, weights, user, want) in cases {
            let mut sum = 0;
            let ends: Vec<u64> = weights
                .iter()
                .map(|w| {
                    sum += w;
                    sum
                })
                .collect();
            let target = normalized(user.as_bytes(), group, sum as u32, VARIANT_SEED);
            assert_eq!(choose(target, &ends), Some(*want), "{group} {user}");
        }
    }

    #[test]
    fn variant_is_first_cumulative_end_reaching_target() {
        let ends = [333, 666, 1000];
        assert_eq!(choose(1, &ends), Some(0));
        assert_eq!(choose(333, &ends), Some(0));
        assert_eq!(choose(334, &ends), Some(1));
        assert_eq!(choose(1000, &ends), Some(2));
    }
}
