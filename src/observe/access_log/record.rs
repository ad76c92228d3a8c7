//! The access record: one request's facts, filled on the request path
//! (shared strings and header values, no formatting) and rendered once by
//! [`super::json`] when the response ends.

use std::sync::Arc;
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
    pub status: u16,
    pub experiment: Option<Arc<str>>,
    pub unit: Option<LoggedUnit>,
    pub variant: Option<Arc<str>>,
    pub epoch: u32,
    pub current_epoch: u32,
    pub first_exposure: bool,
    /// Whether the unit holds an assignment in this experiment.
    pub in_experiment: bool,
    pub forced: bool,
    pub paused: bool,
    /// Assigned by hash while the shared store was unreachable (logged only
    /// when true: `store_degraded: true`).
    pub store_degraded: bool,
    pub reason: Option<&'static str>,
    pub bucket: Option<u32>,
    pub upstream: Option<Arc<str>>,
    /// Logged as `upstream_ms`, in milliseconds with microsecond precision.
    pub upstream_time: Option<Duration>,
    /// Logged as `total_ms`.
    pub total_time: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub config_version: Arc<str>,
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
        config_version: Arc<str>,
    ) -> AccessRecord {
        AccessRecord {
            at,
            request_id,
            method: Some(method),
            path: Some(path),
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
            store_degraded: false,
            reason: None,
            bucket: None,
            upstream: None,
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
        config_version: Arc<str>,
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
            Arc::from("abc123"),
        );
        r.status = 200;
        r.experiment = Some(Arc::from("ranker"));
        r.variant = Some(Arc::from("new"));
        r.epoch = 2;
        r.current_epoch = 3;
        r.first_exposure = true;
        r.in_experiment = true;
        r.reason = Some("sticky");
        r.bucket = Some(4321);
        r.upstream = Some(Arc::from("127.0.0.1:9002"));
        r.upstream_time = Some(Duration::from_micros(75));
        r.total_time = Duration::from_millis(2);
        r.bytes_in = 64;
        r.bytes_out = 1024;
        r
    }
}
