//! Errors a request can end in, by where they came from, mapped to a status
//! in one place. Every one is answered with a JSON body and, on an
//! experiment route, the cohort stamps.

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    // The client's fault.
    #[error("no experiment or default_upstream serves {0}")]
    NoRoute(String),
    #[error("missing or invalid unit header {0} (1-256 bytes, no control characters)")]
    MissingUnit(String),
    // The upstream's fault.
    #[error("upstream {0} refused the connection or could not be reached")]
    UpstreamConnect(String),
    #[error("upstream {0} closed or reset the connection")]
    UpstreamReset(String),
    #[error("upstream {0} sent a response the proxy cannot relay: {1}")]
    UpstreamInvalid(String, String),
    #[error("upstream {0} did not answer within {1} ms")]
    UpstreamTimeout(String, u128),
    // Ours.
    #[error("the assignment store cannot record new units: {0}")]
    Store(String),
    #[error("a config reload did not finish in time to assign this unit")]
    StaleSnapshot,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::MissingUnit(_) => StatusCode::BAD_REQUEST,
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamInvalid(..) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(..) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Store(_) | ProxyError::StaleSnapshot => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable machine-readable cause, for the JSON body and the log.
    pub fn cause(&self) -> &'static str {
        match self {
            ProxyError::NoRoute(_) => "no_route",
            ProxyError::MissingUnit(_) => "missing_unit",
            ProxyError::UpstreamConnect(_) => "upstream_connect",
            ProxyError::UpstreamReset(_) => "upstream_reset",
            ProxyError::UpstreamInvalid(..) => "upstream_invalid",
            ProxyError::UpstreamTimeout(..) => "upstream_timeout",
            ProxyError::Store(_) => "store_unavailable",
            ProxyError::StaleSnapshot => "reload_in_progress",
        }
    }

    pub fn body(&self, request_id: &str) -> String {
        serde_json::json!({
            "error": self.cause(),
            "message": self.to_string(),
            "request_id": request_id,
        })
        .to_string()
    }
}
