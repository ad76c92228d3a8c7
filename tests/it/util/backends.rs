//! Model backends on real loopback sockets: [`Backend`] (a well-behaved
//! HTTP/1.1 server that answers with its name and records request headers)
//! and [`RawBackend`] (raw bytes, for framings and faults a well-behaved
//! server never produces).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::find;

/// A model backend on a real socket that answers with its name and records
/// the headers of every request it received.
pub(crate) struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Behaviour {
    name: String,
    delay: Duration,
}

impl Backend {
    pub(crate) async fn spawn(name: &str) -> Backend {
        Backend::spawn_with(name, Duration::ZERO).await
    }

    /// A backend that waits `delay` before answering (for timeouts).
    pub(crate) async fn spawn_with(name: &str, delay: Duration) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let b = Behaviour {
            name: name.into(),
            delay,
        };
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (b, s) = (b.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(b.clone(), s.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend { addr, seen, task }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn last_headers(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("backend saw a request")
    }

    /// Stops accepting and closes the socket (connections then get refused).
    pub(crate) fn stop(self) {
        self.task.abort();
    }
}

async fn answer(
    b: Behaviour,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    seen.lock().unwrap().push(req.headers().clone());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    let out = serde_json::json!({ "model": b.name, "echo_bytes": body.len() }).to_string();
    Ok(Response::new(Full::new(Bytes::from(out))))
}

/// A backend on a raw socket that answers each request head with the raw
/// bytes `script` returns for its request line and its index on the
/// connection, for framings and faults a well-behaved server never produces. It reads `content-length` bodies
/// and closes the connection when the answer is followed by `None`.
pub(crate) struct RawBackend {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`RawBackend`] does with one request.
pub(crate) struct Answer {
    pub bytes: Vec<u8>,
    /// Close the connection after writing, after this long.
    pub close_after: Option<Duration>,
}

impl RawBackend {
    pub(crate) async fn spawn(script: fn(&str, usize) -> Answer) -> RawBackend {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut nth = 0;
                    loop {
                        let Some(end) = find(&buf, b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < end + 4 + len {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let line = head.lines().next().unwrap_or("").to_string();
                        buf.drain(..end + 4 + len);
                        let answer = script(&line, nth);
                        nth += 1;
                        if s.write_all(&answer.bytes).await.is_err() {
                            return;
                        }
                        if let Some(after) = answer.close_after {
                            tokio::time::sleep(after).await;
                            return;
                        }
                    }
                });
            }
        });
        RawBackend {
            addr,
            accepted,
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
