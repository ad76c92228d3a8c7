//! The data-plane core: everything a request's fate depends on, whichever
//! front end (the lean HTTP/1 path in [`super::lean`], hyper's in
//! [`super::hyper`]) read it. Both call these, so each rule has one
//! definition:
//!
//! - what a request must be to be served at all ([`check_request`]: no
//!   CONNECT, one valid Host, only the chunked coding);
//! - routing by path and the assignment call ([`route_request`]), filling
//!   the access record as it goes;
//! - the stamps, the request id ([`request_id`]) and the upstream request
//!   rewrite (header policy in [`super::h1::names`], applied to hyper's
//!   `HeaderMap` by [`rewrite_upstream_headers`] and to raw bytes by
//!   [`super::h1::write_upstream_head`]);
//! - how an upstream failure becomes an error and a status
//!   ([`upstream_error`]);
//! - the proxy's own error answers ([`ErrorAnswer`]; for a gRPC call,
//!   [`GrpcAnswer`]) and finishing the access record ([`finish`]).
//!
//! A request is never retried on another variant's upstream: serving a
//! unit from the wrong model would contaminate its cohort, so an upstream
//! fault is answered 502/504, stamped with the variant that failed, and a
//! variant whose upstream has no endpoint up is answered 503
//! `upstream_unavailable` — unless the variant names a `fallback`
//! upstream, which then serves it, logged `fallback: true`
//! ([`pick_endpoint`]). Within one upstream, a request that could not
//! connect is retried on another endpoint (the front ends, bounded by
//! [`Upstream::max_retries`]); nothing else is retried there. A
//! client's own fault (bad framing, a slow or abandoned body) is answered
//! 4xx and logged as the client's, never as an `upstream_*` error.
//!
//! Only WebSocket upgrades are tunnelled (hyper's front end,
//! `proxy::hyper::tunnel`: routed, assigned and stamped like any request,
//! then the bytes relayed both ways). Any other `Upgrade` (`h2c`, say) is
//! hop-by-hop and dropped, the request served as a plain one (RFC 9110
//! §7.8 lets a server ignore it) — the client gets the upstream's ordinary
//! answer, never a 101 and a dead connection — and an upstream's 101 to a
//! request that cannot have asked for one is refused (502
//! `upstream_invalid`) on both paths.
//!
//! Paths are routed as they arrive, byte for byte: no percent-decoding,
//! no dot-segment or slash folding (`/%70redict`, `/predict/` and
//! `//predict` do not match a `/predict` route). Normalising would make
//! the proxy route a path differently from how the upstream reads it; an
//! unmatched path falls to `default_upstream` or 404, never into another
//! experiment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;
use sha2::Sha256;

use super::h1::names::{self, Forward};
use super::h1::{self, StampBytes};
use super::upstream::{Lease, Upstream};
use crate::assign::epoch::Epoch;
use crate::assign::store::StoreError;
use crate::assign::{valid_unit, Reason, Served};
use crate::config::{LogUnit, MissingUnitPolicy};
use crate::error::ProxyError;
use crate::observe::access_log::{AccessLog, AccessRecord, LoggedUnit};
use crate::snapshot::{ExperimentRoute, Snapshot, Target};
use crate::state::State;

pub(crate) const STAMP_EXPERIMENT: HeaderName = HeaderName::from_static("x-cohort-experiment");
pub(crate) const STAMP_VARIANT: HeaderName = HeaderName::from_static("x-cohort-variant");
pub(crate) const STAMP_EPOCH: HeaderName = HeaderName::from_static("x-cohort-epoch");
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const NO_VARIANT: HeaderValue = HeaderValue::from_static("none");
/// How often a new unit is re-assigned when a reload overtook it (1 ms apart).
const STALE_RETRIES: u32 = 100;
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What the response (and the upstream request) is stamped with.
pub(crate) struct Stamps {
    pub experiment: HeaderValue,
    pub variant: HeaderValue,
    pub epoch: HeaderValue,
}

impl Stamps {
    pub(crate) fn apply(&self, h: &mut HeaderMap) {
        h.insert(STAMP_EXPERIMENT, self.experiment.clone());
        h.insert(STAMP_VARIANT, self.variant.clone());
        h.insert(STAMP_EPOCH, self.epoch.clone());
    }

    /// The values as the byte writers take them.
    pub(crate) fn bytes(&self) -> StampBytes<'_> {
        [
            self.experiment.as_bytes(),
            self.variant.as_bytes(),
            self.epoch.as_bytes(),
        ]
    }
}

/// Facts about the client connection, computed once per connection.
pub(crate) struct Peer {
    /// The client's IP, ready to append to `x-forwarded-for`.
    pub ip: HeaderValue,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr) -> Peer {
        Peer {
            ip: HeaderValue::from_str(&addr.ip().to_string()).expect("an IP is a header value"),
        }
    }
}

/// Request headers as either front end holds them: hyper's `HeaderMap`,
/// or the lean HTTP/1 path's parsed head.
pub(crate) trait HeaderLookup {
    /// Every value of `name`, in order.
    fn each<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]>;

    /// The first value of `name`.
    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        self.each(name).next()
    }
}

impl HeaderLookup for HeaderMap {
    fn each<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

impl HeaderLookup for h1::Request<'_> {
    fn each<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.values(name.as_str().as_bytes())
    }
}

/// Refuses what no front end may serve, by the same rules on both: a
/// CONNECT (the proxy does not tunnel: 405), an HTTP/1.1 request without
/// exactly one valid Host (400, RFC 9112 §3.2), and a transfer coding
/// other than chunked (501, RFC 9112 §6.1). The lean path's parser
/// applies the Host rule itself and hands the rest to hyper's path.
pub(crate) fn check_request(
    method: &Method,
    http11: bool,
    headers: &impl HeaderLookup,
) -> Result<(), ProxyError> {
    if method == Method::CONNECT {
        return Err(ProxyError::Connect);
    }
    let mut hosts = headers.each(&header::HOST);
    match (hosts.next(), hosts.next()) {
        (Some(h), None) if names::valid_host(h) => {}
        (None, _) if !http11 => {}
        _ => return Err(ProxyError::BadHost),
    }
    if headers
        .each(&header::TRANSFER_ENCODING)
        .any(|v| !names::codings_supported(v))
    {
        return Err(ProxyError::UnsupportedCoding);
    }
    Ok(())
}

/// The client's `x-request-id` when it is usable, else a fresh one.
pub(crate) fn request_id(state: &State, headers: &impl HeaderLookup) -> HeaderValue {
    headers
        .header(&REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .and_then(|v| HeaderValue::from_bytes(v).ok())
        .unwrap_or_else(|| state.next_request_id())
}

/// Where a request goes: the upstream endpoint it holds, and the stamps on
/// an experiment route.
pub(crate) struct Routed {
    pub lease: Lease,
    pub stamps: Option<Stamps>,
}

/// A request the proxy answers itself, still stamped on an experiment route.
pub(crate) struct Refused {
    pub error: ProxyError,
    pub stamps: Option<Stamps>,
}

impl From<ProxyError> for Refused {
    fn from(error: ProxyError) -> Refused {
        Refused {
            error,
            stamps: None,
        }
    }
}

/// Routes a request by path and assigns its unit, filling in `rec`.
pub(crate) async fn route_request(
    state: &State,
    snap: Arc<Snapshot>,
    path: &str,
    headers: &impl HeaderLookup,
    rec: &mut AccessRecord,
) -> Result<Routed, Refused> {
    let routed = match snap.route(path) {
        Target::NotFound => return Err(ProxyError::NoRoute(path.to_string()).into()),
        Target::Default(up) => Routed {
            lease: pick_endpoint(up, None, rec)?,
            stamps: None,
        },
        Target::Experiment(first) => {
            // A reload can land between reading the snapshot and storing a
            // new unit; the store then refuses the stale epoch, and the unit
            // is assigned again under the snapshot that replaced it.
            let name = first.name;
            let mut idx = snap
                .experiments
                .iter()
                .position(|e| e.name == name)
                .expect("routed here");
            let mut cur = snap;
            let mut tries = 0;
            let outcome = loop {
                let x = &cur.experiments[idx];
                rec.experiment = Some(x.name);
                rec.current_epoch = x.assigner.epoch.0;
                rec.config_version = cur.version;
                match assign(state, x, &cur.log_unit, headers, rec).await {
                    Err(ProxyError::StaleSnapshot) if tries < STALE_RETRIES => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let fresh = state.snapshot();
                        match fresh.experiments.iter().position(|e| e.name == name) {
                            Some(j) => (cur, idx) = (fresh, j),
                            None => {
                                break Err(ProxyError::Store(format!(
                                    "experiment {name} was removed by a reload"
                                )))
                            }
                        }
                    }
                    other => break other,
                }
            };
            let x = &cur.experiments[idx];
            match outcome {
                Ok(served) => {
                    let v = &x.variants[served.variant];
                    rec.variant = Some(v.name);
                    rec.epoch = served.epoch.0;
                    rec.reason = Some(served.reason.as_str());
                    rec.first_exposure = served.first_exposure;
                    // The log carries each epoch's weights (for SRM tests
                    // on the log alone, `cohort report`): on first exposures.
                    rec.share = served
                        .first_exposure
                        .then(|| x.assigner.share(served.variant));
                    rec.in_experiment = served.in_experiment;
                    rec.forced = served.reason == Reason::Forced;
                    rec.paused = served.reason == Reason::Paused;
                    rec.store_degraded = served.store_degraded;
                    rec.bucket = served.bucket.map(|b| b.0);
                    let stamps = Stamps {
                        experiment: x.name_header.clone(),
                        variant: v.header.clone(),
                        epoch: x.epoch_header(served.epoch),
                    };
                    match pick_endpoint(&v.upstream, v.fallback.as_ref(), rec) {
                        Ok(lease) => Routed {
                            lease,
                            stamps: Some(stamps),
                        },
                        Err(error) => {
                            return Err(Refused {
                                error,
                                stamps: Some(stamps),
                            })
                        }
                    }
                }
                Err(error) => {
                    rec.variant = Some("none");
                    return Err(Refused {
                        error,
                        stamps: Some(Stamps {
                            experiment: x.name_header.clone(),
                            variant: NO_VARIANT,
                            epoch: x.epoch_header(Epoch::UNASSIGNED),
                        }),
                    });
                }
            }
        }
    };
    Ok(routed)
}

/// An endpoint of `upstream`, else of `fallback` (logged as such), else
/// 503 `upstream_unavailable`; `rec` names the endpoint picked.
pub(crate) fn pick_endpoint(
    upstream: &Arc<Upstream>,
    fallback: Option<&Arc<Upstream>>,
    rec: &mut AccessRecord,
) -> Result<Lease, ProxyError> {
    let lease = match (upstream.pick(0), fallback) {
        (Some(lease), _) => lease,
        (None, Some(f)) => {
            let lease = f
                .pick(0)
                .ok_or_else(|| ProxyError::UpstreamUnavailable(upstream.config.name.clone()))?;
            rec.fallback = true;
            lease
        }
        (None, None) => {
            return Err(ProxyError::UpstreamUnavailable(
                upstream.config.name.clone(),
            ))
        }
    };
    rec.upstream = Some(lease.endpoint().address);
    Ok(lease)
}

/// Assigns the request's unit, or says why it cannot be served. A unit
/// header sent twice is refused (400): assigning on either value would
/// let the client pick which of two cohorts it is counted in.
async fn assign(
    state: &State,
    x: &ExperimentRoute,
    log_unit: &LogUnit,
    headers: &impl HeaderLookup,
    rec: &mut AccessRecord,
) -> Result<Served, ProxyError> {
    let mut values = headers.each(&x.unit_header);
    let first = values.next();
    if first.is_some() && values.next().is_some() {
        return Err(ProxyError::DuplicateUnit(x.unit_header.to_string()));
    }
    let Some(unit) = first.filter(|u| valid_unit(u)) else {
        rec.reason = Some(Reason::NoUnit.as_str());
        return match x.on_missing_unit {
            MissingUnitPolicy::Control => Ok(x.assigner.unassigned()),
            MissingUnitPolicy::Reject => Err(ProxyError::MissingUnit(x.unit_header.to_string())),
        };
    };
    rec.unit = Some(logged_unit(log_unit, unit));
    x.assigner
        .assign(&state.store, unit)
        .await
        .map_err(|e| match e {
            StoreError::Stale { .. } => ProxyError::StaleSnapshot,
            e => {
                tracing::error!(experiment = %x.name, error = %e, "cannot store a new assignment");
                ProxyError::Store(e.to_string())
            }
        })
}

/// `unit` passed [`valid_unit`], which admits only bytes a header value may
/// hold, so the raw form is a copy that cannot fail.
fn logged_unit(how: &LogUnit, unit: &[u8]) -> LoggedUnit {
    match how {
        LogUnit::Raw => {
            LoggedUnit::Raw(HeaderValue::from_bytes(unit).expect("a valid unit is a header value"))
        }
        LogUnit::Hashed { key, .. } => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(unit);
            let tag = mac.finalize().into_bytes();
            LoggedUnit::Hashed(tag[..16].iter().map(|b| format!("{b:02x}")).collect())
        }
    }
}

/// How an exchange with an upstream failed, as either front end saw it.
#[derive(Debug)]
pub(crate) enum UpstreamFailure {
    /// No connection within `connect_timeout`.
    ConnectTimeout,
    /// Refused or unreachable.
    Connect,
    /// The TLS handshake with an `https://` upstream failed, and why.
    Tls(String),
    /// No (whole) response head within `timeout` (or `total_timeout`).
    Timeout,
    /// The response body was not over within `total_timeout`.
    TotalTimeout,
    /// Closed or reset before its response head was whole.
    Reset,
    /// A response the proxy cannot relay, and why.
    Invalid(String),
    /// Failed after the response head was relayed.
    Body,
    /// The proxy itself ran out of file descriptors or memory while
    /// connecting ([`local_resource`]): not the upstream's fault.
    LocalResource,
}

/// When a drain starts (SIGTERM, or a binary upgrade's old process), how
/// long a connection that has not sent a request yet may still send its
/// first: it was accepted for one, which may be on its way, and closing it
/// unanswered would fail that request. Idle keep-alive connections close
/// at once. Both front ends use it.
pub(crate) const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Whether a connect failure was the proxy's own lack of a resource
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM) rather than anything the upstream
/// did: such a failure is answered 503 `local_resource`, never counted
/// against the endpoint (no passive ejection, no retry on another one)
/// nor logged as the variant's `upstream_connect`.
pub(crate) fn local_resource(e: &(dyn std::error::Error + 'static)) -> bool {
    use rustix::io::Errno;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(code) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
                .iter()
                .any(|e| e.raw_os_error() == code);
        }
        cur = err.source();
    }
    false
}

/// The one mapping from an upstream failure to the error answered and
/// logged (status by [`ProxyError::status`]).
pub(crate) fn upstream_error(upstream: &Upstream, f: UpstreamFailure) -> ProxyError {
    let name = upstream.config.name.clone();
    match f {
        UpstreamFailure::ConnectTimeout => {
            ProxyError::UpstreamTimeout(name, upstream.config.connect_timeout.as_millis())
        }
        UpstreamFailure::Connect => ProxyError::UpstreamConnect(name),
        UpstreamFailure::Tls(why) => ProxyError::UpstreamTls(name, why),
        UpstreamFailure::Timeout => {
            ProxyError::UpstreamTimeout(name, upstream.head_timeout().as_millis())
        }
        UpstreamFailure::TotalTimeout => ProxyError::UpstreamTimeout(
            name,
            upstream
                .config
                .total_timeout
                .unwrap_or_default()
                .as_millis(),
        ),
        UpstreamFailure::Reset => ProxyError::UpstreamReset(name),
        UpstreamFailure::Invalid(why) => ProxyError::UpstreamInvalid(name, why),
        UpstreamFailure::Body => ProxyError::UpstreamBody(name),
        UpstreamFailure::LocalResource => ProxyError::LocalResource(name),
    }
}

/// Rewrites a request's headers for the upstream by the same policy as
/// [`h1::write_upstream_head`] ([`names::forward_rule`]): names listed in
/// Connection, hop-by-hop headers, the proxy's own and their underscore
/// look-alikes dropped; the client's Host goes on as `x-forwarded-host`;
/// `x-forwarded-for` gains the client's IP; `x-forwarded-proto`, the
/// stamps and the request id are set. (`host` itself comes from the
/// upstream URI hyper's client writes.)
pub(crate) fn rewrite_upstream_headers(
    h: &mut HeaderMap,
    peer: &Peer,
    stamps: Option<&Stamps>,
    request_id: &HeaderValue,
) {
    let host = h.get(header::HOST).cloned();
    let forwarded = h.get(X_FORWARDED_FOR).map(|prev| {
        let mut v = Vec::with_capacity(prev.len() + 2 + peer.ip.len());
        v.extend_from_slice(prev.as_bytes());
        v.extend_from_slice(b", ");
        v.extend_from_slice(peer.ip.as_bytes());
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| peer.ip.clone())
    });
    strip_listed(h);
    retain(h, |n| {
        names::forward_rule(n) == Forward::Keep || n == b"content-length"
    });
    if let Some(host) = host {
        h.insert(X_FORWARDED_HOST, host);
    }
    h.insert(
        X_FORWARDED_FOR,
        forwarded.unwrap_or_else(|| peer.ip.clone()),
    );
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(s) = stamps {
        s.apply(h);
    }
    h.insert(REQUEST_ID, request_id.clone());
}

/// Rewrites an upstream's response headers for the client, as
/// [`h1::write_client_head`] does: names listed in Connection, hop-by-hop
/// headers and the upstream's stamps or request id dropped; the proxy's
/// stamps and request id set.
pub(crate) fn rewrite_response_headers(
    h: &mut HeaderMap,
    stamps: Option<&Stamps>,
    request_id: &HeaderValue,
) {
    strip_listed(h);
    retain(h, |n| {
        let kind = names::classify(n);
        !kind.hop_by_hop() && kind != names::Name::Stamp && kind != names::Name::XRequestId
    });
    if let Some(s) = stamps {
        s.apply(h);
    }
    h.insert(REQUEST_ID, request_id.clone());
}

/// Filters an upstream's trailers (an HTTP/2 upstream's, a gRPC call's
/// `grpc-status`) by the response-head policy: hop-by-hop names and the
/// upstream's own stamps or request id are dropped, so an upstream cannot
/// slip an `x-cohort-*` field in after the body.
pub(crate) fn rewrite_trailers(h: &mut HeaderMap) {
    retain(h, |n| {
        let kind = names::classify(n);
        !kind.hop_by_hop() && kind != names::Name::Stamp && kind != names::Name::XRequestId
    });
}

/// Drops the headers a Connection header names (they concern one hop).
fn strip_listed(h: &mut HeaderMap) {
    if !h.contains_key(header::CONNECTION) {
        return;
    }
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
}

/// Keeps only the headers `keep` accepts. One pass over the names first:
/// most messages carry none to drop, and removing by name costs a hash.
fn retain(h: &mut HeaderMap, keep: impl Fn(&[u8]) -> bool) {
    if h.keys().all(|k| keep(k.as_str().as_bytes())) {
        return;
    }
    let names: Vec<HeaderName> = h
        .keys()
        .filter(|k| !keep(k.as_str().as_bytes()))
        .cloned()
        .collect();
    for n in names {
        h.remove(n);
    }
}

/// One of the proxy's own answers (an error, as JSON): what either front
/// end writes, its way.
pub(crate) struct ErrorAnswer {
    pub status: http::StatusCode,
    pub body: String,
    /// The connection closes after it.
    pub close: bool,
}

impl ErrorAnswer {
    /// Fills `rec` with `e`'s status and cause, and makes the answer.
    pub(crate) fn new(e: &ProxyError, rec: &mut AccessRecord) -> ErrorAnswer {
        let status = e.status();
        rec.status = status.as_u16();
        rec.error = Some(e.cause());
        ErrorAnswer {
            status,
            body: e.body(&String::from_utf8_lossy(rec.request_id.as_bytes())),
            close: e.closes(),
        }
    }
}

/// Whether a request is a gRPC call: its content-type is
/// `application/grpc`, alone or with a `+format` or `;` parameters.
pub(crate) fn is_grpc(headers: &impl HeaderLookup) -> bool {
    headers.header(&header::CONTENT_TYPE).is_some_and(|v| {
        v.strip_prefix(b"application/grpc")
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
    })
}

/// The proxy's own answer to a gRPC call it failed: gRPC clients read a
/// call's outcome from `grpc-status`, not from the HTTP status, so the
/// answer is HTTP 200 with `grpc-status` and `grpc-message` in the head
/// and no body (a "Trailers-Only" response), stamped like any answer.
/// The access record keeps the failure's HTTP status and cause (502
/// `upstream_connect`, 504 `upstream_timeout`...), as the same failure of
/// an HTTP request is logged, so error rates compare across protocols.
pub(crate) struct GrpcAnswer {
    /// `grpc-status`.
    pub status: HeaderValue,
    /// `grpc-message`: the error's text, percent-encoded as gRPC asks.
    pub message: HeaderValue,
}

impl GrpcAnswer {
    /// Fills `rec` with `e`'s status and cause, and makes the answer.
    pub(crate) fn new(e: &ProxyError, rec: &mut AccessRecord) -> GrpcAnswer {
        rec.status = e.status().as_u16();
        rec.error = Some(e.cause());
        GrpcAnswer::of(e)
    }

    /// The answer to `e` alone: what ends a relayed call the upstream
    /// failed after its response head (as trailers), whose access record
    /// already has its status.
    pub(crate) fn of(e: &ProxyError) -> GrpcAnswer {
        let mut message = String::new();
        for b in e.to_string().bytes() {
            if (b' '..=b'~').contains(&b) && b != b'%' {
                message.push(char::from(b));
            } else {
                message.push_str(&format!("%{b:02X}"));
            }
        }
        GrpcAnswer {
            status: HeaderValue::from(u16::from(grpc_code(e.cause()))),
            message: HeaderValue::from_str(&message).expect("printable ASCII"),
        }
    }
}

/// The gRPC status code of a call the proxy failed (the codes of
/// grpc/doc/statuscodes.md): a deadline the proxy ran out of is
/// DEADLINE_EXCEEDED (4); an upstream that could not be reached, reset
/// the call or has no endpoint up, a store that cannot take the new unit,
/// and the proxy's own lack of descriptors or memory (`local_resource`,
/// passing), UNAVAILABLE (14), which gRPC clients may retry; a request
/// over the head or body limits RESOURCE_EXHAUSTED (8); the client's own
/// faults INVALID_ARGUMENT (3), no route UNIMPLEMENTED (12), an answer
/// the proxy cannot relay or a request it cannot read INTERNAL (13). No
/// catch-all: a new cause must be given its code here.
pub(crate) fn grpc_code(cause: crate::error::Cause) -> u8 {
    use crate::error::Cause;
    match cause {
        Cause::UpstreamTimeout | Cause::RequestTimeout => 4,
        Cause::UpstreamConnect
        | Cause::UpstreamTls
        | Cause::UpstreamReset
        | Cause::UpstreamBody
        | Cause::UpstreamUnavailable
        | Cause::StoreUnavailable
        | Cause::ReloadInProgress
        | Cause::LocalResource => 14,
        Cause::HeadTooLarge | Cause::BodyTooLarge => 8,
        Cause::NoRoute => 12,
        Cause::MissingUnit | Cause::DuplicateUnit => 3,
        Cause::BadRequest
        | Cause::BadFraming
        | Cause::BadHost
        | Cause::MethodNotAllowed
        | Cause::UnsupportedCoding
        | Cause::UriTooLong
        | Cause::ClientGone
        | Cause::UpstreamInvalid => 13,
    }
}

/// Completes `rec` with the final sizes and duration, counts it in the
/// metrics and logs it: the one way a request's access-log line is written.
pub(crate) fn finish(
    log: &AccessLog,
    mut rec: AccessRecord,
    took: Duration,
    bytes_in: u64,
    bytes_out: u64,
) {
    rec.bytes_in = bytes_in;
    rec.bytes_out = bytes_out;
    rec.total_time = took;
    log.metrics().count(&rec);
    log.record(&rec);
}

/// Logs an answer the HTTP/1 layer made before a request head could be
/// read whole (400, 408, 431...): no method, path or routing to tell.
pub(crate) fn log_unparsed(state: &State, e: &ProxyError) {
    let mut rec = AccessRecord::unparsed(
        std::time::SystemTime::now(),
        state.next_request_id(),
        state.snapshot().version,
    );
    rec.status = e.status().as_u16();
    rec.error = Some(e.cause());
    state.log.metrics().count(&rec);
    state.log.record(&rec);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_no_front_end_may_serve_are_refused_by_one_rule() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (n, v) in pairs {
                m.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        let cause = |m: &Method, v11, pairs: &[(&str, &str)]| {
            check_request(m, v11, &h(pairs))
                .err()
                .map(|e| e.cause().as_str())
        };
        assert_eq!(cause(&Method::GET, true, &[("host", "a")]), None);
        assert_eq!(cause(&Method::GET, false, &[]), None);
        assert_eq!(cause(&Method::GET, true, &[]), Some("bad_host"));
        let two = [("host", "a"), ("host", "b")];
        assert_eq!(cause(&Method::GET, true, &two), Some("bad_host"));
        assert_eq!(
            cause(&Method::GET, true, &[("host", "a b/c")]),
            Some("bad_host")
        );
        assert_eq!(
            cause(&Method::CONNECT, true, &[("host", "a:1")]),
            Some("method_not_allowed")
        );
        let te = [("host", "a"), ("transfer-encoding", "gzip, chunked")];
        assert_eq!(
            cause(&Method::POST, true, &te),
            Some("unsupported_transfer_coding")
        );
    }

    #[test]
    fn grpc_calls_are_told_by_content_type_and_failures_get_grpc_codes() {
        let ct = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            m
        };
        for v in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;x=1",
        ] {
            assert!(is_grpc(&ct(v)), "{v}");
        }
        for v in [
            "application/grpc-web",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(&ct(v)), "{v}");
        }
        assert!(!is_grpc(&HeaderMap::new()));

        let answer = |e: ProxyError| {
            let mut rec = AccessRecord::new(
                std::time::SystemTime::now(),
                HeaderValue::from_static("rid"),
                Method::POST,
                http::Uri::from_static("/x"),
                "v",
            );
            let a = GrpcAnswer::new(&e, &mut rec);
            (
                a.status.to_str().unwrap().to_string(),
                a.message.to_str().unwrap().to_string(),
                rec.status,
                rec.error.map(|c| c.as_str()),
            )
        };
        let (code, _, status, cause) = answer(ProxyError::UpstreamTimeout("m".into(), 5));
        assert_eq!(
            (code.as_str(), status, cause),
            ("4", 504, Some("upstream_timeout"))
        );
        let (code, _, status, cause) = answer(ProxyError::UpstreamConnect("m".into()));
        assert_eq!(
            (code.as_str(), status, cause),
            ("14", 502, Some("upstream_connect"))
        );
        let (code, ..) = answer(ProxyError::UpstreamUnavailable("m".into()));
        assert_eq!(code, "14");
        let (code, ..) = answer(ProxyError::NoRoute("/x".into()));
        assert_eq!(code, "12");
        // The rest of the table, by the error the proxy answers.
        for (e, want) in [
            (ProxyError::LocalResource("m".into()), "14"),
            (ProxyError::UpstreamReset("m".into()), "14"),
            (ProxyError::UpstreamBody("m".into()), "14"),
            (ProxyError::BodyTooLarge, "8"),
            (ProxyError::HeadTooLarge, "8"),
            (ProxyError::TooManyHeaders, "8"),
            (ProxyError::RequestTimeout, "4"),
            (ProxyError::MissingUnit("x-user-id".into()), "3"),
            (ProxyError::DuplicateUnit("x-user-id".into()), "3"),
            (ProxyError::UpstreamInvalid("m".into(), "bad".into()), "13"),
            (ProxyError::BadFraming, "13"),
        ] {
            let what = e.to_string();
            assert_eq!(answer(e).0, want, "{what}");
        }
        // grpc-message is percent-encoded: '%' and non-ASCII bytes.
        let (_, message, ..) = answer(ProxyError::UpstreamTls("m".into(), "50% é".into()));
        assert_eq!(message, "upstream m: 50%25 %C3%A9");
    }

    #[test]
    fn both_rewrites_apply_the_same_header_policy() {
        let mut m = HeaderMap::new();
        for (n, v) in [
            ("host", "front"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "5"),
            ("x-cohort-variant", "old"),
            ("transfer_encoding", "chunked"),
            ("x_user_id", "u1"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-request-id", "theirs"),
            ("content-length", "2"),
        ] {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        let peer = Peer::new("10.0.0.9:1".parse().unwrap());
        rewrite_upstream_headers(&mut m, &peer, None, &HeaderValue::from_static("rid"));
        let mut got: Vec<String> = m
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "content-length: 2",
                "x-forwarded-for: 1.1.1.1, 10.0.0.9",
                "x-forwarded-host: front",
                "x-forwarded-proto: http",
                "x-request-id: rid",
                "x_user_id: u1",
            ]
        );
    }
}
