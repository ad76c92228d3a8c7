//! Upstreams: the endpoints of each configured model backend, their
//! keep-alive connection pools, and which endpoint serves a request.
//!
//! One [`Upstream`] per configured upstream (not one shared client)
//! because timeouts, pool sizes and health checks are per upstream. A
//! reload that leaves an upstream's settings alone keeps it, pools and
//! health state included, so ramping weights never drops warm
//! connections. Each has hyper's client for requests the hyper path serves
//! (one client for all its endpoints: hyper pools per authority; one per
//! endpoint when requests are addressed to the `tls.server_name`, which
//! names no endpoint) and, per
//! [`Endpoint`], [`Endpoint::checkout`]'s plain sockets for the lean path,
//! which speaks HTTP/1.1 on them itself.
//!
//! An upstream with `protocol: h2` or `https://` endpoints is served by
//! hyper's client only (the lean path hands such requests to hyper's
//! front end, [`Snapshot::needs_hyper`](crate::snapshot::Snapshot::needs_hyper)). HTTP/2 upstreams use the same hyper-util
//! client as HTTP/1 ones, built `http2_only`: its pool keeps one HTTP/2
//! connection per endpoint (a second connect to an endpoint waits for the
//! first rather than racing it) and multiplexes every request on it, and
//! the request path — [`Upstream::pick`], the connect-failure retry with
//! its reclaimed body, the timeouts, the passive ejection — stays the one
//! the HTTP/1 client already has. A hand-made set of
//! `hyper::client::conn::http2` connections would have had to re-do that
//! pool (connect once, reconnect on GOAWAY, drop on error) for no gain.
//! TLS to upstreams is [`tls`]: the connector shakes hands on the socket
//! it connected, for either protocol.
//!
//! Both front ends pick endpoints here and nowhere else: [`balance`] holds
//! the choice (least in flight of two random endpoints) and the passive
//! ejection, [`health`] the active checks. Picking costs atomics only —
//! no lock, no allocation — since the lean path picks once per request.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::intern::intern;
use http::uri::{Authority, Scheme};
use http::HeaderValue;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub(crate) use self::balance::Lease;
pub(crate) use self::early::EarlyAnswerConnector;
use crate::config::{UpstreamConfig, UpstreamProtocol};

mod balance;
pub(crate) mod body;
mod early;
mod health;
pub(crate) mod tls;

use self::body::UpstreamBody;

pub(crate) type UpstreamClient = Client<EarlyAnswerConnector, UpstreamBody>;

/// The most endpoints one upstream may list (a retry remembers the ones it
/// tried in one 64-bit mask).
pub(crate) const MAX_ENDPOINTS: usize = 64;

pub(crate) struct Upstream {
    pub config: UpstreamConfig,
    /// The `Host` sent to every endpoint: the first endpoint's `host:port`
    /// (the endpoints of one upstream serve the same model).
    pub host: HeaderValue,
    /// hyper's client (HTTP/2 and TLS upstreams), one per worker like the
    /// lean path's idle lists: a worker's requests go over connections
    /// whose tasks run on its own runtime, never another worker's, so no
    /// request hops threads and a busy worker delays only its own.
    clients: Box<[UpstreamClient]>,
    /// `tls.server_name`, when set: the authority requests are addressed
    /// to (`:authority`, Host) instead of the endpoint's address.
    named: Option<Authority>,
    /// `https` for a TLS upstream, else `http`.
    pub scheme: Scheme,
    /// What `client` connects with (the health checks' own connections).
    connector: EarlyAnswerConnector,
    endpoints: Box<[Endpoint]>,
    /// State of the endpoint picker's random draws.
    draws: AtomicU64,
    /// What ejection deadlines count from.
    born: Instant,
}

/// One address of an upstream: its pool, its load and its health.
pub(crate) struct Endpoint {
    pub authority: Authority,
    /// Its own hyper clients (one per worker), when the upstream's
    /// requests are addressed to its `tls.server_name`: hyper connects to a
    /// request's authority, and that names no endpoint then.
    clients: Option<Box<[UpstreamClient]>>,
    /// `host:port`, as the access log names it.
    pub address: &'static str,
    /// Idle lean-path connections, one list per worker, the most recently
    /// used last: a request takes and returns a connection on its own
    /// worker's list only, so workers never wait on each other's lock, and
    /// a connection is only ever used on the runtime whose reactor it is
    /// registered with (each worker runs its own, see
    /// [`crate::proxy::workers`]).
    idle: Box<[Mutex<IdleList>]>,
    /// Requests holding a [`Lease`] on it.
    in_flight: AtomicUsize,
    /// Consecutive connect failures or 5xx answers (passive check).
    failures: AtomicU32,
    /// Milliseconds after `born` until which it is passively ejected; 0
    /// when it is not.
    ejected_until: AtomicU64,
    /// The active check found it down.
    down: AtomicBool,
}

/// Idle connections with the time each was returned.
type IdleList = Vec<(TcpStream, Instant)>;

thread_local! {
    /// This thread's worker index, its idle list in every pool: 0 on the
    /// thread that serves alone, set by [`set_worker`] on the others.
    static MY_LIST: Cell<usize> = const { Cell::new(0) };
}

/// Makes this thread worker `index`: its lean-path connections go to and
/// come from list `index` of each pool.
pub(crate) fn set_worker(index: usize) {
    MY_LIST.with(|i| i.set(index));
    WORKERS_RUNNING.fetch_max(index + 1, Ordering::Relaxed);
}

/// How many workers run: pools built later (a reload) keep a list for
/// each, whatever `runtime.worker_threads` now says (it takes a restart).
static WORKERS_RUNNING: AtomicUsize = AtomicUsize::new(1);

/// Set once an upstream that only hyper's client serves (HTTP/2 or TLS)
/// was built.
static ANY_HYPER_ONLY: AtomicBool = AtomicBool::new(false);

/// Whether an upstream that only hyper's client serves (HTTP/2 or TLS)
/// was ever built: until then the lean path skips
/// [`Snapshot::needs_hyper`](crate::snapshot::Snapshot::needs_hyper)'s
/// lookup.
pub(crate) fn any_hyper_only() -> bool {
    ANY_HYPER_ONLY.load(Ordering::Relaxed)
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
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = tls::TlsTo::of(config);
        // The TLS connector takes https:// URIs (hyper's checks http only).
        http.enforce_http(tls.is_none());
        let connector = EarlyAnswerConnector {
            http,
            tls,
            to: None,
        };
        let h2 = config.protocol == UpstreamProtocol::H2;
        if h2 || config.tls.is_some() {
            ANY_HYPER_ONLY.store(true, Ordering::Relaxed);
        }
        // One idle list and one client per worker, however many: a worker
        // without its own could keep no idle connection at all. The idle
        // connections allowed are split over them, as on the lean path.
        let lists = workers.max(WORKERS_RUNNING.load(Ordering::Relaxed)).max(1);
        let client = |connector: EarlyAnswerConnector| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(config.max_idle_per_host.div_ceil(lists))
                .http2_only(h2)
                .build(connector)
        };
        let scheme = if config.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let named: Option<Authority> = config
            .tls
            .as_ref()
            .and_then(|t| t.server_name.as_deref())
            // An IPv6 address goes in brackets; a DNS name or IPv4 as is.
            .and_then(|n| match n.contains(':') {
                true => format!("[{n}]").parse().ok(),
                false => n.parse().ok(),
            });
        Upstream {
            connector: connector.clone(),
            host: match &named {
                Some(n) => HeaderValue::from_str(n.as_str()).expect("an authority"),
                None => HeaderValue::from_str(&config.authority).expect("validated authority"),
            },
            endpoints: config
                .endpoints()
                .map(|a| Endpoint {
                    // Addressed by name: a client of its own that dials it.
                    clients: named.as_ref().map(|_| {
                        (0..lists)
                            .map(|_| {
                                client(EarlyAnswerConnector {
                                    to: Some(
                                        Uri::builder()
                                            .scheme(scheme.clone())
                                            .authority(a)
                                            .path_and_query("/")
                                            .build()
                                            .expect("validated authority"),
                                    ),
                                    ..connector.clone()
                                })
                            })
                            .collect()
                    }),
                    authority: a.parse().expect("validated authority"),
                    address: intern(a),
                    idle: (0..lists).map(|_| Mutex::new(Vec::new())).collect(),
                    in_flight: AtomicUsize::new(0),
                    failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    down: AtomicBool::new(false),
                })
                .collect(),
            config: config.clone(),
            clients: (0..lists).map(|_| client(connector.clone())).collect(),
            named,
            scheme,
            draws: AtomicU64::new(0x853c_49e6_748f_ea9b),
            born: Instant::now(),
        }
    }

    /// [`Upstream::new`], shared, with its active health checks started
    /// when it has any (and a runtime is there to run them).
    pub(crate) fn start(config: &UpstreamConfig, workers: usize) -> Arc<Upstream> {
        let up = Arc::new(Upstream::new(config, workers));
        health::spawn_checks(&up);
        up
    }

    pub(crate) fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Whether the lean path can serve it: plain HTTP/1.1.
    pub(crate) fn lean(&self) -> bool {
        self.config.protocol == UpstreamProtocol::Http1 && self.config.tls.is_none()
    }

    /// The authority a request to `ep` is addressed to (HTTP/2's
    /// `:authority`, HTTP/1.1's Host): the `tls.server_name` when the
    /// config sets one, so a name-based upstream (a virtual host, an
    /// ingress) sees the name it serves, else the endpoint's address.
    pub(crate) fn authority_for(&self, ep: &Endpoint) -> Authority {
        self.named.clone().unwrap_or_else(|| ep.authority.clone())
    }

    /// This worker's hyper client that reaches `ep`.
    pub(crate) fn client_for<'a>(&'a self, ep: &'a Endpoint) -> &'a UpstreamClient {
        let clients = ep.clients.as_deref().unwrap_or(&self.clients);
        let i = MY_LIST.try_with(Cell::get).unwrap_or(0);
        clients.get(i).unwrap_or(&clients[0])
    }

    /// Whether it speaks HTTP/2.
    pub(crate) fn h2(&self) -> bool {
        self.config.protocol == UpstreamProtocol::H2
    }

    /// The upstream's state for `GET /admin/upstreams`.
    pub(crate) fn view(&self) -> serde_json::Value {
        let now = self.now_ms();
        let endpoints: Vec<serde_json::Value> = self
            .endpoints
            .iter()
            .map(|ep| {
                let until = ep.ejected_until.load(Ordering::Relaxed);
                serde_json::json!({
                    "address": ep.address,
                    "state": ep.state(now),
                    "in_flight": ep.in_flight.load(Ordering::Relaxed),
                    "consecutive_failures": ep.failures.load(Ordering::Relaxed),
                    "ejected_for_ms": until.saturating_sub(now),
                })
            })
            .collect();
        serde_json::json!({
            "name": self.config.name,
            "health_check": self.config.health.as_ref().map(|h| h.path.clone()),
            "protocol": self.config.protocol.as_str(),
            "tls": self.config.tls.is_some(),
            "available": self.endpoints.iter().filter(|ep| ep.available(now)).count(),
            "endpoints": endpoints,
        })
    }

    /// How long the response head may take once the request is sent: the
    /// first-byte `timeout`, or the `total_timeout` when that is shorter.
    pub(crate) fn head_timeout(&self) -> Duration {
        match self.config.total_timeout {
            Some(t) => t.min(self.config.timeout),
            None => self.config.timeout,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Endpoint {
    /// Whether requests may go to it, `now` in milliseconds after its
    /// upstream's birth.
    fn available(&self, now: u64) -> bool {
        !self.down.load(Ordering::Relaxed) && self.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// `up`, `down` (the active check) or `ejected` (the passive one).
    fn state(&self, now: u64) -> &'static str {
        if self.down.load(Ordering::Relaxed) {
            "down"
        } else if self.ejected_until.load(Ordering::Relaxed) > now {
            "ejected"
        } else {
            "up"
        }
    }

    /// An idle connection that is still open, or a new one.
    pub(crate) async fn checkout(&self, timeout: Duration) -> Result<Checkout, ConnectError> {
        while let Some((stream, since)) = self.pop_idle() {
            if since.elapsed() < IDLE_TIMEOUT && still_open(&stream) {
                return Ok(Checkout {
                    stream,
                    reused: true,
                });
            }
        }
        self.connect(timeout).await
    }

    /// A new connection, bypassing the idle ones.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<Checkout, ConnectError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(self.address))
            .await
            .map_err(|_| ConnectError::Timeout)??;
        stream.set_nodelay(true)?;
        Ok(Checkout {
            stream,
            reused: false,
        })
    }

    /// Returns a connection whose last response was read to its end (at
    /// `now`, which the caller has at hand). Each worker's list holds its
    /// share of `max_idle`.
    pub(crate) fn checkin(&self, stream: TcpStream, now: Instant, max_idle: usize) {
        let cap = max_idle.div_ceil(self.idle.len());
        let Some(mine) = self.my_list() else { return };
        let mut idle = self.idle[mine].lock().expect("idle pool lock");
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

    /// The most recent idle connection of this worker's list; never
    /// another's, whose connections belong to another runtime's reactor.
    fn pop_idle(&self) -> Option<(TcpStream, Instant)> {
        self.idle[self.my_list()?]
            .lock()
            .expect("idle pool lock")
            .pop()
    }

    /// This worker's list. Pools have one per running worker
    /// ([`WORKERS_RUNNING`]); none (no idle connection kept) only for a
    /// thread numbered past them, which no worker is.
    fn my_list(&self) -> Option<usize> {
        let i = MY_LIST.try_with(Cell::get).unwrap_or(0);
        (i < self.idle.len()).then_some(i)
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

    pub(super) fn config(authorities: &[String]) -> UpstreamConfig {
        UpstreamConfig {
            name: "up".into(),
            authority: authorities[0].clone(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            max_idle_per_host: 8,
            extra_endpoints: authorities[1..].to_vec(),
            total_timeout: None,
            health: None,
            eject_after: crate::config::DEFAULT_EJECT_AFTER,
            eject_for: crate::config::DEFAULT_EJECT_FOR,
            protocol: crate::config::UpstreamProtocol::Http1,
            tls: None,
        }
    }

    async fn upstream_on(listener: &TcpListener) -> Upstream {
        Upstream::new(&config(&[listener.local_addr().unwrap().to_string()]), 2)
    }

    #[tokio::test]
    async fn a_connection_on_another_workers_list_is_never_taken() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = upstream_on(&listener).await;
        let ep = &upstream.endpoints()[0];
        let t = Duration::from_secs(1);
        let first = ep.checkout(t).await.unwrap();
        assert!(!first.reused);
        let (_a, _) = listener.accept().await.unwrap();
        let local = first.stream.local_addr().unwrap();
        // As worker 1 would return it: into its own list.
        set_worker(1);
        ep.checkin(first.stream, Instant::now(), 8);
        set_worker(0);
        let other = ep.checkout(t).await.unwrap();
        assert!(!other.reused, "worker 0 took worker 1's connection");
        assert_ne!(other.stream.local_addr().unwrap(), local);
        let (_b, _) = listener.accept().await.unwrap();
        set_worker(1);
        let again = ep.checkout(t).await.unwrap();
        set_worker(0);
        assert!(again.reused, "worker 1 found its idle connection");
        assert_eq!(again.stream.local_addr().unwrap(), local);
    }

    /// Past 64 workers (one per CPU on a big host) each still has its own
    /// list, so its connections are reused.
    #[tokio::test]
    async fn a_worker_numbered_past_64_reuses_its_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream::new(&config(&[listener.local_addr().unwrap().to_string()]), 96);
        let ep = &upstream.endpoints()[0];
        let t = Duration::from_secs(1);
        set_worker(70);
        let first = ep.checkout(t).await.unwrap();
        let (_a, _) = listener.accept().await.unwrap();
        let local = first.stream.local_addr().unwrap();
        ep.checkin(first.stream, Instant::now(), 8);
        let again = ep.checkout(t).await.unwrap();
        set_worker(0);
        assert!(again.reused, "worker 70 found its idle connection");
        assert_eq!(again.stream.local_addr().unwrap(), local);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = upstream_on(&listener).await;
        let ep = &upstream.endpoints()[0];
        let t = Duration::from_secs(1);
        let first = ep.checkout(t).await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        ep.checkin(first.stream, Instant::now(), 8);
        drop(server_side);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let next = ep.checkout(t).await.unwrap();
        assert!(!next.reused, "a closed idle connection must be discarded");
    }
}
