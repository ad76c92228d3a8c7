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
use std::time::Instant;

use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use sha2::Sha256;

use super::body::{ms, PendingLog, ResponseBody, UpstreamBody};
use super::upstream::Upstream;
use crate::assign::{valid_unit, Reason, Served};
use crate::config::{LogUnit, MissingUnitPolicy};
use crate::error::ProxyError;
use crate::observe::access_log::{AccessRecord, SCHEMA_VERSION};
use crate::observe::time::now_rfc3339;
use crate::snapshot::{ExperimentRoute, Target};
use crate::state::State;

pub const STAMP_EXPERIMENT: HeaderName = HeaderName::from_static("x-cohort-experiment");
pub const STAMP_VARIANT: HeaderName = HeaderName::from_static("x-cohort-variant");
pub const STAMP_EPOCH: HeaderName = HeaderName::from_static("x-cohort-epoch");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const STAMP_PREFIX: &str = "x-cohort-";
const NO_VARIANT: HeaderValue = HeaderValue::from_static("none");

/// What the response (and the upstream request) is stamped with.
struct Stamps {
    experiment: HeaderValue,
    variant: HeaderValue,
    epoch: u32,
}

impl Stamps {
    fn apply(&self, h: &mut HeaderMap) {
        h.insert(STAMP_EXPERIMENT, self.experiment.clone());
        h.insert(STAMP_VARIANT, self.variant.clone());
        h.insert(STAMP_EPOCH, HeaderValue::from(self.epoch));
    }
}

pub async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let snap = state.snapshot();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| state.next_request_id());
    let mut rec = AccessRecord {
        ts: now_rfc3339(),
        schema: SCHEMA_VERSION,
        request_id,
        method: req.method().as_str().to_owned(),
        path: req.uri().path().to_owned(),
        status: 0,
        experiment: None,
        unit: None,
        variant: None,
        epoch: 0,
        current_epoch: 0,
        first_exposure: false,
        in_experiment: false,
        forced: false,
        paused: false,
        reason: None,
        bucket: None,
        upstream: None,
        upstream_ms: None,
        total_ms: 0.0,
        bytes_in: 0,
        bytes_out: 0,
        config_version: snap.version.clone(),
        error: None,
    };
    let bytes_in = Arc::new(AtomicU64::new(0));
    let pending = |rec: AccessRecord| {
        Box::new(PendingLog {
            log: state.log.clone(),
            record: rec,
            started,
            bytes_in: bytes_in.clone(),
        })
    };

    let (upstream, stamps) = match snap.route(req.uri().path()) {
        Target::NotFound => {
            let e = ProxyError::NoRoute(rec.path.clone());
            return Ok(error_response(e, None, rec, pending));
        }
        Target::Default(up) => (up.clone(), None),
        Target::Experiment(x) => {
            rec.experiment = Some(x.name.clone());
            rec.current_epoch = x.assigner.epoch.0;
            match assign(&state, x, &snap.log_unit, req.headers(), &mut rec).await {
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
                    let stamps = Stamps {
                        experiment: x.name_header.clone(),
                        variant: v.header.clone(),
                        epoch: served.epoch.0,
                    };
                    (v.upstream.clone(), Some(stamps))
                }
                Err(e) => {
                    let stamps = Stamps {
                        experiment: x.name_header.clone(),
                        variant: NO_VARIANT,
                        epoch: 0,
                    };
                    rec.variant = Some("none".into());
                    return Ok(error_response(e, Some(&stamps), rec, pending));
                }
            }
        }
    };

    rec.upstream = Some(upstream.config.authority.clone());
    let upstream_req = match upstream_request(
        req,
        &upstream,
        stamps.as_ref(),
        &rec.request_id,
        peer,
        bytes_in.clone(),
    ) {
        Ok(r) => r,
        Err(e) => return Ok(error_response(e, stamps.as_ref(), rec, pending)),
    };
    let sent = Instant::now();
    let result = tokio::time::timeout(
        upstream.config.timeout,
        upstream.client.request(upstream_req),
    )
    .await;
    rec.upstream_ms = Some(ms(sent.elapsed()));
    let resp = match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            let name = upstream.config.name.clone();
            let err = if is_timeout(&e) {
                ProxyError::UpstreamTimeout(name, upstream.config.connect_timeout.as_millis())
            } else if e.is_connect() {
                ProxyError::UpstreamConnect(name)
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
    if let Ok(v) = HeaderValue::from_str(&rec.request_id) {
        parts.headers.insert(REQUEST_ID, v);
    }
    rec.status = parts.status.as_u16();
    let body = ResponseBody::upstream(body).with_log(pending(rec));
    Ok(Response::from_parts(parts, body))
}

/// Assigns the request's unit, or says why it cannot be served.
async fn assign(
    state: &State,
    x: &ExperimentRoute,
    log_unit: &LogUnit,
    headers: &HeaderMap,
    rec: &mut AccessRecord,
) -> Result<Served, ProxyError> {
    let unit = headers
        .get(&x.unit_header)
        .map(|v| v.as_bytes())
        .filter(|u| valid_unit(u));
    let Some(unit) = unit else {
        rec.reason = Some("no_unit");
        return match x.on_missing_unit {
            MissingUnitPolicy::Control => Ok(x.assigner.unassigned()),
            MissingUnitPolicy::Reject => Err(ProxyError::MissingUnit(x.unit_header.to_string())),
        };
    };
    rec.unit = Some(logged_unit(log_unit, unit));
    x.assigner.assign(&state.store, unit).await.map_err(|e| {
        tracing::error!(experiment = %x.name, error = %e, "cannot store a new assignment");
        ProxyError::Store(e.to_string())
    })
}

fn logged_unit(how: &LogUnit, unit: &[u8]) -> String {
    match how {
        LogUnit::Raw => String::from_utf8_lossy(unit).into_owned(),
        LogUnit::Hashed { key, .. } => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(unit);
            let tag = mac.finalize().into_bytes();
            tag[..16].iter().map(|b| format!("{b:02x}")).collect()
        }
    }
}

fn upstream_request(
    req: Request<Incoming>,
    upstream: &Upstream,
    stamps: Option<&Stamps>,
    request_id: &str,
    peer: SocketAddr,
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
    strip_hop_by_hop(h);
    strip_stamps(h);
    if let Some(host) = h.remove(header::HOST) {
        h.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    let xff = HeaderName::from_static("x-forwarded-for");
    let ip = peer.ip().to_string();
    let forwarded = match h.get(&xff).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        h.insert(xff, v);
    }
    if let Some(s) = stamps {
        s.apply(h);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(REQUEST_ID, v);
    }
    Ok(Request::from_parts(
        parts,
        UpstreamBody::new(body, bytes_in),
    ))
}

fn error_response(
    e: ProxyError,
    stamps: Option<&Stamps>,
    mut rec: AccessRecord,
    pending: impl FnOnce(AccessRecord) -> Box<PendingLog>,
) -> Response<ResponseBody> {
    let status = e.status();
    rec.status = status.as_u16();
    rec.error = Some(e.cause());
    let body = e.body(&rec.request_id);
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
    if let Ok(v) = HeaderValue::from_str(&rec.request_id) {
        h.insert(REQUEST_ID, v);
    }
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

/// Connection-level headers are meaningful for one hop only (RFC 9110 §7.6.1).
fn strip_hop_by_hop(h: &mut HeaderMap) {
    if let Some(conn) = h
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    {
        for name in conn.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                h.remove(n);
            }
        }
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
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
