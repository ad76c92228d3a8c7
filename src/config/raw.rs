//! Serde structs that mirror the YAML file one to one. No logic lives here:
//! defaults that need reasoning and every cross-field check are in
//! `validate`. `deny_unknown_fields` everywhere, because a typo in a
//! hand-edited file must be an error, not a silently ignored key.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub store: Option<RawStore>,
    pub access_log: Option<RawAccessLog>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    pub default_upstream: Option<String>,
    #[serde(default)]
    pub experiments: Vec<RawExperiment>,
    pub runtime: Option<RawRuntime>,
    pub admin: Option<RawAdmin>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub path: String,
    pub log_unit: Option<String>,
    pub log_unit_key_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    pub max_idle_per_host: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExperiment {
    pub name: String,
    #[serde(default)]
    pub routes: Vec<String>,
    pub unit_header: Option<String>,
    pub salt: Option<String>,
    #[serde(default)]
    pub variants: Vec<RawVariant>,
    pub on_missing_unit: Option<String>,
    pub reset: Option<u64>,
    pub paused: Option<bool>,
    pub coverage: Option<f64>,
    pub overrides: Option<BTreeMap<String, Vec<String>>>,
    pub overrides_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariant {
    pub name: String,
    pub upstream: String,
    pub weight: f64,
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub worker_threads: Option<usize>,
    pub http1_fast_path: Option<bool>,
    pub client_idle_timeout: Option<String>,
    pub client_header_timeout: Option<String>,
    pub client_body_timeout: Option<String>,
    pub max_request_head: Option<usize>,
    pub shutdown_timeout: Option<String>,
}
