//! Active health checks: one task per endpoint of an upstream with a
//! `health:` block, sending `GET <path>` every `interval` on a new
//! connection. A 2xx or 3xx answer within `timeout` passes; anything else
//! (refused, reset, slow, 4xx, 5xx) fails. `unhealthy_after` consecutive
//! failures take the endpoint out of rotation, `healthy_after` consecutive
//! passes bring it back; each change is logged. An endpoint starts in
//! rotation, so a restart does not refuse traffic until the first checks.
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
        let (address, host) = match up.upgrade() {
            Some(u) => (u.endpoints[index].address.clone(), u.host.clone()),
            None => return,
        };
        let passed = tokio::time::timeout(check.timeout, probe(&address, &host, &check.path))
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
