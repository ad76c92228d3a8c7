//! The handler on in-memory bodies: no client socket, and an upstream
//! that is either absent (a closed port) or never reached.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use super::{handle, Conn, RequestLimits};
use crate::config::{self, Env};
use crate::proxy::core::Peer;
use crate::state::State;

/// A proxy state whose only route is an experiment on `/predict` whose
/// upstream is a port nothing listens on.
async fn state(dir: &std::path::Path) -> Arc<State> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    state_on(dir, port).await
}

/// As [`state`], with the upstream on `port`.
async fn state_on(dir: &std::path::Path, port: u16) -> Arc<State> {
    let yaml = format!(
        "listen: 127.0.0.1:0\nstore: {{ path: ./data }}\naccess_log: {{ path: ./access.jsonl }}\n\
         upstreams:\n  down: {{ url: \"http://127.0.0.1:{port}\" }}\n\
         experiments:\n  - name: ranker\n    routes: [/predict]\n    salt: s\n    unit_header: x-user-id\n\
         \x20   variants:\n      - {{ name: control, upstream: down, weight: 100 }}\n"
    );
    let file = dir.join("cohort.yaml");
    let config = config::parse(&yaml, &file, dir, &Env::default()).expect("valid test config");
    State::start(config, None, None)
        .await
        .expect("state starts")
}

fn conn() -> Arc<Conn> {
    Arc::new(Conn {
        peer: Peer::new("10.0.0.1:5555".parse().unwrap()),
        limits: RequestLimits {
            body_timeout: Duration::from_millis(200),
            max_body: None,
            max_headers: 100,
        },
        tunnels: tokio::sync::watch::channel(false).1,
        tls: false,
        _drain: tokio::sync::watch::channel(false).1,
    })
}

fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> http::request::Builder {
    let mut b = Request::builder().method(method).uri(path);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b
}

async fn body_json(resp: http::Response<super::body::ResponseBody>) -> serde_json::Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).expect("a JSON error body")
}

#[tokio::test]
async fn requests_refused_before_routing_are_the_clients_fault() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    for (method, headers, status, cause) in [
        (
            Method::CONNECT,
            vec![("host", "a:1")],
            405,
            "method_not_allowed",
        ),
        (Method::GET, vec![], 400, "bad_host"),
        (Method::GET, vec![("host", "a b/c")], 400, "bad_host"),
        (
            Method::POST,
            vec![("host", "a"), ("transfer-encoding", "gzip, chunked")],
            501,
            "unsupported_transfer_coding",
        ),
        (
            Method::GET,
            vec![("host", "a"), ("x-user-id", "u1"), ("x-user-id", "u2")],
            400,
            "duplicate_unit",
        ),
    ] {
        let req = request(method.clone(), "/predict", &headers)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = handle(state.clone(), conn(), req).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {headers:?}");
        assert_eq!(
            resp.headers().get("connection").map(|v| v.as_bytes()),
            (cause != "duplicate_unit").then_some(&b"close"[..]),
            "{cause}: a client fault that breaks trust in the framing closes"
        );
        assert_eq!(body_json(resp).await["error"], cause);
    }
}

#[tokio::test]
async fn an_unreachable_upstream_is_the_upstreams_fault_and_stamped() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    let req = request(
        Method::GET,
        "/predict",
        &[("host", "a"), ("x-user-id", "u1")],
    )
    .body(Full::new(Bytes::new()))
    .unwrap();
    let resp = handle(state, conn(), req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["x-cohort-variant"], "control");
    assert_eq!(body_json(resp).await["error"], "upstream_connect");
}

/// A request body that yields `first` and then nothing, ever.
struct Body(Option<Result<http_body::Frame<Bytes>, std::io::Error>>);

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        match self.0.take() {
            Some(f) => std::task::Poll::Ready(Some(f)),
            None => std::task::Poll::Pending,
        }
    }
}

/// An upstream that accepts and reads, and never answers.
async fn silent_upstream() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_request_body_that_breaks_or_stalls_is_the_clients_fault() {
    let dir = tempfile::tempdir().unwrap();
    let state = state_on(dir.path(), silent_upstream().await).await;
    let bad = std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size");
    for (body, status, cause) in [
        (Body(Some(Err(bad))), 400, "bad_framing"),
        // Never a byte: the body timeout (200 ms here) ends it.
        (Body(None), 408, "request_timeout"),
    ] {
        let req = request(
            Method::POST,
            "/predict",
            &[("host", "a"), ("x-user-id", "u1")],
        )
        .body(body)
        .unwrap();
        let resp = handle(state.clone(), conn(), req).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{cause}");
        assert_eq!(resp.headers()["x-cohort-variant"], "control", "{cause}");
        assert_eq!(body_json(resp).await["error"], cause);
    }
}

/// A client gone mid-body gets no response at all: the service fails, so
/// hyper closes without writing (499 is the access log's status only).
#[tokio::test]
async fn a_client_gone_mid_body_is_sent_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = state_on(dir.path(), silent_upstream().await).await;
    let gone = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "cut short");
    let req = request(
        Method::POST,
        "/predict",
        &[("host", "a"), ("x-user-id", "u1")],
    )
    .body(Body(Some(Err(gone))))
    .unwrap();
    assert!(handle(state, conn(), req).await.is_err());
}

#[tokio::test]
async fn limits_refuse_before_routing_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    let limited = Arc::new(Conn {
        limits: RequestLimits {
            body_timeout: Duration::from_millis(200),
            max_body: Some(10),
            max_headers: 3,
        },
        ..Arc::into_inner(conn()).unwrap()
    });
    let too_long = request(
        Method::POST,
        "/predict",
        &[("host", "a"), ("x-user-id", "u1")],
    )
    .body(Full::new(Bytes::from_static(b"eleven bytes")))
    .unwrap();
    let resp = handle(state.clone(), limited.clone(), too_long)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.headers()["connection"], "close");
    assert_eq!(body_json(resp).await["error"], "body_too_large");

    let many = request(
        Method::GET,
        "/predict",
        &[("host", "a"), ("x-user-id", "u1"), ("a", "1"), ("b", "2")],
    )
    .body(Full::new(Bytes::new()))
    .unwrap();
    let resp = handle(state, limited, many).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(body_json(resp).await["error"], "head_too_large");
}
