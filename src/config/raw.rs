//! Serde structs that mirror the YAML file one to one. No logic lives here:
//! defaults that need reasoning and every cross-field check are in
//! `validate`. `deny_unknown_fields` everywhere, because a typo in a
//! hand-edited file must be an error, not a silently ignored key.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) listen: Option<String>,
    pub(crate) store: Option<RawStore>,
    pub(crate) access_log: Option<RawAccessLog>,
    #[serde(default)]
    pub(crate) upstreams: BTreeMap<String, RawUpstream>,
    pub(crate) default_upstream: Option<String>,
    #[serde(default)]
    pub(crate) experiments: Vec<RawExperiment>,
    pub(crate) runtime: Option<RawRuntime>,
    pub(crate) admin: Option<RawAdmin>,
    pub(crate) tls: Option<RawTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) cert_file: Option<String>,
    pub(crate) key_file: Option<String>,
    pub(crate) client_ca_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Option<String>,
    pub(crate) token_file: Option<String>,
    pub(crate) metrics_auth: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub(crate) kind: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) durability: Option<String>,
    pub(crate) url: Option<String>,
    pub(crate) urls: Option<Vec<String>>,
    pub(crate) cluster: Option<bool>,
    pub(crate) key_prefix: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) on_store_error: Option<String>,
    pub(crate) wait_replicas: Option<u32>,
    pub(crate) password_file: Option<String>,
    pub(crate) tls_ca_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub(crate) path: String,
    pub(crate) log_unit: Option<String>,
    pub(crate) log_unit_key_file: Option<String>,
    pub(crate) rotate: Option<RawRotate>,
    pub(crate) compress: Option<String>,
}

/// `access_log.rotate`. `max_bytes` is read as a string so both `1048576`
/// and `64MiB` parse.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRotate {
    pub(crate) max_bytes: Option<String>,
    pub(crate) max_age: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    /// One endpoint; `endpoints` lists several (exactly one of the two).
    pub(crate) url: Option<String>,
    pub(crate) endpoints: Option<Vec<String>>,
    pub(crate) connect_timeout: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) total_timeout: Option<String>,
    pub(crate) max_idle_per_host: Option<usize>,
    pub(crate) health: Option<RawHealth>,
    pub(crate) eject_after: Option<u32>,
    pub(crate) eject_for: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) tls: Option<RawUpstreamTls>,
}

/// `tls:` of an upstream (with `https://` endpoints).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub(crate) ca_file: Option<String>,
    pub(crate) cert_file: Option<String>,
    pub(crate) key_file: Option<String>,
    pub(crate) server_name: Option<String>,
}

/// `health:` of an upstream: the active check of each endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub(crate) path: String,
    pub(crate) interval: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) unhealthy_after: Option<u32>,
    pub(crate) healthy_after: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExperiment {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) routes: Vec<String>,
    pub(crate) unit_header: Option<String>,
    pub(crate) salt: Option<String>,
    #[serde(default)]
    pub(crate) variants: Vec<RawVariant>,
    pub(crate) on_missing_unit: Option<String>,
    pub(crate) reset: Option<u64>,
    pub(crate) paused: Option<bool>,
    pub(crate) coverage: Option<f64>,
    pub(crate) overrides: Option<BTreeMap<String, Vec<String>>>,
    pub(crate) overrides_file: Option<String>,
    pub(crate) bucketing: Option<RawBucketing>,
}

/// `bucketing:` of an experiment: the scheme and every vendor's parameters
/// (which ones a scheme takes is checked in `validate`). Scalars are read
/// as strings so `seed: 61` and `experiment_id: 12345` need no quotes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBucketing {
    pub(crate) scheme: String,
    pub(crate) seed: Option<String>,
    pub(crate) hash_version: Option<u8>,
    pub(crate) flag_key: Option<String>,
    pub(crate) salt: Option<String>,
    pub(crate) rule_salt: Option<String>,
    pub(crate) experiment_id: Option<String>,
    pub(crate) group_id: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) vendor_weights: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVariant {
    pub(crate) name: String,
    pub(crate) upstream: String,
    pub(crate) weight: f64,
    pub(crate) disabled: Option<bool>,
    pub(crate) fallback: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuntime {
    pub(crate) worker_threads: Option<usize>,
    pub(crate) http1_fast_path: Option<bool>,
    pub(crate) client_idle_timeout: Option<String>,
    pub(crate) client_header_timeout: Option<String>,
    pub(crate) client_body_timeout: Option<String>,
    pub(crate) max_request_head: Option<usize>,
    pub(crate) max_header_count: Option<usize>,
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) shutdown_timeout: Option<String>,
}
