//! Hot reload: ramps under load, rejected edits, the decision table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::*;

const RELOAD_WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramping_under_load_moves_no_unit_and_new_units_follow_new_weights() {
    ramping_under_load(&TestStore::Embedded).await;
}

/// The body of [`ramping_under_load_moves_no_unit_and_new_units_follow_new_weights`] on any store: the core suite
/// (redis_core.rs) runs it on Redis and on a Redis Cluster too.
pub(crate) async fn ramping_under_load(store: &TestStore) {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &store.on(&config(&ups, &ranker("50", "50"))));
    let addr = cohort.addr;
    let client = TestClient::new();

    // Every unit's first answer, and every answer since.
    let first: Arc<Mutex<HashMap<String, (String, u32)>>> = Arc::default();
    let moved = Arc::new(AtomicUsize::new(0));
    let (seen, moves) = (first.clone(), moved.clone());
    let load = Load::spawn(
        addr,
        8,
        // Half returning units from a shared pool, half brand new.
        |w, i| {
            if i.is_multiple_of(2) {
                format!("pool-{}", i % 300)
            } else {
                format!("w{w}-new-{i}")
            }
        },
        move |unit, r| {
            let got = (r.variant().to_string(), r.epoch());
            let mut f = seen.lock().unwrap();
            if *f.entry(unit).or_insert_with(|| got.clone()) != got {
                moves.fetch_add(1, Ordering::Relaxed);
            }
        },
    );

    let ramp = |c: &str, t: &str| store.on(&config(&ups, &ranker(c, t)));
    tokio::time::sleep(Duration::from_millis(700)).await;
    dir.write_config(&ramp("20", "80"));
    cohort.wait_reloads(1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    dir.write_config(&ramp("90", "10"));
    cohort.wait_reloads(2);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let load = load.stop().await;
    let total = load.sent();
    assert!(total > 500, "too little load to mean anything: {total}");
    assert_eq!(load.failed(), 0, "failed requests during reloads");
    assert_eq!(
        moved.load(Ordering::Relaxed),
        0,
        "units changed variant or epoch"
    );
    let epochs: std::collections::BTreeSet<u32> =
        first.lock().unwrap().values().map(|v| v.1).collect();
    assert_eq!(
        epochs,
        [1, 2, 3].into(),
        "units were first assigned under all three epochs"
    );

    // Units first seen in an epoch were bucketed by that epoch's weights.
    for (unit, (variant, epoch)) in first.lock().unwrap().iter() {
        let cut = match epoch {
            1 => 5000,
            2 => 2000,
            _ => 9000,
        };
        let want = if bucket("ranker-salt", unit) < cut {
            "control"
        } else {
            "treatment"
        };
        assert_eq!(variant, want, "{unit} at epoch {epoch}");
    }

    // New units now follow 90/10 and get epoch 3; the pool keeps its answers.
    let fresh = users("after-ramp", 3000);
    let resps = post_all(&client, addr, &fresh, 32).await;
    let control = resps.iter().filter(|r| r.variant() == "control").count();
    assert!(resps.iter().all(|r| r.epoch() == 3));
    let bound = binomial_bound(3000, 0.9);
    assert!(
        (control as f64 - 2700.0).abs() <= bound,
        "control {control} of 3000 at 90%"
    );
    let pool: Vec<String> = (0..300)
        .map(|i| format!("pool-{i}"))
        .filter(|u| first.lock().unwrap().contains_key(u))
        .collect();
    for (u, r) in pool.iter().zip(post_all(&client, addr, &pool, 16).await) {
        let want = first.lock().unwrap()[u].clone();
        assert_eq!((r.variant().to_string(), r.epoch()), want, "{u}");
    }
    // The applied reloads explain themselves.
    let line = cohort.wait_for_log("NEW EPOCH 1 -> 2", RELOAD_WAIT);
    assert!(line.contains("weights changed"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reloads_are_rejected_with_line_and_column_and_old_config_serves() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let good = config(&ups, &ranker("50", "50"));
    let cohort = Cohort::start(&dir, &good);
    let client = TestClient::new();
    let before = client.post(cohort.addr, "/predict", Some("carol")).await;

    let file = dir.config_path().display().to_string();
    // Each bad edit, the line:column it must name, and a phrase of the problem.
    let weight_line = good
        .lines()
        .position(|l| l.contains("name: control"))
        .unwrap()
        + 1;
    let cases = [
        (
            good.replace(
                "weight: 50 }\n      - { name: treatment",
                "weight: 60 }\n      - { name: treatment",
            ),
            format!("{file}:{weight_line}:7"),
            "weights sum to 110; they must sum to 100",
        ),
        (
            good.replace(
                "weight: 50 }\n      - { name: treatment",
                "wieght: 50 }\n      - { name: treatment",
            ),
            format!("{file}:{weight_line}:"),
            "unknown field `wieght`",
        ),
        (
            good.replace("upstream: new", "upstream: newest"),
            format!("{file}:{}:", weight_line + 1),
            "unknown upstream \"newest\"",
        ),
        (
            good.replace("routes: [/predict]", "routes: [/predict"),
            format!("{file}:"),
            "did not find expected",
        ),
        (
            good.replace("name: treatment", "name: control"),
            format!("{file}:{}:", weight_line + 1),
            "duplicate variant name",
        ),
    ];
    for (n, (yaml, at, what)) in cases.iter().enumerate() {
        dir.write_config(yaml);
        let deadline = std::time::Instant::now() + RELOAD_WAIT;
        loop {
            let err = cohort.stderr().lines().filter(|l| l.contains(what)).count();
            if err > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "case {n}: no error {what:?}:\n{}",
                cohort.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let stderr = cohort.stderr();
        let line = stderr.lines().rev().find(|l| l.contains(what)).unwrap();
        assert!(
            line.contains(at.as_str()),
            "case {n}: {line:?} should name {at}"
        );
        // The old config keeps serving, unchanged.
        let r = client.post(cohort.addr, "/predict", Some("carol")).await;
        assert_eq!(
            (r.status.as_u16(), r.variant(), r.epoch()),
            (200, before.variant(), 1)
        );
        let fresh = client
            .post(cohort.addr, "/predict", Some(&format!("fresh-{n}")))
            .await;
        assert_eq!(fresh.epoch(), 1);
    }
    assert_eq!(cohort.count_log("config reloaded"), 0);
    // Fixing the file applies it.
    dir.write_config(&config(&ups, &ranker("40", "60")));
    cohort.wait_reloads(1);
    let r = client.post(cohort.addr, "/predict", Some("dave")).await;
    assert_eq!(r.epoch(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_variant_that_holds_units_is_rejected_and_weight_zero_closes_it() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &config(&ups, &ranker("50", "50")));
    let client = TestClient::new();
    let units = users("holder", 200);
    let first = post_all(&client, cohort.addr, &units, 16).await;
    let treated = first.iter().filter(|r| r.variant() == "treatment").count();
    assert!(treated > 0);

    let only_control = config(&ups, "  - name: ranker\n    routes: [/predict]\n    salt: ranker-salt\n    variants:\n      - { name: control, upstream: old, weight: 100 }\n");
    dir.write_config(&only_control);
    let line = cohort.wait_for_log("would orphan", RELOAD_WAIT);
    assert!(
        line.contains(&format!("orphan the {treated} units")),
        "{line}"
    );
    assert!(line.contains("weight: 0"), "{line}");
    assert_eq!(cohort.count_log("config reloaded"), 0);

    // The fix the message suggests: weight 0 keeps the variant for its units.
    dir.write_config(&config(&ups, &ranker("100", "0")));
    cohort.wait_reloads(1);
    let again = post_all(&client, cohort.addr, &units, 16).await;
    for (a, b) in first.iter().zip(&again) {
        assert_eq!((a.variant(), a.epoch()), (b.variant(), b.epoch()));
    }
    let fresh = post_all(&client, cohort.addr, &users("closed", 300), 16).await;
    assert!(fresh
        .iter()
        .all(|r| r.variant() == "control" && r.epoch() == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_only_changes_keep_the_epoch_and_comment_edits_are_no_change() {
    let (old, new, newer) = (
        Backend::spawn("old").await,
        Backend::spawn("new").await,
        Backend::spawn("newer").await,
    );
    let dir = TestDir::new();
    let cfg = config(&[("old", &old), ("new", &new)], &ranker("0", "100"));
    let cohort = Cohort::start(&dir, &cfg);
    let client = TestClient::new();
    assert_eq!(
        client
            .post(cohort.addr, "/predict", Some("erin"))
            .await
            .json()["model"],
        "new"
    );

    dir.write_config(&format!("# just a comment\n{cfg}"));
    cohort.wait_for_log("config unchanged", RELOAD_WAIT);

    dir.write_config(&cfg.replace(&new.url(), &newer.url()));
    cohort.wait_reloads(1);
    cohort.wait_for_log("epoch 1 continues", RELOAD_WAIT);
    let r = client.post(cohort.addr, "/predict", Some("erin")).await;
    assert_eq!((r.variant(), r.epoch()), ("treatment", 1));
    assert_eq!(r.json()["model"], "newer");
    assert_eq!(
        client
            .post(cohort.addr, "/predict", Some("frank"))
            .await
            .epoch(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_reset_starts_a_new_epoch_and_reassigns_everyone() {
    explicit_reset(&TestStore::Embedded).await;
}

/// The body of [`explicit_reset_starts_a_new_epoch_and_reassigns_everyone`] on any store: the core suite
/// (redis_core.rs) runs it on Redis and on a Redis Cluster too.
pub(crate) async fn explicit_reset(store: &TestStore) {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &store.on(&config(&ups, &ranker("100", "0"))));
    let client = TestClient::new();
    let r = client.post(cohort.addr, "/predict", Some("gina")).await;
    assert_eq!((r.variant(), r.epoch()), ("control", 1));

    // A weight change alone keeps gina in control...
    dir.write_config(&store.on(&config(&ups, &ranker("0", "100"))));
    cohort.wait_reloads(1);
    let r = client.post(cohort.addr, "/predict", Some("gina")).await;
    assert_eq!((r.variant(), r.epoch()), ("control", 1));

    // ...a reset drops her assignment: loud in the log, a new epoch.
    dir.write_config(&store.on(&config(
        &ups,
        &ranker("0", "100").replace("    salt:", "    reset: 1\n    salt:"),
    )));
    cohort.wait_reloads(2);
    cohort.wait_for_log("RESET: all", RELOAD_WAIT);
    let loud = cohort.wait_for_log("EXPERIMENT RESET", RELOAD_WAIT);
    assert!(
        loud.contains("WARN") && loud.contains("dropped=1"),
        "{loud}"
    );
    let r = client.post(cohort.addr, "/predict", Some("gina")).await;
    assert_eq!((r.variant(), r.epoch()), ("treatment", 3));

    // Lowering reset again is an error.
    dir.write_config(&store.on(&config(&ups, &ranker("0", "100"))));
    cohort.wait_for_log("reset lowered from 1 to 0", RELOAD_WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &config(&ups, &ranker("100", "0")));
    cohort.signal("HUP");
    cohort.wait_for_log("trigger=\"SIGHUP\"", RELOAD_WAIT);
    assert_eq!(
        cohort.count_log("config reloaded"),
        0,
        "same content: nothing applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_under_load_leaves_no_unit_at_the_old_epoch() {
    reset_under_load(&TestStore::Embedded).await;
}

/// The body of [`a_reset_under_load_leaves_no_unit_at_the_old_epoch`] on any store: the core suite
/// (redis_core.rs) runs it on Redis and on a Redis Cluster too.
pub(crate) async fn reset_under_load(store: &TestStore) {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &store.on(&config(&ups, &ranker("50", "50"))));
    let addr = cohort.addr;
    let client = TestClient::new();
    let pool = users("r", 3000);
    post_all(&client, addr, &pool[..1000], 16).await;

    // First requests for units the reset will race with, from 16 clients.
    let names = pool.clone();
    let load = Load::spawn(
        addr,
        16,
        move |w, i| names[(w + 16 * i) % names.len()].clone(),
        |_, _| {},
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    dir.write_config(&store.on(&config(
        &ups,
        &ranker("50", "50").replace("    salt:", "    reset: 1\n    salt:"),
    )));
    cohort.wait_reloads(1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(load.stop().await.failed(), 0);
    // Everyone stored now holds an epoch-2 assignment, and keeps it after a restart.
    let after = post_all(&client, addr, &pool, 32).await;
    let stale: Vec<&str> = pool
        .iter()
        .zip(&after)
        .filter(|(_, r)| r.epoch() != 2)
        .map(|(u, _)| u.as_str())
        .collect();
    assert!(
        stale.is_empty(),
        "{} units kept a pre-reset assignment: {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
    cohort.kill9();
    let cohort = Cohort::start_existing(&dir).unwrap_or_else(|(s, l)| panic!("{s:?}\n{l}"));
    let again = post_all(&client, cohort.addr, &pool, 32).await;
    for (a, b) in after.iter().zip(&again) {
        assert_eq!((a.variant(), a.epoch()), (b.variant(), b.epoch()));
    }
}
