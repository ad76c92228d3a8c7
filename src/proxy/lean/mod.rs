//! The lean HTTP/1.1 path: one task per client connection that reads a
//! request, routes and assigns it, and relays it over a pooled upstream
//! socket, with no per-request channel, task, header map or timer.
//!
//! Why it exists: hyper's general machinery (a body channel on each side,
//! the client pool's dispatch task, header maps built and re-encoded) cost
//! more user CPU per request than the kernel work of moving the bytes,
//! and a proxy that costs more than NGINX tempts teams to bypass it.
//!
//! It serves only what [`h1::parse_request`] calls lean — the plain
//! requests model clients send. On the first request that is not, before
//! a byte of it is consumed, [`serve`] returns a [`LeanExit::HandOff`]
//! and the listener gives the connection to hyper's front end, which
//! serves the rest of it. Checks, routing, assignment, the error answers
//! and the access record are [`core`]'s, the same as on hyper's path; the
//! integration tests run both.
//!
//! Memory: a request body (a Content-Length up to [`h1::MAX_LEAN_BODY`],
//! 256 KiB) is buffered whole before it is forwarded, in one buffer of
//! exactly the request's size allocated when its head is read: a
//! connection holds at most its head plus 256 KiB. Pages the client has
//! not filled are never touched, so a stalled upload costs resident
//! memory for what it sent (mimalloc is built without transparent huge
//! pages for that, see Cargo.toml).

mod io;

use std::io as stdio;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use self::io::Deadline;
pub(crate) use self::io::Rewind;
use super::core::{self, Peer, Refused, Routed, Stamps, UpstreamFailure};
use super::h1::{self, ChunkedScan, Framing, Hop, Parsed, Reject, RequestHead, ResponseHead};
use super::upstream::{Checkout, ConnectError, Lease};
use crate::error::{ProxyError, CLIENT_CLOSED};
use crate::observe::access_log::AccessRecord;
use crate::snapshot::Snapshot;
use crate::state::State;

/// The old name of [`ClientLimits`].
pub(crate) type ClientTimeouts = ClientLimits;

/// How long a client may take and how much it may send, from
/// `runtime.client_*_timeout`, `runtime.max_request_head`,
/// `max_header_count` and `max_body_bytes`; both front ends hold clients
/// to these.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientLimits {
    /// Idle between requests on a keep-alive connection.
    pub idle: Duration,
    /// For a request head, from its first byte (hyper's
    /// `header_read_timeout` on the other path).
    pub header: Duration,
    /// For a buffered request body, after its head (on hyper's path: the
    /// longest pause in a streamed body).
    pub body: Duration,
    /// The most bytes a request head may take.
    pub max_head: usize,
    /// The most header fields a request head may carry.
    pub max_headers: usize,
    /// The largest request body, if any.
    pub max_body: Option<u64>,
    /// The most connections served at once (the listener's), if any.
    pub max_connections: Option<usize>,
}

impl ClientLimits {
    pub(crate) fn of(r: &crate::config::RuntimeConfig) -> ClientLimits {
        ClientLimits {
            idle: r.client_idle_timeout,
            header: r.client_header_timeout,
            body: r.client_body_timeout,
            max_head: r.max_request_head,
            max_headers: r.max_header_count,
            max_body: r.max_body_bytes,
            max_connections: r.max_connections,
        }
    }
}
/// Read-buffer growth per read (hyper's default buffer size too).
const READ_CHUNK: usize = 8 * 1024;
const COPY_BODY_UP_TO: usize = 4 * 1024;

/// How the lean path let go of a connection.
pub(crate) enum LeanExit {
    /// It is closed (or will be, when dropped).
    Closed,
    /// Its next request is not for the lean path: hyper's front end
    /// serves the rest of it.
    HandOff(HandOff),
}

/// A connection for hyper's front end, with the bytes already read.
pub(crate) struct HandOff {
    pub io: Rewind,
    pub stop: watch::Receiver<bool>,
    pub state: Arc<State>,
    /// Why (for the trace log).
    pub why: &'static str,
}

/// Serves one client connection until it closes or until a request the
/// lean path does not take, which it hands back untouched.
pub(crate) async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    timeouts: ClientLimits,
) -> LeanExit {
    let mut conn = Connection {
        timeouts,
        client,
        buf: BytesMut::with_capacity(READ_CHUNK),
        head: RequestHead::default(),
        out: Vec::with_capacity(1024),
        upstream_buf: BytesMut::with_capacity(READ_CHUNK),
        response: ResponseHead::default(),
        peer: Peer::new(peer),
        state,
        header_timer: Deadline::default(),
        upstream_timer: Deadline::default(),
        served: false,
    };
    loop {
        match conn.next_request(&mut stop).await {
            Next::Request(snap) => {
                conn.served = true;
                if !conn.serve_one(snap, &stop).await || *stop.borrow() {
                    return LeanExit::Closed;
                }
            }
            Next::Closed => return LeanExit::Closed,
            Next::Reject(r) => {
                conn.reject(r, &stop).await;
                return LeanExit::Closed;
            }
            Next::Over(e) => {
                conn.over(e, &stop).await;
                return LeanExit::Closed;
            }
            Next::Hand(why) => {
                let rest = conn.buf.split().freeze();
                let io = Rewind {
                    rest,
                    io: conn.client,
                };
                return LeanExit::HandOff(HandOff {
                    io,
                    stop,
                    state: conn.state,
                    why,
                });
            }
        }
    }
}

struct Connection {
    client: TcpStream,
    /// Bytes read from the client and not yet served.
    buf: BytesMut,
    head: RequestHead,
    /// The head (and small body) being written to either side.
    out: Vec<u8>,
    upstream_buf: BytesMut,
    response: ResponseHead,
    peer: Peer,
    state: Arc<State>,
    header_timer: Deadline,
    upstream_timer: Deadline,
    timeouts: ClientLimits,
    /// Whether a request was served on it yet.
    served: bool,
}

enum Next {
    /// A whole lean request is at the front of `buf`, parsed into `head`,
    /// with the config snapshot that found it lean: it is routed by that
    /// one, so a reload while its body arrives cannot send it to an
    /// upstream only hyper's client speaks to.
    Request(Arc<Snapshot>),
    Closed,
    Hand(&'static str),
    /// A request refused outright (answered, then the connection closes).
    Reject(Reject),
    /// A whole head over `max_header_count`, or announcing a body over
    /// `max_body_bytes` (answered before the body is read, then closed).
    Over(ProxyError),
}

/// How a request's exchange with its upstream ended.
enum Exchange {
    Done(Result<TcpStream, Failure>),
    TimedOut,
    ClientGone,
}

impl Failure {
    /// What [`core::upstream_error`] makes of it.
    fn upstream(self) -> UpstreamFailure {
        match self {
            Failure::Connect(ConnectError::Timeout) => UpstreamFailure::ConnectTimeout,
            Failure::Connect(ConnectError::Io(e)) if core::local_resource(&e) => {
                UpstreamFailure::LocalResource
            }
            Failure::Connect(ConnectError::Io(_)) => UpstreamFailure::Connect,
            Failure::Io { .. } => UpstreamFailure::Reset,
            Failure::Invalid(why) => UpstreamFailure::Invalid(why.to_string()),
        }
    }
}

/// Why an upstream exchange failed.
#[derive(Debug)]
enum Failure {
    Connect(ConnectError),
    /// The connection failed; whether any response byte had arrived.
    Io {
        responded: bool,
        sent: bool,
    },
    Invalid(h1::BadResponse),
}

impl Connection {
    async fn next_request(&mut self, stop: &mut watch::Receiver<bool>) -> Next {
        // Idle until a byte arrives, then the head's deadline, then the
        // body's. Each deadline is fixed when the loop first waits in its
        // phase, so a request that arrives whole in one read reads the
        // clock once.
        let t = self.timeouts;
        let mut phase = if self.buf.is_empty() {
            t.idle
        } else {
            t.header
        };
        let mut deadline = None;
        let mut need = None;
        let mut snap = None;
        loop {
            if need.is_none() && !self.buf.is_empty() {
                match h1::parse_request(&self.buf, &mut self.head, t.max_head) {
                    Parsed::Lean if self.head.fields.len() > t.max_headers => {
                        return Next::Over(ProxyError::TooManyHeaders)
                    }
                    Parsed::Lean if t.max_body.is_some_and(|m| self.head.body_len as u64 > m) => {
                        return Next::Over(ProxyError::BodyTooLarge)
                    }
                    Parsed::Lean => {
                        let req = h1::Request {
                            bytes: &self.buf,
                            head: &self.head,
                        };
                        let s = self.state.snapshot();
                        if s.needs_hyper(req.path()) {
                            return Next::Hand("routed to an HTTP/2 or TLS upstream");
                        }
                        snap = Some(s);
                        need = Some(self.head.head_len + self.head.body_len);
                        (phase, deadline) = (t.body, None);
                    }
                    Parsed::Partial => {}
                    Parsed::Hand(why) => return Next::Hand(why),
                    Parsed::Reject(r) => return Next::Reject(r),
                }
            }
            if need.is_some_and(|n| self.buf.len() >= n) {
                return Next::Request(snap.take().expect("set with need"));
            }
            let idle = self.buf.is_empty();
            if idle && *stop.borrow() {
                // An idle keep-alive connection closes now; one not yet
                // used was opened for a request that may be on its way:
                // it gets a moment to arrive (then served, and closed).
                if self.served {
                    return Next::Closed;
                }
                let linger = Instant::now() + core::FIRST_REQUEST_GRACE;
                if deadline.is_none_or(|d| d > linger) {
                    deadline = Some(linger);
                }
            }
            let missing = need.map_or(0, |n| n.saturating_sub(self.buf.len()));
            if missing > READ_CHUNK {
                // One allocation of exactly the request's size (a lean
                // body is at most 256 KiB): no doubling, no trail of
                // outgrown buffers.
                grow_exact(&mut self.buf, missing);
            } else {
                self.buf.reserve(READ_CHUNK);
            }
            let at = *deadline.get_or_insert_with(|| Instant::now() + phase);
            tokio::select! {
                biased;
                read = self.client.read_buf(&mut self.buf) => match read {
                    Ok(0) | Err(_) => {
                        if need.is_some() {
                            // Gone mid-body: the request is logged as the
                            // client's (nothing was forwarded).
                            self.log_refused(&ProxyError::ClientGone);
                        }
                        return Next::Closed;
                    }
                    Ok(_) if idle => (phase, deadline) = (t.header, None),
                    Ok(_) => {}
                },
                changed = stop.changed(), if idle => {
                    if changed.is_err() {
                        return Next::Closed;
                    }
                }
                () = self.header_timer.until(at) => {
                    // Part of a request came and the rest did not: a head
                    // gets the empty 408, a head whose body stalled the
                    // JSON one hyper's path sends for a stalled body.
                    match need.and_then(|_| self.pending_record()) {
                        _ if idle => {}
                        Some(rec) => {
                            let started = std::time::Instant::now();
                            self.own_response(ProxyError::RequestTimeout, None, rec, started, stop)
                                .await;
                        }
                        None => {
                            let _ = self.client.write_all(h1::REQUEST_TIMEOUT).await;
                            core::log_unparsed(&self.state, &ProxyError::RequestTimeout);
                        }
                    }
                    return Next::Closed;
                }
            }
        }
    }

    /// Serves the request at the front of `buf`; says whether the
    /// connection stays open.
    async fn serve_one(&mut self, snap: Arc<Snapshot>, stop: &watch::Receiver<bool>) -> bool {
        let started = std::time::Instant::now();
        let bytes = self
            .buf
            .split_to(self.head.head_len + self.head.body_len)
            .freeze();
        let Some(mut rec) = self.record(&bytes, snap.version).await else {
            return false;
        };
        let req = h1::Request {
            bytes: &bytes,
            head: &self.head,
        };
        let is_head = rec.method == Some(Method::HEAD);
        let idempotent = rec.method.as_ref().is_some_and(Method::is_idempotent);
        let routed = core::route_request(&self.state, snap, req.path(), &req, &mut rec).await;
        let Routed { mut lease, stamps } = match routed {
            Ok(r) => r,
            Err(Refused { error, stamps }) => {
                return self
                    .own_response(error, stamps.as_ref(), rec, started, stop)
                    .await;
            }
        };

        self.out.clear();
        let hop = Hop {
            authority: lease.upstream().config.authority.as_str(),
            stamps: stamps.as_ref().map(Stamps::bytes),
            request_id: rec.request_id.as_bytes(),
            peer_ip: self.peer.ip.as_bytes(),
        };
        h1::write_upstream_head(&mut self.out, &req, &hop);

        // A small body is copied behind the head (one send); a larger one
        // goes out with it in one writev, uncopied.
        let mut body = bytes.slice(self.head.head_len..);
        if body.len() <= COPY_BODY_UP_TO {
            self.out.extend_from_slice(&body);
            body = Bytes::new();
        }
        let sent = std::time::Instant::now();
        let outcome = self
            .exchange(&mut lease, &body, is_head, idempotent, sent)
            .await;
        rec.upstream_time = Some(sent.elapsed());
        if rec.upstream.is_some() {
            // Retried on another endpoint after a connect failure.
            rec.upstream = Some(lease.endpoint().address);
        }
        let upstream = lease.upstream();
        let error = match outcome {
            Exchange::Done(Ok(stream)) => {
                return self
                    .relay(stream, &lease, stamps.as_ref(), rec, (started, sent), stop)
                    .await
            }
            Exchange::ClientGone => {
                rec.status = CLIENT_CLOSED;
                rec.error = Some(ProxyError::ClientGone.cause());
                self.log(rec, started.elapsed(), 0);
                return false;
            }
            Exchange::TimedOut => core::upstream_error(upstream, UpstreamFailure::Timeout),
            Exchange::Done(Err(f)) => {
                tracing::debug!(upstream = %upstream.config.name, failure = ?f, "upstream exchange failed");
                core::upstream_error(upstream, f.upstream())
            }
        };
        self.own_response(error, stamps.as_ref(), rec, started, stop)
            .await
    }

    /// The access record of the request at the front of `bytes` (parsed
    /// into `self.head`), or `None` when its target or method cannot be
    /// read (answered 400 and logged, as hyper's path does).
    async fn record(&mut self, bytes: &Bytes, version: &'static str) -> Option<AccessRecord> {
        let req = h1::Request {
            bytes,
            head: &self.head,
        };
        // httparse admits only token characters in a method, all of which
        // `Method` accepts; `Uri` is stricter about targets than httparse.
        let (Ok(method), Ok(uri)) = (
            Method::from_bytes(req.method()),
            Uri::from_maybe_shared(bytes.slice(self.head.target.clone())),
        ) else {
            let _ = self.client.write_all(h1::BAD_REQUEST).await;
            core::log_unparsed(&self.state, &ProxyError::BadRequest("malformed target"));
            return None;
        };
        let mut rec = AccessRecord::new(
            SystemTime::now(),
            core::request_id(&self.state, &req),
            method,
            uri,
            version,
        );
        rec.bytes_in = req.body().len() as u64;
        Some(rec)
    }

    /// Answers a request refused outright, then the connection closes.
    async fn reject(&mut self, r: Reject, stop: &watch::Receiver<bool>) {
        let started = std::time::Instant::now();
        match r {
            Reject::HeadTooLarge => {
                let _ = self.client.write_all(HEAD_TOO_LARGE).await;
                core::log_unparsed(&self.state, &ProxyError::HeadTooLarge);
            }
            Reject::Host => {
                // The head is whole (only its Host was wrong); its body,
                // if any, is never read: the connection closes.
                let head = self.buf.split_to(self.head.head_len).freeze();
                self.head.body_len = 0;
                let version = self.state.snapshot().version;
                if let Some(rec) = self.record(&head, version).await {
                    self.own_response(ProxyError::BadHost, None, rec, started, stop)
                        .await;
                }
            }
        }
    }

    /// Answers a head over a limit, then the connection closes: too many
    /// fields get the empty 431 hyper's path sends for them; a body
    /// announced over `max_body_bytes` gets the JSON 413 before a byte of
    /// it is read.
    async fn over(&mut self, e: ProxyError, stop: &watch::Receiver<bool>) {
        if matches!(e, ProxyError::TooManyHeaders) {
            let _ = self.client.write_all(HEAD_TOO_LARGE).await;
            return core::log_unparsed(&self.state, &e);
        }
        let started = std::time::Instant::now();
        let head = self.buf.split_to(self.head.head_len).freeze();
        self.head.body_len = 0;
        let version = self.state.snapshot().version;
        if let Some(rec) = self.record(&head, version).await {
            self.own_response(e, None, rec, started, stop).await;
        }
    }

    /// Logs a request the client abandoned before its body was whole (the
    /// head at the front of `buf`); nothing was forwarded.
    fn log_refused(&self, e: &ProxyError) {
        let Some(mut rec) = self.pending_record() else {
            return core::log_unparsed(&self.state, e);
        };
        rec.status = e.status().as_u16();
        rec.error = Some(e.cause());
        self.log(rec, Duration::ZERO, 0);
    }

    /// The access record of the request whose head is at the front of
    /// `buf` and whose body is not whole (`bytes_in`: what came of it), or
    /// `None` when its method or target cannot be read.
    fn pending_record(&self) -> Option<AccessRecord> {
        let head = Bytes::copy_from_slice(&self.buf[..self.head.head_len]);
        let req = h1::Request {
            bytes: &head,
            head: &self.head,
        };
        let (Ok(method), Ok(uri)) = (
            Method::from_bytes(req.method()),
            Uri::from_maybe_shared(head.slice(self.head.target.clone())),
        ) else {
            return None;
        };
        let mut rec = AccessRecord::new(
            SystemTime::now(),
            core::request_id(&self.state, &req),
            method,
            uri,
            self.state.snapshot().version,
        );
        rec.bytes_in = self.buf.len().saturating_sub(self.head.head_len) as u64;
        Some(rec)
    }

    /// Sends the head in `self.out` and `body` upstream and reads the
    /// response head, within the upstream's timeout, watching the client
    /// for a hang-up meanwhile.
    async fn exchange(
        &mut self,
        lease: &mut Lease,
        body: &[u8],
        is_head: bool,
        idempotent: bool,
        sent: std::time::Instant,
    ) -> Exchange {
        let at = Instant::from_std(sent + lease.upstream().head_timeout());
        let round_trip = round_trip(
            lease,
            (&self.out, body),
            is_head,
            idempotent,
            &mut self.upstream_buf,
            &mut self.response,
        );
        tokio::pin!(round_trip);
        let mut watching = true;
        loop {
            tokio::select! {
                biased;
                r = &mut round_trip => return Exchange::Done(r),
                () = self.upstream_timer.until(at) => return Exchange::TimedOut,
                ready = self.client.readable(), if watching => {
                    if ready.is_err() {
                        return Exchange::ClientGone;
                    }
                    // Pipelined bytes are kept for the next request; an
                    // EOF or reset means nobody waits for this answer.
                    self.buf.reserve(READ_CHUNK);
                    match self.client.try_read_buf(&mut self.buf) {
                        Ok(0) => return Exchange::ClientGone,
                        Ok(_) => watching = self.buf.len() < self.timeouts.max_head + h1::MAX_LEAN_BODY,
                        Err(e) if e.kind() == stdio::ErrorKind::WouldBlock => {}
                        Err(_) => return Exchange::ClientGone,
                    }
                }
            }
        }
    }

    /// Relays the upstream's response (head parsed in `self.response`) to
    /// the client, then logs it; says whether the connection stays open.
    async fn relay(
        &mut self,
        mut up: TcpStream,
        lease: &Lease,
        stamps: Option<&Stamps>,
        mut rec: AccessRecord,
        (started, sent): (std::time::Instant, std::time::Instant),
        stop: &watch::Receiver<bool>,
    ) -> bool {
        let upstream = lease.upstream();
        // `total_timeout` bounds the body too (no timer when it is unset).
        let total = upstream
            .config
            .total_timeout
            .map(|t| Instant::from_std(sent + t));
        let close = self.closing(stop);
        let resp = &self.response;
        let framing = resp.framing.unwrap_or(Framing::Empty);
        rec.status = resp.status;
        self.out.clear();
        h1::write_client_head(
            &mut self.out,
            &self.upstream_buf,
            resp,
            stamps.map(Stamps::bytes),
            rec.request_id.as_bytes(),
            crate::observe::time::cached_http_date,
            close,
        );
        let mut reusable = !resp.close;
        self.upstream_buf.advance(resp.head_len);
        let mut body = BodyRelay::new(framing);
        let mut bytes_out = 0;
        let result: Result<(), RelayError> = async {
            loop {
                let (used, done) = body.take(&self.upstream_buf, &mut self.out)?;
                bytes_out += used.data;
                if used.raw < self.upstream_buf.len() {
                    // Bytes past the response's end: the upstream broke framing.
                    reusable = false;
                }
                self.upstream_buf.clear();
                if !self.out.is_empty() {
                    self.client
                        .write_all(&self.out)
                        .await
                        .map_err(|_| RelayError::Client)?;
                    self.out.clear();
                }
                if done {
                    return Ok(());
                }
                self.upstream_buf.reserve(READ_CHUNK);
                let read = up.read_buf(&mut self.upstream_buf);
                let n = match total {
                    None => read.await,
                    Some(at) => tokio::time::timeout_at(at, read)
                        .await
                        .map_err(|_| RelayError::TimedOut)?,
                }
                .map_err(|_| RelayError::Upstream)?;
                if n == 0 {
                    // Only a close-delimited body may end here; the next
                    // turn writes its last chunk and finishes.
                    body.end(&mut self.out).ok_or(RelayError::Upstream)?;
                }
            }
        }
        .await;
        let ended = std::time::Instant::now();
        let keep = match result {
            Ok(()) => {
                if reusable {
                    lease
                        .endpoint()
                        .checkin(up, ended, upstream.config.max_idle_per_host);
                }
                !close
            }
            Err(RelayError::Upstream) => {
                rec.error = Some(core::upstream_error(upstream, UpstreamFailure::Body).cause());
                false
            }
            Err(RelayError::TimedOut) => {
                let e = core::upstream_error(upstream, UpstreamFailure::TotalTimeout);
                rec.error = Some(e.cause());
                false
            }
            Err(RelayError::Client) => false,
        };
        self.log(rec, ended - started, bytes_out);
        keep
    }

    /// Answers with the proxy's own JSON error response, and logs it.
    async fn own_response(
        &mut self,
        error: ProxyError,
        stamps: Option<&Stamps>,
        mut rec: AccessRecord,
        started: std::time::Instant,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        let answer = core::ErrorAnswer::new(&error, &mut rec);
        let close = answer.close || self.closing(stop);
        self.out.clear();
        let date = crate::observe::time::cached_http_date();
        h1::write_own_response(
            &mut self.out,
            answer.status,
            answer.body.as_bytes(),
            stamps.map(Stamps::bytes),
            rec.request_id.as_bytes(),
            &date,
            close,
        );
        let written = self.client.write_all(&self.out).await.is_ok();
        let sent = if written { answer.body.len() as u64 } else { 0 };
        self.log(rec, started.elapsed(), sent);
        written && !close
    }

    /// Whether this response is the connection's last: the client asked,
    /// or shutdown has begun.
    fn closing(&self, stop: &watch::Receiver<bool>) -> bool {
        self.head.close || *stop.borrow()
    }

    fn log(&self, rec: AccessRecord, took: Duration, bytes_out: u64) {
        let bytes_in = rec.bytes_in;
        core::finish(&self.state.log, rec, took, bytes_in, bytes_out);
    }
}

/// Makes room for `more` bytes in a body buffer, to exactly its length
/// plus `more`. Growing with `BytesMut::reserve` in steps doubled the
/// capacity each time, so a 256 KiB body ended in a 512 KiB buffer after
/// leaving 72 KiB and 144 KiB ones behind, which the allocator kept: 300
/// stalled uploads held over 100 MB after they closed.
fn grow_exact(buf: &mut BytesMut, more: usize) {
    if buf.capacity() - buf.len() >= more {
        return;
    }
    let mut grown = BytesMut::with_capacity(buf.len() + more);
    grown.extend_from_slice(buf);
    *buf = grown;
}

/// The answer to an oversized head, as hyper's path sends it.
const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Connects (or reuses a pooled connection), writes `request` and reads
/// the response head into `head`, skipping 1xx answers.
///
/// Retries: an endpoint that cannot be connected to is reported to the
/// passive check, and the request moves to another endpoint of the same
/// upstream (`lease` is replaced), at most [`Upstream::max_retries`]
/// times; no byte of it went anywhere yet. A reused connection that fails
/// before any response byte is retried once on a new one to the same
/// endpoint if the request was not fully sent or is idempotent: the
/// upstream most likely closed it while it sat idle. Nothing else is
/// retried.
///
/// [`Upstream::max_retries`]: super::upstream::Upstream::max_retries
async fn round_trip(
    lease: &mut Lease,
    request: (&[u8], &[u8]),
    is_head: bool,
    idempotent: bool,
    buf: &mut BytesMut,
    head: &mut ResponseHead,
) -> Result<TcpStream, Failure> {
    let connect_timeout = lease.upstream().config.connect_timeout;
    let mut retries = lease.upstream().max_retries();
    let mut tried = 0;
    let mut conn = loop {
        match lease.endpoint().checkout(connect_timeout).await {
            Ok(conn) => break conn,
            Err(ConnectError::Io(e)) if core::local_resource(&e) => {
                // Our own fault: the endpoint is not to blame.
                return Err(Failure::Connect(ConnectError::Io(e)));
            }
            Err(e) => {
                lease.report(true);
                tried |= lease.bit();
                let next = (retries > 0)
                    .then(|| lease.upstream().pick(tried))
                    .flatten();
                let Some(next) = next else {
                    return Err(Failure::Connect(e));
                };
                tracing::debug!(error = %e, endpoint = %lease.endpoint().address, "connect failed; trying another endpoint");
                retries -= 1;
                *lease = next;
            }
        }
    };
    loop {
        match try_round_trip(&mut conn, request, is_head, buf, head).await {
            Ok(()) => {
                lease.report(head.status >= 500);
                return Ok(conn.stream);
            }
            Err(Failure::Io {
                responded: false,
                sent,
            }) if conn.reused && (idempotent || !sent) => {
                conn = match lease.endpoint().connect(connect_timeout).await {
                    Ok(c) => c,
                    Err(ConnectError::Io(e)) if core::local_resource(&e) => {
                        return Err(Failure::Connect(ConnectError::Io(e)));
                    }
                    Err(e) => {
                        lease.report(true);
                        return Err(Failure::Connect(e));
                    }
                };
            }
            Err(f) => return Err(f),
        }
    }
}

async fn try_round_trip(
    conn: &mut Checkout,
    (request_head, body): (&[u8], &[u8]),
    is_head: bool,
    buf: &mut BytesMut,
    head: &mut ResponseHead,
) -> Result<(), Failure> {
    buf.clear();
    if write_both(&mut conn.stream, request_head, body)
        .await
        .is_err()
    {
        // An upstream may answer before it has read the whole request (an
        // early 413) and close: that answer is relayed, as NGINX relays
        // it, and the connection is not reused (the request was cut).
        return match read_head(conn, is_head, buf, head, false).await {
            Ok(()) => {
                head.close = true;
                Ok(())
            }
            Err(_) => Err(Failure::Io {
                responded: false,
                sent: false,
            }),
        };
    }
    read_head(conn, is_head, buf, head, true).await
}

/// Reads the final response head into `head`, skipping 1xx answers.
async fn read_head(
    conn: &mut Checkout,
    is_head: bool,
    buf: &mut BytesMut,
    head: &mut ResponseHead,
    sent: bool,
) -> Result<(), Failure> {
    let mut responded = false;
    loop {
        buf.reserve(READ_CHUNK);
        let failed = Failure::Io {
            responded: responded || !buf.is_empty(),
            sent,
        };
        match conn.stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(failed),
            Ok(_) => {}
        }
        while h1::parse_response(buf, is_head, head).map_err(Failure::Invalid)? {
            if (100..200).contains(&head.status) {
                responded = true;
                buf.advance(head.head_len);
                continue;
            }
            return Ok(());
        }
    }
}

/// Writes `a` then `b` with as few syscalls as the socket allows, without
/// copying a request body behind its head.
async fn write_both(stream: &mut TcpStream, mut a: &[u8], mut b: &[u8]) -> stdio::Result<()> {
    if b.is_empty() {
        // One plain send: cheaper in the kernel than a writev.
        return stream.write_all(a).await;
    }
    while !a.is_empty() || !b.is_empty() {
        let n = stream
            .write_vectored(&[stdio::IoSlice::new(a), stdio::IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(stdio::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

/// Copies a response body from the upstream's bytes to the client's,
/// re-framing a close-delimited one as chunked.
struct BodyRelay {
    framing: Framing,
    left: u64,
    chunked: ChunkedScan,
}

/// Of the bytes offered: how many belonged to the body, and how many of
/// those were payload (what the access log counts as `bytes_out`).
struct Used {
    raw: usize,
    data: u64,
}

enum RelayError {
    Upstream,
    /// The body was not over within the upstream's `total_timeout`.
    TimedOut,
    Client,
}

impl From<h1::BadChunk> for RelayError {
    fn from(_: h1::BadChunk) -> RelayError {
        RelayError::Upstream
    }
}

impl BodyRelay {
    fn new(framing: Framing) -> BodyRelay {
        BodyRelay {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunked: ChunkedScan::default(),
        }
    }

    /// Appends the body's part of `data` to `out`; says whether it ended.
    fn take(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(Used, bool), h1::BadChunk> {
        Ok(match self.framing {
            Framing::Empty => (Used { raw: 0, data: 0 }, true),
            Framing::Length(_) => {
                let n = self.left.min(data.len() as u64) as usize;
                out.extend_from_slice(&data[..n]);
                self.left -= n as u64;
                (
                    Used {
                        raw: n,
                        data: n as u64,
                    },
                    self.left == 0,
                )
            }
            Framing::Chunked => {
                // Re-emitted canonically: each run of payload as one chunk
                // with a plain hex size line (no extensions, no odd
                // whitespace a later hop could read differently), then the
                // last chunk; trailers are dropped (an upstream could
                // otherwise send an `x-cohort-*` one), as hyper's path
                // drops them.
                let before = self.chunked.data_bytes();
                let end = self
                    .chunked
                    .decode(data, &mut |run| h1::write_chunk(out, run))?;
                if end.is_some() {
                    out.extend_from_slice(h1::LAST_CHUNK);
                }
                let used = Used {
                    raw: end.unwrap_or(data.len()),
                    data: self.chunked.data_bytes() - before,
                };
                (used, end.is_some())
            }
            Framing::UntilClose => {
                h1::write_chunk(out, data);
                (
                    Used {
                        raw: data.len(),
                        data: data.len() as u64,
                    },
                    false,
                )
            }
        })
    }

    /// The upstream closed: ends a close-delimited body (re-chunked, so
    /// with its last chunk), or says the body was cut short.
    fn end(&mut self, out: &mut Vec<u8>) -> Option<()> {
        if self.framing != Framing::UntilClose {
            return None;
        }
        out.extend_from_slice(h1::LAST_CHUNK);
        self.framing = Framing::Empty;
        Some(())
    }
}
