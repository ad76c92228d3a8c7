//! A small admin API client for the command line (`cohort plan --admin`):
//! one request, JSON back, and errors a person can act on (the address,
//! the OS's reason, and what to check), never a client library's debug dump.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Why an admin API call failed, in words a person can act on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// No connection (or no complete answer): nothing listens there, or
    /// the connection broke.
    #[error("cannot reach the admin API at {addr}: {reason}; is cohort running, with its admin API on {addr}?")]
    Unreachable {
        /// `host:port` as given.
        addr: String,
        /// The innermost cause, e.g. "Connection refused (os error 111)".
        reason: String,
    },
    /// The API answered with an error status (a wrong token: 401).
    #[error("the admin API at {url} answered {status}: {body}")]
    Status {
        /// The full URL called.
        url: String,
        /// The status it answered.
        status: StatusCode,
        /// Its body, trimmed (the API's JSON error).
        body: String,
    },
    /// The answer was not JSON.
    #[error("the admin API at {url} sent a body that is not JSON: {reason}")]
    NotJson {
        /// The full URL called.
        url: String,
        /// serde_json's reason.
        reason: String,
    },
}

/// How long a connection to the admin API may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The innermost cause of `e` (for a refused connection: "Connection
/// refused (os error 111)"): the layers above it only say "client error".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A client for one admin API, authenticated with its bearer token.
pub(crate) struct AdminClient {
    base: String,
    token: String,
}

impl AdminClient {
    /// `base` is `host:port` or `http://host:port`.
    pub(crate) fn new(base: &str, token: String) -> AdminClient {
        let base = base.trim_end_matches('/');
        let base = if base.starts_with("http://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        AdminClient { base, token }
    }

    /// `GET path` (e.g. `/admin/config`), its JSON answer.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path).await
    }

    async fn call(&self, method: Method, path: &str) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut connector = HttpConnector::new();
        // A firewalled address never refuses: give up instead of hanging.
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
        let addr = self.base.trim_start_matches("http://").to_string();
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Unreachable {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| ClientError::Unreachable {
                addr: addr.clone(),
                reason: root_cause(&e),
            })?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Unreachable {
                addr,
                reason: root_cause(&e),
            })?
            .to_bytes();
        if !status.is_success() {
            return Err(ClientError::Status {
                url,
                status,
                body: String::from_utf8_lossy(&body).trim().to_string(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::NotJson {
            url,
            reason: e.to_string(),
        })
    }
}
