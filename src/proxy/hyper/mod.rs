//! Hyper's front end: serves a connection with hyper's HTTP/1 machinery
//! ([`serve`]) — every connection when the lean path is off, else the
//! ones the lean path handed over — with [`handle`] as the service.
//!
//! The handler only translates: it asks [`core`] to check, route and
//! assign the request, rewrites it for hyper's client, and maps what
//! happened to [`core`]'s errors and access record. It is generic over
//! the request body, so it is unit-tested without sockets.

pub(crate) mod body;
pub(crate) mod h2;
mod limit;
mod tunnel;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use self::body::UpstreamBody;
use self::body::{BodyFault, BodyWatch, BoxError, CancelLog, PendingLog, ResponseBody};
use self::limit::Capped;
use super::core::{self, Peer, Refused, Routed, Stamps, UpstreamFailure};
use super::h1;
use super::upstream::tls::TlsFailed;
use super::upstream::Lease;
use crate::error::ProxyError;
use crate::observe::access_log::AccessRecord;
use crate::state::State;

/// What a client may send on hyper's front end (from `runtime`, as on
/// the lean path).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestLimits {
    /// How long the client may pause while sending a request body.
    pub body_timeout: Duration,
    /// The largest request body (413 past it), if any.
    pub max_body: Option<u64>,
    /// The most header fields (431 past it; hyper's HTTP/1 server counts
    /// them itself, this catches HTTP/2 requests).
    pub max_headers: usize,
}

/// What the handler knows of its connection, made once per connection.
pub(crate) struct Conn {
    pub peer: Peer,
    pub limits: RequestLimits,
    /// The listener's tunnel receiver: a WebSocket tunnel, which outlives
    /// hyper's connection, holds a copy, so a drain waits for it (after
    /// the connections) and can cut it at its deadline.
    pub tunnels: watch::Receiver<bool>,
    /// Whether the client connected over TLS (`x-forwarded-proto: https`).
    pub tls: bool,
    /// The listener's shutdown signal, held (through [`PendingLog`]) by
    /// every request whose access-log line is not written yet: the drain
    /// waits for all of them, so a response that went out before the
    /// process exits always has its line. An HTTP/2 stream's body can end
    /// after its connection's task has.
    pub _drain: watch::Receiver<bool>,
}

/// Serves a connection with hyper until it closes, or until shutdown
/// starts and its request in flight is answered. Answers hyper refused
/// itself (a malformed or oversized head, a head that took too long) get
/// an access-log line here, and a head that timed out part-way gets the
/// 408 the lean path sends too. `tunnels` is the listener's receiver for
/// WebSocket tunnels ([`Conn::tunnels`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<I>(
    io: I,
    peer: SocketAddr,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    tunnels: watch::Receiver<bool>,
    http: &http1::Builder,
    limits: RequestLimits,
    tls: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(Conn {
        peer: Peer::new(peer),
        limits,
        tunnels,
        tls,
        _drain: stop.clone(),
    });
    let st = state.clone();
    // Told when a request starts: a drain lets an unused connection send
    // its first request (core::FIRST_REQUEST_GRACE) before closing it.
    let started = Arc::new(tokio::sync::Notify::new());
    let first = started.clone();
    let svc = service_fn(move |req| {
        first.notify_one();
        handle(st.clone(), conn.clone(), req)
    });
    let mut conn = http.serve_connection(TokioIo::new(io), svc).with_upgrades();
    // Borrowed, not moved: the receiver must live until the connection
    // ends, since the drain waits for every receiver to go.
    let stopping = async {
        let _ = stop.wait_for(|stopping| *stopping).await;
    };
    // Biased: a connection handed over from the lean path already holds a
    // request, which hyper must read before a shutdown can find it idle.
    let result = tokio::select! {
        biased;
        r = &mut conn => r,
        () = stopping => {
            // At once for a connection that served a request (the permit
            // is stored); up to the grace for one still unused.
            let first = tokio::time::timeout(core::FIRST_REQUEST_GRACE, started.notified());
            tokio::select! {
                biased;
                r = &mut conn => r,
                _ = first => {
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                    (&mut conn).await
                }
            }
        }
    };
    let Err(e) = result else { return };
    tracing::debug!(%peer, error = %e, "connection ended with an error");
    let refused = if e.is_timeout() {
        // hyper closes without an answer; one is owed if part of a head came.
        let Some(parts) = conn.into_parts() else {
            return;
        };
        if parts.read_buf.is_empty() {
            return;
        }
        let mut io = parts.io.into_inner();
        let _ = io.write_all(h1::REQUEST_TIMEOUT).await;
        ProxyError::RequestTimeout
    } else if e.is_parse_too_large() {
        // hyper answered 414 or 431 itself.
        if e.to_string().contains("URI too long") {
            ProxyError::UriTooLong
        } else {
            ProxyError::HeadTooLarge
        }
    } else if e.is_parse() && !e.is_parse_version_h2() {
        // hyper answered 400 itself: an invalid or conflicting
        // Content-Length (`5, 5`, `+5`, two values) or Transfer-Encoding
        // breaks the body's framing; anything else, the head's syntax.
        let why = e.to_string();
        if why.contains("content-length") || why.contains("transfer-encoding") {
            ProxyError::BadFraming
        } else {
            ProxyError::BadRequest("malformed head")
        }
    } else {
        return;
    };
    core::log_unparsed(&state, &refused);
}

/// The service's one error: the client went away mid-request. hyper then
/// closes the connection without writing a response — 499 is a status
/// for the access log only, never sent on the wire (as NGINX uses it).
#[derive(Debug)]
pub(crate) struct ClientGone;

impl std::fmt::Display for ClientGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client went away mid-request")
    }
}

impl std::error::Error for ClientGone {}

/// The service: check, route, assign, forward, stamp, and leave one
/// access-log record.
pub(crate) async fn handle<B>(
    state: Arc<State>,
    conn: Arc<Conn>,
    req: Request<B>,
) -> Result<Response<ResponseBody>, ClientGone>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let snap = state.snapshot();
    let mut rec = AccessRecord::new(
        SystemTime::now(),
        core::request_id(&state, req.headers()),
        req.method().clone(),
        req.uri().clone(),
        snap.version,
    );
    rec.protocol = protocol(req.version());
    let grpc = core::is_grpc(req.headers());
    let watch = Arc::new(BodyWatch::default());
    let pending = |rec: AccessRecord| PendingLog {
        log: state.log.clone(),
        record: rec,
        started,
        body: watch.clone(),
        _conn: conn.clone(),
    };

    let http11 = req.version() == http::Version::HTTP_11;
    if let Err(e) = core::check_request(req.method(), http11, req.headers()) {
        return Ok(error_response(e, None, rec, pending, grpc));
    }
    if let Err(e) = check_limits(&req, &conn.limits) {
        return Ok(error_response(e, None, rec, pending, grpc));
    }
    // A body of unknown length is cut off past the limit as it streams.
    let over = Arc::new(AtomicBool::new(false));
    let max = conn.limits.max_body.unwrap_or(u64::MAX);
    let req = req.map(|b| Capped::new(b, max, over.clone()));
    let routed = core::route_request(&state, snap, req.uri().path(), req.headers(), &mut rec).await;
    let Routed { mut lease, stamps } = match routed {
        Ok(r) => r,
        Err(Refused { error, stamps }) => {
            return Ok(error_response(error, stamps.as_ref(), rec, pending, grpc))
        }
    };
    // A tunnel is plain HTTP/1.1 over TCP: a WebSocket routed to a TLS or
    // HTTP/2 upstream is served as a plain request instead (its Upgrade
    // dropped with the other hop-by-hop headers), never sent unencrypted.
    if tunnel::wants_websocket(&req) && lease.upstream().lean() {
        let opening = tunnel::Opening {
            state: &state,
            conn: &conn,
            lease,
            stamps,
            started,
        };
        return Ok(match tunnel::open(opening, req, rec, pending).await {
            Ok(resp) => resp,
            Err((e, rec, stamps)) => error_response(e, stamps.as_ref(), rec, pending, grpc),
        });
    }
    let upstream_req = match upstream_request(
        req,
        &lease,
        stamps.as_ref(),
        &rec.request_id,
        &conn,
        watch.clone(),
    ) {
        Ok(r) => r,
        Err(e) => return Ok(error_response(e, stamps.as_ref(), rec, pending, grpc)),
    };
    let sent = Instant::now();
    let cancelled = CancelLog::new(pending(rec.clone()));
    let upstream = lease.upstream().clone();
    // A request that could not connect goes to another endpoint of the
    // same upstream (its body, never polled, is taken back), at most
    // `max_retries` times.
    let (parts, body) = upstream_req.into_parts();
    let mut retries = upstream.max_retries();
    // Only a request that may be retried pays for a reclaimable body.
    let (mut body, mut reclaim) = if retries > 0 {
        let (b, r) = body.reclaimable();
        (b, Some(r))
    } else {
        (body, None)
    };
    let mut tried = 0;
    let mut parts = Some(parts);
    let result = loop {
        // Parts are copied only while a retry may still need them.
        let p = if retries > 0 {
            parts.clone()
        } else {
            parts.take()
        };
        let mut req = Request::from_parts(p.expect("kept while a retry may need them"), body);
        if tried != 0 {
            // A retry: another endpoint than `upstream_request` named.
            set_endpoint(&mut req, &lease);
        }
        let client = upstream.client_for(lease.endpoint());
        let r = tokio::time::timeout(upstream.head_timeout(), client.request(req)).await;
        if let Ok(Err(e)) = &r {
            // A local EMFILE is not the endpoint's fault: no report, no retry.
            if e.is_connect() && !core::local_resource(e) {
                lease.report(true);
                tried |= lease.bit();
                if retries > 0 {
                    if let Some((next, again)) = upstream
                        .pick(tried)
                        .and_then(|l| Some((l, reclaim.as_ref()?.take()?)))
                    {
                        tracing::debug!(error = %e, endpoint = %lease.endpoint().address, "connect failed; trying another endpoint");
                        retries -= 1;
                        lease = next;
                        (body, reclaim) = (again.0, Some(again.1));
                        continue;
                    }
                }
            }
        }
        break r;
    };
    drop(reclaim);
    cancelled.disarm();
    rec.upstream_time = Some(sent.elapsed());
    rec.upstream = Some(lease.endpoint().address);
    let failure = match result {
        Ok(Ok(resp)) => match check_response(&resp) {
            Ok(()) => {
                lease.report(resp.status().is_server_error());
                let (mut parts, body) = resp.into_parts();
                core::rewrite_response_headers(
                    &mut parts.headers,
                    stamps.as_ref(),
                    &rec.request_id,
                );
                rec.status = parts.status.as_u16();
                let body = ResponseBody::upstream(body)
                    .with_log(pending(rec))
                    .with_lease(lease)
                    .with_grpc(grpc);
                let body = match upstream.config.total_timeout {
                    Some(t) => body.with_deadline(sent + t),
                    None => body,
                };
                return Ok(Response::from_parts(parts, body));
            }
            Err(why) => UpstreamFailure::Invalid(why.to_string()),
        },
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upstream request failed");
            if let Some(why) = tls_failure(&e) {
                tracing::warn!(upstream = %upstream.config.name, endpoint = %lease.endpoint().address, error = %why, "upstream TLS handshake failed");
                UpstreamFailure::Tls(why)
            } else if is_timeout(&e) {
                UpstreamFailure::ConnectTimeout
            } else if e.is_connect() && core::local_resource(&e) {
                UpstreamFailure::LocalResource
            } else if e.is_connect() {
                UpstreamFailure::Connect
            } else if let Some(why) = parse_failure(&e) {
                UpstreamFailure::Invalid(why)
            } else {
                UpstreamFailure::Reset
            }
        }
        Err(_) => UpstreamFailure::Timeout,
    };
    // The client's own fault is never blamed on the upstream: a body that
    // broke its framing, stalled or was abandoned explains the failure.
    let err = match watch.fault() {
        // Past `max_body_bytes`: the client's, whatever the upstream did.
        _ if over.load(Ordering::Relaxed) => ProxyError::BodyTooLarge,
        Some(BodyFault::Framing) => ProxyError::BadFraming,
        Some(BodyFault::Timeout) => ProxyError::RequestTimeout,
        Some(BodyFault::Gone) => {
            // Nothing is sent (the client may still be reading after a
            // half-close): logged 499, then hyper closes.
            let e = ProxyError::ClientGone;
            rec.status = e.status().as_u16();
            rec.error = Some(e.cause());
            core::finish(&state.log, rec, started.elapsed(), watch.bytes(), 0);
            return Err(ClientGone);
        }
        // Still waiting for the client's body when the upstream timed out.
        None if matches!(failure, UpstreamFailure::Timeout) && !watch.ended() => {
            ProxyError::RequestTimeout
        }
        None => core::upstream_error(&upstream, failure),
    };
    Ok(error_response(err, stamps.as_ref(), rec, pending, grpc))
}

/// `runtime.max_header_count` (hyper's HTTP/1 server enforces it too;
/// this catches HTTP/2 requests) and a declared body length over
/// `runtime.max_body_bytes`, refused before a byte of the body is read.
fn check_limits<B: http_body::Body>(req: &Request<B>, l: &RequestLimits) -> Result<(), ProxyError> {
    if req.headers().len() > l.max_headers {
        return Err(ProxyError::TooManyHeaders);
    }
    if l.max_body
        .is_some_and(|max| http_body::Body::size_hint(req.body()).lower() > max)
    {
        return Err(ProxyError::BodyTooLarge);
    }
    Ok(())
}

/// What hyper's client accepted but the lean path's parser refuses, so
/// both paths relay the same responses: a protocol switch nobody asked
/// for (the proxy never forwards Upgrade), a Content-Length that is not
/// one number, or one beside Transfer-Encoding.
fn check_response<B>(resp: &Response<B>) -> Result<(), h1::BadResponse> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(h1::BadResponse::Switch);
    }
    let h = resp.headers();
    let length = h1::response_length(
        h.get_all(header::CONTENT_LENGTH)
            .iter()
            .map(HeaderValue::as_bytes),
    )?;
    if length.is_some() && h.contains_key(header::TRANSFER_ENCODING) {
        return Err(h1::BadResponse::Ambiguous);
    }
    Ok(())
}

/// Points `req` at the lease's endpoint.
fn set_endpoint<B>(req: &mut Request<B>, lease: &Lease) {
    let mut uri = std::mem::take(req.uri_mut()).into_parts();
    uri.authority = Some(lease.upstream().authority_for(lease.endpoint()));
    *req.uri_mut() = Uri::from_parts(uri).expect("only the authority changed");
}

fn upstream_request<B>(
    req: Request<B>,
    lease: &Lease,
    stamps: Option<&Stamps>,
    request_id: &HeaderValue,
    conn: &Conn,
    watch: Arc<BodyWatch>,
) -> Result<Request<UpstreamBody>, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    // An HTTP/2 client names the host in :authority, not Host: the
    // upstream (HTTP/1.1) sees it as an HTTP/1 client's Host.
    if parts.version == http::Version::HTTP_2 && !parts.headers.contains_key(header::HOST) {
        if let Some(a) = uri.authority.as_ref() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    let up = lease.upstream();
    uri.scheme = Some(up.scheme.clone());
    uri.authority = Some(up.authority_for(lease.endpoint()));
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    parts.uri = Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("unparseable target"))?;
    parts.version = if up.h2() {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };

    let h = &mut parts.headers;
    // `te: trailers` is hop-by-hop, but an HTTP/2 upstream (a gRPC server)
    // is owed it when the client sent it: it says the client reads trailers.
    let te_trailers = up.h2()
        && h.get_all(header::TE).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
    // hyper sends a GET or HEAD body only with an explicit length or
    // encoding; a chunked one must stay chunked rather than vanish.
    let chunked = h.contains_key(header::TRANSFER_ENCODING);
    let ends = http_body::Body::is_end_stream(&body);
    core::rewrite_upstream_headers(h, &conn.peer, stamps, request_id);
    if up.h2() {
        // HTTP/2 names the host in :authority (from the URI), and frames
        // a body in DATA frames: no Host, no Transfer-Encoding.
        if te_trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    } else if up.endpoints().len() > 1 {
        // Every endpoint gets the upstream's one Host (hyper would write
        // the endpoint's own from the URI), as on the lean path.
        h.insert(header::HOST, up.host.clone());
    }
    if conn.tls {
        h.insert(core::X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    }
    if chunked && !ends && !up.h2() {
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    Ok(Request::from_parts(
        parts,
        UpstreamBody::new(body, watch, conn.limits.body_timeout),
    ))
}

/// The access log's `protocol`.
fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_2 => "h2",
        http::Version::HTTP_10 => "http/1.0",
        _ => "http/1.1",
    }
}

fn error_response(
    e: ProxyError,
    stamps: Option<&Stamps>,
    mut rec: AccessRecord,
    pending: impl FnOnce(AccessRecord) -> PendingLog,
    grpc: bool,
) -> Response<ResponseBody> {
    if grpc {
        return grpc_error_response(e, stamps, rec, pending);
    }
    let answer = core::ErrorAnswer::new(&e, &mut rec);
    let mut resp = Response::new(ResponseBody::full(answer.body));
    *resp.status_mut() = answer.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(s) = stamps {
        s.apply(h);
    }
    h.insert(core::REQUEST_ID, rec.request_id.clone());
    if answer.close {
        // hyper closes the connection after a response that says so.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.map(|b| b.with_log(pending(rec)))
}

/// A gRPC call's error answer ([`core::GrpcAnswer`]): 200, `grpc-status`
/// and `grpc-message` in the head, stamped, no body.
fn grpc_error_response(
    e: ProxyError,
    stamps: Option<&Stamps>,
    mut rec: AccessRecord,
    pending: impl FnOnce(AccessRecord) -> PendingLog,
) -> Response<ResponseBody> {
    let answer = core::GrpcAnswer::new(&e, &mut rec);
    let mut resp = Response::new(ResponseBody::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS, answer.status);
    h.insert(GRPC_MESSAGE, answer.message);
    if let Some(s) = stamps {
        s.apply(h);
    }
    h.insert(core::REQUEST_ID, rec.request_id.clone());
    resp.map(|b| b.with_log(pending(rec)))
}

const GRPC_STATUS: header::HeaderName = header::HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: header::HeaderName = header::HeaderName::from_static("grpc-message");

/// Why the TLS handshake with the upstream failed, if that is why the
/// request failed.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<TlsFailed>() {
            return Some(t.to_string());
        }
        // A TLS 1.3 upstream refuses a client certificate after the
        // handshake, with an alert the first read reports (when that
        // read's error reaches the request, as on HTTP/1.1).
        if let Some(r) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(format!("TLS with the upstream failed: {r}"));
        }
        cur = err.source();
    }
    None
}

/// Whether an upstream error was a timeout (a connect timeout surfaces as
/// an `io::ErrorKind::TimedOut` somewhere in the source chain).
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// What hyper could not parse in the upstream's response, if that is why
/// the request failed.
fn parse_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_too_large() {
                return Some(h.to_string());
            }
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests;
