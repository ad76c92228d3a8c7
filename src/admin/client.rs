//! A small admin API client for the command line (`cohort plan`,
//! `cohort history`): one request, JSON back.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the admin API at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("the admin API at {url} sent a body that is not JSON: {reason}")]
    NotJson { url: String, reason: String },
}

pub struct AdminClient {
    base: String,
    token: String,
}

impl AdminClient {
    /// `base` is `host:port` or `http://host:port`.
    pub fn new(base: &str, token: String) -> AdminClient {
        let base = base.trim_end_matches('/');
        let base = if base.starts_with("http://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        AdminClient { base, token }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path).await
    }

    pub async fn post(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::POST, path).await
    }

    async fn call(&self, method: Method, path: &str) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: format!("{e:?}"),
            })?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
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
