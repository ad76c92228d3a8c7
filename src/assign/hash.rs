//! The one place unit ids are hashed.
//!
//! Two hashes are public contract, recomputed by analysts in the warehouse:
//! - the **variant bucket**: the first 8 bytes of SHA-256(`salt` + ":" + unit),
//!   read as a big-endian u64, mod 10000;
//! - the **coverage bucket** (same construction with the prefix `"coverage:"`):
//!   a unit is in the experiment when it is below `coverage` x 10000. It is
//!   independent of the variant bucket, so a coverage change never moves a
//!   covered unit between variants.
//!
//! The third, [`unit_key`], is private to the store: a 128-bit digest of
//! (experiment, unit) that keys the assignment map, so the map never holds the
//! unit strings themselves.

use sha2::{Digest, Sha256};

/// Number of buckets in the bucket space; weights are expressed in 1/100 %.
pub const BUCKETS: u32 = crate::terms::WHOLE;

/// A position in the bucket space, `0..BUCKETS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket(pub u32);

/// The variant bucket of `unit` under `salt` (the public assignment contract).
pub fn bucket(salt: &str, unit: &[u8]) -> Bucket {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(b":");
    h.update(unit);
    Bucket(first_u64_mod(&h.finalize()))
}

/// The coverage bucket of `unit` under `salt`, independent of [`bucket`].
pub fn coverage_bucket(salt: &str, unit: &[u8]) -> Bucket {
    let mut h = Sha256::new();
    h.update(b"coverage:");
    h.update(salt.as_bytes());
    h.update(b":");
    h.update(unit);
    Bucket(first_u64_mod(&h.finalize()))
}

fn first_u64_mod(digest: &[u8]) -> u32 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(BUCKETS)) as u32
}

/// The 128-bit key of a unit's assignment in one experiment.
///
/// Independent of the salt on purpose: rotating the salt must not make a
/// stored unit look new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitKey(pub [u64; 2]);

/// The store key of `unit` in `experiment`: the first 16 bytes of
/// SHA-256(`"cohort-unit\0"` + experiment + `"\0"` + unit), read as two
/// little-endian words. Pinned by a golden test: if it changed, every stored
/// assignment would be silently orphaned.
pub fn unit_key(experiment: &str, unit: &[u8]) -> UnitKey {
    let mut h = Sha256::new();
    h.update(b"cohort-unit\0");
    h.update(experiment.as_bytes());
    h.update(b"\0");
    h.update(unit);
    let d = h.finalize();
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&d[..8]);
    b.copy_from_slice(&d[8..16]);
    UnitKey([u64::from_le_bytes(a), u64::from_le_bytes(b)])
}

impl UnitKey {
    /// The key as the journal stores it: both words, little-endian.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.0[0].to_le_bytes());
        out[8..].copy_from_slice(&self.0[1].to_le_bytes());
        out
    }

    /// The key back from its journal bytes ([`UnitKey::to_bytes`]).
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        let mut a = [0u8; 8];
        let mut c = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        c.copy_from_slice(&b[8..]);
        UnitKey([u64::from_le_bytes(a), u64::from_le_bytes(c)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden vectors: a change that moves any of these users turns this red.
    /// Computed independently with `python3 -c 'import hashlib; ...'` (see docs/assignment.md).
    #[test]
    fn bucket_contract_is_stable() {
        let golden: &[(&str, &str, u32)] = GOLDEN;
        for (salt, unit, want) in golden {
            assert_eq!(
                bucket(salt, unit.as_bytes()).0,
                *want,
                "salt={salt} unit={unit}"
            );
        }
    }

    const GOLDEN: &[(&str, &str, u32)] = &[
        ("ranker-v2", "alice", 7889),
        ("ranker-v2", "bob", 1237),
        ("ranker-v2", "carol", 6763),
        ("ranker-v2", "user-1", 7109),
        ("ranker-v2", "user-42", 8846),
        ("s2", "alice", 6366),
        ("", "x", 9184),
        ("ranker-v2", "ünïcode", 6603),
    ];

    /// Golden coverage vectors (python3: `hashlib.sha256(("coverage:" + salt
    /// + ":" + unit).encode())`, first 8 bytes big-endian, mod 10000).
    #[test]
    fn coverage_contract_is_stable() {
        let golden: &[(&str, &str, u32)] = &[
            ("ranker-v2", "alice", 5449),
            ("ranker-v2", "bob", 8654),
            ("ranker-v2", "user-1", 4641),
            ("s2", "alice", 1661),
            ("ranker-v2", "ünïcode", 1649),
        ];
        for (salt, unit, want) in golden {
            assert_eq!(
                coverage_bucket(salt, unit.as_bytes()).0,
                *want,
                "salt={salt} unit={unit}"
            );
        }
    }

    #[test]
    fn coverage_is_independent_of_variant_bucket() {
        let same = (0..1000)
            .filter(|i| {
                let u = format!("user-{i}");
                bucket("s", u.as_bytes()) == coverage_bucket("s", u.as_bytes())
            })
            .count();
        assert!(same < 5, "{same} of 1000 collide");
    }

    #[test]
    fn unit_key_roundtrips_and_separates_experiments() {
        let k = unit_key("exp", b"alice");
        assert_eq!(UnitKey::from_bytes(&k.to_bytes()), k);
        assert_ne!(k, unit_key("exp2", b"alice"));
        assert_ne!(k, unit_key("exp", b"bob"));
    }
}
