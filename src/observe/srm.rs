//! The sample-ratio-mismatch test: do the first exposures of one
//! experiment's epoch split between its variants as the weights say?
//!
//! Pure arithmetic, no state: [`srm_p_value`] is a chi-square goodness-of-fit
//! test of observed counts against expected shares, and [`chi2_sf`] its
//! upper tail, computed here from the regularized upper incomplete gamma
//! function `Q(k/2, x/2)` (series below `a + 1`, Lentz's continued fraction
//! above, as in Numerical Recipes §6.2) and a Lanczos `ln Γ`. The live alarm
//! that calls it is in [`super::metrics`].

/// `ln Γ(x)` for `x > 0`, by Lanczos' approximation (g = 7, 9 terms:
/// about 15 significant digits), with the reflection formula below 0.5.
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
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized upper incomplete gamma function `Q(a, x) = Γ(a, x) / Γ(a)`.
pub(crate) fn gamma_q(a: f64, x: f64) -> f64 {
    const EPS: f64 = 1e-15;
    const MAX_ITER: usize = 10_000;
    if x <= 0.0 {
        return 1.0;
    }
    let front = -x + a * x.ln() - ln_gamma(a);
    if x < a + 1.0 {
        // P(a, x) by its series; Q = 1 - P.
        let (mut ap, mut sum) = (a, 1.0 / a);
        let mut del = sum;
        for _ in 0..MAX_ITER {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * EPS {
                break;
            }
        }
        (1.0 - sum * front.exp()).clamp(0.0, 1.0)
    } else {
        // Q(a, x) by its continued fraction (modified Lentz).
        let tiny = f64::MIN_POSITIVE / EPS;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..MAX_ITER {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < EPS {
                break;
            }
        }
        (front.exp() * h).clamp(0.0, 1.0)
    }
}

/// The chi-square distribution's survival function: `P(X > x)` with `df`
/// degrees of freedom.
pub(crate) fn chi2_sf(x: f64, df: u32) -> f64 {
    if df == 0 {
        return 1.0;
    }
    gamma_q(f64::from(df) / 2.0, x / 2.0)
}

/// The p-value of the chi-square goodness-of-fit test of `observed` counts
/// against `weights` (any positive scale). Cells with weight 0 are left out
/// (a unit cannot be newly assigned there); with fewer than two cells left,
/// or no observations, there is nothing to test and the answer is 1.
pub(crate) fn srm_p_value(observed: &[u64], weights: &[u32]) -> f64 {
    let cells = || {
        observed
            .iter()
            .zip(weights)
            .filter(|(_, w)| **w > 0)
            .map(|(o, w)| (*o as f64, f64::from(*w)))
    };
    let (n, total_w, k) = cells().fold((0.0, 0.0, 0u32), |(n, tw, k), (o, w)| {
        (n + o, tw + w, k + 1)
    });
    if k < 2 || n == 0.0 {
        return 1.0;
    }
    let stat: f64 = cells()
        .map(|(o, w)| {
            let e = n * w / total_w;
            (o - e) * (o - e) / e
        })
        .sum();
    chi2_sf(stat, k - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, rel: f64) {
        assert!(
            (got - want).abs() <= rel * want.abs(),
            "got {got:e}, want {want:e} (relative tolerance {rel:e})"
        );
    }

    #[test]
    fn even_degrees_of_freedom_match_the_closed_form() {
        // For df = 2m, P(X > x) = exp(-x/2) Σ_{i<m} (x/2)^i / i! exactly
        // (the Poisson sum): an independent check of both branches.
        for df in [2u32, 4, 6, 10, 20, 40] {
            for x in [0.01, 0.5, 1.0, 3.0, 7.5, 15.0, 30.0, 60.0, 120.0] {
                let h = x / 2.0;
                let (mut term, mut sum) = (1.0f64, 1.0f64);
                for i in 1..df / 2 {
                    term *= h / f64::from(i);
                    sum += term;
                }
                close(chi2_sf(x, df), (-h).exp() * sum, 1e-10);
            }
        }
    }

    #[test]
    fn upper_critical_values_of_the_published_table() {
        // NIST/SEMATECH e-Handbook of Statistical Methods, §1.3.6.7.4
        // "Critical Values of the Chi-Square Distribution" (upper tail,
        // three decimals): (df, P(X > x), x). Three decimals of x give the
        // probability to about 1e-3 relative.
        let table = [
            (1, 0.10, 2.706),
            (1, 0.05, 3.841),
            (1, 0.01, 6.635),
            (1, 0.001, 10.828),
            (3, 0.05, 7.815),
            (3, 0.001, 16.266),
            (5, 0.01, 15.086),
            (10, 0.05, 18.307),
            (10, 0.001, 29.588),
        ];
        for (df, p, x) in table {
            close(chi2_sf(x, df), p, 2e-3);
        }
        // scipy.stats.chi2.ppf(0.95, 1) = 3.841458820694124 (the value
        // scipy's documentation and countless tables quote to 16 digits).
        close(chi2_sf(3.841_458_820_694_124, 1), 0.05, 1e-9);
        // df = 1 is erfc(sqrt(x/2)): erfc(2) = 4.677734981047266e-3
        // (Abramowitz & Stegun table 7.1), so x = 8.
        close(chi2_sf(8.0, 1), 4.677_734_981_047_266e-3, 1e-9);
        // Deep in the tail, where 1 - P would lose every digit:
        // erfc(5) = 1.5374597944280349e-12 (A&S 7.1), x = 50.
        close(chi2_sf(50.0, 1), 1.537_459_794_428_035e-12, 1e-7);
    }

    #[test]
    fn goodness_of_fit_against_weights() {
        // Exactly on the weights: statistic 0, p = 1.
        close(srm_p_value(&[500, 500], &[5000, 5000]), 1.0, 1e-12);
        // 520/480 of 1000 at 50/50: chi2 = 1.6 on 1 df -> erfc(sqrt(0.8))
        // (0.20590321073206833 by C99 erfc, Python `math.erfc`).
        close(
            srm_p_value(&[520, 480], &[5000, 5000]),
            0.205_903_210_732_068_3,
            1e-9,
        );
        // A weight-0 variant is left out, whatever it holds.
        assert_eq!(
            srm_p_value(&[520, 480, 7], &[5000, 5000, 0]),
            srm_p_value(&[520, 480], &[5000, 5000])
        );
        // 90/10 at 90/10 is fair; 50/50 at 90/10 is not.
        assert!(srm_p_value(&[900, 100], &[9000, 1000]) > 0.99);
        assert!(srm_p_value(&[500, 500], &[9000, 1000]) < 1e-100);
        // Nothing to compare.
        assert_eq!(srm_p_value(&[0, 0], &[5000, 5000]), 1.0);
        assert_eq!(srm_p_value(&[10], &[10000]), 1.0);
    }
}
