//! The sample-ratio-mismatch test of one epoch, offline: Pearson's
//! chi-square goodness of fit of the first exposures per variant against
//! each variant's logged `share`. The p-value comes from the one
//! chi-square survival function the live alarm uses too
//! ([`crate::observe::srm::chi2_sf`]); this file checks it against SciPy.

use crate::observe::srm::chi2_sf;

/// The p-value of observing `counts` when category *i* has probability
/// `expected[i]` (shares; normalized here). `None` when the test has no
/// meaning: fewer than two categories with a positive share, or no count.
pub(crate) fn srm_p_value(counts: &[u64], expected: &[f64]) -> Option<f64> {
    debug_assert_eq!(counts.len(), expected.len());
    let total: u64 = counts.iter().sum();
    let share_sum: f64 = expected.iter().filter(|s| **s > 0.0).sum();
    let categories = expected.iter().filter(|s| **s > 0.0).count();
    if counts
        .iter()
        .zip(expected)
        .any(|(&c, &s)| s <= 0.0 && c > 0)
    {
        // Units in a variant that takes no new units: impossible under
        // the logged weights.
        return Some(0.0);
    }
    if total == 0 || categories < 2 || share_sum <= 0.0 {
        return None;
    }
    let n = total as f64;
    let mut chi2 = 0.0;
    for (&c, &s) in counts.iter().zip(expected) {
        if s > 0.0 {
            let e = n * s / share_sum;
            let d = c as f64 - e;
            chi2 += d * d / e;
        }
    }
    Some(chi2_sf(chi2, (categories - 1) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scipy.stats.chi2.sf(x, df)` as recorded from SciPy (see each
    /// table's note); relative agreement to 1e-9 (1e-6 in the far tail).
    #[test]
    fn the_survival_function_matches_scipy() {
        for &(x, df, want) in SCIPY_CHI2_SF {
            let got = chi2_sf(x, df as u32);
            if want == 0.0 {
                assert!(got < 1e-300, "chi2.sf({x}, {df}) = {got}, scipy says 0");
                continue;
            }
            let tol = if want < 1e-100 { 1e-6 } else { 1e-9 };
            assert!(
                ((got - want) / want).abs() < tol,
                "chi2.sf({x}, {df}) = {got}, scipy says {want}"
            );
        }
    }

    #[test]
    fn a_fair_split_passes_and_a_skewed_one_fails() {
        let fair = srm_p_value(&[5_010, 4_990], &[0.5, 0.5]).unwrap();
        assert!(fair > 0.5, "{fair}");
        let skewed = srm_p_value(&[5_300, 4_700], &[0.5, 0.5]).unwrap();
        assert!(skewed < 1e-6, "{skewed}");
        // 10/90 is fair for a 10 % ramp, not for 50/50.
        assert!(srm_p_value(&[1_000, 9_000], &[0.1, 0.9]).unwrap() > 0.9);
        assert!(srm_p_value(&[1_000, 9_000], &[0.5, 0.5]).unwrap() < 1e-100);
        assert_eq!(srm_p_value(&[0, 0], &[0.5, 0.5]), None);
        assert_eq!(srm_p_value(&[10], &[1.0]), None);
        assert_eq!(srm_p_value(&[10, 1], &[1.0, 0.0]), Some(0.0));
    }

    include!("scipy_chi2_sf.rs");
}
