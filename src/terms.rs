//! The vocabulary that configuration and assignment share (DESIGN.md's
//! *Terms*): what a valid unit id is, weights in basis points, the
//! bucketing scheme of a rule (the algorithms are in `assign::schemes`),
//! when a new unit's assignment counts as stored, and the shape of a
//! latency histogram read for `/metrics` (the store times its syncs, the
//! metrics render them).
//!
//! A leaf on purpose: [`crate::config`] validates files with these rules and
//! [`crate::assign`] serves requests with them, and neither of the two
//! imports the other. Nothing here depends on the rest of the crate.

/// Longest unit id accepted, in bytes.
pub const MAX_UNIT_LEN: usize = 256;

/// 1 to 256 bytes, no control characters.
pub fn valid_unit(unit: &[u8]) -> bool {
    !unit.is_empty() && unit.len() <= MAX_UNIT_LEN && !unit.iter().any(|&b| b < 0x20 || b == 0x7f)
}

/// 100 % in basis points: the weights of an experiment's variants sum to
/// exactly this, and coverage is at most this.
pub const WHOLE: u32 = 10_000;

/// A weight in basis points: `33.33` % is `Weight(3333)`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Weight(pub u32);

impl Weight {
    /// Parses a percentage with at most two decimals (`50`, `33.33`).
    pub fn from_percent(p: f64) -> Option<Weight> {
        if !p.is_finite() || !(0.0..=100.0).contains(&p) {
            return None;
        }
        let bp = (p * 100.0).round();
        if (p * 100.0 - bp).abs() > 1e-6 {
            return None;
        }
        Some(Weight(bp as u32))
    }

    /// Whether `weights` sum to exactly 100 % (without overflowing).
    pub fn sum_to_whole(weights: &[Weight]) -> bool {
        weights.iter().try_fold(0u32, |sum, w| sum.checked_add(w.0)) == Some(WHOLE)
    }
}

impl std::fmt::Display for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_multiple_of(100) {
            write!(f, "{}", self.0 / 100)
        } else {
            write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
        }
    }
}

/// A vendor weight as written in the config: an integer on the vendor's
/// scale, or GrowthBook's fraction. Compared bit for bit, so a rule holding
/// one is still `Eq`.
///
/// Recorded (journal, config record) as a string of its shortest exact
/// decimal, because JSON number parsing is not guaranteed to be correctly
/// rounded: a fraction read back one bit off would make every restart look
/// like a rule change. Reads numbers too.
#[derive(Debug, Clone, Copy)]
pub struct VendorWeight(pub f64);

impl serde::Serialize for VendorWeight {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Rust prints the shortest decimal that parses back to the same f64.
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for VendorWeight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = VendorWeight;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a vendor weight (a number, or a string of one)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<VendorWeight, E> {
                v.parse().map(VendorWeight).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<VendorWeight, E> {
                Ok(VendorWeight(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<VendorWeight, E> {
                Ok(VendorWeight(v as f64))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<VendorWeight, E> {
                Ok(VendorWeight(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

impl PartialEq for VendorWeight {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for VendorWeight {}

/// How an experiment draws new units: part of its rule, so a change is a new
/// epoch. Field names are the vendors' own (snake_case), as an operator
/// copies them from the vendor's UI or export.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum Bucketing {
    /// cohort's own contract: SHA-256 of `salt:unit`, 10000 buckets.
    #[default]
    Cohort,
    /// GrowthBook: FNV-1a over UTF-16 code units, hash version 1 or 2.
    Growthbook {
        /// The experiment's hash seed (GrowthBook's `seed`).
        seed: String,
        /// GrowthBook's `hashVersion` (1 or 2).
        hash_version: u8,
        /// GrowthBook's `weights` (fractions summing to 1), if given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vendor_weights: Option<Vec<VendorWeight>>,
    },
    /// LaunchDarkly: SHA-1 of `flagKey.salt.key` (or `seed.key`).
    Launchdarkly {
        /// The flag's key.
        flag_key: String,
        /// The flag's salt (unused when `seed` is set).
        #[serde(default)]
        salt: String,
        /// The rollout's seed, if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed: Option<i64>,
        /// The rollout's weights, in 100,000ths.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vendor_weights: Option<Vec<VendorWeight>>,
    },
    /// Statsig: SHA-256, first 8 bytes big-endian, dot-joined salts.
    Statsig {
        /// The experiment's salt.
        salt: String,
        /// The rule's salt (or id), for the pass percentage (coverage).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule_salt: Option<String>,
        /// Group sizes, in 1000ths (user buckets).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vendor_weights: Option<Vec<VendorWeight>>,
    },
    /// Optimizely: MurmurHash3 of `bucketingId + experimentId`, seed 1.
    Optimizely {
        /// The experiment's id (a string of digits in the datafile).
        experiment_id: String,
        /// Each variation's share of the 10,000 buckets (differences of its
        /// `endOfRange`s; their sum is the traffic allocation).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vendor_weights: Option<Vec<VendorWeight>>,
    },
    /// Unleash: murmur3 of `groupId:stickiness`.
    Unleash {
        /// The strategy's `groupId` (the toggle's name by default in
        /// Unleash).
        group_id: String,
        /// The variants' weights, out of their total (1000 in Unleash).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vendor_weights: Option<Vec<VendorWeight>>,
    },
    /// NGINX `split_clients`: MurmurHash2 of the split string.
    Nginx {
        /// The `split_clients` string, `${unit}` standing for the unit id.
        key: String,
        /// Each line's percentage in hundredths (`12.5%` is 1250).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vendor_weights: Option<Vec<VendorWeight>>,
    },
}

impl Bucketing {
    /// Whether this is the default scheme (left out of serialized rules so a
    /// rule without `bucketing:` reads and hashes as before).
    pub fn is_cohort(&self) -> bool {
        matches!(self, Bucketing::Cohort)
    }

    /// The scheme's name, as written in `bucketing.scheme`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Bucketing::Cohort => "cohort",
            Bucketing::Growthbook { .. } => "growthbook",
            Bucketing::Launchdarkly { .. } => "launchdarkly",
            Bucketing::Statsig { .. } => "statsig",
            Bucketing::Optimizely { .. } => "optimizely",
            Bucketing::Unleash { .. } => "unleash",
            Bucketing::Nginx { .. } => "nginx",
        }
    }

    /// The integer scale of the scheme's weights (`None`: no integer scale,
    /// cohort's own basis points or GrowthBook's fractions).
    pub fn scale(&self) -> Option<u64> {
        match self {
            Bucketing::Cohort | Bucketing::Growthbook { .. } => None,
            Bucketing::Launchdarkly { .. } => Some(100_000),
            Bucketing::Statsig { .. } => Some(1000),
            Bucketing::Optimizely { .. } => Some(10_000),
            Bucketing::Unleash { .. } => Some(1000),
            Bucketing::Nginx { .. } => Some(10_000),
        }
    }

    /// The vendor's own weights, when the config gives them.
    pub fn vendor_weights(&self) -> Option<&[VendorWeight]> {
        match self {
            Bucketing::Cohort => None,
            Bucketing::Growthbook { vendor_weights, .. }
            | Bucketing::Launchdarkly { vendor_weights, .. }
            | Bucketing::Statsig { vendor_weights, .. }
            | Bucketing::Optimizely { vendor_weights, .. }
            | Bucketing::Unleash { vendor_weights, .. }
            | Bucketing::Nginx { vendor_weights, .. } => vendor_weights.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_parsing_allows_two_decimals_only() {
        assert_eq!(Weight::from_percent(33.33), Some(Weight(3333)));
        assert_eq!(Weight::from_percent(50.0), Some(Weight(5000)));
        assert_eq!(Weight::from_percent(0.01), Some(Weight(1)));
        assert_eq!(Weight::from_percent(33.333), None);
        assert_eq!(Weight::from_percent(-1.0), None);
        assert_eq!(Weight::from_percent(100.5), None);
        assert_eq!(Weight(3333).to_string(), "33.33");
        assert_eq!(Weight(5000).to_string(), "50");
        assert_eq!(Weight(5).to_string(), "0.05");
    }

    #[test]
    fn weights_must_sum_to_exactly_100() {
        assert!(Weight::sum_to_whole(&[Weight(5000), Weight(5000)]));
        assert!(!Weight::sum_to_whole(&[Weight(5000), Weight(4999)]));
        assert!(!Weight::sum_to_whole(&[Weight(u32::MAX), Weight(10_001)]));
    }

    #[test]
    fn unit_ids_are_1_to_256_bytes_without_controls() {
        assert!(valid_unit(b"alice"));
        assert!(valid_unit(&[b'a'; 256]));
        assert!(!valid_unit(&[b'a'; 257]));
        assert!(!valid_unit(b""));
        assert!(!valid_unit(b"a\tb"));
        assert!(!valid_unit(b"a\x7f"));
    }
}

/// When the embedded store answers a first exposure (`store.durability`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// After the batch's `fdatasync` returned: the assignment survives a
    /// power cut.
    #[default]
    Sync,
    /// After the batch's `write(2)` returned: the assignment survives the
    /// process's death (`kill -9`, a panic, the OOM killer) but not a
    /// power cut or a kernel crash, which can lose up to the last second:
    /// the journal is synced once a second (Redis's `appendfsync
    /// everysec`). Config changes and hand-overs are always synced.
    Write,
}

impl Durability {
    /// Whether this is the default (absent from config records).
    pub fn is_sync(&self) -> bool {
        *self == Durability::Sync
    }
}

/// A latency histogram as read: (sum in seconds, count, per-bucket counts
/// with their upper bounds, not cumulative).
pub type HistogramRead = (f64, u64, Vec<(f64, u64)>);
