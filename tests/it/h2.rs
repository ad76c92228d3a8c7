//! HTTP/2 downstream on the plaintext port: h2c with prior knowledge beside
//! HTTP/1.1, every stream stamped and logged with its protocol, and the
//! same unit served the same variant on both.

use std::time::Duration;

use crate::edge_util::*;
use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_and_http1_share_the_port_the_stamps_and_the_log() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let cohort = Cohort::start(
        &dir,
        &config(&[("old", &old), ("new", &new)], &ranker("50", "50")),
    );
    let url = format!("http://{}/predict", cohort.addr);
    let mut sent = Vec::new();
    for i in 0..12 {
        let unit = format!("h2-user-{i}");
        let hdr = format!("x-user-id: {unit}");
        let h2 = curl(&a(&[
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-H",
            &hdr,
            &url,
        ]))
        .await;
        let h1 = curl(&a(&["--http1.1", "-X", "POST", "-H", &hdr, &url])).await;
        assert_eq!(
            (h2.code, h2.protocol.as_str(), h2.status),
            (0, "HTTP/2", 200),
            "{h2:?}"
        );
        assert_eq!(
            (h1.code, h1.protocol.as_str(), h1.status),
            (0, "HTTP/1.1", 200),
            "{h1:?}"
        );
        for r in [&h2, &h1] {
            assert_eq!(r.header("x-cohort-experiment"), "ranker", "{r:?}");
            assert_eq!(r.header("x-cohort-epoch"), "1", "{r:?}");
        }
        let variant = h2.header("x-cohort-variant");
        assert!(["control", "treatment"].contains(&variant), "{h2:?}");
        assert_eq!(
            variant,
            h1.header("x-cohort-variant"),
            "same unit, same variant"
        );
        // The backend answers with its name: the stamp tells the truth.
        let served = if variant == "control" { "old" } else { "new" };
        assert!(h2.body.contains(served), "{h2:?}");
        sent.push((h2.header("x-request-id").to_string(), "h2", unit.clone()));
        sent.push((h1.header("x-request-id").to_string(), "http/1.1", unit));
    }
    // Several streams at once on one connection, each stamped.
    let mut send = h2_client(tokio::net::TcpStream::connect(cohort.addr).await.unwrap()).await;
    let authority = cohort.addr.to_string();
    let streams = (0..3).map(|_| {
        let mut send = send.clone();
        let authority = authority.clone();
        async move { h2_post(&mut send, &authority, "/predict", "multi").await }
    });
    let answers = futures_join(streams.collect()).await;
    let first = answers[0].1["x-cohort-variant"].clone();
    for (status, headers, _) in &answers {
        assert_eq!(*status, 200);
        assert_eq!(headers["x-cohort-variant"], first);
        assert_eq!(headers["x-cohort-experiment"], "ranker");
    }
    let (status, _, _) = h2_post(&mut send, &authority, "/predict", "multi").await;
    assert_eq!(status, 200, "the connection serves on after its streams");
    // The upstream (HTTP/1.1) hears :authority as the client's host.
    let served = if first == "control" { &old } else { &new };
    let seen = served.last_headers();
    assert_eq!(seen["x-forwarded-host"], authority.as_str());
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-cohort-variant"], first);
    assert!(cohort.terminate().success());

    let log = dir.access_log();
    assert_eq!(log.len(), sent.len() + 4, "one line per stream");
    for (id, protocol, unit) in &sent {
        let l = log
            .iter()
            .find(|l| l["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no line for {id}"));
        assert_eq!(l["protocol"], *protocol, "{l}");
        assert_eq!(l["unit"], unit.as_str(), "{l}");
        assert_eq!(l["status"], 200, "{l}");
    }
    let multi: Vec<_> = log.iter().filter(|l| l["unit"] == "multi").collect();
    assert_eq!(multi.len(), 4);
    assert!(multi
        .iter()
        .all(|l| l["protocol"] == "h2" && l["status"] == 200));
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(fs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_is_closed_after_the_idle_timeout_but_not_while_a_stream_is_open() {
    // Each answer takes longer than the idle timeout.
    let old = Backend::spawn_with("old", Duration::from_millis(1500)).await;
    let new = Backend::spawn_with("new", Duration::from_millis(1500)).await;
    let dir = TestDir::new();
    let yaml = config(&[("old", &old), ("new", &new)], &ranker("50", "50"))
        .replace(
            "shutdown_timeout: 5s",
            "shutdown_timeout: 5s, client_idle_timeout: 1s",
        )
        .replace("timeout: 2s,", "timeout: 5s,");
    assert!(yaml.contains("client_idle_timeout: 1s"));
    let cohort = Cohort::start(&dir, &yaml);
    let authority = cohort.addr.to_string();
    let mut send = h2_client(tokio::net::TcpStream::connect(cohort.addr).await.unwrap()).await;
    let (status, _, _) = h2_post(&mut send, &authority, "/predict", "slow").await;
    assert_eq!(
        status, 200,
        "a stream longer than the idle timeout completes"
    );
    assert!(!send.is_closed(), "just used: still open");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !send.is_closed() {
        assert!(
            std::time::Instant::now() < deadline,
            "an idle HTTP/2 connection is never closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cohort.terminate().success());
    assert_eq!(dir.access_log().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_h2_streams_in_flight_finish_and_logs_them() {
    let old = Backend::spawn_with("old", Duration::from_millis(1000)).await;
    let new = Backend::spawn_with("new", Duration::from_millis(1000)).await;
    let dir = TestDir::new();
    let cohort = Cohort::start(
        &dir,
        &config(&[("old", &old), ("new", &new)], &ranker("50", "50")),
    );
    let authority = cohort.addr.to_string();
    let send = h2_client(tokio::net::TcpStream::connect(cohort.addr).await.unwrap()).await;
    let streams: Vec<_> = (0..4)
        .map(|i| {
            let (mut send, authority) = (send.clone(), authority.clone());
            tokio::spawn(async move {
                h2_post(&mut send, &authority, "/predict", &format!("term-{i}")).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cohort.signal("TERM");
    for s in streams {
        let (status, headers, _) = s.await.unwrap();
        assert_eq!(status, 200);
        assert!(headers.contains_key("x-cohort-variant"));
    }
    assert!(cohort.terminate().success());
    let log = dir.access_log();
    assert_eq!(log.len(), 4, "every stream logged");
    assert!(log
        .iter()
        .all(|l| l["protocol"] == "h2" && l["status"] == 200));
}
