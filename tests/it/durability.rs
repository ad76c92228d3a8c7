//! Durability: kill -9 at any moment loses no stamped assignment; SIGTERM
//! loses no log line; the ledger judges a restart like a reload.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_then_restart_with_a_changed_config_keeps_every_stamped_unit() {
    kill9_and_restart(&TestStore::Embedded).await;
}

/// `store.durability: write` answers before the disk has the record; the
/// process dying (not the machine) must still lose none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_durability_write_kill9_under_load_keeps_every_stamped_unit() {
    kill9_and_restart(&TestStore::EmbeddedWrite).await;
}

/// The body of [`kill9_under_load_then_restart_with_a_changed_config_keeps_every_stamped_unit`] on any store: the core suite
/// (redis_core.rs) runs it on Redis and on a Redis Cluster too.
pub(crate) async fn kill9_and_restart(store: &TestStore) {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &store.on(&config(&ups, &ranker("50", "50"))));
    let addr = cohort.addr;

    // New units arrive as fast as 16 clients can send them; every stamped
    // answer is recorded. The process is killed in the middle of it.
    let stamped: Arc<Mutex<Vec<(String, String, u32)>>> = Arc::default();
    let record = stamped.clone();
    let load = Load::spawn(
        addr,
        16,
        |w, i| format!("k{w}-{i}"),
        move |unit, r| {
            record
                .lock()
                .unwrap()
                .push((unit, r.variant().to_string(), r.epoch()))
        },
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cohort.kill9();
    load.stop().await;
    let stamped = std::mem::take(&mut *stamped.lock().unwrap());
    assert!(
        stamped.len() > 200,
        "only {} units were stamped",
        stamped.len()
    );
    if matches!(store, TestStore::Embedded | TestStore::EmbeddedWrite) {
        // The killed writer left its zero-filled preallocation behind the
        // records: the restart below replays through it.
        let journal = std::fs::read(dir.path().join("data/journal.cohort")).unwrap();
        assert!(
            journal.ends_with(&[0u8; 4096]),
            "a preallocated tail ({} bytes in all)",
            journal.len()
        );
    }

    // Restart with a different salt and weights: a new epoch for new units,
    // nothing moves for the stamped ones.
    dir.write_config(&store.on(&config(
        &ups,
        &ranker("10", "90").replace("salt: ranker-salt", "salt: rotated"),
    )));
    let cohort = Cohort::start_existing(&dir)
        .unwrap_or_else(|(s, log)| panic!("restart failed {s:?}\n{log}"));
    cohort.wait_for_log("NEW EPOCH 1 -> 2", Duration::from_secs(2));
    let client = TestClient::new();
    let units: Vec<String> = stamped.iter().map(|s| s.0.clone()).collect();
    let after = post_all(&client, cohort.addr, &units, 32).await;
    for ((unit, variant, epoch), r) in stamped.iter().zip(&after) {
        assert_eq!(
            (r.variant(), r.epoch()),
            (variant.as_str(), *epoch),
            "{unit} moved after kill -9"
        );
    }
    assert_eq!(
        client
            .post(cohort.addr, "/predict", Some("brand-new"))
            .await
            .epoch(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_config_that_orphans_units_refuses_to_start_with_exit_2() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &config(&ups, &ranker("0", "100")));
    TestClient::new()
        .post(cohort.addr, "/predict", Some("held"))
        .await;
    assert!(cohort.terminate().success());

    dir.write_config(&config(&ups, "  - name: ranker\n    routes: [/predict]\n    salt: ranker-salt\n    variants:\n      - { name: control, upstream: old, weight: 100 }\n"));
    let (status, log) = Cohort::start_existing(&dir)
        .err()
        .expect("must refuse to start");
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(log.contains("would orphan the 1 units"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_flushes_the_log_and_exits_0() {
    let old = Backend::spawn("old").await;
    let slow = Backend::spawn_with("slow", Duration::from_millis(800)).await;
    let dir = TestDir::new();
    let cohort = Cohort::start(
        &dir,
        &config(&[("old", &old), ("new", &slow)], &ranker("0", "100")),
    );
    let client = TestClient::new();
    let fast = post_all(&client, cohort.addr, &users("fast", 50), 8).await;
    assert!(fast.iter().all(|r| r.status == 200));
    // A request in flight when SIGTERM arrives still completes.
    let addr = cohort.addr;
    let c2 = client.clone();
    let in_flight = tokio::spawn(async move { c2.post(addr, "/predict", Some("late")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = tokio::task::spawn_blocking(move || cohort.terminate())
        .await
        .unwrap();
    let late = in_flight.await.unwrap();
    assert_eq!(late.status, 200);
    assert!(status.success(), "{status:?}");
    let log = dir.access_log();
    assert_eq!(log.len(), 51, "every response has its line after SIGTERM");
    assert!(log
        .iter()
        .any(|l| l["unit"] == "late" && l["status"] == 200));
}
