//! Operator safety: the admin API, the kill switch, overrides, coverage,
//! disabled variants, `cohort plan` and `cohort history`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::*;

const WAIT: Duration = Duration::from_secs(5);

/// The public coverage contract, recomputed independently.
fn coverage_bucket(salt: &str, unit: &str) -> u32 {
    bucket(&format!("coverage:{salt}"), unit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token_and_never_logs_it() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let cohort = Cohort::start(
        &dir,
        &with_admin(
            &dir,
            &config(&[("old", &old), ("new", &new)], &ranker("50", "50")),
        ),
    );
    let admin = cohort.admin_addr();
    let client = TestClient::new();

    assert_eq!(
        admin_call(&client, admin, "GET", "/healthz", None)
            .await
            .status,
        200
    );
    assert_eq!(
        admin_call(&client, admin, "GET", "/readyz", None)
            .await
            .status,
        200
    );
    for path in [
        "/admin/config",
        "/admin/history",
        "/admin/assignments/ranker/alice",
    ] {
        let r = admin_call(&client, admin, "GET", path, None).await;
        assert_eq!(r.status, 401, "{path} without a token");
        assert_eq!(r.json()["error"], "unauthorized");
        let r = admin_call(&client, admin, "GET", path, Some("wrong-token")).await;
        assert_eq!(r.status, 401, "{path} with a wrong token");
        let r = admin_call(
            &client,
            admin,
            "GET",
            path,
            Some(&format!("{ADMIN_TOKEN}x")),
        )
        .await;
        assert_eq!(r.status, 401, "{path} with a longer token");
    }
    for (m, p) in [
        ("POST", "/admin/reload"),
        ("POST", "/admin/experiments/ranker/pause"),
    ] {
        assert_eq!(admin_call(&client, admin, m, p, None).await.status, 401);
    }

    let r = admin_call(&client, admin, "GET", "/admin/config", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["config_version"].as_str().unwrap().len(), 12);
    assert_eq!(v["ledger"][0]["name"], "ranker");
    assert_eq!(v["ledger"][0]["epochs"][0]["epoch"], 1);
    assert_eq!(v["ledger"][0]["epochs"][0]["rule"]["salt"], "ranker-salt");
    assert!(v["ledger"][0]["epochs"][0]["started_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(
        admin_call(&client, admin, "GET", "/admin/nope", Some(ADMIN_TOKEN))
            .await
            .status,
        404
    );
    assert_eq!(
        admin_call(&client, admin, "GET", "/admin/reload", Some(ADMIN_TOKEN))
            .await
            .status,
        405
    );

    // An unauthorized call is logged, but never with the token.
    admin_call(&client, admin, "GET", "/admin/config", Some("wrong-token")).await;
    cohort.wait_for_log("without a valid bearer token", WAIT);
    client.post(cohort.addr, "/predict", Some("alice")).await;
    assert!(cohort.terminate().success());
    let log = std::fs::read_to_string(dir.log_path()).unwrap();
    assert!(!log.contains(ADMIN_TOKEN) && !log.contains("wrong-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_what_a_unit_was_assigned_and_reloads_on_request() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &with_admin(&dir, &config(&ups, &ranker("0", "100"))));
    let admin = cohort.admin_addr();
    let client = TestClient::new();
    client
        .post(cohort.addr, "/predict", Some("alice@example.com"))
        .await;

    let r = admin_call(
        &client,
        admin,
        "GET",
        "/admin/assignments/ranker/alice%40example.com",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(
        (v["variant"].as_str(), v["epoch"].as_u64()),
        (Some("treatment"), Some(1))
    );
    assert!(v["first_seen"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["rule"]["variants"][1]["weight"], 10_000);
    let r = admin_call(
        &client,
        admin,
        "GET",
        "/admin/assignments/ranker/nobody",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].as_str()),
        (404, Some("not_assigned"))
    );
    let r = admin_call(
        &client,
        admin,
        "GET",
        "/admin/assignments/nope/alice",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status, 404);

    // A bad file: the reload call says what and where; the old config serves.
    let good = with_admin(&dir, &config(&ups, &ranker("0", "100")));
    dir.write_config(&good.replace("weight: 100 }", "weight: 90 }"));
    let r = admin_call(&client, admin, "POST", "/admin/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 422, "{r:?}");
    let v = r.json();
    assert_eq!(v["status"], "rejected");
    let e = &v["errors"][0];
    assert_eq!(e["path"], "experiments[0].variants");
    assert!(e["line"].as_u64().unwrap() > 0 && e["column"].as_u64().unwrap() > 0);
    assert!(e["message"].as_str().unwrap().contains("sum to 90"));
    assert_eq!(
        client
            .post(cohort.addr, "/predict", Some("bob"))
            .await
            .epoch(),
        1
    );

    // A good one: applied (by this call, or already by the file watcher).
    dir.write_config(
        &good
            .replace("weight: 0 }", "weight: 50 }")
            .replace("weight: 100 }", "weight: 50 }"),
    );
    let r = admin_call(&client, admin, "POST", "/admin/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let status = r.json()["status"].as_str().unwrap().to_string();
    assert!(status == "applied" || status == "unchanged", "{status}");
    if status == "applied" {
        assert!(r.json()["summary"]
            .as_str()
            .unwrap()
            .contains("NEW EPOCH 1 -> 2"));
    }
    let v = admin_call(&client, admin, "GET", "/admin/config", Some(ADMIN_TOKEN))
        .await
        .json();
    assert_eq!(v["ledger"][0]["epochs"].as_array().unwrap().len(), 2);
    assert_eq!(v["units"]["ranker"]["treatment"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_under_load_fail_nothing_and_move_nobody() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let yaml = with_admin(
        &dir,
        &config(&[("old", &old), ("new", &new)], &ranker("50", "50")),
    );
    let cohort = Cohort::start(&dir, &yaml);
    let (addr, admin) = (cohort.addr, cohort.admin_addr());
    let client = TestClient::new();
    let pool = users("pool", 200);
    let own: HashMap<String, (String, u32)> = pool
        .iter()
        .cloned()
        .zip(
            post_all(&client, addr, &pool, 16)
                .await
                .iter()
                .map(|r| (r.variant().to_string(), r.epoch())),
        )
        .collect();

    // Phase 0 before the pause, 1 while paused, 2 after the resume.
    let phase = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let own = Arc::new(own);
    let mut load = Vec::new();
    for w in 0..6 {
        let (client, phase, failures, wrong, stop, own, pool) = (
            client.clone(),
            phase.clone(),
            failures.clone(),
            wrong.clone(),
            stop.clone(),
            own.clone(),
            pool.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let unit = &pool[i % pool.len()];
                i += 7;
                let before = phase.load(Ordering::SeqCst);
                let r = match client
                    .try_send(addr, "POST", "/predict", &[("x-user-id", Some(unit))], "{}")
                    .await
                {
                    Ok(r) if r.status == 200 => r,
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let after = phase.load(Ordering::SeqCst);
                let (v, e) = &own[unit];
                let got = (r.variant().to_string(), r.epoch());
                // Only judge answers whose whole request fell inside one phase.
                let ok = match (before, after) {
                    (1, 1) => got == ("control".to_string(), *e),
                    (0, 0) | (2, 2) => got == (v.clone(), *e),
                    _ => true,
                };
                if !ok {
                    wrong.lock().unwrap().push((before, unit.clone(), got));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // In transition while the pause call runs: answers are not judged.
    phase.store(4, Ordering::SeqCst);
    let r = admin_call(
        &client,
        admin,
        "POST",
        "/admin/experiments/ranker/pause",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["paused"].as_bool()),
        (200, Some(true))
    );
    phase.store(1, Ordering::SeqCst);
    // New units while paused are served control and not stored.
    let fresh = client
        .post(addr, "/predict", Some("fresh-while-paused"))
        .await;
    assert_eq!((fresh.variant(), fresh.epoch()), ("control", 0));
    tokio::time::sleep(Duration::from_millis(600)).await;
    phase.store(3, Ordering::SeqCst);
    let r = admin_call(
        &client,
        admin,
        "POST",
        "/admin/experiments/ranker/resume",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["paused"].as_bool()),
        (200, Some(false))
    );
    phase.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(
        wrong.lock().unwrap().is_empty(),
        "{:?}",
        wrong.lock().unwrap()
    );
    let r = admin_call(
        &client,
        admin,
        "GET",
        "/admin/assignments/ranker/fresh-while-paused",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(
        r.status, 404,
        "a unit first seen while paused is not stored"
    );
    assert_eq!(
        admin_call(
            &client,
            admin,
            "POST",
            "/admin/experiments/nope/pause",
            Some(ADMIN_TOKEN)
        )
        .await
        .status,
        404
    );

    // The log tells paused exposures apart.
    assert!(cohort.terminate().success());
    let log = dir.access_log();
    let paused: Vec<_> = log.iter().filter(|l| l["reason"] == "paused").collect();
    assert!(!paused.is_empty());
    assert!(paused
        .iter()
        .all(|l| l["paused"] == true && l["variant"] == "control"));
    assert!(log
        .iter()
        .filter(|l| l["reason"] == "stored")
        .all(|l| l["paused"] == false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_pause_survives_a_restart_until_resumed_and_is_not_an_epoch() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let yaml = with_admin(
        &dir,
        &config(&[("old", &old), ("new", &new)], &ranker("0", "100")),
    );
    let cohort = Cohort::start(&dir, &yaml);
    let client = TestClient::new();
    assert_eq!(
        client
            .post(cohort.addr, "/predict", Some("u1"))
            .await
            .variant(),
        "treatment"
    );
    admin_call(
        &client,
        cohort.admin_addr(),
        "POST",
        "/admin/experiments/ranker/pause",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert!(cohort.terminate().success());

    let cohort = Cohort::start_existing(&dir).unwrap_or_else(|(s, l)| panic!("{s:?}\n{l}"));
    let r = client.post(cohort.addr, "/predict", Some("u1")).await;
    assert_eq!(
        (r.variant(), r.epoch()),
        ("control", 1),
        "still paused after the restart"
    );
    admin_call(
        &client,
        cohort.admin_addr(),
        "POST",
        "/admin/experiments/ranker/resume",
        Some(ADMIN_TOKEN),
    )
    .await;
    let r = client.post(cohort.addr, "/predict", Some("u1")).await;
    assert_eq!((r.variant(), r.epoch()), ("treatment", 1));

    // paused: true in the file is the same switch, and no new epoch.
    dir.write_config(&yaml.replace("    salt:", "    paused: true\n    salt:"));
    cohort.wait_reloads(1);
    cohort.wait_for_log("paused: false -> true", WAIT);
    let r = client.post(cohort.addr, "/predict", Some("u1")).await;
    assert_eq!((r.variant(), r.epoch()), ("control", 1));
    assert_eq!(
        client
            .post(cohort.addr, "/predict", Some("u2"))
            .await
            .epoch(),
        0
    );
    dir.write_config(&yaml);
    cohort.wait_reloads(2);
    assert_eq!(
        client
            .post(cohort.addr, "/predict", Some("u2"))
            .await
            .epoch(),
        1,
        "still epoch 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_force_qa_units_without_storing_them() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let base = config(&ups, &ranker("100", "0"));
    let client = TestClient::new();
    let cohort = Cohort::start(&dir, &base);
    let r = client
        .post(cohort.addr, "/predict", Some("stored-qa"))
        .await;
    assert_eq!((r.variant(), r.epoch()), ("control", 1));

    // Inline overrides, then the same from a file.
    let inline = base.replace(
        "    salt:",
        "    overrides: { treatment: [qa-1, stored-qa] }\n    salt:",
    );
    dir.write_config(&inline);
    cohort.wait_reloads(1);
    let r = client.post(cohort.addr, "/predict", Some("qa-1")).await;
    assert_eq!(
        (r.variant(), r.epoch(), r.json()["model"].as_str()),
        ("treatment", 0, Some("new"))
    );
    let r = client
        .post(cohort.addr, "/predict", Some("stored-qa"))
        .await;
    assert_eq!(
        (r.variant(), r.epoch()),
        ("treatment", 1),
        "forced, stamped with its stored epoch"
    );
    std::fs::write(dir.path().join("qa.yaml"), "treatment: [qa-2]\n").unwrap();
    dir.write_config(&base.replace("    salt:", "    overrides_file: qa.yaml\n    salt:"));
    cohort.wait_reloads(2);
    assert_eq!(
        client
            .post(cohort.addr, "/predict", Some("qa-2"))
            .await
            .variant(),
        "treatment"
    );
    assert_eq!(
        client
            .post(cohort.addr, "/predict", Some("qa-1"))
            .await
            .variant(),
        "control"
    );
    // Editing only the overrides file reloads too.
    std::fs::write(dir.path().join("qa.yaml"), "treatment: [qa-2, qa-3]\n").unwrap();
    cohort.wait_reloads(3);
    assert_eq!(
        client
            .post(cohort.addr, "/predict", Some("qa-3"))
            .await
            .variant(),
        "treatment"
    );

    // Removing the override returns each unit to its real cohort.
    dir.write_config(&base);
    cohort.wait_reloads(4);
    let r = client.post(cohort.addr, "/predict", Some("qa-2")).await;
    assert_eq!((r.variant(), r.epoch()), ("control", 1));
    assert_eq!(
        client
            .post(cohort.addr, "/predict", Some("stored-qa"))
            .await
            .variant(),
        "control"
    );
    assert!(cohort.terminate().success());
    let log = dir.access_log();
    let forced: Vec<_> = log.iter().filter(|l| l["forced"] == true).collect();
    assert_eq!(forced.len(), 4);
    assert!(forced
        .iter()
        .all(|l| l["reason"] == "forced" && l["first_exposure"] == false));
    // qa-2's first real exposure came after its override ended.
    let qa2: Vec<_> = log.iter().filter(|l| l["unit"] == "qa-2").collect();
    assert_eq!(
        (
            qa2[0]["forced"].as_bool(),
            qa2[1]["first_exposure"].as_bool()
        ),
        (Some(true), Some(true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coverage_holds_units_out_and_changing_it_moves_no_stored_unit() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let half = config(
        &ups,
        &ranker("0", "100").replace("    salt:", "    coverage: 0.5\n    salt:"),
    );
    let cohort = Cohort::start(&dir, &half);
    let client = TestClient::new();
    let units = users("cov", 2000);
    let first = post_all(&client, cohort.addr, &units, 16).await;
    let mut covered = 0;
    for (u, r) in units.iter().zip(&first) {
        let inside = coverage_bucket("ranker-salt", u) < 5000;
        covered += usize::from(inside);
        let want = if inside {
            ("treatment", 1)
        } else {
            ("control", 0)
        };
        assert_eq!((r.variant(), r.epoch()), want, "{u}");
    }
    assert!((covered as f64 - 1000.0).abs() <= binomial_bound(2000, 0.5));

    // Full coverage: a new epoch; covered units keep theirs, the rest join now.
    dir.write_config(&config(&ups, &ranker("0", "100")));
    cohort.wait_reloads(1);
    cohort.wait_for_log("coverage changed (50% -> 100%)", WAIT);
    let again = post_all(&client, cohort.addr, &units, 16).await;
    for ((u, a), b) in units.iter().zip(&first).zip(&again) {
        let want = if a.epoch() == 1 { 1 } else { 2 };
        assert_eq!((b.variant(), b.epoch()), ("treatment", want), "{u}");
    }
    assert!(cohort.terminate().success());
    let log = dir.access_log();
    let out: Vec<_> = log
        .iter()
        .filter(|l| l["reason"] == "not_covered")
        .collect();
    assert_eq!(out.len(), 2000 - covered);
    assert!(out
        .iter()
        .all(|l| l["in_experiment"] == false && l["epoch"] == 0));
    assert!(log
        .iter()
        .filter(|l| l["reason"] == "new")
        .all(|l| l["in_experiment"] == true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_variant_serves_control_and_keeps_its_units() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let on = config(&ups, &ranker("50", "50"));
    let cohort = Cohort::start(&dir, &on);
    let client = TestClient::new();
    let units = users("dis", 300);
    let first = post_all(&client, cohort.addr, &units, 16).await;
    dir.write_config(&on.replace(
        "upstream: new, weight: 50 }",
        "upstream: new, weight: 50, disabled: true }",
    ));
    cohort.wait_reloads(1);
    cohort.wait_for_log("epoch 1 continues", WAIT);
    let during = post_all(&client, cohort.addr, &units, 16).await;
    let fresh = post_all(&client, cohort.addr, &users("dis-new", 300), 16).await;
    assert!(during
        .iter()
        .zip(&first)
        .all(|(d, f)| d.variant() == "control" && d.epoch() == f.epoch()));
    assert!(fresh.iter().all(|r| r.variant() == "control"));
    dir.write_config(&on);
    cohort.wait_reloads(2);
    let after = post_all(&client, cohort.addr, &units, 16).await;
    for (a, f) in after.iter().zip(&first) {
        assert_eq!((a.variant(), a.epoch()), (f.variant(), f.epoch()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_reports_each_kind_of_change_with_its_exit_code() {
    let old = Backend::spawn("old").await;
    let new = Backend::spawn("new").await;
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let base = config(&ups, &ranker("50", "50"));
    let write = |name: &str, yaml: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, yaml).unwrap();
        p.display().to_string()
    };
    let old_path = write("old.yaml", &base);
    let three = "  - name: ranker\n    routes: [/predict]\n    salt: ranker-salt\n    variants:\n      - { name: control, upstream: old, weight: 50 }\n      - { name: treatment, upstream: new, weight: 25 }\n      - { name: t2, upstream: new, weight: 25 }\n";
    let swapped = "  - name: ranker\n    routes: [/predict]\n    salt: ranker-salt\n    variants:\n      - { name: treatment, upstream: new, weight: 50 }\n      - { name: control, upstream: old, weight: 50 }\n";
    let only = "  - name: ranker\n    routes: [/predict]\n    salt: ranker-salt\n    variants:\n      - { name: control, upstream: old, weight: 100 }\n";
    let cases: Vec<(&str, String, i32, Vec<&str>)> = vec![
        (
            "comment",
            format!("# only a comment\n{base}"),
            0,
            vec!["(unchanged)", "epoch 1 continues", "no change (exit 0)"],
        ),
        (
            "salt",
            base.replace("salt: ranker-salt", "salt: other"),
            2,
            vec![
                "NEW EPOCH 1 -> 2",
                "salt changed",
                "SALT CHANGED",
                "50.00%",
                "expected",
            ],
        ),
        (
            "order",
            config(&ups, swapped),
            2,
            vec!["NEW EPOCH 1 -> 2", "re-ordered", "100.00%"],
        ),
        (
            "weights",
            config(&ups, &ranker("20", "80")),
            2,
            vec![
                "weights changed",
                "control=50 treatment=50 -> control=20 treatment=80",
                "30.00%",
                "(exact)",
            ],
        ),
        (
            "add",
            config(&ups, three),
            2,
            vec!["variants added: t2", "25.00%"],
        ),
        (
            "remove",
            config(&ups, only),
            2,
            vec!["variants removed: treatment"],
        ),
        (
            "upstream",
            base.replace("upstream: new", "upstream: old"),
            2,
            vec![
                "epoch 1 continues",
                "routing (no new epoch): variants[treatment].upstream",
            ],
        ),
        (
            "coverage",
            base.replace("    salt:", "    coverage: 0.9\n    salt:"),
            2,
            vec!["coverage changed (100% -> 90%)", "10.00%"],
        ),
        (
            "invalid",
            base.replace("weight: 50 }\n", "weight: 40 }\n"),
            1,
            vec!["sum to 80"],
        ),
    ];
    for (name, yaml, code, want) in cases {
        let p = write(&format!("{name}.yaml"), &yaml);
        let (got, out, err) = cohort_cmd(&["plan", &p, "--against", &old_path]);
        assert_eq!(got, code, "{name}: {out}{err}");
        for w in want {
            assert!(
                out.contains(w) || err.contains(w),
                "{name}: {w:?} missing from:\n{out}{err}"
            );
        }
    }

    // Against a running proxy (admin API) and its store, units are counted
    // and a removal that would orphan them is exit 1.
    let cohort = Cohort::start(&dir, &with_admin(&dir, &base));
    let client = TestClient::new();
    let n = post_all(&client, cohort.addr, &users("p", 100), 8)
        .await
        .iter()
        .filter(|r| r.variant() == "treatment")
        .count();
    let admin = cohort.admin_addr().to_string();
    let removal = write("removal.yaml", &with_admin(&dir, &config(&ups, only)));
    let (code, out, err) = cohort_cmd(&["plan", &removal, "--admin", &admin]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("would orphan the {n} units")),
        "{err}"
    );
    let ramp = write(
        "ramp.yaml",
        &with_admin(&dir, &config(&ups, &ranker("20", "80"))),
    );
    let (code, out, _) = cohort_cmd(&["plan", &ramp, "--admin", &admin]);
    assert_eq!(code, 2);
    assert!(
        out.contains(&format!("treatment={n}"))
            && out.contains("every one keeps its variant and epoch"),
        "{out}"
    );
    let store = dir.path().join("data").display().to_string();
    let (code, _, err) = cohort_cmd(&["plan", &removal, "--store", &store]);
    assert_eq!(code, 1);
    assert!(err.contains("would orphan"), "{err}");
    let (code, out, _) = cohort_cmd(&[
        "plan",
        &dir.config_path().display().to_string(),
        "--admin",
        &admin,
    ]);
    assert_eq!(code, 0, "the applied config itself: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_records_every_applied_config_and_what_a_unit_saw() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &config(&ups, &ranker("50", "50")));
    let client = TestClient::new();
    let r = client.post(cohort.addr, "/predict", Some("hank")).await;
    dir.write_config(&config(&ups, &ranker("20", "80")));
    cohort.wait_reloads(1);
    dir.write_config(&config(&ups, &ranker("20", "80")).replace("upstream: new", "upstream: old"));
    cohort.wait_reloads(2);

    // Readable while the proxy runs.
    let store = dir.path().join("data").display().to_string();
    let (code, out, err) = cohort_cmd(&["history", "--store", &store]);
    assert_eq!(code, 0, "{err}");
    let entries: Vec<&str> = out.lines().filter(|l| l.contains("  config ")).collect();
    assert_eq!(entries.len(), 3, "{out}");
    assert!(
        entries[0].contains("(start-up)") && entries[1].contains("(file changed)"),
        "{out}"
    );
    assert!(
        out.contains("NEW EPOCH 1 -> 2") && out.contains("routing (no new epoch)"),
        "{out}"
    );

    let (code, out, _) = cohort_cmd(&[
        "history",
        "--store",
        &store,
        "--experiment",
        "ranker",
        "--unit",
        "hank",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("variant {}, epoch 1", r.variant())),
        "{out}"
    );
    assert!(
        out.contains("salt \"ranker-salt\"") && out.contains("control=50 treatment=50"),
        "{out}"
    );
    assert!(out.contains("current epoch: 2"), "{out}");
    let (code, _, _) = cohort_cmd(&[
        "history",
        "--store",
        &store,
        "--experiment",
        "ranker",
        "--unit",
        "nobody",
    ]);
    assert_eq!(code, 1);
}
