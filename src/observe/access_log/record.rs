//! The access record: one request's facts, filled on the request path
//! (shared strings and header values, no formatting) and rendered once by
//! [`super::json`] when the response ends.

use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri};

use crate::error::Cause;

/// Bumped when a field changes meaning or is removed (adding one is not).
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// One request, as the warehouse sees it. Field meanings are documented in
/// docs/access-log.md. The fields are cheap to fill on the request path
/// (shared strings, header values, no formatting); the line is rendered
/// once, when the response ends.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub at: SystemTime,
    pub request_id: HeaderValue,
    /// `None` for a head the proxy could not parse (logged as null).
    pub method: Option<Method>,
    pub path: Option<Uri>,
    /// `http/1.1` or `h2` (`http/1.0` for the rare HTTP/1.0 client).
    pub protocol: &'static str,
    pub status: u16,
    pub experiment: Option<&'static str>,
    pub unit: Option<LoggedUnit>,
    pub variant: Option<&'static str>,
    pub epoch: u32,
    pub current_epoch: u32,
    pub first_exposure: bool,
    /// On a first exposure: the served variant's share of new units under
    /// the epoch it was assigned in (0.5 for 50/50), so the log alone
    /// carries what a sample-ratio test needs. `None` (null) otherwise.
    pub share: Option<f64>,
    /// Whether the unit holds an assignment in this experiment.
    pub in_experiment: bool,
    pub forced: bool,
    pub paused: bool,
    /// Assigned by hash while the shared store was unreachable (logged only
    /// when true: `store_degraded: true`).
    pub store_degraded: bool,
    pub reason: Option<&'static str>,
    pub bucket: Option<u32>,
    pub upstream: Option<&'static str>,
    /// Served by the variant's `fallback` upstream (its own had no endpoint
    /// up); logged only when true, with `upstream` naming the fallback.
    pub fallback: bool,
    /// Logged as `upstream_ms`, in milliseconds with microsecond precision.
    pub upstream_time: Option<Duration>,
    /// Logged as `total_ms`.
    pub total_time: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub config_version: &'static str,
    /// Why the proxy answered itself or the exchange failed.
    pub error: Option<Cause>,
}

/// The unit as logged: the raw header value, or its keyed hash.
#[derive(Debug, Clone)]
pub enum LoggedUnit {
    Raw(HeaderValue),
    Hashed(String),
}

impl AccessRecord {
    /// A record with only the request's own facts filled in.
    pub fn new(
        at: SystemTime,
        request_id: HeaderValue,
        method: Method,
        path: Uri,
        config_version: &'static str,
    ) -> AccessRecord {
        AccessRecord {
            at,
            request_id,
            method: Some(method),
            path: Some(path),
            protocol: "http/1.1",
            status: 0,
            experiment: None,
            unit: None,
            variant: None,
            epoch: 0,
            current_epoch: 0,
            first_exposure: false,
            share: None,
            in_experiment: false,
            forced: false,
            paused: false,
            store_degraded: false,
            reason: None,
            bucket: None,
            upstream: None,
            fallback: false,
            upstream_time: None,
            total_time: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            config_version,
            error: None,
        }
    }

    /// A record for a request whose head could not be read (an answer the
    /// HTTP/1 layer made before any routing): method and path unknown.
    pub fn unparsed(
        at: SystemTime,
        request_id: HeaderValue,
        config_version: &'static str,
    ) -> AccessRecord {
        let mut r = AccessRecord::new(
            at,
            request_id,
            Method::GET,
            Uri::from_static("/"),
            config_version,
        );
        (r.method, r.path) = (None, None);
        r
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record with every field set, for the renderers' tests.
    pub(crate) fn sample() -> AccessRecord {
        let mut r = AccessRecord::new(
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_131_999_075),
            HeaderValue::from_static("req-1"),
            Method::POST,
            Uri::from_static("/predict?x=1"),
            "abc123",
        );
        r.status = 200;
        r.experiment = Some("ranker");
        r.variant = Some("new");
        r.epoch = 2;
        r.current_epoch = 3;
        r.first_exposure = true;
        r.share = Some(0.5);
        r.in_experiment = true;
        r.reason = Some("sticky");
        r.bucket = Some(4321);
        r.upstream = Some("127.0.0.1:9002");
        r.upstream_time = Some(Duration::from_micros(75));
        r.total_time = Duration::from_millis(2);
        r.bytes_in = 64;
        r.bytes_out = 1024;
        r
    }
}
