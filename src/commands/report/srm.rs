//! The sample-ratio-mismatch test of one epoch, offline: Pearson's
//! chi-square goodness of fit of the first exposures per variant against
//! each variant's logged `share`, and its p-value from the chi-square
//! distribution's survival function. That function is the regularized
//! upper incomplete gamma function, `Q(k/2, x/2)`; it is computed here
//! from its power series or its continued fraction, whichever converges
//! (the classic method, Numerical Recipes §6.2), rather than pulling in a
//! statistics crate for one function.

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
    Some(chi2_sf(chi2, (categories - 1) as f64))
}

/// P(X > x) for X chi-square distributed with `df` degrees of freedom.
pub(crate) fn chi2_sf(x: f64, df: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    gamma_q(df / 2.0, x / 2.0)
}

/// The regularized upper incomplete gamma function Q(a, x), a > 0, x >= 0.
fn gamma_q(a: f64, x: f64) -> f64 {
    if x < a + 1.0 {
        1.0 - gamma_p_series(a, x)
    } else {
        gamma_q_fraction(a, x)
    }
}

const EPS: f64 = 1e-15;
const MAX_ITER: usize = 10_000;

/// P(a, x) by its series, for x < a + 1.
fn gamma_p_series(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let mut ap = a;
    let mut term = 1.0 / a;
    let mut sum = term;
    for _ in 0..MAX_ITER {
        ap += 1.0;
        term *= x / ap;
        sum += term;
        if term.abs() < sum.abs() * EPS {
            break;
        }
    }
    (sum.ln() - x + a * x.ln() - ln_gamma(a)).exp()
}

/// Q(a, x) by its continued fraction (modified Lentz), for x >= a + 1.
fn gamma_q_fraction(a: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..MAX_ITER {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < EPS {
            break;
        }
    }
    (-x + a * x.ln() - ln_gamma(a)).exp() * h
}

/// ln Γ(x) for x > 0, Lanczos' approximation (g = 7, 9 terms; relative
/// error below 1e-15 over the range used here).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1-x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scipy.stats.chi2.sf(x, df)` as recorded from SciPy (see each
    /// table's note); relative agreement to 1e-9 (1e-6 in the far tail).
    #[test]
    fn the_survival_function_matches_scipy() {
        for &(x, df, want) in SCIPY_CHI2_SF {
            let got = chi2_sf(x, df);
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
    fn ln_gamma_of_integers_is_ln_factorial() {
        let mut fact = 1.0f64;
        for n in 1..30 {
            assert!(
                (ln_gamma(n as f64) - fact.ln()).abs() < 1e-12 * fact.ln().max(1.0),
                "{n}"
            );
            fact *= n as f64;
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-14);
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
