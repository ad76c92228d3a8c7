//! Vendor-compatible bucketing: per experiment, `bucketing:` selects how a
//! new unit's variant is drawn. `cohort` (the default) is the SHA-256
//! contract of [`super::hash`] and is not handled here at all; the other
//! schemes reproduce, bit for bit, how a feature-flag service assigns a
//! unit, so a team migrating mid-experiment moves nobody.
//!
//! Only the *draw* of a new unit changes: stickiness, epochs, stamps and
//! the access log work the same in every mode. [`Bucketing`] is the pure
//! value the ledger records in each epoch's rule; [`Chooser`] is it compiled
//! against the rule's weights and coverage, and answers "which variant, if
//! any" for a unit id. Each vendor's algorithm lives in its own file with
//! the vendor's published test vectors.
//!
//! Weights: the rule's percentages are converted to each vendor's integer
//! scale by rounding the cumulative boundaries, `end_i = round(scale ×
//! coverage × Σ_{j≤i} w_j)`, so the ranges tile the covered space exactly
//! once; `vendor_weights` gives the vendor's own integers instead, to
//! reproduce one flag exactly.

pub mod growthbook;
pub mod hashes;
pub mod launchdarkly;
pub mod nginx;
pub mod optimizely;
pub mod statsig;
pub mod unleash;

use super::buckets::{BucketTable, Weight};
use super::epoch::Rule;
use super::hash;
use crate::terms::WHOLE;
pub use crate::terms::{Bucketing, VendorWeight};

/// Cumulative range ends on a vendor's integer `scale`: `round(scale ×
/// coverage × Σ_{j≤i} w_j)` with weights and coverage in basis points, in
/// exact integer arithmetic (half rounds up). The last end is `scale ×
/// coverage` rounded, so at full coverage the ranges tile `0..scale`.
pub fn cumulative_ends(weights: &[Weight], coverage: Weight, scale: u64) -> Vec<u64> {
    let whole = u128::from(WHOLE);
    let denom = whole * whole;
    let mut sum = 0u128;
    weights
        .iter()
        .map(|w| {
            sum += u128::from(w.0);
            let num = u128::from(scale) * u128::from(coverage.0) * sum;
            ((num + denom / 2) / denom) as u64
        })
        .collect()
}

/// Running sums of raw vendor integers.
fn running(raw: &[VendorWeight]) -> Vec<u64> {
    let mut sum = 0u64;
    raw.iter()
        .map(|w| {
            sum += w.0 as u64;
            sum
        })
        .collect()
}

/// What a scheme says of one unit: its variant (or none: outside the
/// vendor's coverage) and its bucket on the vendor's own scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    /// Index of the configured variant, `None` when the unit falls outside
    /// the covered ranges.
    pub variant: Option<usize>,
    /// The vendor's bucket value, on its own scale (what its SDK would log).
    pub bucket: u32,
}

/// A [`Bucketing`] compiled against one rule's weights and coverage.
#[derive(Debug, Clone, PartialEq)]
pub enum Chooser {
    /// See [`growthbook`].
    Growthbook {
        /// Hash seed.
        seed: String,
        /// Hash version.
        version: u8,
        /// Each variant's `[start, end)`.
        ranges: Vec<(f64, f64)>,
    },
    /// See [`launchdarkly`].
    Launchdarkly {
        /// Flag key.
        flag_key: String,
        /// Flag salt.
        salt: String,
        /// Rollout seed.
        seed: Option<i64>,
        /// Cumulative weight ends, in 100,000ths.
        ends: Vec<u64>,
    },
    /// See [`statsig`].
    Statsig {
        /// Experiment salt.
        salt: String,
        /// Rule salt and pass threshold (in 10000ths), below full coverage.
        pass: Option<(String, u32)>,
        /// Cumulative group ends, in 1000ths.
        ends: Vec<u64>,
    },
    /// See [`optimizely`].
    Optimizely {
        /// Experiment id.
        experiment_id: String,
        /// Traffic allocation ends of range, in 10000ths.
        ends: Vec<u64>,
    },
    /// See [`unleash`].
    Unleash {
        /// Group id.
        group_id: String,
        /// Rollout percentage (whole percent).
        rollout: u32,
        /// Cumulative variant weight ends.
        ends: Vec<u64>,
        /// Total variant weight (the normalizer).
        total: u32,
    },
    /// See [`nginx`].
    Nginx {
        /// The split string.
        key: String,
        /// Per line: its threshold (0 for `*`).
        thresholds: Vec<u32>,
        /// Per line: the variant it serves.
        variants: Vec<usize>,
    },
}

/// Why a bucketing cannot be compiled for a rule (the config validation
/// reports these with their path first; this is the backstop).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemeError {
    /// `vendor_weights` has another length than the variant list.
    #[error("vendor_weights has {got} entries for {want} variants")]
    VendorWeightsLength {
        /// Entries given.
        got: usize,
        /// Variants configured.
        want: usize,
    },
    /// The weights sum past the vendor's scale.
    #[error("vendor_weights sum to {sum}, more than the scheme's {scale}")]
    VendorWeightsSum {
        /// Their sum.
        sum: u64,
        /// The scheme's scale.
        scale: u64,
    },
    /// An integer scheme was given a fraction or a negative weight.
    #[error("vendor_weights must be whole numbers >= 0 for {0}")]
    NotWhole(&'static str),
    /// The vendor has no way to express a coverage below 100 %.
    #[error("{0}: coverage below 100% cannot be reproduced")]
    Coverage(&'static str),
    /// `hash_version` is not 1 or 2.
    #[error("growthbook hash_version must be 1 or 2")]
    HashVersion,
}

impl Chooser {
    /// Compiles `b` for variants of `weights` (basis points, summing to
    /// 100 %) at `coverage`. `None` for the default `cohort` scheme.
    pub fn new(
        b: &Bucketing,
        weights: &[Weight],
        coverage: Weight,
    ) -> Result<Option<Chooser>, SchemeError> {
        let full = coverage.0 >= WHOLE;
        let raw = b.vendor_weights();
        if let Some(raw) = raw {
            if raw.len() != weights.len() {
                return Err(SchemeError::VendorWeightsLength {
                    got: raw.len(),
                    want: weights.len(),
                });
            }
            if let Some(scale) = b.scale() {
                if raw
                    .iter()
                    .any(|w| w.0 < 0.0 || w.0.fract() != 0.0 || !w.0.is_finite())
                {
                    return Err(SchemeError::NotWhole(b.scheme()));
                }
                let sum: u64 = raw.iter().map(|w| w.0 as u64).sum();
                if sum > scale && !matches!(b, Bucketing::Unleash { .. }) {
                    return Err(SchemeError::VendorWeightsSum { sum, scale });
                }
            }
        }
        // Ends on the scheme's scale; vendor integers win over percentages.
        let ends_at = |scale: u64, cov: Weight| match raw {
            Some(raw) => running(raw),
            None => cumulative_ends(weights, cov, scale),
        };
        let all = Weight(WHOLE);
        Ok(Some(match b {
            Bucketing::Cohort => return Ok(None),
            Bucketing::Growthbook {
                seed, hash_version, ..
            } => {
                if !matches!(hash_version, 1 | 2) {
                    return Err(SchemeError::HashVersion);
                }
                let fractions: Vec<f64> = match raw {
                    Some(raw) => raw.iter().map(|w| w.0).collect(),
                    None => weights
                        .iter()
                        .map(|w| f64::from(w.0) / f64::from(WHOLE))
                        .collect(),
                };
                Chooser::Growthbook {
                    seed: seed.clone(),
                    version: *hash_version,
                    ranges: growthbook::ranges(
                        &fractions,
                        f64::from(coverage.0) / f64::from(WHOLE),
                    ),
                }
            }
            Bucketing::Launchdarkly {
                flag_key,
                salt,
                seed,
                ..
            } => {
                if !full {
                    return Err(SchemeError::Coverage("launchdarkly"));
                }
                Chooser::Launchdarkly {
                    flag_key: flag_key.clone(),
                    salt: salt.clone(),
                    seed: *seed,
                    ends: ends_at(100_000, all),
                }
            }
            Bucketing::Statsig {
                salt, rule_salt, ..
            } => {
                let pass = if full {
                    None
                } else {
                    // Statsig's pass percentage has two decimals: pct × 100
                    // is the threshold in 10000ths, i.e. basis points.
                    Some((rule_salt.clone().unwrap_or_default(), coverage.0))
                };
                Chooser::Statsig {
                    salt: salt.clone(),
                    pass,
                    ends: ends_at(1000, all),
                }
            }
            Bucketing::Optimizely { experiment_id, .. } => {
                if raw.is_some() && !full {
                    return Err(SchemeError::Coverage(
                        "optimizely with vendor_weights (their sum is the traffic allocation)",
                    ));
                }
                Chooser::Optimizely {
                    experiment_id: experiment_id.clone(),
                    ends: ends_at(10_000, coverage),
                }
            }
            Bucketing::Unleash { group_id, .. } => {
                if !coverage.0.is_multiple_of(100) {
                    return Err(SchemeError::Coverage(
                        "unleash (rollout is a whole percentage)",
                    ));
                }
                let ends = ends_at(1000, all);
                let total = ends.last().copied().unwrap_or(0) as u32;
                Chooser::Unleash {
                    group_id: group_id.clone(),
                    rollout: coverage.0 / 100,
                    ends,
                    total,
                }
            }
            Bucketing::Nginx { key, .. } => {
                if raw.is_some() && !full {
                    return Err(SchemeError::Coverage(
                        "nginx with vendor_weights (their sum is the covered share)",
                    ));
                }
                let ends = ends_at(10_000, coverage);
                // One line per variant with a non-empty share; at full
                // coverage (and no vendor weights) the last one is `*`, as
                // split_clients blocks are written.
                let mut spec: Vec<(nginx::Line, usize)> = Vec::new();
                let mut prev = 0;
                for (i, end) in ends.iter().enumerate() {
                    if *end > prev {
                        spec.push((Some((end - prev) as u32), i));
                    }
                    prev = *end;
                }
                if full && raw.is_none() {
                    if let Some(last) = spec.last_mut() {
                        last.0 = None;
                    }
                }
                let lines: Vec<nginx::Line> = spec.iter().map(|(l, _)| *l).collect();
                let t = nginx::thresholds(&lines).ok_or(SchemeError::VendorWeightsSum {
                    sum: prev,
                    scale: 10_000,
                })?;
                Chooser::Nginx {
                    key: key.clone(),
                    thresholds: t,
                    variants: spec.iter().map(|(_, i)| *i).collect(),
                }
            }
        }))
    }

    /// The variant (if any) and vendor bucket of `unit`.
    pub fn draw(&self, unit: &[u8]) -> Draw {
        match self {
            Chooser::Growthbook {
                seed,
                version,
                ranges,
            } => {
                let (n, scale) =
                    growthbook::bucket(seed, unit, *version).expect("validated version");
                Draw {
                    variant: growthbook::choose(f64::from(n) / f64::from(scale), ranges),
                    bucket: n,
                }
            }
            Chooser::Launchdarkly {
                flag_key,
                salt,
                seed,
                ends,
            } => {
                let b = launchdarkly::scaled(launchdarkly::bucket(flag_key, salt, *seed, unit));
                Draw {
                    variant: Some(launchdarkly::choose(b, ends)),
                    bucket: b as u32,
                }
            }
            Chooser::Statsig { salt, pass, ends } => {
                let b = statsig::group_bucket(salt, unit);
                let passed = match pass {
                    None => true,
                    Some((rule_salt, threshold)) => {
                        statsig::pass_bucket(salt, rule_salt, unit) < *threshold
                    }
                };
                Draw {
                    variant: passed
                        .then(|| ends.iter().position(|&e| u64::from(b) < e))
                        .flatten(),
                    bucket: b,
                }
            }
            Chooser::Optimizely {
                experiment_id,
                ends,
            } => {
                let b = optimizely::bucket(unit, experiment_id);
                Draw {
                    variant: optimizely::choose(b, ends),
                    bucket: b,
                }
            }
            Chooser::Unleash {
                group_id,
                rollout,
                ends,
                total,
            } => {
                let inside = unleash::normalized(unit, group_id, 100, 0) <= *rollout;
                let target =
                    unleash::normalized(unit, group_id, (*total).max(1), unleash::VARIANT_SEED);
                Draw {
                    variant: inside.then(|| unleash::choose(target, ends)).flatten(),
                    bucket: target,
                }
            }
            Chooser::Nginx {
                key,
                thresholds,
                variants,
            } => {
                let h = nginx::hash(&nginx::subject(key, unit));
                Draw {
                    variant: nginx::choose(h, thresholds).map(|i| variants[i]),
                    bucket: h,
                }
            }
        }
    }
}

/// How `rule` draws a *new* unit, as a function from unit id to the index of
/// its variant (`None`: outside coverage), whatever the scheme; `None` when
/// the rule's weights do not compile. `plan` uses it to compare two rules
/// unit by unit; serving uses [`super::Assigner`], which takes the same
/// path.
pub fn new_unit_draw(rule: &Rule) -> Option<impl Fn(&[u8]) -> Option<usize> + '_> {
    let weights: Vec<Weight> = rule.variants.iter().map(|v| v.weight).collect();
    let table = BucketTable::new(&weights)?;
    let chooser = Chooser::new(&rule.bucketing, &weights, rule.coverage).ok()?;
    Some(move |unit: &[u8]| match &chooser {
        Some(c) => c.draw(unit).variant,
        None => {
            let covered = rule.coverage.0 >= hash::BUCKETS
                || hash::coverage_bucket(&rule.salt, unit).0 < rule.coverage.0;
            covered.then(|| table.variant_for(hash::bucket(&rule.salt, unit)))
        }
    })
}

#[cfg(test)]
mod tests;
