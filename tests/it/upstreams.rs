//! Upstreams with several endpoints (issue 14, points 5 and 6), on real
//! sockets against endpoints that refuse, hang, reset, answer 5xx, or go
//! down and come back ([`Flaky`]): load spreads over endpoints; the active
//! health check takes an endpoint out and brings it back; the passive one
//! ejects after consecutive failures; a variant with no endpoint up gets a
//! stamped 503 and never another variant's upstream, unless it names a
//! `fallback` (logged); a request is retried on another endpoint only when
//! it could not connect, never once its body went upstream; a slow or
//! hanging upstream gets 504 by the timeout that applies. Both data paths
//! run these (`.ci/run`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// A config with `upstreams` (YAML lines, indented by 2) and `experiments`.
fn yaml(upstreams: &str, experiments: &str) -> String {
    let workers = std::env::var("COHORT_TEST_WORKERS").unwrap_or_else(|_| "2".into());
    let lean = lean_path_wanted();
    format!(
        "listen: 127.0.0.1:0\nstore: {{ path: ./data }}\naccess_log: {{ path: ./logs/access.jsonl }}\nruntime: {{ worker_threads: {workers}, shutdown_timeout: 5s, http1_fast_path: {lean} }}\nupstreams:\n{upstreams}experiments:\n{experiments}"
    )
}

/// One experiment on /predict whose every new unit goes to `treatment`.
fn treatment_only(treatment_upstream: &str, fallback: Option<&str>) -> String {
    let fb = fallback.map_or(String::new(), |f| format!(", fallback: {f}"));
    format!(
        "  - name: ranker\n    routes: [/predict]\n    salt: s\n    variants:\n      - {{ name: control, upstream: old, weight: 0 }}\n      - {{ name: treatment, upstream: {treatment_upstream}, weight: 100{fb} }}\n"
    )
}

fn list(endpoints: &[String]) -> String {
    format!("[{}]", endpoints.join(", "))
}

/// The access log once it holds at least `n` lines (it is written by a
/// thread of its own, a moment after each response).
fn log_lines(dir: &TestDir, n: usize) -> Vec<Value> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let log = dir.access_log();
        if log.len() >= n {
            return log;
        }
        assert!(Instant::now() < until, "{} log lines, want {n}", log.len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /admin/upstreams`, the entry of `name`.
async fn upstream_view(client: &TestClient, admin: SocketAddr, name: &str) -> Value {
    let r = admin_call(client, admin, "GET", "/admin/upstreams", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no upstream {name} in {}", r.body))
}

/// Polls the admin API until endpoint `i` of `name` is in `state`.
async fn wait_state(client: &TestClient, admin: SocketAddr, name: &str, i: usize, state: &str) {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let v = upstream_view(client, admin, name).await;
        if v["endpoints"][i]["state"] == state {
            return;
        }
        assert!(
            Instant::now() < until,
            "endpoint {i} of {name} never became {state}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_spreads_over_every_endpoint_and_the_log_names_each() {
    let eps = [
        Flaky::spawn("a").await,
        Flaky::spawn("b").await,
        Flaky::spawn("c").await,
    ];
    let old = Flaky::spawn("old").await;
    let urls: Vec<String> = eps.iter().map(Flaky::url).collect();
    let dir = TestDir::new();
    let cohort = Cohort::start(
        &dir,
        &yaml(
            &format!(
                "  old: {{ url: {} }}\n  new: {{ endpoints: {} }}\n",
                old.url(),
                list(&urls)
            ),
            &treatment_only("new", None),
        ),
    );
    let client = TestClient::new();
    let n = 90;
    // Concurrent batches too, so in-flight counts differ between endpoints.
    let all: Vec<usize> = (0..n).collect();
    for batch in all.chunks(10) {
        let reqs = batch.iter().map(|&i| {
            let client = client.clone();
            let addr = cohort.addr;
            async move { client.post(addr, "/predict", Some(&format!("u{i}"))).await }
        });
        for r in futures_join(reqs).await {
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.variant(), "treatment");
        }
    }
    let hits: Vec<usize> = eps.iter().map(Flaky::hits).collect();
    assert_eq!(hits.iter().sum::<usize>(), n, "{hits:?}");
    assert!(
        hits.iter().all(|&h| h >= 10),
        "every endpoint served a share: {hits:?}"
    );
    assert_eq!(old.hits(), 0, "never another variant's upstream");
    let log = log_lines(&dir, n);
    for ep in &eps {
        let addr = ep.addr.to_string();
        let logged = log
            .iter()
            .filter(|l| l["upstream"] == addr.as_str())
            .count();
        assert_eq!(logged, ep.hits(), "the log names the endpoint that served");
    }
    assert!(log.iter().all(|l| l.get("fallback").is_none()));
}

/// Runs the futures concurrently on the test's runtime.
async fn futures_join<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_takes_an_endpoint_out_and_brings_it_back() {
    let a = Flaky::spawn("a").await;
    let b = Flaky::spawn("b").await;
    let old = Flaky::spawn("old").await;
    let dir = TestDir::new();
    let cfg = yaml(
        &format!(
            "  old: {{ url: {} }}\n  new: {{ endpoints: {}, health: {{ path: /health, interval: 50ms, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }} }}\n",
            old.url(),
            list(&[a.url(), b.url()])
        ),
        &treatment_only("new", None),
    );
    let cohort = Cohort::start(&dir, &with_admin(&dir, &cfg));
    let admin = cohort.admin_addr();
    let client = TestClient::new();
    wait_state(&client, admin, "new", 0, "up").await;

    // Endpoint a fails its checks (and would fail requests): out.
    a.set(Mode::Fail);
    wait_state(&client, admin, "new", 0, "down").await;
    let v = upstream_view(&client, admin, "new").await;
    assert_eq!(v["available"], 1, "{v}");
    assert_eq!(v["health_check"], "/health");
    let before = a.hits();
    for i in 0..20 {
        let r = client
            .post(cohort.addr, "/predict", Some(&format!("h{i}")))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(a.hits(), before, "a down endpoint gets no requests");
    assert!(
        cohort
            .wait_for_log("endpoint unhealthy", Duration::from_secs(5))
            .contains(&a.addr.to_string()),
        "the change is logged"
    );

    // It goes down for good, then comes back healthy: in again.
    a.go_down();
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.set(Mode::Ok);
    a.come_back().await;
    wait_state(&client, admin, "new", 0, "up").await;
    cohort.wait_for_log("endpoint healthy", Duration::from_secs(5));
    let until = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    while a.hits() == before {
        assert!(
            Instant::now() < until,
            "the endpoint never got requests again"
        );
        let r = client
            .post(cohort.addr, "/predict", Some(&format!("k{i}")))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_eject_an_endpoint_passively() {
    let a = Flaky::spawn("a").await;
    let b = Flaky::spawn("b").await;
    let old = Flaky::spawn("old").await;
    a.set(Mode::Fail);
    let dir = TestDir::new();
    let cfg = yaml(
        &format!(
            "  old: {{ url: {} }}\n  new: {{ endpoints: {}, eject_after: 3, eject_for: 1m }}\n",
            old.url(),
            list(&[a.url(), b.url()])
        ),
        &treatment_only("new", None),
    );
    let cohort = Cohort::start(&dir, &with_admin(&dir, &cfg));
    let admin = cohort.admin_addr();
    let client = TestClient::new();
    let mut failed = 0;
    for i in 0..60 {
        let r = client
            .post(cohort.addr, "/predict", Some(&format!("p{i}")))
            .await;
        assert_eq!(r.variant(), "treatment");
        if r.status == 503 {
            // The upstream's own 503, relayed (5xx answers are not retried).
            failed += 1;
        } else {
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
    assert_eq!(a.hits(), 3, "ejected after exactly eject_after 5xx answers");
    assert_eq!(failed, 3);
    let v = upstream_view(&client, admin, "new").await;
    assert_eq!(v["endpoints"][0]["state"], "ejected", "{v}");
    assert_eq!(v["endpoints"][1]["state"], "up", "{v}");
    assert!(cohort
        .wait_for_log("endpoint ejected", Duration::from_secs(5))
        .contains(&a.addr.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_connect_moves_to_another_endpoint() {
    let dead = Flaky::dead_address().await;
    let b = Flaky::spawn("b").await;
    let old = Flaky::spawn("old").await;
    let dir = TestDir::new();
    // eject_after 0: the dead endpoint stays in rotation, so requests keep
    // drawing it and each one must be retried.
    let cfg = yaml(
        &format!(
            "  old: {{ url: {} }}\n  new: {{ endpoints: [http://{dead}, {}], eject_after: 0 }}\n",
            old.url(),
            b.url()
        ),
        &treatment_only("new", None),
    );
    let cohort = Cohort::start(&dir, &cfg);
    let client = TestClient::new();
    for i in 0..30 {
        let r = client
            .send(
                cohort.addr,
                "POST",
                "/predict",
                &[("x-user-id", Some(&format!("c{i}")))],
                "0123456789",
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["model"], "b");
    }
    assert_eq!(b.hits(), 30);
    assert_eq!(b.body_bytes.load(std::sync::atomic::Ordering::SeqCst), 300);
    let log = log_lines(&dir, 30);
    assert!(log
        .iter()
        .all(|l| l["upstream"] == b.addr.to_string().as_str() && l["error"].is_null()));
    assert_eq!(old.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_body_went_upstream_is_never_retried() {
    let reset = Flaky::spawn("reset").await;
    reset.set(Mode::Reset);
    let b = Flaky::spawn("b").await;
    let old = Flaky::spawn("old").await;
    let dir = TestDir::new();
    let cfg = yaml(
        &format!(
            "  old: {{ url: {} }}\n  new: {{ endpoints: {}, eject_after: 0 }}\n",
            old.url(),
            list(&[reset.url(), b.url()])
        ),
        &treatment_only("new", None),
    );
    let cohort = Cohort::start(&dir, &cfg);
    let client = TestClient::new();
    let n = 30;
    let mut resets = 0;
    for i in 0..n {
        let r = client
            .send(
                cohort.addr,
                "POST",
                "/predict",
                &[("x-user-id", Some(&format!("r{i}")))],
                "0123456789",
            )
            .await;
        assert_eq!(r.variant(), "treatment");
        match r.status.as_u16() {
            200 => assert_eq!(r.json()["model"], "b"),
            502 => {
                assert_eq!(r.json()["error"], "upstream_reset", "{}", r.body);
                resets += 1;
            }
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    assert!(resets > 0, "the resetting endpoint was drawn");
    assert_eq!(
        resets,
        reset.hits(),
        "each reset request was answered 502, not retried"
    );
    assert_eq!(
        reset.hits() + b.hits(),
        n,
        "no request reached two endpoints"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_with_every_endpoint_down_gets_a_stamped_503_never_another_upstream() {
    let a = Flaky::spawn("a").await;
    let b = Flaky::spawn("b").await;
    let old = Flaky::spawn("old").await;
    let dir = TestDir::new();
    let cfg = yaml(
        &format!(
            "  old: {{ url: {} }}\n  new: {{ endpoints: {}, health: {{ path: /health, interval: 50ms, timeout: 500ms, unhealthy_after: 1, healthy_after: 1 }} }}\n",
            old.url(),
            list(&[a.url(), b.url()])
        ),
        &treatment_only("new", None),
    );
    let cohort = Cohort::start(&dir, &with_admin(&dir, &cfg));
    let admin = cohort.admin_addr();
    let client = TestClient::new();
    a.set(Mode::Fail);
    b.go_down();
    wait_state(&client, admin, "new", 0, "down").await;
    wait_state(&client, admin, "new", 1, "down").await;
    let before = a.hits();
    let r = client.post(cohort.addr, "/predict", Some("alice")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "upstream_unavailable");
    assert_eq!(r.variant(), "treatment", "stamped with the unit's variant");
    assert_eq!(r.header("x-cohort-experiment"), "ranker");
    assert_eq!(r.epoch(), 1);
    assert_eq!(old.hits(), 0, "the control's upstream is never borrowed");
    assert_eq!(a.hits(), before);
    let log = log_lines(&dir, 1);
    let line = log.last().unwrap();
    assert_eq!(line["error"], "upstream_unavailable");
    assert_eq!(line["status"], 503);
    assert_eq!(line["variant"], "treatment");
    assert!(line.get("fallback").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_fallback_serves_the_variant_and_is_logged() {
    let a = Flaky::spawn("a").await;
    let old = Flaky::spawn("old").await;
    let spare = Flaky::spawn("spare").await;
    let dir = TestDir::new();
    let cfg = yaml(
        &format!(
            "  old: {{ url: {} }}\n  spare: {{ url: {} }}\n  new: {{ url: {}, health: {{ path: /health, interval: 50ms, timeout: 500ms, unhealthy_after: 1, healthy_after: 1 }} }}\n",
            old.url(),
            spare.url(),
            a.url()
        ),
        &treatment_only("new", Some("spare")),
    );
    let cohort = Cohort::start(&dir, &with_admin(&dir, &cfg));
    let admin = cohort.admin_addr();
    let client = TestClient::new();
    let r = client.post(cohort.addr, "/predict", Some("bob")).await;
    assert_eq!(r.json()["model"], "a", "its own upstream while it is up");
    a.go_down();
    wait_state(&client, admin, "new", 0, "down").await;
    let r = client.post(cohort.addr, "/predict", Some("bob")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["model"], "spare");
    assert_eq!(r.variant(), "treatment", "still the unit's variant");
    assert_eq!(old.hits(), 0);
    let log = log_lines(&dir, 2);
    let first = &log[0];
    assert!(first.get("fallback").is_none(), "{first}");
    let line = log.last().unwrap();
    assert_eq!(line["fallback"], true, "{line}");
    assert_eq!(line["upstream"], spare.addr.to_string().as_str());
    assert_eq!(line["variant"], "treatment");
    assert!(line["error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_hanging_upstreams_get_504_by_the_timeout_that_applies() {
    let late = Flaky::spawn("late").await;
    late.set(Mode::Late);
    late.set_delay(Duration::from_secs(3));
    let hang = Flaky::spawn("hang").await;
    hang.set(Mode::Hang);
    let stall = Flaky::spawn("stall").await;
    stall.set(Mode::StallBody);
    let dir = TestDir::new();
    let experiments = "  - name: late\n    routes: [/late]\n    salt: s\n    variants:\n      - { name: control, upstream: late, weight: 100 }\n  - name: hang\n    routes: [/hang]\n    salt: s\n    variants:\n      - { name: control, upstream: hang, weight: 100 }\n  - name: stall\n    routes: [/stall]\n    salt: s\n    variants:\n      - { name: control, upstream: stall, weight: 100 }\n";
    let cfg = yaml(
        &format!(
            "  late: {{ url: {}, timeout: 300ms }}\n  hang: {{ url: {}, timeout: 30s, total_timeout: 400ms }}\n  stall: {{ url: {}, timeout: 30s, total_timeout: 400ms }}\n",
            late.url(),
            hang.url(),
            stall.url()
        ),
        experiments,
    );
    let cohort = Cohort::start(&dir, &cfg);
    let client = TestClient::new();

    // Slow to its first byte: the first-byte `timeout`.
    let r = client.post(cohort.addr, "/late", Some("u")).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("within 300 ms"),
        "{}",
        r.body
    );
    assert_eq!(r.variant(), "control");

    // Hangs, with a total_timeout shorter than `timeout`: the total one.
    let r = client.post(cohort.addr, "/hang", Some("u")).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("within 400 ms"),
        "{}",
        r.body
    );

    // Head sent, body stalls: cut at total_timeout, logged as a timeout.
    let cut = client
        .try_send(
            cohort.addr,
            "POST",
            "/stall",
            &[("x-user-id", Some("u"))],
            "",
        )
        .await;
    assert!(cut.is_err(), "the body was cut: {cut:?}");
    let until = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let log = dir.access_log();
        if let Some(l) = log.iter().find(|l| l["path"] == "/stall") {
            break l.clone();
        }
        assert!(Instant::now() < until, "no log line for the cut response");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["status"], 200);
    assert_eq!(line["error"], "upstream_timeout", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_is_504_alone_and_moves_to_another_endpoint_otherwise() {
    let hole = BlackHole::spawn().await;
    let b = Flaky::spawn("b").await;
    let dir = TestDir::new();
    let experiments = "  - name: alone\n    routes: [/alone]\n    salt: s\n    variants:\n      - { name: control, upstream: alone, weight: 100 }\n  - name: pair\n    routes: [/pair]\n    salt: s\n    variants:\n      - { name: control, upstream: pair, weight: 100 }\n";
    let cfg = yaml(
        &format!(
            "  alone: {{ url: http://{}, connect_timeout: 200ms }}\n  pair: {{ endpoints: [http://{}, {}], connect_timeout: 200ms, eject_after: 0 }}\n",
            hole.addr,
            hole.addr,
            b.url()
        ),
        experiments,
    );
    let cohort = Cohort::start(&dir, &cfg);
    let client = TestClient::new();
    let r = client.post(cohort.addr, "/alone", Some("u")).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("within 200 ms"),
        "{}",
        r.body
    );
    for i in 0..8 {
        let r = client
            .post(cohort.addr, "/pair", Some(&format!("t{i}")))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["model"], "b");
    }
    assert_eq!(b.hits(), 8);
}
