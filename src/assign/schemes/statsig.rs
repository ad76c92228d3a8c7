//! Statsig's bucketing, as its server SDKs compute it (go-sdk
//! `evaluator.go`: `evalPassPercent` and the `user_bucket` condition;
//! `util.go`: `getHashUint64Encoding`):
//! - the hash: SHA-256 of the input, first 8 bytes as a big-endian u64;
//! - experiment groups: `hash(salt + "." + unitID) % 1000`, each group a
//!   `user_bucket < end` condition over 1000 buckets, in order;
//! - pass percentage (the rule's rollout):
//!   `hash(salt + "." + ruleSalt + "." + unitID) % 10000 < pct × 100`.

use sha2::{Digest, Sha256};

/// Statsig's evaluation hash of `parts` concatenated.
pub fn hash(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// The unit's group bucket, 0..1000.
pub fn group_bucket(salt: &str, unit: &[u8]) -> u32 {
    (hash(&[salt.as_bytes(), b".", unit]) % 1000) as u32
}

/// The unit's pass-percentage bucket, 0..10000.
pub fn pass_bucket(salt: &str, rule_salt: &str, unit: &[u8]) -> u32 {
    (hash(&[salt.as_bytes(), b".", rule_salt.as_bytes(), b".", unit]) % 10000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden vectors: statsig-io/statsig-server-core
    // `statsig-rust/tests/hash_util_evaluation_hash_tests.rs`
    // (`test_evaluation_hash_matches_sha256_prefix`).
    #[test]
    fn hash_matches_the_sdk_test() {
        assert_eq!(hash(&[b""]), 0xE3B0C44298FC1C14);
        assert_eq!(hash(&[b"blargh"]), 0x0AC33512D18E20D5);
        assert_eq!(hash(&["unicode 🗻".as_bytes()]), 0xD460740C12959D83);
    }

    // Group vectors: statsig-io/go-sdk (commit 490544e4), whose
    // `download_config_specs.json` has `sample_experiment` (salt
    // f8aeba58-18fb-4f36-9bbd-4c611447a912) with the groups
    // `user_bucket lt 500` (rule 2RamGsERWbWMIMnSfOlQuX, control) and
    // `lt 1000` (test); `evaluation_details_test.go` expects "some_user_id"
    // in the first, `data_adapter_test.go` "statsig_user" in control and
    // `client_initialize_response_test.go` "123" in test (a_layer, which
    // delegates to sample_experiment).
    #[test]
    fn groups_match_the_sdk_tests() {
        let salt = "f8aeba58-18fb-4f36-9bbd-4c611447a912";
        let ends = [500u32, 1000];
        let group = |u: &str| {
            ends.iter()
                .position(|&e| group_bucket(salt, u.as_bytes()) < e)
        };
        assert_eq!(group("some_user_id"), Some(0));
        assert_eq!(group("statsig_user"), Some(0));
        assert_eq!(group("123"), Some(1));
    }

    #[test]
    fn layouts_join_with_dots() {
        assert_eq!(
            u64::from(group_bucket("exp", b"u1")),
            hash(&[b"exp.u1"]) % 1000
        );
        assert_eq!(
            u64::from(pass_bucket("exp", "rule", b"u1")),
            hash(&[b"exp.rule.u1"]) % 10000
        );
    }
}
