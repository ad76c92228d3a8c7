//! Clients that talk to the proxy: [`TestClient`] (keep-alive HTTP/1.1,
//! answers as [`Resp`]), [`admin_call`] for the admin API, and
//! [`raw_exchange`] for raw bytes on one connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::find;

/// A response as the test client saw it.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    pub(crate) fn variant(&self) -> &str {
        self.header("x-cohort-variant")
    }
    pub(crate) fn epoch(&self) -> u32 {
        self.header("x-cohort-epoch")
            .parse()
            .unwrap_or_else(|_| panic!("no epoch stamp: {self:?}"))
    }
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// A keep-alive HTTP/1.1 client.
#[derive(Clone)]
pub(crate) struct TestClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl TestClient {
    pub(crate) fn new() -> TestClient {
        TestClient {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub(crate) async fn post(&self, addr: SocketAddr, path: &str, user: Option<&str>) -> Resp {
        self.send(
            addr,
            "POST",
            path,
            &[("x-user-id", user)],
            "{\"features\":[1,2,3]}",
        )
        .await
    }

    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, Option<&str>)],
        body: &str,
    ) -> Resp {
        self.try_send(addr, method, path, headers, body)
            .await
            .expect("request failed")
    }

    pub(crate) async fn try_send(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, Option<&str>)],
        body: &str,
    ) -> Result<Resp, String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            if let Some(v) = v {
                b = b.header(*k, *v);
            }
        }
        let req = b.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let resp = self
            .inner
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Calls the admin API; `token` None sends no Authorization header.
pub(crate) async fn admin_call(
    client: &TestClient,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    client
        .send(
            addr,
            method,
            path,
            &[("authorization", auth.as_deref())],
            "",
        )
        .await
}

/// Writes `raw` on a new connection to `addr` and reads until the peer
/// closes or `expect` responses (by status line) have fully arrived.
pub(crate) async fn raw_exchange(addr: SocketAddr, raw: &[u8], expect: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(raw).await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while complete_responses(&got) < expect && Instant::now() < deadline {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads from a kept-alive connection until one whole response has come
/// (5 s at most per read); panics if the connection closes first.
pub(crate) async fn read_one_response(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    while complete_responses(&got) < 1 {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

/// How many whole responses `raw` holds (content-length or chunked bodies).
pub(crate) fn complete_responses(raw: &[u8]) -> usize {
    let mut n = 0;
    let mut rest = raw;
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_lowercase();
        let body = &rest[end + 4..];
        let used = if let Some(len) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
        {
            let len: usize = len.trim().parse().unwrap();
            if body.len() < len {
                return n;
            }
            len
        } else if head.contains("transfer-encoding: chunked") {
            match find(body, b"0\r\n\r\n") {
                Some(i) => i + 5,
                None => return n,
            }
        } else {
            0
        };
        n += 1;
        rest = &body[used..];
    }
    n
}
