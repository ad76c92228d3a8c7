//! The request handler: route, assign, forward to the variant's upstream,
//! stamp, and leave one access-log record.
//!
//! A request is never retried on another variant's upstream: serving a unit
//! from the wrong model would contaminate its cohort, so an upstream fault
//! is answered 502/504, stamped with the variant that failed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use sha2::Sha256;

use super::body::{CancelLog, PendingLog, ResponseBody, UpstreamBody};
use super::upstream::Upstream;
use crate::assign::epoch::Epoch;
use crate::assign::store::StoreError;
use crate::assign::{valid_unit, Reason, Served};
use crate::config::{LogUnit, MissingUnitPolicy};
use crate::error::ProxyError;
use crate::observe::access_log::{AccessRecord, LoggedUnit};
use crate::snapshot::{ExperimentRoute, Snapshot, Target};
use crate::state::State;

pub const STAMP_EXPERIMENT: HeaderName = HeaderName::from_static("x-cohort-experiment");
pub const STAMP_VARIANT: HeaderName = HeaderName::from_static("x-cohort-variant");
pub const STAMP_EPOCH: HeaderName = HeaderName::from_static("x-cohort-epoch");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const STAMP_PREFIX: &str = "x-cohort-";
const NO_VARIANT: HeaderValue = HeaderValue::from_static("none");
/// How often a new unit is re-assigned when a reload overtook it (1 ms apart).
const STALE_RETRIES: u32 = 100;
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What the response (and the upstream request) is stamped with.
pub struct Stamps {
    pub experiment: HeaderValue,
    pub variant: HeaderValue,
    pub epoch: HeaderValue,
}

impl Stamps {
    fn apply(&self, h: &mut HeaderMap) {
        h.insert(STAMP_EXPERIMENT, self.experiment.clone());
        h.insert(STAMP_VARIANT, self.variant.clone());
        h.insert(STAMP_EPOCH, self.epoch.clone());
    }
}

/// Facts about the client connection, computed once per connection.
pub struct Peer {
    /// The client's IP, ready to append to `x-forwarded-for`.
    pub ip: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        Peer {
            ip: HeaderValue::from_str(&addr.ip().to_string()).expect("an IP is a header value"),
        }
    }
}

pub async fn handle(
    state: Arc<State>,
    peer: Arc<Peer>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let snap = state.snapshot();
    let mut rec = AccessRecord::new(
        SystemTime::now(),
        request_id(&state, req.headers()),
        req.method().clone(),
        req.uri().clone(),
        snap.version.clone(),
    );
    let bytes_in = Arc::new(AtomicU64::new(0));
    let pending = |rec: AccessRecord| PendingLog {
        log: state.log.clone(),
        record: rec,
        started,
        bytes_in: bytes_in.clone(),
    };

    let Routed { upstream, stamps } =
        match route_request(&state, snap, req.uri().path(), req.headers(), &mut rec).await {
            Ok(r) => r,
            Err(Refused { error, stamps }) => {
                return Ok(error_response(error, stamps.as_ref(), rec, pending))
            }
        };
    let upstream_req = match upstream_request(
        req,
        &upstream,
        stamps.as_ref(),
        &rec.request_id,
        &peer,
        bytes_in.clone(),
    ) {
        Ok(r) => r,
        Err(e) => return Ok(error_response(e, stamps.as_ref(), rec, pending)),
    };
    let sent = Instant::now();
    let cancelled = CancelLog::new(pending(rec.clone()));
    let result = tokio::time::timeout(
        upstream.config.timeout,
        upstream.client.request(upstream_req),
    )
    .await;
    cancelled.disarm();
    rec.upstream_time = Some(sent.elapsed());
    let resp = match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            let name = upstream.config.name.clone();
            let err = if is_timeout(&e) {
                ProxyError::UpstreamTimeout(name, upstream.config.connect_timeout.as_millis())
            } else if e.is_connect() {
                ProxyError::UpstreamConnect(name)
            } else if let Some(why) = parse_failure(&e) {
                ProxyError::UpstreamInvalid(name, why)
            } else {
                ProxyError::UpstreamReset(name)
            };
            tracing::debug!(error = %e, "upstream request failed");
            return Ok(error_response(err, stamps.as_ref(), rec, pending));
        }
        Err(_) => {
            let err = ProxyError::UpstreamTimeout(
                upstream.config.name.clone(),
                upstream.config.timeout.as_millis(),
            );
            return Ok(error_response(err, stamps.as_ref(), rec, pending));
        }
    };

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    strip_stamps(&mut parts.headers);
    if let Some(s) = &stamps {
        s.apply(&mut parts.headers);
    }
    parts.headers.insert(REQUEST_ID, rec.request_id.clone());
    rec.status = parts.status.as_u16();
    let body = ResponseBody::upstream(body).with_log(pending(rec));
    Ok(Response::from_parts(parts, body))
}

/// Request headers as either data path holds them: hyper's `HeaderMap`, or
/// the lean HTTP/1 path's parsed head.
pub trait HeaderLookup {
    fn header(&self, name: &HeaderName) -> Option<&[u8]>;
}

impl HeaderLookup for HeaderMap {
    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }
}

/// The client's `x-request-id` when it is usable, else a fresh one.
pub fn request_id(state: &State, headers: &impl HeaderLookup) -> HeaderValue {
    headers
        .header(&REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .and_then(|v| HeaderValue::from_bytes(v).ok())
        .unwrap_or_else(|| state.next_request_id())
}

/// Where a request goes: the upstream, and the stamps on an experiment route.
pub struct Routed {
    pub upstream: Arc<Upstream>,
    pub stamps: Option<Stamps>,
}

/// A request the proxy answers itself, still stamped on an experiment route.
pub struct Refused {
    pub error: ProxyError,
    pub stamps: Option<Stamps>,
}

/// Routes a request by path and assigns its unit, filling in `rec`. Both
/// data paths call this, so routing and assignment have one definition.
pub async fn route_request(
    state: &State,
    snap: Arc<Snapshot>,
    path: &str,
    headers: &impl HeaderLookup,
    rec: &mut AccessRecord,
) -> Result<Routed, Refused> {
    let routed = match snap.route(path) {
        Target::NotFound => {
            return Err(Refused {
                error: ProxyError::NoRoute(path.to_string()),
                stamps: None,
            })
        }
        Target::Default(up) => Routed {
            upstream: up.clone(),
            stamps: None,
        },
        Target::Experiment(first) => {
            // A reload can land between reading the snapshot and storing a
            // new unit; the store then refuses the stale epoch, and the unit
            // is assigned again under the snapshot that replaced it.
            let name = first.name.clone();
            let mut idx = snap
                .experiments
                .iter()
                .position(|e| e.name == name)
                .expect("routed here");
            let mut cur = snap;
            let mut tries = 0;
            let outcome = loop {
                let x = &cur.experiments[idx];
                rec.experiment = Some(x.name.clone());
                rec.current_epoch = x.assigner.epoch.0;
                rec.config_version = cur.version.clone();
                match assign(state, x, &cur.log_unit, headers, rec).await {
                    Err(ProxyError::StaleSnapshot) if tries < STALE_RETRIES => {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
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
                    rec.variant = Some(v.name.clone());
                    rec.epoch = served.epoch.0;
                    rec.reason = Some(served.reason.as_str());
                    rec.first_exposure = served.first_exposure;
                    rec.in_experiment = served.in_experiment;
                    rec.forced = served.reason == Reason::Forced;
                    rec.paused = served.reason == Reason::Paused;
                    rec.bucket = served.bucket.map(|b| b.0);
                    Routed {
                        upstream: v.upstream.clone(),
                        stamps: Some(Stamps {
                            experiment: x.name_header.clone(),
                            variant: v.header.clone(),
                            epoch: x.epoch_header(served.epoch),
                        }),
                    }
                }
                Err(error) => {
                    rec.variant = Some(Arc::from("none"));
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
    rec.upstream = Some(routed.upstream.address.clone());
    Ok(routed)
}

/// Assigns the request's unit, or says why it cannot be served.
async fn assign(
    state: &State,
    x: &ExperimentRoute,
    log_unit: &LogUnit,
    headers: &impl HeaderLookup,
    rec: &mut AccessRecord,
) -> Result<Served, ProxyError> {
    let Some(unit) = headers.header(&x.unit_header).filter(|u| valid_unit(u)) else {
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

fn upstream_request(
    req: Request<Incoming>,
    upstream: &Upstream,
    stamps: Option<&Stamps>,
    request_id: &HeaderValue,
    peer: &Peer,
    bytes_in: Arc<AtomicU64>,
) -> Result<Request<UpstreamBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(upstream.authority.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    parts.uri =
        Uri::from_parts(uri).map_err(|_| ProxyError::NoRoute("(unparseable URI)".into()))?;
    parts.version = http::Version::HTTP_11;

    let h = &mut parts.headers;
    // hyper sends a GET or HEAD body only with an explicit length or
    // encoding; a chunked one must stay chunked rather than vanish.
    let chunked = h
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    strip_hop_by_hop(h);
    if chunked && !http_body::Body::is_end_stream(&body) {
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    strip_stamps(h);
    // The client's own x-forwarded-host is never passed on: it would claim
    // a host this proxy did not see.
    h.remove(X_FORWARDED_HOST);
    if let Some(host) = h.remove(header::HOST) {
        h.insert(X_FORWARDED_HOST, host);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    let forwarded = match h.get(X_FORWARDED_FOR) {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + peer.ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer.ip.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| peer.ip.clone())
        }
        None => peer.ip.clone(),
    };
    h.insert(X_FORWARDED_FOR, forwarded);
    if let Some(s) = stamps {
        s.apply(h);
    }
    h.insert(REQUEST_ID, request_id.clone());
    Ok(Request::from_parts(
        parts,
        UpstreamBody::new(body, bytes_in),
    ))
}

fn error_response(
    e: ProxyError,
    stamps: Option<&Stamps>,
    mut rec: AccessRecord,
    pending: impl FnOnce(AccessRecord) -> PendingLog,
) -> Response<ResponseBody> {
    let status = e.status();
    rec.status = status.as_u16();
    rec.error = Some(e.cause());
    let body = e.body(&String::from_utf8_lossy(rec.request_id.as_bytes()));
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(s) = stamps {
        s.apply(h);
    }
    h.insert(REQUEST_ID, rec.request_id.clone());
    resp.map(|b| b.with_log(pending(rec)))
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

/// Connection-level headers are meaningful for one hop only (RFC 9110 §7.6.1).
fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names first: most messages carry none of these, and
    // removing by name costs a hash per name.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    // Every Connection header counts, and each may list several names.
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    let names: Vec<HeaderName> = h.keys().filter(|k| is_hop_by_hop(k)).cloned().collect();
    for n in names {
        h.remove(n);
    }
}

fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == header::CONNECTION
        || n == header::TE
        || n == header::TRAILER
        || n == header::TRANSFER_ENCODING
        || n == header::UPGRADE
        || n == header::PROXY_AUTHORIZATION
        || n == header::PROXY_AUTHENTICATE
        || n.as_str() == "keep-alive"
        || n.as_str() == "proxy-connection"
}

/// Client- or upstream-sent `x-cohort-*` headers are never trusted.
fn strip_stamps(h: &mut HeaderMap) {
    if !h.keys().any(|k| k.as_str().starts_with(STAMP_PREFIX)) {
        return;
    }
    let names: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with(STAMP_PREFIX))
        .cloned()
        .collect();
    for n in names {
        h.remove(n);
    }
}
