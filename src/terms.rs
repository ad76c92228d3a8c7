//! The vocabulary that configuration and assignment share (DESIGN.md's
//! *Terms*): what a valid unit id is, and weights in basis points.
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
