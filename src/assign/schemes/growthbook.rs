//! GrowthBook's bucketing, as its SDKs compute it (JS `util.ts` `hash`,
//! `getBucketRanges`, `chooseVariation`; Python `growthbook.py` the same):
//! - hash version 1: `fnv1a32(value + seed) % 1000 / 1000`;
//! - hash version 2: `fnv1a32(decimal(fnv1a32(seed + value))) % 10000 / 10000`;
//! - ranges: variant i owns `[c_i, c_i + coverage × w_i)` where `c_i` is the
//!   running float sum of the weights before it; a hash in no range (the
//!   coverage gap) is not in the experiment.
//!
//! The SDKs hash the string's UTF-16 code units (`charCodeAt`), each XORed
//! in whole, so a non-ASCII id hashes differently from its UTF-8 bytes. A
//! unit that is not valid UTF-8 is hashed byte by byte (what the SDKs would
//! see after a Latin-1 decode). (The Python SDK iterates code points, which
//! differs from JS only for characters outside the BMP.)

/// The code units GrowthBook's JS SDK hashes for `s`.
fn units(s: &[u8]) -> Vec<u32> {
    match std::str::from_utf8(s) {
        Ok(s) => s.encode_utf16().map(u32::from).collect(),
        Err(_) => s.iter().map(|b| u32::from(*b)).collect(),
    }
}

/// GrowthBook's `hash(seed, value, version)`; `None` for an unknown version.
/// Returns the integer bucket and its scale (1000 for v1, 10000 for v2).
pub fn bucket(seed: &str, value: &[u8], version: u8) -> Option<(u32, u32)> {
    match version {
        1 => {
            let mut u = units(value);
            u.extend(units(seed.as_bytes()));
            Some((super::hashes::fnv1a32(u) % 1000, 1000))
        }
        2 => {
            let mut u = units(seed.as_bytes());
            u.extend(units(value));
            let inner = super::hashes::fnv1a32(u).to_string();
            Some((
                super::hashes::fnv1a32(inner.bytes().map(u32::from)) % 10000,
                10000,
            ))
        }
        _ => None,
    }
}

/// GrowthBook's `hash()` as the float the SDKs compare with the ranges.
pub fn hash(seed: &str, value: &[u8], version: u8) -> Option<f64> {
    bucket(seed, value, version).map(|(n, scale)| f64::from(n) / f64::from(scale))
}

/// `getBucketRanges(weights.len(), coverage, weights)` for weights that sum
/// to 1 (cohort's are validated; the SDK would fall back to equal weights).
pub fn ranges(weights: &[f64], coverage: f64) -> Vec<(f64, f64)> {
    let coverage = coverage.clamp(0.0, 1.0);
    let mut cumulative = 0.0;
    weights
        .iter()
        .map(|w| {
            let start = cumulative;
            cumulative += w;
            (start, start + coverage * w)
        })
        .collect()
}

/// `chooseVariation(n, ranges)`: the first range holding `n`.
pub fn choose(n: f64, ranges: &[(f64, f64)]) -> Option<usize> {
    ranges.iter().position(|&(lo, hi)| n >= lo && n < hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Ranges = &'static [(f64, f64)];

    // Golden vectors: growthbook/growthbook-python `tests/cases.json`
    // (specVersion 0.7.1, commit c444b7df05dadb097018755c9f71ca356570a9fa),
    // the shared SDK test suite; sections `hash`, `getBucketRange`,
    // `chooseVariation`. Each row is [seed, value, version, expected].
    #[test]
    fn hash_matches_cases_json() {
        let cases: &[(&str, &str, u8, Option<f64>)] = &[
            ("", "a", 1, Some(0.22)),
            ("", "b", 1, Some(0.077)),
            ("b", "a", 1, Some(0.946)),
            ("ef", "d", 1, Some(0.652)),
            ("asdf", "8952klfjas09ujk", 1, Some(0.549)),
            ("", "123", 1, Some(0.011)),
            ("", "___)((*\":&", 1, Some(0.563)),
            ("seed", "a", 2, Some(0.0505)),
            ("seed", "b", 2, Some(0.2696)),
            ("foo", "ab", 2, Some(0.2575)),
            ("foo", "def", 2, Some(0.2019)),
            ("89123klj", "8952klfjas09ujkasdf", 2, Some(0.124)),
            ("90850943850283058242805", "123", 2, Some(0.7516)),
            ("()**(%$##$%#$#", "___)((*\":&", 2, Some(0.0128)),
            ("abc", "def", 99, None),
        ];
        for (seed, value, version, want) in cases {
            assert_eq!(
                hash(seed, value.as_bytes(), *version),
                *want,
                "{seed:?} {value:?} v{version}"
            );
        }
    }

    #[test]
    fn bucket_ranges_match_cases_json() {
        // [name, (numVariations, coverage, weights), expected ranges]; rows
        // with invalid weights (the SDK's equal-weight fallback) are left
        // out: cohort's weights always sum to 100 %.
        let cases: &[(&str, f64, &[f64], Ranges)] = &[
            ("normal 50/50", 1.0, &[0.5, 0.5], &[(0.0, 0.5), (0.5, 1.0)]),
            (
                "reduced coverage",
                0.5,
                &[0.5, 0.5],
                &[(0.0, 0.25), (0.5, 0.75)],
            ),
            ("zero coverage", 0.0, &[0.5, 0.5], &[(0.0, 0.0), (0.5, 0.5)]),
            (
                "4 variations",
                1.0,
                &[0.25, 0.25, 0.25, 0.25],
                &[(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)],
            ),
            (
                "uneven weights",
                1.0,
                &[0.4, 0.6],
                &[(0.0, 0.4), (0.4, 1.0)],
            ),
            (
                "uneven weights, 3 variations",
                1.0,
                &[0.2, 0.3, 0.5],
                &[(0.0, 0.2), (0.2, 0.5), (0.5, 1.0)],
            ),
            (
                "uneven weights, reduced coverage, 3 variations",
                0.2,
                &[0.2, 0.3, 0.5],
                &[(0.0, 0.04), (0.2, 0.26), (0.5, 0.6)],
            ),
            (
                "negative coverage",
                -0.2,
                &[0.5, 0.5],
                &[(0.0, 0.0), (0.5, 0.5)],
            ),
            (
                "coverage above 1",
                1.5,
                &[0.5, 0.5],
                &[(0.0, 0.5), (0.5, 1.0)],
            ),
        ];
        for (name, coverage, weights, want) in cases {
            let got = ranges(weights, *coverage);
            assert_eq!(got.len(), want.len(), "{name}");
            for (g, w) in got.iter().zip(want.iter()) {
                // cases.json lists the ranges rounded to 4 decimals (the JS
                // test compares after rounding).
                let r = |x: f64| (x * 10000.0).round() / 10000.0;
                assert_eq!((r(g.0), r(g.1)), *w, "{name}");
            }
        }
    }

    #[test]
    fn choose_variation_matches_cases_json() {
        let even: Ranges = &[(0.0, 0.5), (0.5, 1.0)];
        let reduced: Ranges = &[(0.0, 0.25), (0.5, 0.75)];
        let zero: Ranges = &[(0.0, 0.5), (0.5, 0.5), (0.5, 1.0)];
        let cases: &[(f64, Ranges, Option<usize>)] = &[
            (0.2, even, Some(0)),
            (0.4, even, Some(0)),
            (0.6, even, Some(1)),
            (0.8, even, Some(1)),
            (0.0, even, Some(0)),
            (0.5, even, Some(1)),
            (0.2, reduced, Some(0)),
            (0.4, reduced, None),
            (0.6, reduced, Some(1)),
            (0.8, reduced, None),
            (0.25, reduced, None),
            (0.5, reduced, Some(1)),
            (0.5, zero, Some(2)),
        ];
        for (n, r, want) in cases {
            assert_eq!(choose(*n, r), *want, "n={n} ranges={r:?}");
        }
    }

    #[test]
    fn non_ascii_ids_hash_utf16_code_units() {
        // "é" is one UTF-16 unit (0xE9) but two UTF-8 bytes: the hashes differ.
        let utf16 = super::super::hashes::fnv1a32([0xe9]);
        let bytes = super::super::hashes::fnv1a32([0xc3, 0xa9]);
        assert_ne!(utf16, bytes);
        let (n, _) = bucket("", "é".as_bytes(), 1).unwrap();
        assert_eq!(n, utf16 % 1000);
    }
}
