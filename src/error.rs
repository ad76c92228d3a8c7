//! Errors a request can end in, by where they came from — the client, the
//! upstream, or the proxy itself — mapped to a status in one `match` and
//! to a stable [`Cause`] for the JSON body and the access log's `error`.
//! Both data paths (lean and hyper) answer and log from these, so a fault
//! has one status and one cause whichever path served it.

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    // The client's fault: 4xx, never stamped as an upstream failure.
    #[error("no experiment or default_upstream serves {0}")]
    NoRoute(String),
    #[error("missing or invalid unit header {0} (1-256 bytes, no control characters)")]
    MissingUnit(String),
    #[error("the unit header {0} appears more than once")]
    DuplicateUnit(String),
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("malformed request body framing")]
    BadFraming,
    #[error("missing, repeated or invalid Host header (RFC 9112 section 3.2)")]
    BadHost,
    #[error("the proxy does not tunnel: CONNECT is not allowed")]
    Connect,
    #[error("unsupported transfer coding (only chunked is understood)")]
    UnsupportedCoding,
    #[error("request target too long")]
    UriTooLong,
    #[error("request head over the limit (runtime.max_request_head)")]
    HeadTooLarge,
    #[error("more header fields than the limit (runtime.max_header_count)")]
    TooManyHeaders,
    #[error("request body over the limit (runtime.max_body_bytes)")]
    BodyTooLarge,
    #[error("the client did not send its request in time")]
    RequestTimeout,
    #[error("the client closed the connection before the response")]
    ClientGone,
    // The upstream's fault.
    #[error("upstream {0} refused the connection or could not be reached")]
    UpstreamConnect(String),
    #[error("upstream {0}: {1}")]
    UpstreamTls(String, String),
    #[error("upstream {0} closed or reset the connection")]
    UpstreamReset(String),
    #[error("upstream {0} sent a response the proxy cannot relay: {1}")]
    UpstreamInvalid(String, String),
    #[error("upstream {0} did not answer within {1} ms")]
    UpstreamTimeout(String, u128),
    #[error("upstream {0} failed while sending the response body")]
    UpstreamBody(String),
    #[error("upstream {0} has no endpoint up (all are down or ejected)")]
    UpstreamUnavailable(String),
    // Ours.
    #[error("the assignment store cannot record new units: {0}")]
    Store(String),
    #[error("a config reload did not finish in time to assign this unit")]
    StaleSnapshot,
    #[error(
        "the proxy ran out of a local resource (file descriptors, memory) reaching upstream {0}"
    )]
    LocalResource(String),
}

/// The stable machine-readable name of an error: the JSON body's `error`
/// and the access log's `error`. Never renamed (dashboards key on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    NoRoute,
    MissingUnit,
    DuplicateUnit,
    BadRequest,
    BadFraming,
    BadHost,
    MethodNotAllowed,
    UnsupportedCoding,
    UriTooLong,
    HeadTooLarge,
    BodyTooLarge,
    RequestTimeout,
    ClientGone,
    UpstreamConnect,
    UpstreamTls,
    UpstreamReset,
    UpstreamInvalid,
    UpstreamTimeout,
    UpstreamBody,
    UpstreamUnavailable,
    StoreUnavailable,
    ReloadInProgress,
    LocalResource,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::NoRoute => "no_route",
            Cause::MissingUnit => "missing_unit",
            Cause::DuplicateUnit => "duplicate_unit",
            Cause::BadRequest => "bad_request",
            Cause::BadFraming => "bad_framing",
            Cause::BadHost => "bad_host",
            Cause::MethodNotAllowed => "method_not_allowed",
            Cause::UnsupportedCoding => "unsupported_transfer_coding",
            Cause::UriTooLong => "uri_too_long",
            Cause::HeadTooLarge => "head_too_large",
            Cause::BodyTooLarge => "body_too_large",
            Cause::RequestTimeout => "request_timeout",
            Cause::ClientGone => "client_gone",
            Cause::UpstreamConnect => "upstream_connect",
            Cause::UpstreamTls => "upstream_tls",
            Cause::UpstreamReset => "upstream_reset",
            Cause::UpstreamInvalid => "upstream_invalid",
            Cause::UpstreamTimeout => "upstream_timeout",
            Cause::UpstreamBody => "upstream_body",
            Cause::UpstreamUnavailable => "upstream_unavailable",
            Cause::StoreUnavailable => "store_unavailable",
            Cause::ReloadInProgress => "reload_in_progress",
            Cause::LocalResource => "local_resource",
        }
    }

    /// Whether the client caused it: such an answer also closes the
    /// connection when its framing can no longer be trusted.
    pub fn is_client_fault(self) -> bool {
        matches!(
            self,
            Cause::BadRequest
                | Cause::BadFraming
                | Cause::BadHost
                | Cause::MethodNotAllowed
                | Cause::UnsupportedCoding
                | Cause::UriTooLong
                | Cause::HeadTooLarge
                | Cause::BodyTooLarge
                | Cause::RequestTimeout
                | Cause::ClientGone
        )
    }
}

/// 499: nginx's code for "the client closed the connection"; never sent,
/// only logged.
pub(crate) const CLIENT_CLOSED: u16 = 499;

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::MissingUnit(_)
            | ProxyError::DuplicateUnit(_)
            | ProxyError::BadRequest(_)
            | ProxyError::BadFraming
            | ProxyError::BadHost => StatusCode::BAD_REQUEST,
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::HeadTooLarge | ProxyError::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientGone => {
                StatusCode::from_u16(CLIENT_CLOSED).expect("499 is a valid status code")
            }
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamTls(..)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamInvalid(..)
            | ProxyError::UpstreamBody(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(..) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamUnavailable(_)
            | ProxyError::Store(_)
            | ProxyError::StaleSnapshot
            | ProxyError::LocalResource(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable machine-readable cause, for the JSON body and the log.
    pub(crate) fn cause(&self) -> Cause {
        match self {
            ProxyError::NoRoute(_) => Cause::NoRoute,
            ProxyError::MissingUnit(_) => Cause::MissingUnit,
            ProxyError::DuplicateUnit(_) => Cause::DuplicateUnit,
            ProxyError::BadRequest(_) => Cause::BadRequest,
            ProxyError::BadFraming => Cause::BadFraming,
            ProxyError::BadHost => Cause::BadHost,
            ProxyError::Connect => Cause::MethodNotAllowed,
            ProxyError::UnsupportedCoding => Cause::UnsupportedCoding,
            ProxyError::UriTooLong => Cause::UriTooLong,
            ProxyError::HeadTooLarge | ProxyError::TooManyHeaders => Cause::HeadTooLarge,
            ProxyError::BodyTooLarge => Cause::BodyTooLarge,
            ProxyError::RequestTimeout => Cause::RequestTimeout,
            ProxyError::ClientGone => Cause::ClientGone,
            ProxyError::UpstreamConnect(_) => Cause::UpstreamConnect,
            ProxyError::UpstreamTls(..) => Cause::UpstreamTls,
            ProxyError::UpstreamReset(_) => Cause::UpstreamReset,
            ProxyError::UpstreamInvalid(..) => Cause::UpstreamInvalid,
            ProxyError::UpstreamTimeout(..) => Cause::UpstreamTimeout,
            ProxyError::UpstreamBody(_) => Cause::UpstreamBody,
            ProxyError::UpstreamUnavailable(_) => Cause::UpstreamUnavailable,
            ProxyError::Store(_) => Cause::StoreUnavailable,
            ProxyError::StaleSnapshot => Cause::ReloadInProgress,
            ProxyError::LocalResource(_) => Cause::LocalResource,
        }
    }

    /// Whether the connection must close after answering: the request's
    /// framing (or the client) can no longer be trusted.
    pub(crate) fn closes(&self) -> bool {
        self.cause().is_client_fault()
    }

    pub(crate) fn body(&self, request_id: &str) -> String {
        serde_json::json!({
            "error": self.cause().as_str(),
            "message": self.to_string(),
            "request_id": request_id,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    /// Every cause code a line or an answer can carry is explained in the
    /// docs: dashboards and analysts key on them.
    #[test]
    fn every_cause_is_documented() {
        let src = include_str!("error.rs");
        let ops = include_str!("../docs/operations.md");
        let log = include_str!("../docs/access-log.md");
        let schema = include_str!("../docs/access-log.schema.json");
        let names: Vec<&str> = src
            .lines()
            .filter(|l| l.trim_start().starts_with("Cause::") && l.contains("=> \""))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert!(names.len() >= 20, "found only {names:?}");
        for name in names {
            let code = format!("`{name}`");
            assert!(
                ops.contains(&code),
                "docs/operations.md does not explain {code}"
            );
            assert!(
                log.contains(&code),
                "docs/access-log.md does not list {code}"
            );
            assert!(
                schema.contains(&format!("\"{name}\"")),
                "docs/access-log.schema.json does not allow {name}"
            );
        }
    }
}
