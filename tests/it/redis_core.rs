//! The core stickiness suite on every store: the same test bodies (the
//! split, ramps under load, a reset, a reset under load, kill -9 and a
//! restart with a new salt and weights, a variant re-order) run on the
//! embedded store (in their own modules), on one standalone `redis-server`,
//! and on a 3-master Redis Cluster. Each Redis store is started once and
//! the bodies run one after another on it, each under its own key prefix,
//! so the suite pays for one server and one cluster per run.

use std::collections::HashMap;

use crate::util::*;

/// The ranker experiment with the variants in the order given.
fn ranker_in_order(salt: &str, variants: &[(&str, &str, &str)]) -> String {
    let mut y =
        format!("  - name: ranker\n    routes: [/predict]\n    salt: {salt}\n    variants:\n");
    for (name, upstream, weight) in variants {
        y.push_str(&format!(
            "      - {{ name: {name}, upstream: {upstream}, weight: {weight} }}\n"
        ));
    }
    y
}

/// The variant a new unit gets at 30 % control / 70 % treatment: by its
/// bucket under `salt`, ranges in the configured order.
fn expected(salt: &str, unit: &str, control_first: bool) -> &'static str {
    let b = bucket(salt, unit);
    match control_first {
        true if b < 3000 => "control",
        true => "treatment",
        false if b < 7000 => "treatment",
        false => "control",
    }
}

/// Re-ordering the variants and changing the salt each start an epoch and
/// move no stored unit; new units follow the new ranges; a kill -9 and a
/// restart on the same file start no epoch and move nobody.
pub(crate) async fn reorder_and_salt(store: &TestStore) {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let control_first = [("control", "old", "30"), ("treatment", "new", "70")];
    let treatment_first = [("treatment", "new", "70"), ("control", "old", "30")];
    let conf = |salt: &str, order: &[(&str, &str, &str)]| {
        store.on(&config(&ups, &ranker_in_order(salt, order)))
    };
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &conf("ranker-salt", &control_first));
    let client = TestClient::new();
    let mut want: HashMap<String, (String, u32)> = HashMap::new();
    // Each step: the config, its epoch, the salt and order new units get.
    let steps = [
        (None, 1, "ranker-salt", true),
        (
            Some(conf("ranker-salt", &treatment_first)),
            2,
            "ranker-salt",
            false,
        ),
        (
            Some(conf("fresh-salt", &treatment_first)),
            3,
            "fresh-salt",
            false,
        ),
    ];
    for (n, (yaml, epoch, salt, control_first)) in steps.into_iter().enumerate() {
        if let Some(yaml) = yaml {
            dir.write_config(&yaml);
            cohort.wait_reloads(n);
        }
        let units = users(&format!("order{epoch}"), 300);
        for (u, r) in units
            .iter()
            .zip(post_all(&client, cohort.addr, &units, 16).await)
        {
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.epoch(), epoch, "{u}");
            assert_eq!(r.variant(), expected(salt, u, control_first), "{u}");
            want.insert(u.clone(), (r.variant().to_string(), epoch));
        }
        // Every unit stored so far, in any epoch, keeps its answer.
        let all: Vec<String> = want.keys().cloned().collect();
        for (u, r) in all
            .iter()
            .zip(post_all(&client, cohort.addr, &all, 16).await)
        {
            assert_eq!(
                (r.variant().to_string(), r.epoch()),
                want[u],
                "{u} after step {n}"
            );
        }
    }
    cohort.kill9();
    let cohort = Cohort::start_existing(&dir).unwrap_or_else(|(s, l)| panic!("{s:?}\n{l}"));
    let all: Vec<String> = want.keys().cloned().collect();
    for (u, r) in all
        .iter()
        .zip(post_all(&client, cohort.addr, &all, 16).await)
    {
        assert_eq!(
            (r.variant().to_string(), r.epoch()),
            want[u],
            "{u} after kill -9"
        );
    }
    let r = client
        .post(cohort.addr, "/predict", Some("after-restart"))
        .await;
    assert_eq!(r.epoch(), 3, "a restart on the same file starts no epoch");
}

/// Every core body on `store`, one after another, each under its own keys.
async fn core_suite(store: &TestStore) {
    crate::proxy::split_and_stickiness(&store.prefixed("split")).await;
    crate::reload::ramping_under_load(&store.prefixed("ramp")).await;
    crate::reload::explicit_reset(&store.prefixed("reset")).await;
    crate::reload::reset_under_load(&store.prefixed("reset-load")).await;
    crate::durability::kill9_and_restart(&store.prefixed("kill9")).await;
    reorder_and_salt(&store.prefixed("order")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordering_variants_and_changing_the_salt_move_no_stored_unit() {
    reorder_and_salt(&TestStore::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_suite_holds_on_standalone_redis() {
    if redis_missing() {
        return;
    }
    let redis = RedisServer::start();
    core_suite(&TestStore::redis(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_suite_holds_on_a_three_master_cluster() {
    if redis_missing() {
        return;
    }
    let cluster = RedisCluster::start();
    core_suite(&TestStore::cluster(&cluster)).await;
    // The suite's units really were spread over the three masters.
    let per_node = cluster.keys_per_node("split:u:*");
    assert_eq!(per_node.iter().sum::<usize>(), 10_000, "{per_node:?}");
    assert!(per_node.iter().all(|&n| n > 0), "{per_node:?}");
}
