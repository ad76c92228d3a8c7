//! Property tests: on every scheme's own scale, the variants' ranges cover
//! the covered space exactly once, and the conversion of percentages keeps
//! each variant's share to within one unit of the scale.

use super::*;

fn bp(p: &[u32]) -> Vec<Weight> {
    p.iter().map(|&x| Weight(x)).collect()
}

/// Weight sets (basis points, summing to 10000) with awkward shares.
const SETS: &[&[u32]] = &[
    &[5000, 5000],
    &[3333, 3333, 3334],
    &[1, 9999],
    &[0, 2000, 0, 8000],
    &[10000],
    &[1250, 1250, 2500, 5000],
    &[7, 13, 9980],
];

#[test]
fn cumulative_ends_tile_the_scale_and_round_each_boundary() {
    for set in SETS {
        for scale in [1000u64, 10_000, 100_000] {
            let ends = cumulative_ends(&bp(set), Weight(WHOLE), scale);
            assert_eq!(*ends.last().unwrap(), scale, "{set:?} @ {scale}");
            assert!(ends.windows(2).all(|w| w[0] <= w[1]));
            let mut cum = 0u64;
            for (w, end) in set.iter().zip(&ends) {
                cum += u64::from(*w);
                let exact = scale as f64 * cum as f64 / 10_000.0;
                assert!((*end as f64 - exact).abs() <= 0.5, "{set:?} @ {scale}");
            }
        }
        // Coverage scales every boundary.
        let half = cumulative_ends(&bp(set), Weight(5000), 10_000);
        assert_eq!(*half.last().unwrap(), 5000);
    }
}

/// Every bucket value of the integer schemes' choice functions lands in
/// exactly the variant whose range holds it, zero-weight variants in none.
#[test]
fn integer_schemes_cover_each_bucket_exactly_once() {
    for set in SETS {
        let n = set.len();
        // Optimizely and NGINX-style end-of-range (exclusive ends).
        let ends = cumulative_ends(&bp(set), Weight(WHOLE), 10_000);
        let mut counts = vec![0u64; n];
        for b in 0..10_000u32 {
            counts[optimizely::choose(b, &ends).expect("full coverage")] += 1;
        }
        let mut prev = 0;
        for (i, e) in ends.iter().enumerate() {
            assert_eq!(counts[i], e - prev, "optimizely {set:?}");
            prev = *e;
        }
        // LaunchDarkly, 100,000ths.
        let ends = cumulative_ends(&bp(set), Weight(WHOLE), 100_000);
        let mut counts = vec![0u64; n];
        for b in 0..100_000u64 {
            counts[launchdarkly::choose(b, &ends)] += 1;
        }
        let mut prev = 0;
        for (i, e) in ends.iter().enumerate() {
            assert_eq!(counts[i], e - prev, "launchdarkly {set:?}");
            prev = *e;
        }
        // Unleash: targets 1..=1000, inclusive ends.
        let ends = cumulative_ends(&bp(set), Weight(WHOLE), 1000);
        let mut counts = vec![0u64; n];
        for t in 1..=1000u32 {
            counts[unleash::choose(t, &ends).expect("target <= total")] += 1;
        }
        let mut prev = 0;
        for (i, e) in ends.iter().enumerate() {
            assert_eq!(counts[i], e - prev, "unleash {set:?}");
            prev = *e;
        }
    }
}

/// NGINX: the per-line thresholds partition 0..=u32::MAX (with the `*`
/// line), checked at every boundary and on either side of it.
#[test]
fn nginx_lines_partition_the_hash_space() {
    for set in SETS {
        let c = Chooser::new(
            &Bucketing::Nginx {
                key: "${unit}".into(),
                vendor_weights: None,
            },
            &bp(set),
            Weight(WHOLE),
        )
        .unwrap()
        .unwrap();
        let Chooser::Nginx {
            thresholds: t,
            variants,
            ..
        } = &c
        else {
            unreachable!()
        };
        assert_eq!(*t.last().unwrap(), 0, "last line is *");
        for w in t[..t.len() - 1].windows(2) {
            assert!(w[0] < w[1]);
        }
        for &edge in &t[..t.len() - 1] {
            for h in [edge - 1, edge, edge.saturating_add(1)] {
                assert!(nginx::choose(h, t).is_some());
            }
        }
        assert!(nginx::choose(u32::MAX, t).is_some());
        assert!(nginx::choose(0, t).is_some());
        // No line for a zero-weight variant.
        for (i, w) in set.iter().enumerate() {
            assert_eq!(*w == 0, !variants.contains(&i));
        }
    }
}

/// GrowthBook: every hash value of v1 (0..1000) and v2 (0..10000) is in
/// exactly one range at full coverage.
#[test]
fn growthbook_ranges_cover_each_hash_value_once() {
    for set in SETS {
        let f: Vec<f64> = set.iter().map(|w| f64::from(*w) / 10_000.0).collect();
        let r = growthbook::ranges(&f, 1.0);
        for scale in [1000u32, 10_000] {
            for k in 0..scale {
                let n = f64::from(k) / f64::from(scale);
                let owners = r.iter().filter(|&&(lo, hi)| n >= lo && n < hi).count();
                assert_eq!(owners, 1, "{set:?} k={k}/{scale}");
            }
        }
    }
}

/// A draw over many ids lands in every non-empty variant and, outside a
/// vendor's coverage, in none; the draw is a pure function of the id.
#[test]
fn every_scheme_draws_deterministically_within_its_coverage() {
    let schemes = [
        Bucketing::Growthbook {
            seed: "exp1".into(),
            hash_version: 2,
            vendor_weights: None,
        },
        Bucketing::Growthbook {
            seed: "exp1".into(),
            hash_version: 1,
            vendor_weights: None,
        },
        Bucketing::Statsig {
            salt: "s".into(),
            rule_salt: Some("r".into()),
            vendor_weights: None,
        },
        Bucketing::Optimizely {
            experiment_id: "12345".into(),
            vendor_weights: None,
        },
        Bucketing::Unleash {
            group_id: "t".into(),
            vendor_weights: None,
        },
        Bucketing::Nginx {
            key: "${unit}AAA".into(),
            vendor_weights: None,
        },
    ];
    let w = bp(&[2000, 3000, 5000]);
    for b in &schemes {
        let c = Chooser::new(b, &w, Weight(5000)).unwrap().unwrap();
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            let u = format!("user-{i}");
            let d = c.draw(u.as_bytes());
            assert_eq!(d, c.draw(u.as_bytes()));
            counts[d.variant.map_or(3, |v| v)] += 1;
        }
        // Half covered, within a wide tolerance; each arm near its share.
        assert!((1700..2300).contains(&counts[3]), "{b:?}: {counts:?}");
        for (i, share) in [0.2, 0.3, 0.5].iter().enumerate() {
            let want = 2000.0 * share;
            assert!(
                (f64::from(counts[i]) - want).abs() < 0.25 * want,
                "{b:?}: {counts:?}"
            );
        }
    }
}

#[test]
fn launchdarkly_draw_uses_its_own_scale() {
    let c = Chooser::new(
        &Bucketing::Launchdarkly {
            flag_key: "hashKey".into(),
            salt: "saltyA".into(),
            seed: None,
            vendor_weights: Some(vec![VendorWeight(42_157.0), VendorWeight(57_843.0)]),
        },
        &bp(&[5000, 5000]),
        Weight(WHOLE),
    )
    .unwrap()
    .unwrap();
    // userKeyA's bucket is 0.42157587 (the SDK spec): just past 42157.
    assert_eq!(
        c.draw(b"userKeyA"),
        Draw {
            variant: Some(1),
            bucket: 42_157
        }
    );
}

#[test]
fn invalid_vendor_settings_are_refused() {
    let w = bp(&[5000, 5000]);
    let ld = |cov| {
        Chooser::new(
            &Bucketing::Launchdarkly {
                flag_key: "f".into(),
                salt: "s".into(),
                seed: None,
                vendor_weights: None,
            },
            &w,
            Weight(cov),
        )
    };
    assert!(ld(10_000).is_ok());
    assert_eq!(ld(5000), Err(SchemeError::Coverage("launchdarkly")));
    let opt = |vw: Vec<f64>| {
        Chooser::new(
            &Bucketing::Optimizely {
                experiment_id: "1".into(),
                vendor_weights: Some(vw.into_iter().map(VendorWeight).collect()),
            },
            &w,
            Weight(WHOLE),
        )
    };
    assert!(opt(vec![5000.0, 5000.0]).is_ok());
    assert!(matches!(
        opt(vec![5000.0]),
        Err(SchemeError::VendorWeightsLength { .. })
    ));
    assert!(matches!(
        opt(vec![6000.0, 5000.0]),
        Err(SchemeError::VendorWeightsSum { .. })
    ));
    assert!(matches!(
        opt(vec![0.5, 9999.5]),
        Err(SchemeError::NotWhole(_))
    ));
    assert_eq!(
        Chooser::new(&Bucketing::Cohort, &w, Weight(WHOLE)),
        Ok(None)
    );
}

/// growthbook-python `tests/cases.json` (specVersion 0.7.1) section `run`:
/// whole experiments, attribute `id`, hash version 1 and the experiment key
/// as seed unless given. `None`: not in the experiment (coverage).
#[test]
fn growthbook_experiments_match_cases_json_run() {
    let gb = |seed: &str, v: u8, vendor: Option<Vec<f64>>| Bucketing::Growthbook {
        seed: seed.into(),
        hash_version: v,
        vendor_weights: vendor.map(|w| w.into_iter().map(VendorWeight).collect()),
    };
    let even = bp(&[5000, 5000]);
    let third = 1.0 / 3.0;
    type Case<'a> = (&'a str, Bucketing, Vec<Weight>, u32, &'a str, Option<usize>);
    let cases: Vec<Case<'_>> = vec![
        (
            "default weights",
            gb("my-test", 1, None),
            even.clone(),
            10_000,
            "1",
            Some(1),
        ),
        (
            "default weights",
            gb("my-test", 1, None),
            even.clone(),
            10_000,
            "2",
            Some(0),
        ),
        (
            "default weights",
            gb("my-test", 1, None),
            even.clone(),
            10_000,
            "3",
            Some(0),
        ),
        (
            "default weights",
            gb("my-test", 1, None),
            even.clone(),
            10_000,
            "4",
            Some(1),
        ),
        (
            "default weights",
            gb("my-test", 1, None),
            even.clone(),
            10_000,
            "5",
            Some(1),
        ),
        (
            "default weights",
            gb("my-test", 1, None),
            even.clone(),
            10_000,
            "6",
            Some(1),
        ),
        (
            "default weights",
            gb("my-test", 1, None),
            even.clone(),
            10_000,
            "7",
            Some(0),
        ),
        (
            "default weights",
            gb("my-test", 1, None),
            even.clone(),
            10_000,
            "8",
            Some(1),
        ),
        (
            "default weights",
            gb("my-test", 1, None),
            even.clone(),
            10_000,
            "9",
            Some(0),
        ),
        (
            "uneven weights",
            gb("my-test", 1, None),
            bp(&[1000, 9000]),
            10_000,
            "1",
            Some(1),
        ),
        (
            "uneven weights",
            gb("my-test", 1, None),
            bp(&[1000, 9000]),
            10_000,
            "3",
            Some(0),
        ),
        (
            "uneven weights",
            gb("my-test", 1, None),
            bp(&[1000, 9000]),
            10_000,
            "7",
            Some(0),
        ),
        (
            "uneven weights",
            gb("my-test", 1, None),
            bp(&[1000, 9000]),
            10_000,
            "9",
            Some(1),
        ),
        (
            "coverage",
            gb("my-test", 1, None),
            even.clone(),
            4000,
            "1",
            None,
        ),
        (
            "coverage",
            gb("my-test", 1, None),
            even.clone(),
            4000,
            "2",
            Some(0),
        ),
        (
            "coverage",
            gb("my-test", 1, None),
            even.clone(),
            4000,
            "3",
            Some(0),
        ),
        (
            "coverage",
            gb("my-test", 1, None),
            even.clone(),
            4000,
            "4",
            None,
        ),
        (
            "coverage",
            gb("my-test", 1, None),
            even.clone(),
            4000,
            "5",
            Some(1),
        ),
        (
            "coverage",
            gb("my-test", 1, None),
            even.clone(),
            4000,
            "6",
            None,
        ),
        (
            "coverage",
            gb("my-test", 1, None),
            even.clone(),
            4000,
            "7",
            Some(0),
        ),
        (
            "coverage",
            gb("my-test", 1, None),
            even.clone(),
            4000,
            "8",
            Some(1),
        ),
        (
            "coverage",
            gb("my-test", 1, None),
            even.clone(),
            4000,
            "9",
            None,
        ),
        (
            "three way test",
            gb("my-test", 1, Some(vec![third; 3])),
            bp(&[3333, 3333, 3334]),
            10_000,
            "1",
            Some(2),
        ),
        (
            "three way test",
            gb("my-test", 1, Some(vec![third; 3])),
            bp(&[3333, 3333, 3334]),
            10_000,
            "2",
            Some(0),
        ),
        (
            "three way test",
            gb("my-test", 1, Some(vec![third; 3])),
            bp(&[3333, 3333, 3334]),
            10_000,
            "5",
            Some(1),
        ),
        (
            "three way test",
            gb("my-test", 1, Some(vec![third; 3])),
            bp(&[3333, 3333, 3334]),
            10_000,
            "6",
            Some(2),
        ),
        (
            "three way test",
            gb("my-test", 1, Some(vec![third; 3])),
            bp(&[3333, 3333, 3334]),
            10_000,
            "8",
            Some(1),
        ),
        (
            "test name - my-test-3",
            gb("my-test-3", 1, None),
            even.clone(),
            10_000,
            "1",
            Some(0),
        ),
        (
            "uses seed",
            gb("foo", 2, None),
            even.clone(),
            10_000,
            "1",
            Some(1),
        ),
        (
            "uses seed with weights/coverage",
            gb("foo", 2, None),
            even.clone(),
            9900,
            "1",
            Some(1),
        ),
    ];
    for (name, b, w, cov, id, want) in cases {
        let c = Chooser::new(&b, &w, Weight(cov)).unwrap().unwrap();
        assert_eq!(c.draw(id.as_bytes()).variant, want, "{name} id={id}");
    }
}
