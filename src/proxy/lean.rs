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
//! a byte of it is consumed, the connection goes to hyper
//! ([`super::listener::serve_hyper`]), which serves the rest of it. Routing,
//! assignment and the access record are [`super::forward::route_request`]'s, the
//! same as on the hyper path; the integration tests run both.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Uri};
use hyper::server::conn::http1;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant, Sleep};

use super::forward::{request_id, route_request, Peer, Refused, Routed, Stamps};
use super::h1::{self, ChunkedScan, Framing, Hop, Parsed, RequestHead, ResponseHead};
use super::upstream::{Checkout, ConnectError, Upstream};
use crate::error::ProxyError;
use crate::observe::access_log::AccessRecord;
use crate::state::State;

/// How long a client may take, from `runtime.client_*_timeout`.
#[derive(Clone, Copy, Debug)]
pub struct ClientTimeouts {
    /// Idle between requests on a keep-alive connection.
    pub idle: Duration,
    /// For a request head, from its first byte (hyper's
    /// `header_read_timeout` on the other path).
    pub header: Duration,
    /// For a buffered request body, after its head.
    pub body: Duration,
}

impl ClientTimeouts {
    pub fn of(r: &crate::config::RuntimeConfig) -> ClientTimeouts {
        ClientTimeouts {
            idle: r.client_idle_timeout,
            header: r.client_header_timeout,
            body: r.client_body_timeout,
        }
    }
}
/// Read-buffer growth per read (hyper's default buffer size too).
const READ_CHUNK: usize = 8 * 1024;
const COPY_BODY_UP_TO: usize = 4 * 1024;

/// Serves one client connection until it closes, handing it to hyper at
/// the first request the lean path does not take.
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    http: Arc<http1::Builder>,
    timeouts: ClientTimeouts,
) {
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
    };
    loop {
        match conn.next_request(&mut stop).await {
            Next::Request => {}
            Next::Closed => return,
            Next::Hand(why) => {
                tracing::trace!(%peer, why, "connection handed to hyper");
                let rest = conn.buf.split().freeze();
                let io = Rewind {
                    rest,
                    io: conn.client,
                };
                return super::listener::serve_hyper(io, peer, conn.state, stop, &http).await;
            }
        }
        if !conn.serve_one(&stop).await || *stop.borrow() {
            return;
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
    timeouts: ClientTimeouts,
}

enum Next {
    /// A whole lean request is at the front of `buf`, parsed into `head`.
    Request,
    Closed,
    Hand(&'static str),
}

/// How a request's exchange with its upstream ended.
enum Exchange {
    Done(Result<TcpStream, Failure>),
    TimedOut,
    ClientGone,
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
        loop {
            if need.is_none() && !self.buf.is_empty() {
                match h1::parse_request(&self.buf, &mut self.head) {
                    Parsed::Lean => {
                        need = Some(self.head.head_len + self.head.body_len);
                        (phase, deadline) = (t.body, None);
                    }
                    Parsed::Partial => {}
                    Parsed::Hand(why) => return Next::Hand(why),
                }
            }
            if need.is_some_and(|n| self.buf.len() >= n) {
                return Next::Request;
            }
            let idle = self.buf.is_empty();
            if idle && *stop.borrow() {
                return Next::Closed;
            }
            let missing = need.map_or(0, |n| n.saturating_sub(self.buf.len()));
            self.buf.reserve(missing.max(READ_CHUNK));
            let at = *deadline.get_or_insert_with(|| Instant::now() + phase);
            tokio::select! {
                biased;
                read = self.client.read_buf(&mut self.buf) => match read {
                    Ok(0) | Err(_) => return Next::Closed,
                    Ok(_) if idle => (phase, deadline) = (t.header, None),
                    Ok(_) => {}
                },
                changed = stop.changed(), if idle => {
                    if changed.is_err() {
                        return Next::Closed;
                    }
                }
                () = self.header_timer.until(at) => {
                    if !idle {
                        // Part of a request came and the rest did not.
                        let _ = self.client.write_all(REQUEST_TIMEOUT).await;
                    }
                    return Next::Closed;
                }
            }
        }
    }

    /// Serves the request at the front of `buf`; says whether the
    /// connection stays open.
    async fn serve_one(&mut self, stop: &watch::Receiver<bool>) -> bool {
        let started = std::time::Instant::now();
        let bytes = self
            .buf
            .split_to(self.head.head_len + self.head.body_len)
            .freeze();
        let req = h1::Request {
            bytes: &bytes,
            head: &self.head,
        };
        // httparse admits only token characters in a method, all of which
        // `Method` accepts; `Uri` is stricter about targets than httparse.
        let (Ok(method), Ok(uri)) = (
            Method::from_bytes(req.method()),
            Uri::from_maybe_shared(bytes.slice(self.head.target.clone())),
        ) else {
            let _ = self.client.write_all(BAD_REQUEST).await;
            return false;
        };
        let is_head = method == Method::HEAD;
        let idempotent = method.is_idempotent();
        let snap = self.state.snapshot();
        let mut rec = AccessRecord::new(
            SystemTime::now(),
            request_id(&self.state, &req),
            method,
            uri,
            snap.version.clone(),
        );
        rec.bytes_in = req.body().len() as u64;
        let routed = route_request(&self.state, snap, req.path(), &req, &mut rec).await;
        let Routed { upstream, stamps } = match routed {
            Ok(r) => r,
            Err(Refused { error, stamps }) => {
                return self
                    .own_response(error, stamps.as_ref(), rec, started, stop)
                    .await;
            }
        };

        self.out.clear();
        let hop = Hop {
            authority: upstream.authority.as_str(),
            stamps: stamps.as_ref(),
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
            .exchange(&upstream, &body, is_head, idempotent, sent)
            .await;
        rec.upstream_time = Some(sent.elapsed());
        let name = || upstream.config.name.clone();
        let error = match outcome {
            Exchange::Done(Ok(stream)) => {
                return self
                    .relay(stream, &upstream, stamps.as_ref(), rec, started, stop)
                    .await
            }
            Exchange::ClientGone => {
                rec.status = 499;
                rec.error = Some("client_gone");
                self.log(rec, started.elapsed(), 0);
                return false;
            }
            Exchange::TimedOut => {
                ProxyError::UpstreamTimeout(name(), upstream.config.timeout.as_millis())
            }
            Exchange::Done(Err(f)) => {
                tracing::debug!(upstream = %upstream.config.name, failure = ?f, "upstream exchange failed");
                match f {
                    Failure::Connect(ConnectError::Timeout) => ProxyError::UpstreamTimeout(
                        name(),
                        upstream.config.connect_timeout.as_millis(),
                    ),
                    Failure::Connect(ConnectError::Io(_)) => ProxyError::UpstreamConnect(name()),
                    Failure::Io { .. } => ProxyError::UpstreamReset(name()),
                    Failure::Invalid(why) => ProxyError::UpstreamInvalid(name(), why.to_string()),
                }
            }
        };
        self.own_response(error, stamps.as_ref(), rec, started, stop)
            .await
    }

    /// Sends the head in `self.out` and `body` upstream and reads the
    /// response head, within the upstream's timeout, watching the client
    /// for a hang-up meanwhile.
    async fn exchange(
        &mut self,
        upstream: &Upstream,
        body: &[u8],
        is_head: bool,
        idempotent: bool,
        sent: std::time::Instant,
    ) -> Exchange {
        let at = Instant::from_std(sent + upstream.config.timeout);
        let round_trip = round_trip(
            upstream,
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
                        Ok(_) => watching = self.buf.len() < h1::MAX_HEAD + h1::MAX_LEAN_BODY,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
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
        upstream: &Upstream,
        stamps: Option<&Stamps>,
        mut rec: AccessRecord,
        started: std::time::Instant,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        let close = self.closing(stop);
        let resp = &self.response;
        let framing = resp.framing.unwrap_or(Framing::Empty);
        rec.status = resp.status;
        self.out.clear();
        h1::write_client_head(
            &mut self.out,
            &self.upstream_buf,
            resp,
            stamps,
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
                let n = up
                    .read_buf(&mut self.upstream_buf)
                    .await
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
                    upstream.checkin(up, ended);
                }
                !close
            }
            Err(RelayError::Upstream) => {
                rec.error = Some("upstream_body");
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
        let close = self.closing(stop);
        let status = error.status();
        rec.status = status.as_u16();
        rec.error = Some(error.cause());
        let body = error.body(&String::from_utf8_lossy(rec.request_id.as_bytes()));
        self.out.clear();
        let date = crate::observe::time::cached_http_date();
        h1::write_own_response(
            &mut self.out,
            status,
            body.as_bytes(),
            stamps,
            rec.request_id.as_bytes(),
            &date,
            close,
        );
        let written = self.client.write_all(&self.out).await.is_ok();
        self.log(
            rec,
            started.elapsed(),
            if written { body.len() as u64 } else { 0 },
        );
        written && !close
    }

    /// Whether this response is the connection's last: the client asked,
    /// or shutdown has begun.
    fn closing(&self, stop: &watch::Receiver<bool>) -> bool {
        self.head.close || *stop.borrow()
    }

    fn log(&self, mut rec: AccessRecord, took: Duration, bytes_out: u64) {
        rec.bytes_out = bytes_out;
        rec.total_time = took;
        self.state.log.record(&rec);
    }
}

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Connects (or reuses a pooled connection), writes `request` and reads
/// the response head into `head`, skipping 1xx answers. A reused
/// connection that fails before any response byte is retried once on a
/// new one if the request was not fully sent or is idempotent: the
/// upstream most likely closed it while it sat idle.
async fn round_trip(
    upstream: &Upstream,
    request: (&[u8], &[u8]),
    is_head: bool,
    idempotent: bool,
    buf: &mut BytesMut,
    head: &mut ResponseHead,
) -> Result<TcpStream, Failure> {
    let mut conn = upstream.checkout().await.map_err(Failure::Connect)?;
    loop {
        match try_round_trip(&mut conn, request, is_head, buf, head).await {
            Ok(()) => return Ok(conn.stream),
            Err(Failure::Io {
                responded: false,
                sent,
            }) if conn.reused && (idempotent || !sent) => {
                conn = upstream.connect().await.map_err(Failure::Connect)?;
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
    write_both(&mut conn.stream, request_head, body)
        .await
        .map_err(|_| Failure::Io {
            responded: false,
            sent: false,
        })?;
    let mut responded = false;
    loop {
        buf.reserve(READ_CHUNK);
        let failed = Failure::Io {
            responded: responded || !buf.is_empty(),
            sent: true,
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
async fn write_both(stream: &mut TcpStream, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    if b.is_empty() {
        // One plain send: cheaper in the kernel than a writev.
        return stream.write_all(a).await;
    }
    while !a.is_empty() || !b.is_empty() {
        let n = stream
            .write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
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
                // Chunks pass as they are; trailers are dropped (an
                // upstream could otherwise send an `x-cohort-*` one), as
                // hyper's path drops them.
                let before = self.chunked.data_bytes();
                let was_in_trailers = self.chunked.in_trailers();
                let end = self.chunked.feed(data)?;
                let raw = end.unwrap_or(data.len());
                let kept = self.chunked.before_trailers(raw, was_in_trailers);
                out.extend_from_slice(&data[..kept]);
                if end.is_some() {
                    out.extend_from_slice(b"\r\n");
                }
                let used = Used {
                    raw,
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

/// A timer that is re-armed only when it fires early, so a connection
/// serving back-to-back requests touches the timer wheel about once per
/// timeout period instead of once per request.
#[derive(Default)]
struct Deadline(Option<Pin<Box<Sleep>>>);

impl Deadline {
    async fn until(&mut self, at: Instant) {
        let sleep = self.0.get_or_insert_with(|| Box::pin(sleep_until(at)));
        if sleep.deadline() > at {
            sleep.as_mut().reset(at);
        }
        loop {
            sleep.as_mut().await;
            if Instant::now() >= at {
                return;
            }
            sleep.as_mut().reset(at);
        }
    }
}

/// The client socket with the bytes the lean path already read put back
/// in front, for hyper to serve.
pub struct Rewind {
    rest: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.rest.is_empty() {
            let n = self.rest.len().min(buf.remaining());
            buf.put_slice(&self.rest[..n]);
            self.rest.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
