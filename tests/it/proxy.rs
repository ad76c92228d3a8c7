//! Serving: stickiness, the split, stamps, errors and unit policies.

use std::time::Duration;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_follows_the_bucket_contract_and_units_stay_sticky() {
    split_and_stickiness(&TestStore::Embedded).await;
}

/// The body of [`split_follows_the_bucket_contract_and_units_stay_sticky`] on any store: the core suite
/// (redis_core.rs) runs it on Redis and on a Redis Cluster too.
pub(crate) async fn split_and_stickiness(store: &TestStore) {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let cohort = Cohort::start(
        &dir,
        &store.on(&config(
            &[("old", &old), ("new", &new)],
            &ranker("30", "70"),
        )),
    );
    let client = TestClient::new();

    let units = users("split", 10_000);
    let resps = post_all(&client, cohort.addr, &units, 32).await;
    let mut treatment = 0;
    for (u, r) in units.iter().zip(&resps) {
        assert_eq!(r.status, 200, "{r:?}");
        let want = if bucket("ranker-salt", u) < 3000 {
            "control"
        } else {
            "treatment"
        };
        assert_eq!(r.variant(), want, "unit {u}");
        assert_eq!(r.epoch(), 1);
        assert_eq!(r.header("x-cohort-experiment"), "ranker");
        // The upstream that answered is the variant's.
        let model = r.json()["model"].as_str().unwrap().to_string();
        assert_eq!(model, if want == "control" { "old" } else { "new" });
        treatment += usize::from(want == "treatment");
    }
    let expected = 10_000.0 * 0.7;
    let bound = binomial_bound(10_000, 0.7);
    assert!(
        (treatment as f64 - expected).abs() <= bound,
        "treatment {treatment}, expected {expected} ± {bound:.0}"
    );

    // Returning units: the same variant and epoch every time.
    let returning: Vec<String> = units.iter().take(200).cloned().collect();
    for _ in 0..5 {
        let again = post_all(&client, cohort.addr, &returning, 16).await;
        for (i, r) in again.iter().enumerate() {
            assert_eq!(r.variant(), resps[i].variant());
            assert_eq!(r.epoch(), 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_stamps_are_stripped_and_upstream_gets_the_real_ones() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let cohort = Cohort::start(
        &dir,
        &config(&[("old", &old), ("new", &new)], &ranker("100", "0")),
    );
    let client = TestClient::new();
    let r = client
        .send(
            cohort.addr,
            "POST",
            "/predict?x=1",
            &[
                ("x-user-id", Some("mallory")),
                ("x-cohort-variant", Some("treatment")),
                ("x-cohort-epoch", Some("99")),
                ("x-cohort-anything", Some("spoof")),
                ("x-request-id", Some("req-123")),
            ],
            "{}",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.variant(), "control");
    assert_eq!(r.epoch(), 1);
    assert_eq!(r.header("x-request-id"), "req-123");
    assert!(r.headers.get("x-cohort-anything").is_none());
    let seen = old.last_headers();
    assert_eq!(seen["x-cohort-variant"], "control");
    assert_eq!(seen["x-cohort-epoch"], "1");
    assert_eq!(seen["x-cohort-experiment"], "ranker");
    assert_eq!(seen["x-request-id"], "req-123");
    assert!(seen.get("x-cohort-anything").is_none(), "{seen:?}");
    assert_eq!(seen.get_all("x-cohort-variant").iter().count(), 1);
    assert!(seen.contains_key("x-forwarded-for"));
    assert!(new.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refusing_connections_gives_a_stamped_502_and_no_failover() {
    let old = Backend::spawn("old").await;
    let dead = Backend::spawn("dead").await;
    let dir = TestDir::new();
    let cohort = Cohort::start(
        &dir,
        &config(&[("old", &old), ("new", &dead)], &ranker("0", "100")),
    );
    dead.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let client = TestClient::new();
    let r = client.post(cohort.addr, "/predict", Some("alice")).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.variant(), "treatment");
    assert_eq!(r.epoch(), 1);
    assert_eq!(r.header("x-cohort-experiment"), "ranker");
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.json()["error"], "upstream_connect");
    // Never served by the other variant's upstream.
    assert!(old.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gives_a_stamped_504() {
    let old = Backend::spawn("old").await;
    let slow = Backend::spawn_with("slow", Duration::from_secs(3)).await;
    let dir = TestDir::new();
    let yaml = config(&[("old", &old), ("new", &slow)], &ranker("0", "100")).replace(
        &format!("{{ url: {}, timeout: 2s", slow.url()),
        &format!("{{ url: {}, timeout: 300ms", slow.url()),
    );
    let cohort = Cohort::start(&dir, &yaml);
    let r = TestClient::new()
        .post(cohort.addr, "/predict", Some("bob"))
        .await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.variant(), "treatment");
    assert_eq!(r.json()["error"], "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_bad_unit_headers_follow_the_experiment_policy() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let experiments = format!(
        "{}  - name: strict\n    routes: [/strict]\n    on_missing_unit: reject\n    variants:\n      - {{ name: a, upstream: old, weight: 50 }}\n      - {{ name: b, upstream: new, weight: 50 }}\n",
        ranker("0", "100")
    );
    let cohort = Cohort::start(&dir, &config(&[("old", &old), ("new", &new)], &experiments));
    let client = TestClient::new();
    let long = "x".repeat(257);
    let max = "y".repeat(256);
    let bad: [Option<&str>; 4] = [None, Some(""), Some(long.as_str()), Some("tab\there")];
    for unit in bad {
        // control: first variant, epoch 0, even though weights say treatment.
        let r = client
            .send(
                cohort.addr,
                "POST",
                "/predict",
                &[("x-user-id", unit)],
                "{}",
            )
            .await;
        assert_eq!(r.status, 200, "{unit:?}");
        assert_eq!(r.variant(), "control", "{unit:?}");
        assert_eq!(r.epoch(), 0);
        assert_eq!(r.json()["model"], "old");
        // reject: 400 JSON, stamped variant none.
        let r = client
            .send(cohort.addr, "POST", "/strict", &[("x-user-id", unit)], "{}")
            .await;
        assert_eq!(r.status, 400, "{unit:?}");
        assert_eq!(r.variant(), "none");
        assert_eq!(r.epoch(), 0);
        assert_eq!(r.header("x-cohort-experiment"), "strict");
        assert_eq!(r.json()["error"], "missing_unit");
    }
    // 256 bytes is still a valid unit.
    let r = client.post(cohort.addr, "/predict", Some(&max)).await;
    assert_eq!((r.variant(), r.epoch()), ("treatment", 1));
    // Unassigned requests are never stored: the log says no_unit, not new.
    cohort.terminate();
    let log = dir.access_log();
    let no_unit = log.iter().filter(|l| l["reason"] == "no_unit").count();
    assert_eq!(no_unit, 8);
    assert_eq!(
        log.iter().filter(|l| l["first_exposure"] == true).count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_paths_get_404_or_the_default_upstream() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let prefix = "  - name: infer\n    routes: [\"/v2/models/ranker/*\"]\n    variants:\n      - { name: a, upstream: old, weight: 100 }\n";
    let cohort = Cohort::start(&dir, &config(&[("old", &old), ("new", &new)], prefix));
    let client = TestClient::new();
    let r = client
        .post(cohort.addr, "/healthz-of-model", Some("u"))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "no_route");
    assert!(r.headers.get("x-cohort-variant").is_none());
    let r = client
        .post(cohort.addr, "/v2/models/ranker/infer", Some("u"))
        .await;
    assert_eq!((r.status.as_u16(), r.variant()), (200, "a"));
    drop(cohort);

    let dir = TestDir::new();
    let yaml = config(&[("old", &old), ("new", &new)], prefix)
        .replace("experiments:\n", "default_upstream: new\nexperiments:\n");
    let cohort = Cohort::start(&dir, &yaml);
    let r = client.post(cohort.addr, "/other", Some("u")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"], "new");
    assert!(r.headers.get("x-cohort-variant").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_forwarded_headers_are_rewritten_not_passed_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let cohort = Cohort::start(
        &dir,
        &config(&[("old", &old), ("new", &new)], &ranker("100", "0")),
    );
    let mut tcp = tokio::net::TcpStream::connect(cohort.addr).await.unwrap();
    let req = "GET /predict HTTP/1.1\r\nhost: front.example\r\nx-user-id: hop\r\nconnection: keep-alive\r\nconnection: x-secret\r\nx-secret: 1\r\nx-forwarded-host: evil.example\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("\"echo_bytes\":5"),
        "a chunked GET body reaches the upstream: {head}"
    );
    let seen = old.last_headers();
    assert!(
        seen.get("x-secret").is_none(),
        "listed in a second Connection header"
    );
    assert_eq!(seen["x-forwarded-host"], "front.example");
    assert_eq!(seen.get_all("x-forwarded-host").iter().count(), 1);
    assert_eq!(seen["x-forwarded-proto"], "http");
}
