//! Upstreams: keep-alive connection pools per configured model backend.
//!
//! One pool per upstream (not one shared client) because connect timeouts
//! and pool sizes are per upstream. A reload that leaves an upstream's
//! settings alone keeps its pools, so ramping weights never drops warm
//! connections. Each upstream has two: hyper's client for requests the
//! hyper path serves, and [`Upstream::checkout`]'s plain sockets for the
//! lean path, which speaks HTTP/1.1 on them itself.

use std::sync::Mutex;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::UpstreamBody;
use crate::config::UpstreamConfig;

pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

pub struct Upstream {
    pub config: UpstreamConfig,
    pub authority: Authority,
    /// `host:port`, as the access log names it.
    pub address: std::sync::Arc<str>,
    pub client: UpstreamClient,
    /// Idle lean-path connections, the most recently used last.
    idle: Mutex<Vec<(TcpStream, Instant)>>,
}

/// How long an idle connection is kept (hyper's pool uses the same).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection the lean path holds for one exchange.
pub struct Checkout {
    pub stream: TcpStream,
    /// It served a request before: a failure may mean the upstream closed
    /// it while idle, not that the upstream is down.
    pub reused: bool,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.max_idle_per_host)
            .build(connector);
        Upstream {
            authority: config.authority.parse().expect("validated authority"),
            address: std::sync::Arc::from(config.authority.as_str()),
            config: config.clone(),
            client,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection that is still open, or a new one.
    pub async fn checkout(&self) -> Result<Checkout, ConnectError> {
        while let Some((stream, since)) = self.pop_idle() {
            if since.elapsed() < IDLE_TIMEOUT && still_open(&stream) {
                return Ok(Checkout {
                    stream,
                    reused: true,
                });
            }
        }
        self.connect().await
    }

    /// A new connection, bypassing the idle ones.
    pub async fn connect(&self) -> Result<Checkout, ConnectError> {
        let stream = tokio::time::timeout(
            self.config.connect_timeout,
            TcpStream::connect(&*self.address),
        )
        .await
        .map_err(|_| ConnectError::Timeout)??;
        stream.set_nodelay(true)?;
        Ok(Checkout {
            stream,
            reused: false,
        })
    }

    /// Returns a connection whose last response was read to its end (at
    /// `now`, which the caller has at hand).
    pub fn checkin(&self, stream: TcpStream, now: Instant) {
        let mut idle = self.idle.lock().expect("idle pool lock");
        if idle
            .first()
            .is_some_and(|(_, t)| now.saturating_duration_since(*t) >= IDLE_TIMEOUT)
        {
            idle.remove(0);
        }
        if idle.len() < self.config.max_idle_per_host {
            idle.push((stream, now));
        }
    }

    fn pop_idle(&self) -> Option<(TcpStream, Instant)> {
        self.idle.lock().expect("idle pool lock").pop()
    }
}

/// Whether an idle connection is still usable: no EOF, reset or stray
/// bytes waiting on it. The readiness check costs no syscall in the usual
/// case, where nothing arrived since the last response.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    if stream.poll_read_ready(&mut cx).is_pending() {
        return true;
    }
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
