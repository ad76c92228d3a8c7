//! The access log: exactly one line per response, fields matching it.

use std::collections::HashMap;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_has_exactly_one_log_line_whose_fields_match() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dead = Backend::spawn("dead").await;
    let dir = TestDir::new();
    let experiments = format!(
        "{}  - name: strict\n    routes: [/strict]\n    on_missing_unit: reject\n    variants:\n      - {{ name: only, upstream: dead, weight: 100 }}\n",
        ranker("50", "50")
    );
    let cohort = Cohort::start(
        &dir,
        &config(
            &[("old", &old), ("new", &new), ("dead", &dead)],
            &experiments,
        ),
    );
    dead.stop();
    let client = TestClient::new();
    let mut resps = Vec::new();
    for i in 0..40 {
        let u = format!("log-{}", i % 15);
        resps.push((
            "POST",
            "/predict",
            Some(u.clone()),
            client.post(cohort.addr, "/predict?debug=1", Some(&u)).await,
        ));
    }
    resps.push((
        "POST",
        "/predict",
        None,
        client.post(cohort.addr, "/predict", None).await,
    ));
    resps.push((
        "GET",
        "/nowhere",
        Some("x".into()),
        client
            .send(
                cohort.addr,
                "GET",
                "/nowhere",
                &[("x-user-id", Some("x"))],
                "",
            )
            .await,
    ));
    resps.push((
        "POST",
        "/strict",
        None,
        client.post(cohort.addr, "/strict", None).await,
    ));
    resps.push((
        "POST",
        "/strict",
        Some("y".into()),
        client.post(cohort.addr, "/strict", Some("y")).await,
    ));
    assert!(cohort.terminate().success());

    let log = dir.access_log();
    assert_eq!(log.len(), resps.len());
    let by_id: HashMap<String, &serde_json::Value> = log
        .iter()
        .map(|l| (l["request_id"].as_str().unwrap().to_string(), l))
        .collect();
    assert_eq!(by_id.len(), log.len(), "request ids are unique");
    let mut seen_first = std::collections::HashSet::new();
    for (method, path, unit, r) in &resps {
        let l = by_id[r.header("x-request-id")];
        assert_eq!(l["status"], r.status.as_u16(), "{l}");
        assert_eq!(l["method"], *method);
        assert_eq!(l["path"], *path, "path without the query");
        assert_eq!(l["bytes_out"], r.body.len() as u64);
        assert_eq!(l["protocol"], "http/1.1", "{l}");
        assert_eq!(l["schema"], 1);
        assert!(l["ts"].as_str().unwrap().ends_with('Z'));
        assert_eq!(l["config_version"].as_str().unwrap().len(), 12);
        assert!(l["total_ms"].as_f64().unwrap() >= 0.0);
        match r.headers.get("x-cohort-experiment") {
            Some(x) => {
                assert_eq!(l["experiment"], x.to_str().unwrap());
                assert_eq!(l["variant"], r.variant());
                assert_eq!(l["epoch"], r.epoch());
                assert_eq!(l["current_epoch"], 1);
            }
            None => assert!(l["experiment"].is_null() && l["variant"].is_null()),
        }
        match (path, unit) {
            (&"/predict", Some(u)) => {
                assert_eq!(l["unit"], u.as_str());
                assert_eq!(l["bucket"], bucket("ranker-salt", u));
                assert_eq!(
                    l["upstream"].as_str().unwrap(),
                    if r.variant() == "control" {
                        old.addr.to_string()
                    } else {
                        new.addr.to_string()
                    }
                );
                assert_eq!(l["bytes_in"], 20);
                // first_exposure exactly once per unit, on its first request.
                let first = seen_first.insert(u.clone());
                assert_eq!(l["first_exposure"], first, "{l}");
                assert_eq!(l["reason"], if first { "new" } else { "stored" });
            }
            (&"/predict", None) => assert_eq!(l["reason"], "no_unit"),
            (&"/nowhere", _) => assert_eq!(l["error"], "no_route"),
            (&"/strict", None) => assert_eq!(l["error"], "missing_unit"),
            (&"/strict", Some(_)) => {
                assert_eq!(l["error"], "upstream_connect");
                assert_eq!(l["variant"], "only");
            }
            _ => unreachable!(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_units_are_logged_as_a_keyed_hmac() {
    use hmac::{Hmac, Mac};
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    std::fs::write(dir.path().join("unit.key"), "s3cret-key\n").unwrap();
    let yaml = config(&[("old", &old), ("new", &new)], &ranker("50", "50")).replace(
        "access_log: { path: ./logs/access.jsonl }",
        "access_log: { path: ./logs/access.jsonl, log_unit: hashed, log_unit_key_file: unit.key }",
    );
    let cohort = Cohort::start(&dir, &yaml);
    TestClient::new()
        .post(cohort.addr, "/predict", Some("alice@example.com"))
        .await;
    assert!(cohort.terminate().success());
    let log = dir.access_log();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret-key").unwrap();
    mac.update(b"alice@example.com");
    let want: String = mac.finalize().into_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(log[0]["unit"], want);
    let raw = std::fs::read_to_string(dir.log_path()).unwrap();
    assert!(!raw.contains("alice@example.com") && !raw.contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_log_after_logrotate_moved_it() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let cohort = Cohort::start(
        &dir,
        &config(&[("old", &old), ("new", &new)], &ranker("50", "50")),
    );
    let client = TestClient::new();
    post_all(&client, cohort.addr, &users("before", 20), 4).await;
    // logrotate: move the file away, then tell the proxy.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let rotated = dir.path().join("logs/access.jsonl.1");
    std::fs::rename(dir.log_path(), &rotated).unwrap();
    cohort.signal("USR1");
    cohort.wait_for_log(
        "reopening the access log",
        std::time::Duration::from_secs(5),
    );
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    post_all(&client, cohort.addr, &users("after", 30), 4).await;
    assert!(cohort.terminate().success());
    let count = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().lines().count();
    assert_eq!(
        count(&rotated) + count(&dir.log_path()),
        50,
        "no line lost across the rotation"
    );
    let fresh = std::fs::read_to_string(dir.log_path()).unwrap();
    assert!(
        fresh.lines().all(|l| l.contains("\"after-")),
        "new lines go to the new file"
    );
    assert_eq!(fresh.lines().count(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_still_leaves_its_first_exposure_in_the_log() {
    use tokio::io::AsyncWriteExt;
    let old = Backend::spawn("old").await;
    let slow = Backend::spawn_with("slow", std::time::Duration::from_millis(800)).await;
    let dir = TestDir::new();
    let cohort = Cohort::start(
        &dir,
        &config(&[("old", &old), ("new", &slow)], &ranker("0", "100")),
    );
    let mut tcp = tokio::net::TcpStream::connect(cohort.addr).await.unwrap();
    tcp.write_all(
        b"POST /predict HTTP/1.1\r\nhost: x\r\nx-user-id: quitter\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(tcp);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = TestClient::new()
        .post(cohort.addr, "/predict", Some("quitter"))
        .await;
    assert_eq!((r.variant(), r.epoch()), ("treatment", 1));
    assert!(cohort.terminate().success());
    let log = dir.access_log();
    let lines: Vec<_> = log.iter().filter(|l| l["unit"] == "quitter").collect();
    assert_eq!(lines.len(), 2, "{log:?}");
    assert_eq!(lines[0]["status"], 499);
    assert_eq!(lines[0]["error"], "client_gone");
    assert_eq!(
        lines[0]["first_exposure"], true,
        "the exposure is in the log"
    );
    assert_eq!(lines[1]["first_exposure"], false);
}
