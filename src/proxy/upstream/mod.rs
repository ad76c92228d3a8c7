//! Upstreams: keep-alive connection pools per configured model backend.
//!
//! One pool per upstream (not one shared client) because connect timeouts
//! and pool sizes are per upstream. A reload that leaves an upstream's
//! settings alone keeps its pools, so ramping weights never drops warm
//! connections. Each upstream has two: hyper's client for requests the
//! hyper path serves, and [`Upstream::checkout`]'s plain sockets for the
//! lean path, which speaks HTTP/1.1 on them itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub(crate) use self::early::EarlyAnswerConnector;
use crate::config::UpstreamConfig;

pub(crate) mod body;
mod early;

use self::body::UpstreamBody;

pub(crate) type UpstreamClient = Client<EarlyAnswerConnector, UpstreamBody>;

pub(crate) struct Upstream {
    pub config: UpstreamConfig,
    pub authority: Authority,
    /// `host:port`, as the access log names it.
    pub address: std::sync::Arc<str>,
    pub client: UpstreamClient,
    /// Idle lean-path connections, one list per worker thread, the most
    /// recently used last: a request takes and returns a connection on its
    /// own thread's list, so workers never wait on each other's lock.
    idle: Box<[Mutex<IdleList>]>,
}

/// Idle connections with the time each was returned.
type IdleList = Vec<(TcpStream, Instant)>;

/// Gives each thread that uses a pool its list index.
static NEXT_LIST: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MY_LIST: usize = NEXT_LIST.fetch_add(1, Ordering::Relaxed);
}

/// How long an idle connection is kept (hyper's pool uses the same).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection the lean path holds for one exchange.
pub(crate) struct Checkout {
    pub stream: TcpStream,
    /// It served a request before: a failure may mean the upstream closed
    /// it while idle, not that the upstream is down.
    pub reused: bool,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect timed out")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Upstream {
    /// `workers`: the runtime's worker threads, one idle list each.
    pub(crate) fn new(config: &UpstreamConfig, workers: usize) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.max_idle_per_host)
            .build(EarlyAnswerConnector(connector));
        Upstream {
            authority: config.authority.parse().expect("validated authority"),
            address: std::sync::Arc::from(config.authority.as_str()),
            config: config.clone(),
            client,
            idle: (0..workers.clamp(1, 64))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        }
    }

    /// An idle connection that is still open, or a new one.
    pub(crate) async fn checkout(&self) -> Result<Checkout, ConnectError> {
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
    pub(crate) async fn connect(&self) -> Result<Checkout, ConnectError> {
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
    /// `now`, which the caller has at hand). Each thread's list holds its
    /// share of `max_idle_per_host`.
    pub(crate) fn checkin(&self, stream: TcpStream, now: Instant) {
        let cap = self.config.max_idle_per_host.div_ceil(self.idle.len());
        let mut idle = self.idle[self.my_list()].lock().expect("idle pool lock");
        if idle
            .first()
            .is_some_and(|(_, t)| now.saturating_duration_since(*t) >= IDLE_TIMEOUT)
        {
            idle.remove(0);
        }
        if idle.len() < cap {
            idle.push((stream, now));
        }
    }

    /// The most recent idle connection of this thread's list, else of any
    /// other (a connection returned on one thread serves any other).
    fn pop_idle(&self) -> Option<(TcpStream, Instant)> {
        let mine = self.my_list();
        (0..self.idle.len())
            .map(|i| (mine + i) % self.idle.len())
            .find_map(|i| self.idle[i].lock().expect("idle pool lock").pop())
    }

    fn my_list(&self) -> usize {
        MY_LIST.try_with(|i| *i).unwrap_or(0) % self.idle.len()
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn upstream_on(listener: &TcpListener) -> Upstream {
        Upstream::new(
            &UpstreamConfig {
                name: "up".into(),
                authority: listener.local_addr().unwrap().to_string(),
                connect_timeout: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                max_idle_per_host: 8,
            },
            2,
        )
    }

    #[tokio::test]
    async fn a_connection_returned_on_one_thread_is_reused_on_another() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = upstream_on(&listener).await;
        let first = upstream.checkout().await.unwrap();
        assert!(!first.reused);
        let (_server_side, _) = listener.accept().await.unwrap();
        let local = first.stream.local_addr().unwrap();
        // As another worker thread would return it: into the other list.
        let other = (upstream.my_list() + 1) % upstream.idle.len();
        upstream.idle[other]
            .lock()
            .unwrap()
            .push((first.stream, Instant::now()));
        let again = upstream.checkout().await.unwrap();
        assert!(again.reused, "the idle connection was found");
        assert_eq!(again.stream.local_addr().unwrap(), local);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = upstream_on(&listener).await;
        let first = upstream.checkout().await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        upstream.checkin(first.stream, Instant::now());
        drop(server_side);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let next = upstream.checkout().await.unwrap();
        assert!(!next.reused, "a closed idle connection must be discarded");
    }
}
