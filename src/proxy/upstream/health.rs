//! Active health checks: one task per endpoint of an upstream with a
//! `health:` block, sending `GET <path>` every `interval` on a new
//! connection. A 2xx or 3xx answer within `timeout` passes; anything else
//! (refused, reset, slow, 4xx, 5xx) fails. `unhealthy_after` consecutive
//! failures take the endpoint out of rotation, `healthy_after` consecutive
//! passes bring it back; each change is logged. An endpoint starts in
//! rotation, so a restart does not refuse traffic until the first checks.
//! An HTTP/2 or `https://` upstream is checked the same way in its own
//! protocol (TLS handshake included, so a certificate the proxy would
//! refuse fails the check), on hyper's client connection over the
//! upstream's own connector.
//!
//! A task holds its upstream weakly and ends when the upstream is dropped
//! (a reload that changed it built a new one, with its own tasks).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Upstream;
use crate::config::HealthCheck;

/// Starts the checks of `up`'s endpoints, if it has a `health:` block and
/// a Tokio runtime is running (commands that only build a snapshot have
/// none, and serve nothing).
pub(super) fn spawn_checks(up: &Arc<Upstream>) {
    let Some(check) = up.config.health.clone() else {
        return;
    };
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for index in 0..up.endpoints.len() {
        rt.spawn(run(Arc::downgrade(up), index, check.clone()));
    }
}

async fn run(up: Weak<Upstream>, index: usize, check: HealthCheck) {
    let (mut passes, mut fails) = (0u32, 0u32);
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (address, host, via) = match up.upgrade() {
            Some(u) => {
                let via = (!u.lean()).then(|| Via {
                    connector: u.connector.clone(),
                    uri: http::Uri::builder()
                        .scheme(u.scheme.clone())
                        .authority(u.endpoints[index].authority.clone())
                        .path_and_query(check.path.as_str())
                        .build(),
                    h2: u.h2(),
                });
                (u.endpoints[index].address, u.host.clone(), via)
            }
            None => return,
        };
        let probing = async {
            match via {
                None => probe(address, &host, &check.path).await,
                Some(via) => probe_hyper(via, &host).await,
            }
        };
        let passed = tokio::time::timeout(check.timeout, probing)
            .await
            .unwrap_or(Err(ProbeFailure::Timeout));
        let Some(up) = up.upgrade() else { return };
        let ep = &up.endpoints[index];
        let down = ep.down.load(Ordering::Relaxed);
        match passed {
            Ok(()) => {
                (passes, fails) = (passes.saturating_add(1), 0);
                if down && passes >= check.healthy_after {
                    ep.down.store(false, Ordering::Relaxed);
                    tracing::info!(
                        upstream = %up.config.name,
                        endpoint = %address,
                        passes,
                        "endpoint healthy: back in rotation"
                    );
                }
            }
            Err(why) => {
                (passes, fails) = (0, fails.saturating_add(1));
                if !down && fails >= check.unhealthy_after {
                    ep.down.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        upstream = %up.config.name,
                        endpoint = %address,
                        failures = fails,
                        last = %why,
                        "endpoint unhealthy: out of rotation"
                    );
                } else {
                    tracing::debug!(endpoint = %address, failure = %why, "health check failed");
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ProbeFailure {
    #[error("no answer within the check's timeout")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("answered {0}")]
    Status(String),
    #[error("{0}")]
    Client(String),
}

/// How an endpoint that only hyper's client serves is checked.
struct Via {
    connector: super::EarlyAnswerConnector,
    uri: Result<http::Uri, http::Error>,
    h2: bool,
}

/// One check over hyper's client connection: `GET path` in the
/// upstream's protocol, on a new connection (TLS when the upstream is).
async fn probe_hyper(via: Via, host: &http::HeaderValue) -> Result<(), ProbeFailure> {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use tower_service::Service;

    let client = |e: &dyn std::fmt::Display| ProbeFailure::Client(e.to_string());
    let uri = via.uri.map_err(|e| client(&e))?;
    let mut connector = via.connector;
    let io = connector.call(uri.clone()).await.map_err(|e| client(&e))?;
    let status = if via.h2 {
        let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| client(&e))?;
        tokio::spawn(conn);
        let req = http::Request::get(uri)
            .header(http::header::USER_AGENT, "cohort-health-check")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| client(&e))?;
        send.send_request(req)
            .await
            .map_err(|e| client(&e))?
            .status()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| client(&e))?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let req = http::Request::get(path)
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "cohort-health-check")
            .header(http::header::CONNECTION, "close")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| client(&e))?;
        send.send_request(req)
            .await
            .map_err(|e| client(&e))?
            .status()
    };
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(ProbeFailure::Status(status.as_u16().to_string()))
    }
}

/// One check: `GET path` and the status line of the answer.
async fn probe(address: &str, host: &http::HeaderValue, path: &str) -> Result<(), ProbeFailure> {
    let mut s = TcpStream::connect(address).await?;
    let mut req = Vec::with_capacity(96 + path.len());
    req.extend_from_slice(b"GET ");
    req.extend_from_slice(path.as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(b"\r\nuser-agent: cohort-health-check\r\nconnection: close\r\n\r\n");
    s.write_all(&req).await?;
    let mut buf = Vec::with_capacity(64);
    while buf.len() < 12 {
        if s.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    // "HTTP/1.1 200": the status is the three bytes after the first space.
    let status = buf
        .splitn(3, |&b| b == b' ')
        .nth(1)
        .filter(|_| buf.starts_with(b"HTTP/1."))
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u16>().ok());
    match status {
        Some(200..=399) => Ok(()),
        Some(code) => Err(ProbeFailure::Status(code.to_string())),
        None => Err(ProbeFailure::Status("with no HTTP status line".into())),
    }
}
