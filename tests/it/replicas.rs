//! Several replicas on one shared store (`store.kind: redis`): real
//! `redis-server` processes on free ports, real cohort processes. Each test
//! is skipped (with a message) where `redis-server` is not installed;
//! `.ci/run` installs it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::scrape_until;
use crate::util::*;

/// Skips the test when redis-server is missing ([`redis_missing`]: under
/// CI a missing server fails the test instead).
macro_rules! need_redis {
    () => {
        if redis_missing() {
            return;
        }
    };
}

/// One replica: its own test dir (config, log), the shared Redis store.
fn replica(yaml: &str) -> (TestDir, Cohort) {
    let dir = TestDir::new();
    let c = Cohort::start(&dir, yaml);
    (dir, c)
}

/// Waits until the access log of `dir` has at least `n` lines.
fn log_lines(dir: &TestDir, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = dir.access_log();
        if log.len() >= n {
            return log;
        }
        assert!(Instant::now() < deadline, "{} of {n} log lines", log.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The ledger's events as Redis holds them.
fn ledger(redis: &RedisServer, prefix: &str) -> Vec<serde_json::Value> {
    redis
        .cli(&["--no-raw", "LRANGE", &format!("{prefix}:ledger"), "0", "-1"])
        .lines()
        .map(|l| {
            // --no-raw prints `N) "json"` with the JSON quoted.
            let q = &l[l.find('"').unwrap()..];
            let s: String = serde_json::from_str(q).unwrap();
            serde_json::from_str(&s).unwrap()
        })
        .collect()
}

/// The epoch numbers the ledger started for `experiment`, in order.
fn epochs(events: &[serde_json::Value], experiment: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["event"] == "epoch" && e["experiment"] == experiment)
        .map(|e| e["record"]["epoch"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_give_every_new_unit_one_variant_one_epoch_and_one_first_exposure() {
    need_redis!();
    let redis = RedisServer::start();
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let yaml = with_redis(
        &config(&[("old", &old), ("new", &new)], &ranker("50", "50")),
        &redis.url(),
        "t1",
    );
    let (dir_a, a) = replica(&yaml);
    let (dir_b, b) = replica(&yaml);
    let n = 10_000;
    let units = users("pair", n);
    let client = TestClient::new();
    // Each unit goes to both replicas at the same moment.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let got = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, units, next, got) = (client.clone(), units.clone(), next.clone(), got.clone());
        let (aa, ba) = (a.addr, b.addr);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(u) = units.get(i) else { break };
                let (ra, rb) = tokio::join!(
                    client.post(aa, "/predict", Some(u)),
                    client.post(ba, "/predict", Some(u))
                );
                got.lock().unwrap().insert(u.clone(), (ra, rb));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = got.lock().unwrap();
    let mut treatment = 0;
    for (u, (ra, rb)) in got.iter() {
        assert_eq!(ra.status, 200, "{u}: {ra:?}");
        assert_eq!(rb.status, 200, "{u}: {rb:?}");
        assert_eq!(ra.variant(), rb.variant(), "{u}: the replicas disagree");
        assert_eq!(ra.epoch(), rb.epoch(), "{u}");
        assert_eq!(ra.epoch(), 1, "{u}");
        treatment += usize::from(ra.variant() == "treatment");
    }
    // The split is still the rule's (the winner was bucketed by it).
    let bound = binomial_bound(n, 0.5);
    assert!(
        (treatment as f64 - n as f64 / 2.0).abs() < bound,
        "{treatment} of {n} in treatment"
    );
    // Exactly one of the two log lines of each unit is its first exposure.
    let mut firsts: BTreeMap<String, usize> = BTreeMap::new();
    for l in log_lines(&dir_a, n).into_iter().chain(log_lines(&dir_b, n)) {
        let u = l["unit"].as_str().unwrap().to_string();
        *firsts.entry(u).or_default() += usize::from(l["first_exposure"] == true);
    }
    assert_eq!(firsts.len(), n);
    let wrong: Vec<_> = firsts.iter().filter(|(_, c)| **c != 1).take(5).collect();
    assert!(
        wrong.is_empty(),
        "units without exactly one first exposure: {wrong:?}"
    );
    // An operator finds a unit with redis-cli: the documented key.
    use sha2::{Digest, Sha256};
    let u = &units[0];
    let d = Sha256::digest(format!("cohort-unit\0ranker\0{u}").as_bytes());
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    let stored = redis.cli(&["GET", &format!("t1:u:ranker:0:{hex}")]);
    let (ra, _) = &got[u];
    assert_eq!(
        stored.trim().split(' ').nth(2),
        Some(ra.variant()),
        "{stored}"
    );
    assert!(stored.starts_with("1 "), "{stored}");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_staggered_ramp_moves_no_unit_and_both_replicas_stamp_the_ledgers_epoch() {
    need_redis!();
    let redis = RedisServer::start();
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let before = with_redis(&config(&ups, &ranker("50", "50")), &redis.url(), "t2");
    let after = with_redis(&config(&ups, &ranker("20", "80")), &redis.url(), "t2");
    let (dir_a, a) = replica(&before);
    let (dir_b, b) = replica(&before);
    let seen: Arc<Mutex<HashMap<String, (String, u32)>>> = Arc::default();
    let differ = Arc::new(Mutex::new(Vec::new()));
    let answer = {
        let (seen, differ) = (seen.clone(), differ.clone());
        move |u: String, r: &Resp| {
            let now = (r.variant().to_string(), r.epoch());
            let mut s = seen.lock().unwrap();
            match s.get(&u) {
                Some(prev) if *prev != now => differ.lock().unwrap().push((u, prev.clone(), now)),
                Some(_) => {}
                None => {
                    s.insert(u, now);
                }
            }
        }
    };
    // Both replicas serve an overlapping stream of new and returning units.
    let unit = |w: usize, i: usize| format!("ramp-{}", (w * 7919 + i) % 3000);
    let load_a = Load::spawn(a.addr, 4, unit, answer.clone());
    let load_b = Load::spawn(b.addr, 4, unit, answer);
    tokio::time::sleep(Duration::from_millis(500)).await;
    dir_a.write_config(&after);
    a.wait_reloads(1);
    // B, still on the old file, sees the ledger move and says it keeps its
    // own rule for new units until its file matches.
    b.wait_for_log("the shared ledger moved", Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    dir_b.write_config(&after);
    b.wait_reloads(1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (la, lb) = (load_a.stop().await, load_b.stop().await);
    assert_eq!(la.failed() + lb.failed(), 0);
    let differ = differ.lock().unwrap().clone();
    assert!(
        differ.is_empty(),
        "{} units changed, e.g. {:?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
    // Both replicas stamp epoch 2 for a new unit now, and the ledger has
    // exactly one epoch 2.
    let client = TestClient::new();
    for i in 0..20 {
        let u = format!("late-{i}");
        let ra = client.post(a.addr, "/predict", Some(&u)).await;
        let rb = client.post(b.addr, "/predict", Some(&u)).await;
        assert_eq!((ra.epoch(), rb.epoch()), (2, 2), "{u}");
        assert_eq!(ra.variant(), rb.variant(), "{u}");
    }
    assert_eq!(epochs(&ledger(&redis, "t2"), "ranker"), vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_applying_different_yamls_at_once_end_with_one_ledger() {
    need_redis!();
    let redis = RedisServer::start();
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let with = |c: &str, t: &str| with_redis(&config(&ups, &ranker(c, t)), &redis.url(), "t3");
    let (dir_a, a) = replica(&with("50", "50"));
    let (dir_b, b) = replica(&with("50", "50"));
    // Same YAML on both: one epoch.
    assert_eq!(epochs(&ledger(&redis, "t3"), "ranker"), vec![1]);
    dir_a.write_config(&with("20", "80"));
    dir_b.write_config(&with("30", "70"));
    a.wait_reloads(1);
    b.wait_reloads(1);
    let events = ledger(&redis, "t3");
    // One linear ledger: epochs 1, 2, 3, each once, whoever won the CAS.
    assert_eq!(epochs(&events, "ranker"), vec![1, 2, 3]);
    let applied = events.iter().filter(|e| e["event"] == "applied").count();
    // Each replica's start-up is recorded (their access-log paths differ, so
    // their config versions do), then each replica's apply.
    assert_eq!(applied, 4);
    // A replica that joins later adopts the ledger instead of starting its own.
    let (_dir_c, c) = replica(&with("30", "70"));
    let client = TestClient::new();
    let r = client.post(c.addr, "/predict", Some("joiner")).await;
    let last = *epochs(&ledger(&redis, "t3"), "ranker").last().unwrap();
    assert!(last <= 4, "{last}");
    assert_eq!(u64::from(r.epoch()), last);
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reset_on_one_replica_reaches_the_other_within_the_poll_bound() {
    need_redis!();
    let redis = RedisServer::start();
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let before = with_redis(&config(&ups, &ranker("50", "50")), &redis.url(), "t4");
    let reset = before.replace(
        "    salt: ranker-salt\n",
        "    salt: ranker-salt\n    reset: 1\n",
    );
    assert_ne!(before, reset);
    let (dir_a, a) = replica(&before);
    let (_dir_b, b) = replica(&before);
    let client = TestClient::new();
    let units = users("reset", 50);
    for u in &units {
        let ra = client.post(a.addr, "/predict", Some(u)).await;
        let rb = client.post(b.addr, "/predict", Some(u)).await;
        assert_eq!((ra.epoch(), rb.epoch()), (1, 1));
    }
    // Reset on A only; B's file is unchanged.
    dir_a.write_config(&reset);
    a.wait_reloads(1);
    for u in &units {
        let r = client.post(a.addr, "/predict", Some(u)).await;
        assert_eq!(r.epoch(), 2, "{u}: re-assigned under the reset's epoch");
    }
    // B stops serving the cached epoch-1 assignments within the bound
    // (one ledger poll, 250 ms, plus the second in which a pre-reset
    // epoch is taken for a request that began before the reset, plus a
    // round trip): it adopts A's.
    let started = Instant::now();
    loop {
        let mut stale = 0;
        for u in &units {
            let r = client.post(b.addr, "/predict", Some(u)).await;
            stale += usize::from(r.epoch() != 2);
        }
        if stale == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{stale} units still served their pre-reset assignment by B"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("reset reached replica B after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_fails_no_request_with_serve_by_hash_and_loses_no_stored_unit() {
    need_redis!();
    let mut redis = RedisServer::start();
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let yaml = with_store(
        &config(&ups, &ranker("50", "50")),
        &format!(
            "kind: redis, url: '{}', key_prefix: t5, timeout: 500ms",
            redis.url()
        ),
    );
    // (A bound well above a loaded CI machine's stalls, so degraded lines
    // come from the outage.) Two replicas with their admin listeners (for
    // /metrics); A takes the load. B's file has another rule (20/80, epoch
    // 2 in the ledger; A keeps assigning by its own, epoch 1), so the two
    // can disagree on a unit first seen during the outage.
    let yaml_b = yaml.replace(
        "weight: 50 }\n      - { name: treatment, upstream: new, weight: 50",
        "weight: 20 }\n      - { name: treatment, upstream: new, weight: 80",
    );
    assert_ne!(yaml, yaml_b);
    let (dir_a, dir_b) = (TestDir::new(), TestDir::new());
    let a = Cohort::start(&dir_a, &with_admin(&dir_a, &yaml));
    let b = Cohort::start(&dir_b, &with_admin(&dir_b, &yaml_b));
    let (admin_a, admin_b) = (a.admin_addr(), b.admin_addr());
    // Units stored before the outage.
    let client = TestClient::new();
    let stored = users("before", 200);
    let mut want = HashMap::new();
    for u in &stored {
        let r = client.post(a.addr, "/predict", Some(u)).await;
        want.insert(u.clone(), (r.variant().to_string(), r.epoch()));
    }
    let up = |s: &crate::metrics::Scrape| s.get("cohort_store_up", &[]);
    scrape_until(&client, admin_a, |s| {
        up(s) == Some(1.0)
            && s.get("cohort_store_degraded_total", &[("experiment", "ranker")])
                .is_some()
    })
    .await;
    let served: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let s2 = served.clone();
    let load = Load::spawn(
        a.addr,
        4,
        |w, i| format!("outage-{w}-{i}"),
        move |u, r| {
            s2.lock().unwrap().insert(u, r.variant().to_string());
        },
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    // The outage shows on /metrics.
    scrape_until(&client, admin_a, |s| up(s) == Some(0.0)).await;
    // The same new units on both replicas during the outage: each serves
    // them by the contract hash under its own current epoch.
    let twins = users("twin", 20);
    let mut twin_answers = HashMap::new();
    for u in &twins {
        let ra = client.post(a.addr, "/predict", Some(u)).await;
        let rb = client.post(b.addr, "/predict", Some(u)).await;
        assert_eq!((ra.status.as_u16(), rb.status.as_u16()), (200, 200));
        assert_eq!(
            (ra.variant(), ra.epoch()),
            (hash_variant(u, 5000), 1),
            "{u}"
        );
        assert_eq!(
            (rb.variant(), rb.epoch()),
            (hash_variant(u, 2000), 2),
            "{u}"
        );
        twin_answers.insert(
            u.clone(),
            [(ra.variant().to_string(), 1), (rb.variant().to_string(), 2)],
        );
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.restart();
    scrape_until(&client, admin_a, |s| up(s) == Some(1.0)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let load = load.stop().await;
    assert!(load.sent() > 0);
    assert_eq!(load.failed(), 0, "failed requests with serve_by_hash");
    assert!(
        a.count_log("redis store unavailable") > 0,
        "the outage was not noticed: {}",
        a.stderr()
    );
    // The lines served by hash are flagged, and only new units' lines: a
    // unit once served from the store is never served degraded after.
    let log = log_lines(&dir_a, stored.len() + load.sent() + twins.len());
    let degraded: Vec<_> = log.iter().filter(|l| l["store_degraded"] == true).collect();
    assert!(!degraded.is_empty(), "no line flagged store_degraded");
    let mut from_store = std::collections::HashSet::new();
    for l in &log {
        let unit = l["unit"].as_str().unwrap();
        if l["store_degraded"] == true {
            assert_eq!(l["status"], 200);
            assert_eq!(l["epoch"], 1);
            assert!(!from_store.contains(unit), "{unit} degraded after: {l}");
        } else {
            from_store.insert(unit);
        }
    }
    a.wait_for_log("degraded_total=", Duration::from_secs(10));
    let b_degraded = log_lines(&dir_b, twins.len())
        .iter()
        .filter(|l| l["store_degraded"] == true)
        .count();
    assert_eq!(b_degraded, twins.len(), "B served every twin by hash");
    // The counter equals the flagged lines; every degraded unit is written
    // back once; of each twin pair (their epochs differ) one write-back
    // stored it and the other lost the race, and said so.
    let wrote = |s: &crate::metrics::Scrape, result| {
        s.count("cohort_store_writebacks_total", &[("result", result)]) as usize
    };
    let settled = |n: usize| {
        move |s: &crate::metrics::Scrape| {
            s.get("cohort_store_writeback_pending", &[]) == Some(0.0)
                && wrote(s, "stored") + wrote(s, "lost_race") == n
        }
    };
    let sa = scrape_until(&client, admin_a, settled(degraded.len())).await;
    let sb = scrape_until(&client, admin_b, settled(twins.len())).await;
    for (s, n) in [(&sa, degraded.len()), (&sb, b_degraded)] {
        assert_eq!(
            s.get("cohort_store_degraded_total", &[("experiment", "ranker")]),
            Some(n as f64),
            "{}",
            s.text
        );
        assert_eq!(up(s), Some(1.0));
    }
    assert_eq!(
        wrote(&sa, "lost_race") + wrote(&sb, "lost_race"),
        twins.len(),
        "A:\n{}\nB:\n{}",
        sa.text,
        sb.text
    );
    let lost_lines = |r: &Cohort| r.count_log("stored by another replica first");
    assert_eq!(lost_lines(&a) + lost_lines(&b), twins.len());
    // The per-variant unit counters (`plan`'s orphan check) count every
    // stored unit, the written-back ones too: never fewer than the unit
    // keys. An INCR that Redis ran (and fsynced) as it was killed, its
    // answer lost, is retried and counts twice (high is the safe side for
    // `plan`); that window is microseconds wide, so a handful at most.
    let scan = |pattern: &str| -> Vec<String> {
        redis
            .cli(&["--scan", "--pattern", pattern])
            .lines()
            .map(str::to_string)
            .collect()
    };
    // (The increments follow the writes: give the last ones a moment.)
    let units_stored = scan("t5:u:ranker:*").len() as u64;
    let counted = || -> u64 {
        scan("t5:n:ranker:*")
            .iter()
            .map(|k| redis.cli(&["GET", k]).trim().parse::<u64>().unwrap())
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counted() < units_stored && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = counted();
    assert!(
        (units_stored..=units_stored + 6).contains(&n),
        "unit counters {n} for {units_stored} unit keys"
    );
    // After recovery a fresh replica (empty cache) finds every unit stored
    // before the outage unchanged (AOF with appendfsync always), and the
    // units served degraded were written back by the contract hash.
    let (_dir_c, c) = replica(&yaml);
    for (u, w) in &want {
        let r = client.post(c.addr, "/predict", Some(u)).await;
        assert_eq!((r.variant().to_string(), r.epoch()), *w, "{u}");
        assert_eq!(r.header("x-cohort-epoch"), "1");
    }
    let served = served.lock().unwrap().clone();
    for (u, v) in served.iter().take(300) {
        let r = client.post(c.addr, "/predict", Some(u)).await;
        assert_eq!(r.variant(), v, "{u}: degraded assignment not kept");
    }
    // Each twin holds the first writer's assignment, A's or B's.
    for u in &twins {
        let r = client.post(c.addr, "/predict", Some(u)).await;
        let got = (r.variant().to_string(), r.epoch());
        assert!(twin_answers[u].contains(&got), "{u}: {got:?}");
    }
}

/// The variant the ranker experiment (`ranker-salt`, control's buckets
/// below `cut`) gives a new unit by the contract hash.
fn hash_variant(unit: &str, cut: u32) -> &'static str {
    if bucket("ranker-salt", unit) < cut {
        "control"
    } else {
        "treatment"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_reject_a_dead_redis_answers_503_stamped_and_assigns_nothing() {
    need_redis!();
    let mut redis = RedisServer::start();
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let yaml = with_store(
        &config(&ups, &ranker("50", "50")),
        &format!(
            "kind: redis, url: '{}', key_prefix: t6, on_store_error: reject, timeout: 500ms",
            redis.url()
        ),
    );
    let (_dir, a) = replica(&yaml);
    let client = TestClient::new();
    let known = client.post(a.addr, "/predict", Some("known")).await;
    assert_eq!(known.status, 200);
    redis.kill();
    let r = client.post(a.addr, "/predict", Some("newcomer")).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-cohort-experiment"), "ranker");
    // A returning unit is served from the cache without Redis.
    let again = client.post(a.addr, "/predict", Some("known")).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.variant(), known.variant());
    redis.restart();
    let keys = redis.cli(&["--scan", "--pattern", "t6:u:*"]);
    assert_eq!(keys.lines().count(), 1, "only `known` is stored: {keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_a_three_master_cluster_agree_and_units_spread_over_every_node() {
    need_redis!();
    let cluster = RedisCluster::start();
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("'{u}'")).collect();
    let yaml = with_store(
        &config(&ups, &ranker("50", "50")),
        &format!(
            "kind: redis, urls: [{}], key_prefix: t7, timeout: 2s",
            urls.join(", ")
        ),
    );
    let (_da, a) = replica(&yaml);
    let (_db, b) = replica(&yaml);
    let client = TestClient::new();
    for u in users("cl", 300) {
        let (ra, rb) = tokio::join!(
            client.post(a.addr, "/predict", Some(&u)),
            client.post(b.addr, "/predict", Some(&u))
        );
        assert_eq!((ra.status.as_u16(), rb.status.as_u16()), (200, 200));
        assert_eq!(
            (ra.variant(), ra.epoch()),
            (rb.variant(), rb.epoch()),
            "{u}"
        );
    }
    let per_node = cluster.keys_per_node("t7:u:*");
    assert_eq!(per_node.iter().sum::<usize>(), 300);
    assert!(per_node.iter().all(|&n| n > 0), "{per_node:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrating_an_embedded_store_keeps_every_units_variant_and_epoch() {
    need_redis!();
    let redis = RedisServer::start();
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let embedded = Cohort::start(&dir, &config(&ups, &ranker("50", "50")));
    let client = TestClient::new();
    let mut want = HashMap::new();
    for u in users("m1", 150) {
        let r = client.post(embedded.addr, "/predict", Some(&u)).await;
        want.insert(u, (r.variant().to_string(), r.epoch()));
    }
    dir.write_config(&config(&ups, &ranker("10", "90")));
    embedded.wait_reloads(1);
    for u in users("m2", 150) {
        let r = client.post(embedded.addr, "/predict", Some(&u)).await;
        assert_eq!(r.epoch(), 2);
        want.insert(u, (r.variant().to_string(), r.epoch()));
    }
    assert!(embedded.terminate().success());
    let store = dir.path().join("data");
    let migrate = |expect: &str| {
        let (code, out, err) = cohort_cmd(&[
            "store",
            "migrate",
            "--from",
            store.to_str().unwrap(),
            "--to",
            &redis.url(),
            "--key-prefix",
            "t8",
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(expect), "{out}");
    };
    migrate("assignments: 300 written, 0 already there");
    // Idempotent.
    migrate("assignments: 0 written, 300 already there");
    // Two replicas on Redis serve every unit as the embedded store did, and
    // new units under the migrated ledger's epoch 2.
    let yaml = with_redis(&config(&ups, &ranker("10", "90")), &redis.url(), "t8");
    let (_da, a) = replica(&yaml);
    let (_db, b) = replica(&yaml);
    for (u, w) in &want {
        for addr in [a.addr, b.addr] {
            let r = client.post(addr, "/predict", Some(u)).await;
            assert_eq!((r.variant().to_string(), r.epoch()), *w, "{u}");
            assert_eq!(r.header("x-cohort-epoch"), w.1.to_string());
        }
    }
    let r = client
        .post(a.addr, "/predict", Some("after-migration"))
        .await;
    assert_eq!(r.epoch(), 2);
    assert_eq!(epochs(&ledger(&redis, "t8"), "ranker"), vec![1, 2]);
    // `cohort history --config` reads the shared ledger and a unit from Redis.
    let cfg = _da.config_path();
    let (code, out, err) = cohort_cmd(&["history", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("config "), "{out}");
    let (code, out, err) = cohort_cmd(&[
        "history",
        "--config",
        cfg.to_str().unwrap(),
        "--experiment",
        "ranker",
        "--unit",
        "m1-0",
    ]);
    assert_eq!(code, 0, "{err}");
    let w = &want["m1-0"];
    assert!(
        out.contains(&format!("variant {}, epoch {}", w.0, w.1)),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_from_a_file_and_wait_replicas_hold_a_response_for_a_redis_replica() {
    need_redis!();
    // No diskless-sync delay: the replica is online at once.
    let primary = RedisServer::start_with(&[
        "--requirepass",
        "s3cret",
        "--appendonly",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
    ]);
    let port = primary.port.to_string();
    let mut replica_redis =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &port, "--masterauth", "s3cret"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !primary
        .cli(&["INFO", "replication"])
        .contains("state=online")
    {
        assert!(
            Instant::now() < deadline,
            "the Redis replica did not attach"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    std::fs::write(dir.path().join("redis.password"), "s3cret\n").unwrap();
    let yaml = with_store(
        &config(&ups, &ranker("50", "50")),
        &format!(
            "kind: redis, url: '{}', key_prefix: t9, password_file: redis.password, wait_replicas: 1, on_store_error: reject, timeout: 1s",
            primary.url()
        ),
    );
    let a = Cohort::start(&dir, &yaml);
    let client = TestClient::new();
    // Online, and acknowledging writes.
    while primary.cli(&["WAIT", "1", "500"]).trim() != "1" {
        assert!(
            Instant::now() < deadline,
            "the Redis replica does not acknowledge"
        );
    }
    let r = client.post(a.addr, "/predict", Some("held")).await;
    assert_eq!(r.status, 200, "{r:?}");
    // The assignment is on the Redis replica too.
    let keys = replica_redis.cli(&["--scan", "--pattern", "t9:u:*"]);
    assert_eq!(keys.lines().count(), 1, "{keys}");
    // Without a Redis replica to acknowledge, `reject` answers 503.
    replica_redis.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !primary
        .cli(&["INFO", "replication"])
        .contains("connected_slaves:0")
    {
        assert!(
            Instant::now() < deadline,
            "the primary still sees its replica"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = client
        .post(a.addr, "/predict", Some("unacknowledged"))
        .await;
    assert_eq!(r.status, 503, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_cluster_units_stay_sticky_across_a_ramp_and_a_kill_9_of_a_replica() {
    need_redis!();
    let cluster = RedisCluster::start();
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("'{u}'")).collect();
    let store = format!(
        "kind: redis, urls: [{}], key_prefix: t10, timeout: 2s",
        urls.join(", ")
    );
    let before = with_store(&config(&ups, &ranker("50", "50")), &store);
    let after = with_store(&config(&ups, &ranker("20", "80")), &store);
    let dir = TestDir::new();
    let a = Cohort::start(&dir, &before);
    let client = TestClient::new();
    let mut want = HashMap::new();
    for u in users("k1", 200) {
        let r = client.post(a.addr, "/predict", Some(&u)).await;
        want.insert(u, (r.variant().to_string(), r.epoch()));
    }
    dir.write_config(&after);
    a.wait_reloads(1);
    for u in users("k2", 200) {
        let r = client.post(a.addr, "/predict", Some(&u)).await;
        assert_eq!(r.epoch(), 2);
        want.insert(u, (r.variant().to_string(), r.epoch()));
    }
    a.kill9();
    // The replica comes back (and a second one joins): every unit as it
    // was, whichever replica serves it, and the ledger is not restarted.
    let a = Cohort::start_existing(&dir).unwrap_or_else(|e| panic!("{e:?}"));
    let (_db, b) = replica(&after);
    for (u, w) in &want {
        for addr in [a.addr, b.addr] {
            let r = client.post(addr, "/predict", Some(u)).await;
            assert_eq!((r.variant().to_string(), r.epoch()), *w, "{u}");
        }
    }
    let r = client.post(b.addr, "/predict", Some("k3")).await;
    assert_eq!(r.epoch(), 2);
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the
/// openssl CLI in `dir`; false when openssl is missing.
fn make_certs(dir: &std::path::Path) -> bool {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=cohort-test-ca",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rediss_with_a_private_ca_from_tls_ca_file() {
    need_redis!();
    let dir = TestDir::new();
    if !make_certs(dir.path()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl is not installed: .ci/run must install it"
        );
        eprintln!("openssl not installed: skipped");
        return;
    }
    let tls_port = free_port().to_string();
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let (cert, key, ca) = (p("srv.pem"), p("srv.key"), p("ca.pem"));
    let _redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let yaml = with_store(
        &config(&ups, &ranker("50", "50")),
        &format!(
            "kind: redis, url: 'rediss://127.0.0.1:{tls_port}/0', key_prefix: t11, tls_ca_file: ca.pem, timeout: 2s"
        ),
    );
    let a = Cohort::start(&dir, &yaml);
    let (_db, b) = replica(&yaml.replace("tls_ca_file: ca.pem", &format!("tls_ca_file: {ca}")));
    let client = TestClient::new();
    for u in users("tls", 20) {
        let ra = client.post(a.addr, "/predict", Some(&u)).await;
        let rb = client.post(b.addr, "/predict", Some(&u)).await;
        assert_eq!(ra.status, 200, "{ra:?}");
        assert_eq!((ra.variant(), ra.epoch()), (rb.variant(), rb.epoch()));
    }
    // Without the CA the server's certificate is not trusted: no start.
    let plain = TestDir::new();
    plain.write_config(&yaml.replace(", tls_ca_file: ca.pem", ""));
    let Err((_, log)) = Cohort::start_existing(&plain) else {
        panic!("started without trusting the server's CA")
    };
    assert!(log.to_lowercase().contains("certificate"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_reloading_one_file_at_the_same_moment_start_one_epoch() {
    need_redis!();
    let redis = RedisServer::start();
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let with = |c: &str, t: &str| {
        with_redis(&config(&ups, &ranker(c, t)), &redis.url(), "t12").replace(
            "access_log: { path: ./logs/access.jsonl }",
            "access_log: { path: \"-\" }",
        )
    };
    // Both processes run on the very same file, so both see each change
    // at once and race to apply it.
    let dir = TestDir::new();
    let a = Cohort::start(&dir, &with("50", "50"));
    let b = Cohort::start_existing(&dir).unwrap_or_else(|e| panic!("{e:?}"));
    for (n, (c, t)) in [("20", "80"), ("10", "90")].into_iter().enumerate() {
        dir.write_config(&with(c, t));
        a.wait_reloads(n + 1);
        b.wait_reloads(n + 1);
    }
    assert_eq!(epochs(&ledger(&redis, "t12"), "ranker"), vec![1, 2, 3]);
    let client = TestClient::new();
    for i in 0..10 {
        let u = format!("race-{i}");
        let (ra, rb) = (
            client.post(a.addr, "/predict", Some(&u)).await,
            client.post(b.addr, "/predict", Some(&u)).await,
        );
        assert_eq!((ra.epoch(), rb.epoch()), (3, 3));
        assert_eq!(ra.variant(), rb.variant());
    }
}

/// The ACL docs/replicas.md gives cohort's Redis user: its own key prefix
/// and only the commands it sends.
const COHORT_ACL: &str = "user cohort on >s3cret-acl ~t13:* resetchannels -@all +get +set +incr +llen +lrange +rpush +evalsha +script|load +wait\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_named_acl_user_with_the_documented_minimal_acl_serves_and_a_wrong_password_stops_the_start(
) {
    need_redis!();
    // The `default` user is off: only named users get in.
    let redis = RedisServer::start_with_acl(COHORT_ACL);
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let port = redis.port;
    let store = |url: &str, prefix: &str, extra: &str, c: &str, t: &str| {
        with_store(
            &config(&ups, &ranker(c, t)),
            &format!("kind: redis, url: '{url}', key_prefix: {prefix}, timeout: 2s{extra}"),
        )
    };
    let with_pass = format!("redis://cohort:s3cret-acl@127.0.0.1:{port}/0");
    let user_only = format!("redis://cohort@127.0.0.1:{port}/0");
    // A: user and password in the URL.
    let in_url = |c: &str, t: &str| store(&with_pass, "t13", "", c, t);
    // B: the user in the URL, the password from a file.
    let dir_b = TestDir::new();
    std::fs::write(dir_b.path().join("redis.password"), "s3cret-acl\n").unwrap();
    let from_file =
        |c: &str, t: &str| store(&user_only, "t13", ", password_file: redis.password", c, t);
    let (dir_a, a) = replica(&in_url("50", "50"));
    let b = Cohort::start(&dir_b, &from_file("50", "50"));
    let client = TestClient::new();
    let units = users("acl", 50);
    for u in &units {
        let ra = client.post(a.addr, "/predict", Some(u)).await;
        let rb = client.post(b.addr, "/predict", Some(u)).await;
        assert_eq!(
            (ra.status.as_u16(), rb.status.as_u16()),
            (200, 200),
            "{ra:?}"
        );
        assert_eq!(
            (ra.variant(), ra.epoch()),
            (rb.variant(), rb.epoch()),
            "{u}"
        );
    }
    // A ramp appends to the ledger through the Lua compare-and-set and
    // reads the per-variant counters: both allowed by the ACL.
    dir_a.write_config(&in_url("20", "80"));
    a.wait_reloads(1);
    let r = client.post(a.addr, "/predict", Some("after-ramp")).await;
    assert_eq!((r.status.as_u16(), r.epoch()), (200, 2), "{r:?}");
    assert_eq!(epochs(&ledger(&redis, "t13"), "ranker"), vec![1, 2]);
    let keys = redis.cli(&["--scan", "--pattern", "t13:u:*"]);
    assert_eq!(keys.lines().count(), units.len() + 1, "{keys}");
    assert_eq!(a.count_log("NoPerm") + b.count_log("NoPerm"), 0);

    // Wrong password, from the URL or the file: the replica does not start,
    // says why, and never prints the password.
    let cases = [
        in_url("50", "50").replace("s3cret-acl", "n0t-the-pass"),
        from_file("50", "50"),
    ];
    for (n, yaml) in cases.iter().enumerate() {
        let dir = TestDir::new();
        std::fs::write(dir.path().join("redis.password"), "n0t-the-pass\n").unwrap();
        dir.write_config(yaml);
        let Err((status, log)) = Cohort::start_existing(&dir) else {
            panic!("case {n}: started with a wrong password")
        };
        assert!(status.is_some_and(|s| !s.success()), "case {n}: {status:?}");
        assert!(
            log.contains("cannot connect to redis://cohort")
                && log.to_lowercase().contains("authentication failed")
                && log.contains("store.password_file"),
            "case {n}: {log}"
        );
        assert!(!log.contains("n0t-the-pass"), "case {n}: {log}");
    }
    // Keys outside the user's prefix are refused: the start says so.
    let dir = TestDir::new();
    dir.write_config(&store(&with_pass, "elsewhere", "", "50", "50"));
    let Err((_, log)) = Cohort::start_existing(&dir) else {
        panic!("started on keys its ACL does not allow")
    };
    assert!(
        log.to_lowercase().contains("noperm") && log.contains("needs the keys elsewhere:*"),
        "{log}"
    );
}
