//! Upstreams: a keep-alive connection pool per configured model backend.
//!
//! One pool per upstream (not one shared client) because connect timeouts
//! and pool sizes are per upstream. A reload that leaves an upstream's
//! settings alone keeps its pool, so ramping weights never drops warm
//! connections.

use std::time::Duration;

use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::UpstreamBody;
use crate::config::UpstreamConfig;

pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

pub struct Upstream {
    pub config: UpstreamConfig,
    pub authority: Authority,
    /// `host:port`, as the access log names it.
    pub address: std::sync::Arc<str>,
    pub client: UpstreamClient,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.max_idle_per_host)
            .build(connector);
        Upstream {
            authority: config.authority.parse().expect("validated authority"),
            address: std::sync::Arc::from(config.authority.as_str()),
            config: config.clone(),
            client,
        }
    }
}
