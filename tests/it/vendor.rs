//! Vendor-compatible bucketing end to end: a proxy with each scheme stamps
//! the variant the vendor's own algorithm gives, checked against the
//! vendors' published test vectors (sources below, as in the unit tests of
//! `src/assign/schemes/`), and stickiness across a ramp holds in every mode.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::util::*;

/// One two-variant experiment on `/<name>` with `bucketing` (a flow map).
fn experiment(name: &str, bucketing: &str, control: &str, treatment: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    routes: [/{name}]\n    bucketing: {bucketing}\n{extra}    variants:\n      - {{ name: control, upstream: old, weight: {control} }}\n      - {{ name: treatment, upstream: new, weight: {treatment} }}\n"
    )
}

/// (unit, expected variant or "epoch0" for outside the vendor's coverage).
type Expect = &'static [(&'static str, &'static str)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scheme_stamps_what_the_vendor_computes() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    // Each case puts a vendor test vector's bucket right at a boundary, so
    // an off-by-one in the hash, the scale or the comparison moves it.
    let cases: &[(&str, String, Expect)] = &[
        // growthbook-python tests/cases.json `hash`: ("seed", "a", v2) =
        // 0.0505, ("seed", "b", v2) = 0.2696. Ranges are [start, end).
        (
            "gb-in",
            experiment(
                "gb-in",
                "{ scheme: growthbook, seed: seed, hash_version: 2 }",
                "5.06",
                "94.94",
                "",
            ),
            &[("a", "control"), ("b", "treatment")],
        ),
        (
            "gb-edge",
            experiment(
                "gb-edge",
                "{ scheme: growthbook, seed: seed, hash_version: 2 }",
                "5.05",
                "94.95",
                "",
            ),
            &[("a", "treatment")],
        ),
        // ("", "123", v1) = 0.011 and ("", "a", v1) = 0.22, reduced
        // coverage 0.5 (ranges [0, 0.1), [0.2, 0.6)): 0.011 in the first,
        // 0.22 in the second, and "b" = 0.077 in the first.
        (
            "gb-v1",
            experiment(
                "gb-v1",
                "{ scheme: growthbook, seed: \"\", hash_version: 1 }",
                "20",
                "80",
                "    salt: gb-v1\n    coverage: 0.5\n",
            ),
            &[("123", "control"), ("a", "treatment"), ("b", "control")],
        ),
        // launchdarkly ruby-server-sdk spec/impl/evaluator_bucketing_spec.rb:
        // userKeyA 0.42157587, userKeyB 0.6708485, userKeyC 0.10343106
        // (flag hashKey, salt saltyA); 42.16 % ends at 42160 > 42157.
        (
            "ld",
            experiment(
                "ld",
                "{ scheme: launchdarkly, flag_key: hashKey, salt: saltyA }",
                "42.16",
                "57.84",
                "",
            ),
            &[
                ("userKeyA", "control"),
                ("userKeyB", "treatment"),
                ("userKeyC", "control"),
            ],
        ),
        (
            "ld-edge",
            experiment(
                "ld-edge",
                "{ scheme: launchdarkly, flag_key: hashKey, salt: saltyA }",
                "42.15",
                "57.85",
                "",
            ),
            &[("userKeyA", "treatment")],
        ),
        // With seed 61: 0.09801207, 0.14483777, 0.9242641.
        (
            "ld-seed",
            experiment(
                "ld-seed",
                "{ scheme: launchdarkly, flag_key: other, seed: 61 }",
                "14.49",
                "85.51",
                "",
            ),
            &[
                ("userKeyA", "control"),
                ("userKeyB", "control"),
                ("userKeyC", "treatment"),
            ],
        ),
        // optimizely python-sdk tests/test_bucketing.py: ppid1 -> 5254,
        // ppid2 -> 4299, ppid3 -> 5439 in experiment 1886780721; 52.54 %
        // ends at 5254, exclusive.
        (
            "opt",
            experiment(
                "opt",
                "{ scheme: optimizely, experiment_id: 1886780721 }",
                "52.54",
                "47.46",
                "",
            ),
            &[
                ("ppid1", "treatment"),
                ("ppid2", "control"),
                ("ppid3", "treatment"),
            ],
        ),
        // unleash-client-java StrategyUtilsTest: "123" in group gr1 -> 73,
        // "999" in groupX -> 25; rollout (coverage) includes normalized <= %.
        (
            "unl-in",
            experiment(
                "unl-in",
                "{ scheme: unleash, group_id: gr1 }",
                "50",
                "50",
                "    coverage: 0.73\n",
            ),
            &[("123", "in")],
        ),
        (
            "unl-out",
            experiment(
                "unl-out",
                "{ scheme: unleash, group_id: groupX }",
                "50",
                "50",
                "    coverage: 0.24\n",
            ),
            &[("999", "epoch0")],
        ),
        // statsig-io/go-sdk tests on download_config_specs.json's
        // sample_experiment (groups user_bucket < 500 control, < 1000
        // test): some_user_id and statsig_user control, 123 test.
        (
            "st-sdk",
            experiment(
                "st-sdk",
                "{ scheme: statsig, salt: f8aeba58-18fb-4f36-9bbd-4c611447a912 }",
                "50",
                "50",
                "",
            ),
            &[
                ("some_user_id", "control"),
                ("statsig_user", "control"),
                ("123", "treatment"),
            ],
        ),
        // Unleash/client-specification 08-variants.json: Feature.Variants.B
        // (weights 1, 1): userId "2" -> variant2, "0" -> variant1.
        (
            "unl-var",
            experiment(
                "unl-var",
                "{ scheme: unleash, group_id: Feature.Variants.B, vendor_weights: [1, 1] }",
                "50",
                "50",
                "",
            ),
            &[("2", "treatment"), ("0", "control")],
        ),
        (
            "unl-edge",
            experiment(
                "unl-edge",
                "{ scheme: unleash, group_id: groupX }",
                "50",
                "50",
                "    coverage: 0.25\n",
            ),
            &[("999", "in")],
        ),
    ];
    let mut yaml = String::new();
    for (_, x, _) in cases {
        yaml.push_str(x);
    }
    // nginx-tests split_clients.t: `split_clients $connection` with 51.2 %,
    // 10 %, * over connections 1..=20 gives 12 / 2 / 6.
    yaml.push_str("  - name: ngx\n    routes: [/ngx]\n    bucketing: { scheme: nginx, key: \"${unit}\" }\n    variants:\n      - { name: one, upstream: old, weight: 51.2 }\n      - { name: two, upstream: new, weight: 10 }\n      - { name: three, upstream: new, weight: 38.8 }\n");
    // Statsig: group = sha256("exp-salt." + unit)[..8] big-endian % 1000
    // against 1000ths (user_bucket < 500), computed here independently.
    yaml.push_str(&experiment(
        "st",
        "{ scheme: statsig, salt: exp-salt }",
        "50",
        "50",
        "",
    ));
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &config(&ups, &yaml));
    let client = TestClient::new();

    for (name, _, expect) in cases {
        for (unit, want) in expect.iter() {
            let r = client
                .post(cohort.addr, &format!("/{name}"), Some(unit))
                .await;
            assert_eq!(r.status.as_u16(), 200, "{name} {unit}");
            match *want {
                "epoch0" => assert_eq!((r.variant(), r.epoch()), ("control", 0), "{name} {unit}"),
                "in" => assert_eq!(r.epoch(), 1, "{name} {unit}"),
                v => assert_eq!((r.variant(), r.epoch()), (v, 1), "{name} {unit}"),
            }
        }
    }

    let mut counts: HashMap<String, usize> = HashMap::new();
    for c in 1..=20 {
        let r = client.post(cohort.addr, "/ngx", Some(&c.to_string())).await;
        *counts.entry(r.variant().to_string()).or_default() += 1;
    }
    let got: Vec<usize> = ["one", "two", "three"]
        .iter()
        .map(|v| counts.get(*v).copied().unwrap_or(0))
        .collect();
    assert_eq!(got, [12, 2, 6], "{counts:?}");

    for i in 0..200 {
        let unit = format!("st-{i}");
        let d = Sha256::digest(format!("exp-salt.{unit}").as_bytes());
        let h = u64::from_be_bytes(d[..8].try_into().unwrap());
        let want = if h % 1000 < 500 {
            "control"
        } else {
            "treatment"
        };
        let r = client.post(cohort.addr, "/st", Some(&unit)).await;
        assert_eq!(r.variant(), want, "{unit}");
    }

    // The access log carries the vendor's own bucket: optimizely's 0..10000.
    assert!(cohort.terminate().success());
    let log = dir.access_log();
    let ppid1 = log
        .iter()
        .find(|l| l["experiment"] == "opt" && l["unit"] == "ppid1")
        .expect("a log line for ppid1");
    assert_eq!(ppid1["bucket"], 5254);
    assert_eq!(ppid1["reason"], "new");
    let out = log
        .iter()
        .find(|l| l["experiment"] == "unl-out")
        .expect("a log line for unl-out");
    assert_eq!(out["reason"], "not_covered");
}

/// Every scheme, 50/50 then a ramp to 20/80 and a switch of the scheme's
/// parameters: stored units keep their variant and epoch, new units get the
/// new epoch and follow the new draw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stickiness_across_a_ramp_holds_in_every_mode() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let schemes = [
        (
            "gb",
            "{ scheme: growthbook, seed: s1, hash_version: 2 }",
            "{ scheme: growthbook, seed: s1, hash_version: 1 }",
        ),
        (
            "ld",
            "{ scheme: launchdarkly, flag_key: f, salt: s1 }",
            "{ scheme: launchdarkly, flag_key: f, seed: 7 }",
        ),
        (
            "st",
            "{ scheme: statsig, salt: s1 }",
            "{ scheme: statsig, salt: s2 }",
        ),
        (
            "opt",
            "{ scheme: optimizely, experiment_id: \"1\" }",
            "{ scheme: optimizely, experiment_id: \"2\" }",
        ),
        (
            "unl",
            "{ scheme: unleash, group_id: g1 }",
            "{ scheme: unleash, group_id: g2 }",
        ),
        (
            "ngx",
            "{ scheme: nginx, key: \"${unit}AAA\" }",
            "{ scheme: nginx, key: \"${unit}BBB\" }",
        ),
        (
            "plain",
            "{ scheme: cohort }",
            "{ scheme: growthbook, seed: plain }",
        ),
    ];
    let cfg = |step: usize| {
        let mut y = String::new();
        for (name, first, second) in &schemes {
            let (b, c, t) = match step {
                0 => (first, "50", "50"),
                1 => (first, "20", "80"),
                _ => (second, "20", "80"),
            };
            y.push_str(&experiment(name, b, c, t, ""));
        }
        config(&ups, &y)
    };
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &cfg(0));
    let client = TestClient::new();
    let units = users("sticky", 120);
    let mut first = HashMap::new();
    for (name, _, _) in &schemes {
        for u in &units {
            let r = client.post(cohort.addr, &format!("/{name}"), Some(u)).await;
            assert_eq!(r.epoch(), 1, "{name} {u}");
            first.insert((name.to_string(), u.clone()), r.variant().to_string());
        }
        let treated = units
            .iter()
            .filter(|u| first[&(name.to_string(), (*u).clone())] == "treatment")
            .count();
        assert!(
            (30..=90).contains(&treated),
            "{name}: {treated} of 120 treated at 50/50"
        );
    }
    for step in [1, 2] {
        dir.write_config(&cfg(step));
        cohort.wait_reloads(step);
        for (name, _, _) in &schemes {
            for u in &units {
                let r = client.post(cohort.addr, &format!("/{name}"), Some(u)).await;
                assert_eq!(
                    (r.variant(), r.epoch()),
                    (first[&(name.to_string(), u.clone())].as_str(), 1),
                    "{name} {u} after step {step}"
                );
            }
            let fresh = users(&format!("fresh{step}-{name}"), 100);
            let mut treated = 0;
            for u in &fresh {
                let r = client.post(cohort.addr, &format!("/{name}"), Some(u)).await;
                assert_eq!(r.epoch(), 1 + step as u32, "{name} {u}");
                treated += usize::from(r.variant() == "treatment");
            }
            assert!(
                treated >= 60,
                "{name}: {treated} of 100 new units treated at 20/80"
            );
        }
    }
}

/// `cohort import` of GrowthBook sticky-bucket documents and a CSV, then
/// serving: every imported unit is served its imported variant as a stored
/// epoch-1 assignment, whatever the current draw says; a bad file imports
/// nothing; a running proxy's store is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_then_serve_keeps_every_imported_variant() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let yaml = config(
        &ups,
        &experiment(
            "mig",
            "{ scheme: growthbook, seed: mig, hash_version: 2 }",
            "50",
            "50",
            "",
        ),
    );
    let dir = TestDir::new();
    dir.write_config(&yaml);
    let cfg = dir.config_path();
    let cfg = cfg.to_str().unwrap();

    // GrowthBook: 40 units in variation "1" (treatment), under bucket
    // versions 0 and 1 (the higher one wins), keyed as the SDKs save them.
    let mut docs = serde_json::Map::new();
    for i in 0..40 {
        let unit = format!("gb-{i}");
        docs.insert(
            format!("id||{unit}"),
            serde_json::json!({
                "attributeName": "id",
                "attributeValue": unit,
                "assignments": { "gb-exp__0": "0", "gb-exp__1": "1" },
            }),
        );
    }
    let gb = dir.path().join("sticky.json");
    std::fs::write(&gb, serde_json::Value::Object(docs).to_string()).unwrap();
    let (code, out, err) = cohort_cmd(&[
        "import",
        "--config",
        cfg,
        "--experiment",
        "mig",
        "--growthbook",
        gb.to_str().unwrap(),
        "--experiment-key",
        "gb-exp",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("40 recorded, 0 already stored"), "{out}");

    // A CSV with a bad line imports nothing.
    let csv = dir.path().join("assignments.csv");
    std::fs::write(&csv, "unit,variant\ncsv-0,control\ncsv-1,nonexistent\n").unwrap();
    let (code, _, err) = cohort_cmd(&[
        "import",
        "-c",
        cfg,
        "--experiment",
        "mig",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 3") && err.contains("nothing imported"),
        "{err}"
    );

    // The fixed CSV: 40 units in control, plus gb-0 again (already stored:
    // it keeps treatment).
    let mut text = String::from("unit,variant\n");
    for i in 0..40 {
        text.push_str(&format!("csv-{i},control\n"));
    }
    text.push_str("gb-0,control\n");
    std::fs::write(&csv, text).unwrap();
    let (code, out, err) = cohort_cmd(&[
        "import",
        "-c",
        cfg,
        "--experiment",
        "mig",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("40 recorded, 1 already stored"), "{out}");

    let cohort = Cohort::start(&dir, &yaml);
    let client = TestClient::new();
    for (prefix, want) in [("gb", "treatment"), ("csv", "control")] {
        for i in 0..40 {
            let r = client
                .post(cohort.addr, "/mig", Some(&format!("{prefix}-{i}")))
                .await;
            assert_eq!((r.variant(), r.epoch()), (want, 1), "{prefix}-{i}");
        }
    }
    let fresh = client.post(cohort.addr, "/mig", Some("fresh")).await;
    assert_eq!(fresh.epoch(), 1);
    // history names the scheme the unit's epoch drew with.
    let (code, out, err) = cohort_cmd(&[
        "history",
        "-c",
        cfg,
        "--experiment",
        "mig",
        "--unit",
        "fresh",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(r#"bucketing {"scheme":"growthbook","seed":"mig","hash_version":2}"#),
        "{out}"
    );
    // The store is the running proxy's: import refuses it.
    let (code, _, err) = cohort_cmd(&[
        "import",
        "-c",
        cfg,
        "--experiment",
        "mig",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("in use") && err.contains("stop it first"),
        "{err}"
    );
    assert!(cohort.terminate().success());
    let log = dir.access_log();
    let imported: Vec<_> = log.iter().filter(|l| l["unit"] != "fresh").collect();
    assert_eq!(imported.len(), 80);
    assert!(imported
        .iter()
        .all(|l| l["reason"] == "stored" && l["first_exposure"] == false));
    let fresh = log.iter().find(|l| l["unit"] == "fresh").unwrap();
    assert_eq!(fresh["reason"], "new");
}

/// A rule with GrowthBook fractions that JSON number parsing could read
/// back a bit off: a restart on the same file continues epoch 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_vendor_fractions_keeps_the_epoch() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let yaml = config(
        &ups,
        &experiment(
            "frac",
            "{ scheme: growthbook, seed: frac, vendor_weights: [0.21043244536122074, 0.7895675546387793] }",
            "21.04",
            "78.96",
            "",
        ),
    );
    let dir = TestDir::new();
    let client = TestClient::new();
    let cohort = Cohort::start(&dir, &yaml);
    assert_eq!(
        client.post(cohort.addr, "/frac", Some("u1")).await.epoch(),
        1
    );
    assert!(cohort.terminate().success());
    let cohort = Cohort::start(&dir, &yaml);
    assert_eq!(
        client.post(cohort.addr, "/frac", Some("u2")).await.epoch(),
        1
    );
    assert!(
        !cohort.stderr().contains("NEW EPOCH"),
        "{}",
        cohort.stderr()
    );
}
