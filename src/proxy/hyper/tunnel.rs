//! WebSocket upgrades on HTTP/1.1: the one kind of `Upgrade` cohort
//! passes through. The upgrade request is routed and assigned like any
//! other (the unit comes from its headers), forwarded with `Upgrade` and
//! `Connection: upgrade` kept, and the upstream's `101` goes back with the
//! stamps; then the bytes are tunnelled both ways
//! ([`tokio::io::copy_bidirectional`]) until either side closes, and the
//! request's one access-log line is written (status 101, `bytes_in` and
//! `bytes_out` the tunnelled bytes each way). An upstream that declines
//! the upgrade (any answer but 101) is relayed as an ordinary response.
//!
//! Only to plain `http://` HTTP/1.1 upstreams: a WebSocket routed to an
//! `https://` or `protocol: h2` upstream is served as a plain request (its
//! `Upgrade` dropped), so nothing goes unencrypted to a TLS port and no
//! HTTP/1.1 upgrade reaches an HTTP/2-only server.
//!
//! The lean path hands every request with `Upgrade` to hyper's front end,
//! so this is the only place a tunnel exists. Any other `Upgrade` (`h2c`,
//! say) is not tunnelled: the header is dropped and the request served
//! as a plain one ([`super::super::core`]). The upstream connection is a
//! fresh one, never pooled: after a 101 it belongs to the tunnel.
//!
//! A tunnel holds the listener's tunnel receiver: a drain (SIGTERM, or
//! the old process of a binary upgrade) waits for the connections first,
//! then releases the store (a tunnel never assigns), then waits for the
//! tunnels up to `runtime.shutdown_timeout` and cuts the rest.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use super::body::{PendingLog, ResponseBody};
use super::Conn;
use crate::error::ProxyError;
use crate::observe::access_log::AccessRecord;
use crate::proxy::core::{self, Stamps, UpstreamFailure};
use crate::proxy::upstream::{ConnectError, Lease};
use crate::state::State;

/// Whether `req` asks for a WebSocket: an HTTP/1.1 GET with
/// `Connection: upgrade` and `Upgrade: websocket` (RFC 6455 §4.1).
pub(crate) fn wants_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.method() == Method::GET
        && has_token(req.headers(), header::CONNECTION, b"upgrade")
        && has_token(req.headers(), header::UPGRADE, b"websocket")
}

fn has_token(h: &HeaderMap, name: header::HeaderName, token: &[u8]) -> bool {
    h.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// What a tunnel needs from the handler besides the request.
pub(crate) struct Opening<'a> {
    pub state: &'a Arc<State>,
    pub conn: &'a Conn,
    pub lease: Lease,
    pub stamps: Option<Stamps>,
    pub started: Instant,
}

/// Forwards the upgrade request and answers with the upstream's 101 (the
/// tunnel then runs in its own task) or its refusal; `Err` is a failure
/// to reach the upstream, for the handler's error answer (stamped).
pub(crate) async fn open<B>(
    o: Opening<'_>,
    mut req: Request<B>,
    mut rec: AccessRecord,
    pending: impl Fn(AccessRecord) -> PendingLog,
) -> Result<Response<ResponseBody>, (ProxyError, AccessRecord, Option<Stamps>)> {
    let Opening {
        state,
        conn,
        lease,
        stamps,
        started,
    } = o;
    let client_side = hyper::upgrade::on(&mut req);
    let asked = req.headers().get(header::UPGRADE).cloned();
    let (parts, _) = req.into_parts();
    let mut h = parts.headers;
    core::rewrite_upstream_headers(&mut h, &conn.peer, stamps.as_ref(), &rec.request_id);
    h.insert(header::HOST, lease.upstream().host.clone());
    if conn.tls {
        h.insert(core::X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    }
    keep_upgrade(&mut h, asked);
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut up_req = Request::new(Empty::<Bytes>::new());
    *up_req.uri_mut() = target
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    *up_req.headers_mut() = h;

    let upstream = lease.upstream().clone();
    let sent = Instant::now();
    let exchange = async {
        let tcp = match lease
            .endpoint()
            .connect(upstream.config.connect_timeout)
            .await
        {
            Ok(c) => c.stream,
            Err(ConnectError::Timeout) => return Err(UpstreamFailure::ConnectTimeout),
            Err(ConnectError::Io(e)) if core::local_resource(&e) => {
                return Err(UpstreamFailure::LocalResource)
            }
            Err(ConnectError::Io(_)) => {
                lease.report(true);
                return Err(UpstreamFailure::Connect);
            }
        };
        let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| UpstreamFailure::Reset)?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        send.send_request(up_req).await.map_err(|e| {
            if e.is_parse() {
                UpstreamFailure::Invalid(e.to_string())
            } else {
                UpstreamFailure::Reset
            }
        })
    };
    let result = match tokio::time::timeout(upstream.head_timeout(), exchange).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamFailure::Timeout),
    };
    rec.upstream_time = Some(sent.elapsed());
    rec.upstream = Some(lease.endpoint().address);
    let mut resp = match result {
        Ok(resp) => resp,
        Err(f) => return Err((core::upstream_error(&upstream, f), rec, stamps)),
    };
    lease.report(resp.status().is_server_error());
    rec.status = resp.status().as_u16();
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Declined: an ordinary response, relayed and logged as one.
        let (mut parts, body) = resp.into_parts();
        core::rewrite_response_headers(&mut parts.headers, stamps.as_ref(), &rec.request_id);
        let body = ResponseBody::upstream(body)
            .with_log(pending(rec))
            .with_lease(lease);
        return Ok(Response::from_parts(parts, body));
    }
    let upstream_side = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    let agreed = parts.headers.get(header::UPGRADE).cloned();
    core::rewrite_response_headers(&mut parts.headers, stamps.as_ref(), &rec.request_id);
    keep_upgrade(&mut parts.headers, agreed);

    let (log, mut stop) = (state.log.clone(), conn.tunnels.clone());
    tokio::spawn(async move {
        // Held for the tunnel's life: its endpoint counts it in flight,
        // and a drain waits for it.
        let _lease = lease;
        let (mut bytes_in, mut bytes_out) = (0, 0);
        if let (Ok(c), Ok(u)) = tokio::join!(client_side, upstream_side) {
            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut c, &mut u) => {
                    if let Ok((a, b)) = r {
                        (bytes_in, bytes_out) = (a, b);
                    }
                }
                // Cut at the drain's deadline: the listener then drops
                // the tunnels' sender.
                _ = stop.wait_for(|_| false) => {}
            }
        }
        core::finish(&log, rec, started.elapsed(), bytes_in, bytes_out);
    });
    let mut answer = Response::new(ResponseBody::full(Bytes::new()));
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *answer.headers_mut() = parts.headers;
    Ok(answer)
}

/// Puts back the hop-by-hop pair an upgrade needs on its next hop.
fn keep_upgrade(h: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    if let Some(u) = upgrade {
        h.insert(header::UPGRADE, u);
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}
