//! TLS termination on the proxy listener: ALPN picks HTTP/2 or HTTP/1.1,
//! a rotated certificate is served without a restart or a failed request,
//! a pair that does not load leaves the old one serving, and mTLS refuses
//! a client without a good certificate in the handshake.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::edge_util::*;
use crate::util::*;

const TLS: &str = "tls: { cert_file: certs/server.crt, key_file: certs/server.key }\n";

/// A rustls client that trusts `ca_pem` and offers `alpn`.
fn connector(ca_pem: &str, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

fn post_args(url: &str, unit: &str, more: &[&str]) -> Vec<String> {
    let hdr = format!("x-user-id: {unit}");
    let mut v = a(&["-X", "POST", "-H", &hdr]);
    v.extend(a(more));
    v.push(url.to_string());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_picks_h2_or_http1_and_a_rotated_certificate_is_served_without_a_failed_request() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (ca1, ca2, ca3) = (Ca::new("one"), Ca::new("two"), Ca::new("three"));
    let (cert, key) = ca1.leaf(false);
    put(&certs, "server.crt", &cert);
    put(&certs, "server.key", &key);
    let ca1_file = put(&certs, "ca1.pem", &ca1.pem).display().to_string();
    let ca2_file = put(&certs, "ca2.pem", &ca2.pem).display().to_string();
    let ca3_file = put(&certs, "ca3.pem", &ca3.pem).display().to_string();
    let both = format!("{}{}", ca1.pem, ca2.pem);
    let both_file = put(&certs, "both.pem", &both).display().to_string();
    let yaml = format!(
        "{}{TLS}",
        config(&[("old", &old), ("new", &new)], &ranker("50", "50"))
    );
    let cohort = Cohort::start(&dir, &yaml);
    let url = format!("https://127.0.0.1:{}/predict", cohort.addr.port());

    // ALPN: h2 and http/1.1, the same unit served the same variant.
    let h2 = curl(&post_args(
        &url,
        "alice",
        &["--http2", "--cacert", &ca1_file],
    ))
    .await;
    let h1 = curl(&post_args(
        &url,
        "alice",
        &["--http1.1", "--cacert", &ca1_file],
    ))
    .await;
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
    }
    assert_eq!(h2.header("x-cohort-variant"), h1.header("x-cohort-variant"));
    // TLS 1.2 and 1.3 are both served.
    for version in [&["--tlsv1.2", "--tls-max", "1.2"][..], &["--tlsv1.3"][..]] {
        let mut args = vec!["--cacert", ca1_file.as_str()];
        args.extend_from_slice(version);
        let r = curl(&post_args(&url, "alice", &args)).await;
        assert_eq!((r.code, r.status), (0, 200), "{version:?}: {r:?}");
    }
    // A client that does not trust the CA is refused by itself.
    let untrusted = curl(&post_args(&url, "alice", &["--cacert", &ca2_file])).await;
    assert_ne!(untrusted.code, 0, "{untrusted:?}");

    // A connection opened before the rotation, kept open across it.
    let tcp = tokio::net::TcpStream::connect(cohort.addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector(&both, b"h2").connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut kept = h2_client(tls).await;
    let authority = format!("127.0.0.1:{}", cohort.addr.port());
    let (status, headers, _) = h2_post(&mut kept, &authority, "/predict", "bob").await;
    assert_eq!(status, 200);
    // The upstream hears the client's scheme and :authority as HTTP/1.
    let served = if headers["x-cohort-variant"] == "control" {
        &old
    } else {
        &new
    };
    let seen = served.last_headers();
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], authority.as_str());
    assert_eq!(seen["x-cohort-variant"], headers["x-cohort-variant"]);

    // A client keeps connecting (new connections, trusting both CAs)
    // while the pair is replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let args = post_args(&url, "carol", &["--http2", "--cacert", &both_file]);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = curl(&args).await;
                if r.code == 0 && r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed during rotation: {r:?}");
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cert2, key2) = ca2.leaf(false);
    put(&certs, "server.key", &key2);
    put(&certs, "server.crt", &cert2);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = curl(&post_args(&url, "dave", &["--cacert", &ca2_file])).await;
        if r.code == 0 && r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    assert!(ok.load(Ordering::Relaxed) > 0);
    let old_ca = curl(&post_args(&url, "dave", &["--cacert", &ca1_file])).await;
    assert_ne!(old_ca.code, 0, "the old certificate is no longer served");
    assert_eq!(
        h2_post(&mut kept, &authority, "/predict", "bob").await.0,
        200,
        "the connection opened before the rotation still serves"
    );

    // A pair that does not match: refused and logged, the last good one
    // keeps serving.
    let (cert3, _) = ca3.leaf(false);
    put(&certs, "server.crt", &cert3);
    cohort.wait_for_log("do not load", Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = curl(&post_args(&url, "erin", &["--cacert", &ca2_file])).await;
    assert_eq!((still.code, still.status), (0, 200), "{still:?}");
    let bad = curl(&post_args(&url, "erin", &["--cacert", &ca3_file])).await;
    assert_ne!(bad.code, 0, "{bad:?}");
    drop(kept);
    assert!(cohort.terminate().success());

    let log = dir.access_log();
    let line = |id: &str| {
        log.iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}"))
            .clone()
    };
    assert_eq!(line(h2.header("x-request-id"))["protocol"], "h2");
    assert_eq!(line(h1.header("x-request-id"))["protocol"], "http/1.1");
    assert_eq!(line(h2.header("x-request-id"))["unit"], "alice");
    assert!(
        log.iter().all(|l| l["status"] == 200),
        "every logged request succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_a_client_with_a_certificate_the_ca_signed_and_refuses_others() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (server_ca, client_ca, other_ca) = (Ca::new("srv"), Ca::new("clients"), Ca::new("other"));
    let (cert, key) = server_ca.leaf(false);
    put(&certs, "server.crt", &cert);
    put(&certs, "server.key", &key);
    put(&certs, "clients.pem", &client_ca.pem);
    let ca_file = put(&certs, "ca.pem", &server_ca.pem).display().to_string();
    let (c, k) = client_ca.leaf(true);
    let good = (
        put(&certs, "good.crt", &c).display().to_string(),
        put(&certs, "good.key", &k).display().to_string(),
    );
    let (c, k) = other_ca.leaf(true);
    let stranger = (
        put(&certs, "bad.crt", &c).display().to_string(),
        put(&certs, "bad.key", &k).display().to_string(),
    );
    let yaml = format!(
        "{}tls: {{ cert_file: certs/server.crt, key_file: certs/server.key, client_ca_file: certs/clients.pem }}\n",
        config(&[("old", &old), ("new", &new)], &ranker("50", "50"))
    );
    let cohort = Cohort::start(&dir, &yaml);
    let url = format!("https://127.0.0.1:{}/predict", cohort.addr.port());

    for proto in ["--http2", "--http1.1"] {
        let r = curl(&post_args(
            &url,
            "alice",
            &[
                proto, "--cacert", &ca_file, "--cert", &good.0, "--key", &good.1,
            ],
        ))
        .await;
        assert_eq!((r.code, r.status), (0, 200), "{r:?}");
        assert_eq!(r.header("x-cohort-experiment"), "ranker", "{r:?}");
    }
    let none = curl(&post_args(&url, "bob", &["--cacert", &ca_file])).await;
    assert_ne!(none.code, 0, "no client certificate: {none:?}");
    assert_eq!(none.status, 0, "refused in the handshake, no HTTP answer");
    let other = curl(&post_args(
        &url,
        "bob",
        &[
            "--cacert",
            &ca_file,
            "--cert",
            &stranger.0,
            "--key",
            &stranger.1,
        ],
    ))
    .await;
    assert_ne!(other.code, 0, "a certificate another CA signed: {other:?}");
    assert_eq!(other.status, 0);
    assert!(cohort.terminate().success());
    let log = dir.access_log();
    assert_eq!(
        log.len(),
        2,
        "only the admitted client's requests reached the proxy"
    );
    assert!(log.iter().all(|l| l["unit"] == "alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_that_does_not_load_stops_start_up_with_the_reason() {
    let old = Backend::spawn("old").await;
    let dir = TestDir::new();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (cert, _) = Ca::new("one").leaf(false);
    put(&certs, "server.crt", &cert);
    put(&certs, "server.key", &cert);
    dir.write_config(&format!(
        "{}{TLS}",
        config(&[("old", &old), ("new", &old)], &ranker("50", "50"))
    ));
    let Err((status, log)) = Cohort::start_existing(&dir) else {
        panic!("started with a certificate as its key");
    };
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    assert!(log.contains("cannot load the TLS files"), "{log}");
    assert!(log.contains("server.key: no private key"), "{log}");
}
